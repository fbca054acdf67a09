"""Exam timing: CT dates, repeat CTs, DXA dates inside and outside the pairing window."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from cohort.config import TimingConfig


@dataclass(frozen=True)
class ExamDates:
    birth: date
    ct: tuple[date, ...]            # first CT, then repeats
    dxa: date
    dxa_in_window: bool
    duplicate_dxa: bool             # the DXA rows appear twice (exact duplicates)
    repeat_dxa: bool                # a same-day repeat DXA measurement exists


def draw_dates(rng: np.random.Generator, age: float, cfg: TimingConfig) -> ExamDates:
    """Draw all exam dates of one patient. ``age`` is the age at the first CT (years)."""
    d0, d1 = (date.fromisoformat(d) for d in cfg.ct_dates)
    first = d0 + timedelta(days=int(rng.integers(0, (d1 - d0).days + 1)))
    birth = first - timedelta(days=int(round(age * 365.25)))
    cts = [first]
    if rng.random() < cfg.repeat_ct_share:
        cts.append(first + timedelta(days=int(rng.uniform(*cfg.repeat_ct_days))))
    inside = rng.random() >= cfg.dxa_outside_share
    if inside:
        off = int(rng.integers(-cfg.dxa_within_days, cfg.dxa_within_days + 1))
    else:
        off = int(rng.uniform(*cfg.dxa_outside_days)) * (1 if rng.random() < 0.5 else -1)
    dup = bool(rng.random() < cfg.duplicate_dxa_share)
    rep = bool(rng.random() < cfg.repeat_dxa_share)
    return ExamDates(birth, tuple(cts), first + timedelta(days=off), inside, dup, rep)


def age_at(birth: date, when: date) -> float:
    """Age in years (float) at a date."""
    return (when - birth).days / 365.25
