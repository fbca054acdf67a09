"""CT physics: render one study of one patient on a scanner's native grid.

Pipeline (all linear until the noise, so the order is physically sound):
1. soft tissue, fat, air behind the back, aorta, discs, canal and posterior
   elements evaluated at the native voxel centres;
2. each vertebral body rendered on a fine isotropic grid (cortical shell +
   trabecular network with marrow), averaged over the native voxel footprint
   (pixel x slice thickness: the slice sensitivity profile) and sampled onto
   the native grid;
3. in-plane PSF blur, optional IV contrast, HU calibration error of the
   scanner (slope/offset), correlated noise, rounding to int16.

The output array is in canonical RAS order (x right, y anterior, z superior);
writers choose the stored orientation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from cohort.bone import Network, PatientBone, trabecular_network
from cohort.config import BoneConfig, CtPhysicsConfig, ScannerConfig
from cohort.anatomy import Vertebra, disc_height


@dataclass(frozen=True)
class StudyGeometry:
    """Native grid of one study (RAS, mm)."""

    shape: tuple[int, int, int]       # (x, y, z) voxels
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # centre of voxel (0, 0, 0), RAS mm

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel -> RAS affine."""
        a = np.diag([*self.spacing, 1.0])
        a[:3, 3] = self.origin
        return a

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(o + s * np.arange(n) for o, s, n in zip(self.origin, self.spacing, self.shape))


@dataclass(frozen=True)
class RenderedStudy:
    hu: np.ndarray                  # int16 (x, y, z) HU, RAS
    labels: np.ndarray              # uint8 (x, y, z) ordinal level (0 = background)
    geometry: StudyGeometry
    core_hu: dict[int, float]       # level -> mean HU of the body core (on the final image)


@dataclass(frozen=True)
class StudyProtocol:
    """What varies per study: levels, scanner grid, contrast, FOV placement."""

    levels: tuple[int, ...]         # contiguous ordinal levels covered
    pixel_mm: float
    slice_mm: float
    contrast: bool
    fov_shift: tuple[float, float]  # mm (x, y) shift of the FOV centre
    back_depth_mm: float            # skin distance behind the L1 body centre
    fat_mm: float                   # subcutaneous fat thickness at the back
    aortic_calc: float              # 0-1 calcified-plaque burden (drawn with the DXA artefacts)


def study_geometry(bone: PatientBone, p: StudyProtocol, fov_mm: tuple[float, float]) -> StudyGeometry:
    """Native grid covering ``p.levels`` from mid-disc above to mid-disc below."""
    top, bot = bone.vertebra(p.levels[0]), bone.vertebra(p.levels[-1])
    above = disc_height(p.levels[0] - 1) if p.levels[0] > 1 else 4.0
    z_hi = top.z + top.h / 2 + 0.45 * above
    z_lo = bot.z - bot.h / 2 - 0.45 * disc_height(p.levels[-1])
    nx, ny = int(round(fov_mm[0] / p.pixel_mm)), int(round(fov_mm[1] / p.pixel_mm))
    nz = int(np.floor((z_hi - z_lo) / p.slice_mm))
    x0 = -(nx - 1) / 2 * p.pixel_mm + p.fov_shift[0]
    y0 = -(fov_mm[1] - 30.0) + p.fov_shift[1]
    z0 = z_lo + 0.5 * ((z_hi - z_lo) - (nz - 1) * p.slice_mm)
    return StudyGeometry((nx, ny, nz), (p.pixel_mm, p.pixel_mm, p.slice_mm), (x0, y0, z0))


def _sub_box(axes, lo, hi):
    """Index slices of the native grid inside the RAS box [lo, hi] (per axis)."""
    out = []
    for ax, a, b in zip(axes, lo, hi):
        i0, i1 = np.searchsorted(ax, a), np.searchsorted(ax, b, side="right")
        out.append(slice(int(i0), int(i1)))
    return tuple(out)


def fine_body_grid(v: Vertebra, voxel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local axes (x, y, z) of the fine box around a vertebral body (1.5 mm margin)."""
    m = 1.5
    return tuple(np.arange(-e - m, e + m + 1e-6, voxel_mm, dtype=np.float32) for e in (v.a, v.b, v.h / 2))


def _open_grid(gx: np.ndarray, gy: np.ndarray, gz: np.ndarray):
    """Broadcastable (x, 1, 1), (1, y, 1), (1, 1, z) coordinate arrays."""
    return gx[:, None, None], gy[None, :, None], gz[None, None, :]


def body_network(rng: np.random.Generator, v: Vertebra, vbmd: float, voxel_mm: float, cfg: BoneConfig) -> Network:
    """The trabecular network filling body ``v`` (matched inside the cortical shell)."""
    d = v.body_distance(*_open_grid(*fine_body_grid(v, voxel_mm)))
    net = trabecular_network(rng, d.shape, voxel_mm, vbmd, cfg, d > v.cortex_mm)
    return replace(net, body_dist=d)


def _body_delta(v: Vertebra, net: Network, bone: PatientBone, phys: CtPhysicsConfig, bone_cfg: BoneConfig,
                voxel_mm: float, contrast_hu: float) -> np.ndarray:
    """Fine-grid HU minus soft tissue inside the body: cortex + trabecular bone + marrow. (x, y, z)"""
    d = net.body_dist
    body = np.clip(d / voxel_mm + 0.5, 0, 1)
    inner = np.clip((d - v.cortex_mm) / voxel_mm + 0.5, 0, 1)
    cortex = body - inner
    tissue_hu = phys.bone_matrix_hu + phys.hu_per_mg * bone_cfg.tissue_mineral_mg
    cortex_hu = phys.bone_matrix_hu + phys.hu_per_mg * bone_cfg.cortical_mineral_mg
    marrow_hu = bone.marrow_fat * phys.fat_hu + (1 - bone.marrow_fat) * phys.red_marrow_hu + contrast_hu
    occ = net.occupancy
    trab = occ * np.float32(tissue_hu - marrow_hu) + np.float32(marrow_hu - phys.soft_tissue_hu)
    return (cortex * np.float32(cortex_hu - phys.soft_tissue_hu) + inner * trab).astype(np.float32)


def render_study(rng: np.random.Generator, bone: PatientBone, p: StudyProtocol, scanner: ScannerConfig,
                 phys: CtPhysicsConfig, bone_cfg: BoneConfig, networks: dict[int, Network],
                 fov_mm: tuple[float, float], voxel_mm: float) -> RenderedStudy:
    """Render one CT study (see module docstring). ``networks`` maps level -> body network."""
    geo = study_geometry(bone, p, fov_mm)
    xs, ys, zs = geo.axes()
    nx, ny, nz = geo.shape
    c_soft = float(rng.uniform(*phys.contrast_soft_hu)) if p.contrast else 0.0
    c_trab = float(rng.uniform(*phys.contrast_trabecular_hu)) if p.contrast else 0.0
    c_aorta = float(rng.uniform(*phys.contrast_aorta_hu)) if p.contrast else 0.0

    # 1. background slice (x, y): air behind the skin, subcutaneous fat, soft tissue, aorta
    X2, Y2 = np.meshgrid(xs, ys, indexing="ij")                     # (x, y)
    skin = -p.back_depth_mm + X2**2 / 300.0
    sl = np.full((nx, ny), phys.soft_tissue_hu + c_soft, np.float32)
    sl[Y2 < skin + p.fat_mm] = phys.fat_hu
    sl[Y2 < skin] = phys.air_hu
    l1 = bone.vertebra(13) if len(bone.spine) >= 13 else bone.spine[-1]
    ao_x, ao_y, ao_r = -0.6 * l1.a - 4.0, l1.b + 12.0, 10.0
    aorta = (X2 - ao_x) ** 2 + (Y2 - ao_y) ** 2 <= ao_r**2
    sl[aorta] = phys.soft_tissue_hu + c_aorta
    vol = np.repeat(sl[:, :, None], nz, axis=2)                     # (x, y, z)
    if p.aortic_calc > 0:                                           # plaques on the posterior aortic wall
        ang = np.arctan2(Y2 - ao_y, X2 - ao_x)
        wall = aorta & ((X2 - ao_x) ** 2 + (Y2 - ao_y) ** 2 >= (ao_r - 1.5) ** 2) & (np.sin(ang) < -0.3)
        zmask = rng.random(nz) < min(0.9, p.aortic_calc)
        vol[wall[:, :, None] & zmask[None, None, :]] = 600.0
    labels = np.zeros(geo.shape, np.uint8)

    # 2. discs, canal, posterior elements at native voxel centres
    covered = [bone.vertebra(lv) for lv in p.levels]
    for v in bone.spine:
        if v.z + v.h / 2 + 15 < zs[0] or v.z - v.h / 2 - 15 > zs[-1]:
            continue
        ylo, yhi = v.extent_mm()
        tl = v.transverse_len + 1
        zr = v.h / 2 + 12 + v.spinous[0] * v.spinous[3]
        box = _sub_box((xs, ys, zs), (-tl, v.y + ylo, v.z - zr), (tl, v.y + yhi, v.z + v.h / 2 + 12))
        X, Y, Z = _open_grid(*(np.asarray(q, np.float32) for q in (xs[box[0]], ys[box[1]] - v.y, zs[box[2]] - v.z)))
        d = v.body_distance(X, Y, Z)
        below = bone.spine[v.level] if v.level < len(bone.spine) else None
        if below is not None:                                       # disc between this body and the next
            gap_lo, gap_hi = below.z + below.h / 2 - v.z, -v.h / 2
            da, db = (v.a + below.a) / 2 * 0.97, (v.b + below.b) / 2 * 0.97
            disc = ((X / da) ** 2 + ((Y + v.y - (v.y + below.y) / 2) / db) ** 2 <= 1) & (Z > gap_lo) & (Z <= gap_hi)
            vol[box][disc] = phys.disc_hu + 0.3 * c_soft
        sub = vol[box]
        sub[v.canal_mask(X, Y, Z) & (d < 0)] = phys.csf_hu + 0.3 * c_soft
        post = v.posterior_mask(X, Y, Z) & (d < -0.5)
        post_hu = phys.red_marrow_hu + phys.hu_per_mg * bone_cfg.posterior_mineral_mg * bone.cortical_factor
        sub[post] = post_hu
        vol[box] = sub
        if v.level in p.levels:
            lab = labels[box]
            lab[post | (d > 0)] = v.level
            labels[box] = lab

    # 3. vertebral bodies from the fine grid, averaged over the native voxel footprint
    for v in covered:
        delta = _body_delta(v, networks[v.level], bone, phys, bone_cfg, voxel_mm, c_trab)
        foot = (max(1, round(p.pixel_mm / voxel_mm)),) * 2 + (max(1, round(p.slice_mm / voxel_mm)),)
        delta = ndimage.uniform_filter(delta, size=foot, mode="constant")
        gx, gy, gz = fine_body_grid(v, voxel_mm)
        box = _sub_box((xs, ys, zs), (gx[0], v.y + gy[0], v.z + gz[0]), (gx[-1], v.y + gy[-1], v.z + gz[-1]))
        px = (xs[box[0]] - gx[0]) / voxel_mm
        py = (ys[box[1]] - v.y - gy[0]) / voxel_mm
        pz = (zs[box[2]] - v.z - gz[0]) / voxel_mm
        PX, PY, PZ = np.meshgrid(px, py, pz, indexing="ij")
        vol[box] += ndimage.map_coordinates(delta, [PX, PY, PZ], order=1, mode="constant")

    # 4. PSF, calibration, noise
    sig = scanner.psf_fwhm_mm / 2.3548 / p.pixel_mm
    vol = ndimage.gaussian_filter(vol, sigma=(sig, sig, 0.0), truncate=3.0)
    vol = scanner.hu_slope * vol + scanner.hu_offset
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.7, 0.7, 0.0), truncate=2.5)
    vol += noise * (scanner.noise_hu / (noise.std() + 1e-6))
    hu = np.clip(np.rint(vol), -1024, 3071).astype(np.int16)

    core = {}
    for v in covered:
        k = phys.core_fraction
        box = _sub_box((xs, ys, zs), (-k * v.a, v.y - k * v.b, v.z - k * v.h / 2),
                       (k * v.a, v.y + k * v.b, v.z + k * v.h / 2))
        X, Y = np.meshgrid(xs[box[0]], ys[box[1]] - v.y, indexing="ij")
        ell = (X / (k * v.a)) ** 2 + (Y / (k * v.b)) ** 2 <= 1.0
        vals = hu[box][ell]
        core[v.level] = float(vals.mean()) if vals.size else float("nan")
    return RenderedStudy(hu, labels, geo, core)
