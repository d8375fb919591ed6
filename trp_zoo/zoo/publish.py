"""Publishing a checkpoint: to huggingface.co, to a self-hosted hub mirror, or to a directory.

- huggingface.co (or whatever ``HF_ENDPOINT`` names) through ``HfApi``: ``create_repo``
  then ``upload_folder`` as one commit;
- a self-hosted mirror (olah) by committing the files into the git repo olah serves,
  ``<mirror_dir>/models/<org>/<name>``; each publish is a new commit on the branch;
- a plain directory ``<directory>/<org>/<name>`` (a shared file system, say), loadable
  with ``trp_zoo.load(path)`` or ``timm.create_model("local-dir:PATH")``.

Every checkpoint is checked before it leaves: config readable, weights intact and loadable
into the architecture its config describes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import PublishError
from ..fileio import copy_directory_atomic
from .model_repo import ARCHITECTURE, read_config, read_results
from .saving import save_pretrained

# olah (0.5.4) reads binary files of this size as Git LFS pointers and fails serving them
OLAH_BAD_SIZES = range(121, 150)
GIT_IDENTITY = ("trp-zoo", "trp-zoo@localhost")


@dataclass(frozen=True)
class Published:
    """Where a checkpoint went."""

    target: str  # "hub", "mirror" or "directory"
    repo_id: str
    location: str  # a URL or a path
    revision: str | None = None  # the branch
    commit: str | None = None  # the commit id (hub, mirror)
    changed: bool = True  # False when the mirror already held exactly these files


def _split_repo_id(repo_id: str) -> tuple[str, str]:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    org, sep, name = repo_id.partition("/")
    if not sep or not org or not name or "/" in name or name in (".", "..") or org in (".", ".."):
        raise PublishError(f"{repo_id!r} is not a repo id: use ORG/NAME, e.g. trp-zoo/my_model")
    try:  # the hub's own rule on characters and length
        validate_repo_id(repo_id)
    except HFValidationError as err:
        why = str(err).split(": '")[0].rstrip(".")
        raise PublishError(
            f"{repo_id!r} is not a repo id ({why}): use ORG/NAME, e.g. trp-zoo/my_model"
        ) from None
    return org, name


def check_repo_id(repo_id: str) -> None:
    """Refuse a repo id that is not ``ORG/NAME`` (``PublishError``)."""
    _split_repo_id(repo_id)


def check_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint that would not load: it is loaded once, through timm, here."""
    import timm

    path = Path(checkpoint_dir)
    config = read_config(path)
    if config["architecture"] != ARCHITECTURE:
        raise PublishError(
            f"{path} holds a {config['architecture']!r} model, not a trp-zoo factorized "
            "checkpoint; publish it with timm's push_to_hf_hub instead"
        )
    read_results(path)  # a damaged results.json would be published, then break info
    timm.create_model(f"local-dir:{path}", pretrained=True)


def _checkpoint_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def _is_binary(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def check_mirror_files(checkpoint_dir: Path) -> None:
    """Refuse files a self-hosted olah hub cannot serve (binary, 121-149 bytes)."""
    for f in _checkpoint_files(checkpoint_dir):
        if f.stat().st_size in OLAH_BAD_SIZES and _is_binary(f):
            raise PublishError(
                f"{f} is a {f.stat().st_size}-byte binary file; olah cannot serve binary files "
                f"of {OLAH_BAD_SIZES.start}-{OLAH_BAD_SIZES.stop - 1} bytes (it reads them as Git "
                "LFS pointers and fails). Remove it from the checkpoint or change its size."
            )


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo, check=True, capture_output=True, text=True, timeout=120
        )
    except FileNotFoundError:
        raise PublishError("publishing to a mirror needs git on PATH") from None
    except subprocess.CalledProcessError as err:
        raise PublishError(
            f"git {' '.join(args)} failed in {repo}: {err.stderr.strip() or err.stdout.strip()}"
        ) from None
    return done.stdout.strip()


def _identity(repo: Path) -> list[str]:
    """``-c user.name=... -c user.email=...`` where git has no identity configured."""
    out = []
    for key, value in zip(("user.name", "user.email"), GIT_IDENTITY, strict=True):
        found = subprocess.run(
            ["git", "config", key], cwd=repo, capture_output=True, text=True, check=False
        )
        if not found.stdout.strip():
            out += ["-c", f"{key}={value}"]
    return out


def publish_to_mirror(
    checkpoint_dir: Path,
    repo_id: str,
    mirror_dir: str | os.PathLike[str],
    *,
    revision: str = "main",
    commit_message: str,
) -> Published:
    """Commit the checkpoint's files into ``<mirror_dir>/models/<org>/<name>`` on ``revision``."""
    org, name = _split_repo_id(repo_id)
    check_mirror_files(checkpoint_dir)
    repo = Path(mirror_dir) / "models" / org / name
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", revision)
    elif _git(repo, "status", "--porcelain"):
        raise PublishError(
            f"{repo} has uncommitted changes; commit or discard them (git -C {repo} status) "
            "before publishing into it"
        )
    else:
        branches = _git(repo, "branch", "--list", "--format=%(refname:short)").splitlines()
        _git(repo, "checkout", "-q", *(() if revision in branches else ("-b",)), revision)
    for item in repo.iterdir():
        if item.name == ".git":
            continue
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
    for f in _checkpoint_files(checkpoint_dir):
        shutil.copy2(f, repo / f.name)
    _git(repo, "add", "-A")
    changed = bool(_git(repo, "status", "--porcelain"))
    if changed:
        _git(repo, *_identity(repo), "commit", "-q", "-m", commit_message)
    commit = _git(repo, "rev-parse", "HEAD")
    return Published("mirror", repo_id, str(repo), revision, commit, changed)


def publish_to_hub(
    checkpoint_dir: Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    commit_message: str,
    token: str | None = None,
) -> Published:
    """Upload the checkpoint to the hub ``HF_ENDPOINT`` names (huggingface.co by default)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.errors import HTTPError as TransportOrHTTPError  # its HTTP client's

    from .. import __version__

    api = HfApi(token=token, library_name="trp-zoo", library_version=__version__)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=checkpoint_dir,
            commit_message=commit_message,
            revision=revision,
            allow_patterns=[f.name for f in _checkpoint_files(checkpoint_dir)],
        )
    except HfHubHTTPError as err:
        raise PublishError(
            f"publishing to {api.endpoint}/{repo_id} failed: {err}. Log in with `hf auth login` "
            "(or set HF_TOKEN) with a token that may write to that namespace."
        ) from None
    except OfflineModeIsEnabled:
        raise PublishError(
            f"publishing to {api.endpoint} needs the network, but HF_HUB_OFFLINE is set: unset "
            "it, or publish to a self-hosted mirror (--mirror-dir) or a directory (--to-dir)"
        ) from None
    except (TransportOrHTTPError, ConnectionError) as err:  # the hub cannot be reached
        raise PublishError(
            f"cannot reach the hub at {api.endpoint} ({err}): check the network and HF_ENDPOINT, "
            "or publish to a self-hosted mirror (--mirror-dir) or a directory (--to-dir)"
        ) from None
    return Published("hub", repo_id, info.commit_url, revision or "main", info.oid)


def _refuse_ignored_options(
    mirror_dir: object, directory: object, revision: str | None, private: bool, message: str | None
) -> None:
    """Options the chosen target has no use for are refused, never silently dropped."""
    if directory is not None:
        given = [f for f, v in (("--revision", revision), ("--message", message)) if v is not None]
        given += ["--private"] if private else []
        if given:
            raise PublishError(
                f"{' and '.join(given)} would be ignored: --to-dir copies the files, with no "
                "branch, commit or visibility; drop them, or publish with --mirror-dir or to "
                "the hub"
            )
    elif mirror_dir is not None and private:
        raise PublishError(
            "--private would be ignored: a mirror directory has no visibility setting; drop "
            "it, or publish to the hub"
        )


def publish(
    checkpoint_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    mirror_dir: str | os.PathLike[str] | None = None,
    directory: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
) -> Published:
    """Publish a checkpoint directory as ``repo_id`` (``ORG/NAME``), after checking it loads.

    With ``mirror_dir``: commit it into a self-hosted (olah) mirror directory. With
    ``directory``: copy it to ``<directory>/<ORG>/<NAME>``. Otherwise: upload it to the
    hub (``HF_ENDPOINT``, default huggingface.co) with ``HfApi``; ``private`` and ``token``
    apply there. ``revision`` is the branch (default ``main``).
    """
    if mirror_dir is not None and directory is not None:
        raise PublishError("give mirror_dir or directory, not both")
    _refuse_ignored_options(mirror_dir, directory, revision, private, commit_message)
    path = Path(checkpoint_dir)
    org, name = _split_repo_id(repo_id)
    if revision is not None and (revision.startswith("refs/") or revision in ("@", "HEAD")):
        raise PublishError(
            f"revision {revision!r} is not a branch name: give a plain branch such as main or v1"
        )
    for flag, root in (("--to-dir", directory), ("--mirror-dir", mirror_dir)):
        if root is None:
            continue
        dest = (Path(root) / ("models" if flag == "--mirror-dir" else "") / org / name).resolve()
        if dest != path.resolve() and dest.is_relative_to(path.resolve()):
            raise PublishError(
                f"{flag} {root} would put the copy inside the checkpoint {path} it copies: "
                "choose a directory outside it"
            )
    check_checkpoint(path)
    message = commit_message or f"Publish {name} with trp-zoo"
    if mirror_dir is not None:
        return publish_to_mirror(
            path, repo_id, mirror_dir, revision=revision or "main", commit_message=message
        )
    if directory is not None:
        dest = copy_directory_atomic(path, Path(directory) / org / name)
        return Published("directory", repo_id, str(dest))
    return publish_to_hub(
        path,
        repo_id,
        revision=revision,
        private=private,
        commit_message=message,
        token=token,
    )


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    mirror_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    **save_kwargs: Any,
) -> Published:
    """Save ``model`` (``save_pretrained(**save_kwargs)``) to a temporary directory, publish it."""
    import tempfile

    kwargs: Mapping[str, Any] = {"repo_id": repo_id, **save_kwargs}
    with tempfile.TemporaryDirectory(prefix="trp_zoo_push_") as tmp:
        ckpt = save_pretrained(model, Path(tmp) / "checkpoint", **kwargs)
        return publish(
            ckpt,
            repo_id,
            mirror_dir=mirror_dir,
            revision=revision,
            private=private,
            commit_message=commit_message,
            token=token,
        )
