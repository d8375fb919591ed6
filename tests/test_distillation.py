"""Knowledge distillation in the shared training engine (``--distill-from``)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from tests.fakedata import write_fashion_mnist
from trp_zoo.train import TrainConfig
from trp_zoo.train.config import build_parser, config_from_args
from trp_zoo.train.distillation import Distiller, distillation_loss
from trp_zoo.train.recipe import run_recipe
from trp_zoo.train.resume import load_latest


def test_distillation_loss_is_the_scaled_kl_divergence() -> None:
    # teacher probabilities (3/4, 1/4) at T=1, student (1/2, 1/2): KL worked out by hand
    student, teacher = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(distillation_loss(student, teacher, 1.0)) == pytest.approx(kl, rel=1e-6)
    # at T=2 the teacher's logits halve: probabilities sqrt(3)/(1+sqrt(3)) and 1/(1+sqrt(3))
    p = math.sqrt(3) / (1 + math.sqrt(3))
    kl2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(4 * kl2, rel=1e-6)
    # batch mean, and zero for a student that matches its teacher
    pair = torch.cat([student, teacher])
    assert float(distillation_loss(pair, torch.cat([teacher, teacher]), 1.0)) == pytest.approx(
        kl / 2, rel=1e-6
    )
    assert float(distillation_loss(teacher, teacher, 3.0)) == 0.0


def test_distiller_mixes_labels_and_soft_targets_and_freezes_the_teacher() -> None:
    teacher = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    logits = torch.randn(5, 3, requires_grad=True)
    hard = torch.tensor(2.0)
    kd = float(distillation_loss(logits.detach(), teacher(x).detach(), 2.0))
    mixed = Distiller(teacher, weight=0.25, temperature=2.0).loss(logits, x, hard)
    assert float(mixed.detach()) == pytest.approx(0.75 * 2.0 + 0.25 * kd, rel=1e-6)
    assert float(Distiller(teacher, 1.0, 2.0).loss(logits, x, hard).detach()) == pytest.approx(kd)
    mixed.backward()
    assert logits.grad is not None and teacher.weight.grad is None
    assert not teacher.training and not teacher.weight.requires_grad


def _config(*args: str) -> TrainConfig:
    defaults = TrainConfig(dataset="fashion_mnist")
    return config_from_args(defaults, build_parser(defaults).parse_args(list(args)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--distill-from", "missing.pth"], "--distill-from missing.pth is not a file"),
        (["--distill-weight", "0"], "--distill-weight must be in (0, 1], got 0.0"),
        (["--distill-weight", "1.5"], "--distill-weight must be in (0, 1], got 1.5"),
        (["--distill-temperature", "0"], "--distill-temperature must be > 0, got 0.0"),
    ],
)
def test_bad_distillation_settings_are_refused(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _config(*args)


def test_distill_from_none_means_no_teacher() -> None:
    assert _config("--distill-from", "none").distill_from is None


def _teacher_kl(student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(
            F.kl_div(
                F.log_softmax(student(x), -1),
                F.log_softmax(teacher(x), -1),
                log_target=True,
                reduction="batchmean",
            )
        )


def test_recipe_distills_the_student_toward_its_teacher(tmp_path: Path) -> None:
    """The same run with and without ``--distill-from``: only the distilled student ends up
    much closer to the teacher's predictions."""
    data = write_fashion_mnist(tmp_path / "data")
    torch.manual_seed(123)
    teacher = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    for m in teacher.modules():  # timm zero-initializes each block's last BN scale
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    teacher.eval()
    weights = tmp_path / "teacher.pth"
    torch.save(teacher.state_dict(), weights)
    x = torch.randn(32, 1, 28, 28)

    def student_kl(*extra: str) -> float:
        out = tmp_path / f"run{len(extra)}"
        argv = ["--data-dir", str(data), "--output-dir", str(out), "--no-trp"]
        argv += ["--epochs", "4", "--batch-size", "16", "--lr", "0.05", "--no-progress"]
        argv += ["--model", "test_resnet", "--model-name", "none", *extra]
        run_recipe(TrainConfig(dataset="fashion_mnist", weight_decay=0.0), "test", argv)
        student = timm.create_model("test_resnet", num_classes=10, in_chans=1)
        student.load_state_dict(load_latest(out)["model"])
        return _teacher_kl(student.eval(), teacher, x)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is faster, and immune to a busy CPU
    try:
        plain = student_kl()
        distilled = student_kl("--distill-from", str(weights), "--distill-weight", "1")
    finally:
        torch.set_num_threads(threads)
    assert distilled < 0.25 * plain, (distilled, plain)
