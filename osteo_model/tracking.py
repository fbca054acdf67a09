"""MLflow tracking, a thin layer: runs, params, data/code versions, plots and the pyfunc model.

One **parent run** per training pipeline, one **child run** per stage
(``pretrain``, ``finetune``, ``evaluate-valid``, and ``evaluate``: the test-split
evaluation of ``osteo evaluate``, which reopens the parent). Everything MLflow-specific
lives here; :mod:`osteo_model.experiment` only calls :class:`Tracker`, which
turns into a no-op when tracking is off (so the pipeline has no ``if``s).

What a parent run carries (for filtering and comparing runs in the MLflow UI):

* tags ``method``, ``backbone``, ``pretrain``, ``moe``, ``loss``, ``profile``,
  ``data_version`` (plus ``git_commit``, ``git_dirty``);
* params flattened from params.yaml (``model.*``, ``train.*``, ``texture.*``,
  ``ingest.spacing_mm``, ``ingest.roi_shape``, ``profile``) and the data
  version (training-table SHA-256, split-table SHA-256, texture-params hash,
  the ``dvc.lock`` md5 of the texture stage when present);
* system metrics (``log_system_metrics``; needs psutil).

The logged model (:class:`ScreeningPyfunc`) takes either float32 texture pools
(B, 5, X, Y, Z) in raw units (HU + the 4 GLCM maps of the data contract §3, any
grid: the model normalises and resamples to ``model.input_shape``) or a vertebra
table with a ``pool_uri`` column (absolute path of each pool .npy) and an optional
per-row ``device_vendor``; param ``device_vendor`` (default ``Hologic``: "what
would a Hologic DXA say"); output = one row per vertebra with ``score``,
``bmd_g_cm2``, ``level``, ``screen_positive`` (score >= the stored validation
threshold) and no input column, so no identifier travels through. The I/O
contract (:func:`model_contract`: modality, HU window, spacing, ROI shape,
channels, feature service, intended use, threshold) is logged as the model's
``io_contract`` metadata. The input example is synthetic (every voxel at the
training channel mean), so it carries no patient data.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from osteo_config.params import DEFAULT_TRACKING_URI, params_hash, resolve_tracking_uri

PARAM_SECTIONS = ("model", "train", "texture")
INGEST_KEYS = ("spacing_mm", "roi_shape")
TAG_KEYS = ("method", "backbone", "pretrain", "moe", "loss", "profile", "data_version")


@dataclass(frozen=True)
class TrackingConfig:
    """The ``tracking:`` section of params.yaml (keys commented there).

    ``profile`` picks the database: ``local`` -> ``uri``, ``production`` -> ``production_uri``;
    :attr:`active_uri` is what every run is logged to (:func:`osteo_config.params.resolve_tracking_uri`,
    the same resolver the registry uses).
    """

    profile: str = "local"
    uri: str = DEFAULT_TRACKING_URI
    production_uri: str | None = None
    artifact_location: str = "mlartifacts"
    experiment: str = "osteo-training"
    log_system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    log_model: bool = True

    def __post_init__(self) -> None:
        resolve_tracking_uri(self._uris())                 # a bad profile fails here, with what to fix

    def _uris(self) -> dict[str, Any]:
        return {"profile": self.profile, "uri": self.uri, "production_uri": self.production_uri}

    @property
    def active_uri(self) -> str:
        """The tracking + registry URI of the active profile."""
        return resolve_tracking_uri(self._uris())

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrackingConfig":
        sec = dict(params.get("tracking") or {})
        unknown = set(sec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"tracking: unknown keys {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}")
        return cls(**sec)


# --------------------------------------------------------------------------- versions (pure-ish helpers)

def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` with lists rendered as JSON."""
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def tracked_params(params: Mapping[str, Any]) -> dict[str, str]:
    """The params that define a training run, flattened (model, train, texture, ingest grid, profile)."""
    picked: dict[str, Any] = {k: params.get(k) or {} for k in PARAM_SECTIONS}
    picked["ingest"] = {k: (params.get("ingest") or {}).get(k) for k in INGEST_KEYS}
    return {"profile": str(params.get("profile", "demo")), **flatten(picked)}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_version(params: Mapping[str, Any], training_table: Path, splits_table: Path,
                 dvc_lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """Hashes that pin the data a model saw; ``data_version`` (16 hex) combines them.

    Args:
        params: merged params (the ``texture:`` section is hashed).
        training_table: the training-table parquet (its bytes are hashed).
        splits_table: the split parquet; its ``<stem>.sha256.json`` sidecar holds the split hash.
        dvc_lock: ``dvc.lock``; the md5 of the texture stage's output is used when present.
    """
    out = {"training_table_sha256": file_sha256(training_table) if Path(training_table).is_file() else "missing",
           "texture_params_hash": params_hash(params, ("texture",))}
    sidecar = Path(splits_table).with_suffix(".sha256.json")
    out["splits_sha256"] = json.loads(sidecar.read_text()).get("sha256", "missing") if sidecar.is_file() else "missing"
    out["dvc_texture_md5"] = _dvc_texture_md5(Path(dvc_lock))
    out["data_version"] = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:16]
    return out


def _dvc_texture_md5(lock: Path) -> str:
    if not lock.is_file():
        return "absent"
    import yaml
    stage = ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).get("texture") or {}
    md5s = [o.get("md5", "") for o in stage.get("outs") or [] if isinstance(o, Mapping)]
    return md5s[0] if md5s else "absent"


def code_version(repo: Path = Path(".")) -> dict[str, str]:
    """Git commit and whether the working tree differs from it (read-only git calls)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


# --------------------------------------------------------------------------- figures

def _figure(n_panels: int, width: float = 3.2, height: float = 3.0, rows: int = 1):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = max(1, -(-n_panels // rows))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return fig, axes.ravel()


def loss_curves_figure(history: Mapping[str, Sequence[tuple[int, Mapping[str, float]]]]):
    """One panel per stage: every ``loss*`` metric against the optimizer step."""
    fig, axes = _figure(max(1, len(history)), 4.0)
    for ax, (stage, rows) in zip(axes, history.items()):
        keys = sorted({k for _, m in rows for k in m if k.startswith("loss")})
        for k in keys:
            steps = [s for s, m in rows if k in m]
            ax.plot(steps, [m[k] for s, m in rows if k in m], label=k, lw=1)
        ax.set(title=stage, xlabel="step", ylabel="loss")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def confusion_figure(pred: pd.DataFrame, threshold: float, title: str):
    """Vertebra-level confusion matrix per site at ``threshold`` (positive = osteoporosis)."""
    from osteo_model import metrics as M
    sites = sorted(pred["site"].astype(str).unique())
    fig, axes = _figure(len(sites), 2.8, 2.8)
    for ax, site in zip(axes, sites):
        part = pred[pred["site"].astype(str) == site]
        c = M.confusion(part["y_true"].to_numpy(), part["score"].to_numpy() >= threshold)
        mat = np.array([[c.tn, c.fp], [c.fn, c.tp]])
        ax.imshow(mat, cmap="Blues")
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set(title=f"{title} site {site}", xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual")
    return fig


def roc_figure(pred: pd.DataFrame, title: str):
    """Vertebra-level ROC curve per site (sites with one class are skipped)."""
    from osteo_model import metrics as M
    fig, axes = _figure(1, 4.0, 4.0)
    ax = axes[0]
    for site in sorted(pred["site"].astype(str).unique()):
        part = pred[pred["site"].astype(str) == site]
        if part["y_true"].nunique() < 2:
            continue
        roc = M.roc_points(part["y_true"].to_numpy(), part["score"].to_numpy())
        ax.plot(roc["fpr"], roc["tpr"], label=f"site {site} AUROC {M.auroc(part['y_true'], part['score']):.2f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(title=title, xlabel="1 - specificity", ylabel="sensitivity")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return fig


def pool_montage_figure(pools: Sequence[np.ndarray], channels: Sequence[str]):
    """Central axial slice of every pool member for a few vertebrae (titles carry no identifiers)."""
    fig, axes = _figure(len(pools) * len(channels), 1.8, 1.8, rows=len(pools))
    for r, pool in enumerate(pools):
        z = pool.shape[-1] // 2
        for c, name in enumerate(channels):
            ax = axes[r * len(channels) + c]
            ax.imshow(np.nan_to_num(pool[c, :, :, z]).T, cmap="gray", origin="lower")
            ax.set_title(f"vertebra {r + 1}: {name}", fontsize=6)
            ax.axis("off")
    return fig


# --------------------------------------------------------------------------- the tracker

class Tracker:
    """MLflow runs for one training pipeline; every method is a no-op when ``enabled`` is False.

    Args:
        cfg: the ``tracking:`` section.
        enabled: False turns every call into a no-op (``tracking=False`` of the pipeline).
    """

    def __init__(self, cfg: TrackingConfig, enabled: bool = True) -> None:
        self.cfg, self.enabled = cfg, enabled
        self.history: dict[str, list[tuple[int, dict[str, float]]]] = {}
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None

    def _experiment_id(self) -> str:
        import mlflow
        mlflow.set_tracking_uri(self.cfg.active_uri)
        exp = mlflow.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        location = Path(self.cfg.artifact_location).expanduser().resolve().as_uri()
        return mlflow.create_experiment(self.cfg.experiment, artifact_location=location)

    @contextlib.contextmanager
    def parent(self, run_name: str, tags: Mapping[str, str], params: Mapping[str, str],
               run_id: str | None = None) -> Iterator[str | None]:
        """The pipeline's parent run (system metrics on); yields its run id (None when disabled).

        Started while another run is active (the ablation's), it nests under that run. With
        ``run_id`` an existing parent is reopened (the DVC ``finetune`` stage continues the
        run its ``pretrain`` stage opened, so one pipeline = one parent run); its params are
        not logged again.
        """
        if not self.enabled:
            yield None
            return
        import mlflow
        exp_id = self.experiment_id = self._experiment_id()
        system = self.cfg.log_system_metrics and _has_psutil()
        if system:
            mlflow.set_system_metrics_sampling_interval(self.cfg.system_metrics_interval_s)
        if run_id is not None:
            with mlflow.start_run(run_id=run_id, log_system_metrics=system) as run:
                self.parent_run_id = run.info.run_id
                mlflow.set_tags(dict(tags))
                yield run.info.run_id
            return
        nested = mlflow.active_run() is not None                                   # e.g. one arm of the ablation
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=dict(tags), nested=nested,
                              log_system_metrics=system) as run:
            self.parent_run_id = run.info.run_id
            self.log_params(params)
            yield run.info.run_id

    @contextlib.contextmanager
    def child(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[str | None]:
        """A nested stage run under the parent (tags inherited from the parent, plus ``stage``)."""
        if not self.enabled:
            yield None
            return
        import mlflow
        parent_tags = mlflow.get_run(self.parent_run_id).data.tags if self.parent_run_id else {}
        inherited = {k: v for k, v in parent_tags.items() if k in TAG_KEYS}
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=name, nested=True, tags={**inherited, "stage": name, **(tags or {})}) as run:
            yield run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled and params:
            import mlflow
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled and tags:
            import mlflow
            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        """Finite numbers only (NaN/None are skipped: an undefined metric is absent, not 0)."""
        clean = {k: float(v) for k, v in values.items()
                 if isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v)}
        if self.enabled and clean:
            import mlflow
            mlflow.log_metrics(clean, step=step)

    def callback(self, stage: str):
        """A ``log_metrics(step, dict)`` callback for :func:`osteo_model.train.fit` (also kept for loss plots)."""
        rows = self.history.setdefault(stage, [])

        def log(step: int, values: dict[str, float]) -> None:
            rows.append((step, dict(values)))
            self.log_metrics(values, step=step)
        return log

    def log_figure(self, fig: Any, name: str) -> None:
        import matplotlib.pyplot as plt
        if self.enabled:
            import mlflow
            mlflow.log_figure(fig, name)
        plt.close(fig)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled and Path(path).exists():
            import mlflow
            mlflow.log_artifact(str(path), artifact_path)

    def log_pyfunc(self, bundle: Path, name: str = "model") -> str | None:
        """Log ``model.pt`` as an MLflow pyfunc (signature, synthetic input example, I/O contract as
        model metadata ``io_contract``); returns the model URI."""
        if not (self.enabled and self.cfg.log_model):
            return None
        import mlflow
        signature, example, contract = pyfunc_signature(bundle)
        info = mlflow.pyfunc.log_model(name=name, python_model=ScreeningPyfunc(), artifacts={"bundle": str(bundle)},
                                       signature=signature, input_example=(example, {"device_vendor": "Hologic"}),
                                       pip_requirements=_requirements(), metadata={"io_contract": contract})
        return info.model_uri

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        """Every file under ``folder`` (a report with its plots) into the active run."""
        if self.enabled and Path(folder).is_dir():
            import mlflow
            mlflow.log_artifacts(str(folder), artifact_path)


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def _requirements() -> list[str]:
    """Pinned runtime requirements of the pyfunc (explicit: MLflow's inference would import-trace in a subprocess)."""
    import mlflow
    import torch
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


# --------------------------------------------------------------------------- pyfunc model

PYFUNC_INPUTS = {
    "tensor": "float32 (B, 5, X, Y, Z) texture pools in raw units; param device_vendor (default Hologic)",
    "table": "DataFrame, one row per vertebra: pool_uri (absolute path or file:// URI of the pool .npy), "
             "optional device_vendor (per row; missing -> the device_vendor param); other columns are ignored",
}


def model_contract(state: Mapping[str, Any]) -> dict[str, Any]:
    """The I/O contract logged with the model: the bundle's ``io`` + operating point + accepted inputs."""
    op = dict(state.get("threshold") or {})
    return {**dict(state.get("io") or {}), "threshold": op.get("threshold"), "operating_point": op,
            "threshold_source": "validation split (never tuned on test data)", "pyfunc_inputs": PYFUNC_INPUTS}


def pyfunc_signature(bundle: Path):
    """Output schema + ``device_vendor`` param, a synthetic tensor input example and the I/O contract.

    The input schema is left unset on purpose: an MLflow signature is either tensor- or
    column-based and enforcing one rejects the other, while the model accepts both a
    (B, 5, X, Y, Z) tensor and a vertebra table with ``pool_uri``; ``predict`` checks its
    input itself and the accepted forms are documented in the contract (``pyfunc_inputs``).
    """
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    state = torch.load(bundle, map_location="cpu", weights_only=False)
    mean = np.asarray(state["norm"]["mean"], dtype=np.float32)                     # (5,)
    grid = tuple(state["model_config"].get("input_shape") or (16, 16, 16))
    example = np.broadcast_to(mean[None, :, None, None, None], (1, len(mean), *grid)).copy()  # (1, 5, X, Y, Z)
    signature = ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("double", "score"), ColSpec("double", "bmd_g_cm2"), ColSpec("long", "level"),
                        ColSpec("long", "screen_positive")]),
        params=ParamSchema([ParamSpec("device_vendor", "string", "Hologic")]))
    return signature, example, model_contract(state)


def pool_file(uri: Any) -> Path:
    """An absolute pool path from a ``pool_uri`` value (plain absolute path or ``file://`` URI)."""
    from urllib.parse import unquote, urlparse
    text = str(uri)
    path = Path(unquote(urlparse(text).path)) if text.startswith("file://") else Path(text)
    if not path.is_absolute():
        raise ValueError(f"pool_uri {text!r} is not absolute: pass the absolute path (or file:// URI) of the "
                         "texture-pool .npy, e.g. <paths.interim>/texture/<pool_path>")
    return path


try:  # the pyfunc base class only exists with mlflow installed; importing it has no side effects
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover - mlflow is a pinned dependency
    _PythonModel = object


class ScreeningPyfunc(_PythonModel):
    """MLflow pyfunc around ``model.pt``: texture pools (a tensor, or a vertebra table with ``pool_uri``)
    in, one row per vertebra out: ``score``, ``bmd_g_cm2``, ``level``, ``screen_positive``."""

    def load_context(self, context: Any) -> None:
        from osteo_model.pipeline import load_model
        self.model, self.norm, self.mcfg, state = load_model(Path(context.artifacts["bundle"]))
        self.threshold = float((state.get("threshold") or {}).get("threshold", 0.5))
        from osteo_model.companion import PlattCalibration
        cal = state.get("calibration")
        self.calibration = PlattCalibration(**cal) if cal else None                # fitted on validation

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would enforce its own
        vendor = (params or {}).get("device_vendor", "Hologic")
        if isinstance(model_input, pd.DataFrame):
            return self._predict_table(model_input, vendor)
        return self._predict_tensor(model_input, vendor)

    def _output(self, score: np.ndarray, bmd: np.ndarray, level: np.ndarray, index: Any = None) -> pd.DataFrame:
        score = np.asarray(score, dtype=np.float64)
        if getattr(self, "calibration", None) is not None:
            score = self.calibration.apply(score)                                      # the stored threshold's scale
        return pd.DataFrame({"score": score, "bmd_g_cm2": np.asarray(bmd, dtype=np.float64),
                             "level": np.asarray(level, dtype=np.int64),
                             "screen_positive": (score >= self.threshold).astype(np.int64)}, index=index)

    def _predict_tensor(self, model_input: Any, vendor: str) -> pd.DataFrame:
        import torch
        from osteo_model.data import resample_pool
        from osteo_model.moe import decode_outputs
        pools = np.asarray(model_input, dtype=np.float32)                              # (B, 5, X, Y, Z)
        if pools.ndim != 5:
            raise ValueError(f"expected pools of shape (B, 5, X, Y, Z), got {pools.shape}")
        x = np.stack([resample_pool(self.norm.transform(p), self.mcfg.input_shape) for p in pools])
        device = torch.full((len(x),), self.mcfg.moe.device_index(vendor), dtype=torch.long)
        with torch.no_grad():
            dec = decode_outputs(self.model(torch.from_numpy(x), device), self.mcfg.moe)
        return self._output(dec["score"].numpy(), dec["bmd_g_cm2"].numpy(), dec["level"].numpy())

    def _predict_table(self, table: pd.DataFrame, vendor: str) -> pd.DataFrame:
        """Same preprocessing as training (:func:`osteo_model.pipeline.predict_frame`); the output keeps
        the input's index and carries no column of the input (no identifiers travel through)."""
        from osteo_model.pipeline import predict_frame
        if "pool_uri" not in table.columns:
            raise ValueError("a DataFrame input needs a 'pool_uri' column (absolute path of each vertebra's "
                             f"texture-pool .npy) and optionally 'device_vendor'; got columns {list(table.columns)}")
        vendors = table["device_vendor"] if "device_vendor" in table.columns else pd.Series(None, index=table.index)
        frame = pd.DataFrame({"pool_path": [str(pool_file(u)) for u in table["pool_uri"]],
                              "device_vendor": vendors.where(vendors.notna(), vendor).to_numpy()})
        pred = predict_frame(self.model, self.norm, frame, Path("/"), self.mcfg.moe,
                             input_shape=self.mcfg.input_shape)                        # absolute paths: root unused
        return self._output(pred["score"].to_numpy(), pred["bmd_pred"].to_numpy(), pred["level_pred"].to_numpy(),
                            index=table.index)
