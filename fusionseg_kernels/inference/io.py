"""Reading CT volumes and writing masks with SimpleITK; input listing and output naming.

Images are checked from their header first (`read_header`): dimension, pixel type and whether the
voxels fit in memory are decided before any voxel is read. Masks are written under a temporary
name in the output folder and renamed into place, so a failed or interrupted write never leaves a
partial file under the final name.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fusionseg_kernels import atomic
from fusionseg_kernels.errors import InputImageError, OutputFolderError

#: file endings read as images (longest first, so ".nii.gz" wins over ".gz")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: the ending a mask gets for each input ending (header/data pairs become single files)
_OUTPUT_SUFFIX = {".nii.gz": ".nii.gz", ".nii": ".nii", ".mha": ".mha", ".mhd": ".mha",
                  ".nrrd": ".nrrd", ".nhdr": ".nrrd"}
_CHANNEL = re.compile(r"_(\d{4})$")


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

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.size_xyz[::-1])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.spacing_xyz[::-1])

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.size_xyz, dtype=np.int64))


def available_memory_bytes() -> int:
    """Memory this process can still use: psutil's (or /proc/meminfo's) available memory, capped
    by a cgroup v2 memory limit when one is set."""
    avail = None
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
        except OSError:
            pass
    if avail is None:
        avail = 1 << 62
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


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
        raise InputImageError(f"{path} is not a readable image ({_first_line(err)}).") from None
    dim = reader.GetDimension()
    size = tuple(int(s) for s in reader.GetSize())
    if dim != 3:
        raise InputImageError(f"{path} is a {dim}-D image of size {size}; a 3-D CT volume is needed.")
    if reader.GetNumberOfComponents() != 1:
        raise InputImageError(f"{path} has {reader.GetNumberOfComponents()} components per voxel; "
                              f"a single-channel CT volume is needed.")
    if min(size) < 1:
        raise InputImageError(f"{path} declares an empty volume of size {size}.")
    pixel = reader.GetPixelID()
    nbytes = int(np.dtype(sitk.GetArrayViewFromImage(sitk.Image(1, 1, pixel)).dtype).itemsize)
    return ImageHeader(path, size, tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                       tuple(reader.GetDirection()), sitk.GetPixelIDValueAsString(pixel), nbytes)


def check_fits_in_memory(header: ImageHeader, needed_bytes: int, available: int | None = None) -> None:
    """Raises `InputImageError` when processing the image needs more memory than is available."""
    available = available_memory_bytes() if available is None else available
    if needed_bytes > available:
        raise InputImageError(
            f"{header.path} declares {header.size_xyz[0]}x{header.size_xyz[1]}x{header.size_xyz[2]} "
            f"voxels ({header.pixel_type}), which need about {needed_bytes / 2**30:.1f} GiB to segment "
            f"but only {max(available, 0) / 2**30:.1f} GiB of memory is available.")


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
    try:
        if lower.endswith(".nii"):
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


def _nifti_offset(head: bytes) -> int | None:
    import struct

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


def read_image(header: ImageHeader) -> tuple[sitk.Image, np.ndarray]:
    """(the image, a (z, y, x) numpy view of its voxels). The view shares the image's memory:
    keep the image alive while the array is used."""
    try:
        image = sitk.ReadImage(str(header.path))
    except RuntimeError as err:
        raise InputImageError(f"{header.path} could not be read: it is corrupt or truncated "
                              f"({_first_line(err)}).") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{header.path} is not a single-channel 3-D image.")
    return image, sitk.GetArrayViewFromImage(image)


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    # ITK messages carry the source location first and the reason last
    useful = [ln for ln in lines if not ln.startswith(("/", "ITK ERROR", "itk::ERROR"))] or lines
    text = useful[-1] if useful else type(err).__name__
    return text[:200]


# ----------------------------------------------------------------------------------------------
def prepare_output_folder(folder: str | os.PathLike) -> Path:
    """Creates the folder if needed and checks that files can be created in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fusionseg-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as err:
        raise OutputFolderError(f"output folder {folder} cannot be written ({err.strerror or err}).") from None
    return folder


def write_mask(mask_zyx: np.ndarray, reference: sitk.Image | None, path: Path, *,
               geometry: tuple | None = None, compression_level: int = -1) -> None:
    """Writes a uint8 (z, y, x) mask with the reference image's geometry (size, spacing, origin,
    direction), atomically: temporary file, then ``os.replace``."""
    if mask_zyx.dtype != np.uint8:
        mask_zyx = mask_zyx.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask_zyx))
    if reference is not None:
        if tuple(reference.GetSize()) != tuple(img.GetSize()):
            raise RuntimeError(f"mask size {img.GetSize()} differs from the image's {reference.GetSize()}")
        img.CopyInformation(reference)
    elif geometry is not None:
        spacing, origin, direction = geometry
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        img.SetDirection(direction)
    try:
        with atomic.atomic_output(path) as tmp:
            sitk.WriteImage(img, str(tmp), True, compression_level)
    except RuntimeError as err:
        raise OutputFolderError(f"{path} could not be written ({_first_line(err)}).") from None


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    atomic.write_json(path, obj)
