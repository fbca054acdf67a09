"""Each fault kind is present, recorded, and actually breaks what it says."""
from __future__ import annotations


import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cohort.config import FAULT_KINDS

from .test_formats import read_dicom_ras, read_mask_ras


def _load(raw, s):
    if s.ct_format == "dicom":
        hu, aff, _ = read_dicom_ras(raw / s.ct_path)
        return hu, aff
    img = nib.as_closest_canonical(nib.load(raw / s.ct_path))
    return np.asarray(img.dataobj), img.affine


def _stored_affine(raw, s):
    p = raw / s.mask_path
    return nib.load(sorted(p.glob("*.nii.gz"))[0] if p.is_dir() else p).affine


def test_every_fault_kind_is_present_and_does_what_it_says(faulty_cohort):
    _, raw, truth, summary = faulty_cohort
    faults = pd.read_csv(truth / "faults.csv", dtype=str)
    assert set(faults.fault) == set(FAULT_KINDS) and faults.accession_number.is_unique
    studies = pd.read_csv(raw / "ct_studies.csv", dtype=str).set_index("accession_number")
    for acc, kind in faults.itertuples(index=False):
        s = studies.loc[acc]
        s = s.rename(None)
        s = type("S", (), dict(s.items()))
        if kind == "corrupt_ct":
            with pytest.raises(Exception):
                hu, _ = _load(raw, s)
                assert hu.size
        elif kind == "corrupt_mask":
            with pytest.raises(Exception):
                read_mask_ras(raw / s.mask_path, s.mask_format)
        else:
            hu, aff = _load(raw, s)
            if kind == "hu_out_of_range":
                assert hu.min() > -200 and hu.max() > 1500               # air at ~0: no intercept
                continue
            assert hu.min() <= -950
            ct_img = nib.load(raw / s.ct_path) if s.ct_format == "nifti" else None
            m_aff = _stored_affine(raw, s)
            ct_aff = ct_img.affine if ct_img is not None else None
            if kind == "missing_level":
                lev, _ = read_mask_ras(raw / s.mask_path, s.mask_format)
                present = sorted(set(np.unique(lev)) - {0})
                assert present != list(range(present[0], present[-1] + 1))   # a gap in the sequence
            elif kind == "flipped_orientation":
                flipped = np.sign(np.diag(m_aff[:3, :3])) != np.sign(np.diag(ct_aff[:3, :3])) \
                    if ct_aff is not None else None
                assert flipped is None or flipped.sum() == 1                   # exactly one axis flipped
            elif kind == "misaligned_mask" and ct_aff is not None:
                assert np.linalg.norm(m_aff[:3, 3] - ct_aff[:3, 3]) >= 5.0
            if kind in ("flipped_orientation", "misaligned_mask", "wrong_spacing"):
                p = raw / s.mask_path
                canon = nib.as_closest_canonical(nib.load(sorted(p.glob("*.nii.gz"))[0] if p.is_dir() else p))
                assert not np.allclose(canon.affine, aff, atol=1e-3)          # mask geometry no longer the CT's
            if kind == "wrong_spacing":
                zooms = np.sqrt((m_aff[:3, :3] ** 2).sum(0))
                assert not np.allclose(zooms, np.sqrt((aff[:3, :3] ** 2).sum(0)), atol=1e-3)
    assert sum(summary.faults.values()) == len(faults)
