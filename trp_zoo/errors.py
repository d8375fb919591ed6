"""The errors trp-zoo raises: each message names the problem and the fix.

``ZooError`` is the one root: the library's errors and the runtime's
(``runtime.errors``) all derive from it, so a command line catches one class and prints
one line. Each also subclasses the built-in exception a caller would otherwise catch
(``ValueError``, ``LookupError``, ``OSError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class ZooError(Exception):
    """Base class of every error trp-zoo raises (library and runtime)."""


class UnknownModelError(ZooError, ValueError):
    """A name that is neither in the registry, nor in the local store, nor a path or repo id."""


class WeightsNotPublishedError(ZooError, LookupError):
    """A registry name whose weights are neither published nor trained on this machine."""


class NotCachedError(ZooError, OSError):
    """The hub cannot be reached (or ``HF_HUB_OFFLINE=1``) and the files are not cached."""


class CheckpointError(ZooError, ValueError):
    """A checkpoint that is incomplete, corrupt, or whose weights do not match its config."""


class PublishError(ZooError, RuntimeError):
    """Publishing a checkpoint failed or was refused."""


class WriteError(ZooError, OSError):
    """A file or directory could not be written (permissions, a full disk, a path that
    cannot hold files)."""


class DataError(ZooError, ValueError):
    """Data that cannot be found or is not in the expected on-disk format or shape."""


class TrainingDivergedError(ZooError, ArithmeticError):
    """The training loss became nan or infinite."""


def os_error_line(err: OSError) -> str:
    """One line for an ``OSError`` of a path a user gave: what failed and on which path."""
    where = f" ({err.filename})" if err.filename else ""
    return f"{err.strerror or err}{where}: check the paths given"
