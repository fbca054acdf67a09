"""The one-page PDF: renders with poppler (pdftoppm -> PNG), and its text (pdftotext) carries the values."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from osteo_testing.screening_fixtures import synthetic_spine
from screening.pdf import render_pdf, sagittal_thumbnail, write_pdf
from screening.results import INTENDED_USE, PatientHeader, ReportInputError


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (Debian package poppler-utils) is not installed: `make test` installs it; "
                    "the PDF rendering check is skipped")
    return path


@pytest.fixture(scope="module")
def thumbnail():
    mask, ct, _ = synthetic_spine(seed=1)
    return sagittal_thumbnail(ct, mask, (1.0, 1.0, 1.0), measured={13, 14}, excluded={15, 16},
                              names={13: "L1", 14: "L2", 15: "L3", 16: "L4"})


@pytest.fixture(scope="module")
def pdf_path(tmp_path_factory, study_result, ct_headers, thumbnail):
    patient = PatientHeader.from_dicom(ct_headers[0])
    return write_pdf(tmp_path_factory.mktemp("pdf") / "report.pdf", study_result, patient, thumbnail)


def test_thumbnail_is_a_png(thumbnail):
    assert thumbnail[:8] == b"\x89PNG\r\n\x1a\n" and len(thumbnail) > 2000


def test_pdf_is_one_page_and_renders_to_png(pdf_path, tmp_path):
    info = subprocess.run([_tool("pdfinfo"), str(pdf_path)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Pages:\s+1$", info, re.M), info
    subprocess.run([_tool("pdftoppm"), "-png", "-r", "60", "-singlefile", str(pdf_path), str(tmp_path / "page")],
                   check=True, timeout=120)
    png = (tmp_path / "page.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    img = np.asarray(Image.open(tmp_path / "page.png").convert("L"))
    assert img.shape[0] > img.shape[1]                          # A4 portrait
    assert (img < 128).mean() > 0.01                            # ink on the page (text, table, thumbnail)


def test_pdf_text_carries_identifiers_values_flags_and_intended_use(pdf_path, study_result):
    text = subprocess.run([_tool("pdftotext"), "-layout", str(pdf_path), "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    for want in ("DOE JANE", "MRN0042137", "19480312", "ACC20260511", "Screen negative",
                 "osteo-screening version 7", "dxa-ref-v1", "90% coverage", "Dr. A. Reviewer",
                 " ".join(INTENDED_USE.split()[:4])):
        assert want in flat, want
    for lv in study_result.levels:
        for r in lv.readings:
            assert f"{r.bmd:.3f} [{r.lower:.3f}, {r.upper:.3f}]" in flat
            assert f"{r.t_score:.1f}" in flat
        for _, reason in lv.flags:
            assert " ".join(reason.split()[:6]) in flat


def test_rendering_is_reproducible(study_result, ct_headers, thumbnail):
    patient = PatientHeader.from_dicom(ct_headers[0])
    assert render_pdf(study_result, patient, thumbnail) == render_pdf(study_result, patient, thumbnail)


def test_a_pseudonymised_header_is_refused(ct_headers):
    import pydicom
    ds = pydicom.Dataset()
    ds.StudyInstanceUID = ct_headers[0].StudyInstanceUID
    with pytest.raises(ReportInputError, match="original CT header"):
        PatientHeader.from_dicom(ds)
