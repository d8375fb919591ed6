"""A recipe refuses, before its first training step, what would make it fail at the end;
errors are one line; the end of a run keeps its numbers whatever a later step does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fakedata import write_fashion_mnist
from trp_zoo.train.config import SCHEDULERS
from trp_zoo.train.recipe import run_recipe

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "1", "--batch-size", "8", "--eval-batch-size", "16", "--no-progress"]
QUICK += ["--workers", "0", "--limit-train-batches", "1"]


def _defaults():
    spec = importlib.util.spec_from_file_location(
        "fmnist_recipe", ROOT / "recipes" / "fashion_mnist_resnet18.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.DEFAULTS


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def recipe(fmnist: Path, out: Path, *extra: str):
    argv = ["--data-dir", str(fmnist), "--output-dir", str(out), *QUICK, *extra]
    return run_recipe(_defaults(), "recipes/fashion_mnist_resnet18.py", argv)


def refused(fmnist: Path, out: Path, *extra: str) -> str:
    with pytest.raises(SystemExit) as exc:
        recipe(fmnist, out, *extra)
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert not (out / "checkpoints").exists()  # refused before any training
    return message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model-name", "../../x y"], "--model-name: '../../x y' is not a valid model name"),
        (["--publish-mirror", "MIRROR"], "--publish-mirror: 'not_a_zoo_name' is not in the zoo"),
        (["--push-to-hub", "noslash"], "--push-to-hub: 'noslash' is not a repo id"),
        (
            ["--model-name", "resnet50_trp_ch"],  # trp_zoo.load would return this run's model
            "--model-name resnet50_trp_ch is the zoo's resnet50 (channel scheme, imagenet-1k), "
            "not this run's resnet18 (channel, fashion-mnist): choose another name",
        ),
        (
            ["--model-name", "resnet18_trp_sp_fmnist"],
            "is the zoo's resnet18 (spatial scheme, fashion-mnist), not this run's resnet18 "
            "(channel, fashion-mnist)",
        ),
    ],
)
def test_bad_names_are_refused_before_training(fmnist, tmp_path, extra, expected) -> None:
    extra = [e.replace("MIRROR", str(tmp_path / "mirror")) for e in extra]
    if "--publish-mirror" in extra:
        extra += ["--model-name", "not_a_zoo_name"]
    assert expected in refused(fmnist, tmp_path / "run", *extra)


def test_an_invalid_model_name_is_the_only_problem_reported(fmnist, tmp_path) -> None:
    """The store is checked (and created) only for a name that could be registered in it."""
    from trp_zoo.zoo.store import store_dir

    message = refused(fmnist, tmp_path / "run", "--model-name", "../../x y")
    assert message.startswith("error: --model-name: '../../x y' is not a valid model name")
    assert not store_dir().exists()


def test_paths_that_are_files_are_refused_before_training(fmnist, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    (tmp_path / "file").write_text("x")
    message = refused(fmnist, tmp_path / "file")
    assert f"--output-dir {tmp_path / 'file'} is a file" in message
    message = refused(fmnist, Path("/proc/trp_zoo_run"))
    assert "cannot create --output-dir /proc/trp_zoo_run" in message
    out.mkdir()
    (out / "model").write_text("x")
    assert f"{out / 'model'} is a file" in refused(fmnist, out)
    (out / "model").unlink()
    home = tmp_path / "home_file"
    home.write_text("x")
    monkeypatch.setenv("TRP_ZOO_HOME", str(home))
    assert f"TRP_ZOO_HOME {home} is a file" in refused(fmnist, out)


def test_resume_with_nothing_to_resume_says_so(fmnist, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    recipe(fmnist, out, "--resume", "--model-name", "none")
    assert f"--resume: no checkpoint in {out / 'checkpoints'}, training from the start" in (
        capsys.readouterr().out
    )


def test_results_are_written_when_saving_the_model_fails(fmnist, tmp_path, monkeypatch) -> None:
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("trp_zoo.train.finalize.save_model", full_disk)
    out = tmp_path / "run"
    message = refused_after_training(fmnist, out, "--energy", "0.5")
    assert "saving the decomposed model failed" in message and "--resume" in message
    res = json.loads((out / "train_results.json").read_text())
    assert res["error"] == message.removeprefix("error: ")
    assert res["decomposed"]["rank_plan"] and "top1" in res["dense"]


def refused_after_training(fmnist: Path, out: Path, *extra: str) -> str:
    with pytest.raises(SystemExit) as exc:
        recipe(fmnist, out, *extra)
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_disk_full_while_checkpointing_is_one_line(fmnist, tmp_path, monkeypatch) -> None:
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:  # a training checkpoint
            f.write(b"partial")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                "writing file data/3: file write failed"
            )
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    out = tmp_path / "run"
    message = refused_after_training(fmnist, out)
    assert "could not write" in message and "step-" in message and "free disk space" in message
    assert not list((out / "checkpoints").glob(".step-*"))  # no partial file left


@pytest.mark.parametrize(
    ("file", "array", "expected"),
    [
        (
            "t10k-labels-idx1-ubyte.gz",
            np.full(48, 200, np.uint8),
            "label 200 is out of range (Fashion-MNIST has 10 classes, 0-9)",
        ),
        (
            "train-images-idx3-ubyte.gz",
            np.zeros((96, 7, 7), np.uint8),
            "images are 7x7, Fashion-MNIST's are 28x28",
        ),
    ],
)
def test_fashion_mnist_of_the_wrong_content_is_refused_before_training(
    fmnist, tmp_path, file, array, expected
) -> None:
    """Labels out of range failed in evaluation after the first epoch; 7x7 images in the
    first step's random crop, each with a traceback."""
    import gzip
    import shutil

    from tests.fakedata import _idx

    data = tmp_path / "data"
    shutil.copytree(fmnist, data)
    (data / file).write_bytes(gzip.compress(_idx(array)))
    message = refused(fmnist, tmp_path / "o", "--data-dir", str(data))
    assert message.startswith(f"error: {data / file}: {expected}")


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_damaged_fashion_mnist_gz_is_one_line(fmnist, tmp_path, damage) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fmnist, data)
    target = data / "train-images-idx3-ubyte.gz"
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"not gzip at all")
    with pytest.raises(SystemExit) as exc:
        run_recipe(
            _defaults(),
            "recipes/fashion_mnist_resnet18.py",
            ["--data-dir", str(data), "--output-dir", str(tmp_path / "o"), *QUICK],
        )
    message = str(exc.value.code)
    assert message.startswith(f"error: {target} is not a complete gzip file")
    assert "\n" not in message and "download it again" in message


def _config(*args: str):
    from trp_zoo.train.config import build_parser, config_from_args

    defaults = _defaults()
    return config_from_args(defaults, build_parser(defaults).parse_args(list(args)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (  # was silently ignored: without TRP nothing reads the plan
            ["--no-trp", "--rank-plan", "DIR/plan.json"],
            "--rank-plan caps TRP's ranks: it needs --trp (drop --no-trp)",
        ),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (  # overflowed inside SGD's first step with a torch traceback
            ["--lr", "1e308"],
            "--lr 1e+308 does not fit in float32, the precision training uses: give a value of "
            "magnitude at most 3.4e+38",
        ),
        (["--weight-decay", "1e39"], "--weight-decay 1e+39 does not fit in float32"),
        (["--nuclear-weight", "nan"], "--nuclear-weight must be a finite number, got nan"),
        (["--distill-temperature", "nan"], "--distill-temperature must be a finite number"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0, got -1.0"),
        (["--momentum", "-0.5"], "--momentum must be >= 0, got -0.5"),
        (["--min-lr", "-1"], "--min-lr must be >= 0, got -1.0"),
        (["--decay-rate", "0"], "--decay-rate must be > 0 (e.g. 0.1), got 0.0"),
        (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1), got 1.5"),
        (
            ["--decay-milestones", "3", "2"],
            "--decay-milestones must be increasing epochs (at which the lr decays) from 1 on, "
            "got 3 2",
        ),
        (["--decay-milestones", "0", "2"], "from 1 on, got 0 2"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0 (0: no warm-up), got -1"),
        (
            ["--epochs", "2", "--warmup-epochs", "5"],
            "--warmup-epochs 5 is longer than the run (--epochs 2), so the learning rate would "
            "never reach --lr: use at most 2 warm-up epochs or more --epochs",
        ),
        (["--limit-train-batches", "-1"], "--limit-train-batches must be >= 0 (0: all batches)"),
        (["--limit-val-batches", "-1"], "--limit-val-batches must be >= 0 (0: all batches)"),
        (["--checkpoint-every", "-5"], "--checkpoint-every must be >= 0 (0: once per epoch)"),
        (["--workers", "-1"], "--workers must be >= 0 (0: load in the main process), got -1"),
        (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
        (
            ["--opt", "adamx"],
            "--opt 'adamx' is not a timm optimizer (e.g. sgd, adamw). Did you mean: adamax",
        ),
        (["--rank-plan", "DIR"], "is a directory: give a JSON file {layer name: rank}"),
        (
            ["--pretrained", "missing.pth"],
            "--pretrained missing.pth is not a file: give the dense starting weights' "
            "state-dict file (.pth/.safetensors) or hf-hub:ID, or none to start from random",
        ),
    ],
)
def test_bad_numbers_and_paths_are_refused_by_the_config(args, message, tmp_path) -> None:
    """Values that used to train anyway (nan, negative limits, a warm-up longer than the run),
    or fail deep inside torch or timm after the data was loaded."""
    args = [a.replace("DIR", str(tmp_path)) for a in args]
    (tmp_path / "plan.json").write_text('{"layer1.0.conv1": 8}')
    with pytest.raises(ValueError) as exc:
        _config(*args)
    assert message in str(exc.value)


def test_lookahead_optimizers_pass_the_check() -> None:
    assert _config("--opt", "lookahead_adamw").opt == "lookahead_adamw"


@pytest.mark.parametrize("sched", ["none", "plateau", "wsd"])
def test_schedulers_the_trainer_cannot_step_are_refused_by_the_parser(sched, capsys) -> None:
    """timm builds no scheduler for none (the trainer then failed on None), plateau steps only
    per epoch on a metric, wsd needs decay epochs: each used to fail after the data loaded."""
    with pytest.raises(SystemExit) as exc:
        _config("--sched", sched)
    assert exc.value.code == 2
    assert f"invalid choice: '{sched}'" in capsys.readouterr().err


@pytest.mark.parametrize("sched", SCHEDULERS)
def test_every_offered_scheduler_steps_per_update(sched) -> None:
    from trp_zoo.train.trainer import recipe_optimizer, recipe_scheduler

    cfg = _config("--sched", sched, "--epochs", "3", "--decay-milestones", "2")
    optimizer = recipe_optimizer(torch.nn.Linear(2, 2), cfg)
    scheduler = recipe_scheduler(optimizer, cfg, steps_per_epoch=4)
    for update in range(1, 13):
        scheduler.step_update(num_updates=update)
    scheduler.step(3)
    assert 0 <= optimizer.param_groups[0]["lr"] <= cfg.lr


def test_warmup_as_long_as_the_run_is_allowed() -> None:
    assert _config("--epochs", "1", "--warmup-epochs", "1").warmup_epochs == 1


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            "num_classes=5",
            "--model resnet18 with --model-kwargs {'num_classes': 5} gives outputs of shape "
            "[2, 5] for a batch of 2, but the data set has 10 classes: drop num_classes",
        ),
        (
            "drop_rate=abc",
            "--model resnet18 with --model-kwargs {'drop_rate': 'abc'} cannot run on the data "
            "set's 1x28x28 images (could not convert string to float: 'abc'): check --model and "
            "--model-kwargs",
        ),
        ("in_chans=3", "cannot run on the data set's 1x28x28 images (Given groups=1"),
    ],
)
def test_model_kwargs_that_break_the_model_are_refused_before_training(
    fmnist, tmp_path, kwargs, expected
) -> None:
    message = refused(fmnist, tmp_path / "run", "--model-name", "none", "--model-kwargs", kwargs)
    assert expected in message


def _state_dict_file(path: Path, arch: str, **kwargs) -> Path:
    import timm

    torch.save(timm.create_model(arch, **kwargs).state_dict(), path)
    return path


def test_pretrained_of_another_architecture_is_one_line(fmnist, tmp_path) -> None:
    resnet34 = _state_dict_file(tmp_path / "r34.pth", "resnet34", num_classes=10, in_chans=1)
    message = refused(fmnist, tmp_path / "run", "--pretrained", str(resnet34))
    assert message.startswith(
        f"error: --pretrained {resnet34} does not fit a resnet18: 96 unexpected weights "
        "(layer1.2.conv1.weight, layer1.2.bn1.weight, layer1.2.bn1.bias and 93 more). Give a "
        "state-dict file (.pth/.safetensors) of a resnet18 with the same input channels"
    )
    rgb = _state_dict_file(tmp_path / "rgb.pth", "resnet18", num_classes=1000, in_chans=3)
    message = refused(fmnist, tmp_path / "run", "--pretrained", str(rgb))
    assert "3 of other shapes (conv1.weight [64, 3, 7, 7] where the model has [64, 1, 7, 7]" in (
        message
    )
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    message = refused(fmnist, tmp_path / "run", "--pretrained", str(junk))
    assert f"--pretrained {junk} is not a readable state-dict file (" in message
    assert "weights_only=False" not in message  # torch's advice to load it unsafely


def test_rank_plan_above_the_full_rank_is_refused(fmnist, tmp_path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layer1.0.conv1": 9999}))
    message = refused(fmnist, tmp_path / "run", "--rank-plan", str(plan))
    assert message == (
        "error: rank plan asks rank 9999 for 'layer1.0.conv1', but its full rank under the "
        "channel scheme is 64; use a rank between 1 and 64"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ["--model", "resnet34"],
            "was trained with --model resnet18: resume with --model resnet18",
        ),
        (
            ["--scheme", "spatial"],
            "was trained with --scheme channel: resume with --scheme channel",
        ),
        (["--no-trp"], "was trained with --trp: resume with --trp, or start a new run"),
        (["--model-kwargs", "drop_rate=0.1"], "was trained with --model-kwargs (none): resume"),
        (["--opt", "adamw"], "was trained with --opt sgd: resume with --opt sgd"),
        (["--sched", "step"], "was trained with --sched cosine: resume with --sched cosine"),
    ],
)
def test_resume_of_a_run_with_another_model_or_scheme_is_refused(
    fmnist, tmp_path, change, expected
) -> None:
    out = tmp_path / "run"
    recipe(fmnist, out, "--model-name", "none")
    checkpoints = sorted((out / "checkpoints").iterdir())
    message = refused_after_training(fmnist, out, "--model-name", "none", "--resume", *change)
    assert expected in message and "another --output-dir" in message
    assert sorted((out / "checkpoints").iterdir()) == checkpoints  # nothing trained or lost


def test_device_cuda_without_a_gpu_is_one_line(fmnist, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = refused(fmnist, tmp_path / "run", "--device", "cuda")
    assert message.startswith("error: --device cuda was asked for, but PyTorch sees no CUDA GPU")
    assert "use --device cpu" in message


def test_resume_refuses_checkpoints_none_of_which_can_be_read(fmnist, tmp_path) -> None:
    """A file that loads but is not a training checkpoint is skipped like a damaged one; when
    nothing is left the run stops, instead of training from the start over the user's files."""
    out = tmp_path / "run"
    recipe(fmnist, out, "--model-name", "none")
    (newest,) = sorted((out / "checkpoints").iterdir())
    torch.save({"x": 1}, newest)
    message = refused_after_training(fmnist, out, "--model-name", "none", "--resume")
    assert message.startswith(f"error: --resume: no checkpoint in {out / 'checkpoints'} could")
    assert sorted((out / "checkpoints").iterdir()) == [newest]  # nothing pruned or retrained


def test_a_diverging_run_stops_at_the_first_non_finite_loss(fmnist, tmp_path) -> None:
    out = tmp_path / "run"
    message = refused_after_training(
        fmnist, out, "--model-name", "none", "--lr", "1e30", "--limit-train-batches", "3"
    )
    assert message.startswith("error: training diverged at epoch 1, batch ")
    assert "lower --lr (now 1e+30)" in message
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())


def test_a_metrics_log_that_is_a_directory_is_refused_before_training(fmnist, tmp_path) -> None:
    out = tmp_path / "run"
    (out / "metrics.jsonl").mkdir(parents=True)
    assert "metrics.jsonl is a directory" in refused(fmnist, out)


def test_hub_weights_that_cannot_be_fetched_are_one_line(fmnist, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = refused(fmnist, tmp_path / "run", "--distill-from", "hf-hub:org/teacher")
    assert message.startswith("error: --distill-from hf-hub:org/teacher: could not be fetched (")
    assert "pass --distill-from with a local weights file" in message


def test_ctrl_c_is_one_line_that_says_how_to_resume(fmnist, tmp_path, monkeypatch, capsys) -> None:
    from trp_zoo.train.trainer import Trainer

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        recipe(fmnist, out, "--model-name", "none")
    assert exc.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        "interrupted: rerun the same command with --resume to continue from the last "
        f"checkpoint in {out / 'checkpoints'}"
    )


def test_more_sensitivity_images_than_the_training_split_is_refused(fmnist, tmp_path) -> None:
    """Used to price the plan on the whole split without a word."""
    available = 96  # the training images write_fashion_mnist writes
    out = tmp_path / "run"
    argv = ["--data-dir", str(fmnist), "--output-dir", str(out), *QUICK]
    argv += ["--target-latency", "0.8", "--target-sensitivity-images", str(available + 1)]
    with pytest.raises(SystemExit) as exc:
        run_recipe(_defaults(), "recipes/fashion_mnist_resnet18.py", argv, target_planner=print)
    message = str(exc.value.code)
    assert not (out / "checkpoints").exists()  # refused before any training
    assert message == (
        f"error: --target-sensitivity-images {available + 1} is more than the {available} "
        f"images of the training split: use at most {available}"
    )
