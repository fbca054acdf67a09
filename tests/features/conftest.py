"""Fixtures for ingestion tests: a tiny synthetic spine phantom and raw-export writers.

Everything is built here (nibabel / pydicom), independent of ``cohort/``.
The phantom lives on a RAS-canonical grid (i -> R, j -> A, k -> S) with
anisotropic voxels; each vertebra is a cylindrical body (cortical shell +
trabecular core) plus a posterior arch around a canal and a spinous process.
"""
from __future__ import annotations

import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from features.ingest import IngestConfig
from osteo_config.ingest import CalibrationConfig
from cohort.writers import write_synthetic_marker

SPACING = (0.8, 0.8, 1.25)          # mm, (x, y, z)
SHAPE = (48, 56, 56)                # voxels
ORIGIN = (-20.0, -30.0, 100.0)      # RAS mm of voxel (0, 0, 0)
BODY_R, CANAL_R = 8.0, 4.0          # mm
LEVEL_ORDER = (12, 13, 14)          # T12, L1, L2 (ordinal levels), caudal -> cranial is reversed below


def ras_affine(spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def make_phantom(levels=LEVEL_ORDER, ring_mm: float = 2.5, seed: int = 0, shape=SHAPE, spacing=SPACING):
    """Build (hu int16, ordinal labels int16, affine, truth) on a RAS grid.

    ``levels`` are ordinal levels from cranial (top, high z) to caudal.
    truth: {'body': {level: bool}, 'posterior': {level: bool}}.
    """
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")  # mm
    cx, cy = 19.0, 27.0                          # body centre (y anterior)
    hu = np.full(shape, -1000.0)
    soft = ((x - cx) / 18.0) ** 2 + ((y - 23.0) / 22.0) ** 2 <= 1.0
    hu[soft] = 40.0
    labels = np.zeros(shape, np.int16)
    truth = {"body": {}, "posterior": {}}
    canal_cy = cy - BODY_R - CANAL_R + 0.5       # canal touches the posterior body wall
    r_xy_body = np.hypot(x - cx, y - cy)
    r_xy_canal = np.hypot(x - cx, y - canal_cy)
    top = shape[2] * spacing[2] - 6.0
    for n, level in enumerate(levels):            # cranial first
        z1 = top - n * 17.0
        z0 = z1 - 12.0
        zs = (z >= z0) & (z < z1)
        body = zs & (r_xy_body <= BODY_R)
        # arch: a ring around the canal that meets the body at its posterior wall (pedicles)
        ring = zs & (r_xy_canal > CANAL_R) & (r_xy_canal <= CANAL_R + ring_mm) & (y < cy - BODY_R + 2.0)
        spinous = zs & (np.abs(x - cx) <= 1.5) & (y < canal_cy - CANAL_R) & (y >= canal_cy - CANAL_R - 10.0)
        post = (ring | spinous) & ~body
        hu[post] = 450.0
        hu[body] = 150.0 + 20.0 * n
        hu[body & (r_xy_body > BODY_R - 1.0)] = 600.0
        hu[body & ((z < z0 + 1.0) | (z >= z1 - 1.0))] = 600.0
        labels[body | post] = level
        truth["body"][level] = body
        truth["posterior"][level] = post
    hu = np.rint(hu + rng.normal(0, 10, shape)).astype(np.int16)
    return hu, labels, ras_affine(spacing), truth


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def to_lps_storage(array: np.ndarray, affine: np.ndarray):
    """The same world data stored with flipped x and y axes (LPS voxel order)."""
    flipped = array[::-1, ::-1, :].copy()
    flip = np.eye(4)
    for ax in (0, 1):
        flip[ax, ax] = -1.0
        flip[ax, 3] = array.shape[ax] - 1
    return flipped, affine @ flip


def to_totalseg(labels: np.ndarray) -> np.ndarray:
    out = np.where(labels > 0, 44 - labels, 0).astype(np.int16)
    return out


def to_verse(labels: np.ndarray) -> np.ndarray:
    return np.where(labels > 0, labels + 7, 0).astype(np.int16)


LEVEL_NAMES = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)]


def write_totalseg_dir(labels: np.ndarray, affine: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for level in np.unique(labels[labels > 0]):
        save_nifti((labels == level).astype(np.uint8), affine, folder / f"vertebrae_{LEVEL_NAMES[level - 1]}.nii.gz")
    save_nifti(np.zeros(labels.shape, np.uint8), affine, folder / "vertebrae_C3.nii.gz")  # ignored
    return folder


def write_dicom_series(hu: np.ndarray, affine: np.ndarray, folder: Path, *, patient_name="DOE^JANE",
                       mrn="MRN0001", accession="ACC0001", tilt_mm: float = 0.0, drop_slice: int | None = None,
                       mixed_uid: bool = False, shuffle: bool = True, study_uid: str | None = None) -> Path:
    """Write a RAS-canonical HU volume as an axial LPS DICOM series, per-slice intercepts.

    Pixel (r, c) of slice k is RAS voxel (nx-1-c, ny-1-r, k): rows run
    anterior->posterior, columns right->left (the usual axial display).
    """
    folder.mkdir(parents=True, exist_ok=True)
    nx, ny, nz = hu.shape
    sx, sy, sz = (float(np.linalg.norm(affine[:3, i])) for i in range(3))
    series = [generate_uid(), generate_uid()]
    study_uid = study_uid or generate_uid()
    order = list(range(nz))
    if shuffle:
        order = list(np.random.default_rng(1).permutation(nz))
    for k in order:
        if drop_slice is not None and k == drop_slice:
            continue
        ras = affine @ np.array([nx - 1, ny - 1, k, 1.0])
        ipp = [-ras[0], -ras[1], ras[2]]
        ipp[1] += tilt_mm * k
        intercept = -1024.0 if k % 2 == 0 else -1000.0
        stored = (hu[::-1, ::-1, k].T.astype(np.int32) - int(intercept)).astype(np.int16)  # (rows, cols), signed
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientName = patient_name
        ds.PatientID = mrn
        ds.AccessionNumber = accession
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series[1] if (mixed_uid and k % 2) else series[0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]
        ds.SliceThickness = f"{sz:g}"
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = stored.tobytes()
        ds.save_as(str(folder / f"IM{k:04d}.dcm"), enforce_file_format=True)
    return folder


def small_config(**over) -> IngestConfig:
    base = dict(workers=1, spacing_mm=(1.0, 1.0, 1.0), roi_shape=(24, 24, 16), body_opening_mm=2.0,
                core_erosion_mm=1.0, min_body_voxels=150, allow_demo_key=True,
                key_env="OSTEO_TEST_KEY_UNSET", key_file="/nonexistent/osteo-test.key",
                # the geometry phantom has no subcutaneous fat (no calibration reference): its HU are taken as
                # stored; calibration is tested on the simulator's anatomy (tests/features/test_calibration.py)
                calibration=CalibrationConfig(enabled=False))
    base.update(over)
    return IngestConfig(**base)


def write_tables(raw: Path, patients: list[dict], studies: list[dict], dxa: list[dict]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(patients, columns=["mrn", "patient_name", "birth_date", "sex", "site"]).to_csv(
        raw / "patients.csv", index=False)
    pd.DataFrame(studies, columns=["mrn", "site", "scanner", "accession_number", "study_instance_uid",
                                   "study_date", "contrast", "ct_path", "ct_format", "mask_path",
                                   "mask_format"]).to_csv(raw / "ct_studies.csv", index=False)
    pd.DataFrame(dxa, columns=["mrn", "patient_name", "site", "device_vendor", "device_model", "exam_date",
                               "region", "bmd_g_cm2", "t_score", "accession_number"]).to_csv(
        raw / "dxa.csv", index=False)
    write_synthetic_marker(raw)                 # synthetic phantoms: the public demo key may pseudonymise them


@pytest.fixture(scope="session")
def synth():
    """Helpers for building phantoms and raw exports."""
    return types.SimpleNamespace(make_phantom=make_phantom, save_nifti=save_nifti, to_lps_storage=to_lps_storage,
                                 to_totalseg=to_totalseg, to_verse=to_verse, write_totalseg_dir=write_totalseg_dir,
                                 write_dicom_series=write_dicom_series, config=small_config, ras_affine=ras_affine,
                                 write_tables=write_tables)


@pytest.fixture(scope="session")
def phantom():
    """One shared phantom: (hu, labels, affine, truth)."""
    return make_phantom()
