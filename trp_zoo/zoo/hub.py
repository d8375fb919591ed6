"""Finding and fetching checkpoints: ``trp_zoo.load`` and ``trp_zoo.model_info``.

A source is resolved in this order:

1. ``hf-hub:ORG/NAME[@REV]`` and ``local-dir:PATH`` mean what they mean to timm; a
   ``PathLike`` or a string that looks like a path (``./x``, ``/x``, ``~/x``, ``a/b/c``)
   is a checkpoint directory;
2. a name in the local store (``$TRP_ZOO_HOME/models``): a model trained on this machine
   wins over the published one of the same name, so a recipe's result loads by name at
   once, offline; load the published one by its repo id (``trp-zoo/NAME``);
3. a registry name: its hub repo;
4. an existing directory (``runs/ckpt``);
5. ``ORG/NAME``: a hub repo.

Downloads go through huggingface_hub (``snapshot_download``/``hf_hub_download``), so its
cache, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` apply; the model itself is
built by ``timm.create_model`` from the downloaded config.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from timm.models import parse_model_name
from torch import nn

from ..errors import NotCachedError, UnknownModelError, WeightsNotPublishedError, ZooError
from ..modules import close_matches
from .model_repo import (
    CARD_NAME,
    CONFIG_NAME,
    RESULTS_NAME,
    WEIGHTS_NAME,
    read_config,
    read_results,
)
from .registry import REGISTRY, ZooEntry, list_models
from .store import local_path, reading, store_dir

logger = logging.getLogger(__name__)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# a source prefix as timm reads one (``parse_model_name``): hf-hub:, local-dir:, ...
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+._-]+:")


@dataclass(frozen=True)
class Resolved:
    """Where a source points: a checkpoint directory or a hub repo."""

    source: str
    origin: str  # "directory", "local-store" or "hub"
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    entry: ZooEntry | None = None


def _parse_prefixed(source: str) -> tuple[str, str]:
    """timm's own reading of ``hf-hub:`` / ``local-dir:`` names (``parse_model_name``)."""
    try:
        prefix, ident = parse_model_name(source)
    except ValueError as err:
        raise UnknownModelError(
            f"{err} trp-zoo reads hf-hub:ORG/NAME[@REVISION] and local-dir:PATH, as timm does"
        ) from None
    assert prefix is not None  # ``_PREFIX`` matched
    return prefix, ident


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1


def resolve(source: str | os.PathLike[str], revision: str | None = None) -> Resolved:
    """Resolve a model name, repo id or path (see the module docstring for the order)."""
    if isinstance(source, os.PathLike):
        return _directory(str(source), os.fspath(source))
    src = str(source)
    if _PREFIX.match(src):
        prefix, ident = _parse_prefixed(src)
        if prefix == "local-dir":
            return _directory(src, ident)
        repo, _, rev = ident.partition("@")
        return Resolved(src, "hub", repo_id=repo, revision=rev or revision)
    if _looks_like_path(src):
        return _directory(src, src)
    stored = local_path(src)
    if stored is not None:
        return Resolved(src, "local-store", path=stored, entry=REGISTRY.get(src))
    if src in REGISTRY:
        entry = REGISTRY[src]
        return Resolved(src, "hub", repo_id=entry.repo_id, revision=revision, entry=entry)
    if os.path.isdir(src):
        return _directory(src, src)
    if _REPO_ID.fullmatch(src):
        return Resolved(src, "hub", repo_id=src, revision=revision)

    raise UnknownModelError(
        f"unknown model {src!r}.{close_matches(src, list_models())} `python -m trp_zoo list` "
        "shows the zoo's names; a hub repo id looks like ORG/NAME, a checkpoint directory "
        "must exist."
    )


def _directory(source: str, path: str) -> Resolved:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UnknownModelError(f"{source!r}: no such checkpoint directory {p}")
    return Resolved(source, "directory", path=p)


# ----------------------------------------------------------------------------- downloads


def _not_published(entry: ZooEntry, why: str) -> WeightsNotPublishedError:
    return WeightsNotPublishedError(
        f"no weights for {entry.name!r} are available: {why}, and none were trained on this "
        f"machine ({store_dir() / entry.name} does not exist). No trp-zoo weights are "
        f"published yet. Train them with `{entry.recipe}` (it records the model locally as "
        f"{entry.name!r}), then publish with `{entry.publish_hint()}`."
    )


def _hub_error(
    err: Exception,
    repo_id: str,
    revision: str | None,
    entry: ZooEntry | None,
    cache_dir: str | Path | None,
) -> ZooError:
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    if isinstance(err, LocalEntryNotFoundError):
        reason = (
            "HF_HUB_OFFLINE=1 is set"
            if constants.HF_HUB_OFFLINE
            else f"the hub at {constants.ENDPOINT} could not be reached"
        )
        if entry is not None and not entry.published:
            return _not_published(entry, f"{where} is not in the Hugging Face cache and {reason}")
        return NotCachedError(
            f"{where} is not in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) "
            f"and {reason}. "
            "Download it once with the hub reachable (unset HF_HUB_OFFLINE, check HF_ENDPOINT); "
            "it then loads offline from the cache."
        )
    if entry is not None and not entry.published:
        return _not_published(entry, f"{where} is not on {constants.ENDPOINT}")
    what = "revision" if isinstance(err, RevisionNotFoundError) else "repository or file"
    return UnknownModelError(
        f"{where}: {what} not found on {constants.ENDPOINT}. Check the repo id and revision; "
        "for a private repo log in (`hf auth login`) or set HF_TOKEN; for a self-hosted hub "
        "set HF_ENDPOINT."
    )


_HUB_ERRORS = (
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    EntryNotFoundError,
)


def download_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
) -> Path:
    """One file of a hub repo, through huggingface_hub's cache (clear errors)."""
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
            )
        )
    except _HUB_ERRORS as err:
        raise _hub_error(err, repo_id, revision, None, cache_dir) from None


def download(
    resolved: Resolved,
    *,
    weights: bool = True,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
) -> Path:
    """The checkpoint directory of a resolved source (a hub snapshot is downloaded)."""
    if resolved.path is not None:
        read_config(resolved.path)
        return resolved.path
    assert resolved.repo_id is not None
    patterns = [CONFIG_NAME, RESULTS_NAME, CARD_NAME] + ([WEIGHTS_NAME] if weights else [])
    try:
        snapshot = Path(
            snapshot_download(
                resolved.repo_id,
                revision=resolved.revision,
                cache_dir=cache_dir,
                allow_patterns=patterns,
                force_download=force_download,
            )
        )
    except _HUB_ERRORS as err:
        raise _hub_error(
            err, resolved.repo_id, resolved.revision, resolved.entry, cache_dir
        ) from None
    read_config(snapshot)
    return snapshot


def _timm_name(resolved: Resolved, checkpoint_dir: Path) -> str:
    if resolved.repo_id is not None:
        # pin the commit the snapshot came from: config and weights stay a matching pair
        return f"hf-hub:{resolved.repo_id}@{checkpoint_dir.name}"
    return f"local-dir:{checkpoint_dir}"


def load(
    source: str | os.PathLike[str],
    pretrained: bool = True,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Load a zoo model by registry name, local-store name, hub repo id or directory.

    ``pretrained=False`` builds the architecture from the config's rank plan with random
    weights. Other keyword arguments go to ``timm.create_model`` (``num_classes``,
    ``in_chans``, ``features_only``, ...). The model carries timm's ``pretrained_cfg``
    (input size, mean/std, crop, and where it came from).
    """
    import timm

    with reading(os.fspath(source)):  # a stored name is not replaced while it is read
        resolved = resolve(source, revision)
        checkpoint = download(
            resolved, weights=pretrained, cache_dir=cache_dir, force_download=force_download
        )
        logger.info("loading %s from %s (%s)", resolved.source, checkpoint, resolved.origin)
        return timm.create_model(
            _timm_name(resolved, checkpoint),
            pretrained=pretrained,
            cache_dir=cache_dir,
            **kwargs,
        )


def model_info(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """A checkpoint's parsed config and measured results, without loading its weights.

    Keys: ``name``, ``origin`` (``local-store``, ``directory`` or ``hub``), ``location``,
    ``architecture``, ``base_architecture``, ``scheme``, ``rank_plan``, ``num_classes``,
    ``pretrained_cfg`` (input_size, mean, std, crop_pct, ...), ``model_args``, ``config``
    (all of config.json), ``metrics`` (top1, macs, ...; empty when none were recorded),
    ``speedups``, ``provenance`` and ``results`` (all of results.json, or None).
    """
    with reading(os.fspath(source)):
        resolved = resolve(source, revision)
        checkpoint = download(resolved, weights=False, cache_dir=cache_dir)
        config = read_config(checkpoint)
        results = read_results(checkpoint)
    args = config.get("model_args", {})
    location = (
        f"{resolved.repo_id}@{checkpoint.name}" if resolved.repo_id is not None else str(checkpoint)
    )
    return {
        "name": (results or {}).get("name") or resolved.source,
        "origin": resolved.origin,
        "location": location,
        "architecture": config["architecture"],
        "base_architecture": args.get("base_architecture"),
        "scheme": args.get("scheme"),
        "rank_plan": args.get("rank_plan", {}),
        "num_classes": config.get("num_classes"),
        "pretrained_cfg": config["pretrained_cfg"],
        "model_args": args,
        "config": config,
        "metrics": (results or {}).get("metrics", {}),
        "speedups": (results or {}).get("speedups", []),
        "provenance": (results or {}).get("provenance", {}),
        "results": results,
    }
