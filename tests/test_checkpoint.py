"""save_pretrained, the timm entrypoint and local-dir loading (no hub involved)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from zoo_models import INPUT_SIZE, METRICS, PROVENANCE, outputs, save_tiny, tiny_factorized

import trp_zoo
from trp_zoo import CheckpointError, FactorizedConv2d
from trp_zoo.algorithms.decompose import factorize_architecture
from trp_zoo.algorithms.layers import select_targets
from trp_zoo.zoo.model_repo import DIGEST_KEY, WEIGHTS_NAME


@pytest.fixture(autouse=True)
def _zoo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRP_ZOO_HOME", str(tmp_path / "zoo_home"))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = tiny_factorized()
    return model, save_tiny(tmp_path / "ckpt", model)


def test_local_dir_round_trip_through_timm_and_load(saved: tuple[torch.nn.Module, Path]) -> None:
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "results.json",
    ]
    via_timm = timm.create_model(f"local-dir:{path}", pretrained=True)
    via_zoo = trp_zoo.load(path)
    expected = outputs(model)
    for loaded in (via_timm, via_zoo):
        assert torch.equal(outputs(loaded), expected)
        assert trp_zoo.rank_plan(loaded) == trp_zoo.rank_plan(model)
        cfg = loaded.pretrained_cfg
        assert cfg["architecture"] == "trp_factorized"
        assert tuple(cfg["input_size"]) == INPUT_SIZE
        assert tuple(cfg["mean"]) == (0.2860,) and tuple(cfg["std"]) == (0.3530,)
        assert cfg["crop_pct"] == 1.0


def test_pretrained_false_builds_the_planned_architecture(
    saved: tuple[torch.nn.Module, Path],
) -> None:
    model, path = saved
    fresh = trp_zoo.load(path, pretrained=False)
    assert trp_zoo.rank_plan(fresh) == trp_zoo.rank_plan(model)
    assert trp_zoo.factorized_scheme(fresh) == "channel"
    assert isinstance(fresh.get_submodule("layer1.0.conv1"), FactorizedConv2d)
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}
    assert shapes == {k: v.shape for k, v in model.state_dict().items()}
    assert not torch.equal(outputs(fresh), outputs(model))  # random weights


def test_head_can_be_replaced_like_any_timm_model(saved: tuple[torch.nn.Module, Path]) -> None:
    model, path = saved
    five = trp_zoo.load(path, num_classes=5)
    assert five.get_classifier().out_features == 5
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    loaded = five.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in body.items())


def test_config_records_base_scheme_plan_and_input(saved: tuple[torch.nn.Module, Path]) -> None:
    model, path = saved
    config = json.loads((path / "config.json").read_text())
    assert config["architecture"] == "trp_factorized"
    assert config["num_classes"] == 10
    args = config["model_args"]
    assert args["base_architecture"] == "resnet18"
    assert args["scheme"] == "channel"
    assert args["rank_plan"] == trp_zoo.rank_plan(model)
    assert args["in_chans"] == 1 and args["num_classes"] == 10
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == list(INPUT_SIZE)
    assert "tag" not in cfg  # the base's weight tag does not describe these weights
    assert cfg["paper_ids"] == "arXiv:1812.02402"


def test_results_hold_measured_numbers_and_provenance(
    saved: tuple[torch.nn.Module, Path],
) -> None:
    model, path = saved
    results = json.loads((path / "results.json").read_text())
    metrics = results["metrics"]
    assert metrics["top1"] == METRICS["top1"] and metrics["dataset"] == "fashion-mnist"
    assert metrics["macs"] == trp_zoo.count_flops(model, INPUT_SIZE)
    assert metrics["params"] == trp_zoo.count_params(model)
    assert "macs_reduction" not in metrics  # no dense MACs given: nothing to derive it from
    assert results["provenance"] == PROVENANCE
    assert results["software"]["trp-zoo"] == trp_zoo.__version__
    assert "1x28x28" in results["how_measured"]["macs"]
    assert results["architecture"]["factorized_layers"] == len(trp_zoo.rank_plan(model))


def test_model_card_metadata_and_model_index(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    card = ModelCard.load(path / "README.md")
    assert card.data.library_name == "timm"
    assert card.data.license == "apache-2.0"
    assert "trp-zoo" in card.data.tags and "channel-decomposition" in card.data.tags
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"]
    results = json.loads((path / "results.json").read_text())["metrics"]
    by_type = {r.metric_type: r for r in card.data.eval_results}
    assert by_type["accuracy"].metric_value == results["top1"]
    assert by_type["macs"].metric_value == results["macs"]
    assert by_type["accuracy"].dataset_split == "test"
    assert by_type["accuracy"].metric_args["command"] == PROVENANCE["command"]
    assert all(r.metric_config for r in card.data.eval_results)  # each says how it was measured


def test_derived_reduction_and_speedups(tmp_path: Path) -> None:
    model = tiny_factorized()
    macs = trp_zoo.count_flops(model, INPUT_SIZE)
    speedup = {"value": 1.7, "backend": "onnxruntime", "device": "2 CPU cores", "batch_size": 1}
    path = save_tiny(
        tmp_path / "ckpt",
        model,
        metrics={**METRICS, "dense_macs": 4 * macs},
        speedups=[speedup],
    )
    results = json.loads((path / "results.json").read_text())
    assert results["metrics"]["macs_reduction"] == pytest.approx(4.0)
    assert results["speedups"] == [speedup]
    card = ModelCard.load(path / "README.md")
    speed = [r for r in card.data.eval_results if r.metric_type == "speedup"]
    assert speed[0].metric_value == 1.7 and speed[0].metric_args["backend"] == "onnxruntime"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": {**METRICS, "top1": 150.0}}, r"not a percentage"),
        ({"metrics": {**METRICS, "macs": 12345}}, r"metrics\['macs'\] = 12345 but the model has"),
        (
            {"metrics": {**METRICS, "dense_macs": 10**9, "macs_reduction": 2.0}},
            "disagrees with dense_macs / macs",
        ),
        ({"speedups": [{"value": 2.0, "backend": "ort"}]}, "lacks device"),
        ({"pretrained_cfg": {"input_sise": (1, 28, 28)}}, "Did you mean: input_size"),
        ({"register_as": "bad/name"}, "not a valid model name"),
        ({"base_architecture": "resnet_18"}, "not a timm model name"),
    ],
)
def test_bad_arguments_are_refused_before_writing(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        save_tiny(tmp_path / "ckpt", **kwargs)
    assert not (tmp_path / "ckpt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_write_is_one_error_and_keeps_the_old_checkpoint(tmp_path, monkeypatch) -> None:
    """A full disk (or a path that cannot hold files) used to surface as a raw OSError about
    a hidden temporary name; the previous checkpoint must survive it."""
    import os

    from trp_zoo.errors import WriteError

    path = save_tiny(tmp_path / "ckpt")
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    real_replace = os.replace

    def full_disk(src, dst):  # the finished temporary directory cannot be moved in
        if Path(dst) == path and Path(src).name.startswith(".ckpt.tmp-"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(WriteError) as exc:
        save_tiny(path, tiny_factorized(seed=1))
    message = str(exc.value)
    assert message.startswith(f"could not write {path} ([Errno 28] No space left on device; ")
    assert message.endswith("MiB free there): choose a writable directory with free space")
    assert "\n" not in message
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left


def test_dense_model_is_refused(tmp_path: Path) -> None:
    dense = timm.create_model("resnet18", channels=(8, 16, 32, 64), num_classes=10)
    with pytest.raises(ValueError, match="no factorized layers: decompose it first"):
        trp_zoo.save_pretrained(dense, tmp_path / "ckpt")


def test_failed_save_keeps_the_previous_checkpoint(
    saved: tuple[torch.nn.Module, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("trp_zoo.zoo.saving.write_weights", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_tiny(path, tiny_factorized(seed=1))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    assert torch.equal(outputs(trp_zoo.load(path)), outputs(model))


def test_replacing_a_checkpoint_and_refusing_other_directories(
    saved: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    _, path = saved
    newer = tiny_factorized(seed=1)
    save_tiny(path, newer)
    assert torch.equal(outputs(trp_zoo.load(path)), outputs(newer))
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a checkpoint directory"):
        save_tiny(other)
    assert (other / "cat.jpg").read_bytes() == b"not a checkpoint"


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_weights_give_a_clear_error(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    weights = path / WEIGHTS_NAME
    good = weights.read_bytes()
    _flip_last_byte(weights)  # the header still parses: only the recorded digest catches it
    for load in (lambda: trp_zoo.load(path), lambda: timm.create_model(f"local-dir:{path}", True)):
        with pytest.raises(CheckpointError, match=r"corrupt.*does not match the SHA-256"):
            load()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt .*safetensors cannot read it"):
        trp_zoo.load(path)
    weights.write_bytes(good)
    assert DIGEST_KEY.encode() in good[:4096]
    trp_zoo.load(path)  # intact again


def test_config_that_does_not_match_the_weights(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config["model_args"]["rank_plan"]["layer1.0.conv1"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        trp_zoo.load(path)
    message = str(err.value)
    assert "do not match the architecture in its config.json" in message
    assert re.search(
        r"layer1\.0\.conv1\.first\.weight has shape \(2, 64, 3, 3\) in the weights but "
        r"\(3, 64, 3, 3\) in the architecture",
        message,
    )
    assert "write both again with trp_zoo.save_pretrained" in message
    trp_zoo.load(path, pretrained=False)  # the architecture alone still builds


def test_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        trp_zoo.load(tmp_path)
    with pytest.raises(trp_zoo.UnknownModelError, match="no such checkpoint directory"):
        trp_zoo.load(tmp_path / "missing")


def test_speedups_measured_later_are_recorded_in_results_and_card(
    saved: tuple[torch.nn.Module, Path],
) -> None:
    model, path = saved
    weights = (path / WEIGHTS_NAME).read_bytes()
    ort = {"value": 1.4, "backend": "onnxruntime", "device": "2 CPU cores", "batch_size": 1}
    trt = {"value": 2.1, "backend": "tensorrt", "device": "H100", "precision": "fp16"}
    trp_zoo.record_speedups(path, [ort])
    trp_zoo.record_speedups(path, [{**ort, "value": 1.5}, trt])  # remeasured + a new one
    results = json.loads((path / "results.json").read_text())
    assert results["speedups"] == [{**ort, "value": 1.5}, trt]
    assert results["metrics"]["top1"] == METRICS["top1"]
    card = ModelCard.load(path / "README.md")
    speed = sorted(r.metric_value for r in card.data.eval_results if r.metric_type == "speedup")
    assert speed == [1.5, 2.1]
    assert "tensorrt, H100, fp16" in card.text
    assert (path / WEIGHTS_NAME).read_bytes() == weights
    assert torch.equal(outputs(trp_zoo.load(path)), outputs(model))
    with pytest.raises(ValueError, match="lacks backend"):
        trp_zoo.record_speedups(path, [{"value": 2.0, "device": "cpu"}])


def test_model_card_links_only_what_the_package_metadata_names(tmp_path, monkeypatch) -> None:
    """No link to a package index page that does not exist: the card links the URL the
    installed package's metadata gives, or names trp-zoo without a link."""
    import importlib.metadata

    from zoo_models import save_tiny

    from trp_zoo.zoo import card

    readme = (save_tiny(tmp_path / "a") / "README.md").read_text()
    assert "pypi.org" not in readme
    meta = importlib.metadata.metadata("trp-zoo")
    urls = [u.partition(",")[2].strip() for u in meta.get_all("Project-URL") or []]
    assert card.project_link() in readme
    assert card.project_link() == (f"[trp-zoo]({urls[0]})" if urls else "trp-zoo")

    class Meta(dict):
        def get_all(self, key):
            return ["Repository, https://example.org/trp-zoo"] if key == "Project-URL" else None

    monkeypatch.setattr(importlib.metadata, "metadata", lambda name: Meta())
    assert card.project_link() == "[trp-zoo](https://example.org/trp-zoo)"


def test_unknown_base_architecture_names_config_json(tmp_path) -> None:
    import json

    from zoo_models import save_tiny

    import trp_zoo

    path = save_tiny(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["model_args"]["base_architecture"] = "resnet_nope"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(trp_zoo.ZooError, match=r"config.json's model_args.base_architecture "):
        trp_zoo.load(str(path))


@pytest.mark.parametrize(
    ("field", "value", "cause"),
    [
        ("scheme", "diagonal", "unknown scheme 'diagonal'"),
        ("rank_plan", {"nope.conv": 3}, "rank plan names 'nope.conv'"),
    ],
)
def test_model_args_that_do_not_fit_the_base_name_config_json(
    tmp_path, field: str, value: object, cause: str
) -> None:
    """They used to surface as the bare ValueError of factorize_architecture, naming no file."""
    import json

    path = save_tiny(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["model_args"][field] = value
    (path / "config.json").write_text(json.dumps(config))
    expected = rf"^{re.escape(str(path))}: config.json's model_args .* \({cause}.*\): the config"
    for load in (trp_zoo.load, timm.create_model):
        with pytest.raises(CheckpointError, match=expected):
            load(f"local-dir:{path}")


def test_publish_to_a_directory_under_a_file_is_one_line(tmp_path, capsys) -> None:
    from zoo_models import save_tiny

    from trp_zoo.__main__ import main

    path = save_tiny(tmp_path / "ckpt")
    (tmp_path / "file").write_text("x")
    args = ["publish", str(path), "--repo", "org/name", "--to-dir", str(tmp_path / "file" / "d")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(tmp_path / "file") in err[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--to-dir", "CKPT"], "--to-dir CKPT would put the copy inside the checkpoint CKPT"),
        (["--mirror-dir", "CKPT"], "--mirror-dir CKPT would put the copy inside the checkpoint"),
        (["--revision", "refs/heads/x"], "revision 'refs/heads/x' is not a branch name"),
        (["--mirror-dir", "OUT", "--revision", "@"], "revision '@' is not a branch name"),
    ],
)
def test_publish_refuses_a_copy_into_its_own_checkpoint_and_ref_paths(
    tmp_path, capsys, extra, message
) -> None:
    """A copy inside the checkpoint failed with a 12 KB error and left org/ in it; a ref path
    made a branch refs/heads/refs/heads/x, '@' a branch named '@'."""
    from trp_zoo.__main__ import main

    path = save_tiny(tmp_path / "ckpt")
    before = sorted(p.name for p in path.iterdir())
    swap = {"CKPT": str(path), "OUT": str(tmp_path / "out")}
    args = [swap.get(e, e) for e in extra]
    assert main(["publish", str(path), "--repo", "org/name", *args]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("error: ") and message.replace("CKPT", str(path)) in err
    assert sorted(p.name for p in path.iterdir()) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("resnet10t", {}),  # FeatureListNet over the model's own children
        ("rexnet_100", {}),  # flatten_sequential: 'features.3' becomes 'features_3'
        ("vit_tiny_patch16_224", {"img_size": 32, "depth": 3}),  # FeatureGetterNet: 'model.'
        ("hrnet_w18_small", {}),  # a features class of its own
    ],
)
def test_features_only_uses_the_base_models_feature_extractor(
    tmp_path: Path, arch: str, kwargs: dict
) -> None:
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=4, **kwargs)
    low = factorize_architecture(model, "channel", {n: 2 for n in select_targets(model)})
    path = trp_zoo.save_pretrained(low, tmp_path / arch, pretrained_cfg={"input_size": (3, 32, 32)})
    full = trp_zoo.load(path).eval()
    x = torch.randn(2, 3, 32, 32)
    for features in (
        trp_zoo.load(path, features_only=True),
        timm.create_model(f"local-dir:{path}", pretrained=True, features_only=True),
    ):
        assert trp_zoo.rank_plan(features)  # factorized, not the dense base
        with torch.no_grad():
            got = features.eval()(x)
            expected = full.forward_intermediates(x, indices=len(got), intermediates_only=True)
        assert [t.shape for t in got] == [t.shape for t in expected]
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)
    picked = trp_zoo.load(path, features_only=True, out_indices=(1, 2)).eval()
    with torch.no_grad():
        assert [t.shape for t in picked(x)] == [t.shape for t in expected[1:3]]


def test_an_input_size_a_fixed_size_model_does_not_take_is_one_error(tmp_path: Path) -> None:
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3)
    low = trp_zoo.decompose(model, rank=4)
    path = trp_zoo.save_pretrained(
        low, tmp_path / "vit", pretrained_cfg={"input_size": (3, 32, 32)}
    )
    before = (path / "model.safetensors").read_bytes()
    for size, problem in (((3, 64, 64), "image size"), ((1, 32, 32), "input channels")):
        with pytest.raises(ValueError) as err:
            trp_zoo.save_pretrained(low, path, pretrained_cfg={"input_size": size})
        text = str(err.value)
        assert "\n" not in text and problem in text and str(size) in text and "img_size=" in text
    assert (path / "model.safetensors").read_bytes() == before  # the saved checkpoint is kept
    assert trp_zoo.load(path).pretrained_cfg["input_size"] == (3, 32, 32)


def _damage(path: Path, file: str, change) -> None:
    data = json.loads((path / file).read_text())
    change(data)
    (path / file).write_text(json.dumps(data))


CONFIG_DAMAGE = {
    "model_args a string": (lambda c: c.update(model_args="x"), "model_args must be an object"),
    "model_args missing": (  # info printed 'base None'
        lambda c: c.pop("model_args"),
        "lacks 'model_args' (base_architecture, scheme, rank_plan)",
    ),
    "rank_plan a string": (
        lambda c: c["model_args"].update(rank_plan="x"),
        "model_args.rank_plan must be an object",
    ),
    "pretrained_cfg a string": (
        lambda c: c.update(pretrained_cfg="x"),
        "pretrained_cfg must be an object",
    ),
    "num_classes a word": (
        lambda c: c["model_args"].update(num_classes="ten"),
        "model_args.num_classes must be an integer",
    ),
    "an argument the base does not take": (  # info reads config.json without building
        lambda c: c["model_args"].update(bogus_kw=1),
        "does not take the arguments it was given",
    ),
}
BUILT_ONLY_BY_LOADING = {"an argument the base does not take"}


@pytest.mark.parametrize("damage", sorted(CONFIG_DAMAGE))
def test_a_config_json_of_the_wrong_shape_is_one_error_everywhere(
    saved: tuple[torch.nn.Module, Path], damage: str, tmp_path: Path, capsys
) -> None:
    """Each of these was an AttributeError, TypeError or int() ValueError traceback in load,
    info, publish and build_engine."""
    from trp_zoo.__main__ import main

    _, path = saved
    change, message = CONFIG_DAMAGE[damage]
    _damage(path, "config.json", change)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        trp_zoo.load(path)
    commands = [["publish", str(path), "--repo", "org/x", "--to-dir", str(tmp_path / "pub")]]
    if damage not in BUILT_ONLY_BY_LOADING:
        commands.append(["info", str(path)])
    for argv in commands:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "pub").exists()


RESULTS_DAMAGE = {
    "metrics a string": (lambda r: r.update(metrics="x"), "metrics must be an object"),
    "a speed-up without its backend": (
        lambda r: r.update(speedups=[{"value": 2.0, "device": "cpu"}]),
        "speedups[0] lacks backend",
    ),
}


@pytest.mark.parametrize("damage", sorted(RESULTS_DAMAGE))
def test_a_results_json_of_the_wrong_shape_is_refused_and_list_still_lists(
    saved: tuple[torch.nn.Module, Path], damage: str, tmp_path: Path, capsys
) -> None:
    from trp_zoo.__main__ import main

    _, path = saved
    stored = trp_zoo.register_local(path, "damaged_results")
    change, message = RESULTS_DAMAGE[damage]
    _damage(stored, "results.json", change)
    for argv in (
        ["info", "damaged_results"],
        ["publish", str(stored), "--repo", "org/x", "--to-dir", str(tmp_path / "pub")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert main(["list"]) == 0  # one damaged model does not take the listing down
    assert "damaged_results" in capsys.readouterr().out
