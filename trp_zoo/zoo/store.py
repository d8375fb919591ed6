"""The local store: checkpoints trained on this machine, loadable by name with no hub.

``$TRP_ZOO_HOME/models/<name>/`` (default ``~/.cache/trp_zoo``) holds a copy of each
checkpoint a recipe recorded with ``save_pretrained(..., register_as=name)`` or
``register_local``. ``trp_zoo.load(name)`` looks here before the hub, so a model loads
by name right after its recipe finishes, offline.

Concurrent use is safe: registrations of one name are serialized by an exclusive lock
on ``models/.<name>.lock`` (the new copy is written beside the old one first, outside
the lock), and ``trp_zoo.load`` / ``model_info`` hold a shared lock on the same file
while they read a stored name, so a reader never sees the name missing or half replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from ..fileio import copy_files, replace_directory
from ..paths import zoo_subdir
from .model_repo import CONFIG_NAME, WEIGHTS_NAME, read_config, verify_weights

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: registrations are not serialized
    fcntl = None  # type: ignore[assignment]

# a writer's temporary copy older than this is left over from a killed process
_STALE_SECONDS = 3600.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def store_dir() -> Path:
    """Where locally recorded checkpoints live: ``$TRP_ZOO_HOME/models``."""
    return zoo_subdir("models")


def check_store_name(name: str) -> None:
    """A store name is one path component: letters, digits, ``_``, ``.`` and ``-``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith("."):
        raise ValueError(
            f"{name!r} is not a valid model name: use letters, digits, '_', '.' and '-' "
            "(e.g. 'resnet18_trp_ch_fmnist')"
        )


def local_path(name: str) -> Path | None:
    """The stored checkpoint directory for ``name``, or None."""
    if not _NAME.fullmatch(name):
        return None
    path = store_dir() / name
    return path if (path / CONFIG_NAME).is_file() else None


def local_models() -> list[str]:
    """Names of the checkpoints in the local store."""
    root = store_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if not p.name.startswith(".") and (p / CONFIG_NAME).is_file()
    )


def register_local(checkpoint_dir: str | os.PathLike[str], name: str) -> Path:
    """Copy a checkpoint into the local store under ``name`` (replacing an older one).

    The checkpoint is checked first (config readable, weights intact). Returns the stored
    directory.
    """
    check_store_name(name)
    src = Path(checkpoint_dir)
    read_config(src)
    verify_weights(src / WEIGHTS_NAME)
    root = store_dir()
    dest = root / name
    with _staged_copy(src, dest) as staged, _store_lock(name, shared=False):
        _remove_leftovers(name)
        replace_directory(staged, dest)
    return dest


@contextlib.contextmanager
def reading(name: str) -> Iterator[None]:
    """Hold the shared lock of store name ``name`` (no-op when it is not a stored name)."""
    stored = isinstance(name, str) and _NAME.fullmatch(name) is not None
    if not stored or not (local_path(name) or (store_dir() / f".{name}.lock").is_file()):
        yield
        return
    with _store_lock(name, shared=True):
        yield


@contextlib.contextmanager
def _store_lock(name: str, *, shared: bool) -> Iterator[None]:
    root = store_dir()
    root.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(root / f".{name}.lock", "a+b")  # noqa: SIM115 - held for the block
    except OSError:  # a read-only store: nothing here writes to it concurrently
        yield
        return
    with handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield  # closing the file releases the lock


@contextlib.contextmanager
def _staged_copy(src: Path, dest: Path) -> Iterator[Path]:
    """A complete copy of ``src`` next to ``dest`` (``.<name>.tmp-*``), removed on error."""
    staged = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    staged.mkdir(parents=True)
    try:
        copy_files(src, staged)
        yield staged
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _remove_leftovers(name: str) -> None:
    """Delete what killed registrations of ``name`` left: set-aside old copies (only a
    lock holder makes them) and temporary copies older than an hour."""
    now = time.time()
    for path in store_dir().glob(f".{name}.*"):
        old = path.name.startswith(f".{name}.old-")
        stale = path.name.startswith(f".{name}.tmp-") and now - _mtime(path) > _STALE_SECONDS
        if old or stale:
            shutil.rmtree(path, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()
