"""Linear layers in latency-aware rank plans: probes at their token counts, cost tables,
the planner and ``python -m runtime.plan --layers``, sensitivity, spectra, the energy plan,
and hardware-aligned ranks (``aligned_rank_plan``, ``pad_ranks``, ``padded_plan``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

import runtime.plan
import trp_zoo
from runtime.cost_cache import CostCache, LayerCosts
from runtime.costs import cost_table, layer_probes
from runtime.plan import main as plan_main
from runtime.planner import Planner
from runtime.probes import LayerProbe, LinearProbe
from runtime.target import Target
from tests.runtime_models import seed_cost_cache, tiny_resnet
from tests.test_rank_selection import no_timing
from tests.tiny_timm import ARCHITECTURES
from trp_zoo.algorithms.rank_alignment import aligned_rank_plan, pad_ranks, padded_plan
from trp_zoo.algorithms.sensitivity import output_sensitivity
from trp_zoo.lowrank.convs import ConvGeometry
from trp_zoo.lowrank.factorized import FactorizedLinear

SIZE = (3, 32, 32)
TOKENS = (32 // 8) ** 2 + 1  # 8x8 patches of a 32x32 image, and the class token
# the tiny ViT's Linears (width 64, MLP ratio 4): (in, out) and the ranks below
# r (in + out) < in * out, the multiples of 8 that lower their MACs
VIT_LINEARS = {
    "attn.qkv": ((64, 192), [8, 16, 24, 32, 40]),  # r < 64 * 192 / 256 = 48
    "attn.proj": ((64, 64), [8, 16, 24]),  # r < 32
    "mlp.fc1": ((64, 256), [8, 16, 24, 32, 40, 48]),  # r < 51.2
    "mlp.fc2": ((256, 64), [8, 16, 24, 32, 40, 48]),
}
VIT_NAMES = {f"blocks.{b}.{layer}" for b in (0, 1) for layer in VIT_LINEARS}


def tiny_vit() -> nn.Module:
    """``tiny_test_vit``: timm's ViT at 32x32, 8x8 patches, width 64, two blocks of two heads."""
    torch.manual_seed(0)
    return timm.create_model("tiny_test_vit", num_classes=10).eval()


def target(batch_size: int = 2) -> Target:
    return Target(batch_size=batch_size, input_size=SIZE, threads=1)


def timm_model(key: str) -> tuple[nn.Module, tuple[int, int, int]]:
    name, kwargs, size = ARCHITECTURES[key]
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **kwargs).eval(), size


# ----------------------------------------------------------------------------- probes


def test_vit_cost_table_times_every_linear_at_its_token_count(tmp_path: Path) -> None:
    vit = tiny_vit()
    table = cost_table(vit, target(), cache=CostCache(tmp_path / "costs"), runs=1, warmup=0)
    assert set(table.layers) == VIT_NAMES  # the patch-embedding stem and the head stay dense
    for name, lc in table.layers.items():
        features, ranks = VIT_LINEARS[name.split(".", 2)[2]]
        assert isinstance(lc.probe, LinearProbe), name
        assert (lc.probe.geom.in_channels, lc.probe.geom.out_channels) == features, name
        assert lc.probe.tokens == TOKENS, name
        assert list(lc.ranks) == ranks and sorted(lc.costs.rank_ms) == ranks, name
    # both blocks share their four probes: each timed once, dense and at every rank
    assert len(table.measured) == 4
    assert {p["tokens"] for p in table.measured} == {TOKENS}
    again = cost_table(vit, target(), cache=CostCache(tmp_path / "costs"), runs=1, warmup=0)
    assert again.measured == [] and len(again.reused) == 4


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # ConvNeXt's channels-last MLPs see H x W positions: 32/4 = 8 after the stem, then
        # halved by each downsampling conv (which sees the previous stage's map)
        (
            "convnext",
            {
                **{f"stages.{s}.blocks.0.mlp.fc{i}": t for s, t in enumerate((64, 16, 4, 1))
                   for i in (1, 2)},
                **{f"stages.{s}.downsample.1": (hw, hw) for s, hw in ((1, 8), (2, 4), (3, 2))},
            },
        ),
        # Swin batches 2x2 windows: 16 windows of 4 tokens are still 8 x 8 = 64 positions
        # per image at stage 0, then 16, 4 and 1 after each patch merging
        (
            "swin",
            {
                **{f"layers.{s}.blocks.0.{layer}": t for s, t in enumerate((64, 16, 4, 1))
                   for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")},
                **{f"layers.{s}.downsample.reduction": t for s, t in ((1, 16), (2, 4), (3, 1))},
            },
        ),
    ],
)  # fmt: skip
def test_probes_see_each_layers_real_positions(key: str, expected: dict) -> None:
    model, size = timm_model(key)
    probes = layer_probes(model, "channel", size)
    got = {n: p.tokens if isinstance(p, LinearProbe) else p.input_hw for n, p in probes.items()}
    assert got == expected


def test_probe_macs_are_the_factorized_models_macs() -> None:
    """The probes' MACs, summed over a plan, are what the flop counter sees come off the
    model factorized by it: token counts and conv sizes are the real ones."""
    model, size = timm_model("convnext")
    probes = layer_probes(model, "channel", size)
    plan = {n: 8 for n in probes}
    saved = sum(p.macs(None) - p.macs(8) for p in probes.values())
    low = trp_zoo.factorize_architecture(copy.deepcopy(model), "channel", plan)
    assert trp_zoo.count_flops(model, size) - trp_zoo.count_flops(low, size) == saved


def test_linear_probe_graph_is_the_exported_layer_at_its_tokens() -> None:
    probe = LinearProbe(ConvGeometry.of(nn.Linear(64, 256)), TOKENS)
    for rank, shapes in ((None, [(64, 256)]), (16, [(64, 16), (16, 256)])):
        graph = probe.graph(rank).graph
        weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        matmuls = [n for n in graph.node if n.op_type == "MatMul"]
        assert [weights[n.input[1]].shape for n in matmuls] == shapes
        assert [n.op_type for n in graph.node][-1] == "Add"  # the bias, after the last MatMul
        session = ort.InferenceSession(probe.graph(rank).SerializeToString())
        x = np.random.default_rng(0).standard_normal((3, 1, TOKENS, 64), dtype=np.float32)
        (y,) = session.run(None, {"input": x})
        expected = x
        for n in matmuls:
            expected = expected @ weights[n.input[1]]
        assert y.shape == (3, 1, TOKENS, 256)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    # MACs per image, by hand: 17 tokens x 64 x 256 dense, 17 x (64 x 16 + 16 x 256) at 16
    assert (probe.macs(None), probe.macs(16)) == (17 * 16384, 17 * 5120)


def test_linear_probes_are_cached_apart_from_convs_and_other_token_counts(
    tmp_path: Path,
) -> None:
    cache = CostCache(tmp_path)
    key = {"backend": "onnxruntime", "batch_size": 2}
    geom = ConvGeometry.of(nn.Linear(64, 256))
    costs = LayerCosts(dense_ms=1.0, rank_ms={8: 0.5}, runs=3, warmup=1)
    cache.put_layer(key, LinearProbe(geom, TOKENS), costs)
    assert cache.layer(key, LinearProbe(geom, TOKENS)) == costs
    assert cache.layer(key, LinearProbe(geom, 65)) is None  # a ViT at another image size
    # the 1x1 conv with the same weights over the same 17 positions is another probe
    assert cache.layer(key, LayerProbe("channel", geom, (1, TOKENS))) is None


def test_conv_layers_keep_the_conv_only_tables() -> None:
    resnet = tiny_resnet()
    convs = layer_probes(resnet, "channel", (1, 28, 28), layers="conv")
    expected = {f"layer{s}.0.conv{i}" for s in (1, 2, 3, 4) for i in (1, 2)}
    # the 64-channel stem into layer1's 16, then strided stages: every block has a shortcut
    expected |= {f"layer{s}.0.downsample.0" for s in (1, 2, 3, 4)}
    assert set(convs) == expected and all(isinstance(p, LayerProbe) for p in convs.values())
    # a ResNet's only Linear is its classifier: every candidate is still a conv
    assert layer_probes(resnet, "channel", (1, 28, 28)) == convs
    assert layer_probes(resnet, "channel", (1, 28, 28), layers="linear") == {}
    convnext, size = timm_model("convnext")
    assert set(layer_probes(convnext, "channel", size, layers="conv")) == {
        f"stages.{s}.downsample.1" for s in (1, 2, 3)
    }


# ----------------------------------------------------------------------------- the planner


@pytest.fixture()
def vit_planner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Planner, dict]:
    """A planner for the tiny ViT on synthetic cached costs (nothing is timed), and those;
    ranks in steps of 16 (qkv: 16, 32; proj: 16; fc1, fc2: 16, 32, 48)."""
    cache = CostCache(tmp_path / "costs")
    seeded = seed_cost_cache(tiny_vit(), target(), cache=cache, rank_step=16)
    no_timing(monkeypatch)
    return Planner(tiny_vit(), target(), cache=cache, rank_step=16), seeded


def test_planner_plans_linears_within_the_latency_budget(vit_planner) -> None:
    planner, seeded = vit_planner
    result = planner.select(latency=0.7, min_quotient=None)
    assert result.plan and set(result.plan) <= VIT_NAMES
    # the budget holds on the table's own numbers: the seeded model latency (1.1 x the sum
    # of the dense layers) less what each planned rank saves
    dense_ms = 1.1 * sum(c.dense_ms for c in seeded.values())
    saving = sum(seeded[n].dense_ms - seeded[n].rank_ms[r] for n, r in result.plan.items())
    assert result.predicted_ms == pytest.approx(dense_ms - saving)
    assert dense_ms - saving <= 0.7 * dense_ms
    # the planned MACs are those of the model factorized by the plan
    low = trp_zoo.factorize_architecture(copy.deepcopy(planner.model), "channel", result.plan)
    assert result.planned_macs == trp_zoo.count_flops(low, SIZE)
    rows = {r["name"]: r for r in result.to_dict()["layers"]}
    assert set(rows) == VIT_NAMES
    assert {r["kind"] for r in rows.values()} == {"linear"}
    assert rows["blocks.0.mlp.fc2"]["full_rank"] == 64
    assert rows["blocks.0.attn.qkv"]["shape"] == "linear 64->192 x17 tokens"


def test_planner_spectra_and_energy_plan_cover_linears(vit_planner) -> None:
    planner, _ = vit_planner
    fc1 = planner.model.get_submodule("blocks.0.mlp.fc1").weight.detach().double()
    torch.testing.assert_close(planner.spectra["blocks.0.mlp.fc1"], torch.linalg.svdvals(fc1))
    # TRP's energy criterion, as decompose applies it to the same layers
    expected = trp_zoo.rank_plan(trp_zoo.decompose(planner.model, rank=0.3))
    assert expected and set(expected) <= VIT_NAMES
    assert planner.energy_plan(0.3) == expected


def test_planner_prices_linear_ranks_by_measured_sensitivity(vit_planner) -> None:
    planner, _ = vit_planner
    x = torch.randn(4, *SIZE, generator=torch.Generator().manual_seed(1))
    planner.use_sensitivity(x)
    assert planner.sensitivity is not None and set(planner.sensitivity) == VIT_NAMES
    # one entry, measured again through decompose: the KL of its output from the dense one
    name, rank = "blocks.1.mlp.fc1", 16
    low = trp_zoo.decompose(planner.model, rank={name: rank})
    with torch.no_grad():
        dense = F.log_softmax(planner.model(x).double(), -1)
        cut = F.log_softmax(low(x).double(), -1)
    kl = float(F.kl_div(cut, dense, log_target=True, reduction="batchmean"))
    assert planner.sensitivity[name][rank] == pytest.approx(kl, rel=1e-6)
    # a Linear is truncated by the channel scheme whatever the model's scheme
    spatial = output_sensitivity(planner.model, "spatial", {name: [rank]}, x)
    assert spatial[name][rank] == pytest.approx(kl, rel=1e-6)


def cli_args(cache: Path, *extra: str) -> list[str]:
    return [
        "--model", "tiny_test_vit", "--num-classes", "10", "--input-size", *map(str, SIZE),
        "--batch-size", "2", "--cache-dir", str(cache), "--no-measure", "--quiet", *extra,
    ]  # fmt: skip


def test_cli_plan_layers_picks_the_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_cost_cache(tiny_vit(), target(), cache=CostCache(tmp_path / "costs"))
    no_timing(monkeypatch)
    out = tmp_path / "plan.json"
    rc = plan_main(cli_args(tmp_path / "costs", "--macs", "0.7", "--output", str(out)))
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    plan = json.loads(out.read_text())
    assert plan["plan"] and set(plan["plan"]) <= VIT_NAMES
    assert {r["name"] for r in plan["layers"]} == VIT_NAMES
    assert "linear 64->256 x17 tokens" in printed.out
    # the ViT's only conv is its patch-embedding stem: no conv is a candidate
    assert plan_main(cli_args(tmp_path / "costs", "--macs", "0.7", "--layers", "conv")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nothing to plan: no nn.Conv2d") and "\n" not in err


def test_cli_plan_refuses_unknown_layers_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runtime.plan, "Planner", None)  # never reached
    no_timing(monkeypatch)
    assert plan_main(cli_args(tmp_path / "costs", "--macs", "0.7", "--layers", "mlp")) == 2
    err = capsys.readouterr().err
    assert err == "error: --layers must be one of conv, linear, all, got 'mlp'\n"
    assert not (tmp_path / "costs").exists()


# ----------------------------------------------------------------------------- aligned ranks


def test_aligned_plan_cuts_a_vits_linears_with_multiples_of_16() -> None:
    vit = tiny_vit()
    plan = aligned_rank_plan(vit, "channel", 1.5, SIZE, multiple=16)
    assert plan and set(plan) <= VIT_NAMES and all(r % 16 == 0 for r in plan.values())
    factorized = trp_zoo.factorize_architecture(copy.deepcopy(vit), "channel", plan)
    reduction = trp_zoo.compare_cost(vit, factorized, SIZE).macs_reduction
    assert 1.5 <= reduction < 1.5 * 1.1
    with pytest.raises(ValueError, match=r"cannot cut this model's MACs 1.5x .* at most 1.00x"):
        aligned_rank_plan(vit, "channel", 1.5, SIZE, layers="conv")


def test_pad_ranks_pads_linears_up_to_where_they_stop_paying() -> None:
    vit = tiny_vit()
    plan = {
        "blocks.0.attn.qkv": 20,  # -> 32 (ranks below 48 pay)
        "blocks.0.attn.proj": 10,  # -> 16 (below 32 pay)
        "blocks.1.attn.proj": 20,  # 32 would not pay: kept
        "blocks.0.mlp.fc1": 40,  # -> 48 (below 51.2 pay)
        "blocks.1.mlp.fc2": 50,  # 64 would not pay: kept
    }
    low = trp_zoo.decompose(vit, rank=plan)
    padded = pad_ranks(low, 16)
    expected = {**plan, "blocks.0.attn.qkv": 32, "blocks.0.attn.proj": 16, "blocks.0.mlp.fc1": 48}
    assert trp_zoo.rank_plan(padded) == expected
    assert trp_zoo.rank_plan(low) == plan  # the input is untouched
    assert all(isinstance(padded.get_submodule(n), FactorizedLinear) for n in plan)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(padded(x), low(x), rtol=0, atol=1e-5)
    # padded_plan predicts the same ranks from the layers' geometries, under either scheme
    geoms = {n: ConvGeometry.of(vit.get_submodule(n)) for n in plan}
    assert padded_plan(plan, geoms, "channel", 16) == expected
    assert padded_plan(plan, geoms, "spatial", 16) == expected


# ----------------------------------------------------------------------------- the report


def test_engine_report_lists_factorized_linears() -> None:
    from runtime.pipeline import factorized_layers
    from runtime.report import layer_counts

    low = trp_zoo.decompose(tiny_vit(), rank={"blocks.0.attn.qkv": 16, "blocks.1.mlp.fc2": 24})
    rows = factorized_layers(low)
    assert rows == [
        {"name": "blocks.0.attn.qkv", "kind": "linear", "in": 64, "out": 192, "rank": 16},
        {"name": "blocks.1.mlp.fc2", "kind": "linear", "in": 256, "out": 64, "rank": 24},
    ]
    assert layer_counts({"factorized_layers": 2, "layers": rows}) == (
        "2 factorized layers (2 Linears)"
    )
    both = trp_zoo.decompose(tiny_resnet(), rank={"layer1.0.conv1": 8, "fc": 4})
    kinds = [(r["name"], r["kind"]) for r in factorized_layers(both)]
    assert kinds == [("layer1.0.conv1", "conv"), ("fc", "linear")]
    summary = {"factorized_layers": 2, "layers": factorized_layers(both)}
    assert layer_counts(summary) == "2 factorized layers (1 conv, 1 Linear)"
    assert layer_counts({"factorized_layers": 3}) == "3 factorized layers"  # an older report
