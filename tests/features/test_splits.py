"""Patient-level splits: one split per patient, exact per-site counts, determinism, integrity."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features import splits as sp

PAPER_A = 1330 + 226 + 669


def cohort(counts: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Vertebra-like rows: several rows per patient, shuffled."""
    rows = [(f"{site}{i:05d}", site) for site, n in counts.items() for i in range(n) for _ in range(3)]
    df = pd.DataFrame(rows, columns=["patient_id", "site"])
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_every_patient_in_exactly_one_split():
    out = sp.assign_splits(cohort({"A": 300, "B": 120, "C": 90, "D": 50}), sp.SplitConfig())
    assert out["patient_id"].is_unique
    assert set(out["split"]) <= set(sp.SPLITS)
    assert len(out) == 560


def test_paper_site_a_counts_and_external_site_is_test_only():
    cfg = sp.SplitConfig(fractions=(0.6, 0.1, 0.3), external_sites=("D",))
    out = sp.assign_splits(cohort({"A": PAPER_A, "D": 400}), cfg)
    a = out[out.site == "A"]["split"].value_counts().to_dict()
    assert a == {"train": 1335, "valid": 223, "test": 667}  # paper Table 1 site A: 1330/226/669; .5 ties -> valid
    assert set(out[out.site == "D"]["split"]) == {"test"}


@pytest.mark.parametrize("assignment", ["rank", "threshold"])
def test_split_does_not_depend_on_row_order(assignment):
    cfg = sp.SplitConfig(assignment=assignment)
    a = sp.assign_splits(cohort({"A": 200, "B": 80}, seed=1), cfg)
    b = sp.assign_splits(cohort({"A": 200, "B": 80}, seed=2), cfg)
    pd.testing.assert_frame_equal(a, b)
    assert sp.table_sha256(a) == sp.table_sha256(b.sample(frac=1.0, random_state=3))


def test_seed_changes_the_split():
    c = cohort({"A": 200})
    a = sp.assign_splits(c, sp.SplitConfig(seed=1)).set_index("patient_id")["split"]
    b = sp.assign_splits(c, sp.SplitConfig(seed=2)).set_index("patient_id")["split"]
    assert (a != b).mean() > 0.2


def test_threshold_assignment_is_stable_when_patients_are_added():
    cfg = sp.SplitConfig(assignment="threshold")
    small = sp.assign_splits(cohort({"A": 200}), cfg).set_index("patient_id")["split"]
    big = sp.assign_splits(cohort({"A": 400}), cfg).set_index("patient_id")["split"]
    assert (big.loc[small.index] == small).all()
    frac = big.value_counts(normalize=True)
    assert abs(frac["train"] - 0.6) < 0.08 and abs(frac["test"] - 0.3) < 0.08


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 33, 2225])
def test_split_counts_sum_to_n_and_round_to_nearest(n):
    counts = sp.split_counts(n, (0.6, 0.1, 0.3))
    assert sum(counts) == n
    assert all(abs(c - f * n) < 1.0 for c, f in zip(counts, (0.6, 0.1, 0.3)))


def test_patient_u_is_uniformish_and_in_unit_interval():
    u = np.array([sp.patient_u(f"p{i}", 5) for i in range(4000)])
    assert ((u >= 0) & (u < 1)).all()
    assert abs(u.mean() - 0.5) < 0.02


def test_patient_at_two_sites_is_an_error():
    df = pd.DataFrame({"patient_id": ["x", "x"], "site": ["A", "B"]})
    with pytest.raises(sp.SplitError, match="appears at sites"):
        sp.assign_splits(df, sp.SplitConfig())


def test_bad_fractions_are_rejected():
    with pytest.raises(sp.SplitError, match="summing to 1"):
        sp.SplitConfig(fractions=(0.6, 0.2, 0.3))
    with pytest.raises(sp.SplitError, match="use train, valid, test"):
        sp.SplitConfig.from_params({"splits": {"fractions": {"train": 0.7, "val": 0.3}}})


def test_site_override_from_params():
    cfg = sp.SplitConfig.from_params({"splits": {"site_fractions": {"B": {"train": 0.5, "valid": 0.0,
                                                                          "test": 0.5}}}})
    out = sp.assign_splits(cohort({"A": 100, "B": 100}), cfg)
    assert out[out.site == "B"]["split"].value_counts().to_dict() == {"train": 50, "test": 50}
    assert out[out.site == "A"]["split"].value_counts().to_dict() == {"train": 60, "test": 30, "valid": 10}


def test_run_splits_writes_table_and_hash_and_detects_edits(tmp_path):
    ingest = tmp_path / "ingest"
    ingest.mkdir()
    cohort({"A": 50, "D": 10}).to_parquet(ingest / "vertebrae.parquet")
    summary = sp.run_splits(sp.SplitConfig(), ingest, tmp_path / "interim")
    table = sp.load_splits(summary.path)
    assert sp.table_sha256(table) == summary.sha256
    meta = json.loads((tmp_path / "interim" / "splits" / "splits.sha256.json").read_text())
    assert meta["counts"]["D"] == {"test": 10} and meta["source"] == "vertebrae.parquet"
    table.loc[0, "split"] = "train" if table.loc[0, "split"] != "train" else "test"
    table.to_parquet(summary.path, index=False)
    with pytest.raises(sp.SplitIntegrityError):
        sp.load_splits(summary.path)
