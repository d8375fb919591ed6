"""ONNX export with a dynamic batch dimension, validated right after export.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), the
default and maintained path since torch 2.9; the TorchScript exporter is deprecated.
Batch norm is folded into the preceding conv, each ``FactorizedConv2d`` becomes two
plain ``Conv`` nodes (its ``first`` and ``second`` convs) and each ``FactorizedLinear``
two ``MatMul``/``Gemm`` nodes, which every backend fuses and schedules like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from trp_zoo.fileio import sha256_file, write_bytes, write_json

from .errors import ExportError
from .spec import check_input_size

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
MIN_OPSET = 17


@dataclass(frozen=True)
class ExportedModel:
    """An exported, checked ONNX file."""

    path: Path
    sha256: str
    opset: int
    input_size: tuple[int, int, int]
    op_counts: dict[str, int]
    max_abs_diff: float  # ONNX Runtime vs PyTorch on random inputs, right after export


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over a model's structure (its repr) and every parameter and buffer."""
    digest = hashlib.sha256(f"{type(model).__qualname__}\n{model}".encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_size: Sequence[int],
    *,
    opset: int = DEFAULT_OPSET,
    check_batch: int = 3,
    seed: int = 0,
    reuse: bool = True,
) -> ExportedModel:
    """Export ``model`` (eval mode, fp32, CPU) to ``path`` and validate the file.

    The graph has one input ``input`` of shape ``(batch, C, H, W)`` with a dynamic batch
    and one output ``logits``. After writing, the file must pass ``onnx.checker`` (full
    check, including strict shape inference) and ONNX Runtime must reproduce PyTorch's
    outputs on ``check_batch`` random images (a batch size other than the tracing one, so
    the dynamic batch is exercised). With ``reuse``, a file exported earlier from the same
    model (weights and structure), opset, input size and torch version is kept as it is;
    its sidecar ``<path>.export.json`` records what it was exported from and the check results.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: use {MIN_OPSET} or newer")
    if opset > onnx.defs.onnx_opset_version():  # the exporter would fall back to its own
        raise ValueError(
            f"opset {opset} is newer than the installed onnx {onnx.__version__} knows: use "
            f"{MIN_OPSET} to {onnx.defs.onnx_opset_version()}"
        )
    size = check_input_size(input_size)
    path = Path(path)
    key = {
        "model": model_fingerprint(model),
        "opset": opset,
        "input_size": list(size),
        "torch": torch.__version__,
    }
    if reuse and (previous := _previous_export(path, key)) is not None:
        return previous
    was_training = model.training
    model = model.eval()
    try:
        example = torch.randn(2, *size, generator=torch.Generator().manual_seed(seed))
        proto = _export_proto(model, example, opset)
        exported_opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        if exported_opset != opset:
            raise ExportError(
                f"torch {torch.__version__} exported opset {exported_opset} when asked for "
                f"opset {opset}: use --opset {exported_opset}, or {DEFAULT_OPSET} (the default)"
            )
        write_bytes(path, proto.SerializeToString())
        check_onnx(path)
        diff = compare_with_torch(path, model, size, batch=check_batch, seed=seed + 1)
    finally:
        model.train(was_training)
    exported = ExportedModel(
        path=path,
        sha256=sha256_file(path),
        opset=opset,
        input_size=size,
        op_counts=op_counts(onnx.load(str(path), load_external_data=False)),
        max_abs_diff=diff,
    )
    record = {
        **key,
        "sha256": exported.sha256,
        "op_counts": exported.op_counts,
        "max_abs_diff": diff,
    }
    write_json(_sidecar(path), record)
    return exported


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".export.json")


def _previous_export(path: Path, key: dict[str, object]) -> ExportedModel | None:
    """The earlier export at ``path`` when it came from the same ``key`` and is intact."""
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        if any(record.get(k) != v for k, v in key.items()) or not path.is_file():
            return None
        if record["sha256"] != sha256_file(path):
            return None
        return ExportedModel(
            path=path,
            sha256=record["sha256"],
            opset=int(record["opset"]),
            input_size=check_input_size(record["input_size"]),
            op_counts=dict(record["op_counts"]),
            max_abs_diff=float(record["max_abs_diff"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _root_cause(err: BaseException) -> str:
    """One line for an exporter error: the innermost cause and where in the model it arose
    (the exporter's own text spans screens and carries terminal colour codes)."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    text = _ANSI.sub("", str(root)).strip()
    first = text.splitlines()[0].strip() if text else ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', text)
    where = f" (at {Path(frames[-1][0]).name}:{frames[-1][1]})" if frames else ""
    return f"{type(root).__name__}: {first}{where}"


def _export_proto(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                verbose=False,
                dynamic_shapes=({0: batch},),
                optimize=True,
            )
    except Exception as err:  # the exporter raises many types; report one clear error
        raise ExportError(
            f"torch.onnx.export failed for {type(model).__name__}: {_root_cause(err)}. The model "
            "must be traceable by torch.export with a dynamic batch dimension (if the dense "
            "model fails the same way, the architecture itself does not export)"
        ) from err
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto: onnx.ModelProto = program.model_proto
    if len(proto.graph.output) != 1:
        raise ExportError(
            f"the model has {len(proto.graph.output)} outputs; the runtime expects one (logits)"
        )
    return proto


def check_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Run ``onnx.checker`` (full check) and strict shape inference; return the model."""
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise ExportError(f"{path} is not a readable ONNX file: {err}") from err
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as err:
        raise ExportError(f"{path} fails the ONNX checker or shape inference: {err}") from err
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ExportError(f"{path} uses opset {opset}; the runtime needs {MIN_OPSET} or newer")
    out = inferred.graph.output[0].type.tensor_type.shape.dim
    if len(out) != 2:
        raise ExportError(
            f"{path}: expected a (batch, classes) output, shape inference gives {out}"
        )
    return inferred


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph holds."""
    return dict(Counter(node.op_type for node in model.graph.node))


@torch.no_grad()
def compare_with_torch(
    path: str | os.PathLike[str],
    model: nn.Module,
    input_size: Sequence[int],
    *,
    batch: int = 3,
    seed: int = 0,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> float:
    """Max abs difference of ONNX Runtime (CPU) and PyTorch on random inputs; raises if large.

    The tolerance is ``atol + rtol * max|torch output|``.
    """
    import onnxruntime as ort

    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    expected = model(x).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {INPUT_NAME: x.numpy()})
    if got.shape != expected.shape:
        raise ExportError(f"{path}: ONNX output shape {got.shape} != PyTorch {expected.shape}")
    diff = float(np.max(np.abs(got - expected)))
    limit = atol + rtol * float(np.max(np.abs(expected)))
    if not diff <= limit:
        raise ExportError(
            f"{path}: ONNX Runtime output differs from PyTorch by {diff:.3g} (limit {limit:.3g}); "
            "the export is wrong or the model is not deterministic in eval mode"
        )
    return diff


def onnx_io(path: str | os.PathLike[str]) -> tuple[str, str, tuple[int, int, int]]:
    """Input name, output name and ``(C, H, W)`` of a single-input image model."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ExportError(
            f"{path} is not a readable ONNX file ({err}); export it again or rebuild with "
            "python -m runtime.build_engine"
        ) from err
    if not model.graph.node:
        raise ExportError(
            f"{path} holds no ONNX graph (an empty or truncated file); export it again or "
            "rebuild with python -m runtime.build_engine"
        )
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ExportError(
            f"{path}: expected a model with one input and one output, got {len(inputs)} and "
            f"{len(model.graph.output)}; export an image classifier with one input tensor"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    chw = [d.dim_value for d in dims[1:]]
    if len(dims) != 4 or not all(v > 0 for v in chw):
        raise ExportError(
            f"{path}: input {inputs[0].name!r} must be (batch, C, H, W) with fixed C, H, W"
        )
    return inputs[0].name, model.graph.output[0].name, (chw[0], chw[1], chw[2])
