"""Point-in-time pairing of CT vertebrae with DXA labels (the paper's 6-month rule).

A CT vertebra and a DXA measurement of the same patient and level form a
training pair when the exams are at most ``window`` apart **in either
direction**: ``|t_DXA - t_CT| <= window`` (paper: 183 days). Among several
DXA rows in the window exactly one is chosen by the rule::

    smallest |t_DXA - t_CT|, then the DXA taken before (or at) the CT,
    then the smallest dxa_id.

Feast's point-in-time join only looks backward (latest row with
``t <= anchor`` within the view's TTL). Both directions are covered with two
anchored look-ups, each returning the *nearest* candidate on its side:

* backward: anchor ``t_CT`` on the DXA view with ``ttl = window`` gives the
  latest DXA in ``[t_CT - window, t_CT]`` (the nearest before);
* forward: the same rows with time mirrored, ``m(t) = P - (t - E)``
  (:func:`mirror_time`, order-reversing), anchored at ``m(t_CT)`` with
  ``ttl = window``: the latest mirrored time in ``[m(t_CT) - window, m(t_CT)]``
  is the earliest DXA in ``[t_CT, t_CT + window]`` (the nearest after).

The rule above only ever picks a nearest neighbour on one side, so the two
candidates contain the answer; :func:`choose_pairs` applies the rule to them.
Rows sharing (patient, level, timestamp) cannot be told apart by a
point-in-time join, so :func:`dedupe_dxa` keeps the smallest ``dxa_id``
first (the rule's last tie-break). :func:`nearest_candidates` is the same
two-sided look-up in plain pandas and :func:`reference_pairs` a loop written
straight from the rule; tests compare all three.

Everything here is pure pandas: no Feast, no I/O.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

KEYS = ("patient_id", "level")
"""Join keys of a DXA label: the same patient and the same vertebral level."""

MIRROR_PIVOT = pd.Timestamp("2100-01-01", tz="UTC")
"""``P`` in ``m(t) = P - (t - E)``; dates 1840-2230 map inside pandas' range."""

EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
"""``E`` in ``m(t) = P - (t - E)``."""

_MIRROR_SAFE = (pd.Timestamp("1840-01-01", tz="UTC"), pd.Timestamp("2230-01-01", tz="UTC"))


class PairingError(ValueError):
    """Input to the CT/DXA pairing is unusable (missing columns, unparsable dates)."""


def to_utc(values: Iterable | pd.Series) -> pd.Series:
    """Timestamps as ``datetime64[ns, UTC]``: tz-naive values are read as UTC, aware ones converted.

    Args:
        values: datetimes, strings or a Series of either.

    Returns:
        A Series of UTC timestamps (index kept when ``values`` is a Series).

    Raises:
        PairingError: a value cannot be parsed as a timestamp.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(list(values))
    try:
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            out = s.dt.tz_convert("UTC")
        elif pd.api.types.is_datetime64_any_dtype(s.dtype):
            out = s.dt.tz_localize("UTC")
        else:  # objects: mixed naive/aware datetimes or strings, one by one
            out = pd.to_datetime(s.map(_one_utc), utc=True)
    except (ValueError, TypeError) as exc:
        raise PairingError(f"cannot read timestamps ({exc}): write dates as ISO 8601 or datetime64") from exc
    return out.astype("datetime64[ns, UTC]")


def _one_utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    if ts is pd.NaT:
        return ts
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def mirror_time(ts: pd.Series) -> pd.Series:
    """Order-reversing involution ``m(t) = P - (t - E)`` used for the forward look-up.

    ``m(m(t)) == t`` exactly (nanoseconds), and ``a < b`` iff ``m(a) > m(b)``,
    so "latest mirrored time <= m(anchor)" is "earliest time >= anchor".

    Raises:
        PairingError: a timestamp lies outside 1840-2230, where the mirror would overflow.
    """
    ts = to_utc(ts)
    bad = ts.notna() & ((ts < _MIRROR_SAFE[0]) | (ts > _MIRROR_SAFE[1]))
    if bad.any():
        raise PairingError(f"{int(bad.sum())} timestamps outside 1840-2230 (e.g. {ts[bad].iloc[0]}): "
                           "check the date shift of the ingested tables")
    return MIRROR_PIVOT - (ts - EPOCH)


def dedupe_dxa(dxa: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one DXA row per (patient, level, timestamp): the smallest ``dxa_id``.

    Args:
        dxa: rows with ``patient_id``, ``level``, ``dxa_date``, ``dxa_id``.

    Returns:
        ``(rows, n_dropped)`` with ``dxa_date`` in UTC, sorted by key, date and id.
    """
    _require(dxa, (*KEYS, "dxa_date", "dxa_id"), "DXA table")
    out = dxa.copy()
    out["dxa_date"] = to_utc(out["dxa_date"])
    out = out.sort_values([*KEYS, "dxa_date", "dxa_id"], kind="mergesort")
    kept = out.drop_duplicates([*KEYS, "dxa_date"], keep="first").reset_index(drop=True)
    return kept, len(out) - len(kept)


def nearest_candidates(anchors: pd.DataFrame, dxa: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The nearest DXA on each side of every anchor, in plain pandas (what the Feast look-ups return).

    Args:
        anchors: rows with ``patient_id``, ``level``, ``ct_date``.
        dxa: de-duplicated DXA rows (:func:`dedupe_dxa`).

    Returns:
        ``(before, after)``: the anchors with the DXA columns of the latest DXA at or before
        ``ct_date`` and of the earliest DXA at or after it (NaN where there is none).
        No window is applied here.
    """
    _require(anchors, (*KEYS, "ct_date"), "anchor table")
    a = anchors.copy()
    a["ct_date"] = to_utc(a["ct_date"])
    a = a.reset_index(drop=True)
    a["_row"] = np.arange(len(a))
    d = dxa.copy()
    d["dxa_date"] = to_utc(d["dxa_date"])
    d["_t"] = d["dxa_date"]
    out = []
    for direction in ("backward", "forward"):
        m = pd.merge_asof(a.sort_values("ct_date"), d.sort_values("_t"), left_on="ct_date", right_on="_t",
                          by=list(KEYS), direction=direction, allow_exact_matches=True)
        out.append(m.sort_values("_row").drop(columns=["_row", "_t"]).reset_index(drop=True))
    return out[0], out[1]


def choose_pairs(before: pd.DataFrame, after: pd.DataFrame, window: pd.Timedelta,
                 anchor_columns: Iterable[str] = (*KEYS, "ct_date")) -> pd.DataFrame:
    """Apply the window and the tie rule to the two nearest candidates of each anchor.

    Args:
        before: one row per anchor with the backward candidate's ``dxa_id``, ``dxa_date`` and
            label columns (NaN/NaT where there is none).
        after: the same anchors, in the same order, with the forward candidate.
        window: maximum ``|t_DXA - t_CT|`` (inclusive).
        anchor_columns: columns describing the anchor (equal on both sides); every other
            column of ``before`` is a candidate column. Must include ``ct_date``.

    Returns:
        The anchors with the chosen candidate's columns (all NaN when neither is in the window),
        plus ``dxa_delta_days`` (signed, DXA minus CT, days) and ``dxa_direction``
        (``before`` | ``after`` | None).
    """
    if len(before) != len(after):
        raise PairingError(f"{len(before)} backward vs {len(after)} forward rows: pass the same anchors to both")
    anchor_columns = list(anchor_columns)
    _require(before, [*anchor_columns, "dxa_id", "dxa_date"], "backward candidates")
    _require(after, [*anchor_columns, "dxa_id", "dxa_date"], "forward candidates")
    b, f = before.reset_index(drop=True).copy(), after.reset_index(drop=True).copy()
    for side in (b, f):
        side["ct_date"] = to_utc(side["ct_date"])
        side["dxa_date"] = to_utc(side["dxa_date"])
    gap_b = (b["dxa_date"] - b["ct_date"]).abs()
    gap_f = (f["dxa_date"] - f["ct_date"]).abs()
    ok_b = (b["dxa_id"].notna() & (gap_b <= window)).to_numpy()
    ok_f = (f["dxa_id"].notna() & (gap_f <= window)).to_numpy()
    # the rule: smallest |dt|; equal |dt| -> before (dt = 0 is the same row on both sides)
    take_f = ok_f & (~ok_b | (gap_f < gap_b).to_numpy())
    none = ~ok_b & ~ok_f
    cand_cols = [c for c in b.columns if c not in anchor_columns]
    out = b[anchor_columns].copy()
    for c in cand_cols:
        col = b[c].where(~take_f, f[c]) if c in f.columns else b[c].where(~take_f)
        out[c] = col.where(~none)
    out["dxa_date"] = to_utc(out["dxa_date"])
    out["dxa_delta_days"] = (out["dxa_date"] - out["ct_date"]).dt.total_seconds() / 86400.0
    out["dxa_direction"] = pd.Series(np.where(take_f, "after", "before"), dtype=object).where(~none, None)
    return out


def pair_exclusions(anchors: pd.DataFrame, dxa: pd.DataFrame, window: pd.Timedelta) -> dict[str, int]:
    """How the window rule thins the same-patient, same-level CT x DXA combinations.

    Returns:
        ``candidate_pairs`` (all combinations), ``pairs_outside_window`` (|dt| > window),
        ``anchors_with_dxa`` (anchors with any DXA of that patient+level) and
        ``anchors_excluded_by_window`` (of those, anchors left without a pair by the rule).
    """
    a = anchors[[*KEYS, "ct_date"]].copy()
    a["ct_date"] = to_utc(a["ct_date"])
    a["_row"] = np.arange(len(a))
    d = dxa[[*KEYS, "dxa_date"]].copy()
    d["dxa_date"] = to_utc(d["dxa_date"])
    m = a.merge(d, on=list(KEYS), how="inner")
    inside = (m["dxa_date"] - m["ct_date"]).abs() <= window
    with_dxa = m["_row"].nunique()
    paired = m.loc[inside, "_row"].nunique()
    return {"candidate_pairs": int(len(m)), "pairs_outside_window": int((~inside).sum()),
            "anchors_with_dxa": int(with_dxa), "anchors_excluded_by_window": int(with_dxa - paired)}


def reference_pairs(ct: pd.DataFrame, dxa: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """The pairing rule written as a plain loop over all combinations (test reference; O(n*m)).

    Args:
        ct: rows with ``patient_id``, ``level``, ``ct_date`` (any order, duplicates allowed).
        dxa: rows with ``patient_id``, ``level``, ``dxa_date``, ``dxa_id`` (duplicates allowed).
        window: maximum ``|t_DXA - t_CT|`` (inclusive).

    Returns:
        ``ct`` (same rows, same order) with ``dxa_id`` of the chosen DXA, None when none qualifies.
    """
    cts = to_utc(ct["ct_date"]).tolist()
    dxs = to_utc(dxa["dxa_date"]).tolist()
    rows = list(zip(dxa["patient_id"], dxa["level"], dxs, dxa["dxa_id"]))
    chosen = []
    for pid, lvl, t in zip(ct["patient_id"], ct["level"], cts):
        best, best_key = None, None
        for dpid, dlvl, dt, did in rows:
            if dpid != pid or int(dlvl) != int(lvl):
                continue
            gap = abs(dt - t)
            if gap > window:
                continue
            key = (gap, dt > t, str(did))  # smallest |dt|, then before/at the CT, then smallest id
            if best_key is None or key < best_key:
                best, best_key = did, key
        chosen.append(best)
    out = ct.copy()
    out["dxa_id"] = chosen
    return out


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PairingError(f"{what} lacks columns {missing}: build it from the data-contract tables")
