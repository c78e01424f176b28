""".nii.gz voxels through ISA-L's gzip (``isal.igzip``), which inflates and deflates several
times faster than the zlib inside SimpleITK — and, unlike SimpleITK's NIfTI writer, applies the
compression level it is given.

Only the voxel bytes go through here; geometry stays SimpleITK's: an image's header is read by
SimpleITK (`imageio.read_header`), and a mask's header is the one SimpleITK's NIfTI writer makes
for the same geometry (it is written for a one-voxel image and given the mask's size, the only
header field that depends on the voxels). A file this module does not handle exactly as ITK
would — not NIfTI-1, floating-point or scaled voxels (ITK converts those to float), a datatype
that is not the header's pixel type — is left to SimpleITK (`read_voxels` returns None).
"""
from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import numpy as np

try:
    from isal import igzip
except ImportError:   # an install without the inference extra: SimpleITK does all the work
    igzip = None

#: NIfTI-1 integer datatype codes (ITK reads these unchanged when the header applies no scaling)
_INTEGER_TYPES = {2: "u1", 4: "i2", 8: "i4", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
#: ISA-L's deflate levels (0: fastest, 3: smallest); 1 is what masks get unless told otherwise
LEVELS = range(0, 4)
DEFAULT_LEVEL = 1


def available() -> bool:
    return igzip is not None


def _nifti1_layout(head: bytes) -> tuple[str, int, int, float, float, tuple[int, ...]] | None:
    """(byte order, datatype code, voxel offset, scl_slope, scl_inter, dim[0..7]) of a NIfTI-1
    header, None for anything else."""
    if len(head) < 348:
        return None
    for order in "<>":
        if struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            code = struct.unpack(order + "h", head[70:72])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            slope, inter = struct.unpack(order + "2f", head[112:120])
            return order, code, offset, slope, inter, dims
    return None


def read_voxels(path: Path, shape_zyx: tuple[int, ...], itk_dtype: np.dtype) -> np.ndarray | None:
    """The (z, y, x) voxels of a gzip-compressed NIfTI-1 file of integer voxels, exactly as
    SimpleITK reads them (`itk_dtype` is the pixel type SimpleITK reports for the file); None when
    the file is not one this reader handles. The array is read-only (it shares the inflated
    buffer)."""
    if igzip is None:
        return None
    with open(path, "rb") as f:
        compressed = f.read()
    if compressed[:2] != b"\x1f\x8b":
        return None
    raw = igzip.decompress(compressed)
    del compressed
    layout = _nifti1_layout(raw[:348])
    if layout is None:
        return None
    order, code, offset, slope, inter, dims = layout
    # ITK applies scl_slope/scl_inter (reading the image as float) unless the slope is 0 (unset)
    # or the pair is the identity
    scaled = not (slope == 0 or (slope == 1 and inter == 0))
    if code not in _INTEGER_TYPES or scaled or not np.isfinite(slope) or not np.isfinite(inter):
        return None
    dtype = np.dtype(order + _INTEGER_TYPES[code])
    if dtype.newbyteorder("=") != np.dtype(itk_dtype).newbyteorder("="):
        return None
    n = int(np.prod(shape_zyx, dtype=np.int64))
    if offset < 348 or len(raw) < offset + n * dtype.itemsize:
        return None   # truncated or odd: SimpleITK's reading (and imageio's checks) decide
    voxels = np.frombuffer(raw, dtype=dtype, count=n, offset=offset).reshape(shape_zyx)
    if not dtype.isnative:
        voxels = voxels.astype(dtype.newbyteorder("="))
    return voxels


def mask_header(size_xyz: tuple[int, int, int], spacing_xyz, origin_xyz, direction) -> bytes:
    """The bytes before the voxels of the uint8 NIfTI-1 file SimpleITK writes for a mask of this
    size and geometry: its header for a one-voxel image with that geometry, given `size_xyz`."""
    import SimpleITK as sitk

    one = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    one.SetSpacing(tuple(float(s) for s in spacing_xyz))
    one.SetOrigin(tuple(float(o) for o in origin_xyz))
    one.SetDirection(tuple(float(d) for d in direction))
    with tempfile.TemporaryDirectory(prefix="fusionseg-header-") as folder:
        path = os.path.join(folder, "one.nii")
        sitk.WriteImage(one, path, False)
        with open(path, "rb") as f:
            written = f.read()
    order, code, offset, _, _, dims = _nifti1_layout(written)
    if code != 2 or dims[0] != 3 or len(written) != offset + 1:
        raise RuntimeError(f"unexpected NIfTI header from SimpleITK (datatype {code}, dim {dims}, "
                           f"{len(written)} bytes for one voxel at offset {offset})")
    head = bytearray(written[:offset])
    head[42:48] = struct.pack(order + "3h", *(int(s) for s in size_xyz))
    return bytes(head)


def write_mask(mask_zyx: np.ndarray, path: Path, spacing_xyz, origin_xyz, direction,
               level: int = DEFAULT_LEVEL) -> None:
    """Writes a uint8 (z, y, x) mask as a gzip-compressed NIfTI-1 file at `path` (the caller's
    temporary name) with ISA-L deflate at `level` (0–3)."""
    if level not in LEVELS:
        raise ValueError(f"the gzip level of a mask is one of ISA-L's levels 0-3, got {level}")
    if max(mask_zyx.shape) > 32767:
        raise ValueError(f"a NIfTI-1 axis holds at most 32767 voxels, the mask is {mask_zyx.shape}")
    mask = np.ascontiguousarray(mask_zyx, dtype=np.uint8)
    head = mask_header(mask.shape[::-1], spacing_xyz, origin_xyz, direction)
    with igzip.open(path, "wb", compresslevel=level) as f:
        f.write(head)
        f.write(memoryview(mask).cast("B"))
