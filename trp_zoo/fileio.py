"""Atomic writes: a directory or file appears complete under its name, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}"


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
        for item in sorted(src.iterdir()):
            if item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
    return dest


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON through a temporary file and a rename."""
    path = Path(path)
    tmp = _sibling(path, "tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
