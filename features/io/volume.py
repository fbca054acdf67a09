"""A volume with its geometry, NIfTI reading and reorientation to RAS.

Geometry convention: ``affine`` maps voxel indices (i, j, k) to RAS+ world
millimetres (NIfTI convention; DICOM's LPS is converted on read). The array is
indexed ``[i, j, k]``. After :func:`to_ras` the array axes point (as closely as
the acquisition allows) to +R, +A, +S, so ROIs are (x, y, z) = (R, A, S).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from features.errors import UnreadableFileError

# Voxel sizes are rounded to this many decimals (0.1 micrometre): NIfTI stores
# pixdim as float32 while DICOM stores decimal strings, so the same 0.8 mm grid
# reads as 0.800000011920929 from one and 0.8 from the other. Rounding makes
# the two identical without changing any real spacing.
SPACING_DECIMALS = 4


@dataclass(frozen=True)
class Volume:
    """An image or label array with its voxel-to-RAS affine.

    Attributes:
        array: (i, j, k) voxel values.
        affine: (4, 4) voxel index -> RAS+ world mm.
    """

    array: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel sizes (mm) along i, j, k."""
        return np.round(np.linalg.norm(self.affine[:3, :3], axis=0), SPACING_DECIMALS)

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit direction cosines, column c = world direction of index axis c."""
        return self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """World position (mm, RAS) of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()


def read_nifti(path: Path, item: str, what: str, dtype: type = np.float32) -> Volume:
    """Read a 3-D NIfTI file (scaling applied) into a :class:`Volume`.

    Args:
        path: ``.nii`` / ``.nii.gz`` file.
        item: pseudonymous study id used in error messages (never the path: it holds PHI).
        what: ``"CT"`` or ``"mask"``, for the message.
        dtype: array dtype (float32 for CT, int16/uint8 for labels).

    Raises:
        UnreadableFileError: missing, truncated, not NIfTI, or not 3-D.
    """
    if not Path(path).is_file():
        raise UnreadableFileError(item, f"{what} file is missing", f"re-export the {what} of this study")
    try:
        img = nib.load(str(path))
        proxy = img.dataobj
        raw_dtype = np.dtype(img.get_data_dtype())
        if (raw_dtype.kind in "iu" and float(getattr(proxy, "slope", 1.0)) == 1.0
                and float(getattr(proxy, "inter", 0.0)) == 0.0 and np.can_cast(raw_dtype, dtype, "safe")):
            # integers stored unscaled (every CT and mask the simulator or a PACS converter writes):
            # the values are exact in ``dtype`` already, and finite; skip the float64 round trip
            data = np.asanyarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
        else:
            data = np.asarray(proxy, dtype=np.float64)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types; the message may hold the path
        raise UnreadableFileError(
            item, f"{what} file is not a readable NIfTI ({type(exc).__name__})",
            f"re-export the {what} of this study (the file is truncated or corrupt)") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 1:
        raise UnreadableFileError(item, f"{what} is {data.ndim}-D, expected a 3-D volume",
                                  f"export the {what} as a single 3-D volume")
    if (data.dtype.kind == "f" and not np.all(np.isfinite(data))) or not np.all(np.isfinite(affine)):
        raise UnreadableFileError(item, f"{what} holds NaN/inf voxels or affine",
                                  f"re-export the {what} of this study")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise UnreadableFileError(item, f"{what} affine is singular",
                                  f"re-export the {what} with valid qform/sform")
    if dtype in (np.int16, np.int32, np.uint8) and data.dtype.kind == "f":
        data = np.rint(data)
    return Volume(array=data.astype(dtype), affine=affine)


def to_ras(vol: Volume) -> Volume:
    """Reorient by axis permutation and flips so the array axes point to +R, +A, +S.

    Only permutes/flips voxels (no interpolation), so a volume stored in LPS and
    its RAS twin give bit-identical arrays; the affine is updated to describe
    the same world geometry.
    """
    ornt = nib.orientations.io_orientation(vol.affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    xform = nib.orientations.ornt_transform(ornt, target)
    if np.array_equal(xform, [[0, 1], [1, 1], [2, 1]]):
        return vol
    array = nib.orientations.apply_orientation(vol.array, xform)
    affine = vol.affine @ nib.orientations.inv_ornt_aff(xform, vol.array.shape[:3])
    return Volume(array=np.ascontiguousarray(array), affine=affine)
