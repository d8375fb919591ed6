"""TensorRT backend (TensorRT >= 10 Python API, pycuda for memory and streams).

Build: ONNX parser -> network (explicit batch, the only mode in TensorRT 10), builder
config with a workspace limit, FP16/BF16 flags (INT8 + FP16 for the explicitly quantized
QDQ graphs of ``runtime.quantize``), one optimization profile over the
requested batch sizes, and a timing cache loaded from and saved to a file so later
builds reuse kernel timings. Run: page-locked host buffers, device buffers sized for the
largest batch, one stream, ``set_tensor_address`` + ``execute_async_v3``; timed with CUDA
events around copy-in, execution and copy-out.

This module imports ``tensorrt`` at the top: import it only after
``tensorrt_unavailable_reason()`` (in ``runtime.backends``) returned None.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorrt as trt

from trp_zoo.fileio import write_bytes

from ..errors import EngineError
from ..spec import BuildOptions, EngineMetadata
from .cuda import Buffer, CudaContext, Stream

_LOGGER = trt.Logger(trt.Logger.WARNING)


def _dims(shape: tuple[int, ...]) -> trt.Dims:
    return trt.Dims(list(shape))


def _shape(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(dims[i] for i in range(len(dims)))


def _parse(network: trt.INetworkDefinition, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")


def _set_precision(builder: trt.Builder, config: trt.IBuilderConfig, precision: str) -> None:
    if precision == "fp16":
        if not builder.platform_has_fast_fp16:
            raise ValueError("this GPU has no fast FP16; build with --precision fp32 or bf16")
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif precision == "int8":
        # explicit quantization: the QDQ graph carries the scales, so no calibrator and no
        # calibration cache; FP16 lets the layers left in float (and TensorRT's fusions) run
        # in half precision where that is faster
        config.set_flag(trt.BuilderFlag.INT8)
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)


def _add_profile(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    config: trt.IBuilderConfig,
    options: BuildOptions,
) -> None:
    if network.num_inputs != 1:
        raise EngineError(f"the network has {network.num_inputs} inputs; the runtime expects one")
    tensor = network.get_input(0)
    chw = _shape(tensor.shape)[1:]
    p = options.profile
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, _dims((p.min, *chw)), _dims((p.opt, *chw)), _dims((p.max, *chw)))
    config.add_optimization_profile(profile)


class TensorRTBackend:
    name = "tensorrt"
    engine_suffix = ".engine"

    def version(self) -> str:
        return str(trt.__version__)

    def device(self) -> str:
        context = CudaContext()
        try:
            return context.name
        finally:
            context.close()

    def build(self, onnx_path: Path, engine_path: Path, options: BuildOptions) -> dict[str, object]:
        context = CudaContext()
        try:
            builder = trt.Builder(_LOGGER)
            network = builder.create_network(0)  # explicit batch: the TensorRT 10 default
            _parse(network, onnx_path)
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
            _set_precision(builder, config, options.precision)
            _add_profile(builder, network, config, options)
            cache_file = options.timing_cache
            cached = cache_file.read_bytes() if cache_file and cache_file.is_file() else b""
            cache = config.create_timing_cache(cached)
            config.set_timing_cache(cache, ignore_mismatch=False)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise EngineError(
                    f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log "
                    "above); try a larger --workspace or --precision fp32"
                )
            write_bytes(engine_path, bytes(serialized))
            if cache_file is not None:
                write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
        finally:
            context.close()
        return {
            "workspace_bytes": options.workspace_bytes,
            "timing_cache": str(cache_file) if cache_file else None,
            "timing_cache_reused": bool(cached),
        }

    def load(self, engine_path: Path, meta: EngineMetadata, threads: int | None) -> TrtSession:
        return TrtSession(engine_path)


class TrtSession:
    """A deserialized engine with its execution context, buffers and stream."""

    def __init__(self, engine_path: Path) -> None:
        self._context = CudaContext()
        try:
            self._setup(engine_path)
        except BaseException:
            self._context.close()
            raise

    def _setup(self, engine_path: Path) -> None:
        self._runtime = trt.Runtime(_LOGGER)
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(
            engine_path.read_bytes()
        )
        if engine is None:
            raise EngineError(
                f"TensorRT could not deserialize {engine_path}: the file is corrupt or was built "
                f"with another TensorRT version than {trt.__version__}; rebuild it with "
                "python -m runtime.build_engine"
            )
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{engine_path}: expected one input and one output, got {names}")
        self.input, self.output = inputs[0], outputs[0]
        self._exec = engine.create_execution_context()
        max_shape = _shape(engine.get_tensor_profile_shape(self.input, 0)[2])
        self._exec.set_input_shape(self.input, max_shape)
        out_shape = _shape(self._exec.get_tensor_shape(self.output))
        self._in = Buffer(
            math.prod(max_shape), np.dtype(trt.nptype(engine.get_tensor_dtype(self.input)))
        )
        self._out = Buffer(
            math.prod(out_shape), np.dtype(trt.nptype(engine.get_tensor_dtype(self.output)))
        )
        self._exec.set_tensor_address(self.input, self._in.address)
        self._exec.set_tensor_address(self.output, self._out.address)
        self._stream = Stream()

    def _stage(self, x: np.ndarray) -> None:
        """Set the input shape and copy ``x`` into the page-locked input buffer."""
        if not self._exec.set_input_shape(self.input, x.shape):
            raise EngineError(f"TensorRT rejected input shape {x.shape} for {self.input!r}")
        self._in.host[: x.size] = x.ravel()

    def _enqueue(self, count: int) -> tuple[int, ...]:
        """Queue copy-in of ``count`` input items, execution and copy-out on the stream."""
        self._stream.to_device(self._in, count)
        if not self._exec.execute_async_v3(self._stream.handle):
            raise EngineError("TensorRT failed to enqueue the inference (see the TensorRT log)")
        out_shape = _shape(self._exec.get_tensor_shape(self.output))
        self._stream.to_host(self._out, math.prod(out_shape))
        return out_shape

    def run(self, x: np.ndarray) -> np.ndarray:
        self._stage(x)
        shape = self._enqueue(x.size)
        self._stream.synchronize()
        return self._out.host[: math.prod(shape)].reshape(shape).copy()

    def timed_run(self, x: np.ndarray) -> float:
        self._stage(x)
        start, end = self._stream.event(), self._stream.event()
        start.record()
        self._enqueue(x.size)
        end.record()
        return end.seconds_since(start)

    def close(self) -> None:
        self._stream.synchronize()
        self._in.free()
        self._out.free()
        del self._exec, self._engine, self._runtime
        self._context.close()
