"""The ``texture:`` section: GLCM engine settings (pyradiomics semantics) and the texture stage."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from osteo_config.errors import ConfigError


# --- errors ------------------------------------------------------------------
class TextureInputError(ValueError):
    """An image/mask pair (or the settings) cannot give meaningful GLCM maps."""


class InvalidSettingsError(TextureInputError):
    """A GLCM setting is out of range."""


# --- settings ----------------------------------------------------------------
@dataclass(frozen=True)
class GLCMSettings:
    """Voxel-based GLCM settings (pyradiomics names in brackets).

    Attributes:
        bin_width: gray-level bin width in image units, HU (``binWidth``); > 0.
        bin_count: fixed number of bins instead of a bin width (``binCount``); None = use bin_width.
        kernel_radius: half side of the cubic sliding window in voxels (``kernelRadius``); >= 1.
        max_gray_levels: refuse ROIs whose discretisation gives more levels than this.
        fill_value: value of every voxel outside the mask (``initValue``, pyradiomics default 0).
        voxel_batch: pyradiomics ``voxelBatch`` (mask voxels per batch, C order); only changes
            which directions count as empty; -1 = the whole mask in one batch (pyradiomics default).
        min_roi_dimensions: the mask's bounding box must exceed one voxel in at least this many
            axes (``minimumROIDimensions``, pyradiomics default 2).
    """

    bin_width: float = 25.0
    bin_count: int | None = None
    kernel_radius: int = 1
    max_gray_levels: int = 256
    fill_value: float = 0.0
    voxel_batch: int = -1
    min_roi_dimensions: int = 2

    def __post_init__(self) -> None:
        if not (np.isfinite(self.bin_width) and self.bin_width > 0):
            raise InvalidSettingsError(f"bin_width={self.bin_width}: use a positive number of HU per level")
        if self.bin_count is not None and int(self.bin_count) < 1:
            raise InvalidSettingsError(f"bin_count={self.bin_count}: use a positive integer or None")
        if int(self.kernel_radius) < 1:
            raise InvalidSettingsError(f"kernel_radius={self.kernel_radius}: use an integer >= 1")
        if int(self.max_gray_levels) < 1:
            raise InvalidSettingsError(f"max_gray_levels={self.max_gray_levels}: use an integer >= 1")
        if self.voxel_batch == 0 or self.voxel_batch < -1:
            raise InvalidSettingsError(f"voxel_batch={self.voxel_batch}: use -1 (whole mask) or a positive count")
        if self.min_roi_dimensions not in (1, 2, 3):
            raise InvalidSettingsError(f"min_roi_dimensions={self.min_roi_dimensions}: use 1, 2 or 3")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> "GLCMSettings":
        """Build from the ``texture:`` section of params.yaml (unknown keys ignored)."""
        bc = section.get("bin_count")
        return cls(
            bin_width=float(section.get("bin_width", 25.0)),
            bin_count=None if bc in (None, 0) else int(bc),
            kernel_radius=int(section.get("kernel_radius", 1)),
            max_gray_levels=int(section.get("max_gray_levels", 256)),
            fill_value=float(section.get("fill_value", 0.0)),
            voxel_batch=int(section.get("voxel_batch", -1)),
        )

    def to_pyradiomics(self) -> dict[str, Any]:
        """The equivalent pyradiomics extractor settings."""
        out: dict[str, Any] = {
            "binWidth": self.bin_width, "kernelRadius": int(self.kernel_radius),
            "initValue": self.fill_value, "voxelBatch": int(self.voxel_batch),
            "minimumROIDimensions": int(self.min_roi_dimensions),
        }
        if self.bin_count is not None:
            out["binCount"] = int(self.bin_count)
        return out


class TextureConfigError(ConfigError):
    """The ``texture:`` section holds a value outside its range (other than a GLCM setting)."""


LEVELS = (1, 18)              # ordinal level ids T1..L6 (features.io.masks.LEVEL_NAMES)


def _level_range(value: Any) -> tuple[int, int] | None:
    """``scalar_levels``: null (every level) or ``[low, high]`` level ids, 1 <= low <= high <= 18."""
    if value is None:
        return None
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise TextureConfigError(f"texture.scalar_levels={value!r}: use null (every level) or [low, high] level "
                                 f"ids, e.g. [13, 16] for L1-L4") from None
    if not LEVELS[0] <= lo <= hi <= LEVELS[1]:
        raise TextureConfigError(f"texture.scalar_levels=[{lo}, {hi}]: use {LEVELS[0]} <= low <= high <= "
                                 f"{LEVELS[1]} (level ids: 1 = T1 ... 13 = L1 ... 16 = L4)")
    return lo, hi


ENGINE_VERSION = "texture-1"  # bump when the maps' definition changes: invalidates every cache entry


@dataclass(frozen=True)
class TextureConfig:
    """The ``texture:`` section of params.yaml."""

    glcm: GLCMSettings = GLCMSettings(kernel_radius=2)  # engine settings (bin width, kernel radius, ...)
    device: str = "auto"        # auto | cpu | cuda
    batch_size: int = 16        # ROIs per engine call
    workers: int = 2            # processes for the pyradiomics scalar features
    scalar_features: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"firstorder": (), "glcm": (), "glrlm": (), "glszm": ()})
    scalar_levels: tuple[int, int] | None = None  # level ids (inclusive) that get scalar radiomics; None = all

    def __post_init__(self) -> None:
        object.__setattr__(self, "scalar_levels", _level_range(self.scalar_levels))

    def wants_scalar(self, level: int) -> bool:
        """Whether a vertebra of this level id gets scalar radiomics (``scalar_levels``)."""
        return self.scalar_levels is None or self.scalar_levels[0] <= int(level) <= self.scalar_levels[1]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TextureConfig":
        """Parse the merged params dict (its ``texture`` section)."""
        sec = dict(params.get("texture", {}) or {})
        scal = sec.get("scalar_features") or {}
        return cls(
            glcm=GLCMSettings.from_params(sec),
            device=str(sec.get("device", "auto")),
            batch_size=max(1, int(sec.get("batch_size", 16))),
            workers=max(1, int(sec.get("workers", 2))),
            scalar_features={str(k): tuple(v or ()) for k, v in scal.items()},
            scalar_levels=sec.get("scalar_levels"),   # checked and made a pair by __post_init__
        )

    def params_hash(self) -> str:
        """Hash of everything that changes a pool or a scalar feature (not device / batch / workers)."""
        blob = json.dumps({"engine": ENGINE_VERSION, "glcm": asdict(self.glcm),
                           "scalar": {k: list(v) for k, v in sorted(self.scalar_features.items())},
                           **({"scalar_levels": list(self.scalar_levels)} if self.scalar_levels else {})},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
