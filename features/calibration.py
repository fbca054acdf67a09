"""Phantomless internal HU calibration: a per-study line from reference tissues in the CT itself.

A scanner reports ``HU_measured = s * HU_true + o`` with a site-specific slope
``s`` and offset ``o`` (drift, kVp, reconstruction kernel). Internal
calibration (Lee et al., Bone 103:325, 2017; Kaesmacher et al., J Comput
Assist Tomogr 41:217, 2017) replaces the phantom by tissues whose true HU is
known, found automatically in each study:

* **air** outside the body outline (-1000 HU);
* **subcutaneous adipose tissue**, the low-HU band just inside the outline (-100 HU);
* **aortic blood** anterior-left of the vertebral bodies (+40 HU), on
  non-contrast studies only: IV contrast enhances blood by 150-250 HU, so on a
  contrast-enhanced (or undeclared) study blood is not a reference.

Each reference is summarised by its median and MAD (robust to calcified plaque,
partial-volume voxels and stray structures), and a weighted least-squares line
``HU_ref = slope * HU_measured + intercept`` is fitted through the (median,
reference) pairs, each weighted by ``1 / (sd_ref^2 + var(median))``: ``sd_ref``
is how much the tissue's true HU varies between people (``*_sd_hu``),
``var(median) = (1.2533 * 1.4826 * MAD)^2 / n`` its sampling variance. The
correction is the inverse of the scanner's transform: ``slope ~ 1/s``,
``intercept ~ -o/s``.

Where the scanner clips values at its storage floor (-1024 HU in most),
air measured below the floor piles up on one value. While fewer than half the
air voxels are censored the median is unbiased; beyond that the air level is
estimated from two quantiles above the censoring point under a normal noise
model; beyond ``max_censored_share`` air is dropped (``ref_air_hu`` NaN) and the
line comes from fat and blood, which needs a non-contrast study (a scanner whose
slope puts air well below the floor, e.g. ``s * -1000 + o < -1060``).

Segmentation, on the RAS-reoriented native grid (x right, y anterior, z superior),
uses an in-plane Gaussian-smoothed copy (``smooth_mm``); statistics use the raw HU:

1. body outline: smoothed HU > ``body_threshold_hu``, largest 3-D component,
   holes filled per axial slice (lungs and bowel gas belong to the body);
2. air: outside the outline, smoothed HU < ``body_threshold_hu``, at least
   ``air_margin_mm`` in-plane from any non-air voxel (skin partial volume, table,
   padding edges);
3. fat: inside the outline within ``fat_max_depth_mm`` of the skin, smoothed HU
   in ``fat_window_hu``, eroded by ``fat_erosion_mm`` in-plane, away from the
   vertebra labels (marrow fat is not subcutaneous fat);
4. blood: in each labelled slice, a box anterior-left of the vertebra
   (``blood_box_x_mm`` from the label's x centre, ``blood_box_y_mm`` from its
   anterior wall), smoothed HU mapped by the air + fat line in ``blood_window_hu``, eroded by
   ``blood_margin_mm``; the largest 3-D component (the aortic lumen is a tube).
   On non-contrast CT the lumen has little contrast against the soft tissue
   around it, so this is the largest homogeneous blood-density region where the
   aorta lies.

Fit quality: the slope must lie in ``slope_range``, the intercept in
``intercept_range_hu`` and, with three references, every residual within
``max_residual_hu`` (two references define the line exactly), else
:class:`CalibrationFitError`. A missing air or fat reference (fewer than
``min_voxels``), or saturated air with no blood to replace it, is
:class:`CalibrationReferenceError` naming it. Both quarantine the study.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.stats import norm

from features.errors import IngestError
from features.inplane import fill_holes_inplane, inplane_edt
from features.roi import dilate_ball, erode_ball
from osteo_config.ingest import CalibrationConfig

# Version of this algorithm: goes into every vertebra row (``cal_version``) so a model can refuse
# pools made with another calibration. Bump it whenever the references, rules or fit change.
CALIBRATION_VERSION = "internal-1"
UNCALIBRATED = "none"
REFERENCES = ("air", "fat", "blood")
REQUIRED = ("air", "fat")
_MEDIAN_SE = 1.2533          # SE(median) = 1.2533 sigma / sqrt(n) for normal data
_MAD_SIGMA = 1.4826          # sigma = 1.4826 MAD for normal data


class CalibrationError(IngestError):
    """Phantomless HU calibration failed for a study (base class)."""

    stage = "calibration"


class CalibrationReferenceError(CalibrationError):
    """A reference tissue (air, fat) was not found in the CT: no calibration line can be fitted.

    Attributes:
        reference: ``air`` | ``fat`` | ``blood``.
    """

    def __init__(self, item: str, reference: str, problem: str, fix: str) -> None:
        self.reference = reference
        super().__init__(item, f"calibration reference {reference!r} not usable: {problem}", fix)


class CalibrationFitError(CalibrationError):
    """The calibration line is implausible (slope/intercept out of range, reference residual too large)."""


@dataclass(frozen=True)
class ReferenceMeasurement:
    """One reference tissue as measured in a study.

    Attributes:
        name: ``air`` | ``fat`` | ``blood``.
        measured_hu: robust level (median, or censored-normal estimate) of the raw HU.
        reference_hu: the tissue's HU at a correct calibration.
        mad_hu: median absolute deviation of the raw HU.
        n_voxels: voxels in the region.
        censored_share: share of voxels at the scanner's storage floor (air only).
        sd_hu: between-person SD of the tissue's true HU (the fit's systematic weight term).
    """

    name: str
    measured_hu: float
    reference_hu: float
    mad_hu: float
    n_voxels: int
    censored_share: float
    sd_hu: float

    @property
    def variance(self) -> float:
        """Variance of ``measured_hu`` as an estimate of the tissue's level (HU^2)."""
        se = _MEDIAN_SE * _MAD_SIGMA * self.mad_hu / np.sqrt(max(self.n_voxels, 1))
        return float(self.sd_hu ** 2 + se ** 2)


@dataclass(frozen=True)
class HUCalibration:
    """A fitted per-study correction ``HU_calibrated = slope * HU_measured + intercept``."""

    slope: float
    intercept: float
    references: tuple[ReferenceMeasurement, ...]
    version: str = CALIBRATION_VERSION

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """Calibrated float32 copy of ``hu``."""
        return (np.float32(self.slope) * np.asarray(hu, np.float32) + np.float32(self.intercept)).astype(np.float32)

    def residuals(self) -> dict[str, float]:
        """Per reference: calibrated median minus reference HU."""
        return {r.name: self.slope * r.measured_hu + self.intercept - r.reference_hu for r in self.references}

    def record(self) -> dict[str, object]:
        """The vertebra-table columns (``cal_*``, ``ref_*_hu``; NaN for a reference not used)."""
        got = {r.name: r.measured_hu for r in self.references}
        return dict(cal_version=self.version, cal_slope=float(self.slope), cal_intercept=float(self.intercept),
                    **{f"ref_{n}_hu": float(got.get(n, np.nan)) for n in REFERENCES})


def uncalibrated_record() -> dict[str, object]:
    """The columns of a study ingested with calibration disabled (identity, no references)."""
    return dict(cal_version=UNCALIBRATED, cal_slope=1.0, cal_intercept=0.0,
                **{f"ref_{n}_hu": float("nan") for n in REFERENCES})


RECORD_COLUMNS = tuple(uncalibrated_record())


# --- robust statistics -----------------------------------------------------
def robust_level(values: np.ndarray) -> tuple[float, float, float]:
    """(level, MAD, censored share) of a tissue's raw HU (rule in the module docstring).

    A pile-up on the minimum value (> 1 % of the voxels) is read as censoring at the storage floor.
    """
    v = np.sort(np.asarray(values, np.float64).ravel())
    floor = v[0]
    censored = float(np.mean(v <= floor + 0.5))
    censored = censored if censored > 0.01 else 0.0
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    if censored < 0.5:
        return med, mad, censored
    q1, q2 = censored + 0.3 * (1 - censored), censored + 0.7 * (1 - censored)
    v1, v2 = np.quantile(v, [q1, q2])
    z1, z2 = norm.ppf(q1), norm.ppf(q2)
    sigma = float((v2 - v1) / (z2 - z1))
    return float(v1 - z1 * sigma), sigma / _MAD_SIGMA, censored


def fit_line(measured: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted least squares ``reference ~ slope * measured + intercept`` (closed form, >= 2 points)."""
    m, r, w = (np.asarray(a, np.float64) for a in (measured, reference, weights))
    w = w / w.sum()
    mm, rm = float(w @ m), float(w @ r)
    sxx = float(w @ (m - mm) ** 2)
    if sxx <= 0:
        raise ValueError("calibration references have a single measured level: a line is undetermined")
    slope = float(w @ ((m - mm) * (r - rm))) / sxx
    return slope, rm - slope * mm


# --- segmentation ------------------------------------------------------------
def _inplane_edt(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Per-slice (x, y) distance (mm) of each True voxel to the nearest False voxel (float32).

    :func:`features.inplane.inplane_edt`: equal to scipy's ``distance_transform_edt`` with a z
    sampling no distance reaches (``tests/features/test_inplane.py``), ~20x cheaper.
    """
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    return inplane_edt(mask, spacing)


_INPLANE_Z_MM = 1.0e6        # chord morphology: a z spacing no radius reaches, so the ball is an in-plane disc
_OPEN = 1.0e-6               # mm: a closed ball of radius r - _OPEN is the open ball of radius r on the lattice


def inplane_core(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` whose in-plane distance to every False voxel is >= ``radius_mm``.

    Equal to ``_inplane_edt(mask, spacing) >= radius_mm`` (outside the array is no False
    voxel, as for the EDT), computed as an erosion by the open in-plane disc with the chord
    morphology of :func:`features.roi.erode_ball` on a copy padded with True: about ten times
    cheaper than a full-volume distance transform.
    """
    m = np.asarray(mask, dtype=bool)
    if radius_mm <= 0 or not m.any():
        return m.copy()
    sp = np.array([spacing[0], spacing[1], _INPLANE_Z_MM], dtype=np.float64)
    pad = [int(np.ceil(radius_mm / sp[0])) + 1, int(np.ceil(radius_mm / sp[1])) + 1, 0]
    padded = np.pad(m, [(p, p) for p in pad], constant_values=True)
    core = erode_ball(padded, radius_mm - _OPEN, sp)
    return core[pad[0]:pad[0] + m.shape[0], pad[1]:pad[1] + m.shape[1], :]


def inplane_near(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Voxels whose in-plane distance to a True voxel of ``mask`` is < ``radius_mm``
    (``_inplane_edt(~mask, spacing) < radius_mm``), as a dilation by the open in-plane disc."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros(m.shape, bool)
    return dilate_ball(m, radius_mm - _OPEN, np.array([spacing[0], spacing[1], _INPLANE_Z_MM], dtype=np.float64))


def body_outline(smooth: np.ndarray, valid: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Patient body: largest component above ``threshold_hu``, holes filled per axial slice. (x, y, z) bool"""
    dense = (smooth > threshold_hu) & valid
    lab, n = ndimage.label(dense)
    if n == 0:
        return dense
    return fill_holes_inplane(lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1))


@dataclass(frozen=True)
class StudyScene:
    """What the reference finders share: the smoothed CT, the body outline and the spine. (x, y, z) arrays"""

    hu: np.ndarray
    smooth: np.ndarray
    spacing: np.ndarray
    body: np.ndarray
    valid: np.ndarray
    spine: np.ndarray
    near_spine: np.ndarray

    @classmethod
    def of(cls, hu: np.ndarray, spacing: np.ndarray, labels: np.ndarray, valid: np.ndarray,
           cfg: CalibrationConfig) -> "StudyScene":
        spacing = np.asarray(spacing, np.float64)
        sig = cfg.smooth_mm / spacing[:2]
        smooth = ndimage.gaussian_filter(np.asarray(hu, np.float32), sigma=(sig[0], sig[1], 0.0), truncate=2.5)
        spine = np.asarray(labels) > 0
        near = inplane_near(spine, 3.0, spacing)
        return cls(hu=np.asarray(hu), smooth=smooth, spacing=spacing,
                   body=body_outline(smooth, valid, cfg.body_threshold_hu), valid=valid, spine=spine,
                   near_spine=near)


def air_region(scene: StudyScene, cfg: CalibrationConfig) -> np.ndarray:
    """Rule 2: air outside the body outline, away from any denser voxel. (x, y, z) bool"""
    cand = ~scene.body & scene.valid & (scene.smooth < cfg.body_threshold_hu)
    return inplane_core(cand, cfg.air_margin_mm, scene.spacing)


def fat_region(scene: StudyScene, cfg: CalibrationConfig) -> np.ndarray:
    """Rule 3: the adipose band under the skin (measured-HU window), eroded, away from the spine."""
    lo, hi = cfg.fat_window_hu
    depth = _inplane_edt(scene.body, scene.spacing)
    cand = (scene.body & scene.valid & (scene.smooth >= lo) & (scene.smooth <= hi)
            & (depth <= cfg.fat_max_depth_mm) & ~scene.near_spine)
    return inplane_core(cand, cfg.fat_erosion_mm, scene.spacing)


def blood_region(scene: StudyScene, cfg: CalibrationConfig, slope: float, intercept: float) -> np.ndarray:
    """Rule 4: the largest homogeneous blood-density region anterior-left of the vertebrae.

    ``blood_window_hu`` is applied to the smoothed HU mapped by the provisional line
    (``slope``, ``intercept``) of the other references, so the window sits on blood
    whatever the scanner's offset (a fixed window in measured HU would cut the
    noise distribution on one side and bias the median).
    """
    spine, sp = scene.spine, scene.spacing
    shape = scene.hu.shape
    xs = np.arange(shape[0]) * sp[0]
    ys = np.arange(shape[1]) * sp[1]
    boxes = []                                   # (z, x range, y range) per labelled slice
    for k in np.nonzero(spine.any(axis=(0, 1)))[0]:
        ix, iy = np.nonzero(spine[:, :, k])
        x_c, y_front = float(np.median(xs[ix])), float(np.percentile(ys[iy], 98))
        bx = np.nonzero((xs >= x_c + cfg.blood_box_x_mm[0]) & (xs <= x_c + cfg.blood_box_x_mm[1]))[0]
        by = np.nonzero((ys >= y_front + cfg.blood_box_y_mm[0]) & (ys <= y_front + cfg.blood_box_y_mm[1]))[0]
        if bx.size and by.size:
            boxes.append((int(k), bx, by))
    region = np.zeros(shape, bool)
    if not boxes:
        return region
    # work on the boxes' bounding box, widened in-plane by more than the erosion radius: outside it the
    # candidates are all False, so the erosion (and the labelling) inside it is the whole volume's
    pad = [int(np.ceil(cfg.blood_margin_mm / sp[a])) + 1 for a in range(2)]
    x0 = max(min(int(b[1][0]) for b in boxes) - pad[0], 0)
    x1 = min(max(int(b[1][-1]) for b in boxes) + 1 + pad[0], shape[0])
    y0 = max(min(int(b[2][0]) for b in boxes) - pad[1], 0)
    y1 = min(max(int(b[2][-1]) for b in boxes) + 1 + pad[1], shape[1])
    z0, z1 = boxes[0][0], boxes[-1][0] + 1
    crop = (slice(x0, x1), slice(y0, y1), slice(z0, z1))
    box = np.zeros((x1 - x0, y1 - y0, z1 - z0), bool)
    for k, bx, by in boxes:
        box[bx[0] - x0:bx[-1] + 1 - x0, by[0] - y0:by[-1] + 1 - y0, k - z0] = True
    lo, hi = cfg.blood_window_hu
    cal = np.float32(slope) * scene.smooth[crop] + np.float32(intercept)
    cand = box & scene.body[crop] & scene.valid[crop] & (cal >= lo) & (cal <= hi) & ~scene.near_spine[crop]
    core = inplane_core(cand, cfg.blood_margin_mm, sp)
    lab, n = ndimage.label(core)
    region[crop] = lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1) if n else core
    return region


# --- the study-level entry point ---------------------------------------------
def _measure(scene: StudyScene, region: np.ndarray, name: str, cfg: CalibrationConfig) -> ReferenceMeasurement:
    level, mad, censored = robust_level(scene.hu[region])
    return ReferenceMeasurement(name, level, float(getattr(cfg, f"{name}_hu")), mad, int(region.sum()), censored,
                                float(getattr(cfg, f"{name}_sd_hu")))


def _line(refs: list[ReferenceMeasurement]) -> tuple[float, float]:
    if len(refs) == 1:                   # one reference: offset only (a provisional window placement)
        return 1.0, refs[0].reference_hu - refs[0].measured_hu
    return fit_line(np.array([r.measured_hu for r in refs]), np.array([r.reference_hu for r in refs]),
                    np.array([1.0 / r.variance for r in refs]))


def calibrate_study(hu: np.ndarray, spacing: np.ndarray, labels: np.ndarray, cfg: CalibrationConfig, item: str,
                    contrast: bool | None, outside_fov: np.ndarray | None = None) -> HUCalibration:
    """Fit the study's HU correction from its reference tissues.

    Args:
        hu: (x, y, z) raw HU, RAS-reoriented.
        spacing: (3,) voxel size in mm.
        labels: (x, y, z) vertebra labels on the CT grid.
        cfg: the ``ingest.calibration`` section.
        item: pseudonymous study id (errors name it).
        contrast: the study's IV-contrast flag; ``True`` or ``None`` (unknown) -> blood is not used.
        outside_fov: True on voxels outside the reconstructed field of view (DICOM padding).

    Returns:
        The fitted :class:`HUCalibration`.

    Raises:
        CalibrationReferenceError: air or fat not found (too few voxels), or air saturated with no blood.
        CalibrationFitError: slope/intercept implausible or a reference residual too large.
    """
    valid = np.ones(hu.shape, bool) if outside_fov is None else ~np.asarray(outside_fov, bool)
    scene = StudyScene.of(hu, spacing, labels, valid, cfg)
    where = {"air": "outside the body outline (field of view cut at the skin?)",
             "fat": "in the subcutaneous band inside the body outline"}
    refs: list[ReferenceMeasurement] = []
    saturated = ""
    for name, region in (("air", air_region(scene, cfg)), ("fat", fat_region(scene, cfg))):
        n = int(region.sum())
        if n < cfg.min_voxels:
            raise CalibrationReferenceError(
                item, name, f"{n} voxels found {where[name]} (minimum {cfg.min_voxels})",
                "reconstruct the study with a field of view that includes the skin and some air around the "
                "body, or ingest it with ingest.calibration.enabled: false (its HU then stay uncalibrated)")
        ref = _measure(scene, region, name, cfg)
        if ref.censored_share >= cfg.max_censored_share:
            saturated = (f"{100 * ref.censored_share:.0f}% of its voxels sit at the scanner's storage floor "
                         f"({float(scene.hu[region].min()):.0f} HU; limit {100 * cfg.max_censored_share:.0f}%)")
            continue
        refs.append(ref)
    if contrast is False:
        region = blood_region(scene, cfg, *_line(refs))
        if int(region.sum()) >= cfg.min_voxels:
            refs.append(_measure(scene, region, "blood", cfg))
    if len(refs) < 2:                    # only air can be missing here: it was saturated
        raise CalibrationReferenceError(
            item, "air", f"{saturated}, and without blood (contrast or not found) fat alone cannot fix a line",
            "export the series without clipping at the storage floor, or disable ingest.calibration")

    slope, intercept = _line(refs)
    cal = HUCalibration(slope=slope, intercept=intercept, references=tuple(refs))
    found = ", ".join(f"{r.name} {r.measured_hu:.1f}" for r in refs)
    fix = ("check the study (metal, a cropped field of view, a non-HU export); if its HU are known to be right, "
           "ingest it with ingest.calibration.enabled: false")
    lo, hi = cfg.slope_range
    if not lo <= slope <= hi:
        raise CalibrationFitError(item, f"calibration slope {slope:.3f} outside {list(cfg.slope_range)} "
                                        f"(measured HU: {found})", fix)
    ilo, ihi = cfg.intercept_range_hu
    if not ilo <= intercept <= ihi:
        raise CalibrationFitError(item, f"calibration intercept {intercept:.1f} HU outside "
                                        f"{list(cfg.intercept_range_hu)} (measured HU: {found})", fix)
    if len(refs) >= 3:
        res = cal.residuals()
        worst = max(res, key=lambda k: abs(res[k]))
        if abs(res[worst]) > cfg.max_residual_hu:
            raise CalibrationFitError(
                item, f"reference {worst!r} is {res[worst]:+.1f} HU off the calibration line (limit "
                      f"{cfg.max_residual_hu:.0f} HU; measured HU: {found}): undeclared IV contrast?",
                "set the study's contrast flag to 1 in ct_studies.csv if it is contrast-enhanced; " + fix)
    return cal
