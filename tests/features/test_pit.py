"""Point-in-time CT/DXA pairing: the two-sided window rule against a loop reference.

Three implementations must agree on every case: the loop reference written
from the rule (features.pit.reference_pairs), the pandas nearest-candidate
path, and Feast's get_historical_features through osteo_training_v1.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import pit

W = pd.Timedelta(days=183)
S = pd.Timedelta(seconds=1)
D = pd.Timedelta(days=1)
T0 = pd.Timestamp("2018-03-10 13:45:07", tz="UTC")


def edge_cases() -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str, int], str | None]]:
    """Hand-written cases: (ct rows, dxa rows, expected dxa_id per (patient, study, level))."""
    ct, dxa, want = [], [], {}

    def add_ct(p, study, when, level=13, expect=None):
        ct.append(dict(patient_id=p, study_id=study, level=level, ct_date=when))
        want[(p, study, level)] = expect

    def add_dxa(p, dxa_id, when, level=13):
        dxa.append(dict(patient_id=p, dxa_id=dxa_id, level=level, dxa_date=when))

    add_ct("p01", "s", T0, expect="d01"); add_dxa("p01", "d01", T0 - W)            # exactly -window: in
    add_ct("p02", "s", T0, expect="d02"); add_dxa("p02", "d02", T0 + W)            # exactly +window: in
    add_ct("p03", "s", T0, expect=None); add_dxa("p03", "d03", T0 - W - S)          # one second outside
    add_ct("p04", "s", T0, expect=None); add_dxa("p04", "d04", T0 + W + S)
    add_ct("p05", "s", T0, expect="z05")                                            # |dt| tie -> before
    add_dxa("p05", "z05", T0 - 10 * D); add_dxa("p05", "a05", T0 + 10 * D)
    add_ct("p06", "s", T0, expect="c06")                                            # after is nearer
    add_dxa("p06", "b06", T0 - 10 * D); add_dxa("p06", "c06", T0 + 9 * D)
    add_ct("p07", "s", T0, expect="x07")                                            # duplicates -> smallest id
    add_dxa("p07", "y07", T0 - 5 * D); add_dxa("p07", "x07", T0 - 5 * D); add_dxa("p07", "x07", T0 - 5 * D)
    add_ct("p08", "s", T0, expect="e08")                                            # equal timestamps
    add_dxa("p08", "e08", T0); add_dxa("p08", "d08", T0 + S)
    add_ct("p09", "s", T0, expect="c09")                                            # several DXAs
    for i, off in zip("abcd", (-150, -100, 50, 170)):
        add_dxa("p09", f"{i}09", T0 + off * D)
    add_ct("p10", "s1", T0, expect="a10"); add_ct("p10", "s2", T0 + 100 * D, expect="a10")  # repeat CTs
    add_dxa("p10", "a10", T0 + 60 * D); add_dxa("p10", "b10", T0 + 300 * D + 2 * S)
    add_ct("p11", "s1", T0, expect="a11"); add_ct("p11", "s2", T0, expect="a11")   # two CTs, same instant
    add_ct("p11", "s3", T0, level=14, expect="b11")
    add_dxa("p11", "a11", T0 - 3 * D); add_dxa("p11", "b11", T0 - 3 * D, level=14)
    add_ct("p12", "s", T0, expect=None); add_dxa("p12", "a12", T0 - 400 * D)        # far only
    add_ct("p13", "s", T0, expect=None); add_ct("p13", "s", T0, level=14, expect="a13")  # other level
    add_dxa("p13", "a13", T0, level=14)
    add_ct("p14", "s", T0, expect="b14")                                            # before outside, after in
    add_dxa("p14", "a14", T0 - 190 * D); add_dxa("p14", "b14", T0 + 100 * D)
    add_ct("p15", "s", T0, expect="b15")                                            # nearest before wins
    add_dxa("p15", "a15", T0 - 150 * D); add_dxa("p15", "b15", T0 - 100 * D); add_dxa("p15", "c15", T0 + 190 * D)
    add_ct("p16", "s", T0, expect="k16")                                            # tie + duplicates
    add_dxa("p16", "m16", T0 - 20 * D); add_dxa("p16", "k16", T0 - 20 * D); add_dxa("p16", "a16", T0 + 20 * D)
    add_ct("p17", "s", T0, expect=None); add_dxa("p17", "a17", T0, level=0)        # L1-L4 total is not a level
    return pd.DataFrame(ct), pd.DataFrame(dxa), want


def random_cases(n_patients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded random cases biased to the boundaries (+-window, +-1 s, 0, duplicates, repeat CTs)."""
    rng = np.random.default_rng(seed)
    special = np.array([-W - S, -W, -W + S, -S, pd.Timedelta(0), S, W - S, W, W + S], dtype=object)
    ct, dxa = [], []
    for p in range(n_patients):
        pid = f"r{seed}_{p:03d}"
        times = [T0 + pd.Timedelta(seconds=int(s)) for s in rng.integers(0, 3 * 365 * 86400, rng.integers(1, 4))]
        if rng.random() < 0.2:
            times.append(times[0])  # a second CT at the very same instant
        for s, t in enumerate(times):
            for lvl in (13, 14):
                ct.append(dict(patient_id=pid, study_id=f"st{s}", level=lvl, ct_date=t))
        for k in range(int(rng.integers(0, 6))):
            anchor = times[int(rng.integers(0, len(times)))]
            off = special[rng.integers(0, len(special))] if rng.random() < 0.5 else \
                pd.Timedelta(seconds=int(rng.integers(-400 * 86400, 400 * 86400)))
            lvl = int(rng.choice([13, 14, 0]))
            did = f"x{int(rng.integers(0, 12)):02d}"
            dxa.append(dict(patient_id=pid, dxa_id=did, level=lvl, dxa_date=anchor + off))
            if rng.random() < 0.15:  # a duplicate at the same instant with another id
                dxa.append(dict(patient_id=pid, dxa_id=f"x{int(rng.integers(0, 12)):02d}", level=lvl,
                                dxa_date=anchor + off))
    return pd.DataFrame(ct), pd.DataFrame(dxa)


def pandas_pairs(ct: pd.DataFrame, dxa: pd.DataFrame) -> list:
    kept, _ = pit.dedupe_dxa(dxa)
    before, after = pit.nearest_candidates(ct, kept)
    return [None if pd.isna(v) else v for v in pit.choose_pairs(before, after, W)["dxa_id"]]


def test_reference_matches_hand_written_expectations():
    ct, dxa, want = edge_cases()
    got = pit.reference_pairs(ct, dxa, W)
    for (p, s, lvl, d) in zip(got.patient_id, got.study_id, got.level, got.dxa_id):
        assert d == want[(p, s, lvl)], (p, s, lvl)


def test_pandas_candidates_match_reference_on_edge_cases():
    ct, dxa, want = edge_cases()
    assert pandas_pairs(ct, dxa) == [want[k] for k in zip(ct.patient_id, ct.study_id, ct.level)]


@pytest.mark.parametrize("seed", range(40))
def test_pandas_candidates_match_reference_on_random_cases(seed):
    ct, dxa = random_cases(25, seed)
    ref = pit.reference_pairs(ct, dxa, W)["dxa_id"].tolist()
    assert pandas_pairs(ct, dxa) == ref


def test_tz_naive_and_aware_inputs_give_the_same_pairs():
    ct, dxa, want = edge_cases()
    ct_naive = ct.assign(ct_date=ct["ct_date"].dt.tz_localize(None))
    dxa_tokyo = dxa.assign(dxa_date=dxa["dxa_date"].dt.tz_convert("Asia/Tokyo"))
    assert pandas_pairs(ct_naive, dxa_tokyo) == pandas_pairs(ct, dxa)
    assert pit.reference_pairs(ct_naive, dxa_tokyo, W)["dxa_id"].tolist() == \
        pit.reference_pairs(ct, dxa, W)["dxa_id"].tolist()


def test_to_utc_reads_naive_as_utc_and_converts_aware():
    mixed = pd.Series([pd.Timestamp("2020-01-01 12:00"), pd.Timestamp("2020-01-01 13:00", tz="Europe/Berlin"),
                       "2020-01-01T12:00:00Z"], dtype=object)
    out = pit.to_utc(mixed)
    assert str(out.dtype) == "datetime64[ns, UTC]"
    assert (out == pd.Timestamp("2020-01-01 12:00", tz="UTC")).all()
    with pytest.raises(pit.PairingError):
        pit.to_utc(pd.Series(["not a date"]))


def test_mirror_is_an_order_reversing_involution():
    t = pd.Series(pd.to_datetime(["1999-12-31 23:59:59.123456789", "2018-03-10", "2030-06-01 00:00:01"], utc=True,
                                 format="ISO8601"))
    m = pit.mirror_time(t)
    assert (pit.mirror_time(m) == t).all()
    assert (m.diff().dropna() < pd.Timedelta(0)).all()
    assert (m.iloc[0] - m.iloc[1]) == (t.iloc[1] - t.iloc[0])  # distances are preserved
    with pytest.raises(pit.PairingError):
        pit.mirror_time(pd.Series(pd.to_datetime(["1700-01-01"], utc=True)))


def test_dedupe_keeps_smallest_id_per_instant():
    _, dxa, _ = edge_cases()
    kept, dropped = pit.dedupe_dxa(dxa)
    assert dropped == 3  # p07: y07 and the second x07; p16: m16
    assert not kept.duplicated(["patient_id", "level", "dxa_date"]).any()
    assert set(kept.loc[kept.patient_id == "p07", "dxa_id"]) == {"x07"}
    assert set(kept.loc[kept.patient_id == "p16", "dxa_id"]) == {"k16", "a16"}


def test_choose_pairs_reports_signed_delta_and_direction():
    ct = pd.DataFrame(dict(patient_id=["a", "b", "c"], level=[13] * 3, ct_date=[T0] * 3))
    dxa = pd.DataFrame(dict(patient_id=["a", "b", "c"], level=[13] * 3, dxa_id=["1", "2", "3"],
                            dxa_date=[T0 - 2 * D, T0 + 3 * D, T0 + W + S]))
    before, after = pit.nearest_candidates(ct, dxa)
    out = pit.choose_pairs(before, after, W)
    assert out["dxa_direction"].tolist() == ["before", "after", None]
    assert out["dxa_delta_days"].iloc[:2].tolist() == [-2.0, 3.0]
    assert out["dxa_id"].isna().tolist() == [False, False, True]


# --- the same rule through Feast (get_historical_features via osteo_training_v1) ----------
def contract_tables(ct: pd.DataFrame, dxa: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fill the data-contract columns the pairing does not look at; CT dates tz-naive, DXA in Tokyo time."""
    v = ct.assign(level_name="L", site="A", scanner="A-ct0", contrast=0, sex="F", age_at_ct=60.0, roi_path="r",
                  roi_sha256="0" * 64, hu_mean=150.0, hu_std=20.0, hu_p05=100.0, hu_p50=150.0, hu_p95=200.0,
                  body_voxels=5000, ct_date=ct["ct_date"].dt.tz_localize(None))
    d = dxa.assign(site="A", device_vendor="Hologic", device_model="QDR", region="L1", bmd_g_cm2=0.9,
                   t_score=-1.2, who_class=1, dxa_date=dxa["dxa_date"].dt.tz_convert("Asia/Tokyo"))
    return v, d


def test_feast_training_set_matches_reference(tmp_path):
    from features import store
    from osteo_testing.feature_fixtures import write_fixture

    e_ct, e_dxa, _ = edge_cases()
    r_ct, r_dxa = random_cases(120, seed=7)
    ct, dxa = pd.concat([e_ct, r_ct], ignore_index=True), pd.concat([e_dxa, r_dxa], ignore_index=True)
    v, d = contract_tables(ct, dxa)
    ingest, _ = write_fixture(tmp_path / "in", tables={"vertebrae": v, "dxa": d, "texture": v.head(0),
                                                       "radiomics": v.head(0)})
    cfg = store.FeatureStoreConfig(project="pit_test", window_days=183)
    store.materialize(cfg, ingest, None, tmp_path / "repo")
    got = store.training_set(cfg, tmp_path / "repo")

    ref = pit.reference_pairs(ct, dxa, W)
    ref = ref[ref["dxa_id"].notna()]
    want = dict(zip(store.vertebra_id(ref.patient_id, ref.study_id, ref.level), ref.dxa_id))
    assert len(want) > 150  # the generated cases do pair
    assert dict(zip(got.vertebra_id, got.dxa_id)) == want  # zero mismatches, nothing extra or missing
    assert (got["dxa_delta_days"].abs() <= 183).all()
    counts = got.attrs["pairing"]
    assert counts["anchors_with_dxa"] - counts["anchors_excluded_by_window"] == counts["paired"] == len(want)
