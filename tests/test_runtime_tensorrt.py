"""TensorRT backend: runs wherever tensorrt, pycuda and an NVIDIA GPU are present."""

import json

import numpy as np
import pytest
import torch

from runtime import Engine, EngineError, build
from runtime.backends import tensorrt_unavailable_reason
from runtime.pipeline import RunConfig, build_and_check
from runtime.spec import metadata_path
from tests.runtime_models import INPUT_SIZE, tiny_factorized

REASON = tensorrt_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(REASON is not None, reason=f"TensorRT tests need it: {REASON}"),
]


def _build(model, path, **kwargs):
    kwargs.setdefault("batch_sizes", (1, 8))
    return build(model, path, backend="tensorrt", **kwargs)


@pytest.fixture(scope="module")
def model():
    return tiny_factorized()


@pytest.fixture(scope="module")
def fp32_engine(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt")
    engine = _build(model, out / "tiny.engine", timing_cache=out / "timing.cache")
    yield engine, out
    engine.close()


def test_fp32_engine_matches_torch(model, fp32_engine):
    engine, out = fp32_engine
    meta = json.loads(metadata_path(engine.path).read_text())
    assert meta["backend"] == "tensorrt" and meta["precision"] == "fp32"
    assert meta["backend_version"] and meta["device"] and meta["onnx_sha256"]
    assert (out / "timing.cache").stat().st_size > 0
    assert engine.batch_range == (1, 8)
    for batch in (1, 5, 8):
        x = torch.randn(batch, *INPUT_SIZE)
        torch.testing.assert_close(engine(x), model(x).detach(), atol=1e-2, rtol=1e-2)
    assert 0 < engine.timed(np.zeros((8, *INPUT_SIZE), np.float32)) < 10


def test_rebuild_reuses_timing_cache_and_engine(model, fp32_engine):
    engine, out = fp32_engine
    again = _build(model, out / "tiny.engine", timing_cache=out / "timing.cache")
    assert again.metadata.engine_sha256 == engine.metadata.engine_sha256  # reused
    rebuilt = _build(
        model, out / "tiny-force.engine", timing_cache=out / "timing.cache", force=True
    )
    assert rebuilt.metadata.extra["timing_cache_reused"] is True
    rebuilt.close()
    again.close()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_engines_stay_close(model, tmp_path, precision):
    with _build(
        model, tmp_path / f"{precision}.engine", precision=precision, batch_sizes=(1, 4)
    ) as engine:
        x = torch.randn(4, *INPUT_SIZE)
        ref = model(x).detach()
        got = engine(x)
        assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.75
        assert float((got - ref).abs().max()) < 0.1 * float(ref.abs().max()) + 0.05


def test_batch_outside_profile_and_corrupt_engine(fp32_engine, tmp_path):
    engine, _ = fp32_engine
    with pytest.raises(EngineError, match="outside the engine's optimization profile"):
        engine(np.zeros((9, *INPUT_SIZE), np.float32))
    broken = tmp_path / "broken.engine"
    broken.write_bytes(b"\x00" * 1000)
    meta = json.loads(metadata_path(engine.path).read_text())
    meta["engine_sha256"] = ""  # no checksum to compare: TensorRT itself must refuse the bytes
    metadata_path(broken).write_text(json.dumps(meta))
    with pytest.raises(EngineError, match="could not deserialize"):
        Engine.load(broken)


def test_pipeline_on_tensorrt(model, tmp_path):
    report = build_and_check(
        model, tmp_path, RunConfig(backend="tensorrt", batch_sizes=(1, 8), runs=5, warmup=2)
    )
    assert report["backend"]["name"] == "tensorrt"
    for stats in report["accuracy"]["engines"].values():
        assert stats["top1_agreement"] >= 0.98
    assert "CUDA events" in report["latency"]["timer"]


def _fmnist_calibration(count):
    from runtime.data import resolve_calibration_data
    from runtime.quantize import calibration_from_data

    cfg = {"input_size": INPUT_SIZE, "mean": (0.2860,), "std": (0.3530,)}
    data = resolve_calibration_data(
        "fashion-mnist", input_size=INPUT_SIZE, data_config=cfg, max_images=count
    )
    return calibration_from_data(data)


def test_int8_engine_from_the_qdq_graph_tracks_torch(model, tmp_path):
    from runtime.data import fashion_mnist

    with _build(
        model,
        tmp_path / "int8.engine",
        precision="int8",
        batch_sizes=(1, 32),
        calibration=_fmnist_calibration(64),
    ) as engine:
        meta = engine.metadata
        assert meta.precision == "int8" and meta.quantization["activations"] == "int8 symmetric"
        assert meta.extra["qdq_onnx"] == str(tmp_path / "int8.qdq.onnx")
        x = next(fashion_mnist(INPUT_SIZE, (0.2860,), (0.3530,), max_images=32).batches(32))[0]
        ref = model(x).detach()
        got = engine(x)
        assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
        assert float((got - ref).abs().max()) < 0.2 * float(ref.abs().max())


def test_pipeline_builds_fp32_and_int8_on_tensorrt(model, tmp_path):
    report = build_and_check(
        model,
        tmp_path,
        RunConfig(
            backend="tensorrt",
            precision="fp32,int8",
            batch_sizes=(1, 8),
            runs=5,
            warmup=2,
            data="fashion-mnist",
            max_images=256,
            calibration_images=64,
        ),
    )
    assert list(report["precisions"]) == ["fp32", "int8"]
    for stats in report["precisions"]["int8"]["accuracy"]["engines"].values():
        assert stats["top1_agreement"] >= 0.9
    assert (tmp_path / "factorized_int8.engine").is_file()
