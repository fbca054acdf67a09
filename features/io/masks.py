"""Vertebra masks in four label conventions, mapped to one ordinal level map.

Ordinal levels (the contract's ``level``): T1..T12 = 1..12, L1..L6 = 13..18.
Cervical and sacral labels are ignored (not thoracolumbar, not counted).

Source conventions:

* **TotalSegmentator v2, task ``total``, multilabel file** (``--ml``): the
  vertebrae run caudal to cranial, ``25 sacrum, 26 vertebrae_S1, 27 L5, 28 L4,
  29 L3, 30 L2, 31 L1, 32 T12, 33 T11, ... 43 T1, 44 C7, ... 50 C1``
  (``totalsegmentator/map_to_binary.py``, class map ``total``). So
  ``level = 44 - id`` for ids 27..43 (L5..T1 -> levels 17..1).
  TotalSegmentator has no L6 or T13 class.
* **TotalSegmentator v1** (104 classes, class map ``total_v1``): ``18 L5, 19 L4,
  ... 22 L1, 23 T12, ... 34 T1, 35 C7, ... 41 C1``, organs at v2's vertebra
  ids (``42 esophagus ... 50 brain``), ``92 sacrum``: ``level = 35 - id`` for
  ids 18..34. Reading a v1 file as v2 shifts every level by 9.
* **TotalSegmentator folder**: ``vertebrae_<NAME>.nii.gz`` binary files
  (``vertebrae_T12.nii.gz``, ``vertebrae_L1.nii.gz``, ...); the file name gives
  the level in both versions. Overlapping voxels go to the more cranial level.
* **VerSe**: ``1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 28 T13``
  (``level = id - 7`` for ids 8..25). T13 (a supernumerary thoracic vertebra)
  has no ordinal slot: it is reported separately and quarantined as
  :class:`~features.errors.UnsupportedLevelError`; the other levels of the
  study are kept (T12 and L1 keep their anatomical names).

TotalSegmentator version (``mask_format``): ``totalseg_v1`` / ``totalseg_v2``
declare it; ``totalseg`` asks :func:`totalseg_version` to tell, in this order:

1. a label table in the NIfTI header extension (TotalSegmentator writes one, a
   CaretExtension XML, into ``--ml`` files): the names give the levels, no
   version needed;
2. the label values: ids 105..117 exist only in v2 (v1 has 104 classes);
   in a vertebra-only mask (every id within 18..50) ids 18..24 are vertebrae
   only in v1 (v2: bowel, bladder, prostate, kidney cysts) and ids 42..50 only
   in v2 (v1: oesophagus, trachea, heart, pulmonary artery, brain);
3. a vertebra-only mask with every id in 25..41 and no such evidence reads
   as v2 (the data contract's ``totalseg``): it is v1 only when it holds no
   vertebra below T10, i.e. no lumbar level at all;
4. anything else (evidence for both versions; a multi-organ file with neither
   a label table nor a v2-only id) -> :class:`~features.errors.TotalSegVersionError`
   telling the user to declare the version.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import nibabel as nib

from features.errors import TotalSegVersionError, UnreadableFileError, UnsupportedFormatError
from features.io.volume import Volume, read_nifti

LEVEL_NAMES: tuple[str, ...] = tuple([f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)])
LEVEL_OF_NAME: dict[str, int] = {name: i + 1 for i, name in enumerate(LEVEL_NAMES)}

# TotalSegmentator v2 `total` multilabel ids -> ordinal level (T1=43 ... T12=32, L1=31 ... L5=27)
TOTALSEG_ID_TO_LEVEL: dict[int, int] = {tid: 44 - tid for tid in range(27, 44)}
# TotalSegmentator v1 `total` (104 classes) ids -> ordinal level (T1=34 ... T12=23, L1=22 ... L5=18)
TOTALSEG_V1_ID_TO_LEVEL: dict[int, int] = {tid: 35 - tid for tid in range(18, 35)}
TOTALSEG_TABLES: dict[str, dict[int, int]] = {"v1": TOTALSEG_V1_ID_TO_LEVEL, "v2": TOTALSEG_ID_TO_LEVEL}
# VerSe ids -> ordinal level (8..19 T1..T12, 20..24 L1..L5, 25 L6); 28 = T13 has no slot
VERSE_ID_TO_LEVEL: dict[int, int] = {vid: vid - 7 for vid in range(8, 26)}
VERSE_T13 = 28
# label value used internally for a T13 vertebra (outside 1..18 on purpose)
T13_LABEL = 99

MASK_FORMATS = ("totalseg", "totalseg_v1", "totalseg_v2", "totalseg_dir", "verse")
_DECLARE_FIX = ("declare the TotalSegmentator version in ct_studies.csv: mask_format totalseg_v1 "
                "(TotalSegmentator 1.x, 104 classes) or totalseg_v2 (2.x, 117 classes)")
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
        path: file (``totalseg*``, ``verse``) or folder (``totalseg_dir``).
        fmt: one of :data:`MASK_FORMATS` (``totalseg``: TotalSegmentator version detected, see module docstring).
        item: pseudonymous study id for messages.

    Raises:
        UnsupportedFormatError: unknown ``fmt``.
        UnreadableFileError: missing/corrupt file(s), or a folder with no vertebra file.
        TotalSegVersionError: ``totalseg`` whose version cannot be told, or a declared version the file's
            own label table contradicts.
    """
    if fmt in ("totalseg", "totalseg_v1", "totalseg_v2"):
        vol = read_nifti(path, item, "mask", dtype=np.int32)
        names = header_label_names(Path(path))
        declared = fmt.removeprefix("totalseg").removeprefix("_") or None
        if names:
            table = _table_from_names(names)
            for version, ref in TOTALSEG_TABLES.items():
                if declared not in (None, version) and _agrees(table, ref):
                    raise TotalSegVersionError(item, f"mask_format declares TotalSegmentator {declared} but the "
                                                     f"file's label table has the {version} order", _DECLARE_FIX)
        else:
            table = TOTALSEG_TABLES[declared or totalseg_version(vol.array, item)]
        return LevelMask(Volume(_relabel(vol.array, table), vol.affine), has_t13=False)
    if fmt == "verse":
        vol = read_nifti(path, item, "mask", dtype=np.int32)
        out = _relabel(vol.array, VERSE_ID_TO_LEVEL, {VERSE_T13: T13_LABEL})
        return LevelMask(Volume(out, vol.affine), has_t13=bool(np.any(vol.array == VERSE_T13)))
    if fmt == "totalseg_dir":
        return _read_folder(Path(path), item)
    raise UnsupportedFormatError(item, f"mask_format {fmt!r} is unknown",
                                 f"write masks as one of {', '.join(MASK_FORMATS)}")


def header_label_names(path: Path) -> dict[int, str]:
    """``{label id: name}`` from a NIfTI header-extension label table (TotalSegmentator ``--ml``), else ``{}``."""
    try:
        exts = nib.load(str(path)).header.extensions
    except Exception:  # unreadable files are reported by read_nifti
        return {}
    for ext in exts:
        content = ext.get_content()
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
        try:
            root = ET.fromstring(text.strip())
        except (ET.ParseError, ValueError):
            continue
        names = {int(lab.get("Key")): (lab.text or "").strip() for lab in root.iter("Label")
                 if str(lab.get("Key", "")).lstrip("-").isdigit()}
        if names:
            return names
    return {}


def _table_from_names(names: dict[int, str]) -> dict[int, int]:
    table = {}
    for tid, name in names.items():
        level = LEVEL_OF_NAME.get(name.removeprefix("vertebrae_")) if name.startswith("vertebrae_") else None
        if level is not None and tid > 0:
            table[tid] = level
    return table or {0: 0}


def _agrees(table: dict[int, int], ref: dict[int, int]) -> bool:
    return any(table) and all(ref.get(k) == v for k, v in table.items() if k)


def totalseg_version(labels: np.ndarray, item: str) -> str:
    """``"v1"`` or ``"v2"`` from the label values of an undeclared TotalSegmentator mask (rule in module docstring).

    Raises:
        TotalSegVersionError: the values do not tell the version apart (declare it).
    """
    ids = {int(v) for v in np.unique(labels) if v > 0}
    if not ids:
        return "v2"                      # nothing to relabel; the empty mask is reported as NoVertebraError
    v2 = bool(ids & set(range(105, 118)))
    v1 = False
    if ids <= set(range(18, 51)):        # a vertebra-only export
        v1 = bool(ids & set(range(18, 25)))
        v2 = v2 or bool(ids & set(range(42, 51)))
        if not (v1 or v2):
            return "v2"                  # the contract's `totalseg`: ambiguous only for a mask with no lumbar level
    if v1 and not v2:
        return "v1"
    if v2 and not v1:
        return "v2"
    what = "label ids typical of both versions" if v1 and v2 else \
        "a multi-organ label map with no label table and no id above 104"
    raise TotalSegVersionError(item, f"cannot tell TotalSegmentator v1 from v2 ({what})", _DECLARE_FIX)


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
