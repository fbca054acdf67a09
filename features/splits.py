"""Patient-level train/valid/test splits per site (paper Table 1), deterministic by HMAC.

Every patient gets ``u = HMAC-SHA256(key = "osteo-splits:<seed>", msg = patient_id)``
read as a number in [0, 1). The split depends only on ``u``, the patient's
site and the configured fractions, never on row order or an RNG stream:

* ``rank`` (default): within a site, patients sorted by ``u`` are cut at
  exact counts (largest-remainder rounding of ``fraction x n``), so a site of
  2,225 patients at 0.6/0.1/0.3 gets 1335/222/668 (paper site A: 1330/226/669).
* ``threshold``: ``u < f_train`` -> train, ``< f_train + f_valid`` -> valid,
  else test; a patient's split never changes when patients are added, at the
  price of counts that only approximate the fractions.

Sites in ``external_sites`` (paper: site D) are test-only. One row per
patient, so no patient can sit in two splits; a patient listed under two
sites is an error. The table is written as parquet with a SHA-256 of its
canonical CSV form (row order and parquet writer independent).
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features import atomic
from osteo_config.splits import SPLITS, ASSIGNMENTS, SplitError, SplitConfig  # noqa: F401  (configuration lives in the leaf package)


class SplitIntegrityError(SplitError):
    """A stored split table does not match its recorded SHA-256."""


@dataclass(frozen=True)
class SplitSummary:
    """What :func:`run_splits` wrote: the table, its SHA-256 and counts per site and split."""

    path: str
    sha256: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def patient_u(patient_id: str, seed: int) -> float:
    """``HMAC-SHA256("osteo-splits:<seed>", patient_id)`` as a float in [0, 1) (first 52 bits)."""
    mac = hmac.new(f"osteo-splits:{int(seed)}".encode(), str(patient_id).encode(), hashlib.sha256).digest()
    return (int.from_bytes(mac[:8], "big") >> 12) / float(1 << 52)


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Largest-remainder rounding of ``fractions x n`` (sums to ``n``; ties go to train, valid, test)."""
    exact = np.round(np.asarray(fractions, dtype=float) * n, 9)  # 0.1 * 2225 is 222.50000000000003
    counts = np.floor(exact).astype(int)
    order = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return int(counts[0]), int(counts[1]), int(counts[2])


def assign_splits(patients: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """One split per patient (pure).

    Args:
        patients: rows with ``patient_id`` and ``site`` (repeats of the same pair are fine).
        cfg: the split configuration.

    Returns:
        ``patient_id``, ``site``, ``split`` (train | valid | test), ``u``; sorted by site, patient.

    Raises:
        SplitError: a column is missing or a patient is listed under two sites.
    """
    missing = [c for c in ("patient_id", "site") if c not in patients.columns]
    if missing:
        raise SplitError(f"patient table lacks {missing}: pass patients.parquet or vertebrae.parquet")
    p = patients[["patient_id", "site"]].astype(str).drop_duplicates()
    multi = p["patient_id"].duplicated(keep=False)
    if multi.any():
        pid = p.loc[multi, "patient_id"].iloc[0]
        raise SplitError(f"patient {pid} appears at sites {sorted(p.loc[p.patient_id == pid, 'site'])}: "
                         "a patient must belong to one site; fix the ingested tables")
    p = p.assign(u=[patient_u(pid, cfg.seed) for pid in p["patient_id"]])
    p["split"] = "test"
    for site, grp in p.groupby("site", sort=True):
        if site in cfg.external_sites:
            continue  # external validation site: test only
        fr = cfg.fractions_for(site)
        if cfg.assignment == "threshold":
            cuts = np.array([fr[0], fr[0] + fr[1]])
            idx = np.searchsorted(cuts, grp["u"].to_numpy(), side="right")
            p.loc[grp.index, "split"] = np.asarray(SPLITS)[idx]
        else:
            n_tr, n_va, _ = split_counts(len(grp), fr)
            order = grp.sort_values(["u", "patient_id"]).index
            p.loc[order[:n_tr], "split"] = "train"
            p.loc[order[n_tr:n_tr + n_va], "split"] = "valid"
    return p[["patient_id", "site", "split", "u"]].sort_values(["site", "patient_id"]).reset_index(drop=True)


def table_sha256(table: pd.DataFrame) -> str:
    """SHA-256 of the canonical form ``patient_id,site,split`` lines, sorted (order independent)."""
    rows = sorted(zip(table["patient_id"].astype(str), table["site"].astype(str), table["split"].astype(str)))
    blob = "".join(f"{a},{b},{c}\n" for a, b, c in rows).encode()
    return hashlib.sha256(blob).hexdigest()


def run_splits(cfg: SplitConfig, ingest_dir: str | Path, interim_dir: str | Path) -> SplitSummary:
    """Read the ingested patients, assign splits, write ``<interim>/<cfg.file>`` + ``.sha256.json``.

    ``patients.parquet`` is used when present, else the patients of ``vertebrae.parquet``.
    """
    ingest_dir = Path(ingest_dir)
    src = next((ingest_dir / f for f in ("patients.parquet", "vertebrae.parquet") if (ingest_dir / f).is_file()), None)
    if src is None:
        raise SplitError(f"no patients.parquet or vertebrae.parquet in {ingest_dir}: run `osteo ingest` first")
    table = assign_splits(pd.read_parquet(src, columns=["patient_id", "site"]), cfg)
    out = Path(interim_dir) / cfg.file
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_parquet(out, table, index=False)
    digest = table_sha256(table)
    counts = {s: {k: int(v) for k, v in g["split"].value_counts().items()} for s, g in table.groupby("site")}
    meta = {"sha256": digest, "rows": len(table), "seed": cfg.seed, "assignment": cfg.assignment,
            "external_sites": list(cfg.external_sites), "counts": counts, "source": src.name}
    atomic.write_json(out.with_suffix(".sha256.json"), meta, indent=2, sort_keys=True)
    return SplitSummary(path=str(out), sha256=digest, counts=counts)


def load_splits(path: str | Path, verify: bool = True) -> pd.DataFrame:
    """Read a split table; with ``verify`` check it against its ``.sha256.json``.

    Raises:
        SplitIntegrityError: the table's hash differs from the recorded one (or no record exists).
    """
    path = Path(path)
    table = pd.read_parquet(path)
    if verify:
        meta = path.with_suffix(".sha256.json")
        if not meta.is_file():
            raise SplitIntegrityError(f"{meta} missing: regenerate the splits with `osteo splits`")
        want = json.loads(meta.read_text())["sha256"]
        got = table_sha256(table)
        if got != want:
            raise SplitIntegrityError(f"{path} hashes to {got[:12]}..., recorded {want[:12]}...: "
                                      "the table was edited; regenerate it with `osteo splits`")
    return table
