"""Every recipe runs end to end on tiny data in its real on-disk format."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import trp_zoo
from runtime.target import Target
from tests.fakedata import write_cifar10, write_fashion_mnist, write_image_folder
from tests.runtime_models import seed_cost_cache

ROOT = Path(__file__).resolve().parents[1]
QUICK = "--epochs 1 --batch-size 8 --eval-batch-size 16 --no-progress --workers 0"
# subprocesses import this checkout, not whichever copy of the package is installed
ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def recipe_cmd(script: str, args: str, launcher: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *launcher, str(ROOT / "recipes" / script), *shlex.split(args)]


def run(
    script: str, args: str, check: bool = True, launcher: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run a recipe as a user would; ``args`` is its command line."""
    proc = subprocess.run(
        recipe_cmd(script, args, launcher),
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        cwd=ROOT,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def results(out: Path) -> dict:
    return json.loads((out / "train_results.json").read_text())


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def test_fashion_mnist_recipe_end_to_end(fmnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run(
        "fashion_mnist_resnet18.py",
        f"--data-dir {fmnist} --output-dir {out} --period 2 --energy 0.8 {QUICK}",
    )
    res = results(out)
    assert res["training"]["optimizer_steps"] == 12  # 96 images / batch 8
    low = res["decomposed"]
    assert low["scheme"] == "channel" and low["rank_plan"]
    assert low["macs"] < res["dense"]["macs"] and low["macs_reduction"] > 1.0
    # projected weights decompose losslessly: the two forms' logits agree to float rounding
    # (a rank below the one TRP reached changes them by orders of magnitude more)
    assert low["max_abs_logit_diff"] < 1e-3
    assert low["top1"] == res["dense"]["top1"]
    assert "| decomposed (channel), no fine-tuning" in proc.stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    for plot in ("curves.png", "ranks.png", "spectra.png"):
        assert (out / "plots" / plot).read_bytes()[:4] == b"\x89PNG"
    # the decomposed model is saved and loads by its registry name, offline, in a new process
    saved = out / "model"
    assert res["checkpoint"] == str(saved) and (saved / "model.safetensors").is_file()
    code = (
        "import json, trp_zoo; m = trp_zoo.load('resnet18_trp_ch_fmnist');"
        "print(json.dumps(trp_zoo.rank_plan(m)))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(child.stdout) == low["rank_plan"]
    info = json.loads((saved / "results.json").read_text())
    assert info["metrics"]["top1"] == pytest.approx(low["top1"])


def test_target_latency_caps_the_ranks_by_a_plan_for_the_target(
    fmnist: Path, tmp_path: Path
) -> None:
    # synthetic costs of the recipe's model on the target, in the cost cache the recipe reads
    # ($TRP_ZOO_HOME/costs): the plan is deterministic and nothing is timed
    model = timm.create_model("resnet18", num_classes=10, in_chans=1)
    seeded = seed_cost_cache(model, Target(batch_size=2, input_size=(1, 28, 28), threads=1))
    out = tmp_path / "run"
    run(
        "fashion_mnist_resnet18.py",
        f"--data-dir {fmnist} --output-dir {out} --limit-train-batches 2 --target-latency 0.8 "
        f"--target-batch-size 2 --period 1 {QUICK}",
    )
    chosen = json.loads((out / "target_plan.json").read_text())
    res = results(out)
    assert res["target_plan"] == chosen
    plan = chosen["plan"]
    assert plan and chosen["predicted"]["latency_fraction"] <= 0.8
    assert chosen["budget"] == {"kind": "latency", "fraction": 0.8}
    # the costs came from the cache
    measured = {n: c.dense_ms for n, c in seeded.items() if c.rank_ms}
    assert {r["name"]: r["dense_ms"] for r in chosen["layers"]} == measured
    # TRP trained the planned layers only, each at most at its planned rank
    low = res["decomposed"]["rank_plan"]
    assert set(low) == set(plan) and all(low[n] <= plan[n] for n in plan)
    assert trp_zoo.rank_plan(trp_zoo.load(str(out / "model"))) == low


def test_target_latency_on_real_timing_of_a_tiny_model(fmnist: Path, tmp_path: Path) -> None:
    """No synthetic costs: the recipe times every candidate layer on ONNX Runtime, caches
    the tables in $TRP_ZOO_HOME/costs, and trains to a plan that meets the budget on them."""
    costs = Path(os.environ["TRP_ZOO_HOME"]) / "costs"
    assert not costs.exists()
    out = tmp_path / "run"
    run(
        "fashion_mnist_resnet18.py",
        f"--data-dir {fmnist} --output-dir {out} --limit-train-batches 2 --model resnet10t "
        f"--model-name none --target-latency 0.9 --target-batch-size 1 --target-rank-step 64 "
        f"--period 1 {QUICK}",
    )
    chosen = json.loads((out / "target_plan.json").read_text())
    timed = [r for r in chosen["layers"] if r["dense_ms"] is not None]
    assert timed and all(r["dense_ms"] > 0 for r in timed)  # measured, not read: cache was empty
    assert any(costs.rglob("*.json"))  # the tables it measured are cached for the next run
    predicted = chosen["predicted"]["latency_fraction"]
    assert chosen["plan"] and predicted <= 0.9
    low = results(out)["decomposed"]["rank_plan"]
    assert set(low) <= set(chosen["plan"]) and all(low[n] <= chosen["plan"][n] for n in low)


def test_target_latency_plan_priced_by_measured_sensitivity(fmnist: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10, in_chans=1)
    seed_cost_cache(model, Target(batch_size=2, input_size=(1, 28, 28), threads=1))
    for m in model.modules():  # timm zero-initializes each block's last BN scale
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    weights = tmp_path / "dense.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "run"
    run(
        "fashion_mnist_resnet18.py",
        f"--data-dir {fmnist} --output-dir {out} --limit-train-batches 2 --target-latency 0.8 "
        f"--target-batch-size 2 --target-sensitivity-images 8 --pretrained {weights} "
        f"--period 1 {QUICK}",
    )
    chosen = json.loads((out / "target_plan.json").read_text())
    assert chosen["objective"] == "output KL divergence on 8 images"
    assert chosen["plan"] and chosen["predicted_output_kl"] > 0
    assert all(r["sensitivity"] is not None for r in chosen["layers"] if r["rank"] is not None)
    assert results(out)["decomposed"]["rank_plan"].keys() <= chosen["plan"].keys()


def test_cifar10_recipes(tmp_path: Path) -> None:
    data = write_cifar10(tmp_path / "data")
    for script, scheme in (("cifar10_resnet20.py", "spatial"), ("cifar10_resnet56.py", "channel")):
        out = tmp_path / script
        run(
            script,
            f"--data-dir {data.parent} --output-dir {out} --scheme {scheme} "
            f"--limit-train-batches 3 --period 1 --energy 0.6 {QUICK}",
        )
        res = results(out)
        assert res["config"]["model"].startswith("cifar_resnet")
        assert res["data"]["train_images"] == 80 and res["data"]["val_images"] == 16
        assert res["decomposed"]["scheme"] == scheme


def test_imagenet_recipes_from_dense_weights(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "imagenet")
    weights = tmp_path / "dense.pth"
    dense = timm.create_model("resnet18", num_classes=3)
    torch.save(dense.state_dict(), weights)
    out = tmp_path / "r18"
    run(
        "imagenet_resnet18.py",
        f"--data-dir {data} --output-dir {out} --pretrained {weights} "
        f"--limit-val-batches 1 {QUICK}",
    )
    res = results(out)
    assert res["data"]["input_size"] == [3, 224, 224]
    assert res["config"]["pretrained"] == str(weights)
    assert 0.0 <= res["initial_top1"] <= 100.0  # the starting dense model was evaluated
    out50 = tmp_path / "r50"
    run(
        "imagenet_resnet50.py",
        f"--data-dir {data} --output-dir {out50} --pretrained none "
        f"--limit-train-batches 1 --limit-val-batches 1 {QUICK}",
    )
    assert results(out50)["decomposed"]["rank_plan"]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("fashion_mnist_resnet18.py", "t10k-images-idx3-ubyte"),
        ("cifar10_resnet20.py", "data_batch_1"),
        ("imagenet_resnet50.py", "DIR/train/<class>/<image>"),
    ],
)
def test_missing_data_dir_names_the_layout(script: str, expected: str, tmp_path: Path) -> None:
    args = f"--data-dir {tmp_path / 'nowhere'} --pretrained none --output-dir {tmp_path / 'o'}"
    proc = run(script, args, check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_bad_pretrained_file_is_a_clear_error(fmnist: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    args = f"--data-dir {fmnist} --pretrained {bad} --output-dir {tmp_path / 'o'} {QUICK}"
    proc = run("fashion_mnist_resnet18.py", args, check=False)
    assert proc.returncode != 0 and "--pretrained" in proc.stderr and "Traceback" not in proc.stderr


def test_nothing_to_decompose_is_reported_not_saved(fmnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = f"--data-dir {fmnist} --output-dir {out} --energy 1.0 --limit-train-batches 2 {QUICK}"
    proc = run("fashion_mnist_resnet18.py", args)
    res = results(out)
    assert "decomposed" not in res and "nothing was decomposed" in res["note"]
    assert not (out / "model").exists() and "nothing was decomposed" in proc.stdout + proc.stderr
    # what was asked for and not done is named, not silently skipped
    assert "no model was saved (--model-name resnet18_trp_ch_fmnist skipped)" in res["note"]


def test_refuses_to_overwrite_a_run_without_resume(fmnist: Path, tmp_path: Path) -> None:
    args = f"--data-dir {fmnist} --output-dir {tmp_path / 'run'} --limit-train-batches 2 {QUICK}"
    run("fashion_mnist_resnet18.py", args)
    proc = run("fashion_mnist_resnet18.py", args, check=False)
    assert proc.returncode != 0 and "--resume" in proc.stderr


def test_resume_after_kill_matches_uninterrupted_run(fmnist: Path, tmp_path: Path) -> None:
    common = (
        f"--data-dir {fmnist} --epochs 2 --batch-size 8 --period 3 --checkpoint-every 2 "
        "--no-progress --seed 7"
    )
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run("fashion_mnist_resnet18.py", f"{common} --output-dir {straight}")

    cmd = recipe_cmd("fashion_mnist_resnet18.py", f"{common} --output-dir {killed}")
    env = {**os.environ, **ENV}
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = killed / "checkpoints"

    def reached() -> bool:  # step 6's checkpoint: the middle of the first of two 12-step epochs
        return ckpts.is_dir() and any(
            p.name >= "step-000000006.pt" for p in ckpts.glob("step-*.pt")
        )

    deadline = time.time() + 300
    while time.time() < deadline and not reached():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9
    proc.wait()
    assert reached() and not (killed / "train_results.json").exists()
    # a kill while writing leaves a temp file behind; a damaged newest file is skipped
    partial = ckpts / ".step-000000099.pt.tmp-0123abcd"
    partial.write_bytes(b"partial")
    older, newest = sorted(ckpts.glob("step-*.pt"))[-2:]
    newest.write_bytes(newest.read_bytes()[:1000])
    resume_step = int(older.stem.removeprefix("step-"))
    assert 0 < resume_step < 24

    resumed = run("fashion_mnist_resnet18.py", f"{common} --output-dir {killed} --resume")
    # it resumed from the last intact checkpoint, not from scratch: only the remaining
    # optimizer steps ran after the restart (one TRP projection every 3 of them)
    training = results(killed)["training"]
    assert training["resumed_from"] == {"path": str(older), "step": resume_step}
    assert f"resumed from {older} (epoch 1, step {resume_step})" in resumed.stdout
    assert f"checkpoint {newest} is unreadable" in resumed.stderr
    assert f"removed {partial}" in resumed.stdout and not partial.exists()
    assert training["optimizer_steps"] == results(straight)["training"]["optimizer_steps"] == 24
    assert training["steps_this_process"] == 24 - resume_step
    assert results(killed)["weight_digests"] == results(straight)["weight_digests"]
    history = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert results(killed)["dense"]["top1"] == results(straight)["dense"]["top1"]


def test_torchrun_two_processes_on_cpu(fmnist: Path, tmp_path: Path) -> None:
    """Rank 1 computes every projection slightly differently (tests/perturbed_recipe.py):
    gradient averaging alone would keep the processes apart; rank 0's broadcast does not."""
    out = tmp_path / "ddp"
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    args = f"--data-dir {fmnist} --output-dir {out} --period 2 {QUICK}"
    perturbed = [
        sys.executable,
        *launcher,
        str(ROOT / "tests" / "perturbed_recipe.py"),
        *shlex.split(args),
    ]
    proc = subprocess.run(
        perturbed, capture_output=True, text=True, env={**os.environ, **ENV}, cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    res = results(out)
    assert res["training"]["processes"] == 2
    assert res["training"]["optimizer_steps"] == 6  # 96 images / (2 ranks x 8)
    digests = res["weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # identical after TRP projections
    assert len(res["decomposed"]["rank_plan"]) > 0
    # one copy of every file, written by rank 0
    assert proc.stdout.count("| decomposed (channel)") == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000000006.pt"]
