"""DXA rows -> pseudonymised ``dxa.parquet`` rows, with quarantine.

Checks, in order (a row stops at its first fault):

1. patient known and valid in ``patients.csv`` -> else :class:`UnknownPatientError`;
2. ``region`` in L1..L4 / L1-L4, ``exam_date`` parseable, ``bmd_g_cm2`` and
   ``t_score`` present, finite and inside ``ingest.dxa_bmd_range`` /
   ``ingest.dxa_t_score_range`` -> else :class:`InvalidDXAValueError`;
3. exact duplicates (same patient, date, region, BMD and T-score): the first
   is kept, each copy -> :class:`DuplicateDXAError`;
4. conflicting duplicates (same patient, date, region, different values):
   every row of the group -> :class:`ConflictingDXAError` (we cannot tell
   which is right);
5. no ingested CT of the patient within ``ingest.dxa_window_days`` ->
   :class:`DXAOutOfWindowError`.

WHO class from the T-score: 0 normal (T > -1), 1 osteopenia (-2.5 < T <= -1),
2 osteoporosis (T <= -2.5). ``level``: 13..16 for L1..L4, 0 for L1-L4.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import pandas as pd

from features.errors import (ConflictingDXAError, DuplicateDXAError, DXAOutOfWindowError, IngestError,
                             InvalidDXAValueError, UnknownPatientError)
from features.io.tables import parse_date
from features.pseudonym import Pseudonymizer
from features.quarantine import QuarantineRecord

REGION_LEVEL = {"L1": 13, "L2": 14, "L3": 15, "L4": 16, "L1-L4": 0}


def who_class(t_score: float) -> int:
    """WHO category of a T-score: 0 normal, 1 osteopenia, 2 osteoporosis."""
    if t_score <= -2.5:
        return 2
    if t_score <= -1.0:
        return 1
    return 0


@dataclass(frozen=True)
class DxaRules:
    """DXA validation settings (from :class:`features.ingest.IngestConfig`)."""

    window_days: int
    bmd_range: tuple[float, float]
    t_score_range: tuple[float, float]


def _number(text: str) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        return math.nan


def process_dxa(dxa: pd.DataFrame, patients: dict[str, dict], ct_dates: dict[str, list[date]],
                pseudo: Pseudonymizer, rules: DxaRules) -> tuple[list[dict], list[QuarantineRecord]]:
    """Validate, deduplicate, pair-check and pseudonymise the DXA rows.

    Args:
        dxa: raw ``dxa.csv`` (all text).
        patients: valid patients by MRN (``birth_date``, ``sex``, ``site`` ...).
        ct_dates: true dates of the *ingested* CT studies by MRN.
        pseudo: the pseudonymizer.
        rules: validation settings.

    Returns:
        (rows for ``dxa.parquet``, quarantine records); every input row is in exactly one.
    """
    kept: list[tuple[int, dict]] = []
    quarantine: list[QuarantineRecord] = []

    def refuse(err: IngestError) -> None:
        quarantine.append(QuarantineRecord.from_error(err, "dxa"))

    for idx, r in dxa.iterrows():
        mrn, region = str(r["mrn"]).strip(), str(r["region"]).strip()
        item = pseudo.dxa_id(r["accession_number"], region)
        if mrn not in patients:
            refuse(UnknownPatientError(item, "DXA row names a patient missing or invalid in patients.csv",
                                       "add the patient (valid birth date and sex) to patients.csv"))
            continue
        day = parse_date(r["exam_date"])
        bmd, t = _number(r["bmd_g_cm2"]), _number(r["t_score"])
        problem = None
        if region not in REGION_LEVEL:
            problem = f"region {region!r} is not one of {sorted(REGION_LEVEL)}"
        elif day is None:
            problem = "exam_date is not a YYYY-MM-DD date"
        elif not (rules.bmd_range[0] <= bmd <= rules.bmd_range[1]):   # also catches NaN
            problem = f"BMD {bmd} g/cm2 is missing or outside {list(rules.bmd_range)}"
        elif not (rules.t_score_range[0] <= t <= rules.t_score_range[1]):
            problem = f"T-score {t} is missing or outside {list(rules.t_score_range)}"
        if problem:
            refuse(InvalidDXAValueError(item, problem, "correct the DXA export (values are never imputed)"))
            continue
        kept.append((idx, dict(mrn=mrn, item=item, region=region, day=day, bmd=bmd, t=t, raw=r)))

    # duplicates: group by (patient, date, region)
    groups: dict[tuple, list[dict]] = {}
    for _, row in kept:
        groups.setdefault((row["mrn"], row["day"], row["region"]), []).append(row)
    survivors = []
    for rows in groups.values():
        first, rest = rows[0], rows[1:]
        exact = [x for x in rest if (x["bmd"], x["t"]) == (first["bmd"], first["t"])]
        other = [x for x in rest if (x["bmd"], x["t"]) != (first["bmd"], first["t"])]
        for copy_no, x in enumerate(exact, start=2):
            refuse(DuplicateDXAError(x["item"], f"copy {copy_no} of an identical {x['region']} measurement",
                                     "none needed (the first copy is kept); deduplicate the export"))
        if other:
            for x in [first, *other]:
                refuse(ConflictingDXAError(
                    x["item"], f"{len(other) + 1} differing {x['region']} values on one exam date",
                    "resolve the conflicting DXA reports at the source; all of them are held back"))
            continue
        survivors.append(first)

    out = []
    for x in survivors:
        gaps = [abs((x["day"] - d).days) for d in ct_dates.get(x["mrn"], [])]
        if not gaps or min(gaps) > rules.window_days:
            near = f"nearest ingested CT {min(gaps)} days away" if gaps else "no ingested CT for this patient"
            refuse(DXAOutOfWindowError(x["item"], f"{near} (window {rules.window_days} days)",
                                       "none possible for this pair; keep DXA and CT within the window"))
            continue
        r = x["raw"]
        out.append(dict(
            patient_id=pseudo.patient_id(x["mrn"]), dxa_id=x["item"], site=str(r["site"]),
            device_vendor=str(r["device_vendor"]), device_model=str(r["device_model"]),
            dxa_date=pd.Timestamp(pseudo.shift(x["mrn"], x["day"]), tz="UTC"),
            region=x["region"], level=REGION_LEVEL[x["region"]], bmd_g_cm2=x["bmd"], t_score=x["t"],
            who_class=who_class(x["t"])))
    return out, quarantine
