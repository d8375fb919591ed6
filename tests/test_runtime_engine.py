import json

import numpy as np
import pytest
import torch

import runtime
from runtime import Engine, EngineError, build
from runtime.backends import (
    get_backend,
    resolve_backend_name,
    tensorrt_unavailable_reason,
)
from runtime.build import build_engine_file
from runtime.errors import BackendUnavailableError
from runtime.spec import BatchProfile, BuildOptions, metadata_path, parse_batch_sizes
from tests.runtime_models import INPUT_SIZE, tiny_factorized


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model = tiny_factorized()
    out = tmp_path_factory.mktemp("engine")
    engine = build(
        model, out / "tiny.ort.onnx", backend="onnxruntime", batch_sizes=(1, 4), threads=1
    )
    yield model, engine, out
    engine.close()


def test_build_runs_on_numpy_and_torch(built):
    model, engine, out = built
    assert (out / "tiny.onnx").is_file() and metadata_path(engine.path).is_file()
    assert engine.backend == "onnxruntime"
    assert engine.input_shapes == {"input": ("batch", *INPUT_SIZE)}
    assert engine.batch_range == (1, None)
    x = torch.randn(3, *INPUT_SIZE)
    expected = model(x).detach()
    got_torch = engine(x)
    assert isinstance(got_torch, torch.Tensor)
    torch.testing.assert_close(got_torch, expected, atol=1e-4, rtol=1e-4)
    got_np = engine(x.numpy().astype(np.float64))  # other float dtypes are cast
    assert isinstance(got_np, np.ndarray)
    np.testing.assert_allclose(got_np, expected.numpy(), atol=1e-4, rtol=1e-4)
    assert engine.timed(x) > 0


def _allows_spinning(engine: Engine) -> str:
    options = engine._session.session.get_session_options()
    return str(options.get_session_config_entry("session.intra_op.allow_spinning"))


def test_build_loads_with_thread_spinning_on_or_off(built):
    _, engine, out = built
    assert _allows_spinning(engine) == "1"  # the default: lowest latency on a dedicated machine
    # the engine built above is reused; only how it is loaded changes
    quiet = build(
        out / "tiny.onnx",
        out / "tiny.ort.onnx",
        backend="onnxruntime",
        batch_sizes=(1, 4),
        threads=1,
        spinning=False,
    )
    try:
        assert _allows_spinning(quiet) == "0"
        assert quiet.metadata == engine.metadata
    finally:
        quiet.close()


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((2, 3, 28, 28), np.float32, r"input has shape \(2, 3, 28, 28\), but the engine expects"),
        ((2, 1, 32, 32), np.float32, r"expects \(N, 1, 28, 28\)"),
        ((1, 28, 28), np.float32, r"without a batch dimension.*x\[None\]"),
        ((2, 1, 28, 28), np.uint8, "expects float32 images"),
    ],
)
def test_wrong_input_is_a_clear_error(built, shape, dtype, message):
    _, engine, _ = built
    with pytest.raises(EngineError, match=message):
        engine(np.zeros(shape, dtype=dtype))


def test_load_again_and_reuse(built):
    _, engine, out = built
    again = Engine.load(engine.path, threads=1)
    x = np.random.default_rng(0).standard_normal((2, *INPUT_SIZE), dtype=np.float32)
    np.testing.assert_array_equal(again(x), engine(x))
    options = BuildOptions(backend="onnxruntime", batch_sizes=(1, 4))
    reused = build_engine_file(out / "tiny.onnx", engine.path, options)
    assert not reused.rebuilt and reused.reason == "up to date"
    forced = build_engine_file(out / "tiny.onnx", engine.path, options, force=True)
    assert forced.rebuilt


def test_engine_is_rebuilt_when_its_inputs_change(tmp_path, built):
    _, _, out = built
    onnx_path, engine_path = out / "tiny.onnx", tmp_path / "e.ort.onnx"
    options = BuildOptions(backend="onnxruntime", batch_sizes=(1, 4))
    assert build_engine_file(onnx_path, engine_path, options).reason == "no engine file yet"
    changed = build_engine_file(
        onnx_path, engine_path, BuildOptions("onnxruntime", batch_sizes=(2, 8))
    )
    assert changed.rebuilt and "batch" in changed.reason
    # a different backend version (e.g. after an upgrade) invalidates the engine
    meta_file = metadata_path(engine_path)
    meta = json.loads(meta_file.read_text())
    meta["backend_version"] = "0.0.1"
    meta_file.write_text(json.dumps(meta))
    again = build_engine_file(
        onnx_path, engine_path, BuildOptions("onnxruntime", batch_sizes=(2, 8))
    )
    assert again.rebuilt and "backend_version: '0.0.1'" in again.reason
    # a damaged engine file no longer matches its checksum
    engine_path.write_bytes(engine_path.read_bytes()[:-10])
    repaired = build_engine_file(
        onnx_path, engine_path, BuildOptions("onnxruntime", batch_sizes=(2, 8))
    )
    assert repaired.rebuilt and "checksum" in repaired.reason


def test_corrupt_engine_file_is_a_clear_error(tmp_path, built):
    _, engine, _ = built
    copy = tmp_path / "copy.ort.onnx"
    copy.write_bytes(engine.path.read_bytes())
    metadata_path(copy).write_text(metadata_path(engine.path).read_text())
    Engine.load(copy, threads=1).close()
    copy.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(EngineError, match=r"corrupt or was modified.*rebuild"):
        Engine.load(copy)
    metadata_path(copy).unlink()  # without metadata: ONNX Runtime itself refuses the file
    with pytest.raises(EngineError, match="not a readable ONNX file"):
        Engine.load(copy)
    with pytest.raises(EngineError, match="no engine file at"):
        Engine.load(tmp_path / "missing.engine")
    trt_like = tmp_path / "model.engine"
    trt_like.write_bytes(b"plan")
    with pytest.raises(EngineError, match="no metadata sidecar"):
        Engine.load(trt_like)


def test_plain_onnx_model_loads_without_metadata(built):
    model, _, out = built
    with Engine.load(out / "tiny.onnx", threads=1) as engine:
        assert engine.input_size == INPUT_SIZE
        x = torch.randn(2, *INPUT_SIZE)
        torch.testing.assert_close(engine(x), model(x).detach(), atol=1e-4, rtol=1e-4)


def test_onnxruntime_refuses_reduced_precision(built):
    _, _, out = built
    with pytest.raises(ValueError, match="precision fp16 needs the TensorRT backend"):
        build(out / "tiny.onnx", out / "fp16.ort.onnx", backend="onnxruntime", precision="fp16")


def test_backend_selection():
    reason = tensorrt_unavailable_reason()
    assert resolve_backend_name("auto") == ("tensorrt" if reason is None else "onnxruntime")
    assert resolve_backend_name("onnxruntime") == "onnxruntime"
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        resolve_backend_name("tvm")
    if reason is not None:
        with pytest.raises(BackendUnavailableError, match=r"pip install -e '\.\[tensorrt\]'"):
            get_backend("tensorrt")


def test_batch_profile_and_sizes():
    assert parse_batch_sizes("8, 1,32,8") == [1, 8, 32]
    assert BatchProfile.from_batch_sizes([8, 1, 32]) == BatchProfile(1, 32, 32)
    for bad in ("", "0,4", "a,b"):
        with pytest.raises(ValueError, match="--batch-sizes"):
            parse_batch_sizes(bad)
    with pytest.raises(ValueError, match="precision must be one of"):
        BuildOptions(backend="onnxruntime", precision="int4")


def test_public_api():
    assert runtime.build is build and runtime.Engine is Engine
