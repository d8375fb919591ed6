"""Checkpoint files: a timm-compatible Hugging Face model repo in a directory.

A checkpoint holds ``config.json`` (timm's format: ``architecture`` is the factorized
entrypoint, ``model_args`` the base architecture, scheme and rank plan, ``pretrained_cfg``
the input size and normalization), ``model.safetensors``, ``results.json`` (measured
numbers and provenance) and ``README.md`` (the model card).

``model.safetensors`` carries a SHA-256 of its tensor data in its header metadata, so a
damaged file is caught at load time even where the header still parses.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import CheckpointError
from ..fileio import write_json
from ..modules import close_matches
from .card import TRP_ARXIV, TRP_PAPER
from .results import validate_speedups

ARCHITECTURE = "trp_factorized"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
RESULTS_NAME = "results.json"
CARD_NAME = "README.md"
DIGEST_KEY = "trp_zoo.sha256"

# pretrained_cfg keys that describe input preprocessing (timm's data_config)
_DATA_KEYS = {
    "input_size",
    "interpolation",
    "mean",
    "std",
    "crop_pct",
    "crop_mode",
    "test_input_size",
    "test_crop_pct",
}
# keys a checkpoint's pretrained_cfg must not take over from its base: they describe the
# base's own weights (where they are, their tag, license and paper)
_SOURCE_KEYS = {"url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source"}
_BASE_PROVENANCE = ("tag", "license", "origin_url", "paper_name", "paper_ids", "notes")


# ----------------------------------------------------------------------------- weights


def _data_digest(blob: bytes | memoryview) -> str:
    header_len = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + header_len :]).hexdigest()


def write_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write ``state_dict`` with safetensors, recording a SHA-256 of the tensor data."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {"format": "pt"}
    digest = _data_digest(safetensors.torch.save(tensors, metadata=meta))
    blob = safetensors.torch.save(tensors, metadata={**meta, DIGEST_KEY: digest})
    Path(path).write_bytes(blob)


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is corrupt ({what}). Download it again (trp_zoo.load(..., force_download=True) "
        "or `hf cache delete`), or save the checkpoint again with trp_zoo.save_pretrained."
    )


def verify_weights(path: str | os.PathLike[str]) -> None:
    """Check that a safetensors file parses and that its data matches its recorded SHA-256.

    Files without a recorded digest (written by other tools) are only parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: a checkpoint needs {WEIGHTS_NAME} next to its {CONFIG_NAME} "
            "(save it with trp_zoo.save_pretrained)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as err:
        raise _corrupt(path, f"safetensors cannot read it: {err}") from None
    expected = meta.get(DIGEST_KEY)
    if expected is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        fh.seek(8 + header_len)
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise _corrupt(
            path, "its tensor data does not match the SHA-256 recorded when it was saved"
        )


def weights_mismatch(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, skip: Sequence[str] = ()
) -> list[str]:
    """Differences between a state dict and what ``model`` expects (empty when they match).

    Keys starting with a prefix in ``skip`` are ignored (a head being replaced, say).
    """
    expected = model.state_dict()

    def skipped(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in skip)

    out = []
    for key, tensor in expected.items():
        if skipped(key):
            continue
        if key not in state_dict:
            out.append(f"{key} is missing from the weights")
        elif tuple(state_dict[key].shape) != tuple(tensor.shape):
            out.append(
                f"{key} has shape {tuple(state_dict[key].shape)} in the weights but "
                f"{tuple(tensor.shape)} in the architecture"
            )
    out += [
        f"{k} is in the weights but not in the architecture"
        for k in state_dict
        if k not in expected and not skipped(k)
    ]
    return out


# ----------------------------------------------------------------------------- config


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file, with a clear error when it is damaged."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err}): the file is damaged; download or save it again"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return obj


def read_config(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory."""
    path = Path(checkpoint_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{Path(checkpoint_dir)} has no {CONFIG_NAME}, so it is not a checkpoint directory "
            "(write one with trp_zoo.save_pretrained)"
        )
    config = read_json(path)
    for key in ("architecture", "pretrained_cfg"):
        if key not in config:
            raise CheckpointError(f"{path} lacks {key!r}: it is not a timm model config")
    if config["architecture"] == ARCHITECTURE and "model_args" not in config:
        raise CheckpointError(
            f"{path} lacks 'model_args' (base_architecture, scheme, rank_plan): the file is "
            "damaged; save or download the checkpoint again"
        )
    shape: dict[str, tuple[Any, type]] = {"pretrained_cfg": (config["pretrained_cfg"], dict)}
    if "model_args" in config:
        shape["model_args"] = (config["model_args"], dict)
    if config["architecture"] == ARCHITECTURE and isinstance(config.get("model_args"), dict):
        args = config["model_args"]
        for key, kind in (
            ("base_architecture", str),
            ("scheme", str),
            ("rank_plan", dict),
            ("num_classes", int),
            ("in_chans", int),
        ):
            if key in args:
                shape[f"model_args.{key}"] = (args[key], kind)
    _check_shape(path, shape)
    return config


def read_results(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``results.json`` of a checkpoint directory, or None when it has none."""
    path = Path(checkpoint_dir) / RESULTS_NAME
    if not path.is_file():
        return None
    results = read_json(path)
    shape: dict[str, tuple[Any, type]] = {
        k: (results[k], dict) for k in ("metrics", "architecture") if k in results
    }
    if "speedups" in results:
        shape["speedups"] = (results["speedups"], list)
    _check_shape(path, shape)
    speedups = results.get("speedups", [])
    _check_shape(path, {f"speedups[{i}]": (entry, dict) for i, entry in enumerate(speedups)})
    try:
        validate_speedups(speedups)
    except ValueError as err:
        raise CheckpointError(
            f"{path}: {err}. The file is damaged; measure the speed-up again (python -m "
            "runtime.build_engine CHECKPOINT records it)"
        ) from None
    return results


def _check_shape(path: Path, fields: Mapping[str, tuple[Any, type]]) -> None:
    """Refuse a JSON field of the wrong type, naming the file and the field."""
    for name, (value, kind) in fields.items():
        if not isinstance(value, kind):
            expected = {dict: "an object", list: "a list", str: "a string", int: "an integer"}[kind]
            raise CheckpointError(
                f"{path}: {name} must be {expected}, got {type(value).__name__} {value!r:.40}: "
                "the file is damaged; save or download the checkpoint again"
            )


def _pretrained_cfg_fields() -> set[str]:
    from timm.models import PretrainedCfg

    return {f.name for f in fields(PretrainedCfg)}


def check_pretrained_cfg(overrides: Mapping[str, Any]) -> None:
    """Reject keys timm's ``PretrainedCfg`` does not have or that name a weight source."""
    allowed = _pretrained_cfg_fields() - _SOURCE_KEYS - {"architecture", "custom_load"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        hint = close_matches(bad[0], allowed)
        raise ValueError(
            f"pretrained_cfg cannot set {', '.join(map(repr, bad))}.{hint} It takes timm "
            "PretrainedCfg fields such as input_size, mean, std, crop_pct, interpolation."
        )


def write_config(
    model: nn.Module,
    path: Path,
    *,
    model_args: Mapping[str, Any],
    pretrained_cfg: Mapping[str, Any],
    label_names: Sequence[str] | None,
    license: str,
) -> dict[str, Any]:
    """Write ``config.json`` with timm's own writer, then drop what described the base's weights.

    ``pretrained_cfg`` overrides go through timm's data config (input size, mean/std, crop)
    or straight into the saved ``pretrained_cfg`` (other fields).
    """
    from timm.models._hub import save_config_for_hf

    check_pretrained_cfg(pretrained_cfg)
    data_config = {k: v for k, v in pretrained_cfg.items() if k in _DATA_KEYS}
    other = {k: v for k, v in pretrained_cfg.items() if k not in _DATA_KEYS}
    model_config: dict[str, Any] = {"pretrained_cfg": {**other, "architecture": ARCHITECTURE}}
    if label_names is not None:
        model_config["label_names"] = list(label_names)
    if not hasattr(model, "pretrained_cfg"):
        raise ValueError(
            "save_pretrained needs a timm model (created by timm.create_model, then decomposed): "
            "this one has no pretrained_cfg"
        )
    try:
        save_config_for_hf(
            model,
            str(path),
            model_config=model_config,
            model_args=dict(model_args),
            data_config=data_config or None,
        )
    except ValueError as err:  # timm refuses a size or channel count the model does not take
        raise ValueError(
            f"pretrained_cfg input_size {tuple(data_config.get('input_size', ()))} does not fit "
            f"this model: {err} Save with the input size the model takes, or create the model "
            "at the size you want (timm.create_model(..., img_size=H) for fixed-size models)"
        ) from None
    config = read_json(path)
    cfg = config["pretrained_cfg"]
    for key in _BASE_PROVENANCE:
        if key not in pretrained_cfg:
            cfg.pop(key, None)
    cfg.setdefault("license", license)
    cfg.setdefault("paper_name", TRP_PAPER)
    cfg.setdefault("paper_ids", TRP_ARXIV)
    write_json(path, config)
    return config
