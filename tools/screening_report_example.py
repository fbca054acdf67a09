"""Render the example screening report (synthetic study, fake identifiers) to docs/screening_report.png.

Usage: .venv/bin/python tools/screening_report_example.py [--out docs/screening_report.png] [--dpi 80]
Needs pdftoppm (Debian poppler-utils).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from osteo_testing.screening_fixtures import example_study_result, synthetic_spine
from screening.pdf import sagittal_thumbnail, write_pdf
from screening.results import PatientHeader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/screening_report.png"))
    ap.add_argument("--dpi", type=int, default=80)
    args = ap.parse_args()
    if shutil.which("pdftoppm") is None:
        raise SystemExit("pdftoppm not found: apt-get install poppler-utils (or `make test`, which installs it)")
    mask, ct, _ = synthetic_spine(seed=1)
    thumb = sagittal_thumbnail(ct, mask, (1.0, 1.0, 1.0), measured={13, 14}, excluded={15, 16},
                               names={13: "L1", 14: "L2", 15: "L3", 16: "L4", 17: "L5"})
    patient = PatientHeader(patient_name="DOE^JANE", patient_id="MRN0042137", birth_date="19480312", sex="F",
                            accession="ACC20260511", study_date="20260511", study_uid="2.25.1", series_uid="2.25.2")
    with tempfile.TemporaryDirectory() as tmp:
        pdf = write_pdf(Path(tmp) / "report.pdf", example_study_result(), patient, thumb)
        subprocess.run(["pdftoppm", "-png", "-r", str(args.dpi), "-singlefile", str(pdf), str(Path(tmp) / "page")],
                       check=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "page.png", args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
