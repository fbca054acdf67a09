"""What one training run needs, typed: the contract between the configuration edge and ``osteo_model``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from osteo_config.evaluate import EvaluateConfig
from osteo_config.model import ModelConfig, TrainConfig
from osteo_config.texture import GLCMSettings
from osteo_config.tracking import TrackingConfig


@dataclass(frozen=True)
class DataPaths:
    """Where the training pipeline's inputs live (derived from ``paths:`` and ``splits.file``)."""

    training_table: Path   # <data>/processed/training_table.parquet: labelled L1-L4 vertebrae with `split`
    texture_dir: Path      # <interim>/texture: texture.parquet + pools/ (pool_path is relative to it)
    vertebrae: Path        # <interim>/ingest/vertebrae.parquet: per-level HU (the L1-HU baseline)
    splits: Path           # <interim>/<splits.file>: patient -> split (+ .sha256.json sidecar)


@dataclass(frozen=True)
class ExperimentSpec:
    """A training run's typed inputs (built by :meth:`osteo_config.Config.experiment`).

    Attributes:
        model / pretrain / finetune / evaluate / tracking: the parsed sections.
        data: the input files.
        profile: the params profile (an MLflow tag).
        seed: ``train.seed`` (baselines and data order).
        geometry: how pools were produced (the model's I/O contract records it).
        run_params: the flattened params logged on the MLflow parent run.
        model_digest: hash of the ``model`` + ``train`` sections (checkpoint signature, ``params_hash`` tag).
        texture_digest: hash of the ``texture`` section (part of the data version).
        glcm: the texture engine settings the pools were computed with (``texture:``, every field, not only
            those ``geometry`` records): fine-tuning augmentation recomputes the maps with them.
        interval_level / drift_bins: what the serving references stored with the model are fitted at.
    """

    model: ModelConfig
    pretrain: TrainConfig
    finetune: TrainConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    data: DataPaths
    profile: str
    seed: int
    geometry: Mapping[str, Any]
    run_params: Mapping[str, str]
    model_digest: str
    texture_digest: str
    glcm: GLCMSettings
    interval_level: float = 0.90   # split-conformal coverage of the BMD interval stored with the model (screen.interval_level)
    drift_bins: int = 10           # quantile bins of the stored drift reference (screen.drift.bins)
