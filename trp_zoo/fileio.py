"""Atomic writes (a file or directory appears complete under its name, or not at all),
file hashing, and the check that an output directory can be made: the one implementation
of each for the library, the runtime and the scripts.

Everything is written next to its destination under a hidden temporary name, flushed,
and renamed into place; a failure (or ``kill -9``) leaves the previous version intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from .errors import WriteError


def writable_dir_problem(path: Path, what: str) -> str | None:
    """Create ``path`` as a directory; a one-line problem naming ``what``, or None."""
    if path.exists() and not path.is_dir():
        return f"{what} {path} is a file, not a directory: move it or choose another path"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot create {what} {path} ({err.strerror or err}): choose a writable path"
    return None


def free_bytes(path: Path) -> int:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return 0


def write_error(path: Path, err: BaseException, fix: str) -> WriteError:
    """The one-line error for a failed write of ``path``: the cause, the free space, ``fix``."""
    cause = (str(err).splitlines() or [type(err).__name__])[0][:160]
    return WriteError(
        f"could not write {path} ({cause}; {free_bytes(path.parent) / 2**20:.0f} MiB free "
        f"there): {fix}"
    )


def _sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically with ``write(file_object)``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data``: readers see the old file or the whole new one."""
    atomic_write(path, lambda f: f.write(data))
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Atomically ``torch.save`` an object."""
    atomic_write(path, lambda f: torch.save(obj, f))


def replace_directory(src: Path, dest: Path) -> None:
    """Move the finished directory ``src`` to ``dest``, replacing what was there.

    The old ``dest`` is renamed aside first and deleted only once ``src`` is in place; if
    the second rename fails the old one is moved back. ``src`` and ``dest`` must be on one
    file system (callers create ``src`` next to ``dest``).
    """
    old = None
    if dest.exists():
        old = _sibling(dest, "old")
        os.replace(dest, old)
    try:
        os.replace(src, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``dest``; on success it replaces ``dest``.

    On any error the temporary directory is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(dest, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        replace_directory(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_directory_atomic(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy the files of ``src`` (not dot-files) to ``dest`` atomically; returns ``dest``."""
    src, dest = Path(src), Path(dest)
    with atomic_directory(dest) as tmp:
        copy_files(src, tmp)
    return dest


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_files(src: Path, dest: Path) -> None:
    """Copy the files and folders of ``src`` (not dot-files) into the directory ``dest``."""
    for item in sorted(src.iterdir()):
        if item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copy2(item, dest / item.name)
