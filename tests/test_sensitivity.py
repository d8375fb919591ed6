"""Measured sensitivity (``trp_zoo.algorithms.sensitivity``) and rank plans priced by it:
the selector, the planner and ``python -m runtime.plan --sensitivity-data``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trp_zoo
from runtime.cost_cache import CostCache
from runtime.data import fashion_mnist
from runtime.plan import main as plan_main
from runtime.planner import Planner
from runtime.target import Target
from tests.fakedata import write_fashion_mnist
from tests.runtime_models import seed_cost_cache
from tests.test_rank_selection import (
    CLI_INPUT,
    INPUT,
    TIMING,
    cli_model,
    no_timing,
    plan_args,
    target,
    tiny_net,
)
from trp_zoo.algorithms.rank_selection import LayerOptions, Option, select_ranks
from trp_zoo.algorithms.sensitivity import output_sensitivity


def images(count: int = 32) -> torch.Tensor:
    return torch.randn(count, *INPUT, generator=torch.Generator().manual_seed(1))


def kl_of(model: nn.Module, other: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        p = F.log_softmax(model(x).double(), -1)
        q = F.log_softmax(other(x).double(), -1)
    return float(F.kl_div(q, p, log_target=True, reduction="batchmean"))


def test_sensitivity_is_the_divergence_of_the_decomposed_model() -> None:
    model, x = tiny_net(), images()
    sens = output_sensitivity(model, "channel", {"conv2": [8, 32, 64], "conv4": [4]}, x)
    assert set(sens) == {"conv2", "conv4"} and set(sens["conv2"]) == {8, 32, 64}
    for name, rank in (("conv2", 8), ("conv2", 32), ("conv4", 4)):
        low = trp_zoo.decompose(model, "channel", rank={name: rank})
        assert sens[name][rank] == pytest.approx(kl_of(model, low, x), rel=1e-4, abs=1e-9)
    assert sens["conv2"][64] < 1e-9  # full rank: the layer's own function
    assert sens["conv2"][8] > sens["conv2"][32] > sens["conv2"][64]


def test_sensitivity_works_for_the_spatial_scheme() -> None:
    model, x = tiny_net(), images()
    sens = output_sensitivity(model, "spatial", {"conv3": [4]}, x, batch_size=7)
    low = trp_zoo.decompose(model, "spatial", rank={"conv3": 4})
    assert sens["conv3"][4] == pytest.approx(kl_of(model, low, x), rel=1e-4)


def test_sensitivity_leaves_the_model_as_it_was() -> None:
    model, x = tiny_net(), images()
    model.train()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    with torch.no_grad():
        before = model.eval()(x)
    model.train()
    output_sensitivity(model, "channel", {"conv1": [8], "conv3": [16]}, x)
    assert model.training
    assert {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)} == convs
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)


class FeatureNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_sensitivity_errors_name_the_problem() -> None:
    x = images(4)
    with pytest.raises(ValueError, match=r"not conv or linear layers of this model: nope$"):
        output_sensitivity(tiny_net(), "channel", {"fc": [2], "nope": [2]}, x)
    with pytest.raises(ValueError, match=r"needs a classifier.*\(4, 16, 16, 16\)"):
        output_sensitivity(FeatureNet(), "channel", {"conv": [2]}, x)
    with pytest.raises(ValueError, match=r"non-empty \(N, C, H, W\) batch"):
        output_sensitivity(tiny_net(), "channel", {"conv1": [8]}, x[0])


def test_measured_sensitivity_decides_where_energy_would_not() -> None:
    """Two layers with the same savings: energy says cut ``a`` (it loses less), the
    measured sensitivity says ``a`` matters more, so ``b`` is cut."""

    def lo(name: str, energy: float, sensitivity: float | None) -> LayerOptions:
        return LayerOptions(name, 1.0, 1000, (Option(8, 0.5, 500, energy, sensitivity),))

    by_energy = select_ranks([lo("a", 0.9, None), lo("b", 0.6, None)], "latency", 0.4)
    assert by_energy.plan == {"a": 8}
    measured = select_ranks([lo("a", 0.9, 0.3), lo("b", 0.6, 0.01)], "latency", 0.4)
    assert measured.plan == {"b": 8}
    assert Option(8, 0.5, 500, 0.9).loss == pytest.approx(0.1)
    assert Option(8, 0.5, 500, 0.9, 0.25).loss == 0.25


def test_planner_prices_ranks_by_measured_sensitivity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CostCache(tmp_path / "costs")
    seed_cost_cache(tiny_net(), target(), cache=cache)
    no_timing(monkeypatch, "measure_layer")
    x = images(16)
    by_energy = Planner(tiny_net(), target(), cache=cache, **TIMING)
    planner = Planner(tiny_net(), target(), cache=cache, sensitivity_images=x, **TIMING)
    assert planner.objective == "output KL divergence on 16 images"
    assert planner.sensitivity is not None
    for lo in planner.options:  # every useful rank measured, the same as measured directly
        assert {o.rank for o in lo.useful()} == set(planner.sensitivity[lo.name])
    layer = planner.options[0]
    rank = layer.useful()[0].rank
    direct = output_sensitivity(tiny_net(), "channel", {layer.name: [rank]}, x)
    assert planner.sensitivity[layer.name][rank] == pytest.approx(direct[layer.name][rank])

    plan = planner.select(latency=0.7, min_quotient=None)
    assert plan.predicted_fraction <= 0.7
    assert plan.output_kl == pytest.approx(
        sum(planner.sensitivity[n][r] for n, r in plan.plan.items())
    )
    # the least summed divergence of any plan within the budget, the energy plan's included
    energy_plan = by_energy.select(latency=0.7, min_quotient=None).plan
    assert planner.output_kl(energy_plan) is not None
    assert plan.output_kl <= planner.output_kl(energy_plan) + 1e-12  # type: ignore[operator]
    out = plan.to_dict()
    assert out["objective"] == planner.objective
    assert out["predicted_output_kl"] == plan.output_kl
    chosen = {r["name"]: r["sensitivity"] for r in out["layers"] if r["rank"] is not None}
    assert chosen == {n: planner.sensitivity[n][r] for n, r in plan.plan.items()}
    assert by_energy.select(latency=0.7).to_dict()["predicted_output_kl"] is None


def test_fashion_mnist_train_split_for_sensitivity(tmp_path: Path) -> None:
    root = write_fashion_mnist(tmp_path)
    train = fashion_mnist((1, 28, 28), (0.5,), (0.5,), max_images=8, root=root, split="train")
    test = fashion_mnist((1, 28, 28), (0.5,), (0.5,), max_images=8, root=root)
    assert "train split" in train.description and "test split" in test.description
    (a, _), (b, _) = next(train.batches(8)), next(test.batches(8))
    assert a.shape == b.shape == (8, 1, 28, 28) and not torch.equal(a, b)


def cli_plan(tmp_path: Path, *extra: str) -> tuple[int, Any]:
    out_file = tmp_path / "plan.json"
    args = plan_args(tmp_path / "costs", "--latency", "0.7", "--no-measure", *extra)
    rc = plan_main([*args, "--output", str(out_file)])
    return rc, json.loads(out_file.read_text()) if out_file.exists() else None


def test_cli_plan_with_sensitivity_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_fashion_mnist(tmp_path / "fmnist")
    tgt = Target(batch_size=2, input_size=CLI_INPUT, threads=1)
    seed_cost_cache(cli_model(), tgt, cache=CostCache(tmp_path / "costs"))
    no_timing(monkeypatch)
    rc, out = cli_plan(tmp_path, "--sensitivity-data", str(data), "--sensitivity-images", "16")
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert out["objective"] == "output KL divergence on 16 images"
    assert out["predicted_output_kl"] > 0
    assert "selected by measured sensitivity" in printed.out
    low = trp_zoo.decompose(cli_model(), "channel", rank=out["plan"])
    assert trp_zoo.rank_plan(low) == out["plan"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sensitivity-data", "random"], "random inputs say nothing"),
        (["--sensitivity-data", "fashion-mnist", "--sensitivity-images", "0"], ">= 1, got 0"),
        (  # names the flag given (it said --data) and offers no random inputs
            ["--sensitivity-data", "/no/such/dir"],
            "--sensitivity-data /no/such/dir: no such directory; pass an ImageFolder directory "
            "(one sub-directory of images per class), or 'fashion-mnist'\n",
        ),
        (  # used to price the plan on fewer images than asked, without a word
            ["--sensitivity-data", "FMNIST", "--sensitivity-images", "97"],
            "--sensitivity-images 97 is more than the 96 training images of FMNIST: use at "
            "most 96\n",
        ),
    ],
)
def test_cli_plan_rejects_bad_sensitivity_data(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    data = str(write_fashion_mnist(tmp_path / "fmnist"))  # 96 training images
    no_timing(monkeypatch)
    rc, out = cli_plan(tmp_path, *[a.replace("FMNIST", data) for a in extra])
    assert rc == 2 and out is None
    assert message.replace("FMNIST", data) in capsys.readouterr().err
