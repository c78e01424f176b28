"""Writing files so that nothing half-written is ever left behind: the one way the project does it.

Every output (masks, images, JSON, CSV, reports, checkpoints, plans) is written to a hidden
temporary file in the destination folder, then renamed over the destination with `os.replace`
(atomic on one file system). A reader sees the old file, no file, or the whole new one; a failed
or interrupted write removes its temporary file.
"""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FusionsegError, OutputFolderError

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix):]
    return path.suffix


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden, unique name next to `path` with the same ending (image writers pick the format
    by it, e.g. ``.nii.gz``)."""
    path = Path(path)
    suffix = _suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write `path` through; renames it to `path` when the block ends
    normally, removes it when the block raises. Creates the folder. An OSError (a folder that
    cannot be written, a full disk) becomes an `OutputFolderError` naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputFolderError(f"cannot create the folder {path.parent}: {err.strerror or err}") from None
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(err, OSError) and not isinstance(err, FusionsegError):
            raise OutputFolderError(f"cannot write {path}: {err.strerror or err}") from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Writes `obj` as JSON (non-JSON values as their str) to `path` atomically."""
    write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")
