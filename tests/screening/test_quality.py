"""Quality flags on synthetic spines: a swapped pair, a wedge, metal, a cut body; a normal spine raises none."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from features.roi import body_mask
from osteo_config.screen import QualityConfig
from osteo_testing.screening_fixtures import LUMBAR, synthetic_spine
from screening.quality import FlagKind, QualityInputError, assess_vertebrae, genant_grade

CFG = QualityConfig()
SPACING = (1.0, 1.0, 1.0)
LEVELS = LUMBAR
HEIGHT = 24
SHAPE = (64, 64, 180)


def spine(arch: bool = False, heights: dict[int, int] | None = None):
    return synthetic_spine(SHAPE, HEIGHT, levels=LEVELS, heights=heights, arch=arch)


def kinds(report) -> dict[int, set[str]]:
    return {lv: {f.kind.value for f in fs} for lv, fs in report.excluded().items()}


def test_a_normal_spine_raises_no_flag():
    levels, ct, _ = spine()
    rep = assess_vertebrae(levels, ct, SPACING, CFG)
    assert rep.flags == () and sorted(rep.geometry) == list(LEVELS)
    for g in rep.geometry.values():
        assert g.heights_mm == pytest.approx((HEIGHT, HEIGHT, HEIGHT))
    zs = [rep.geometry[lv].centroid_mm[2] for lv in LEVELS]
    assert zs == sorted(zs, reverse=True)                                     # L1 most cranial


def test_a_swapped_pair_flags_exactly_those_two_levels():
    levels, ct, _ = spine()
    swapped = levels.copy()
    swapped[levels == 14], swapped[levels == 15] = 15, 14
    rep = assess_vertebrae(swapped, ct, SPACING, CFG)
    assert kinds(rep) == {14: {"label_order"}, 15: {"label_order"}}
    assert all("swapped" in f.reason for f in rep.flags)


def test_a_wedge_body_is_a_graded_fracture():
    levels, ct, spans = spine()
    z0, z1 = spans[15]
    y = np.arange(SHAPE[1])[None, :, None]
    z = np.arange(SHAPE[2])[None, None, :]
    top = z1 - (y - 23) / 30.0 * 12.0                          # anterior wall loses 12 of 24 mm
    cut = (levels == 15) & (z >= top)
    levels[cut], ct[cut] = 0, 40.0
    rep = assess_vertebrae(levels, ct, SPACING, CFG)
    assert kinds(rep) == {15: {"suspected_fracture"}}
    (f,) = rep.flags
    assert "wedge" in f.reason and "grade 2" in f.reason and 0.25 <= f.value < 0.40
    # thresholds are arguments: a stricter mild threshold no longer calls it
    lax = dataclasses.replace(CFG, fracture_mild=0.5, fracture_moderate=0.6, fracture_severe=0.7)
    assert assess_vertebrae(levels, ct, SPACING, lax).flags == ()


def test_a_caudal_level_much_shorter_than_the_one_above_is_a_label_order_flag():
    """Bodies grow caudally: L3-L5 20 mm under a 24 mm L2 (17 % > height_tolerance 15 %), no fracture shape."""
    levels, ct, _ = spine(heights={15: 20, 16: 20, 17: 20})
    rep = assess_vertebrae(levels, ct, SPACING, CFG)
    assert kinds(rep) == {14: {"label_order"}, 15: {"label_order"}}
    assert all("shorter" in f.reason for f in rep.flags)
    lax = dataclasses.replace(CFG, height_tolerance=0.2)
    assert assess_vertebrae(levels, ct, SPACING, lax).flags == ()


@pytest.mark.parametrize("r, grade", [(0.10, 0), (0.20, 1), (0.249, 1), (0.25, 2), (0.399, 2), (0.40, 3)])
def test_genant_grades(r, grade):
    assert genant_grade(r, CFG) == grade


def test_a_metal_insert_flags_metal():
    levels, ct, spans = spine()
    z0, z1 = spans[16]
    ct[30:33, 36:39, z0 + 4:z1 - 4] = 3000.0                    # a 3 x 3 x 16 mm screw inside the body
    rep = assess_vertebrae(levels, ct, SPACING, CFG)
    assert kinds(rep) == {16: {"metal"}}
    assert rep.flags[0].value >= CFG.metal_share


def test_a_body_cut_by_the_array_edge_and_by_the_reconstruction_circle():
    levels, ct, spans = spine()
    z0, _ = spans[17]
    cut_l, cut_c = levels[:, :, z0 + 6:], ct[:, :, z0 + 6:]      # the scan starts inside L5
    rep = assess_vertebrae(cut_l, cut_c, SPACING, CFG)
    assert kinds(rep) == {17: {"partial_coverage"}} and "z-" in rep.flags[0].reason
    fov = ct.copy()
    fov[:, :, spans[13][1]:] = -3024.0                           # padding value right above L1's top endplate
    rep = assess_vertebrae(levels, fov, SPACING, CFG)
    assert kinds(rep) == {13: {"partial_coverage"}} and "outside-fov" in rep.flags[0].reason


def test_full_vertebra_labels_with_the_training_body_rule():
    """TotalSegmentator-style labels (body + arch): features.roi.body_mask removes the arch first."""
    levels, ct, spans = spine(arch=True)
    bodies = {lv: body_mask(levels == lv, np.asarray(SPACING), 3.0) for lv in LEVELS}
    rep = assess_vertebrae(levels, ct, SPACING, CFG, bodies=bodies)
    assert rep.flags == ()
    # without the body rule, the arch's shorter posterior height would read as a fracture
    naive = assess_vertebrae(levels, ct, SPACING, CFG)
    assert {f.kind for f in naive.flags} == {FlagKind.FRACTURE}


def test_mismatched_grids_are_typed_errors():
    levels, ct, _ = spine()
    with pytest.raises(QualityInputError, match="resample"):
        assess_vertebrae(levels[:-1], ct, SPACING, CFG)
    with pytest.raises(QualityInputError, match="spacing"):
        assess_vertebrae(levels, ct, (1.0, 0.0, 1.0), CFG)
