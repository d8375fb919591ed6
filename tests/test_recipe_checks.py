"""A recipe refuses, before its first training step, what would make it fail at the end;
errors are one line; the end of a run keeps its numbers whatever a later step does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.fakedata import write_fashion_mnist
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
        (["--model-name", ""], "--model-name: '' is not a valid model name"),
        (["--publish-mirror", "MIRROR"], "--publish-mirror: 'not_a_zoo_name' is not in the zoo"),
        (["--push-to-hub", "noslash"], "--push-to-hub: 'noslash' is not a repo id"),
    ],
)
def test_bad_names_are_refused_before_training(fmnist, tmp_path, extra, expected) -> None:
    extra = [e.replace("MIRROR", str(tmp_path / "mirror")) for e in extra]
    if "--publish-mirror" in extra:
        extra += ["--model-name", "not_a_zoo_name"]
    assert expected in refused(fmnist, tmp_path / "run", *extra)


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
    assert "could not write the checkpoint" in message and "free disk space" in message
    assert not list((out / "checkpoints").glob(".step-*"))  # no partial file left


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
