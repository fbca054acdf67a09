"""Raw export read back with the standard readers: geometry, label ids, PHI, truth kept apart."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from scipy import ndimage

from cohort.anatomy import level_name, totalseg_id, verse_id

CONTRACT = {
    "patients.csv": ["mrn", "patient_name", "birth_date", "sex", "site"],
    "ct_studies.csv": ["mrn", "site", "scanner", "accession_number", "study_instance_uid", "study_date",
                       "contrast", "ct_path", "ct_format", "mask_path", "mask_format"],
    "dxa.csv": ["mrn", "patient_name", "site", "device_vendor", "device_model", "exam_date", "region",
                "bmd_g_cm2", "t_score", "accession_number"],
}


def read_dicom_ras(folder: Path) -> tuple[np.ndarray, np.ndarray, list]:
    """DICOM series -> (HU array in RAS order, RAS affine, datasets sorted inferior->superior)."""
    ds = sorted((pydicom.dcmread(f) for f in folder.glob("IM*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    vol = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds], axis=-1)
    rows, cols, _ = vol.shape                                   # rows = y_lps, cols = x_lps
    dy, dx = (float(v) for v in ds[0].PixelSpacing)
    dz = float(ds[1].ImagePositionPatient[2]) - float(ds[0].ImagePositionPatient[2])
    x0, y0, z0 = (float(v) for v in ds[0].ImagePositionPatient)
    ras = vol[::-1, ::-1, :].transpose(1, 0, 2)
    aff = np.diag([dx, dy, dz, 1.0])
    aff[:3, 3] = [-(x0 + (cols - 1) * dx), -(y0 + (rows - 1) * dy), z0]
    return ras, aff, ds


def read_mask_ras(path: Path, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Mask (any format) -> (ordinal levels in RAS order, affine)."""
    if fmt == "totalseg_dir":
        out, aff = None, None
        for f in sorted(path.glob("vertebrae_*.nii.gz")):
            img = nib.as_closest_canonical(nib.load(f))
            lv = [i for i in range(1, 19) if f.name == f"vertebrae_{level_name(i)}.nii.gz"][0]
            data = np.asarray(img.dataobj)
            out = np.zeros(data.shape, np.uint8) if out is None else out
            out[data > 0] = lv
            aff = img.affine
        return out, aff
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj)
    lut = {verse_id(lv) if fmt == "verse" else totalseg_id(lv): lv for lv in range(1, 19 if fmt == "verse" else 18)}
    assert set(np.unique(data)) - {0} <= set(lut), f"unexpected label ids {set(np.unique(data))}"
    levels = np.zeros(data.shape, np.uint8)
    for k, lv in lut.items():
        levels[data == k] = lv
    return levels, img.affine


def test_csv_columns_follow_the_contract_and_truth_is_not_in_raw(clean_cohort):
    _, raw, truth, _ = clean_cohort
    for name, cols in CONTRACT.items():
        assert list(pd.read_csv(raw / name).columns) == cols          # exactly docs/data_contract.md §1
    assert not list(raw.rglob("*.parquet")) and not list(raw.rglob("faults.csv"))  # truth lives apart
    assert (truth / "truth.parquet").exists() and (truth / "faults.csv").exists()


def test_every_study_reads_back_with_matching_geometry_and_label_ids(clean_cohort):
    _, raw, truth, _ = clean_cohort
    studies = pd.read_csv(raw / "ct_studies.csv", dtype=str)
    t = pd.read_parquet(truth / "truth.parquet")
    assert {"nifti", "dicom"} <= set(studies.ct_format)                # both CT formats exercised
    assert len(set(studies.mask_format)) >= 2
    orientations = set()
    for s in studies.itertuples():
        if s.ct_format == "dicom":
            hu, aff, ds = read_dicom_ras(raw / s.ct_path)
            assert ds[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        else:
            img = nib.load(raw / s.ct_path)
            assert img.get_data_dtype() == np.int16
            orientations.add("".join(nib.aff2axcodes(img.affine)))
            img = nib.as_closest_canonical(img)
            hu, aff = np.asarray(img.dataobj), img.affine
        lev, maff = read_mask_ras(raw / s.mask_path, s.mask_format)
        assert lev.shape == hu.shape
        np.testing.assert_allclose(maff, aff, atol=1e-3)               # mask on the CT grid
        assert hu.min() <= -950 and hu.max() >= 400                    # air and bone in the field of view
        present = sorted(set(np.unique(lev)) - {0})
        assert present == list(range(present[0], present[-1] + 1))     # contiguous covered levels
        if 13 in present:                                              # L1 core HU agrees with the truth
            row = t[(t.ct_accession == s.accession_number) & (t.level == 13)]
            if len(row):                                               # first CT of the patient
                st = np.zeros((3, 3, 3), bool)
                st[:, :, 1] = True                                     # in-plane erosion strips the cortex
                core = ndimage.binary_erosion(lev == 13, st, iterations=7)  # and the posterior elements
                core = ndimage.binary_erosion(core, np.ones((1, 1, 3), bool), iterations=2)  # endplates
                assert abs(hu[core].mean() - row.ct_hu_core.iloc[0]) < 40
    assert len(orientations) >= 2                                      # ingestion must reorient


def test_phi_fields_present_in_csvs_and_dicom_headers(clean_cohort):
    _, raw, _, _ = clean_cohort
    pts = pd.read_csv(raw / "patients.csv", dtype=str)
    assert pts.patient_name.str.contains(r"\^").all() and pts.mrn.str.fullmatch(r"\d{9}").all()
    assert pts.mrn.is_unique
    studies = pd.read_csv(raw / "ct_studies.csv", dtype=str)
    dcm = studies[studies.ct_format == "dicom"].iloc[0]
    d = pydicom.dcmread(next((raw / dcm.ct_path).glob("IM*.dcm")))
    p = pts.set_index("mrn").loc[dcm.mrn]
    assert str(d.PatientName) == p.patient_name and d.PatientID == dcm.mrn
    assert d.PatientBirthDate == p.birth_date.replace("-", "")
    assert d.AccessionNumber == dcm.accession_number and d.StudyInstanceUID == dcm.study_instance_uid
    assert d.SeriesInstanceUID and d.SOPInstanceUID and d.SOPInstanceUID != d.SeriesInstanceUID


def test_nifti_members_are_standard_gzip_without_a_time_stamp(tmp_path):
    """save_nifti deflates with ISA-L: Python's own gzip reads the member back to nibabel's exact bytes."""
    import gzip

    from cohort.writers import save_nifti

    rng = np.random.default_rng(5)
    data = rng.integers(-1024, 2000, size=(37, 29, 11)).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 30.0]
    path = tmp_path / "ct.nii.gz"
    save_nifti(path, data, affine)
    blob = path.read_bytes()
    assert blob[:2] == b"\x1f\x8b" and blob[4:8] == b"\x00\x00\x00\x00"  # gzip magic, MTIME 0 (deterministic)
    img = nib.Nifti1Image.from_bytes(gzip.decompress(blob))
    assert np.array_equal(np.asanyarray(img.dataobj), data) and np.allclose(img.affine, affine)
    assert np.array_equal(np.asanyarray(nib.load(str(path)).dataobj), data)
    save_nifti(tmp_path / "again.nii.gz", data, affine)
    assert (tmp_path / "again.nii.gz").read_bytes() == blob
