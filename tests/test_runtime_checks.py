import numpy as np
import pytest
from PIL import Image

from runtime.checks import Gates, evaluate_gates
from runtime.data import fashion_mnist, image_folder, random_images, resolve_eval_data
from runtime.errors import DataError
from runtime.latency import LatencyStats, measure_interleaved


def _report(*, abs_diff=1e-6, agreement=1.0, top1=90.0, card=91.0, speedups=(1.8, 2.0)):
    engine = {"max_abs_diff": abs_diff, "top1_agreement": agreement, "engine_top1": top1}
    return {
        "accuracy": {
            "card_top1": card,
            "engines": {"dense": dict(engine, max_abs_diff=abs_diff / 2), "factorized": engine},
        },
        "latency": {
            "batches": [{"batch": b, "speedup": s} for b, s in zip((1, 8), speedups, strict=True)]
        },
    }


def test_gates_pass_and_fail_with_reasons():
    report = _report()
    gates = Gates(max_abs_diff=1e-4, min_top1_agreement=0.99, max_top1_drop=2.0, min_speedup=1.5)
    assert all(g.passed for g in evaluate_gates(report, gates))
    assert evaluate_gates(report, Gates()) == []
    failing = {
        "max-abs-diff": (Gates(max_abs_diff=1e-7), "1e-06 on the factorized engine"),
        "min-top1-agreement": (Gates(min_top1_agreement=1.0), None),
        "max-top1-drop": (Gates(max_top1_drop=0.5), "1.00 points below"),
        "min-speedup": (Gates(min_speedup=1.9), "1.80x at batch 1"),
    }
    for name, (gate, text) in failing.items():
        report = _report(agreement=0.98) if name == "min-top1-agreement" else _report()
        (result,) = evaluate_gates(report, gate)
        assert result.gate == name and not result.passed
        assert "\n" not in result.message
        if text:
            assert text in result.message


def test_top1_drop_gate_needs_labels_and_a_card_number():
    no_labels = _report(top1=None)
    (r,) = evaluate_gates(no_labels, Gates(max_top1_drop=1.0))
    assert not r.passed and "no labelled evaluation data" in r.message
    (r,) = evaluate_gates(_report(card=None), Gates(max_top1_drop=1.0))
    assert not r.passed and "model card records no top-1" in r.message


def test_gate_values_are_validated():
    with pytest.raises(ValueError, match="fraction in \\[0, 1\\]"):
        Gates(min_top1_agreement=99.0)
    with pytest.raises(ValueError, match="--min-speedup must be >= 0"):
        Gates(min_speedup=-1.0)


def test_latency_stats():
    stats = LatencyStats.of([0.001 * i for i in range(1, 101)], batch=4)
    assert stats.runs == 100
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.images_per_s == pytest.approx(4 / 0.0505)


class _Recorder:
    """Stands in for an Engine: records which engine ran when, with which batch."""

    input_size = (1, 4, 4)

    def __init__(self, name, log):
        self.name, self.log = name, log

    def timed(self, x):
        self.log.append((self.name, x.shape[0]))
        return 0.001


def test_measurement_interleaves_engines_and_rotates_order():
    log = []
    engines = {"dense": _Recorder("dense", log), "factorized": _Recorder("factorized", log)}
    result = measure_interleaved(engines, [2, 8], warmup=1, runs=4)  # type: ignore[arg-type]
    timed = [entry for entry in log if entry[1] == 2][2:]  # after the warm-up pair
    assert [n for n, _ in timed] == ["dense", "factorized", "factorized", "dense"] * 2
    assert result[8]["factorized"].runs == 4 and result[2]["dense"].p50_ms == pytest.approx(1.0)


def test_fashion_mnist_eval_data_is_normalized_and_resized():
    data = fashion_mnist((1, 32, 32), (0.2860,), (0.3530,), max_images=300)
    assert data.labelled and data.size == 300
    batches = list(data.batches(128))
    assert [len(x) for x, _ in batches] == [128, 128, 44]
    x, y = batches[0]
    assert x.shape == (128, 1, 32, 32) and y is not None and y.max() < 10
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5  # roughly standardized


def test_image_folder_eval_data(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 1.0}
    data = resolve_eval_data(str(tmp_path), input_size=(3, 32, 32), data_config=cfg)
    assert data.labelled and data.size == 6
    (x, y), *_ = data.batches(8)
    assert x.shape == (6, 3, 32, 32) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DataError, match="no such directory"):
        image_folder(tmp_path / "missing", cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="ImageFolder"):
        image_folder(tmp_path / "empty", cfg)


def test_default_eval_data_follows_the_model_card():
    cfg = {"mean": (0.2860,), "std": (0.3530,)}
    fm = resolve_eval_data(
        None, input_size=(1, 28, 28), data_config=cfg, dataset_hint="fashion-mnist", max_images=10
    )
    assert fm.labelled and "Fashion-MNIST" in fm.description
    rand = resolve_eval_data(None, input_size=(1, 28, 28), data_config=cfg)
    assert not rand.labelled and "random" in rand.description
    assert random_images((1, 8, 8), 5).size == 5
