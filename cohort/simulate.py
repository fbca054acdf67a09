"""Generate the cohort: plans -> faults -> images per patient (parallel) -> CSVs + truth.

Determinism: every random draw comes from a generator seeded by
(seed, site, patient index, purpose), and faults from (seed) over the ordered
study list, so the same study is byte-identical whatever the worker count.
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cohort.anatomy import L1, L4, level_name
from cohort.config import CohortConfig
from cohort.ct import body_network, render_study
from cohort.dxa import level_bmc_area
from cohort.faults import assign_faults, corrupt_file, drop_level, perturb_mask_affine
from cohort.plan import (FAULT_STREAM, NETWORK_STREAM, RENDER_STREAM, PatientPlan, plan_patient,
                         patient_rng)
from cohort.writers import DicomMeta, reorient, save_nifti, write_dicom_series, write_mask, write_synthetic_marker

MARKER = ".cohort_simulated"
STUDY_COLUMNS = ["mrn", "site", "scanner", "accession_number", "study_instance_uid", "study_date", "contrast",
                 "ct_path", "ct_format", "mask_path", "mask_format"]


class CohortOutputError(RuntimeError):
    """The output folder holds data the simulator did not write."""


@dataclass(frozen=True)
class CohortSummary:
    """What a run produced."""

    patients: int
    studies: int
    dxa_rows: int
    faults: dict[str, int] = field(default_factory=dict)
    per_site: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    bytes_written: int = 0

    def __str__(self) -> str:
        return (f"{self.patients} patients {self.per_site}, {self.studies} CT studies, {self.dxa_rows} DXA rows, "
                f"{sum(self.faults.values())} faulty studies, {self.bytes_written / 1e6:.0f} MB")


def _render_patient(args: tuple[CohortConfig, PatientPlan, str]) -> tuple[list[dict], list[dict]]:
    """Worker: render and write every CT study of one patient; return (study rows, truth rows)."""
    cfg, plan, raw = args
    raw_dir = Path(raw)
    bone = plan.bone
    needed = sorted({lv for s in plan.studies for lv in s.protocol.levels})
    nets = {lv: body_network(patient_rng(cfg.seed, plan.site, plan.index, NETWORK_STREAM, lv),
                             bone.vertebra(lv), bone.vbmd[lv], cfg.fine_voxel_mm, cfg.bone) for lv in needed}
    study_rows, core = [], {}
    for st in plan.studies:
        rng = patient_rng(cfg.seed, plan.site, plan.index, RENDER_STREAM, st.index)
        frng = patient_rng(cfg.seed, plan.site, plan.index, FAULT_STREAM, st.index)
        r = render_study(rng, bone, st.protocol, cfg.scanners[st.scanner], cfg.ct, cfg.bone, nets,
                         cfg.fov_mm, cfg.fine_voxel_mm)
        core[st.index] = (st, r.core_hu)
        d = raw_dir / "ct" / st.accession
        affine = r.geometry.affine
        hu = r.hu
        if st.fault == "hu_out_of_range" and st.ct_format == "nifti":
            hu = (hu.astype(np.int32) + 1024).astype(np.int16)      # stored without the rescale intercept
        if st.ct_format == "dicom":
            meta = DicomMeta(plan.name, plan.mrn, plan.dates.birth.strftime("%Y%m%d"), plan.sex, st.accession,
                             st.study_uid, st.series_uid, st.series_uid + ".1", st.date.replace("-", ""),
                             f"Hospital {plan.site}", cfg.scanners[st.scanner].manufacturer,
                             cfg.scanners[st.scanner].model, cfg.scanners[st.scanner].kvp,
                             st.protocol.contrast, st.series_uid)
            write_dicom_series(d / "dicom", hu, affine, meta, rng, no_intercept=st.fault == "hu_out_of_range")
            ct_rel = f"ct/{st.accession}/dicom"
        else:
            save_nifti(d / "ct.nii.gz", *reorient(hu, affine, st.orientation))
            ct_rel = f"ct/{st.accession}/ct.nii.gz"
        labels = r.labels
        if st.fault == "missing_level":
            labels, _ = drop_level(labels, st.protocol.levels, frng)
        lab, laff = reorient(labels, affine, st.orientation)
        mask_name = write_mask(d, lab, perturb_mask_affine(laff, st.fault, frng), st.mask_format)
        if st.fault == "corrupt_ct":
            files = sorted((d / "dicom").glob("IM*.dcm")) if st.ct_format == "dicom" else [d / "ct.nii.gz"]
            corrupt_file(files[len(files) // 2], frng)
        if st.fault == "corrupt_mask":
            corrupt_file(sorted((d / mask_name).glob("*.nii.gz"))[0] if st.mask_format == "totalseg_dir"
                         else d / mask_name, frng)
        study_rows.append({
            "mrn": plan.mrn, "site": plan.site, "scanner": st.scanner, "accession_number": st.accession,
            "study_instance_uid": st.study_uid, "study_date": st.date, "contrast": int(st.protocol.contrast),
            "ct_path": ct_rel, "ct_format": st.ct_format, "mask_path": f"ct/{st.accession}/{mask_name}",
            "mask_format": st.mask_format})
    return study_rows, _truth_rows(cfg, plan, nets, core)


def _truth_rows(cfg: CohortConfig, plan: PatientPlan, nets: dict, core: dict) -> list[dict]:
    """Per patient x level ground truth (latent bone, microstructure, DXA truth, CT core HU)."""
    from cohort.bone import microstructure_targets

    rows = []
    for v in plan.bone.spine:
        lv = v.level
        bvtv, tb_th, _, h_thin = microstructure_targets(plan.bone.vbmd[lv], cfg.bone)
        net = nets.get(lv)
        bmc, area = level_bmc_area(plan.bone, lv, plan.deg, cfg.bone) if L1 <= lv <= L4 else (np.nan, np.nan)
        first = [(st, c[lv]) for st, c in core.values() if lv in c]
        rows.append({
            "site": plan.site, "mrn": plan.mrn, "patient_index": plan.index, "sex": plan.sex,
            "age": round(plan.age, 3), "level": lv, "level_name": level_name(lv),
            "latent_vbmd": plan.bone.vbmd[lv],
            "bv_tv": net.bv_tv if net else bvtv, "tb_th_mm": net.tb_th_mm if net else tb_th,
            "tb_sp_mm": net.tb_sp_mm if net else tb_th * (1 / bvtv - 1),
            "tb_n_per_mm": net.tb_n_per_mm if net else bvtv / tb_th,
            "horizontal_share": net.horizontal_share if net else np.nan, "horizontal_thinning": h_thin,
            "network_generated": net is not None, "marrow_fat": plan.bone.marrow_fat,
            "cortical_mm": v.cortex_mm, "body_width_mm": 2 * v.a, "body_depth_mm": 2 * v.b, "body_height_mm": v.h,
            "true_bmc_g": bmc, "true_area_cm2": area, "true_abmd": bmc / area if area == area else np.nan,
            "osteophyte_g": plan.deg.osteophyte_g.get(lv, 0.0), "aortic_calc": plan.deg.aortic_calc,
            "dxa_in_window": plan.dates.dxa_in_window,
            "ct_accession": first[0][0].accession if first else "",
            "ct_scanner": first[0][0].scanner if first else "",
            "ct_contrast": bool(first[0][0].protocol.contrast) if first else False,
            "ct_fault": (first[0][0].fault or "") if first else "",
            "ct_hu_core": first[0][1] if first else np.nan,
            "repeat_ct_hu_core": first[1][1] if len(first) > 1 else np.nan,
        })
    return rows


def _prepare_dir(path: Path) -> None:
    """Create/clean an output folder, refusing to touch folders the simulator did not write."""
    if path.exists() and any(path.iterdir()) and not (path / MARKER).exists():
        raise CohortOutputError(f"{path} is not empty and was not written by the cohort simulator: "
                                f"choose an empty folder (paths.raw / paths.truth)")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("written by cohort.simulate; safe to delete\n")


def run_cohort(cfg: CohortConfig, raw_dir: Path, truth_dir: Path, sites: list[str] | None = None,
               n_patients: int | None = None, progress: bool = True) -> CohortSummary:
    """Generate the cohort into ``raw_dir`` (hospital-shaped export) and ``truth_dir``.

    Args:
        cfg: parsed ``cohort:`` section.
        raw_dir: raw export root (docs/data_contract.md §1); recreated.
        truth_dir: simulator truth root; recreated.
        sites: subset of site names (default: all in params).
        n_patients: cap on patients per site (quick subsets; the first patients of each site).
        progress: show a tqdm progress bar.

    Returns:
        A :class:`CohortSummary`.
    """
    t0 = time.perf_counter()
    names = list(cfg.sites) if sites is None else list(sites)
    unknown = [s for s in names if s not in cfg.sites]
    if unknown:
        raise KeyError(f"unknown sites {unknown}: choose from {sorted(cfg.sites)}")
    plans: list[PatientPlan] = []
    for s in names:
        n = cfg.n_patients(s)
        n = min(n, n_patients) if n_patients is not None else n
        plans += [plan_patient(cfg, cfg.sites[s], i) for i in range(n)]
    studies = [st for p in plans for st in p.studies]
    kinds = assign_faults(len(studies), cfg.faults, np.random.default_rng(np.random.SeedSequence([cfg.seed, 99])),
                          [len(st.protocol.levels) for st in studies])
    for st, k in zip(studies, kinds):
        st.fault = k
    raw_dir, truth_dir = Path(raw_dir), Path(truth_dir)
    _prepare_dir(raw_dir)
    _prepare_dir(truth_dir)
    jobs = [(cfg, p, str(raw_dir)) for p in plans]
    bar = tqdm(total=len(jobs), desc="cohort", unit="patient", disable=not progress)
    results = []
    if cfg.workers <= 1:
        for j in jobs:
            results.append(_render_patient(j))
            bar.update()
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(cfg.workers) as pool:
            for res in pool.imap(_render_patient, jobs, chunksize=1):
                results.append(res)
                bar.update()
    bar.close()
    pd.DataFrame([{"mrn": p.mrn, "patient_name": p.name, "birth_date": p.dates.birth.isoformat(),
                   "sex": p.sex, "site": p.site} for p in plans]).to_csv(raw_dir / "patients.csv", index=False)
    pd.DataFrame([r for res in results for r in res[0]], columns=STUDY_COLUMNS).to_csv(
        raw_dir / "ct_studies.csv", index=False)
    dxa = pd.DataFrame([r for p in plans for r in p.dxa_rows])
    dxa.to_csv(raw_dir / "dxa.csv", index=False)
    write_synthetic_marker(raw_dir)
    pd.DataFrame([r for res in results for r in res[1]]).to_parquet(truth_dir / "truth.parquet", index=False)
    faults = pd.DataFrame([{"accession_number": st.accession, "fault": st.fault} for st in studies if st.fault],
                          columns=["accession_number", "fault"])
    faults.to_csv(truth_dir / "faults.csv", index=False)
    size = sum(f.stat().st_size for f in raw_dir.rglob("*") if f.is_file())
    return CohortSummary(
        patients=len(plans), studies=len(studies), dxa_rows=len(dxa),
        faults=faults["fault"].value_counts().to_dict(), per_site={s: sum(p.site == s for p in plans) for s in names},
        seconds=round(time.perf_counter() - t0, 1), bytes_written=size)
