"""ScreenConfig: params.yaml's screen: section parses, unknown keys are typed errors, references match the cohort."""
from __future__ import annotations

from pathlib import Path

import pytest

from osteo_config.cohort import CohortConfig
from osteo_config.errors import ConfigError
from osteo_config.params import load_params
from osteo_config.screen import ScreenConfig, ScreenConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def test_the_repository_section_parses(params):
    cfg = ScreenConfig.from_params(params)
    assert cfg.review == "none" and cfg.interval_level == 0.90
    assert set(cfg.report_vendors) <= set(cfg.references.vendors)
    assert cfg.references.version == params["screen"]["references"]["version"]


def test_female_references_equal_the_simulators_labels(params):
    """The cohort's DXA T-scores use these same numbers: screening must not drift from the training labels."""
    cfg = ScreenConfig.from_params(params)
    devices = CohortConfig.from_params(params).dxa_devices
    assert devices, "the cohort section has no DXA devices"
    for dev in devices.values():
        ref = cfg.references.vendors[dev.vendor]
        assert dict(ref.mean["female"]) == pytest.approx(dict(dev.ref_mean))
        assert dict(ref.sd["female"]) == pytest.approx(dict(dev.ref_sd))


@pytest.mark.parametrize("patch, key", [
    ({"colour": 1}, "colour"),
    ({"quality": {"metal_hu": 2500, "metal_sharee": 0.1}}, "metal_sharee"),
    ({"drift": {"psi": 0.2}}, "psi"),
])
def test_unknown_keys_are_typed_errors_naming_the_key(params, patch, key):
    screen = dict(params["screen"], **patch)
    with pytest.raises(ScreenConfigError, match=key) as e:
        ScreenConfig.from_params({"screen": screen})
    assert isinstance(e.value, ConfigError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("patch, match", [
    ({"review": "maybe"}, "review"),
    ({"interval_level": 1.5}, "interval_level"),
    ({"quality": {"fracture_mild": 0.3, "fracture_moderate": 0.25}}, "fracture"),
    ({"report_vendors": ["Norland"]}, "Norland"),
])
def test_out_of_range_values_are_typed_errors(params, patch, match):
    with pytest.raises(ScreenConfigError, match=match):
        ScreenConfig.from_params({"screen": dict(params["screen"], **patch)})


def test_config_is_frozen(params):
    cfg = ScreenConfig.from_params(params)
    with pytest.raises(AttributeError):
        cfg.review = "required"
