"""Frozen configuration dataclasses parsed from the ``model:`` and ``train:`` sections.

Every entry point parses its section once with ``from_params(params)``; library
functions below take these objects (or plain arguments), never the raw dict.
Keys, units and ranges are documented next to each value in ``params.yaml``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

from osteo_config.errors import ConfigError


class ModelConfigError(ConfigError):
    """A ``model:`` or ``train:`` value in params.yaml is out of range or unknown."""

# Texture pool channel order (data contract §3): index 0 is the HU volume.
POOL_CHANNELS: tuple[str, ...] = ("HU", "Autocorrelation", "JointAverage", "Contrast", "DifferenceAverage")


def _build(cls: type, section: Mapping[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys; lists become tuples."""
    known = {f.name for f in fields(cls)}
    unknown = set(section) - known
    if unknown:
        raise ModelConfigError(f"{where}: unknown keys {sorted(unknown)}; valid keys are {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ModelConfigError(f"{where}: {exc}; add the missing key to params.yaml") from exc


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ModelConfigError(message + "; fix it in params.yaml")


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "compact"
    widths: tuple[int, ...] = (16, 32, 64, 96)
    layers: tuple[int, ...] = (3, 4, 6, 3)
    stem_width: int = 16
    embed_dim: int = 128
    norm: str = "group"

    def __post_init__(self) -> None:
        _check(self.name in ("compact", "resnet34"), f"model.backbone.name={self.name!r}: use compact | resnet34")
        _check(1 <= len(self.widths) <= 4, "model.backbone.widths needs 1-4 stages")
        _check(self.name != "resnet34" or len(self.layers) == len(self.widths),
               "model.backbone.layers needs one block count per stage in widths")
        _check(self.stem_width >= 4 and self.embed_dim > 0, "model.backbone.stem_width >= 4 and embed_dim > 0")
        _check(self.norm in ("group", "batch", "instance"), f"model.backbone.norm={self.norm!r}: group | batch | instance")


UNKNOWN_VENDOR = "unknown"  # what a user writes to declare that the DXA vendor is not known (learned embedding)


class UnknownVendorError(ModelConfigError, KeyError):
    """A DXA vendor name that is neither a known vendor nor the explicit ``unknown``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def device_index(vendors: Sequence[str], vendor: Any) -> int:
    """DXA vendor name -> index into ``vendors`` (``model.moe.device_vendors``).

    ``"unknown"`` (:data:`UNKNOWN_VENDOR`), None or NaN -> ``len(vendors)``, the learned "unknown device"
    index (trained by ``model.moe.vendor_dropout``). Any other name is a typed error: a misspelling
    ("GE" for "GE Lunar") must not silently select an embedding the user did not mean.

    Raises:
        UnknownVendorError: ``vendor`` is not in ``vendors`` and not ``"unknown"``/missing.
    """
    if vendor is None or (isinstance(vendor, float) and vendor != vendor) or vendor == UNKNOWN_VENDOR:
        return len(vendors)
    if vendor in vendors:
        return list(vendors).index(vendor)
    raise UnknownVendorError(f"unknown DXA vendor {vendor!r}: use one of {list(vendors)} (model.moe.device_vendors), "
                             f"or {UNKNOWN_VENDOR!r} when the vendor is not known")


@dataclass(frozen=True)
class SwAVConfig:
    proj_hidden: int = 256
    proj_dim: int = 64
    n_prototypes: int = 64
    temperature: float = 0.1
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 3
    freeze_prototypes_steps: int = 100
    diversity_weight: float = 0.05
    tp_pairs: str = "hu_texture"
    crop_scale: tuple[float, float] = (0.5, 1.0)
    tp_crop_scale: tuple[float, float] = (0.85, 1.0)
    flip: bool = True
    view_noise_hu: float = 10.0
    queue_length: int = 0

    def __post_init__(self) -> None:
        _check(0 < self.temperature <= 1 and 0 < self.sinkhorn_eps <= 1, "model.swav temperature/sinkhorn_eps in (0, 1]")
        _check(self.sinkhorn_iters >= 1 and self.n_prototypes >= 2, "model.swav sinkhorn_iters >= 1, n_prototypes >= 2")
        _check(self.tp_pairs in ("hu_texture", "any_pair"), f"model.swav.tp_pairs={self.tp_pairs!r}: hu_texture | any_pair")
        lo, hi = self.crop_scale
        _check(0 < lo <= hi <= 1, "model.swav.crop_scale must satisfy 0 < min <= max <= 1")
        lo, hi = self.tp_crop_scale
        _check(0 < lo <= hi <= 1, "model.swav.tp_crop_scale must satisfy 0 < min <= max <= 1")
        _check(self.view_noise_hu >= 0 and self.queue_length >= 0, "model.swav view_noise_hu and queue_length >= 0")


@dataclass(frozen=True)
class MoEConfig:
    use_moe: bool = True
    n_experts: int = 3
    expert_hidden: int = 128
    device_vendors: tuple[str, ...] = ("Hologic", "GE Lunar", "MEDIX")
    n_levels: int = 18
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.5
    class_only: bool = False
    bmd_center: float = 0.9
    bmd_scale: float = 0.15
    vendor_dropout: float = 0.1
    contrast_dropout: float = 0.1
    use_contrast: bool = True
    position_extra: float = 1.0
    # vertebrae.parquet columns (features.roi.DESCRIPTOR_COLUMNS) fed beside the image embedding; () = none
    descriptors: tuple[str, ...] = ()
    # linear path from [standardised descriptors, DXA vendor, contrast] to the BMD z and the osteoporosis
    # logit, fitted in closed form on the training split before fine-tuning (wide & deep); False = none
    wide: bool = False
    wide_ridge: float = 1.0
    wide_logistic_c: float = 1.0

    def __post_init__(self) -> None:
        _check(self.n_experts >= 1 and self.n_levels >= 1, "model.moe n_experts and n_levels >= 1")
        _check(not self.wide or bool(self.descriptors), "model.moe.wide needs model.moe.descriptors (its inputs)")
        _check(self.wide_ridge >= 0 and self.wide_logistic_c > 0, "model.moe.wide_ridge >= 0 and wide_logistic_c > 0")
        _check(len(set(self.descriptors)) == len(self.descriptors), "model.moe.descriptors lists a column twice")
        _check(0 <= self.vendor_dropout < 1 and 0 <= self.contrast_dropout < 1,
               "model.moe.vendor_dropout and contrast_dropout in [0, 1)")
        _check(self.position_extra >= 0, "model.moe.position_extra >= 0")
        _check(UNKNOWN_VENDOR not in self.device_vendors,
               f"model.moe.device_vendors must not list {UNKNOWN_VENDOR!r}: it is the reserved unknown-device index")
        _check(min(self.alpha, self.beta, self.gamma) >= 0, "model.moe alpha/beta/gamma >= 0")
        _check(self.bmd_scale > 0, "model.moe.bmd_scale > 0")

    @property
    def n_devices(self) -> int:
        """Known vendors plus one 'unknown vendor' index (the last)."""
        return len(self.device_vendors) + 1

    def device_index(self, vendor: Any) -> int:
        """Vendor name -> device index; ``"unknown"``/missing -> the last index; other names raise (see :func:`device_index`)."""
        return device_index(self.device_vendors, vendor)


@dataclass(frozen=True)
class CompanionConfig:
    triplet_margin: float = 0.1
    triplet_margin_per_bmd: float = 1.0
    pseudo_rounds: int = 3
    pseudo_max_std: float = 0.05
    pseudo_momentum: float = 0.5
    min_sensitivity: float = 0.86
    tscore_weight: float = 1.0
    threshold_level: str = "vertebra"
    calibrate: bool = False

    def __post_init__(self) -> None:
        _check(0 <= self.pseudo_momentum < 1, "model.companion.pseudo_momentum in [0, 1)")
        _check(0 < self.min_sensitivity <= 1, "model.companion.min_sensitivity in (0, 1]")
        _check(self.threshold_level in ("vertebra", "patient"),
               f"model.companion.threshold_level={self.threshold_level!r}: vertebra | patient")


@dataclass(frozen=True)
class BaselineConfig:
    l1_hu_thresholds: tuple[float, ...] = (110.0, 160.0)
    hu_score_scale: float = 20.0
    radiomics_C: float = 1.0
    radiomics_max_iter: int = 2000


@dataclass(frozen=True)
class AugmentConfig:
    """Fine-tuning re-imaging (``model.augment``): ranges drawn uniformly per re-imaged vertebra and epoch.

    ``p = 0`` (the default) is off. Units: slope dimensionless, offset / noise HU, FWHMs mm (extra blur
    on top of the source scanner's, in quadrature). See :mod:`osteo_model.augment`.
    """

    p: float = 0.0                                           # probability a fine-tuning vertebra is re-imaged in an epoch
    hu_slope: tuple[float, float] = (1.0, 1.0)               # HU' = slope x HU + offset
    hu_offset_hu: tuple[float, float] = (0.0, 0.0)           # HU
    noise_hu: tuple[float, float] = (0.0, 0.0)               # SD of the added white noise, HU
    psf_fwhm_mm: tuple[float, float] = (0.0, 0.0)            # extra in-plane Gaussian PSF FWHM, mm
    slice_fwhm_mm: tuple[float, float] = (0.0, 0.0)          # extra Gaussian slice profile FWHM along z, mm

    def __post_init__(self) -> None:
        _check(0 <= self.p <= 1, f"model.augment.p={self.p}: a probability in [0, 1]")
        for name in ("hu_slope", "hu_offset_hu", "noise_hu", "psf_fwhm_mm", "slice_fwhm_mm"):
            r = getattr(self, name)
            _check(len(r) == 2 and float(r[0]) <= float(r[1]), f"model.augment.{name}={r}: [low, high] with low <= high")
        _check(self.hu_slope[0] > 0, f"model.augment.hu_slope={self.hu_slope}: slopes > 0")
        _check(min(self.noise_hu[0], self.psf_fwhm_mm[0], self.slice_fwhm_mm[0]) >= 0,
               "model.augment noise_hu, psf_fwhm_mm and slice_fwhm_mm >= 0 (extra noise and blur only)")

    @property
    def enabled(self) -> bool:
        return self.p > 0


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model's architecture and losses (``model:`` section)."""

    backbone: BackboneConfig = BackboneConfig()
    swav: SwAVConfig = SwAVConfig()
    moe: MoEConfig = MoEConfig()
    companion: CompanionConfig = CompanionConfig()
    baselines: BaselineConfig = BaselineConfig()
    augment: AugmentConfig = AugmentConfig()                 # fine-tuning re-imaging (p = 0: off)
    # (x, y, z) voxels the pool is trilinearly resampled to before the encoder; None = the pool's own grid.
    input_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        _check(self.input_shape is None or (len(self.input_shape) == 3 and min(self.input_shape) >= 4),
               f"model.input_shape={self.input_shape}: null or three voxel counts >= 4")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ModelConfig":
        """Parse the merged params' ``model:`` section (missing sub-sections take defaults)."""
        sec = params.get("model") or {}
        parts = {"backbone": BackboneConfig, "swav": SwAVConfig, "moe": MoEConfig,
                 "companion": CompanionConfig, "baselines": BaselineConfig, "augment": AugmentConfig}
        unknown = set(sec) - set(parts) - {"input_shape"}
        if unknown:
            raise ModelConfigError(f"model: unknown sub-sections {sorted(unknown)}; valid: {sorted(parts)} + input_shape")
        shape = sec.get("input_shape")
        return cls(**{k: _build(c, sec.get(k) or {}, f"model.{k}") for k, c in parts.items()},
                   input_shape=None if shape is None else tuple(int(v) for v in shape))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """One training stage (``train:`` common keys merged with ``train.<stage>``)."""

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-4
    warmup_epochs: float = 0.0
    seed: int = 1234
    device: str = "auto"
    amp: bool = True
    deterministic: bool = True
    num_workers: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.1
    grad_clip: float = 3.0
    min_lr_ratio: float = 0.01
    ckpt_every_steps: int = 50

    def __post_init__(self) -> None:
        _check(self.epochs >= 1 and self.batch_size >= 1, "train epochs and batch_size >= 1")
        _check(self.lr > 0 and self.warmup_epochs >= 0, "train lr > 0 and warmup_epochs >= 0")
        _check(self.ckpt_every_steps >= 1, "train.ckpt_every_steps >= 1")
        _check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio in [0, 1]")
        _check(self.device in ("auto", "cpu", "cuda"), f"train.device={self.device!r}: auto | cpu | cuda")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], stage: str) -> "TrainConfig":
        """Parse ``train:`` for ``stage`` (``pretrain`` | ``finetune``): common keys + stage keys."""
        sec = dict(params.get("train") or {})
        sec.pop("method", None)  # which method to train: read by osteo_model.experiment, not a loop setting
        stages = {k: sec.pop(k) for k in ("pretrain", "finetune") if k in sec}
        if stage not in ("pretrain", "finetune"):
            raise ModelConfigError(f"unknown training stage {stage!r}: use pretrain | finetune")
        return _build(cls, {**sec, **(stages.get(stage) or {})}, f"train.{stage}")
