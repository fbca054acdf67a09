"""PACS-grade DICOM at ingestion: padding, compressed syntaxes, Enhanced CT, extra objects, identity, TS v1/v2.

Every file is built here with pydicom (and GDCM / pylibjpeg-openjpeg / pyjpegls
for the compressed syntaxes, all pinned in requirements.lock) from the shared
phantom; the reference is always the same data written the plain way.
"""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLossless,
                         JPEGLosslessSV1, JPEGLSLossless, RLELossless, generate_uid)

from features.errors import HUOutOfRangeError
from features.ingest import roi_spec, run_ingest, study_checks
from features.io.dicom import read_dicom_series
from features.io.masks import read_mask
from features.io.volume import to_ras
from features.study import StudyTask, process_study

REPO = Path(__file__).resolve().parents[2]
PAD = -2000                                  # stored value: -3024 / -3000 HU with the writer's intercepts


def _run(tmp_path, synth, ct, mask, ct_format="dicom", mask_format="totalseg", **task):
    cfg = synth.config()
    return process_study(StudyTask("sid", str(ct), ct_format, str(mask), mask_format, **task), roi_spec(cfg),
                         study_checks(cfg), str(tmp_path / "out"))


def _stats(res):
    keys = ("level", "roi_sha256", "hu_mean", "hu_std", "hu_p05", "hu_p50", "hu_p95", "body_voxels")
    return [tuple(r[k] for k in keys) for r in res.rois]


@pytest.fixture
def case(tmp_path, synth, phantom):
    """A plain DICOM series of the phantom, its v2 TotalSegmentator mask and the plain study's result."""
    hu, lab, aff, _ = phantom
    dcm = synth.write_dicom_series(hu, aff, tmp_path / "plain")
    seg = synth.save_nifti(synth.to_totalseg(lab), aff, tmp_path / "seg.nii.gz")
    ref = _run(tmp_path, synth, dcm, seg)
    assert ref.ok and len(ref.rois) == 3
    return dict(dcm=dcm, seg=seg, ref=ref, hu=hu, lab=lab, aff=aff)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy every file of ``src`` to ``dst`` through ``edit(ds) -> ds``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        ds = edit(pydicom.dcmread(str(f)))
        ds.save_as(str(dst / f.name), enforce_file_format=True)
    return dst


def _fov_outside(rows: int, cols: int) -> np.ndarray:
    """Pixels outside the ellipse inscribed in the slice (a round reconstruction FOV): ~21.5 % of it."""
    r, c = np.mgrid[:rows, :cols]
    return ((r - (rows - 1) / 2) / (rows / 2)) ** 2 + ((c - (cols - 1) / 2) / (cols / 2)) ** 2 > 1.0


# --- padding -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["value", "range"])
def test_padded_study_ingests_with_the_same_hu_statistics(tmp_path, synth, case, mode):
    # purpose: padding (~21 % at about -3024 HU) is outside the FOV: no HU quarantine, same ROIs and statistics
    def pad(ds):
        pix = ds.pixel_array.copy()
        out = _fov_outside(*pix.shape)
        pix[out] = PAD if mode == "value" else PAD + (np.arange(out.sum()) % 11)   # range: PAD..PAD+10
        ds.PixelData = pix.astype(np.int16).tobytes()
        ds.add_new(0x00280120, "SS", PAD)                        # PixelPaddingValue (signed image: SS)
        if mode == "range":
            ds.add_new(0x00280121, "SS", PAD + 10)               # PixelPaddingRangeLimit
        return ds

    padded = _rewrite(case["dcm"], tmp_path / "padded", pad)
    res = _run(tmp_path, synth, padded, case["seg"])
    assert res.ok, [q.detail for q in res.quarantine]
    assert _stats(res) == _stats(case["ref"])
    vol = read_dicom_series(padded, "sid").array
    share = float(np.mean(vol == -1000.0))
    assert 0.20 < share < 0.24 and vol.min() >= -1100.0          # padding became air, nothing at -3000 HU


def test_padding_without_its_tag_is_quarantined_with_the_padding_fix(tmp_path, synth, case):
    # purpose: an export that drops PixelPaddingValue is refused, and the message names the right fix
    def pad(ds):
        pix = ds.pixel_array.copy()
        pix[_fov_outside(*pix.shape)] = PAD
        ds.PixelData = pix.astype(np.int16).tobytes()
        return ds

    res = _run(tmp_path, synth, _rewrite(case["dcm"], tmp_path / "padded", pad), case["seg"])
    assert not res.ok and res.quarantine[0].reason == HUOutOfRangeError.__name__
    assert "PixelPaddingValue" in res.quarantine[0].detail


# --- compressed transfer syntaxes ----------------------------------------------------------------------
def _gdcm_compress(src: Path, dst: Path, syntax: str) -> None:
    gdcm = pytest.importorskip("gdcm", reason="python-gdcm (pinned in requirements.lock) encodes JPEG-Lossless")
    ts = {JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
          JPEGLossless: gdcm.TransferSyntax.JPEGLosslessProcess14}[syntax]
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(ts))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, JPEGLossless,
                                    DeflatedExplicitVRLittleEndian],
                         ids=lambda s: s.name.split(",")[0].replace(" ", "_"))
def test_compressed_syntax_decodes_to_the_uncompressed_array(tmp_path, synth, case, syntax):
    # purpose: each lossless syntax a PACS sends gives bit-identical HU (real encoded files, pinned encoders)
    out = tmp_path / "compressed"
    out.mkdir()
    for f in sorted(case["dcm"].iterdir()):
        if syntax in (JPEGLosslessSV1, JPEGLossless):
            _gdcm_compress(f, out / f.name, syntax)
        elif syntax == DeflatedExplicitVRLittleEndian:            # the whole dataset deflated (zlib)
            ds = pydicom.dcmread(str(f))
            ds.file_meta.TransferSyntaxUID = syntax
            ds.save_as(str(out / f.name), enforce_file_format=True)
        else:
            ds = pydicom.dcmread(str(f))
            ds.compress(syntax)
            ds.save_as(str(out / f.name), enforce_file_format=True)
    assert {pydicom.dcmread(str(f), stop_before_pixels=True).file_meta.TransferSyntaxUID
            for f in out.iterdir()} == {syntax}
    assert all("PixelData" in pydicom.dcmread(str(f)) for f in out.iterdir())
    a, b = read_dicom_series(case["dcm"], "sid"), read_dicom_series(out, "sid")
    assert np.array_equal(a.array, b.array) and np.array_equal(a.affine, b.affine)
    # every installed decoder of the syntax is exact, not only the one pydicom picks first
    first = sorted(case["dcm"].iterdir())[0]
    plain = pydicom.pixels.pixel_array(str(first))
    plugins = sorted(get_decoder(syntax).available_plugins) if syntax.is_compressed else []
    for plugin in plugins:
        assert np.array_equal(pydicom.pixels.pixel_array(str(out / first.name), decoding_plugin=plugin), plain), plugin


def test_unsupported_syntax_is_a_typed_error(tmp_path, synth, case):
    # purpose: a syntax no pinned decoder reads (JPEG 2000 Part 2 multi-component) names the syntax and the
    # fix, not "unreadable"
    from features.errors import UnsupportedTransferSyntaxError
    from pydicom.encaps import encapsulate

    def part2(ds):
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"
        ds.PixelData = encapsulate([b"\xff\x0a not really a codestream"])
        ds["PixelData"].VR = "OB"
        return ds

    folder = _rewrite(case["dcm"], tmp_path / "part2", part2)
    res = _run(tmp_path, synth, folder, case["seg"])
    assert not res.ok and res.quarantine[0].reason == UnsupportedTransferSyntaxError.__name__
    assert "1.2.840.10008.1.2.4.92" in res.quarantine[0].detail and "requirements.lock" in res.quarantine[0].detail


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_decoders_are_pinned_direct_dependencies_and_installed():
    # purpose: the decoders are the project's own pins (requirements.in) at the installed versions (lock)
    direct = {re.split(r"[\s=<>\[]", line.strip())[0].lower() for line in
              (REPO / "requirements.in").read_text().splitlines() if line.strip() and not line.startswith("#")}
    pins = _lock()
    for dist in ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "python-gdcm"):
        assert dist in direct, f"{dist} missing from requirements.in"
        assert pins.get(dist) == importlib.metadata.version(dist), dist


# --- Enhanced CT ---------------------------------------------------------------------------------------
def _seq(**attrs) -> list[Dataset]:
    item = Dataset()
    for k, v in attrs.items():
        setattr(item, k, v)
    return [item]


def write_enhanced_ct(hu: np.ndarray, affine: np.ndarray, path: Path, mrn="MRN0001", accession="ACC0001") -> Path:
    """The phantom as one Enhanced CT object, same geometry and stored values as the classic writer.

    Frames are stored cranial first (reverse of the classic files) with per-frame rescale intercepts.
    """
    nx, ny, nz = hu.shape
    sx, sy, sz = (float(np.linalg.norm(affine[:3, i])) for i in range(3))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.AccessionNumber = "CT", mrn, accession
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = ny, nx, nz
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SharedFunctionalGroupsSequence = _seq(
        PixelMeasuresSequence=_seq(PixelSpacing=[f"{sy:g}", f"{sx:g}"], SliceThickness=f"{sz:g}"),
        PlaneOrientationSequence=_seq(ImageOrientationPatient=[1, 0, 0, 0, 1, 0]))
    frames, stored = [], []
    for k in reversed(range(nz)):
        ras = affine @ np.array([nx - 1, ny - 1, k, 1.0])
        intercept = -1024.0 if k % 2 == 0 else -1000.0
        stored.append((hu[::-1, ::-1, k].T.astype(np.int32) - int(intercept)).astype(np.int16))
        frames.append(_seq(
            PlanePositionSequence=_seq(ImagePositionPatient=[f"{v:.4f}" for v in (-ras[0], -ras[1], ras[2])]),
            PixelValueTransformationSequence=_seq(RescaleSlope="1", RescaleIntercept=f"{intercept:g}",
                                                  RescaleType="HU"),
            FrameContentSequence=_seq(InStackPositionNumber=k + 1))[0])
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack(stored).tobytes()                       # (frames, rows, cols)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_enhanced_ct_ingests_equal_to_its_classic_equivalent(tmp_path, synth, case):
    # purpose: per-frame functional groups (position, rescale) + shared ones (spacing, orientation) = classic
    folder = tmp_path / "enhanced"
    write_enhanced_ct(case["hu"], case["aff"], folder / "EN0001.dcm")
    a, b = to_ras(read_dicom_series(case["dcm"], "sid")), to_ras(read_dicom_series(folder, "sid"))
    assert np.array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    res = _run(tmp_path, synth, folder, case["seg"])
    assert res.ok and _stats(res) == _stats(case["ref"])


# --- other objects in the series folder ----------------------------------------------------------------
def _object(folder: Path, name: str, sop: str, modality: str, *, image_type=None, iop=None, pixels=True,
            mrn="MRN0001", accession="ACC0001") -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop, meta.MediaStorageSOPInstanceUID, modality
    ds.PatientID, ds.AccessionNumber, ds.SeriesInstanceUID = mrn, accession, generate_uid()
    if image_type:
        ds.ImageType = image_type
    if iop:
        ds.ImageOrientationPatient, ds.ImagePositionPatient, ds.PixelSpacing = iop, [0, 0, 0], [1, 1]
    if pixels:
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 32, 40, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.zeros((32, 40), np.uint16).tobytes()
    ds.save_as(str(folder / name), enforce_file_format=True)


def add_pacs_extras(folder: Path) -> dict[str, int]:
    """A scout, a dose SR, a dose-screen secondary capture and a coronal reformat beside the axial slices."""
    _object(folder, "SCOUT1.dcm", "1.2.840.10008.5.1.4.1.1.2", "CT", image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
            iop=[1, 0, 0, 0, 0, -1])
    _object(folder, "DOSE_SR.dcm", "1.2.840.10008.5.1.4.1.1.88.67", "SR", pixels=False)
    _object(folder, "DOSE_SC.dcm", "1.2.840.10008.5.1.4.1.1.7", "CT", image_type=["DERIVED", "SECONDARY"])
    _object(folder, "CORONAL1.dcm", "1.2.840.10008.5.1.4.1.1.2", "CT", image_type=["DERIVED", "SECONDARY", "MPR"],
            iop=[1, 0, 0, 0, 0, -1])
    return {"localizer": 1, "non_axial": 1, "non_ct_image": 2}


def test_scout_dose_report_and_reformat_are_filtered_and_counted(tmp_path, synth, case):
    # purpose: extra PACS objects no longer reject the study; the axial series ingests unchanged, counts kept
    expected = add_pacs_extras(case["dcm"])
    res = _run(tmp_path, synth, case["dcm"], case["seg"])
    assert res.ok, [q.detail for q in res.quarantine]
    assert _stats(res) == _stats(case["ref"])
    assert res.dicom_filtered == expected


def test_folder_with_no_axial_image_is_a_typed_error(tmp_path, synth, case):
    from features.errors import NoAxialSeriesError
    folder = tmp_path / "extras"
    folder.mkdir()
    add_pacs_extras(folder)
    res = _run(tmp_path, synth, folder, case["seg"])
    assert not res.ok and res.quarantine[0].reason == NoAxialSeriesError.__name__
    assert "1 localizer" in res.quarantine[0].detail
    assert res.dicom_filtered == {"localizer": 1, "non_axial": 1, "non_ct_image": 2}


# --- identifiers against the export row ----------------------------------------------------------------
@pytest.mark.parametrize("mrn,acc,ok", [("MRN0001", "ACC0001", True), ("MRN0002", "ACC0001", False),
                                        ("MRN0001", "ACC0002", False)])
def test_identifier_check_in_the_worker(tmp_path, synth, case, mrn, acc, ok):
    from features.study import ExpectedIdentity
    ident = ExpectedIdentity.of(mrn, acc)
    assert mrn not in repr(ident) and acc not in repr(ident)
    res = _run(tmp_path, synth, case["dcm"], case["seg"], identity=ident)
    assert res.ok is ok
    if not ok:
        assert res.quarantine[0].reason == "IdentifierMismatchError"
        assert "MRN000" not in res.quarantine[0].detail and "ACC000" not in res.quarantine[0].detail


def test_end_to_end_mismatch_quarantined_and_filtered_counted(tmp_path, synth, phantom):
    # purpose: through run_ingest: wrong patient / wrong accession are quarantined (no identifier in any
    # output), a padded study and a folder with PACS extras ingest, and the filtered objects are counted
    hu, lab, aff, _ = phantom
    raw, out = tmp_path / "raw", tmp_path / "out"
    patients = [dict(mrn="0012345", patient_name="SMITH^ALICE", birth_date="1950-04-03", sex="F", site="siteA"),
                dict(mrn="0067890", patient_name="JONES^BOB", birth_date="1945-11-20", sex="M", site="siteA")]
    # accession -> (row mrn, DICOM PatientID, DICOM AccessionNumber, extras)
    plan = {"ACC2001": ("0012345", "0012345", "ACC2001", True),
            "ACC2002": ("0012345", "0067890", "ACC2002", False),      # filed under another patient
            "ACC2003": ("0067890", "0067890", "ACC2999", False),      # another study's series
            "ACC2004": ("0067890", "0067890", "", False)}             # blank accession: accepted
    seg = synth.save_nifti(synth.to_totalseg(lab), aff, raw / "seg.nii.gz")
    studies = []
    for acc, (row_mrn, dcm_mrn, dcm_acc, extras) in plan.items():
        d = synth.write_dicom_series(hu, aff, raw / "ct" / acc, patient_name="PHI^IN^DICOM", mrn=dcm_mrn,
                                     accession=dcm_acc)
        if extras:
            add_pacs_extras(d)
            for f in d.glob("*.dcm"):                                 # the extras carry the row's identifiers
                ds = pydicom.dcmread(str(f))
                ds.PatientID, ds.AccessionNumber = row_mrn, acc
                ds.save_as(str(f), enforce_file_format=True)
        studies.append(dict(mrn=row_mrn, site="siteA", scanner="scanner1", accession_number=acc,
                            study_instance_uid=generate_uid(), study_date="2020-03-01", contrast="0",
                            ct_path=str(d.relative_to(raw)), ct_format="dicom", mask_path="seg.nii.gz",
                            mask_format="totalseg"))
    synth.write_tables(raw, patients, studies, [])
    summary = run_ingest(synth.config(), raw, out, profile="tiny", progress=False)
    assert (summary.studies.seen, summary.studies.ingested) == (4, 2)
    assert summary.studies.quarantined_by_reason == {"IdentifierMismatchError": 2}
    assert getattr(summary, "dicom_filtered", None) == {"localizer": 1, "non_axial": 1, "non_ct_image": 2}
    q = pd.read_parquet(out / "quarantine.parquet")
    text = " ".join(q.astype(str).values.ravel()) + (out / "ingest_summary.json").read_text()
    assert not any(s in text for s in ("0012345", "0067890", "ACC2", "SMITH", "JONES"))


# --- TotalSegmentator v1 / v2 --------------------------------------------------------------------------
def to_totalseg_v1(labels: np.ndarray) -> np.ndarray:
    """Ordinal levels -> TotalSegmentator v1 ids (T1 = 34 ... T12 = 23, L1 = 22 ... L5 = 18)."""
    return np.where(labels > 0, 35 - labels, 0).astype(np.int16)


V1_NAMES = {18 + i: f"vertebrae_{n}" for i, n in enumerate(
    ["L5", "L4", "L3", "L2", "L1"] + [f"T{k}" for k in range(12, 0, -1)] + [f"C{k}" for k in range(7, 0, -1)])}
V1_NAMES.update({5: "liver", 42: "esophagus"})


def _save_with_table(array, affine, path: Path, names: dict[int, str]) -> Path:
    img = nib.Nifti1Image(array, affine)
    body = "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
                   for k, v in sorted(names.items()))
    xml = ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0"> <LabelTable>'
           f"\n{body}</LabelTable> </VolumeInformation></CaretExtension>\n")
    img.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode("utf-8")))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def _with_organs(seg: np.ndarray, organ_ids: tuple[int, ...]) -> np.ndarray:
    out = seg.copy()
    for n, tid in enumerate(organ_ids):                 # small blocks in the corners, away from the spine
        out[2 + 4 * n:4 + 4 * n, 2:4, 2:4] = tid
    return out


def test_v1_and_v2_masks_give_the_same_levels(tmp_path, synth, case):
    # purpose: the v1 label order (shifted by 9) is detected or declared and mapped to the same levels
    lab, aff = case["lab"], case["aff"]
    v2 = read_mask(case["seg"], "totalseg", "sid").volume.array
    assert np.array_equal(v2, lab)
    v1_path = synth.save_nifti(to_totalseg_v1(lab), aff, tmp_path / "seg_v1.nii.gz")
    multi = _with_organs(to_totalseg_v1(lab), (5, 42))
    for path, fmt in [(v1_path, "totalseg"), (v1_path, "totalseg_v1"),
                      (_save_with_table(multi, aff, tmp_path / "v1_ml.nii.gz", V1_NAMES), "totalseg"),
                      (synth.save_nifti(_with_organs(synth.to_totalseg(lab), (5, 116)), aff,
                                        tmp_path / "v2_ml.nii.gz"), "totalseg")]:
        assert np.array_equal(read_mask(path, fmt, "sid").volume.array, lab), (path.name, fmt)
    res = _run(tmp_path, synth, case["dcm"], v1_path)
    assert res.ok and _stats(res) == _stats(case["ref"])


def test_ambiguous_totalseg_version_is_a_typed_error(tmp_path, synth, case):
    # purpose: a multi-organ map with no label table and no v2-only id, or a declaration contradicting the
    # file's own label table, asks the user to declare the version
    from features.errors import TotalSegVersionError
    lab, aff = case["lab"], case["aff"]
    plain = synth.save_nifti(_with_organs(to_totalseg_v1(lab), (5, 42)), aff, tmp_path / "v1_ml.nii.gz")
    table = _save_with_table(_with_organs(to_totalseg_v1(lab), (5, 42)), aff, tmp_path / "v1_tab.nii.gz", V1_NAMES)
    for path, fmt in [(plain, "totalseg"), (table, "totalseg_v2")]:
        with pytest.raises(TotalSegVersionError) as exc:
            read_mask(path, fmt, "sid")
        assert "totalseg_v1" in str(exc.value) and "fix:" in str(exc.value)
    res = _run(tmp_path, synth, case["dcm"], plain)
    assert not res.ok and res.quarantine[0].reason == "TotalSegVersionError"
