""".nii.gz through ISA-L: the voxels and geometry `imageio` reads are SimpleITK's, for the
headers CT files come with (oblique directions, flipped axes, qform-only and sform-only files,
odd spacings, either byte order); files ITK would convert (scaled or floating-point voxels) are
left to SimpleITK; masks are written with SimpleITK's header and the gzip level asked for."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")   # writes the headers SimpleITK's writer never makes
pytest.importorskip("isal")

from fusionseg_kernels import imageio, nifti_gzip  # noqa: E402

SHAPE_XYZ = (13, 11, 7)


def _oblique(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q


def _affine(spacing, rotation, origin):
    a = np.eye(4)
    a[:3, :3] = rotation @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def _voxels(dtype, seed=0):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    return rng.integers(max(info.min, -3000), min(info.max, 3000), size=SHAPE_XYZ, endpoint=True).astype(dtype)


# (name, voxel dtype, affine, which of qform/sform is set, byte order, scl_slope, scl_inter)
CASES = [
    ("axis-aligned int16", np.int16, _affine((0.8, 0.8, 2.5), np.eye(3), (-200.0, -180.5, 30.0)),
     "both", "<", None, None),
    ("oblique", np.int16, _affine((0.71, 0.69, 1.25), _oblique(1), (3.0, -7.0, 11.0)), "both", "<", None, None),
    ("flipped axes", np.int16, _affine((0.9, 0.9, 3.0), np.diag([-1.0, 1.0, -1.0]), (0.0, 0.0, 0.0)),
     "both", "<", None, None),
    ("qform only", np.int16, _affine((0.8, 0.6, 5.0), _oblique(2), (1.0, 2.0, 3.0)), "qform", "<", None, None),
    ("sform only", np.int16, _affine((0.8, 0.6, 5.0), _oblique(3), (1.0, 2.0, 3.0)), "sform", "<", None, None),
    ("odd spacing", np.int16, _affine((0.3333333, 1.7, 0.0123), np.eye(3), (0.0, 0.0, 0.0)), "both", "<", None, None),
    ("big-endian", np.int16, _affine((0.8, 0.8, 2.5), _oblique(4), (5.0, 5.0, 5.0)), "both", ">", None, None),
    ("uint8", np.uint8, _affine((1.0, 1.0, 1.0), np.eye(3), (0.0, 0.0, 0.0)), "both", "<", None, None),
    ("int32", np.int32, _affine((1.5, 1.5, 1.5), np.eye(3), (0.0, 0.0, 0.0)), "both", "<", None, None),
    ("uint16", np.uint16, _affine((1.5, 1.5, 1.5), np.eye(3), (0.0, 0.0, 0.0)), "both", "<", None, None),
    ("identity scaling", np.int16, _affine((0.8, 0.8, 2.5), np.eye(3), (0.0, 0.0, 0.0)), "both", "<", 1.0, 0.0),
]
FALLBACK = [  # files ITK converts to float: read by SimpleITK
    ("scaled", np.int16, _affine((0.8, 0.8, 2.5), np.eye(3), (0.0, 0.0, 0.0)), "both", "<", 1.0, -1024.0),
    ("float32", np.float32, _affine((0.8, 0.8, 2.5), np.eye(3), (0.0, 0.0, 0.0)), "both", "<", None, None),
]


def _write(path, dtype, affine, forms, order, slope, inter):
    data = _voxels(dtype) if np.issubdtype(dtype, np.integer) else np.random.default_rng(0).random(SHAPE_XYZ, dtype)
    img = nib.Nifti1Image(data, None)
    if forms in ("both", "qform"):
        img.set_qform(affine, code=1)
    else:
        img.set_qform(None, code=0)
    if forms in ("both", "sform"):
        img.set_sform(affine, code=2)
    else:
        img.set_sform(None, code=0)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    if order == ">":
        img = nib.Nifti1Image(data, img.affine, img.header.as_byteswapped(">"))
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("case", CASES + FALLBACK, ids=[c[0] for c in CASES + FALLBACK])
def test_voxels_and_geometry_are_simpleitks(tmp_path, case):
    name, *spec = case
    path = _write(tmp_path / "ct.nii.gz", *spec)
    ref = sitk.ReadImage(str(path))
    header = imageio.read_header(path)
    voxels = imageio.read_image(header)
    expected = sitk.GetArrayFromImage(ref)
    assert voxels.dtype == expected.dtype and voxels.shape == expected.shape
    assert np.array_equal(voxels, expected)
    spacing, origin, direction = header.geometry
    assert spacing == ref.GetSpacing() and origin == ref.GetOrigin() and direction == ref.GetDirection()
    fast = nifti_gzip.read_voxels(path, header.shape_zyx, header.dtype)
    assert (fast is not None) == (case in CASES), "the ISA-L reader takes exactly the files ITK reads unchanged"


def test_a_gz_name_without_gzip_and_a_damaged_stream_go_to_simpleitk(tmp_path):
    plain = _write(tmp_path / "plain.nii", *CASES[0][1:])
    named = tmp_path / "named.nii.gz"
    named.write_bytes(plain.read_bytes())
    header = imageio.read_header(named)
    assert np.array_equal(imageio.read_image(header), sitk.GetArrayFromImage(sitk.ReadImage(str(plain))))
    damaged = tmp_path / "damaged.nii.gz"
    blob = bytearray(gzip.compress(plain.read_bytes()))
    blob[40:60] = b"\x00" * 20
    damaged.write_bytes(bytes(blob))
    with pytest.raises(Exception) as err:   # SimpleITK's reading names the problem
        imageio.read_image(imageio.read_header(damaged))
    assert "could not be read" in str(err.value) or "not a readable image" in str(err.value)


@pytest.mark.parametrize("geometry", [CASES[1][2], CASES[2][2], CASES[5][2]], ids=["oblique", "flipped", "odd"])
def test_mask_header_is_simpleitks_and_the_level_is_applied(tmp_path, geometry):
    ref = sitk.ReadImage(str(_write(tmp_path / "ct.nii.gz", np.int16, geometry, "both", "<", None, None)))
    rng = np.random.default_rng(5)
    mask = (rng.random(SHAPE_XYZ[::-1]) ** 4 * 4).astype(np.uint8)   # labels 0-3, mostly 0
    sizes = {}
    for level in (0, 1, 3):
        out = tmp_path / f"mask{level}.nii.gz"
        imageio.write_mask(mask, ref, out, compression_level=level)
        sizes[level] = out.stat().st_size
        back = sitk.ReadImage(str(out))
        assert np.array_equal(sitk.GetArrayFromImage(back), mask)
        # NIfTI stores float32 geometry: equal to the reference's up to that rounding ...
        for got, want in ((back.GetSpacing(), ref.GetSpacing()), (back.GetOrigin(), ref.GetOrigin()),
                          (back.GetDirection(), ref.GetDirection())):
            assert np.allclose(got, want, rtol=1e-6, atol=1e-6)
        # ... and byte for byte what SimpleITK writes for the same image (uncompressed)
        theirs_img = sitk.GetImageFromArray(mask)
        theirs_img.CopyInformation(ref)
        sitk.WriteImage(theirs_img, str(tmp_path / "theirs.nii"), False)
        assert gzip.decompress(out.read_bytes()) == (tmp_path / "theirs.nii").read_bytes()
    assert sizes[0] != sizes[3], f"gzip levels 0 and 3 gave files of the same size ({sizes})"
    assert list(tmp_path.glob(".*partial*")) == []


def test_a_large_mask_is_smaller_at_a_higher_level(tmp_path):
    mask = np.zeros((64, 128, 128), np.uint8)
    mask[20:40, 30:90, 40:100] = 1
    mask[::3, ::5, ::7] = 2
    sizes = []
    for level in (0, 3):
        out = tmp_path / f"m{level}.nii.gz"
        imageio.write_mask(mask, None, out, compression_level=level)
        sizes.append(out.stat().st_size)
    assert sizes[1] < sizes[0]


def test_a_level_outside_isa_ls_range_is_refused(tmp_path):
    with pytest.raises(ValueError, match="0 \\(fastest\\) to 3"):
        imageio.write_mask(np.zeros((2, 2, 2), np.uint8), None, tmp_path / "m.nii.gz", compression_level=9)
    assert list(tmp_path.iterdir()) == []


def test_header_layout_is_read_in_either_byte_order():
    head = bytearray(348)
    for order in "<>":
        struct.pack_into(order + "i", head, 0, 348)
        struct.pack_into(order + "8h", head, 40, 3, 4, 5, 6, 1, 1, 1, 1)
        struct.pack_into(order + "h", head, 70, 4)
        struct.pack_into(order + "3f", head, 108, 352.0, 1.0, 0.0)
        assert nifti_gzip._nifti1_layout(bytes(head)) == (order, 4, 352, 1.0, 0.0, (3, 4, 5, 6, 1, 1, 1, 1))
