"""Image files: case naming and discovery, header checks, reading and writing — the one module
every part of the project (inference, evaluation, profiling, the synthetic data) uses for them.

- Naming: ``<case>_0000.nii.gz`` is channel 0 of ``<case>`` (nnU-Net and FLARE naming); its mask
  is ``<case>.nii.gz``. `list_inputs` finds the images to segment, `find_case_images` the
  ``<case>_0000`` images of a folder (FLARE's per-case protocol), `find_masks` the
  ``<case>.nii.gz`` masks of a folder (evaluation).
- Headers are checked before any voxel is read (`read_header`, `check_complete`): dimension,
  pixel type, empty axes, and whether the file holds the voxel bytes its header declares.
  `nifti_dims` reads a NIfTI header's sizes without SimpleITK.
- Reading and writing go through SimpleITK; its multi-line errors are trimmed to their reason
  (`itk_reason`). Every file is written under a temporary name and renamed into place.
- `dataset_json` builds nnU-Net's ``dataset.json`` for a CT lesion dataset.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import zlib

import numpy as np
import SimpleITK as sitk

from fusionseg_kernels import atomic, nifti_gzip
from fusionseg_kernels.errors import InputImageError, OutputFolderError

# ITK prints its warnings (a truncated raw file, odd sform scales) straight to stderr; every problem
# this module finds becomes one sentence of its own instead
sitk.ProcessObject_SetGlobalWarningDisplay(False)

#: file endings read as images (longest first, so ".nii.gz" wins over ".gz")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: the ending a mask gets for each input ending (header/data pairs become single files)
_OUTPUT_SUFFIX = {".nii.gz": ".nii.gz", ".nii": ".nii", ".mha": ".mha", ".mhd": ".mha",
                  ".nrrd": ".nrrd", ".nhdr": ".nrrd"}
_CHANNEL = re.compile(r"_(\d{4})$")
#: the file ending of masks and of FLARE's images
NIFTI_GZ = ".nii.gz"


def split_suffix(path: str | os.PathLike) -> tuple[str, str]:
    """(name without ending, ending) for a supported image file; ending "" if unsupported."""
    name = Path(path).name
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def case_name(path: str | os.PathLike) -> str:
    """The case a file belongs to: ``<case>_0000.nii.gz`` -> ``<case>`` (nnU-Net/FLARE naming);
    a name without a channel suffix is its own case."""
    stem, _ = split_suffix(path)
    return _CHANNEL.sub("", stem)


def output_name(path: str | os.PathLike) -> str:
    """The mask file name for an input image: ``<case>_0000.nii.gz`` -> ``<case>.nii.gz``."""
    _, suffix = split_suffix(path)
    return case_name(path) + _OUTPUT_SUFFIX.get(suffix, ".nii.gz")


def list_inputs(source: str | os.PathLike) -> list[Path]:
    """The image files to segment: ``source`` itself, or the supported images in the folder
    ``source`` (not recursive, sorted by name). Channel files other than ``_0000`` are skipped:
    the networks take one CT channel."""
    src = Path(source)
    if not src.exists():
        raise InputImageError(f"{src}: no such file or folder.")
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise InputImageError(f"{src} is neither a regular file nor a folder.")
    files = []
    for p in sorted(src.iterdir()):
        stem, suffix = split_suffix(p)
        if not suffix or not p.is_file() or p.name.startswith("."):
            continue
        m = _CHANNEL.search(stem)
        if m and m.group(1) != "0000":
            continue
        files.append(p)
    if not files:
        raise InputImageError(f"{src} contains no image files (looked for {', '.join(IMAGE_SUFFIXES)}).")
    return files


def companion_files(path: Path) -> list[Path]:
    """The files an image consists of: itself, and the voxel file a MetaImage or NRRD header names."""
    out = [path]
    lower = path.name.lower()
    if lower.endswith((".mhd", ".nhdr")):
        data = _detached_data_file(path)
        if data is not None:
            out.append(data)
    return out


def plan_outputs(sources: list[Path], output_folder: str | os.PathLike,
                 input_folder: str | os.PathLike | None = None) -> list[tuple[Path, Path]]:
    """[(input, mask file)] for a run, refused up front (`OutputFolderError`) when two inputs would
    write the same mask, when a mask would overwrite an input (a mask name equal to an input
    file, or to the voxel file of a MetaImage or NRRD header), or when the output folder is the
    input folder `input_folder` (a later run would read the masks as CTs). Nothing is created."""
    out = Path(output_folder)
    plan = [(src, out / output_name(src)) for src in sources]
    by_name: dict[str, list[Path]] = {}
    for src, dst in plan:
        by_name.setdefault(dst.name, []).append(src)
    for name, srcs in by_name.items():
        if len(srcs) > 1:
            raise OutputFolderError(f"{' and '.join(str(s) for s in srcs)} would be written as the same mask "
                                    f"{out / name}; rename or move one of them.")
    inputs = {p.resolve(): src for src in sources for p in companion_files(src)}
    for src, dst in plan:
        clash = inputs.get(dst.resolve())
        if clash is not None:
            raise OutputFolderError(f"the mask of {src} would overwrite the input {clash} ({dst}); choose an "
                                    f"output folder that holds no inputs.")
    if input_folder is not None and out.resolve() == Path(input_folder).resolve():
        raise OutputFolderError(f"the output folder {out} is the input folder: masks written there would overwrite "
                                f"inputs named like them and a later run would read them as CTs; choose another "
                                f"folder.")
    return plan


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Checks, without creating anything, that masks can be written into `folder`: it is a folder
    or can be created below a writable one. The folder itself is created when the first mask is
    written, so a run that fails before leaves nothing behind."""
    folder = Path(folder)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputFolderError(f"output folder {folder} cannot be written ({existing} is a file, not a folder).")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(f"output folder {folder} cannot be written (permission denied on {existing}).")
    return folder


def find_case_images(folder: str | os.PathLike, what: str = "input folder") -> list[tuple[str, Path]]:
    """[(case, file)] of the ``<case>_0000.nii.gz`` (or ``.nii``) images of a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"{what} {str(folder)!r} does not exist.")
    cases = []
    for f in sorted(folder.iterdir()):
        stem, suffix = split_suffix(f)
        if suffix in (".nii.gz", ".nii") and f.is_file() and not f.name.startswith(".") and stem.endswith("_0000"):
            cases.append((stem[:-len("_0000")], f))
    if not cases:
        raise InputImageError(f"{what} {str(folder)!r} holds no <case>_0000.nii.gz images.")
    return cases


def find_masks(folder: str | os.PathLike) -> dict[str, Path]:
    """{case: file} of the ``<case>.nii.gz`` masks of a folder (hidden files skipped)."""
    folder = Path(folder)
    return {f.name[:-len(NIFTI_GZ)]: f for f in sorted(folder.iterdir())
            if f.name.endswith(NIFTI_GZ) and not f.name.startswith(".") and f.is_file()}


# ----------------------------------------------------------------------------------------------
@dataclass
class ImageHeader:
    path: Path
    size_xyz: tuple[int, ...]
    spacing_xyz: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_type: str
    bytes_per_voxel: int
    dtype: np.dtype

    @property
    def geometry(self) -> tuple[tuple, tuple, tuple]:
        """(spacing, origin, direction) in SimpleITK's (x, y, z) order, as SimpleITK reads them."""
        return self.spacing_xyz, self.origin, self.direction

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.size_xyz[::-1])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.spacing_xyz[::-1])

    @property
    def spacing_zyx_as_written(self) -> list[float]:
        """The spacing as the file states it: NIfTI stores float32, read here as the nearest
        double (1.6 becomes 1.600000023841858); shown as the float32 the file holds (1.6)."""
        return [_as_written(s) for s in self.spacing_zyx]

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.size_xyz, dtype=np.int64))


def read_header(path: str | os.PathLike) -> ImageHeader:
    """The image's header (no voxels read). Raises `InputImageError` for a missing or unreadable
    file and for anything but a single-component 3-D image."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: no such file.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputImageError(f"{path} is not a readable image ({itk_reason(err)}).") from None
    dim = reader.GetDimension()
    size = tuple(int(s) for s in reader.GetSize())
    if dim != 3:
        raise InputImageError(f"{path} is a {dim}-D image of size {size}; a 3-D CT volume is needed.")
    if reader.GetNumberOfComponents() != 1:
        raise InputImageError(f"{path} has {reader.GetNumberOfComponents()} components per voxel; "
                              f"a single-channel CT volume is needed.")
    if min(size) < 1:
        raise InputImageError(f"{path} declares an empty volume of size {size}.")
    dims = nifti_dims(path) if path.name.lower().endswith((".nii", ".nii.gz")) else None
    if dims is not None and 0 in dims[:3]:
        axis = dims.index(0) + 1
        raise InputImageError(f"{path} declares an empty dimension (dim[{axis}] = 0 in its NIfTI header); "
                              f"ITK would read it as size 1.")
    spacing, direction = _positive_spacing(path, tuple(reader.GetSpacing()), tuple(reader.GetDirection()))
    pixel = reader.GetPixelID()
    dtype = np.dtype(sitk.GetArrayViewFromImage(sitk.Image(1, 1, pixel)).dtype)
    return ImageHeader(path, size, spacing, tuple(reader.GetOrigin()), direction,
                       sitk.GetPixelIDValueAsString(pixel), int(dtype.itemsize), dtype)


def _positive_spacing(path: Path, spacing: tuple, direction: tuple) -> tuple[tuple, tuple]:
    """The spacing and direction as ITK holds the image once read: a negative spacing in a
    header is the same grid as its absolute value along a flipped axis (the direction's column
    negated), which is what ITK's reader makes of it. A zero spacing is refused."""
    if any(s == 0 or not np.isfinite(s) for s in spacing):
        raise InputImageError(f"{path} declares a spacing of {tuple(spacing)} mm; every axis's spacing must be "
                              f"between 0.01 and 100 mm (a negative spacing is read as a flipped axis).")
    if all(s > 0 for s in spacing):
        return spacing, direction
    d = np.array(direction, dtype=np.float64).reshape(3, 3)
    for axis, s in enumerate(spacing):
        if s < 0:
            d[:, axis] = -d[:, axis]
    return tuple(abs(float(s)) for s in spacing), tuple(float(v) for v in d.ravel())


def _as_written(value: float) -> float:
    single = np.float32(value)
    return float(str(single)) if float(single) == value else float(value)


def check_complete(header: ImageHeader) -> None:
    """Raises `InputImageError` when the file holds fewer voxel bytes than its header declares.

    ITK reads a truncated file without an error (the missing voxels come back as zeros), so this
    is checked here: for NIfTI from the header's data offset, for .nii.gz from the gzip trailer
    (the stream is decompressed to the end only when the trailer disagrees, e.g. for a
    multi-member file), for MetaImage and NRRD files with raw voxels after the header from the
    file size."""
    path = header.path
    need = header.n_voxels * header.bytes_per_voxel
    lower = path.name.lower()
    if lower.endswith(".nii.gz") and not _is_gzip(path):
        lower = lower[:-3]  # an uncompressed NIfTI with a .gz name: SimpleITK reads it as such
    try:
        if lower.endswith((".mhd", ".nhdr")):
            _check_detached_data(path, need)
        elif lower.endswith(".nii"):
            offset = _nifti_offset(path.open("rb").read(560))
            if offset is not None and path.stat().st_size < offset + need:
                raise _truncated(path, offset + need, path.stat().st_size)
        elif lower.endswith(".nii.gz"):
            import gzip

            with gzip.open(path, "rb") as f:
                offset = _nifti_offset(f.read(560))
            if offset is None:
                return
            expected = offset + need
            with path.open("rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = int.from_bytes(f.read(4), "little")
            if isize == expected % (1 << 32):
                return
            total = 0
            with gzip.open(path, "rb") as f:
                while True:
                    block = f.read(1 << 24)
                    if not block:
                        break
                    total += len(block)
            if total < expected:
                raise _truncated(path, expected, total)
        elif lower.endswith((".mha", ".nrrd")):
            head = path.open("rb").read(1 << 16)
            if lower.endswith(".mha"):
                m = re.search(rb"ElementDataFile\s*=\s*LOCAL\s*?\r?\n", head)
                raw = m is not None and not re.search(rb"CompressedData\s*=\s*True", head, re.I)
                start = m.end() if m else 0
            else:
                m = re.search(rb"\r?\n\r?\n", head)
                raw = m is not None and re.search(rb"encoding:\s*raw", head, re.I) is not None \
                    and b"data file:" not in head.lower()
                start = m.end() if m else 0
            if raw and path.stat().st_size < start + need:
                raise _truncated(path, start + need, path.stat().st_size)
    except (EOFError, OSError, ValueError) as err:
        if isinstance(err, InputImageError):
            raise
        raise InputImageError(f"{path} could not be read: it is corrupt or truncated ({err}).") from None


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _detached_data_file(path: Path) -> Path | None:
    """The voxel file a MetaImage (.mhd: ElementDataFile) or detached NRRD (.nhdr: data file)
    header names; None when the voxels are in the header file or a list of files is named."""
    try:
        head = path.open("rb").read(1 << 16).decode("latin-1")
    except OSError:
        return None
    key = r"ElementDataFile\s*=\s*(.+)" if path.name.lower().endswith(".mhd") else r"data ?file:\s*(.+)"
    m = re.search(key, head, re.I)
    if not m:
        return None
    name = m.group(1).strip()
    if name.upper() in ("LOCAL", "LIST") or " " in name:
        return None
    return (path.parent / name) if not Path(name).is_absolute() else Path(name)


def _check_detached_data(path: Path, need: int) -> None:
    data = _detached_data_file(path)
    if data is None:
        return
    if not data.is_file():
        raise InputImageError(f"{path} names its voxel file {data}, which does not exist.")
    head = path.open("rb").read(1 << 16)
    compressed = re.search(rb"CompressedData\s*=\s*True", head, re.I) or re.search(rb"encoding:\s*(gz|gzip|bz2)",
                                                                                 head, re.I)
    if not compressed and data.stat().st_size < need:
        raise InputImageError(f"{path}'s voxel file {data} is truncated: it holds {data.stat().st_size} bytes of "
                              f"the {need} its header declares.")


def _nifti_offset(head: bytes) -> int | None:
    if len(head) >= 348:
        for order in "<>":
            size = struct.unpack(order + "i", head[:4])[0]
            if size == 348:
                return int(struct.unpack(order + "f", head[108:112])[0])
            if size == 540 and len(head) >= 176:
                return int(struct.unpack(order + "q", head[168:176])[0])
    return None


def _truncated(path: Path, expected: int, found: int) -> InputImageError:
    return InputImageError(f"{path} is truncated: its header declares {expected} bytes of image data "
                           f"and header but the file holds {found}.")


def read_image(header: ImageHeader) -> np.ndarray:
    """The (z, y, x) voxels of the image, exactly as SimpleITK reads them (possibly a read-only
    array). Integer NIfTI-1 ``.nii.gz`` files are inflated by ISA-L (`nifti_gzip`, several times
    faster than SimpleITK's zlib); every other file is read by SimpleITK. The geometry is the
    header's (`ImageHeader.geometry`), which is SimpleITK's."""
    if header.path.name.lower().endswith(".nii.gz"):
        try:
            voxels = nifti_gzip.read_voxels(header.path, header.shape_zyx, header.dtype)
        except (OSError, EOFError, ValueError, zlib.error):
            voxels = None   # a damaged stream: SimpleITK's reading names the problem
        if voxels is not None:
            return voxels
    try:
        image = sitk.ReadImage(str(header.path))
    except RuntimeError as err:
        raise InputImageError(f"{header.path} could not be read: it is corrupt or truncated "
                              f"({itk_reason(err)}).") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{header.path} is not a single-channel 3-D image.")
    # an array over the image's memory (no copy) whose base keeps the image alive
    return np.asarray(_ImageMemory(image))


class _ImageMemory:
    """A SimpleITK image's voxels as an array interface that holds the image: numpy makes it
    the base of the array, so the image lives as long as any view of its voxels."""

    def __init__(self, image):
        self._image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def itk_reason(err: BaseException) -> str:
    """The reason in one of SimpleITK's multi-line error messages (its last line without a source location)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    # ITK messages carry the source location first and the reason last
    useful = [ln for ln in lines if not ln.startswith(("/", "ITK ERROR", "itk::ERROR"))] or lines
    text = useful[-1] if useful else type(err).__name__
    return text[:200]


def nifti_dims(path: str | os.PathLike) -> list[int] | None:
    """The image size (dim[1..ndim], NIfTI order x, y, z) from a NIfTI-1/2 header, None if the
    file is not one (or cannot be read)."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            dim = struct.unpack(endian + "8q", head[16:80])
            break
    else:
        return None
    ndim = dim[0]
    return list(dim[1:1 + ndim]) if 1 <= ndim <= 7 else None


#: NIfTI datatype codes of floating-point voxels and their numpy types
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def nonfinite_voxels(header: ImageHeader, voxels: np.ndarray) -> np.ndarray | None:
    """A boolean (z, y, x) map of the voxels that are NaN or infinite in the file, None when there
    are none. ITK's NIfTI reader turns such voxels into 0 without a word, so for a floating-point
    NIfTI the file's own voxels are read here; for the other formats ITK keeps them."""
    if not np.issubdtype(voxels.dtype, np.floating):
        return None
    lower = header.path.name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        raw = _nifti_float_voxels(header)
        bad = ~np.isfinite(raw) if raw is not None else ~np.isfinite(voxels)
    else:
        bad = ~np.isfinite(voxels)
    return bad if bad.any() else None


def _nifti_float_voxels(header: ImageHeader) -> np.ndarray | None:
    """The voxels of a floating-point NIfTI-1/2 file as stored, in ITK's (z, y, x) order."""
    import gzip

    path = header.path
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as f:
        head = f.read(540)
        for order in "<>":
            size = struct.unpack(order + "i", head[:4])[0]
            if size == 348:
                code = struct.unpack(order + "h", head[70:72])[0]
                offset = int(struct.unpack(order + "f", head[108:112])[0])
                break
            if size == 540:
                code, offset = struct.unpack(order + "h", head[12:14])[0], struct.unpack(order + "q", head[168:176])[0]
                break
        else:
            return None
        if code not in _NIFTI_FLOATS:
            return None
        dtype = np.dtype(order + _NIFTI_FLOATS[code])
        f.seek(offset)
        data = f.read(header.n_voxels * dtype.itemsize)
    if len(data) < header.n_voxels * dtype.itemsize:
        return None  # truncated: check_complete says so
    return np.frombuffer(data, dtype=dtype).reshape(header.shape_zyx)


def read_mask(path: str | os.PathLike):
    """Reads a 3-D single-channel mask: (the SimpleITK image, a (z, y, x) numpy copy of its voxels)."""
    try:
        img = sitk.ReadImage(os.fspath(path))
    except RuntimeError as err:
        raise InputImageError(f"SimpleITK cannot read {os.fspath(path)} as an image ({itk_reason(err)}).") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{os.fspath(path)} is not a 3-D single-channel mask (dimension "
                              f"{img.GetDimension()}, {img.GetNumberOfComponentsPerPixel()} components).")
    return img, sitk.GetArrayFromImage(img)


# ----------------------------------------------------------------------------------------------
#: formats that store header and voxels in two files (not written: a rename cannot be atomic)
_MULTI_FILE = (".mhd", ".hdr", ".img", ".img.gz", ".nhdr")


def image_from_array(array_zyx: np.ndarray, spacing_zyx: Sequence[float], origin_xyz: Sequence[float],
                     direction: Sequence[float]):
    """A SimpleITK image from a (z, y, x) array and its geometry (spacing in array order z, y, x;
    origin and direction in SimpleITK's x, y, z order)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    img.SetOrigin(tuple(float(o) for o in origin_xyz))
    img.SetDirection(tuple(float(d) for d in direction))
    return img


def write_image(img, path: str | os.PathLike, compression_level: int = -1) -> None:
    """Writes a SimpleITK image to `path` atomically (temporary file in the same folder, then a
    rename), creating the folder. Single-file formats only (.nii.gz, .nii, .mha, .nrrd)."""
    path = Path(path)
    lower = path.name.lower()
    if lower.endswith(_MULTI_FILE) or not any(lower.endswith(s) for s in IMAGE_SUFFIXES):
        raise OutputFolderError(f"cannot write {path}: use a single-file image format such as "
                                f".nii.gz, .nii, .mha or .nrrd.")
    try:
        with atomic.atomic_output(path) as tmp:
            sitk.WriteImage(img, str(tmp), True, compression_level)
    except RuntimeError as err:
        raise OutputFolderError(f"{path} could not be written ({itk_reason(err)}).") from None


def write_mask(mask_zyx: np.ndarray, reference: sitk.Image | None, path: Path, *,
               geometry: tuple | None = None, compression_level: int | None = None) -> None:
    """Writes a uint8 (z, y, x) mask with the reference image's geometry (size, spacing, origin,
    direction) or `geometry` ((spacing, origin, direction) in SimpleITK's order), atomically:
    temporary file, then ``os.replace``. A ``.nii.gz`` mask is deflated by ISA-L at
    `compression_level` (0-3, default 1; `nifti_gzip`), with the header SimpleITK writes; other
    formats are written by SimpleITK."""
    path = Path(path)
    if reference is not None:
        if tuple(reference.GetSize()) != tuple(mask_zyx.shape[::-1]):
            raise RuntimeError(f"mask size {mask_zyx.shape[::-1]} differs from the image's {reference.GetSize()}")
        geometry = (reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection())
    level = nifti_gzip.DEFAULT_LEVEL if compression_level is None else int(compression_level)
    if level not in nifti_gzip.LEVELS:
        raise ValueError(f"a mask's gzip level is 0 (fastest) to 3 (smallest), got {compression_level}")
    if path.name.lower().endswith(NIFTI_GZ) and nifti_gzip.available():
        spacing, origin, direction = geometry if geometry is not None else ((1.0,) * 3, (0.0,) * 3, _IDENTITY)
        try:
            with atomic.atomic_output(path) as tmp:
                nifti_gzip.write_mask(mask_zyx, tmp, spacing, origin, direction, level)
        except RuntimeError as err:
            raise OutputFolderError(f"{path} could not be written ({itk_reason(err)}).") from None
        return
    if mask_zyx.dtype != np.uint8:
        mask_zyx = mask_zyx.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask_zyx))
    if geometry is not None:
        spacing, origin, direction = geometry
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        img.SetDirection(direction)
    write_image(img, path)


_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def dataset_json(num_training: int = 0, **extra) -> dict:
    """nnU-Net v2's ``dataset.json`` for a one-channel CT lesion dataset (background 0, lesion 1),
    with `extra` keys (name, description, ...) in front."""
    return {**extra, "channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
            "numTraining": int(num_training), "file_ending": NIFTI_GZ}
