"""The whole configuration of one run: ``params.yaml`` + profile, parsed once into frozen sections.

:func:`load_config` is what every entry point calls (CLI command, DVC stage, Prefect
task). It merges the profile overlay, parses every section into its typed frozen
dataclass, resolves the stage folders and the tracking URI, and keeps the merged
values read-only only for hashing and for logging them as run parameters. Library
packages receive the sections (``cfg.ingest``, ``cfg.model``, ...) and explicit
paths, never the merged mapping.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from osteo_config.checks import ChecksConfig
from osteo_config.cohort import CohortConfig
from osteo_config.compute import ComputeConfig
from osteo_config.errors import ConfigError
from osteo_config.evaluate import EvaluateConfig
from osteo_config.experiment import DataPaths, ExperimentSpec
from osteo_config.ingest import IngestConfig
from osteo_config.model import ModelConfig, TrainConfig
from osteo_config.params import DEFAULT_PARAMS, deep_merge, load_params, params_hash
from osteo_config.registry import GatesConfig, RegistryConfig
from osteo_config.robustness import RobustnessConfig
from osteo_config.screen import ScreenConfig
from osteo_config.splits import SplitConfig
from osteo_config.store import FeatureStoreConfig
from osteo_config.texture import ENGINE_VERSION as TEXTURE_ENGINE_VERSION, TextureConfig
from osteo_config.tracking import TrackingConfig

# what a training run logs as MLflow params (sections, plus the ingest grid)
TRACKED_SECTIONS = ("model", "train", "texture")
TRACKED_INGEST_KEYS = ("spacing_mm", "roi_shape")


def _freeze(value: Any) -> Any:
    """A read-only deep copy: mappings -> MappingProxyType, lists -> tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Plain dicts/lists again (for merging an overlay and re-parsing)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return copy.deepcopy(value)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` with lists rendered as JSON (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(_thaw(value)) if isinstance(value, (list, tuple)) else str(value)
    return out


@dataclass(frozen=True)
class Paths:
    """The ``paths:`` section and the stage folders derived from it (one DVC stage owns each)."""

    data: Path = Path("data")
    raw: Path = Path("data/raw")
    truth: Path = Path("data/truth")
    interim: Path = Path("data/interim")
    reports: Path = Path("reports")
    models: Path = Path("models")
    metrics: Path = Path("metrics")
    splits_file: str = "splits/splits.parquet"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Paths":
        sec = dict(params.get("paths") or {})
        unknown = set(sec) - {"data", "raw", "truth", "interim", "reports", "models", "metrics"}
        if unknown:
            raise ConfigError(f"paths: unknown keys {sorted(unknown)}; fix params.yaml")
        split_file = str((params.get("splits") or {}).get("file", cls.splits_file))
        return cls(**{k: Path(v) for k, v in sec.items()}, splits_file=split_file)

    @property
    def ingest_dir(self) -> Path:
        return self.interim / "ingest"

    @property
    def texture_dir(self) -> Path:
        return self.interim / "texture"

    @property
    def splits_table(self) -> Path:
        return self.interim / self.splits_file

    @property
    def training_table(self) -> Path:
        return self.data / "processed" / "training_table.parquet"

    @property
    def evaluation_dir(self) -> Path:
        return self.reports / "evaluation"

    def data_paths(self) -> DataPaths:
        """The training pipeline's inputs."""
        return DataPaths(self.training_table, self.texture_dir, self.ingest_dir / "vertebrae.parquet",
                         self.splits_table)


@dataclass(frozen=True)
class Config:
    """Every section of one profile, typed and frozen (see params.yaml for keys, units and ranges)."""

    profile: str
    paths: Paths
    cohort: CohortConfig
    ingest: IngestConfig
    texture: TextureConfig
    checks: ChecksConfig
    splits: SplitConfig
    store: FeatureStoreConfig
    model: ModelConfig
    pretrain: TrainConfig
    finetune: TrainConfig
    method: str
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    registry: RegistryConfig
    gates: GatesConfig
    screen: ScreenConfig
    compute: ComputeConfig
    robustness: RobustnessConfig
    values: Mapping[str, Any] = field(repr=False, compare=False)   # merged params, read-only: hashing/logging only
    source: Path = DEFAULT_PARAMS

    @classmethod
    def from_params(cls, params: Mapping[str, Any], source: Path = DEFAULT_PARAMS) -> "Config":
        """Parse a merged params mapping (what :func:`osteo_config.params.load_params` returns)."""
        train = params.get("train") or {}
        return cls(profile=str(params.get("profile", "demo")), paths=Paths.from_params(params),
                   cohort=CohortConfig.from_params(params), ingest=IngestConfig.from_params(params),
                   texture=TextureConfig.from_params(params), checks=ChecksConfig.from_params(params),
                   splits=SplitConfig.from_params(params), store=FeatureStoreConfig.from_params(params),
                   model=ModelConfig.from_params(params), pretrain=TrainConfig.from_params(params, "pretrain"),
                   finetune=TrainConfig.from_params(params, "finetune"), method=str(train.get("method", "tp_swav")),
                   evaluate=EvaluateConfig.from_params(params), tracking=TrackingConfig.from_params(params),
                   registry=RegistryConfig.from_params(params), gates=GatesConfig.from_params(params),
                   screen=ScreenConfig.from_params(params),
                   compute=ComputeConfig.from_params(params), robustness=RobustnessConfig.from_params(params),
                   values=_freeze(params), source=Path(source))

    def as_dict(self) -> dict[str, Any]:
        """The merged params as plain data (a copy), for the shell: printing them, Prefect settings."""
        return _thaw(self.values)

    def section(self, name: str) -> Mapping[str, Any]:
        """A read-only view of one merged section, for the shell (CLI printing, Prefect settings)."""
        return self.values.get(name) or MappingProxyType({})

    def override(self, overlay: Mapping[str, Any] | None) -> "Config":
        """The same profile with ``overlay`` merged on top, parsed again (an ablation arm, a shorter run)."""
        if not overlay:
            return self
        return Config.from_params(deep_merge(_thaw(self.values), overlay), self.source)

    def digest(self, *sections: str) -> str:
        """Stable 16-hex SHA-256 of the named sections (all when none)."""
        return params_hash(_thaw(self.values), tuple(sections) or None)

    def tracked_params(self) -> dict[str, str]:
        """The params that define a training run, flattened (model, train, texture, ingest grid, profile)."""
        picked: dict[str, Any] = {k: self.values.get(k) or {} for k in TRACKED_SECTIONS}
        ingest = self.values.get("ingest") or {}
        picked["ingest"] = {k: ingest.get(k) for k in TRACKED_INGEST_KEYS}
        return {"profile": self.profile, **flatten(picked)}

    def io_geometry(self) -> dict[str, Any]:
        """How pools are produced (ingest grid, HU window, texture discretisation, model input shape):
        what a model records in its I/O contract and screening must reproduce."""
        ing, tex = self.ingest, self.texture.glcm
        return {"hu_window": list(ing.hu_window), "spacing_mm": list(ing.spacing_mm), "roi_shape": list(ing.roi_shape),
                "texture": {"bin_width": tex.bin_width, "bin_count": tex.bin_count,
                            "kernel_radius": tex.kernel_radius, "fill_value": tex.fill_value},
                "texture_engine": TEXTURE_ENGINE_VERSION,
                "model_input_shape": None if self.model.input_shape is None else list(self.model.input_shape)}

    def experiment(self) -> ExperimentSpec:
        """What a training run needs, typed: model, both training stages, evaluation, tracking, inputs."""
        train = self.values.get("train") or {}
        return ExperimentSpec(model=self.model, pretrain=self.pretrain, finetune=self.finetune,
                              evaluate=self.evaluate, tracking=self.tracking, data=self.paths.data_paths(),
                              profile=self.profile, seed=int(train.get("seed", self.finetune.seed)),
                              geometry=_freeze(self.io_geometry()), run_params=_freeze(self.tracked_params()),
                              model_digest=self.digest("model", "train"), texture_digest=self.digest("texture"),
                              glcm=self.texture.glcm,
                              interval_level=self.screen.interval_level, drift_bins=self.screen.drift.bins)


def load_config(path: str | Path = DEFAULT_PARAMS, profile: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``params.yaml``, apply the profile (argument, ``$OSTEO_PROFILE`` or the file's ``profile:``) and
    ``overrides``, and parse every section once.

    Raises:
        ConfigError: the file, the profile or any section is invalid (the message names the key).
    """
    params = load_params(path, profile)
    if overrides:
        params = deep_merge(params, overrides)
    return Config.from_params(params, Path(path))
