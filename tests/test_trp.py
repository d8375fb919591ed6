import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from trp_zoo import TRP, decompose, rank_plan
from trp_zoo.lowrank.svd import exact_svd

LAMBDA = 1e-2


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 1, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g)


def backward(model: nn.Module, seed: int) -> None:
    x, y = batch(seed)
    F.cross_entropy(model(x), y).backward()


def matrix_rank(hook: TRP, name: str) -> int:
    w = hook.targets[name].weight.detach().double()
    return int(torch.linalg.matrix_rank(hook.scheme.to_matrix(w), rtol=1e-5))


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_weights_have_chosen_rank_after_projection(scheme: str) -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hook = TRP(model, scheme, energy=0.6, period=3, nuclear_weight=LAMBDA).attach(opt)
    assert set(hook.targets) == {"2", "4"}  # stem and classifier stay dense
    for step in range(7):
        opt.zero_grad()
        backward(model, step)
        opt.step()
        if hook.is_period_step(hook.step):  # projected right after this step
            for name in hook.targets:
                assert matrix_rank(hook, name) == hook.ranks[name]
    assert len(hook.history) == 2 and hook.step == 7
    assert all(r < 16 for r in hook.ranks.values())


# energy 0.3 keeps few directions; 0.9 most of them (projected through the discarded ones)
@pytest.mark.parametrize("energy", [0.3, 0.9])
def test_subgradient_lands_only_on_period_steps(energy: float) -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hook = TRP(model, "channel", energy=energy, period=3, nuclear_weight=LAMBDA).attach(opt)
    conv = hook.targets["4"]
    for step in range(9):
        opt.zero_grad()
        backward(model, step)
        raw = conv.weight.grad.clone()
        if hook.is_period_step(hook.step):
            w = conv.weight.detach()
            u, _, vh = exact_svd(w.reshape(32, -1))
            r = hook.ranks["4"]
            assert matrix_rank(hook, "4") == r  # the forward of this step saw the projection
            expected = LAMBDA * (u[:, :r] @ vh[:r]).float().reshape_as(w)
        else:
            expected = torch.zeros_like(raw)
        opt.step()
        torch.testing.assert_close(conv.weight.grad - raw, expected, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("energy", [0.3, 0.9])
def test_channels_last_weights_train_as_contiguous_ones(energy: float) -> None:
    """A contiguous weight is projected in place and gets its direction in one product; a
    channels-last one goes through copies. Both must train the same."""
    models = [net(), None]
    models[1] = copy.deepcopy(models[0]).to(memory_format=torch.channels_last)
    hooks = []
    for model in models:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        hooks.append(TRP(model, "channel", energy=energy, period=2, nuclear_weight=LAMBDA))
        hooks[-1].attach(opt)
        for step in range(5):
            opt.zero_grad()
            backward(model, step)
            opt.step()
    assert hooks[1].targets["4"].weight.is_contiguous(memory_format=torch.channels_last)
    assert hooks[0].ranks == hooks[1].ranks and hooks[0].history == hooks[1].history
    for name, conv in hooks[0].targets.items():
        torch.testing.assert_close(conv.weight, hooks[1].targets[name].weight, atol=2e-5, rtol=0)


def test_period_one_projects_before_the_first_step() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    hook = TRP(model, "channel", energy=0.5, period=1).attach(opt)
    assert hook.step == 0 and len(hook.history) == 1
    assert matrix_rank(hook, "4") == hook.ranks["4"]


def test_optimizer_state_survives_projection() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hook = TRP(model, "channel", energy=0.7, period=2, nuclear_weight=0.0).attach(opt)
    weight = hook.targets["4"].weight
    for step in range(4):
        opt.zero_grad()
        backward(model, step)
        before = copy.deepcopy(opt.state_dict())
        opt.step()
        after = opt.state[weight]["momentum_buffer"]
        expected_buf = 0.9 * before["state"].get(4, {}).get(
            "momentum_buffer", torch.zeros_like(after)
        )
        if before["state"]:
            # momentum buffer = 0.9 * old buffer + grad: the projection did not reset it
            torch.testing.assert_close(after, expected_buf + weight.grad)
    assert hook.step == 4 and len(hook.history) == 2


def test_adam_state_is_kept() -> None:
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    hook = TRP(model, "channel", energy=0.7, period=2, nuclear_weight=0.0).attach(opt)
    weight = hook.targets["4"].weight
    grads = []
    for step in range(5):
        opt.zero_grad()
        backward(model, step)
        grads.append(weight.grad.clone())
        opt.step()
    assert len(hook.history) == 3  # projections after steps 0, 2 and 4 changed the weights
    # Adam's moments are those of the gradients alone: projections leave them untouched
    b1, b2 = opt.param_groups[0]["betas"]
    exp_avg = sum((1 - b1) * b1 ** (4 - i) * g for i, g in enumerate(grads))
    exp_avg_sq = sum((1 - b2) * b2 ** (4 - i) * g * g for i, g in enumerate(grads))
    state = opt.state[weight]
    torch.testing.assert_close(state["exp_avg"], exp_avg, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(state["exp_avg_sq"], exp_avg_sq, rtol=1e-5, atol=1e-10)


def test_grad_scaler_unscaled_gradients_and_skipped_steps() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    hook = TRP(model, "channel", energy=0.8, period=2, nuclear_weight=LAMBDA).attach(opt)
    conv = hook.targets["4"]
    for step in range(4):
        opt.zero_grad()
        x, y = batch(step)
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        if step == 2:  # an overflow: the step is skipped, TRP does not advance
            conv.weight.grad[0, 0, 0, 0] = float("inf")
        raw = conv.weight.grad.clone() / scaler.get_scale()
        period_step = hook.is_period_step(hook.step)
        steps_before = hook.step
        scaler.step(opt)
        scaler.update()
        if step == 2:
            assert hook.step == steps_before
            continue
        assert hook.step == steps_before + 1
        diff = conv.weight.grad - raw
        if period_step:
            assert diff.norm() == pytest.approx(LAMBDA * hook.ranks["4"] ** 0.5, rel=1e-3)
        else:
            assert diff.abs().max() < 1e-6


def test_plan_caps_ranks_and_flows_into_decompose() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    plan = {"2": 3, "4": 5}
    hook = TRP(model, "channel", energy=0.99, period=1, plan=plan).attach(opt)
    for step in range(3):
        opt.zero_grad()
        backward(model, step)
        opt.step()
    assert hook.ranks == plan
    final = hook.project()
    out = decompose(model, "channel", rank=final)
    assert rank_plan(out) == plan
    x, _ = batch(0)
    with torch.no_grad():
        torch.testing.assert_close(out(x), model(x), atol=1e-5, rtol=1e-4)


def test_state_dict_resume_is_exact() -> None:
    def run(model, opt, hook, steps):
        for step in steps:
            opt.zero_grad()
            backward(model, step)
            opt.step()

    torch.manual_seed(3)
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hook = TRP(model, "spatial", energy=0.8, period=3).attach(opt)
    run(model, opt, hook, range(5))
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), hook.state_dict()))
    run(model, opt, hook, range(5, 11))

    model2 = net()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    hook2 = TRP(model2, "spatial", energy=0.8, period=3)
    hook2.load_state_dict(saved[2])
    hook2.attach(opt2)
    run(model2, opt2, hook2, range(5, 11))
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert hook.ranks == hook2.ranks and hook.step == hook2.step


def test_bad_arguments() -> None:
    model = net()
    with pytest.raises(ValueError, match="period"):
        TRP(model, period=0)
    with pytest.raises(ValueError, match="energy"):
        TRP(model, energy=1.5)
    with pytest.raises(ValueError, match="unknown scheme"):
        TRP(model, scheme="svd")
    for rank in (0, -2, 1.5):  # refused when built, naming the layer, not at a projection
        with pytest.raises(ValueError, match=rf"rank plan entry '4': .*got {rank}"):
            TRP(model, plan={"4": rank})
    with pytest.raises(ValueError, match="nuclear_weight must be a finite number >= 0, got nan"):
        TRP(model, nuclear_weight=float("nan"))  # nan < 0 is False: it used to be accepted
    for rank in (0, "3"):  # a forced rank is checked like a plan entry, naming the layer
        with pytest.raises(ValueError, match=rf"rank plan entry '4': .*got {rank!r}"):
            TRP(model).project({"4": rank})
    other = torch.optim.SGD(net().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer does not update"):
        TRP(model).attach(other)


def test_macs_per_pixel_follow_the_scheme() -> None:
    model = net()
    hook = TRP(model, "channel", energy=0.5)
    ranks = hook.project()
    for name, (dense, low) in hook.macs_per_pixel().items():
        conv = hook.targets[name]
        assert dense == conv.weight.numel()
        assert low == ranks[name] * (conv.weight[0].numel() + conv.out_channels)
        # the factorized layers decompose builds at those ranks do exactly that work per pixel
    low_model = decompose(model, "channel", rank=ranks)
    for name, (_, low) in hook.macs_per_pixel().items():
        layer = low_model.get_submodule(name)
        if hasattr(layer, "first"):
            assert low == layer.first.weight.numel() + layer.second.weight.numel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather(model: nn.Module, world: int) -> list[torch.Tensor]:
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(world)]
    dist.all_gather(gathered, weights)
    return gathered


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ddp = nn.parallel.DistributedDataParallel(net())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    hook = TRP(ddp, "channel", energy=0.8, period=2, plan={"module.4": 6}).attach(opt)
    if rank == 1:  # out of step with rank 0 after wrapping: only TRP's broadcast re-syncs it
        with torch.no_grad():
            ddp.module[4].weight.add_(torch.randn_like(ddp.module[4].weight), alpha=0.1)
    before = _gather(ddp.module, world)
    for step in range(6):
        opt.zero_grad()
        backward(ddp, 100 * rank + step)  # different data on each rank
        opt.step()
    gathered = _gather(ddp.module, world)
    if rank == 0:
        result = {"weights": gathered, "ranks": hook.ranks, "names": list(hook.targets)}
        torch.save({**result, "before": before}, out)
    dist.destroy_process_group()


def test_ddp_ranks_hold_identical_weights(tmp_path) -> None:
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    result = torch.load(out)
    assert result["names"] == ["4"]  # DDP's module. prefix is gone
    assert not torch.equal(*result["before"])  # rank 1 was perturbed
    assert result["ranks"]["4"] <= 6
    torch.testing.assert_close(result["weights"][0], result["weights"][1], atol=0, rtol=0)


def test_nuclear_only_adds_full_rank_subgradient_without_projecting() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights only change by projection
    hook = TRP(model, "channel", energy=0.5, period=1, nuclear_weight=LAMBDA, project=False)
    hook.attach(opt)
    conv = hook.targets["4"]
    before = conv.weight.detach().clone()
    opt.zero_grad()
    backward(model, 0)
    raw = conv.weight.grad.clone()
    opt.step()
    torch.testing.assert_close(conv.weight.detach(), before, atol=0, rtol=0)
    u, _, vh = exact_svd(before.reshape(32, -1))
    expected = LAMBDA * (u @ vh).float().reshape_as(before)  # all 32 singular directions
    torch.testing.assert_close(conv.weight.grad - raw, expected, atol=1e-6, rtol=1e-4)
    assert hook.ranks["4"] < 32  # ranks are still reported by the energy criterion
    hook.project()
    assert matrix_rank(hook, "4") == hook.ranks["4"]


def test_resume_at_a_period_step_does_not_project_twice() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hook = TRP(model, "channel", energy=0.6, period=2, nuclear_weight=0.0).attach(opt)
    opt.zero_grad()
    backward(model, 0)
    opt.step()  # step 1 is a period step: projected now
    assert len(hook.history) == 1
    state = copy.deepcopy(hook.state_dict())
    hook2 = TRP(model, "channel", energy=0.6, period=2, nuclear_weight=0.0)
    hook2.load_state_dict(state)
    hook.detach()
    hook2.attach(opt)
    assert len(hook2.history) == 1  # no second projection of the restored weights


def test_final_projection_keeps_the_ranks_training_reached() -> None:
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hook = TRP(model, "channel", energy=0.7, period=2).attach(opt)
    for step in range(4):
        opt.zero_grad()
        backward(model, step)
        opt.step()
    reached = dict(hook.ranks)
    assert hook.project(reached) == reached  # the energy criterion would cut further
    for name in hook.targets:
        assert matrix_rank(hook, name) == reached[name]
    cut = hook.project()  # the criterion again: 70% of what is left
    assert all(cut[n] <= reached[n] for n in reached) and any(cut[n] < reached[n] for n in reached)
    with pytest.raises(ValueError, match="does not target"):
        hook.project({"0": 3})


@pytest.mark.parametrize("project", [True, False])
def test_lapack_calls_run_on_one_thread_and_restore_the_count(project, monkeypatch) -> None:
    # a busy machine makes multi-threaded LAPACK calls (eigh, qr) many times slower
    seen: dict[str, list[int]] = {"eigh": [], "qr": []}
    for name in seen:
        original = getattr(torch.linalg, name)

        def record(*args, _name=name, _original=original, **kwargs):
            seen[_name].append(torch.get_num_threads())
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch.linalg, name, record)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        hook = TRP(model, "channel", energy=0.5, period=1, project=project).attach(opt)
        for step in range(2):  # the second projection takes the tracked path (qr)
            opt.zero_grad()
            backward(model, step)
            opt.step()
        assert len(seen["eigh"]) >= 2 * len(hook.targets)
        assert set(seen["eigh"]) == {1} and set(seen["qr"]) <= {1}
        assert seen["qr"] or not project
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
