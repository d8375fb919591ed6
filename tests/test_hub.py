"""Publishing to a self-hosted hub and loading through the real huggingface_hub client.

Each test starts olah (a Hugging Face-compatible hub server) on a free loopback port,
serving a mirror directory that ``trp_zoo.publish`` writes, and points huggingface_hub at
it with an empty cache.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import HfApi
from olah_hub import OLAH_CLI, OlahHub, use_hub
from zoo_models import METRICS, PRETRAINED_CFG, outputs, save_tiny, tiny_factorized

import trp_zoo
from trp_zoo import (
    CheckpointError,
    NotCachedError,
    PublishError,
    UnknownModelError,
    WeightsNotPublishedError,
)
from trp_zoo.__main__ import main

REPO = "trp-test/tiny_trp_ch"

pytestmark = pytest.mark.skipif(
    not OLAH_CLI.exists(), reason="olah is not installed (pip install -e '.[dev]')"
)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OlahHub]:
    monkeypatch.setenv("TRP_ZOO_HOME", str(tmp_path / "zoo_home"))
    server = OlahHub(tmp_path / "olah")
    server.start()
    use_hub(monkeypatch, server.url, tmp_path / "hf_home")
    try:
        yield server
    finally:
        server.stop()


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout


def _commit_file(repo: Path, name: str, data: bytes) -> None:
    """Commit a file straight into a mirror repo, as a damaged upload would land there."""
    (repo / name).write_bytes(data)
    _git(repo, "commit", "-qam", f"change {name}")


def test_publish_to_mirror_then_load_through_trp_zoo_and_timm(hub: OlahHub, tmp_path: Path) -> None:
    model = tiny_factorized()
    ckpt = save_tiny(tmp_path / "ckpt", model, repo_id=REPO)
    published = trp_zoo.publish(ckpt, REPO, mirror_dir=hub.mirror)
    assert published.target == "mirror" and published.changed
    repo = hub.mirror / "models" / "trp-test" / "tiny_trp_ch"
    assert _git(repo, "rev-parse", "main").strip() == published.commit

    info = HfApi().model_info(REPO, revision="main")
    assert info.sha == published.commit
    assert sorted(s.rfilename for s in info.siblings or []) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "results.json",
    ]
    expected = outputs(model)
    via_zoo = trp_zoo.load(REPO)
    via_timm = timm.create_model(f"hf-hub:{REPO}", pretrained=True)
    for loaded in (via_zoo, via_timm):
        assert torch.equal(outputs(loaded), expected)
        assert loaded.pretrained_cfg["hf_hub_id"].startswith(REPO)
        assert tuple(loaded.pretrained_cfg["input_size"]) == (1, 28, 28)
    assert via_zoo.pretrained_cfg["hf_hub_id"] == f"{REPO}@{published.commit}"

    meta = trp_zoo.model_info(REPO)
    assert meta["origin"] == "hub" and meta["location"] == f"{REPO}@{published.commit}"
    assert meta["base_architecture"] == "resnet18" and meta["scheme"] == "channel"
    assert meta["metrics"]["top1"] == METRICS["top1"]
    assert meta["pretrained_cfg"]["mean"] == [0.286]


def test_a_new_commit_is_seen_on_the_next_load(hub: OlahHub, tmp_path: Path) -> None:
    first, second = tiny_factorized(seed=0), tiny_factorized(seed=1)
    v1 = trp_zoo.push_to_hub(  # save + publish in one call
        first, REPO, mirror_dir=hub.mirror, metrics=METRICS, pretrained_cfg=PRETRAINED_CFG
    )
    assert torch.equal(outputs(trp_zoo.load(REPO)), outputs(first))
    # the CLI publishes the same way
    code = main(["publish", str(save_tiny(tmp_path / "v2", second)), "--repo", REPO,
                 "--mirror-dir", str(hub.mirror), "--message", "Retrained"])  # fmt: skip
    assert code == 0
    assert torch.equal(outputs(trp_zoo.load(REPO)), outputs(second))
    assert torch.equal(outputs(trp_zoo.load(REPO, revision=v1.commit)), outputs(first))
    repo = hub.mirror / "models" / "trp-test" / "tiny_trp_ch"
    assert _git(repo, "log", "--format=%s").splitlines() == [
        "Retrained",
        "Publish tiny_trp_ch with trp-zoo",
    ]
    again = trp_zoo.publish(tmp_path / "v2", REPO, mirror_dir=hub.mirror)
    assert not again.changed  # identical files: no empty commit


def test_offline_the_cached_copy_loads_with_the_server_stopped(
    hub: OlahHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_factorized()
    trp_zoo.publish(save_tiny(tmp_path / "ckpt", model), REPO, mirror_dir=hub.mirror)
    trp_zoo.load(REPO)  # fills the cache
    hub.stop()
    with pytest.raises(NotCachedError, match=r"could not be reached"):
        trp_zoo.load("trp-test/never_downloaded")
    use_hub(monkeypatch, hub.url, tmp_path / "hf_home", offline=True)
    assert torch.equal(outputs(trp_zoo.load(REPO)), outputs(model))
    assert torch.equal(
        outputs(timm.create_model(f"hf-hub:{REPO}", pretrained=True)), outputs(model)
    )
    with pytest.raises(NotCachedError, match=r"not in the Hugging Face cache .*HF_HUB_OFFLINE=1"):
        trp_zoo.load("trp-test/never_downloaded")


def test_corrupt_weights_on_the_hub_give_a_clear_error(hub: OlahHub, tmp_path: Path) -> None:
    ckpt = save_tiny(tmp_path / "ckpt")
    trp_zoo.publish(ckpt, REPO, mirror_dir=hub.mirror)
    repo = hub.mirror / "models" / "trp-test" / "tiny_trp_ch"
    good = (repo / "model.safetensors").read_bytes()
    damaged = good[:-64] + bytes(64)
    _commit_file(repo, "model.safetensors", damaged)
    for load in (
        lambda: trp_zoo.load(REPO),
        lambda: timm.create_model(f"hf-hub:{REPO}", pretrained=True),
    ):
        with pytest.raises(CheckpointError, match=r"corrupt .*force_download=True"):
            load()
    _commit_file(repo, "model.safetensors", good[: len(good) // 3])
    with pytest.raises(CheckpointError, match=r"safetensors cannot read it"):
        trp_zoo.load(REPO)


def test_config_that_does_not_match_the_weights_on_the_hub(hub: OlahHub, tmp_path: Path) -> None:
    ckpt = save_tiny(tmp_path / "ckpt")
    trp_zoo.publish(ckpt, REPO, mirror_dir=hub.mirror)
    repo = hub.mirror / "models" / "trp-test" / "tiny_trp_ch"
    config = json.loads((repo / "config.json").read_text())
    config["model_args"]["rank_plan"]["layer2.0.conv2"] = 3
    _commit_file(repo, "config.json", json.dumps(config).encode())
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv2\.first\.weight has shape"):
        trp_zoo.load(REPO)


def test_publishing_refuses_what_would_not_load(hub: OlahHub, tmp_path: Path) -> None:
    ckpt = save_tiny(tmp_path / "ckpt")
    (ckpt / "extra.bin").write_bytes(bytes(range(130)))  # olah cannot serve this size
    with pytest.raises(PublishError, match=r"130-byte binary file; olah cannot serve"):
        trp_zoo.publish(ckpt, REPO, mirror_dir=hub.mirror)
    (ckpt / "extra.bin").unlink()
    _flip = bytearray((ckpt / "model.safetensors").read_bytes())
    _flip[-1] ^= 1
    (ckpt / "model.safetensors").write_bytes(bytes(_flip))
    with pytest.raises(CheckpointError, match="corrupt"):
        trp_zoo.publish(ckpt, REPO, mirror_dir=hub.mirror)
    assert not (hub.mirror / "models" / "trp-test").exists()  # nothing was committed
    with pytest.raises(PublishError, match="not a repo id"):
        trp_zoo.publish(ckpt, "no-slash", mirror_dir=hub.mirror)


def test_registry_names_and_unknown_repos_on_the_hub(hub: OlahHub) -> None:
    with pytest.raises(WeightsNotPublishedError) as err:
        trp_zoo.load("resnet18_trp_sp_fmnist")
    message = str(err.value)
    assert "trp-zoo/resnet18_trp_sp_fmnist is not on http://127.0.0.1" in message
    assert "python recipes/fashion_mnist_resnet18.py --scheme spatial" in message
    assert "python -m trp_zoo publish CHECKPOINT_DIR --repo trp-zoo/resnet18_trp_sp_fmnist" in (
        message
    )
    with pytest.raises(UnknownModelError, match=r"trp-test/nothing: repository or file not found"):
        trp_zoo.load("trp-test/nothing")


_CHILD = """
import json, sys, torch, trp_zoo
sys.path.insert(0, {tests!r})
from zoo_models import probe
model = trp_zoo.load({repo!r}).eval()
with torch.no_grad():
    print(json.dumps(model(probe()).tolist()))
"""


def _load_in_child(env: dict[str, str]) -> torch.Tensor:
    code = _CHILD.format(tests=str(Path(__file__).parent), repo=REPO)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))


def test_environment_variables_are_honoured_in_a_new_process(hub: OlahHub, tmp_path: Path) -> None:
    model = tiny_factorized()
    trp_zoo.publish(save_tiny(tmp_path / "ckpt", model), REPO, mirror_dir=hub.mirror)
    expected = outputs(model)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "child_hf_home"))
    env["TRP_ZOO_HOME"] = str(tmp_path / "child_zoo_home")
    assert torch.allclose(_load_in_child(env), expected, atol=1e-6)
    hub.stop()
    assert torch.allclose(_load_in_child({**env, "HF_HUB_OFFLINE": "1"}), expected, atol=1e-6)


def _huggingface_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.network
@pytest.mark.skipif(
    not os.environ.get("HF_TOKEN"), reason="needs HF_TOKEN with write access to huggingface.co"
)
def test_publish_to_huggingface_co(tmp_path: Path) -> None:
    if not _huggingface_reachable():
        pytest.skip("huggingface.co is not reachable from this machine")
    api = HfApi()
    user = api.whoami()["name"]
    repo_id = f"{user}/trp-zoo-test-{os.getpid()}"
    model = tiny_factorized()
    try:
        published = trp_zoo.publish(save_tiny(tmp_path / "ckpt", model), repo_id, private=True)
        assert published.target == "hub" and published.commit
        loaded = trp_zoo.load(repo_id, cache_dir=tmp_path / "cache")
        assert torch.equal(outputs(loaded), outputs(model))
    finally:
        api.delete_repo(repo_id, missing_ok=True)


def test_a_factorized_vit_publishes_and_loads_with_its_linear_plan(
    hub: OlahHub, tmp_path: Path
) -> None:
    from tests.tiny_timm import ARCHITECTURES

    name, kwargs, size = ARCHITECTURES["vit"]
    dense = timm.create_model(name, num_classes=4, **kwargs).eval()
    torch.nn.init.normal_(dense.head.weight)
    low = trp_zoo.decompose(dense, rank=0.6).eval()
    plan = trp_zoo.rank_plan(low)
    assert all(isinstance(low.get_submodule(n), trp_zoo.FactorizedLinear) for n in plan)
    repo = "trp-test/tiny_vit_trp"
    ckpt = trp_zoo.save_pretrained(
        low, tmp_path / "vit", model_args=kwargs, pretrained_cfg={"input_size": size}, repo_id=repo
    )
    trp_zoo.publish(ckpt, repo, mirror_dir=hub.mirror)
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = low(x)
    for loaded in (trp_zoo.load(repo), timm.create_model(f"hf-hub:{repo}", pretrained=True)):
        assert trp_zoo.rank_plan(loaded) == plan
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), expected)
    assert trp_zoo.model_info(repo)["rank_plan"] == plan
    card = (tmp_path / "vit" / "README.md").read_text()
    assert f"with {len(plan)} linear layers factorized into pairs of thin linear layers" in card
