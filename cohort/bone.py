"""Latent bone of one patient and the trabecular network of one vertebral body.

The latent quantity is the trabecular volumetric BMD (vBMD, mg/cm3 of
hydroxyapatite), as measured by QCT. It declines with age, faster in women in
the years after menopause, and varies by level (thoracic denser than lumbar).
Bone volume fraction follows from a constant tissue mineral density:
BV/TV = vBMD / TMD. The network is the anti-aliased zero set of an anisotropic
band-pass Gaussian random field ("plates" spaced ~ half a wavelength apart),
thresholded so that the mean occupancy equals BV/TV exactly; horizontal
elements are thinned first as density falls.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from cohort.anatomy import L1, L6, LEVELS, Vertebra, spine_layout
from cohort.config import BoneConfig

# Rice-formula constant: sheet area per volume of the zero set of an isotropic
# narrow-band field with wavelength lam is ~ 4 / (sqrt(3) lam).
_SHEET_DENSITY = 4.0 / np.sqrt(3.0)


@dataclass(frozen=True)
class PatientBone:
    """Person-level latent bone state (all the DXA physics and CT rendering need)."""

    sex: str
    age: float
    menopause_age: float
    vbmd: dict[int, float]          # level -> trabecular vBMD (mg/cm3)
    marrow_fat: float               # marrow fat fraction (0-1)
    cortical_factor: float          # person effect on cortical thickness
    size_factor: float
    height_factor: float
    n_lumbar: int                   # 5, or 6 (L6 present)
    spine: tuple[Vertebra, ...]

    def vertebra(self, level: int) -> Vertebra:
        return self.spine[level - 1]


def mean_vbmd(age: float, sex: str, menopause_age: float, cfg: BoneConfig) -> float:
    """Population-mean L1 trabecular vBMD (mg/cm3) at ``age`` (piecewise-linear decline)."""
    peak = cfg.peak_vbmd[sex]
    if sex == "M":
        return max(peak - cfg.decline_per_year["M"] * max(age - 30.0, 0.0), 25.0)
    pre = cfg.decline_per_year["F"] * max(min(age, menopause_age) - 30.0, 0.0)
    fast = cfg.menopause_decline * float(np.clip(age - menopause_age, 0.0, cfg.menopause_years))
    late = cfg.late_decline * max(age - menopause_age - cfg.menopause_years, 0.0)
    return max(peak - pre - fast - late, 25.0)


def draw_patient_bone(rng: np.random.Generator, sex: str, age: float, cfg: BoneConfig) -> PatientBone:
    """Draw one patient's latent bone: vBMD per level, cortex, size, marrow fat."""
    meno = float(rng.uniform(*cfg.menopause_age)) if sex == "F" else float("nan")
    z_trab, z_indep = rng.standard_normal(2)
    z_cort = cfg.cortical_corr * z_trab + np.sqrt(1 - cfg.cortical_corr**2) * z_indep
    base = mean_vbmd(age, sex, meno, cfg) * np.exp(cfg.vbmd_cv * z_trab - 0.5 * cfg.vbmd_cv**2)
    n_lumbar = 6 if rng.random() < cfg.l6_share else 5
    level_noise = rng.standard_normal(len(LEVELS))
    vbmd = {}
    for lv in range(1, 13 + n_lumbar):
        grad = cfg.level_gradient * (L1 - lv) if lv < L1 else cfg.lumbar_gradient * (lv - L1)
        vbmd[lv] = float(base * (1.0 + grad) * np.exp(cfg.level_cv * level_noise[lv - 1]))
    rel_loss = float(np.clip(1.0 - base / cfg.peak_vbmd[sex], 0.0, 1.0))
    fat = cfg.marrow_fat_base + cfg.marrow_fat_per_year * max(age - 30.0, 0.0) \
        + cfg.marrow_fat_density_coupling * rel_loss + cfg.marrow_fat_sd * rng.standard_normal()
    cort_factor = float(np.exp(cfg.cortical_cv * z_cort) * (1.0 - cfg.cortical_decline * max(age - 40.0, 0.0)))
    size = float((cfg.male_size if sex == "M" else 1.0) * (1.0 + cfg.size_cv * rng.standard_normal()))
    height = float((1.0 + 0.4 * (cfg.male_size - 1.0) if sex == "M" else 1.0) * (1.0 + 0.5 * cfg.size_cv * rng.standard_normal()))
    cortex = {lv: cfg.cortical_mm[sex] * cort_factor * (0.85 if lv < L1 else 1.0) for lv in range(1, L6 + 1)}
    spine = spine_layout(size, height, cortex, n_lumbar)
    return PatientBone(sex, float(age), meno, vbmd, float(np.clip(fat, 0.05, 0.9)), cort_factor,
                       size, height, n_lumbar, tuple(spine))


def microstructure_targets(vbmd: float, cfg: BoneConfig) -> tuple[float, float, float, float]:
    """(BV/TV, Tb.Th mm, wavelength mm, horizontal thinning) for a vBMD.

    Tb.Th falls slowly with density (Tb.Th ~ (BV/TV)^exponent); the band-pass
    wavelength (hence Tb.Sp) grows so that sheet density x thickness = BV/TV.
    """
    bvtv = float(np.clip(vbmd / cfg.tissue_mineral_mg, 0.01, 0.6))
    rel = bvtv / cfg.bvtv_young
    tb_th = cfg.tb_th_young_mm * rel ** cfg.tb_th_exponent
    lam = _SHEET_DENSITY * tb_th / bvtv
    h_thin = cfg.horizontal_thinning_max * float(np.clip(1.0 - rel, 0.0, 1.0))
    return bvtv, float(tb_th), float(lam), h_thin


@dataclass(frozen=True)
class Network:
    """A trabecular network on a fine isotropic grid."""

    occupancy: np.ndarray  # float32 (x, y, z) bone fraction per fine voxel, 0-1
    bv_tv: float           # mean occupancy (measured)
    tb_th_mm: float        # occupancy-weighted local plate thickness (measured)
    tb_sp_mm: float        # plate-model separation Tb.Th (1/BVTV - 1)
    tb_n_per_mm: float     # BV/TV / Tb.Th
    horizontal_share: float  # bone fraction in near-horizontal plates (|n_z| > 0.7)
    body_dist: np.ndarray | None = None  # float32 signed distance (mm) to the body surface on the same grid


def band_pass_field(rng: np.random.Generator, shape: tuple[int, int, int], voxel_mm: float,
                    wavelength_mm: float, anisotropy: float) -> np.ndarray:
    """Zero-mean anisotropic band-pass Gaussian random field, unit variance, (x, y, z).

    Structures are ``anisotropy`` times longer along z (vertical trabeculae dominate).
    """
    fshape = tuple(sfft.next_fast_len(n, real=True) for n in shape)
    noise = rng.standard_normal(fshape, dtype=np.float32)
    spec = sfft.rfftn(noise)
    kx = sfft.fftfreq(fshape[0], d=voxel_mm)[:, None, None]
    ky = sfft.fftfreq(fshape[1], d=voxel_mm)[None, :, None]
    kz = sfft.rfftfreq(fshape[2], d=voxel_mm)[None, None, :]
    k = np.sqrt(kx**2 + ky**2 + (anisotropy * kz) ** 2)
    k0 = 1.0 / wavelength_mm
    spec *= np.exp(-0.5 * ((k - k0) / (0.35 * k0)) ** 2).astype(np.float32)
    field = sfft.irfftn(spec, s=fshape)[: shape[0], : shape[1], : shape[2]]
    return (field / (field.std() + 1e-12)).astype(np.float32)


def trabecular_network(rng: np.random.Generator, shape: tuple[int, int, int], voxel_mm: float,
                       vbmd: float, cfg: BoneConfig, interior: np.ndarray | None = None) -> Network:
    """Generate the network of one vertebral body with BV/TV = vBMD / TMD.

    Args:
        rng: generator for this body.
        shape: fine-grid shape (x, y, z).
        voxel_mm: fine voxel size (mm).
        vbmd: latent trabecular vBMD (mg/cm3).
        cfg: bone constants.
        interior: optional bool mask where BV/TV is matched and metrics are measured.
    """
    bvtv, tb_th, lam, h_thin = microstructure_targets(vbmd, cfg)
    f = band_pass_field(rng, shape, voxel_mm, lam, cfg.anisotropy)
    gx, gy, gz = np.gradient(f, voxel_mm)
    gnorm = np.sqrt(gx**2 + gy**2 + gz**2) + 1e-6
    dist = np.abs(f) / gnorm                       # mm to the zero set (first-order)
    nz2 = (gz / gnorm) ** 2                        # 1 = horizontal plate, 0 = vertical
    g = 1.0 - h_thin * nz2                         # horizontal plates thinner at low density
    sel = interior if interior is not None else np.ones(shape, dtype=bool)
    d_s, g_s = dist[sel], g[sel]
    sub = slice(None, None, max(1, d_s.size // 20000))

    def occ(half: float, d: np.ndarray, gg: np.ndarray) -> np.ndarray:
        return np.clip((half * gg - d) / voxel_mm + 0.5, 0.0, 1.0)

    lo, hi = 0.0, 4.0 * lam
    for _ in range(22):                            # bisection: mean occupancy == BV/TV
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if occ(mid, d_s[sub], g_s[sub]).mean() < bvtv else (lo, mid)
    half = 0.5 * (lo + hi)
    o = occ(half, dist, g).astype(np.float32)
    o_in = o[sel]
    bv = float(o_in.mean())
    th = float((2.0 * half * g_s * o_in).sum() / max(o_in.sum(), 1e-6))
    hshare = float((o_in * (nz2[sel] > 0.49)).sum() / max(o_in.sum(), 1e-6))
    return Network(o, bv, th, th * (1.0 / max(bv, 1e-3) - 1.0), bv / max(th, 1e-6), hshare)
