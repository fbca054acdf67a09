"""T-scores per vendor: Hui sBMD equations, vendor -> sBMD -> vendor round trips, WHO boundaries (METHOD.md §1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteo_config.params import load_params
from osteo_config.screen import ScreenConfig
from screening.tscore import (UnknownReferenceError, WhoClass, convert, from_sbmd, t_score, to_sbmd,
                              vendor_readings, who_class)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tables():
    return ScreenConfig.from_params(load_params(REPO / "params.yaml")).references


def test_hui_1997_equations_by_hand(tables):
    # Hui 1997 spine: sBMD = 1.0550 (BMD - 0.972) + 1.0436 (Hologic), 0.9683 (BMD - 1.100) + 1.0436 (Lunar)
    assert to_sbmd(1.000, "Hologic", tables) == pytest.approx(1.0550 * 0.028 + 1.0436, abs=1e-12)
    assert to_sbmd(1.000, "GE Lunar", tables) == pytest.approx(0.9683 * -0.100 + 1.0436, abs=1e-12)
    # each vendor's equation centre maps to the common 1.0436
    assert to_sbmd(0.972, "Hologic", tables) == pytest.approx(to_sbmd(1.100, "GE Lunar", tables))


def test_medix_equation_is_the_assumed_calibration_composed_with_hologic(tables):
    """MEDIX = 1.035 Hologic + 0.027 (cohort assumption) then Hui's Hologic equation."""
    hologic = np.linspace(0.5, 1.4, 10)
    medix = 1.035 * hologic + 0.027
    np.testing.assert_allclose(to_sbmd(medix, "MEDIX", tables), to_sbmd(hologic, "Hologic", tables), atol=2e-5)


@pytest.mark.parametrize("source", ["Hologic", "GE Lunar", "MEDIX"])
@pytest.mark.parametrize("target", ["Hologic", "GE Lunar", "MEDIX"])
def test_vendor_sbmd_vendor_round_trips(tables, source, target):
    bmd = np.linspace(0.4, 1.6, 25)
    np.testing.assert_allclose(from_sbmd(to_sbmd(bmd, source, tables), source, tables), bmd, atol=1e-12)
    there = convert(bmd, source, target, tables)
    np.testing.assert_allclose(convert(there, target, source, tables), bmd, atol=1e-12)
    if source == target:
        np.testing.assert_allclose(there, bmd, atol=1e-12)


def test_lunar_reads_higher_than_hologic_for_the_same_spine(tables):
    """Genant 1994 direction: Lunar ~ 1.074 Hologic + 0.054; through Hui's sBMD the sign and size agree."""
    hologic = np.array([0.7, 0.9, 1.1])
    lunar = convert(hologic, "Hologic", "GE Lunar", tables)
    assert np.all(lunar > hologic)
    np.testing.assert_allclose(lunar, 1.074 * hologic + 0.054, atol=0.03)   # the two calibrations differ by < 3 %


def test_t_score_uses_the_vendors_reference(tables):
    ref = tables.vendors["Hologic"]
    mean, sd = ref.mean["female"]["L1"], ref.sd["female"]["L1"]
    assert t_score(mean, "Hologic", "F", "L1", tables) == pytest.approx(0.0)
    assert t_score(mean - 2.5 * sd, "Hologic", "female", "L1", tables) == pytest.approx(-2.5)
    # the same BMD is a lower T-score on Lunar (higher reference mean)
    assert t_score(1.0, "GE Lunar", "F", "L1-L4", tables) < t_score(1.0, "Hologic", "F", "L1-L4", tables)


@pytest.mark.parametrize("t, cls", [
    (0.5, WhoClass.NORMAL), (-0.999, WhoClass.NORMAL), (-1.0, WhoClass.OSTEOPENIA),
    (-2.499, WhoClass.OSTEOPENIA), (-2.5, WhoClass.OSTEOPOROSIS), (-4.0, WhoClass.OSTEOPOROSIS),
])
def test_who_class_boundaries(t, cls):
    """METHOD.md: normal > -1, osteopenia -1 .. -2.5, osteoporosis <= -2.5."""
    assert who_class(t) is cls


def test_who_class_matches_the_cohort_labels():
    from cohort.dxa import who_class as cohort_who
    for t in np.round(np.arange(-5.0, 2.0, 0.1), 1):
        assert int(who_class(float(t))) == cohort_who(float(t))


@pytest.mark.parametrize("vendor, sex, region, match", [
    ("Norland", "F", "L1", "Norland"), ("Hologic", "X", "L1", "sex"), ("Hologic", "F", "T12", "region"),
])
def test_unknown_reference_is_a_typed_error(tables, vendor, sex, region, match):
    with pytest.raises(UnknownReferenceError, match=match):
        t_score(1.0, vendor, sex, region, tables)


def test_vendor_readings_carry_the_reference_version(tables):
    rows = vendor_readings({"Hologic": 0.80, "GE Lunar": 0.92}, "F", "L2", tables)
    assert [r.vendor for r in rows] == ["Hologic", "GE Lunar"]
    assert all(r.reference_version == tables.version for r in rows)
    assert rows[0].who is who_class(rows[0].t_score)
