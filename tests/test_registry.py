"""The registry, the local store and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from olah_hub import use_hub
from zoo_models import METRICS, outputs, save_tiny, tiny_factorized

import trp_zoo
from trp_zoo import UnknownModelError, WeightsNotPublishedError
from trp_zoo.__main__ import main
from trp_zoo.zoo.registry import REGISTRY

TESTS = Path(__file__).parent
NAME = "resnet18_trp_ch_fmnist"  # a registry name with no published weights


@pytest.fixture(autouse=True)
def _zoo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "zoo_home"
    monkeypatch.setenv("TRP_ZOO_HOME", str(home))
    return home


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(TRP_ZOO_HOME=str(tmp_path / "zoo_home"), HF_HOME=str(tmp_path / "hf_home"))
    env.update(extra)
    return env


def test_registry_lists_the_paper_models_and_their_recipes() -> None:
    names = trp_zoo.list_models()
    assert set(names) == set(REGISTRY)
    assert trp_zoo.list_models("resnet18*") == [
        "resnet18_trp_ch",
        "resnet18_trp_ch_fmnist",
        "resnet18_trp_sp",
        "resnet18_trp_sp_fmnist",
    ]
    assert trp_zoo.list_models(["*_sp", "*_sp_*"], exclude_filters="resnet18*") == [
        "resnet20_trp_sp",
        "resnet50_trp_sp",
    ]
    assert trp_zoo.list_models(pretrained=True) == []  # nothing published, nothing trained here
    for entry in REGISTRY.values():
        assert entry.recipe.endswith(f"--scheme {entry.scheme}")
        assert entry.repo_id == f"trp-zoo/{entry.name}"
        assert not entry.published and not entry.metrics
    assert trp_zoo.get_entry("resnet20_trp_ch").base_architecture == "cifar_resnet20"
    with pytest.raises(UnknownModelError, match="Did you mean: resnet50_trp_ch"):
        trp_zoo.get_entry("resnet50_trp_c")


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(
        UnknownModelError, match=r"unknown model 'resnet20_trp_hc'.*resnet20_trp_ch"
    ):
        trp_zoo.load("resnet20_trp_hc")


def test_unpublished_registry_name_offline_says_which_recipe_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_hub(monkeypatch, "http://127.0.0.1:9", tmp_path / "hf_home", offline=True)
    with pytest.raises(WeightsNotPublishedError) as err:
        trp_zoo.load("resnet50_trp_ch")
    message = str(err.value)
    assert "HF_HUB_OFFLINE=1 is set" in message
    assert "`python recipes/imagenet_resnet50.py --scheme channel`" in message
    assert "records the model locally as 'resnet50_trp_ch'" in message


_CHILD = """
import json, sys, torch, trp_zoo
sys.path.insert(0, {tests!r})
from zoo_models import probe
model = trp_zoo.load({name!r}).eval()
info = trp_zoo.model_info({name!r})
with torch.no_grad():
    out = model(probe()).tolist()
print(json.dumps({{"out": out, "origin": info["origin"], "top1": info["metrics"]["top1"]}}))
"""


def test_a_model_saved_with_a_name_loads_by_name_in_a_new_offline_process(
    tmp_path: Path, _zoo_home: Path
) -> None:
    model = tiny_factorized()
    save_tiny(tmp_path / "run" / "checkpoint", model, register_as=NAME)
    assert (_zoo_home / "models" / NAME / "model.safetensors").is_file()
    assert trp_zoo.list_models(pretrained=True) == [NAME]
    code = _CHILD.format(tests=str(TESTS), name=NAME)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["origin"] == "local-store"  # the local model wins over the (absent) hub one
    assert child["top1"] == METRICS["top1"]
    assert torch.allclose(torch.tensor(child["out"]), outputs(model), atol=1e-6)


def test_cli_list_shows_local_models_with_their_accuracy(tmp_path: Path) -> None:
    save_tiny(tmp_path / "ckpt", register_as=NAME, metrics={**METRICS, "top1": 87.25})
    save_tiny(tmp_path / "other", register_as="my_experiment")
    done = subprocess.run(
        [sys.executable, "-m", "trp_zoo", "list"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "87.25" in rows[NAME] and "measured here" in rows[NAME] and "local" in rows[NAME]
    assert "88.50" in rows["my_experiment"]
    assert "90.50" in rows["resnet20_trp_ch"] and "paper target" in rows["resnet20_trp_ch"]
    assert "not published" in rows["resnet50_trp_sp"]
    assert "No trp-zoo weights are published yet" in done.stdout


def test_cli_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "resnet20_trp_sp"]) == 0
    out = capsys.readouterr().out
    assert "trp-zoo/resnet20_trp_sp (not published yet)" in out
    assert "python recipes/cifar10_resnet20.py --scheme spatial" in out
    assert "paper target:  top-1 90.62 at 2.84x fewer MACs" in out

    save_tiny(tmp_path / "ckpt", register_as=NAME)
    assert main(["info", NAME]) == 0
    out = capsys.readouterr().out
    assert "trained on this machine" in out and "top1: 88.5" in out
    assert main(["info", NAME, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["registry"]["recipe"].endswith("--scheme channel")
    assert info["checkpoint"]["metrics"]["top1"] == 88.5

    assert main(["info", "resnet18_trp_chh"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model") and "Did you mean" in err
    assert "Traceback" not in err


def test_cli_publish_to_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_factorized()
    ckpt = save_tiny(tmp_path / "ckpt", model)
    shared = tmp_path / "shared"
    assert main(["publish", str(ckpt), "--repo", "lab/tiny", "--to-dir", str(shared)]) == 0
    assert "published lab/tiny to" in capsys.readouterr().out
    assert torch.equal(outputs(trp_zoo.load(shared / "lab" / "tiny")), outputs(model))
    assert main(["publish", str(tmp_path / "nothing"), "--repo", "lab/x", "--to-dir", "d"]) == 2
    assert "has no config.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--repo", "lab/tiny", "--to-dir", "SHARED", "--revision", "v2"],
            "error: --revision would be ignored: --to-dir copies the files, with no branch, "
            "commit or visibility; drop them, or publish with --mirror-dir or to the hub",
        ),
        (
            ["--repo", "lab/tiny", "--to-dir", "SHARED", "--message", "m", "--private"],
            "error: --message and --private would be ignored: --to-dir copies the files",
        ),
        (
            ["--repo", "lab/tiny", "--mirror-dir", "SHARED", "--private"],
            "error: --private would be ignored: a mirror directory has no visibility setting; "
            "drop it, or publish to the hub",
        ),
        (
            ["--repo", "lab/tiny model", "--to-dir", "SHARED"],
            "error: 'lab/tiny model' is not a repo id (Repo id must use alphanumeric chars, '-', "
            "'_' or '.'",
        ),
    ],
)
def test_cli_publish_refuses_options_it_would_ignore_and_bad_repo_ids(
    extra: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """These used to publish anyway, silently dropping the option (or publishing a repo the
    hub would refuse)."""
    ckpt = save_tiny(tmp_path / "ckpt")
    shared = tmp_path / "shared"
    extra = [str(shared) if e == "SHARED" else e for e in extra]
    assert main(["publish", str(ckpt), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected) and "\n" not in err
    assert not shared.exists()  # nothing was published


def test_cli_publish_to_an_unreachable_hub_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, the message blamed 'the paths given'; an unreachable endpoint was an httpx
    traceback."""
    from huggingface_hub import constants

    ckpt = save_tiny(tmp_path / "ckpt")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["publish", str(ckpt), "--repo", "lab/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: publishing to ") and "needs the network, but HF_HUB_OFFLINE" in err
    )
    assert "--mirror-dir" in err and "check the paths" not in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert main(["publish", str(ckpt), "--repo", "lab/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach the hub at http://127.0.0.1:9 (")
    assert "check the network and HF_ENDPOINT" in err and "\n" not in err


def test_register_local_replaces_an_older_model(tmp_path: Path) -> None:
    old, new = tiny_factorized(seed=0), tiny_factorized(seed=1)
    save_tiny(tmp_path / "a", old, register_as="mine")
    save_tiny(tmp_path / "b", new)
    stored = trp_zoo.register_local(tmp_path / "b", "mine")
    assert torch.equal(outputs(trp_zoo.load("mine")), outputs(new))
    # no leftovers: the checkpoint and its lock file (kept, so every writer locks one inode)
    assert sorted(p.name for p in stored.parent.iterdir()) == [".mine.lock", "mine"]


@pytest.mark.parametrize("where", ["home", "above"])
def test_a_zoo_home_that_is_a_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """``list`` used to say no model was stored, and ``load`` that the name was unknown."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    home = blocker if where == "home" else blocker / "zoo"
    monkeypatch.setenv("TRP_ZOO_HOME", str(home))
    what = "is a file" if where == "home" else f"is under a file ({blocker})"
    message = (
        f"TRP_ZOO_HOME {home} {what}, not a directory: point TRP_ZOO_HOME at a directory or "
        "unset it (default ~/.cache/trp_zoo)"
    )
    with pytest.raises(trp_zoo.ZooError) as err:
        trp_zoo.load(NAME)
    assert str(err.value) == message
    assert main(["list"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
