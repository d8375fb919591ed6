"""INT8 engines: static quantization of an fp32 ONNX graph to an explicit QDQ graph.

ONNX Runtime's ``quant_pre_process`` (shape inference, graph clean-up), then
``quantize_static`` with per-channel int8 weights and activations calibrated on training
images (``minmax``, ``entropy`` or ``percentile``). The result is a plain ONNX file with
QuantizeLinear/DequantizeLinear pairs that ONNX Runtime runs with int8 kernels and
TensorRT builds with its INT8 flag (explicit quantization: no calibrator, no cache).
Activations are uint8 for ONNX Runtime (its fastest CPU kernels) and symmetric int8 for
TensorRT (the only form it accepts).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .data import EvalData, random_images
from .errors import ExportError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_BATCH = 32
NAMESPACE_KEY = "namespace"  # torch.onnx (dynamo) records each node's module path here


@dataclass(frozen=True)
class Calibration:
    """The images and settings an int8 engine is calibrated with.

    ``record()`` is what the engine's metadata keeps and its cache key compares: change
    the method, the images or the layers kept in fp32 and the engine is rebuilt.
    """

    images: np.ndarray = field(repr=False, compare=False)  # float32 (N, C, H, W), preprocessed
    data: str  # where the images came from
    method: str = "minmax"
    keep_fp32: tuple[str, ...] = ()  # module-path patterns left in float

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
                f"got {self.method!r}"
            )
        if self.images.ndim != 4 or len(self.images) == 0:
            raise ValueError(
                f"calibration images must be a non-empty (N, C, H, W) array, got shape "
                f"{self.images.shape}"
            )

    @property
    def data_sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.images, np.float32).tobytes()).hexdigest()

    def record(self, scheme: dict[str, Any]) -> dict[str, Any]:
        """Metadata: the quantization ``scheme`` plus method, image count and data."""
        return {
            **scheme,
            "calibration_method": self.method,
            "calibration_images": len(self.images),
            "calibration_data": self.data,
            "calibration_sha256": self.data_sha256,
            "keep_fp32": list(self.keep_fp32),
        }


def calibration_from_data(
    data: EvalData, *, method: str = "minmax", keep_fp32: Sequence[str] = ()
) -> Calibration:
    """Every image of ``data`` (already cut to the wanted count) as a calibration set."""
    batches = [images.numpy() for images, _ in data.batches(256)]
    if not batches:
        raise ValueError(f"no images to calibrate on in {data.description}")
    return Calibration(
        np.concatenate(batches).astype(np.float32),
        data.description,
        method,
        tuple(keep_fp32),
    )


def random_calibration(input_size: Sequence[int], count: int = 16) -> Calibration:
    """Standard-normal images: scales for timing a graph, with no accuracy meaning."""
    return calibration_from_data(random_images(input_size, count, seed=1))


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty where it reports none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def reduced_weight_range(backend: str) -> bool:
    """Whether int8 weights keep to 7 bits (``reduce_range``): ONNX Runtime on x86 CPUs
    without VNNI. Their u8s8 kernels (AVX2, AVX-512F) add pairs of uint8 x int8 products in
    saturating int16 (``vpmaddubsw``), which 8-bit weights can overflow; measured on an AVX2
    CPU, the tiny test model's int8 logits were off by 27% of their range at 8 bits."""
    if backend == "tensorrt" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return not any("vnni" in flag for flag in cpu_flags())


def scheme_for(backend: str) -> dict[str, Any]:
    """How a backend's int8 graph is quantized (both variants of a model alike)."""
    reduced = reduced_weight_range(backend)
    return {
        "format": "QDQ",
        "weights": "int8 per-channel symmetric" + (", 7-bit range (no VNNI)" if reduced else ""),
        "activations": "int8 symmetric" if backend == "tensorrt" else "uint8 asymmetric",
    }


def _module_paths(node: onnx.NodeProto) -> list[str]:
    """The module paths a node came from (``layer1``, ``layer1.0``, ``layer1.0.conv1``, ...)."""
    for prop in node.metadata_props:
        if prop.key == NAMESPACE_KEY:
            scopes = [part.split(":", 1)[0].strip() for part in prop.value.split("/")]
            return [s for s in scopes[:-1] if s]  # the last scope is the aten op
    return []


def nodes_matching(model: onnx.ModelProto, patterns: Sequence[str]) -> dict[str, list[str]]:
    """``{pattern: [node names]}``: nodes whose name or module path matches (fnmatch)."""
    found: dict[str, list[str]] = {p: [] for p in patterns}
    for node in model.graph.node:
        names = [node.name, *_module_paths(node)]
        for pattern in patterns:
            if any(fnmatch.fnmatchcase(n, pattern) for n in names):
                found[pattern].append(node.name)
    return found


def _batches(images: np.ndarray, input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(
                {input_name: np.ascontiguousarray(images[i : i + CALIBRATION_BATCH])}
                for i in range(0, len(images), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return Reader()


def quantize_qdq(
    onnx_path: str | os.PathLike[str],
    qdq_path: str | os.PathLike[str],
    calibration: Calibration,
    *,
    backend: str = "onnxruntime",
) -> dict[str, Any]:
    """Write the int8 QDQ graph of ``onnx_path`` to ``qdq_path`` (atomically).

    Returns facts for the engine metadata: the scheme, the nodes kept in fp32 and the
    number of quantized tensors. A ``keep_fp32`` pattern that matches no node is an error.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, qdq_path = Path(onnx_path), Path(qdq_path)
    symmetric = backend == "tensorrt"
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    qdq_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=qdq_path.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        input_name = model.graph.input[0].name
        matches = nodes_matching(model, calibration.keep_fp32)
        missing = [p for p, nodes in matches.items() if not nodes]
        if missing:
            examples = sorted({s for n in model.graph.node for s in _module_paths(n)[-1:]})[:6]
            raise ValueError(
                f"--keep-fp32 {missing[0]!r} matches no layer of {onnx_path.name}; patterns "
                f"match module paths (fnmatch), e.g. {', '.join(examples)} or 'layer4.*'"
            )
        kept = sorted({n for nodes in matches.values() for n in nodes})
        out = Path(tmp) / "qdq.onnx"
        try:
            quantize_static(
                str(pre),
                str(out),
                _batches(calibration.images, input_name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduced_weight_range(backend),
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[calibration.method],
                nodes_to_exclude=kept,
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            )
        except Exception as err:  # onnxruntime raises many types from calibration
            raise ExportError(
                f"int8 quantization of {onnx_path} failed: {str(err).strip()[:300]}"
            ) from err
        quantized = onnx.load(str(out))
        shutil.move(str(out), qdq_path.parent / f".{qdq_path.name}.tmp")
        os.replace(qdq_path.parent / f".{qdq_path.name}.tmp", qdq_path)
    ops = [n.op_type for n in quantized.graph.node]
    return {
        "qdq_onnx": str(qdq_path),
        "quantized_tensors": ops.count("QuantizeLinear"),
        "kept_fp32_nodes": kept,
    }


def float_compute_nodes(
    model: onnx.ModelProto, op_types: Sequence[str] = ("Conv", "Gemm")
) -> list[str]:
    """Names of ``op_types`` nodes whose weight input is a plain float tensor (not dequantized)."""
    produced_by = {out: node.op_type for node in model.graph.node for out in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in op_types and produced_by.get(node.input[1]) != "DequantizeLinear"
    ]
