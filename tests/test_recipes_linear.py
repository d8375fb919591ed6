"""The recipes of models with Linear layers (ViT, DeiT, ConvNeXt) end to end on tiny data,
shrunk by ``--model-kwargs``; ``--layers`` reaches TRP and the checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

import trp_zoo
from runtime.target import Target
from runtime.train_target import plan_for_target
from tests.fakedata import write_fashion_mnist, write_image_folder
from tests.runtime_models import seed_cost_cache
from tests.test_recipes import ENV, QUICK, ROOT, results, run
from trp_zoo.train.recipe import run_recipe

TINY_VIT = "--model-kwargs depth=2 embed_dim=32 num_heads=2"


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def recipe_defaults(script: str) -> Any:
    spec = importlib.util.spec_from_file_location(script[:-3], ROOT / "recipes" / script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.DEFAULTS


def is_linear_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("qkv", "proj", "fc1", "fc2")


def test_fashion_mnist_vit_decomposes_linears_and_loads_back(fmnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        *("--data-dir", str(fmnist), "--output-dir", str(out), "--period", "2", "--energy", "0.8"),
        *QUICK.split(),
        *TINY_VIT.split(),
    ]
    res = run_recipe(recipe_defaults("fashion_mnist_vit.py"), "recipes/fashion_mnist_vit.py", argv)
    assert res["config"]["layers"] == "all" and res["config"]["opt"] == "adamw"
    plan = res["decomposed"]["rank_plan"]
    # TRP trained and decompose factorized the blocks' Linears; stem and head stayed dense
    assert "blocks.0.mlp.fc1" in plan and all(is_linear_name(n) for n in plan)
    assert "head" not in plan and "patch_embed.proj" not in plan
    assert res["decomposed"]["macs"] < res["dense"]["macs"]
    # the resized architecture travels in config.json and the checkpoint loads back
    config = json.loads((out / "model" / "config.json").read_text())
    args = config["model_args"]
    assert args["base_architecture"] == "vit_tiny_patch16_224"
    assert (args["patch_size"], args["depth"], args["embed_dim"], args["in_chans"]) == (4, 2, 32, 1)
    assert args["img_size"] in (28, [28, 28])
    saved = json.loads((out / "model" / "results.json").read_text())
    assert saved["provenance"]["layers"] == "all"
    loaded = trp_zoo.load(str(out / "model")).eval()
    assert trp_zoo.rank_plan(loaded) == plan
    low = res["decomposed_model"].eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), low(x))


def _killed_at(step: int, script: str, args: str) -> None:
    """Run ``script`` until its checkpoint of optimizer ``step`` is written, then kill -9."""
    cmd = [sys.executable, str(ROOT / "tests" / "killed_recipe.py"), script, str(step)]
    proc = subprocess.run(
        [*cmd, *args.split()], env={**os.environ, **ENV}, cwd=ROOT, capture_output=True, timeout=600
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def test_fashion_mnist_vit_resume_after_kill_matches_uninterrupted_run(
    fmnist: Path, tmp_path: Path
) -> None:
    common = (
        f"--data-dir {fmnist} --epochs 2 --batch-size 8 --eval-batch-size 16 --period 3 "
        f"--energy 0.8 --checkpoint-every 2 --no-progress --seed 7 --model-name none {TINY_VIT}"
    )
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run("fashion_mnist_vit.py", f"{common} --output-dir {straight}")
    _killed_at(6, "fashion_mnist_vit.py", f"{common} --output-dir {killed}")  # of 24 steps
    assert not (killed / "train_results.json").exists()
    # the checkpoint's config says which layers were trained: another --layers is refused
    with pytest.raises(SystemExit) as exc:
        argv = [*common.split(), "--output-dir", str(killed), "--resume", "--layers", "linear"]
        run_recipe(recipe_defaults("fashion_mnist_vit.py"), "recipes/fashion_mnist_vit.py", argv)
    message = str(exc.value.code)
    assert "\n" not in message and message.endswith(
        "was trained with --layers all: resume with --layers all, or start a new run in "
        "another --output-dir"
    )

    run("fashion_mnist_vit.py", f"{common} --output-dir {killed} --resume")
    a, b = results(killed), results(straight)
    assert a["training"]["resumed_from"]["step"] == 6
    assert a["training"]["steps_this_process"] == 24 - 6
    assert a["training"]["optimizer_steps"] == b["training"]["optimizer_steps"] == 24
    # the same weights (AdamW moments, warmup + cosine schedule and TRP state restored)
    assert a["weight_digests"] == b["weight_digests"]
    assert a["decomposed"]["rank_plan"] == b["decomposed"]["rank_plan"]
    assert a["decomposed"]["rank_plan"]
    assert a["decomposed"]["top1"] == b["decomposed"]["top1"]


def test_fashion_mnist_convnext_layers_linear_keeps_the_convs_dense(
    fmnist: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run(
        "fashion_mnist_convnext.py",
        f"--data-dir {fmnist} --output-dir {out} --period 2 --energy 0.7 --layers linear "
        f"--model-kwargs dims=[16,32,48,64] {QUICK}",
    )
    res = results(out)
    assert res["config"]["layers"] == "linear"
    assert res["config"]["model_kwargs"]["conv_mlp"] is False
    plan = res["decomposed"]["rank_plan"]
    # --layers linear: the MLP Linears only, not the 2x2 downsampling convs
    assert "stages.0.blocks.0.mlp.fc1" in plan and all(
        n.split(".")[-1] in ("fc1", "fc2") for n in plan
    )
    loaded = trp_zoo.load("convnext_trp_ch_fmnist")
    assert trp_zoo.rank_plan(loaded) == plan


def test_imagenet_deit_small_recipe_from_dense_weights(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "imagenet")
    weights = tmp_path / "dense.pth"
    dense = timm.create_model("deit_small_patch16_224", num_classes=3, depth=1)
    torch.save(dense.state_dict(), weights)
    out = tmp_path / "deit"
    run(
        "imagenet_deit_small.py",
        f"--data-dir {data} --output-dir {out} --pretrained {weights} --model-kwargs depth=1 "
        f"--energy 0.5 --period 1 --limit-val-batches 1 {QUICK}",
    )
    res = results(out)
    assert res["data"]["input_size"] == [3, 224, 224]
    assert res["config"]["pretrained"] == str(weights) and res["config"]["opt"] == "adamw"
    assert 0.0 <= res["initial_top1"] <= 100.0  # the starting dense model was evaluated
    plan = res["decomposed"]["rank_plan"]
    assert "blocks.0.attn.qkv" in plan and all(is_linear_name(n) for n in plan)
    assert "head" not in plan


def test_imagenet_convnext_tiny_recipe_trains_linears_and_convs(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "imagenet")
    out = tmp_path / "convnext"
    run(
        "imagenet_convnext_tiny.py",
        f"--data-dir {data} --output-dir {out} --pretrained none --energy 0.5 --period 1 "
        f"--model-kwargs depths=[1,1,1,1] dims=[16,32,48,64] --limit-val-batches 1 {QUICK}",
    )
    res = results(out)
    assert res["config"]["model"] == "convnext_tiny" and res["config"]["layers"] == "all"
    plan = res["decomposed"]["rank_plan"]
    # --layers all: the MLP Linears and the downsampling convs; stem and head stay dense
    assert "stages.0.blocks.0.mlp.fc1" in plan and "stages.1.downsample.1" in plan
    assert "stem.0" not in plan and "head.fc" not in plan


def test_unknown_layers_is_refused_before_training(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run("fashion_mnist_vit.py", f"--layers bogus --output-dir {out}", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "fashion_mnist_vit.py: error: --layers must be one of conv, linear, all, got 'bogus' "
        "(all options: fashion_mnist_vit.py --help)"
    )
    assert not out.exists()  # refused before the run created anything


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--layers", "linear", "--rank-plan", "PLAN"],
            "error: --rank-plan names 'stages.1.downsample.1', which --layers linear leaves out: "
            "drop it from the plan or use --layers all",
        ),
    ],
)
def test_layers_conflicts_are_refused_before_training(
    fmnist: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"stages.0.blocks.0.mlp.fc1": 4, "stages.1.downsample.1": 4}))
    out = tmp_path / "run"
    argv = [
        *("--data-dir", str(fmnist), "--output-dir", str(out), *QUICK.split()),
        *[str(plan) if e == "PLAN" else e for e in extra],
    ]
    defaults = recipe_defaults("fashion_mnist_convnext.py")
    with pytest.raises(SystemExit) as exc:
        run_recipe(defaults, "fashion_mnist_convnext.py", argv)
    # a usage error (exit 2) prints its line to stderr; a later refusal is the exit message
    message = capsys.readouterr().err.strip() if exc.value.code == 2 else str(exc.value.code)
    assert message.splitlines()[-1].endswith(expected)
    assert not (out / "checkpoints").exists()


# the convnext recipe's model at a smaller width: MLP Linears and 2x2 downsampling convs
CONVNEXT_DIMS = [16, 32, 48, 64]
LAYER_TYPES = {"conv": torch.nn.Conv2d, "linear": torch.nn.Linear}


def convnext_model(dims: list[int]) -> torch.nn.Module:
    """The convnext recipe's model at width ``dims``, as the recipe creates it."""
    kwargs = {**recipe_defaults("fashion_mnist_convnext.py").model_kwargs, "dims": dims}
    return timm.create_model("convnext_atto", num_classes=10, in_chans=1, **kwargs)


def run_convnext_target(fmnist: Path, out: Path, args: str) -> dict[str, Any]:
    """The convnext recipe with ``--target-latency``, in this process; its target plan."""
    argv = [
        *("--data-dir", str(fmnist), "--output-dir", str(out), "--limit-train-batches", "2"),
        *("--period", "1", "--model-name", "none", *QUICK.split(), *args.split()),
    ]
    defaults = recipe_defaults("fashion_mnist_convnext.py")
    res = run_recipe(defaults, "fashion_mnist_convnext.py", argv, target_planner=plan_for_target)
    chosen: dict[str, Any] = json.loads((out / "target_plan.json").read_text())
    assert res["target_plan"] == chosen
    # TRP trained the planned layers only, each at most at its planned rank
    low = res["decomposed"]["rank_plan"]
    assert set(low) <= set(chosen["plan"]) and all(low[n] <= chosen["plan"][n] for n in low)
    return chosen


@pytest.mark.parametrize(("kind", "budget"), [("conv", 0.95), ("linear", 0.8)])
def test_target_latency_plans_over_the_layers_kind_only(
    fmnist: Path, tmp_path: Path, kind: str, budget: float
) -> None:
    # synthetic costs of every conv and Linear in the cost cache: nothing is timed
    model = convnext_model(CONVNEXT_DIMS)
    seeded = seed_cost_cache(model, Target(batch_size=2, input_size=(1, 28, 28), threads=1))
    types = {n: type(m) for n, m in model.named_modules()}
    assert {types[n] for n, c in seeded.items() if c.rank_ms} == {torch.nn.Conv2d, torch.nn.Linear}
    chosen = run_convnext_target(
        fmnist,
        tmp_path / "run",
        f"--layers {kind} --target-latency {budget} --target-batch-size 2 "
        f"--model-kwargs dims=[{','.join(map(str, CONVNEXT_DIMS))}]",
    )
    assert chosen["plan"] and chosen["predicted"]["latency_fraction"] <= budget
    # the candidates are every layer of that kind with a useful rank, and only those
    of_kind = {
        n for n, c in seeded.items() if c.rank_ms and issubclass(types[n], LAYER_TYPES[kind])
    }
    assert {r["name"] for r in chosen["layers"]} == of_kind
    assert all(issubclass(types[n], LAYER_TYPES[kind]) for n in chosen["plan"])


def test_target_latency_with_layers_linear_on_real_timing(fmnist: Path, tmp_path: Path) -> None:
    """No synthetic costs: the recipe times the Linears of its model (both kinds) on ONNX
    Runtime and plans over them only."""
    chosen = run_convnext_target(
        fmnist,
        tmp_path / "run",
        "--layers linear --target-latency 0.97 --target-batch-size 1 --target-rank-step 16",
    )
    dims = recipe_defaults("fashion_mnist_convnext.py").model_kwargs["dims"]
    types = {n: type(m) for n, m in convnext_model(dims).named_modules()}
    assert chosen["plan"] and chosen["predicted"]["latency_fraction"] <= 0.97
    timed = [r for r in chosen["layers"] if r["dense_ms"] is not None]
    assert timed and all(r["dense_ms"] > 0 for r in timed)
    assert all(issubclass(types[r["name"]], torch.nn.Linear) for r in chosen["layers"])
    assert "stages.1.downsample.1" in types  # a conv candidate the plan left out


def test_target_latency_with_no_candidate_of_the_kind_is_refused_before_training(
    fmnist: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = [
        *("--data-dir", str(fmnist), "--output-dir", str(out), *QUICK.split()),
        *("--layers", "conv", "--target-latency", "0.5", *TINY_VIT.split()),
    ]
    with pytest.raises(SystemExit) as exc:
        run_recipe(
            recipe_defaults("fashion_mnist_vit.py"),
            "fashion_mnist_vit.py",
            argv,
            target_planner=plan_for_target,
        )
    # a ViT's only conv is its patch embedding, the stem
    assert str(exc.value.code) == (
        "error: --target-latency 0.5: the model has no nn.Conv2d with groups=1 (and timm's "
        "conv variants) other than the stem and classifier for --layers conv to plan over: "
        "use --layers linear or all"
    )
    assert not (out / "checkpoints").exists() and not (out / "target_plan.json").exists()
