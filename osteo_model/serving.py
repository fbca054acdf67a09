"""Model serving: the MLflow pyfunc around ``model.pt`` and its I/O contract.

The logged model (:class:`ScreeningPyfunc`) takes either float32 texture pools
(B, 5, X, Y, Z) in raw units (HU + the 4 GLCM maps of the data contract §3, any
grid: the model normalises and resamples to ``model.input_shape``) or a vertebra
table with a ``pool_uri`` column (absolute path of each pool .npy) and an optional
per-row ``device_vendor`` and ``contrast`` (0/1) and, for a model with
descriptors (``model.moe.descriptors``), those columns; param ``device_vendor`` (default
``unknown``: the learned unknown-device embedding; name a vendor to ask "what would
a Hologic DXA say"; a name the model does not know is an ``UnknownVendorError``)
and param ``contrast`` (0/1, default -1 = unknown); output = one row per vertebra with ``score``,
``bmd_g_cm2``, ``level``, ``screen_positive`` (score >= the stored validation
threshold) and no input column, so no identifier travels through. The I/O
contract (:func:`model_contract`: modality, HU window, spacing, ROI shape,
channels, feature service, intended use, threshold) is logged as the model's
``io_contract`` metadata. The input example is synthetic (every voxel at the
training channel mean), so it carries no patient data. The model is portable: the
packages it imports travel with it as MLflow ``code_paths`` (:func:`pyfunc_code_paths`),
and :func:`pyfunc_requirements` pins its third-party requirements.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from mlflow.pyfunc import PythonModel as _PythonModel  # importing it has no side effects


def pyfunc_requirements() -> list[str]:
    """Pinned runtime requirements of the pyfunc (explicit: MLflow's inference would import-trace in a subprocess)."""
    import mlflow
    import torch
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


# project packages the pyfunc imports when it loads and predicts (osteo_model.checkpoint -> features.atomic;
# configs -> osteo_config); logged as the model's code_paths so a fresh environment needs no checkout of the repo
CODE_PACKAGES = ("osteo_model", "osteo_config", "features")


def pyfunc_code_paths() -> list[str]:
    """Folders of :data:`CODE_PACKAGES`, logged with the model (MLflow puts them on ``sys.path`` at load time).

    Without them the pickled :class:`ScreeningPyfunc` refers to ``osteo_model.serving`` by name only and
    ``mlflow models serve`` in an environment without this repository fails on import.
    """
    import importlib

    return [str(Path(importlib.import_module(name).__file__).parent) for name in CODE_PACKAGES]


PYFUNC_INPUTS = {
    "tensor": "float32 (B, 5, X, Y, Z) texture pools in raw units; params device_vendor (default unknown) and contrast (0/1, -1 unknown); "
              "a model with descriptors takes a dict {'pools': (B, 5, X, Y, Z), 'descriptors': (B, k) in the contract's order}",
    "table": "DataFrame, one row per vertebra: pool_uri (absolute path or file:// URI of the pool .npy), "
             "optional device_vendor (per row; missing -> the device_vendor param) and contrast (0/1), and the "
             "descriptor columns the contract lists under 'descriptors' (vertebrae.parquet, written by ingestion; "
             "a model with descriptors accepts only this input); other columns are ignored",
}


def model_contract(state: Mapping[str, Any]) -> dict[str, Any]:
    """The I/O contract logged with the model: the bundle's ``io`` + operating point + accepted inputs."""
    op = dict(state.get("threshold") or {})
    descriptors = list((state.get("model_config") or {}).get("moe", {}).get("descriptors") or [])
    return {**dict(state.get("io") or {}), "descriptors": descriptors, "threshold": op.get("threshold"), "operating_point": op,
            "threshold_source": "validation split (never tuned on test data)", "pyfunc_inputs": PYFUNC_INPUTS}


def pyfunc_signature(bundle: Path):
    """Output schema + ``device_vendor`` param, a synthetic tensor input example and the I/O contract.

    The input schema is left unset on purpose: an MLflow signature is either tensor- or
    column-based and enforcing one rejects the other, while the model accepts both a
    (B, 5, X, Y, Z) tensor and a vertebra table with ``pool_uri``; ``predict`` checks its
    input itself and the accepted forms are documented in the contract (``pyfunc_inputs``).
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from osteo_model.pipeline import load_model
    *_, state = load_model(bundle)
    mean = np.asarray(state["norm"]["mean"], dtype=np.float32)                     # (5,)
    grid = tuple(state["model_config"].get("input_shape") or (16, 16, 16))
    example = np.broadcast_to(mean[None, :, None, None, None], (1, len(mean), *grid)).copy()  # (1, 5, X, Y, Z)
    if "head.desc_mean" in state["state_dict"]:     # a model with descriptors: pools + descriptors at the training mean
        example = {"pools": example,
                   "descriptors": state["state_dict"]["head.desc_mean"].numpy().astype(np.float32)[None]}   # (1, k)
    signature = ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("double", "score"), ColSpec("double", "bmd_g_cm2"), ColSpec("long", "level"),
                        ColSpec("long", "screen_positive")]),
        params=ParamSchema([ParamSpec("device_vendor", "string", "unknown"), ParamSpec("contrast", "long", -1)]))
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


class ScreeningPyfunc(_PythonModel):
    """MLflow pyfunc around ``model.pt``: texture pools (a tensor, or a vertebra table with ``pool_uri``)
    in, one row per vertebra out: ``score``, ``bmd_g_cm2``, ``level``, ``screen_positive``."""

    def load_context(self, context: Any) -> None:
        from osteo_model.operating_point import OperatingPoint
        from osteo_model.pipeline import load_model
        self.model, self.norm, self.mcfg, _ = load_model(Path(context.artifacts["bundle"]))
        if "operating_point" not in context.artifacts:
            raise ValueError("this model was logged without an operating point: re-register it from a run of "
                             "`osteo train finetune` (no default threshold is assumed)")
        op = OperatingPoint.load(Path(context.artifacts["operating_point"]))    # chosen on validation
        self.threshold, self.calibration = op.threshold, op.calibration

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would enforce its own
        vendor = (params or {}).get("device_vendor", "unknown")
        contrast = int((params or {}).get("contrast", -1))
        self.mcfg.moe.device_index(vendor)                                     # UnknownVendorError before any work
        if isinstance(model_input, pd.DataFrame):
            return self._predict_table(model_input, vendor, contrast)
        if isinstance(model_input, dict):
            if "pools" not in model_input:
                raise ValueError(f"a dict input needs 'pools' (B, 5, X, Y, Z) and, for a model with descriptors, "
                                 f"'descriptors' (B, k); got keys {sorted(model_input)}")
            return self._predict_tensor(model_input["pools"], vendor, contrast, model_input.get("descriptors"))
        return self._predict_tensor(model_input, vendor, contrast)

    def _output(self, score: np.ndarray, bmd: np.ndarray, level: np.ndarray, index: Any = None) -> pd.DataFrame:
        score = np.asarray(score, dtype=np.float64)
        if getattr(self, "calibration", None) is not None:
            score = self.calibration.apply(score)                                      # the stored threshold's scale
        return pd.DataFrame({"score": score, "bmd_g_cm2": np.asarray(bmd, dtype=np.float64),
                             "level": np.asarray(level, dtype=np.int64),
                             "screen_positive": (score >= self.threshold).astype(np.int64)}, index=index)

    def _predict_tensor(self, model_input: Any, vendor: str, contrast: int = -1, descriptors: Any = None) -> pd.DataFrame:
        import torch
        from osteo_model.data import resample_pool
        from osteo_model.moe import decode_outputs
        pools = np.asarray(model_input, dtype=np.float32)                              # (B, 5, X, Y, Z)
        if pools.ndim != 5:
            raise ValueError(f"expected pools of shape (B, 5, X, Y, Z), got {pools.shape}")
        desc = None
        if self.mcfg.moe.descriptors:
            from osteo_model.errors import DescriptorInputError
            names = list(self.mcfg.moe.descriptors)
            if descriptors is None:
                raise DescriptorInputError(f"this model also reads the descriptors {names} per vertebra: pass "
                                           "{'pools': (B, 5, X, Y, Z), 'descriptors': (B, k) in that order} or a "
                                           "table with pool_uri and those columns")
            desc = np.asarray(descriptors, dtype=np.float32)
            if desc.shape != (len(pools), len(names)) or not np.isfinite(desc).all():
                raise DescriptorInputError(f"descriptors must be a finite ({len(pools)}, {len(names)}) array, "
                                           f"columns {names}; got shape {desc.shape}")
            desc = torch.from_numpy(desc)
        x = np.stack([resample_pool(self.norm.transform(p), self.mcfg.input_shape) for p in pools])
        from osteo_model.moe import contrast_index
        device = torch.full((len(x),), self.mcfg.moe.device_index(vendor), dtype=torch.long)
        flag = torch.full((len(x),), contrast_index(None if contrast < 0 else contrast), dtype=torch.long)
        with torch.no_grad():
            dec = decode_outputs(self.model(torch.from_numpy(x), device, contrast=flag, descriptors=desc), self.mcfg.moe)
        return self._output(dec["score"].numpy(), dec["bmd_g_cm2"].numpy(), dec["level"].numpy())

    def _predict_table(self, table: pd.DataFrame, vendor: str, contrast: int = -1) -> pd.DataFrame:
        """Same preprocessing as training (:func:`osteo_model.pipeline.predict_frame`); the output keeps
        the input's index and carries no column of the input (no identifiers travel through)."""
        from osteo_model.pipeline import predict_frame
        if "pool_uri" not in table.columns:
            raise ValueError("a DataFrame input needs a 'pool_uri' column (absolute path of each vertebra's "
                             f"texture-pool .npy) and optionally 'device_vendor'; got columns {list(table.columns)}")
        vendors = table["device_vendor"] if "device_vendor" in table.columns else pd.Series(None, index=table.index)
        flags = table["contrast"] if "contrast" in table.columns else pd.Series(None, index=table.index, dtype=float)
        frame = pd.DataFrame({"pool_path": [str(pool_file(u)) for u in table["pool_uri"]],
                              "device_vendor": vendors.where(vendors.notna(), vendor).to_numpy(),
                              "contrast": flags.where(flags.notna(), None if contrast < 0 else contrast).to_numpy()})
        for name in self.mcfg.moe.descriptors:                 # missing columns: DescriptorInputError in the dataset
            if name in table.columns:
                frame[name] = table[name].to_numpy()
        pred = predict_frame(self.model, self.norm, frame, Path("/"), self.mcfg.moe,
                             input_shape=self.mcfg.input_shape)                        # absolute paths: root unused
        return self._output(pred["score"].to_numpy(), pred["bmd_pred"].to_numpy(), pred["level_pred"].to_numpy(),
                            index=table.index)
