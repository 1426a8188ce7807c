"""A NIfTI slice as the agent sees it, said truthfully, and its mask written back on the input's own voxel grid.

The reader shows axial slice k of the volume reoriented to RAS+ (nibabel's
closest canonical: axis permutations and flips, no resampling) in the
radiological display: the patient's right on the image's left, anterior at
the top. That is a transpose and two flips of the stored voxels, and for a
file stored in another axis order a different plane of its voxel array, so
the run's record says exactly which, and `mask.nii.gz` puts the mask on the
input's voxels with its affine: any viewer overlays it on the input as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["NiftiSlice", "on_file_grid"]

_TOWARD = {"R": "right", "L": "left", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}


@dataclass(frozen=True)
class NiftiSlice:
    """Where a displayed slice lies in its NIfTI file."""

    path: Path
    index: int  # the slice along the RAS+ superior axis (`--slice`)
    count: int  # slices along that axis
    axis_codes: tuple[str, ...]  # the file's voxel axes, e.g. ("L", "P", "S"): toward where each index grows

    @property
    def file_axis(self) -> int:
        """The file's voxel axis the slices are taken along (the one pointing superior or inferior)."""
        return next(axis for axis, code in enumerate(self.axis_codes) if code in "SI")

    def note(self) -> str:
        """The display, in words, for the run's record."""
        axes = ", ".join(f"{'ijk'[axis]} toward {_TOWARD[code]}" for axis, code in enumerate(self.axis_codes))
        return (f"NIfTI slice {self.index} of {self.count} along the superior axis (the file's voxel axis "
                f"{'ijk'[self.file_axis]}; its axes: {axes}), reoriented to RAS+ and shown radiologically: the "
                "patient's right on the image's left, anterior at the top (the RAS+ slice transposed, then flipped "
                "top-to-bottom and left-to-right); mask.png and the overlays are in this view, mask.nii.gz is on "
                "the input's voxel grid")

    def write_mask(self, display_mask: np.ndarray, out_path: str | Path) -> None:
        """The display-view mask as a uint8 NIfTI (1 inside) with the input's shape, affine and voxel order."""
        import nibabel as nib

        source = nib.load(str(self.path))
        shape = tuple(source.shape[:3]) + (1,) * (3 - len(source.shape[:3]))  # a 2D image is one slice
        file_ornt = nib.orientations.io_orientation(source.affine)
        canonical_shape = tuple(int(shape[int(axis)]) for axis in np.argsort(file_ornt[:, 0]))
        volume = np.zeros(canonical_shape, np.uint8)
        volume[:, :, self.index] = np.asarray(display_mask, np.uint8).T[::-1, ::-1]  # undo the radiological view
        nib.save(on_file_grid(volume, source, self.path.name), str(out_path))


def on_file_grid(canonical: np.ndarray, source, name: str = "the input"):
    """A uint8 mask in the RAS+ voxel order of `source` (nibabel's closest canonical, as the readers show it) put
    back on the file's own voxel grid: its shape, voxel order, affine, qform/sform codes and units.

    One home for the way back, used by the slice path (`NiftiSlice`) and the
    volume path (`volume.readers.write_mask_nifti`). `source` is the loaded
    nibabel image; a ValueError says when the mask does not fit its grid.
    """
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    shape = tuple(source.shape[:3]) + (1,) * (3 - len(source.shape[:3]))
    file_ornt = io_orientation(source.affine)
    canonical_affine = source.affine @ inv_ornt_aff(file_ornt, shape)  # as nibabel's as_closest_canonical
    mask = nib.Nifti1Image(np.asarray(canonical, np.uint8), canonical_affine)
    mask = mask.as_reoriented(ornt_transform(axcodes2ornt("RAS"), file_ornt))
    if mask.shape != shape or not np.allclose(mask.affine, source.affine, atol=1e-4):
        raise ValueError(f"{name}: the mask could not be put back on the input's grid")
    data = np.asarray(mask.dataobj, np.uint8).reshape(source.shape[:3])
    out = nib.Nifti1Image(data, source.affine)
    out.set_qform(source.affine, code=int(source.header.get("qform_code", 1)) or 1)
    out.set_sform(source.affine, code=int(source.header.get("sform_code", 1)) or 1)
    out.header.set_xyzt_units(*source.header.get_xyzt_units())
    return out
