"""Vertebra masks in three label conventions, mapped to one ordinal level map.

Ordinal levels (the contract's ``level``): T1..T12 = 1..12, L1..L6 = 13..18.
Cervical and sacral labels are ignored (not thoracolumbar, not counted).

Source conventions:

* **TotalSegmentator v2, task ``total``, multilabel file** (``--ml``): the
  vertebrae run caudal to cranial, ``25 sacrum, 26 vertebrae_S1, 27 L5, 28 L4,
  29 L3, 30 L2, 31 L1, 32 T12, 33 T11, ... 43 T1, 44 C7, ... 50 C1`` (v2 order,
  ``totalsegmentator/map_to_binary.py``; v1 used another order). So
  ``level = 44 - id`` for T1..T12 (ids 43..32) and ``level = 44 - id`` for
  L1..L5 (ids 31..27) too: one formula, ids 27..43 -> levels 17..1.
  TotalSegmentator has no L6 or T13 class.
* **TotalSegmentator folder**: ``vertebrae_<NAME>.nii.gz`` binary files
  (``vertebrae_T12.nii.gz``, ``vertebrae_L1.nii.gz``, ...); the file name gives
  the level. Overlapping voxels go to the more cranial level (deterministic).
* **VerSe**: ``1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 28 T13``
  (``level = id - 7`` for ids 8..25). T13 (a supernumerary thoracic vertebra)
  has no ordinal slot: it is reported separately and quarantined as
  :class:`~features.errors.UnsupportedLevelError`; the other levels of the
  study are kept (T12 and L1 keep their anatomical names).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.errors import UnreadableFileError, UnsupportedFormatError
from features.io.volume import Volume, read_nifti

LEVEL_NAMES: tuple[str, ...] = tuple([f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)])
LEVEL_OF_NAME: dict[str, int] = {name: i + 1 for i, name in enumerate(LEVEL_NAMES)}

# TotalSegmentator v2 `total` multilabel ids -> ordinal level (T1=43 ... T12=32, L1=31 ... L5=27)
TOTALSEG_ID_TO_LEVEL: dict[int, int] = {tid: 44 - tid for tid in range(27, 44)}
# VerSe ids -> ordinal level (8..19 T1..T12, 20..24 L1..L5, 25 L6); 28 = T13 has no slot
VERSE_ID_TO_LEVEL: dict[int, int] = {vid: vid - 7 for vid in range(8, 26)}
VERSE_T13 = 28
# label value used internally for a T13 vertebra (outside 1..18 on purpose)
T13_LABEL = 99

MASK_FORMATS = ("totalseg", "totalseg_dir", "verse")
_FOLDER_NAME = re.compile(r"^vertebrae_([A-Z]+\d+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class LevelMask:
    """A mask relabelled to ordinal levels.

    Attributes:
        volume: int16 labels: 0 background, 1..18 levels, ``T13_LABEL`` for a T13.
        has_t13: the source mask labels a T13.
    """

    volume: Volume
    has_t13: bool


def _relabel(labels: np.ndarray, table: dict[int, int], extra: dict[int, int] | None = None) -> np.ndarray:
    lut = np.zeros(int(max(labels.max(initial=0), max(table), *(extra or {0: 0}))) + 1, dtype=np.int16)
    for src, dst in {**table, **(extra or {})}.items():
        lut[src] = dst
    clipped = np.clip(labels, 0, len(lut) - 1).astype(np.int64)
    out = lut[clipped]
    out[labels < 0] = 0
    return out


def read_mask(path: Path, fmt: str, item: str) -> LevelMask:
    """Read a vertebra mask in ``fmt`` and relabel it to ordinal levels.

    Args:
        path: file (``totalseg``, ``verse``) or folder (``totalseg_dir``).
        fmt: one of :data:`MASK_FORMATS`.
        item: pseudonymous study id for messages.

    Raises:
        UnsupportedFormatError: unknown ``fmt``.
        UnreadableFileError: missing/corrupt file(s), or a folder with no vertebra file.
    """
    if fmt == "totalseg":
        vol = read_nifti(path, item, "mask", dtype=np.int32)
        return LevelMask(Volume(_relabel(vol.array, TOTALSEG_ID_TO_LEVEL), vol.affine), has_t13=False)
    if fmt == "verse":
        vol = read_nifti(path, item, "mask", dtype=np.int32)
        out = _relabel(vol.array, VERSE_ID_TO_LEVEL, {VERSE_T13: T13_LABEL})
        return LevelMask(Volume(out, vol.affine), has_t13=bool(np.any(vol.array == VERSE_T13)))
    if fmt == "totalseg_dir":
        return _read_folder(Path(path), item)
    raise UnsupportedFormatError(item, f"mask_format {fmt!r} is unknown",
                                 f"write masks as one of {', '.join(MASK_FORMATS)}")


def _read_folder(folder: Path, item: str) -> LevelMask:
    if not folder.is_dir():
        raise UnreadableFileError(item, "mask folder is missing", "re-export the TotalSegmentator output folder")
    files = {}
    for p in sorted(folder.iterdir()):
        m = _FOLDER_NAME.match(p.name)
        if m and m.group(1) in LEVEL_OF_NAME:
            files[LEVEL_OF_NAME[m.group(1)]] = p
    if not files:
        raise UnreadableFileError(item, "mask folder holds no vertebrae_T*/L* file",
                                  "run TotalSegmentator without --ml and keep the vertebrae_XX.nii.gz files")
    out, affine = None, None
    # cranial (low ordinal) last so it wins overlaps, deterministic
    for level in sorted(files, reverse=True):
        vol = read_nifti(files[level], item, "mask", dtype=np.int16)
        if out is None:
            out, affine = np.zeros(vol.shape, dtype=np.int16), vol.affine
        elif vol.shape != out.shape or not np.allclose(vol.affine, affine, atol=1e-4):
            raise UnreadableFileError(item, "files in the mask folder have different geometries",
                                      "re-export all vertebrae_XX files from one TotalSegmentator run")
        out[vol.array > 0] = level
    return LevelMask(Volume(out, affine), has_t13=False)
