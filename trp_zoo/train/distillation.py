"""Knowledge distillation from a dense teacher (Hinton et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    The ``T^2`` keeps the term's gradients on the scale of the cross-entropy's whatever
    the temperature.
    """
    t = temperature
    log_student = F.log_softmax(student.float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return kl * (t * t)


class Distiller:
    """A frozen teacher and the loss that mixes its soft targets with the labels."""

    def __init__(self, teacher: nn.Module, weight: float, temperature: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature

    def loss(self, logits: Tensor, images: Tensor, hard_loss: Tensor) -> Tensor:
        """``(1 - w) hard_loss + w T^2 KL(teacher || student)`` on ``images``."""
        with torch.no_grad():
            soft = self.teacher(images)
        kd = distillation_loss(logits, soft, self.temperature)
        return (1.0 - self.weight) * hard_loss + self.weight * kd
