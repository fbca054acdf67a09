"""Spine anatomy: vertebral levels, label ids, level-dependent sizes and shapes.

Coordinates are millimetres in a patient frame with RAS+ axes (x to the
patient's right, y anterior, z superior). Each vertebra has a local frame
centred on its vertebral body. Shapes are evaluated on arbitrary point grids
(``X, Y, Z`` arrays of local coordinates) so the same geometry drives the CT
rendering, the masks and the analytic DXA projection.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Ordinal levels of METHOD.md §1: T1..T12 = 1..12, L1..L6 = 13..18.
LEVEL_NAMES = tuple([f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)])
LEVELS = tuple(range(1, 19))
L1, L4, L5, L6 = 13, 16, 17, 18


def level_name(level: int) -> str:
    """Ordinal level (1-18) -> name (``T1`` .. ``L6``)."""
    return LEVEL_NAMES[level - 1]


def totalseg_id(level: int) -> int:
    """TotalSegmentator v2 ``total`` label id: T1=43 ... T12=32, L1=31 ... L5=27 (no L6)."""
    if not 1 <= level <= L5:
        raise ValueError(f"level {level_name(level)} has no TotalSegmentator id: write it as a VerSe mask")
    return 44 - level


def verse_id(level: int) -> int:
    """VerSe label id: 8-19 = T1-T12, 20-24 = L1-L5, 25 = L6 (1-7 cervical, 28 = T13 unused here)."""
    return level + 7


# Reference vertebral-body size of a woman (width x depth x height, mm), anchors
# interpolated linearly between levels. Lumbar ~45 x 33 x 27 mm.
_SIZE_ANCHORS = {1: (28.0, 17.0, 14.5), 6: (30.0, 23.0, 18.0), 12: (40.0, 29.0, 23.0),
                 13: (42.0, 30.5, 25.0), 15: (46.0, 32.5, 27.0), 17: (49.0, 33.5, 26.5), 18: (49.0, 33.5, 25.0)}
# Intervertebral disc height below each level (mm).
_DISC_ANCHORS = {1: 4.0, 12: 6.0, 13: 8.0, 16: 10.0, 17: 9.5, 18: 9.0}


def _interp(anchors: dict[int, object], level: int) -> np.ndarray:
    keys = sorted(anchors)
    vals = np.array([anchors[k] for k in keys], dtype=float)
    if vals.ndim == 1:
        return np.interp(level, keys, vals)
    return np.array([np.interp(level, keys, vals[:, i]) for i in range(vals.shape[1])])


def body_size(level: int, size_factor: float = 1.0, height_factor: float = 1.0) -> tuple[float, float, float]:
    """Vertebral-body (width, depth, height) in mm for a level and person-level size factors."""
    w, d, h = _interp(_SIZE_ANCHORS, level)
    return float(w * size_factor), float(d * size_factor), float(h * height_factor)


def disc_height(level: int, height_factor: float = 1.0) -> float:
    """Height (mm) of the disc below ``level``."""
    return float(_interp(_DISC_ANCHORS, level) * height_factor)


@dataclass(frozen=True)
class Vertebra:
    """One vertebra in the patient frame: body ellipse + posterior elements."""

    level: int
    z: float          # body centre, mm (superior +)
    y: float          # body centre AP offset, mm (lordosis / kyphosis)
    a: float          # body half-width (x), mm
    b: float          # body half-depth (y), mm
    h: float          # body height, mm
    cortex_mm: float  # cortical shell thickness, mm

    @property
    def lumbar(self) -> bool:
        return self.level >= L1

    # --- posterior-element dimensions (mm), scaled with the body ------------------
    @property
    def canal(self) -> tuple[float, float]:
        """Spinal canal half-axes (x, y)."""
        s = self.b / 16.0
        return (8.5 * s, 7.0 * s) if self.lumbar else (7.0 * s, 6.5 * s)

    @property
    def pedicle_r(self) -> float:
        return 0.20 * self.a

    @property
    def lamina_t(self) -> float:
        return 0.35 * self.b

    @property
    def spinous(self) -> tuple[float, float, float, float]:
        """Spinous process (length, half-width, height, downward tilt dz/dy)."""
        return (1.25 * self.b, 3.0, 0.55 * self.h, 0.25 if self.lumbar else 0.9)

    @property
    def transverse_len(self) -> float:
        return 1.65 * self.a if self.lumbar else 1.45 * self.a

    def body_distance(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm, > 0 inside) to the body surface; local coordinates.

        The body is an elliptic cylinder with a slight waist (concave sides) and
        flat endplates.
        """
        X, Y, Z = (np.asarray(q, dtype=np.float32) for q in (X, Y, Z))
        waist = 1.0 - 0.06 * (1.0 - np.clip(2.0 * Z / self.h, -1, 1) ** 2)
        ia, ib = 1.0 / (self.a * waist), 1.0 / (self.b * waist)
        u, w = X * ia, Y * ib                                  # normalised coordinates
        r = np.sqrt(u * u + w * w)
        grad = np.sqrt((u * ia) ** 2 + (w * ib) ** 2)          # |grad r| * r
        d_xy = (1.0 - r) * r / np.maximum(grad, 1e-6)
        d_xy = np.where(r > 1e-3, d_xy, np.float32(min(self.a, self.b)))
        return np.minimum(d_xy, self.h / 2.0 - np.abs(Z))

    def posterior_mask(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Pedicles, lamina, spinous and transverse processes (bool); local coordinates.

        These belong to the vertebra's label, as in TotalSegmentator.
        """
        cx, cy = self.canal
        y_front = -self.b + 1.0                      # pedicles start inside the posterior wall
        y_lam = -self.b - 2 * cy                     # front face of the lamina
        pr = self.pedicle_r
        zc = 0.15 * self.h                           # pedicles sit in the upper half
        ped = (np.abs(np.abs(X) - (cx + pr)) / pr) ** 2 + ((Z - zc) / (0.3 * self.h)) ** 2 <= 1.0
        ped = ped & (Y <= y_front) & (Y >= y_lam)
        lam = (Y <= y_lam) & (Y >= y_lam - self.lamina_t) & (np.abs(X) <= cx + 2 * pr) & (np.abs(Z) <= 0.45 * self.h)
        sl, sw, sh, tilt = self.spinous
        y0 = y_lam - self.lamina_t
        zsp = 0.05 * self.h - tilt * np.clip(y0 - Y, 0, None)
        spi = (Y <= y0) & (Y >= y0 - sl) & (np.abs(X) <= sw) & (np.abs(Z - zsp) <= sh / 2)
        ty = -self.b - cy
        tra = (np.abs(Y - ty) <= 3.5) & (np.abs(X) >= cx + pr) & (np.abs(X) <= self.transverse_len) \
            & (np.abs(Z - zc) <= 0.18 * self.h)
        canal = ((X / cx) ** 2 + ((Y - (-self.b - cy)) / cy) ** 2) <= 1.0
        return (ped | lam | spi | tra) & ~canal

    def canal_mask(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Spinal canal (CSF) inside this vertebra's height (bool); local coordinates."""
        cx, cy = self.canal
        return (((X / cx) ** 2 + ((Y + self.b + cy) / cy) ** 2) <= 1.0) & (np.abs(Z) <= self.h / 2 + 6)

    def posterior_volume_in_roi_cm3(self) -> float:
        """Analytic volume (cm3) of the posterior elements projecting onto the AP DXA ROI (|x| <= a)."""
        cx, cy = self.canal
        pr = self.pedicle_r
        ped = 2 * np.pi * pr * 0.3 * self.h * (2 * cy + 1.0)
        lam = 2 * (cx + 2 * pr) * self.lamina_t * 0.9 * self.h
        sl, sw, sh, _ = self.spinous
        spi = 2 * sw * sl * sh
        return float((ped + lam + spi) / 1000.0)

    def extent_mm(self) -> tuple[float, float]:
        """(y_min, y_max) of the whole vertebra in local coordinates."""
        _, cy = self.canal
        sl = self.spinous[0]
        return -self.b - 2 * cy - self.lamina_t - sl - 1.0, self.b + 1.0


def spine_layout(size_factor: float, height_factor: float, cortex_mm: dict[int, float],
                 n_lumbar: int = 5) -> list[Vertebra]:
    """Stack T1..L5 (or L6) vertically: L1 body centre at z = 0, discs in between.

    Args:
        size_factor: person-level width/depth factor.
        height_factor: person-level height factor.
        cortex_mm: level -> cortical shell thickness (mm).
        n_lumbar: 5, or 6 for a sixth lumbar vertebra.
    """
    levels = list(range(1, 13 + n_lumbar))
    out: dict[int, Vertebra] = {}
    z = 0.0
    # from L1 downwards, then from L1 upwards
    for direction, seq in ((-1, [lv for lv in levels if lv >= L1]), (1, [lv for lv in reversed(levels) if lv <= L1])):
        z = 0.0
        prev = None
        for lv in seq:
            w, d, h = body_size(lv, size_factor, height_factor)
            if prev is not None:
                pw, pd, ph = body_size(prev, size_factor, height_factor)
                gap = disc_height(min(lv, prev), height_factor)
                z += direction * (ph / 2 + gap + h / 2)
            # gentle curvature: lumbar lordosis (anterior), thoracic kyphosis (posterior)
            y = 4.0 * np.sin(np.pi * (lv - 12.5) / 6.0) if lv > 12 else -6.0 * np.sin(np.pi * (lv - 1) / 12.0)
            out[lv] = Vertebra(lv, float(z), float(y), w / 2, d / 2, h, float(cortex_mm[lv]))
            prev = lv
    return [out[lv] for lv in levels]
