"""Per-patient plans: demographics, latent bone, exams, formats (cheap, no images).

Each patient's plan is drawn from its own generator seeded by
(seed, site key, patient index), so any subset of the cohort (one site, the
first few patients) yields exactly the same patients as the full run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cohort import phi
from cohort.anatomy import L4, L5, L6
from cohort.bone import PatientBone, draw_patient_bone
from cohort.config import CohortConfig, SiteConfig
from cohort.ct import StudyProtocol
from cohort.dxa import Degeneration, draw_degeneration, measure, true_regions
from cohort.timing import ExamDates, draw_dates

# Stream ids of the per-patient SeedSequence (seed, site, index, STREAM, ...).
PLAN_STREAM, NETWORK_STREAM, RENDER_STREAM, FAULT_STREAM = 0, 1, 2, 3


def patient_rng(seed: int, site: str, index: int, stream: int, *extra: int) -> np.random.Generator:
    """Independent generator for one patient and purpose."""
    return np.random.default_rng(np.random.SeedSequence([seed, phi.site_key(site), index, stream, *extra]))


@dataclass
class StudyPlan:
    accession: str
    study_uid: str
    series_uid: str
    date: str                     # YYYY-MM-DD
    scanner: str
    protocol: StudyProtocol
    ct_format: str                # nifti | dicom
    mask_format: str              # totalseg | totalseg_dir | verse
    orientation: str              # RAS | LPS | LAS
    index: int                    # 0 = first CT, 1 = repeat
    fault: str | None = None


@dataclass
class PatientPlan:
    site: str
    index: int
    mrn: str
    name: str
    sex: str
    age: float                    # at the first CT
    bone: PatientBone
    deg: Degeneration
    dates: ExamDates
    studies: list[StudyPlan] = field(default_factory=list)
    dxa_rows: list[dict] = field(default_factory=list)


def _coverage(rng: np.random.Generator, bone: PatientBone, thoracic_share: float) -> tuple[int, ...]:
    """Contiguous covered levels: mostly abdominal (T9-T12 .. L4/L5), some chest-focused (T5-T8 .. T12-L4)."""
    if rng.random() < thoracic_share:
        start, end = int(rng.integers(5, 9)), int(rng.integers(12, L4 + 1))
    else:
        start = int(rng.integers(9, 13))
        end = L5 if rng.random() < 0.8 else L4
        if bone.n_lumbar == 6 and end == L5 and rng.random() < 0.7:
            end = L6
    return tuple(range(start, end + 1))


def plan_patient(cfg: CohortConfig, site: SiteConfig, index: int) -> PatientPlan:
    """Draw everything about one patient except the images (deterministic in (seed, site, index))."""
    rng = patient_rng(cfg.seed, site.name, index, PLAN_STREAM)
    sex = "F" if rng.random() < site.female_share else "M"
    lo, hi = site.age_range
    age = float(np.clip(rng.normal(site.age_mean, site.age_sd), lo, hi))
    name = phi.fake_name(rng, sex)
    bone = draw_patient_bone(rng, sex, age, cfg.bone)
    deg = draw_degeneration(rng, age)
    dates = draw_dates(rng, age, cfg.timing)
    plan = PatientPlan(site.name, index, phi.mrn(site.name, index), name, sex, age, bone, deg, dates)
    names, weights = zip(*site.scanners)
    weights = np.asarray(weights) / np.sum(weights)
    for s, when in enumerate(dates.ct):
        scanner = names[int(rng.choice(len(names), p=weights))]
        sc = cfg.scanners[scanner]
        levels = _coverage(rng, bone, cfg.timing.thoracic_study_share)
        u = rng.random()
        mask_fmt = "verse" if (L6 in levels or u < cfg.verse_share) else (
            "totalseg_dir" if u < cfg.verse_share + cfg.totalseg_dir_share else "totalseg")
        l1 = bone.vertebra(13)
        fat = float(rng.uniform(5.0, 20.0) * (1.3 if sex == "F" else 1.0))
        back = float(min(-l1.extent_mm()[0] + rng.uniform(8.0, 18.0) + fat, cfg.fov_mm[1] - 36.0))
        proto = StudyProtocol(
            levels=levels, pixel_mm=round(float(rng.uniform(*sc.pixel_mm)), 3),
            slice_mm=float(sc.slice_mm[int(rng.integers(len(sc.slice_mm)))]),
            contrast=bool(rng.random() < site.contrast_share),
            fov_shift=(round(float(rng.uniform(-4, 4)), 2), round(float(rng.uniform(-3, 3)), 2)),
            back_depth_mm=back, fat_mm=min(fat, back - (-l1.extent_mm()[0]) - 2.0), aortic_calc=deg.aortic_calc)
        acc = phi.accession(site.name, index, s, "CT")
        plan.studies.append(StudyPlan(
            accession=acc, study_uid=phi.dicom_uid(cfg.seed, "study", acc),
            series_uid=phi.dicom_uid(cfg.seed, "series", acc), date=when.isoformat(), scanner=scanner,
            protocol=proto, ct_format="dicom" if rng.random() < cfg.dicom_share else "nifti",
            mask_format=mask_fmt, orientation=str(cfg.orientations[int(rng.integers(len(cfg.orientations)))]),
            index=s))
    dev = cfg.dxa_devices[site.dxa_device]
    regions = true_regions(bone, deg, cfg.bone)
    exams = [measure(rng, regions, dev)]
    if dates.repeat_dxa:
        exams.append(measure(rng, regions, dev))
    for e, exam in enumerate(exams):
        acc = phi.accession(site.name, index, e, "DX")
        for region, (bmd, t) in exam.items():
            plan.dxa_rows.append({
                "mrn": plan.mrn, "patient_name": name, "site": site.name, "device_vendor": dev.vendor,
                "device_model": dev.model, "exam_date": dates.dxa.isoformat(), "region": region,
                "bmd_g_cm2": bmd, "t_score": t, "accession_number": acc})
    if dates.duplicate_dxa:
        plan.dxa_rows += [dict(r) for r in plan.dxa_rows[:5]]
    return plan
