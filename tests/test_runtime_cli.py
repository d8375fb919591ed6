"""End to end: python -m runtime.build_engine on a checkpoint directory, ONNX Runtime on CPU."""

import json
import shutil

import pytest
import timm
import torch

import trp_zoo
from runtime import build
from runtime.build_engine import main
from runtime.data import fashion_mnist
from runtime.spec import metadata_path
from trp_zoo.algorithms.rank_alignment import pad_ranks

MODEL_ARGS = {"channels": [16, 32, 32, 64], "stem_width": 16, "layers": [1, 1, 1, 1]}
CFG = {"input_size": (1, 28, 28), "mean": (0.2860,), "std": (0.3530,), "crop_pct": 1.0}
IMAGES = 200
FAST = ["--backend", "onnxruntime", "--batch-sizes", "1,4", "--max-images", str(IMAGES)]
FAST += ["--runs", "3", "--warmup", "1", "--threads", "1"]


@torch.no_grad()
def _top1(model, images):
    data = fashion_mnist(CFG["input_size"], CFG["mean"], CFG["std"], max_images=images)
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.batches(100))
    return 100.0 * correct / images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small decomposed timm resnet18 saved with the top-1 it measures on its images."""
    torch.manual_seed(0)
    base = timm.create_model("resnet18", in_chans=1, num_classes=10, **MODEL_ARGS).eval()
    model = trp_zoo.decompose(base, "channel", rank=8).eval()
    top1 = _top1(model, IMAGES)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-fmnist"
    trp_zoo.save_pretrained(
        model,
        path,
        metrics={"top1": top1, "dataset": "fashion-mnist", "split": f"test[:{IMAGES}]"},
        pretrained_cfg=CFG,
        base_architecture="resnet18",
        model_args=MODEL_ARGS,
    )
    return path, top1


@pytest.fixture(scope="module")
def first_run(checkpoint, tmp_path_factory):
    path, _ = checkpoint
    out = tmp_path_factory.mktemp("engines")
    gates = ["--max-abs-diff", "1e-3", "--min-top1-agreement", "0.99"]
    gates += ["--max-top1-drop", "0.5", "--min-speedup", "0.01"]
    code = main([str(path), "--output", str(out), *FAST, *gates])
    return code, out


def test_cli_builds_checks_and_reports(first_run, checkpoint, capsys):
    code, out = first_run
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text().startswith("# Engine report")
    assert report["passed"] and len(report["gates"]) == 4
    for name in ("dense", "factorized"):
        assert (out / f"{name}.onnx").is_file() and (out / f"{name}.ort.onnx").is_file()
        assert metadata_path(out / f"{name}.ort.onnx").is_file()
    model = report["model"]
    assert model["architecture"] == "resnet18" and model["scheme"] == "channel"
    assert model["ranks_padded_to_multiple_of"] == 16  # the default: same function
    assert model["card"]["top1"] == pytest.approx(checkpoint[1])
    acc = report["accuracy"]
    assert acc["labelled"] and "Fashion-MNIST" in acc["data"]  # the default for this model
    for stats in acc["engines"].values():
        assert stats["images"] == IMAGES and stats["top1_agreement"] == 1.0
        assert stats["max_abs_diff"] < 1e-3
        assert stats["engine_top1"] == pytest.approx(checkpoint[1])
    assert [row["batch"] for row in report["latency"]["batches"]] == [1, 4]
    # the MACs ratio is that of the deployed (rank-padded) model, counted independently
    model = trp_zoo.load(str(checkpoint[0])).eval()
    padded = pad_ranks(model, 16)
    macs = trp_zoo.count_flops(trp_zoo.densify(model), CFG["input_size"])
    macs_ratio = macs / trp_zoo.count_flops(padded, CFG["input_size"])
    assert report["cost"]["macs_reduction"] == pytest.approx(macs_ratio)
    for row in report["latency"]["batches"]:
        for name in ("dense", "factorized"):
            stats = row[name]
            assert stats["runs"] == 3 and stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
        assert row["macs_reduction"] == pytest.approx(macs_ratio)
    assert report["export"]["factorized"]["conv_nodes"] > report["export"]["dense"]["conv_nodes"]
    # the measured speed-ups went into the checkpoint's results and model card
    assert report["recorded_in"] == str(checkpoint[0])
    recorded = json.loads((checkpoint[0] / "results.json").read_text())["speedups"]
    assert [s["batch_size"] for s in recorded] == [1, 4]
    for row, entry in zip(report["latency"]["batches"], recorded, strict=True):
        assert entry["value"] == pytest.approx(row["speedup"], rel=1e-2)
        assert entry["backend"].startswith("onnxruntime") and "threads" in entry["device"]
    assert "speed-up" in (checkpoint[0] / "README.md").read_text().lower()


def test_cli_gates_fail_with_one_line_reasons(first_run, checkpoint, tmp_path, capsys):
    _, out = first_run
    path, top1 = checkpoint
    overstated = tmp_path / "overstated"  # a card claiming 5 points more than the model does
    shutil.copytree(path, overstated)
    results = json.loads((overstated / "results.json").read_text())
    results["metrics"]["top1"] = top1 + 5.0
    (overstated / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    args = [str(overstated), "--output", str(out), *FAST, "--quiet"]
    gates = ["--max-abs-diff", "1e-12", "--max-top1-drop", "1", "--min-speedup", "1000"]
    assert main(args + gates) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gate failed: ")
    for name in ("--max-abs-diff", "--max-top1-drop", "--min-speedup"):
        assert name in err[-1]
    assert "5.00 points below" in err[-1]
    report = json.loads((out / "report.json").read_text())
    assert not report["passed"] and not report["engines"]["factorized"]["rebuilt"]  # reused


def test_engine_that_does_not_match_its_model_fails_agreement(
    first_run, checkpoint, tmp_path, capsys
):
    path, _ = checkpoint
    out = tmp_path / "engines"
    shutil.copytree(first_run[1], out)  # exports and engines stay valid: they are reused
    # replace the factorized engine by the engine of another model, keeping its metadata
    # consistent: the engine looks up to date but computes something else
    torch.manual_seed(1)
    other = timm.create_model("resnet18", in_chans=1, num_classes=10, **MODEL_ARGS).eval()
    wrong = build(other, tmp_path / "other.ort.onnx", backend="onnxruntime", input_size=(1, 28, 28))
    engine = out / "factorized.ort.onnx"
    shutil.copy(wrong.path, engine)
    meta = json.loads(metadata_path(engine).read_text())
    meta["engine_sha256"] = wrong.metadata.engine_sha256
    metadata_path(engine).write_text(json.dumps(meta))
    capsys.readouterr()
    args = [str(path), "--output", str(out), *FAST, "--quiet", "--min-top1-agreement", "0.99"]
    assert main(args) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("gate failed: --min-top1-agreement: top-1 agreement with PyTorch is")
    assert "factorized engine" in line
    report = json.loads((out / "report.json").read_text())
    assert not report["engines"]["factorized"]["rebuilt"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-sizes", "0,4"], "--batch-sizes takes positive ints"),
        (["--precision", "fp16"], "precision fp16 needs the TensorRT backend"),
        (["--min-top1-agreement", "99"], "fraction in [0, 1]"),
        (["--data", "/nonexistent/images"], "no such directory"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--threads", "-3"], "--threads must be >= 1, got -3"),
        (["--pad-ranks", "0"], "--pad-ranks must be >= 1, got 0"),
        (["--pad-ranks", "-4"], "--pad-ranks must be >= 1, got -4"),
        (["--runs", "0"], "--runs must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be >= 0 (0: none), got -1"),
        (["--max-images", "0"], "--max-images must be >= 1, got 0 (omit it to evaluate all)"),
        (["--max-images", "-1"], "--max-images must be >= 1, got -1 (omit it to evaluate all)"),
        (["--calibration-images", "0"], "--calibration-images must be >= 1, got 0"),
        (["--workspace", "0"], "--workspace must be a positive number of GiB, e.g. 4; got 0.0"),
        (["--workspace", "nan"], "--workspace must be a positive number of GiB, e.g. 4; got nan"),
        (["--max-abs-diff", "nan"], "--max-abs-diff must be >= 0 (a finite number), got nan"),
        (["--min-speedup", "inf"], "--min-speedup must be >= 0 (a finite number), got inf"),
        (  # silently ignored by an fp32-only build
            ["--keep-fp32", "fc"],
            "--keep-fp32 keeps layers of an int8 engine in float: add int8 to --precision",
        ),
        (  # failed as a gate, after both engines were built and timed
            ["--data", "random", "--max-top1-drop", "1"],
            "--max-top1-drop needs labelled images and --data random has none",
        ),
    ],
)
def test_cli_bad_input_is_one_clear_line(checkpoint, tmp_path, capsys, extra, message):
    path, _ = checkpoint
    args = [str(path), "--output", str(tmp_path), "--backend", "onnxruntime", "--runs", "1"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_cli_bad_counts_are_refused_before_anything_is_built(checkpoint, tmp_path, capsys):
    """--runs 0 used to fail only after both engines were built and timed."""
    path, _ = checkpoint
    assert main([str(path), "--output", str(tmp_path / "out"), *FAST, "--runs", "0"]) == 2
    assert not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip() == "error: --runs must be >= 1, got 0"


def test_cli_output_that_is_a_file_is_a_clear_error(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    target = tmp_path / "report-file"
    target.write_text("x")
    assert main([str(path), "--output", str(target), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: --output {target} is a file, not a directory: move it or choose another path"
    )


def test_cli_unknown_model_is_a_clear_error(tmp_path, capsys):
    assert main(["no_such_model_xyz", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no_such_model_xyz" in err[-1]


def test_cli_reads_an_image_folder(checkpoint, tmp_path, capsys):
    """--data IMAGEFOLDER: the first Fashion-MNIST test images as PNGs in class folders give
    exactly the top-1 the model measures on those images as tensors."""
    from PIL import Image

    from trp_zoo.data import load_fashion_mnist

    path, _ = checkpoint
    count = 60
    images, labels = load_fashion_mnist("test")
    folder = tmp_path / "images"
    for i in range(count):
        (folder / str(int(labels[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0].numpy()).save(folder / str(int(labels[i])) / f"{i:03d}.png")
    assert len(list(folder.iterdir())) == 10  # every class present: folder order = label
    model = trp_zoo.load(str(path)).eval()
    expected = _top1(model, count)
    out = tmp_path / "engines"
    args = [str(path), "--output", str(out), *FAST, "--quiet", "--no-record"]
    assert main([*args, "--data", str(folder), "--min-top1-agreement", "1.0"]) == 0
    acc = json.loads((out / "report.json").read_text())["accuracy"]
    assert acc["labelled"] and acc["data"] == f"ImageFolder {folder} ({count} images)"
    for stats in acc["engines"].values():
        assert stats["images"] == count and stats["top1_agreement"] == 1.0
        assert stats["engine_top1"] == pytest.approx(expected)


def test_image_folder_from_a_plain_timm_config(tmp_path):
    """A plain timm model's pretrained_cfg (url, license, ...) selects the eval transform."""
    from PIL import Image

    from runtime.data import resolve_eval_data

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (40, 30), color=(200, 10, 10)).save(tmp_path / cls / "x.png")
    cfg = timm.create_model("resnet18", pretrained=False).pretrained_cfg
    assert "url" in cfg
    size = (3, 64, 64)
    config = {**cfg, "input_size": size}
    data = resolve_eval_data(str(tmp_path), input_size=size, data_config=config)
    (x, y), *_ = list(data.batches(8))
    assert x.shape == (2, *size) and y.tolist() == [0, 1]


def test_empty_onnx_file_is_a_clear_error(tmp_path):
    from runtime.errors import RuntimeToolError

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(RuntimeToolError, match=r"holds no ONNX graph \(an empty or truncated"):
        build(empty, tmp_path / "e.ort.onnx", backend="onnxruntime")


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (KeyboardInterrupt, 130, "interrupted: no report written; rerun the command"),
        (
            MemoryError,
            2,
            "error: out of memory building or timing the engines: lower --batch-sizes, "
            "--input-size or --max-images",
        ),
    ],
)
def test_cli_ctrl_c_and_out_of_memory_are_one_line(
    checkpoint, tmp_path, capsys, monkeypatch, raised, code, line
):
    import runtime.build_engine

    def fails(*args, **kwargs):
        raise raised

    monkeypatch.setattr(runtime.build_engine, "build_and_check", fails)
    path, _ = checkpoint
    assert main([str(path), "--output", str(tmp_path / "out"), *FAST]) == code
    assert capsys.readouterr().err == line + "\n"


def test_cli_output_inside_the_checkpoint_is_refused(checkpoint, capsys):
    """Engines and reports written into the checkpoint were published with it."""
    path, _ = checkpoint
    before = sorted(p.name for p in path.iterdir())
    for out in (path, path / "engines"):
        assert main([str(path), "--output", str(out), *FAST]) == 2
        (err,) = capsys.readouterr().err.strip().splitlines()
        assert err == (
            f"error: --output {out} is inside the checkpoint {path}: engines and reports there "
            "would be published with it; choose a directory outside it"
        )
    assert sorted(p.name for p in path.iterdir()) == before
