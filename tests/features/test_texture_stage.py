"""The texture stage on a hand-built interim folder (contract §2 in, §3 out)."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from features.radiomics_scalar import scalar_features
from features.texture import GLCMSettings, glcm_maps
from osteo_testing.texture_reference import synthetic_vertebra
from features.texture_stage import TextureConfig, run_texture

SCALAR = {"firstorder": ("Mean", "Maximum"), "glcm": ("Contrast",)}


def _write_roi(root, hu, body):
    sha = hashlib.sha256(hu.tobytes() + body.tobytes()).hexdigest()
    rel = f"rois/{sha[:2]}/{sha}.npz"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    np.savez(root / rel, hu=hu, body=body)
    return rel, sha


@pytest.fixture()
def interim(tmp_path):
    rows = []
    for i in range(3):
        hu, body = synthetic_vertebra((16, 16, 10), seed=i)
        rel, sha = _write_roi(tmp_path, hu, body)
        rows.append((f"s{i}", 13 + i, rel, sha))
    hu, _ = synthetic_vertebra((16, 16, 10), seed=9)
    rows.append(("s9", 14, *_write_roi(tmp_path, hu, np.zeros(hu.shape, np.uint8))))  # empty body
    rows.append(("s8", 15, "rois/00/missing.npz", "00" * 32))                          # lost file
    vert = pd.DataFrame([{"patient_id": f"p{k}", "study_id": s, "level": lv, "level_name": f"L{lv - 12}",
                          "roi_path": rel, "roi_sha256": sha, "roi_shape": [16, 16, 10],
                          "spacing_mm": [1.0, 1.0, 1.0]} for k, (s, lv, rel, sha) in enumerate(rows)])
    vert.to_parquet(tmp_path / "vertebrae.parquet", index=False)
    return tmp_path


def _cfg(**kw):
    return TextureConfig(glcm=GLCMSettings(kernel_radius=kw.pop("r", 1)), device="cpu", batch_size=2,
                         workers=1, scalar_features=SCALAR)


def test_from_params_reads_the_texture_section():
    cfg = TextureConfig.from_params({"texture": {"bin_width": 10, "kernel_radius": 3, "device": "cpu",
                                                 "batch_size": 4, "scalar_features": {"glcm": []}}})
    assert cfg.glcm == GLCMSettings(bin_width=10.0, kernel_radius=3) and cfg.batch_size == 4
    assert cfg.scalar_features == {"glcm": ()}
    assert cfg.params_hash() != TextureConfig.from_params({"texture": {"bin_width": 11, "kernel_radius": 3}}).params_hash()


def test_pools_tables_quarantine_and_resume(interim):
    out = interim / "texture"
    s1 = run_texture(_cfg(), interim, out, progress=False)
    assert (s1.seen, s1.computed, s1.skipped, s1.quarantined) == (5, 3, 0, 2)
    assert s1.reasons == {"EmptyMaskError": 1, "RoiUnreadableError": 1}

    tex = pd.read_parquet(out / "texture.parquet")
    vert = pd.read_parquet(interim / "vertebrae.parquet")
    assert len(tex) == 3 and tex["texture_params_hash"].nunique() == 1
    for row in tex.itertuples():
        pool = np.load(out / row.pool_path)
        assert pool.dtype == np.float32 and pool.shape == (5, 16, 16, 10) and list(row.pool_shape) == [5, 16, 16, 10]
        assert hashlib.sha256(pool.tobytes()).hexdigest() == row.pool_sha256 and row.pool_sha256 in row.pool_path
        with np.load(interim / vert.set_index("study_id").loc[row.study_id, "roi_path"]) as z:
            hu, body = z["hu"], z["body"]
        np.testing.assert_array_equal(pool[0], hu)
        np.testing.assert_array_equal(pool[1:], glcm_maps(hu, body, GLCMSettings(kernel_radius=1)).astype(np.float32))
        assert (pool[1:, body == 0] == 0).all()  # pyradiomics fill value outside the body

    rad = pd.read_parquet(out / "radiomics.parquet")
    assert set(rad.columns) >= {"study_id", "level", "original_firstorder_Mean", "original_glcm_Contrast"}
    with np.load(interim / vert.loc[0, "roi_path"]) as z:
        direct = scalar_features(z["hu"], z["body"], [1, 1, 1], SCALAR, 25.0)
    assert rad.loc[rad.study_id == "s0", "original_glcm_Contrast"].item() == pytest.approx(direct["original_glcm_Contrast"])

    q = pd.read_parquet(out / "quarantine.parquet")
    assert sorted(q["item"]) == ["s8:15", "s9:14"] and set(q["stage"]) == {"texture"} and set(q["kind"]) == {"vertebra"}

    s2 = run_texture(_cfg(), interim, out, progress=False)  # nothing changed: all cached, quarantine not duplicated
    assert (s2.computed, s2.skipped, s2.quarantined) == (0, 3, 2)
    assert len(pd.read_parquet(out / "quarantine.parquet")) == 2
    pd.testing.assert_frame_equal(pd.read_parquet(out / "texture.parquet"), tex)

    s3 = run_texture(_cfg(r=2), interim, out, progress=False)  # new params hash: recomputed
    assert (s3.computed, s3.skipped) == (3, 0)
    assert pd.read_parquet(out / "texture.parquet")["texture_params_hash"].iloc[0] != tex["texture_params_hash"].iloc[0]


def test_scalar_levels_limit_radiomics_to_their_levels_and_every_level_keeps_its_pool(interim):
    """texture.scalar_levels [13, 13]: pools for every vertebra, pyradiomics rows only for level 13; a rerun
    skips everything; widening the range recomputes (new params hash) and adds the rows."""
    from dataclasses import replace

    out = interim / "texture"
    cfg = replace(_cfg(), scalar_levels=(13, 13))
    s1 = run_texture(cfg, interim, out, progress=False)
    assert (s1.computed, s1.quarantined) == (3, 2)
    tex, rad = pd.read_parquet(out / "texture.parquet"), pd.read_parquet(out / "radiomics.parquet")
    assert sorted(tex["level"]) == [13, 14, 15] and list(rad["level"]) == [13] and list(rad["study_id"]) == ["s0"]
    assert rad.notna().all().all() and "original_glcm_Contrast" in rad.columns
    assert run_texture(cfg, interim, out, progress=False).skipped == 3
    wide = run_texture(replace(cfg, scalar_levels=(13, 16)), interim, out, progress=False)
    assert wide.computed == 3 and sorted(pd.read_parquet(out / "radiomics.parquet")["level"]) == [13, 14, 15]
    assert cfg.params_hash() != replace(cfg, scalar_levels=None).params_hash() == _cfg().params_hash()


@pytest.mark.parametrize("value,match", [([13], "low, high"), ("L1", "low, high"), ([0, 4], "1 <= low"),
                                          ([16, 13], "low <= high"), ([13, 19], "<= 18")])
def test_scalar_levels_out_of_range_is_a_typed_config_error(value, match):
    from osteo_config.texture import TextureConfigError

    with pytest.raises(TextureConfigError, match=match):
        TextureConfig.from_params({"texture": {"scalar_levels": value}})
    assert TextureConfig.from_params({"texture": {"scalar_levels": None}}).scalar_levels is None
    assert TextureConfig.from_params({"texture": {"scalar_levels": [13, 16]}}).wants_scalar(16)
