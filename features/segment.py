"""Vertebra masks for studies that come without one: an external segmenter command (``osteo screen --segmenter``).

The command is a template with ``{ct}`` (the CT file or DICOM folder) and ``{out}`` (the mask file
to write), e.g. ``TotalSegmentator -i {ct} -o {out} --ml`` (one multilabel NIfTI in TotalSegmentator's
label order: ``mask_format`` ``totalseg``, the version told apart by :mod:`features.io.masks`). It runs
without a shell (the template is split with :func:`shlex.split`, then each placeholder is replaced),
so a path with spaces or quotes cannot inject a command. A failure, a timeout or no output file is
:class:`~features.errors.SegmenterError` naming the study by its pseudonymous id only; the command's
own output is not repeated (it may print paths or names).
"""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from features.errors import SegmenterError

PLACEHOLDERS = ("{ct}", "{out}")
MASK_FORMAT = "totalseg"        # what the segmenter's multilabel file is read as


def segmenter_argv(template: str, ct: Path, out: Path) -> list[str]:
    """The command line of ``template`` for one study (no shell; placeholders replaced per argument).

    Raises:
        ValueError: the template lacks ``{ct}`` or ``{out}``.
    """
    missing = [p for p in PLACEHOLDERS if p not in template]
    if missing:
        raise ValueError(f"segmenter command {template!r} lacks {missing}: write it like "
                         "'TotalSegmentator -i {ct} -o {out} --ml'")
    return [a.replace("{ct}", str(ct)).replace("{out}", str(out)) for a in shlex.split(template)]


def run_segmenter(template: str, ct: Path, out: Path, item: str, timeout_s: float) -> Path:
    """Run the segmenter on one CT; returns the mask written at ``out``.

    Args:
        template: command with ``{ct}`` and ``{out}``.
        ct: CT file (NIfTI) or DICOM series folder.
        out: mask file to write (its folder is created).
        item: the study's pseudonymous id (messages carry nothing else).
        timeout_s: wall-clock limit (s).

    Raises:
        SegmenterError: the command failed, timed out, was not found or wrote no file.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = segmenter_argv(template, Path(ct), out)
    fix = "check the --segmenter command on one study by hand (it must write a multilabel mask at {out})"
    try:
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s)
    except FileNotFoundError:
        raise SegmenterError(item, f"segmenter program {argv[0]!r} not found", "install it or fix --segmenter") from None
    except subprocess.TimeoutExpired:
        raise SegmenterError(item, f"segmenter ran longer than {timeout_s:.0f} s",
                             "raise screen.segmenter_timeout_s or use a faster mode (e.g. --fast)") from None
    if proc.returncode != 0:
        raise SegmenterError(item, f"segmenter exited with status {proc.returncode}", fix)
    if not out.is_file():
        raise SegmenterError(item, "segmenter exited 0 but wrote no mask file", fix)
    return out
