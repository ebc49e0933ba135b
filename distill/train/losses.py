"""Distillation losses, per target kind. Shapes: ``(E, batch, out)`` student outputs and targets.

A label set's student predicts the log-odds of each label against the last one, ``z_j = log p_j -
log p_last`` (``out = n_labels - 1``); its distribution is ``softmax([z, 0])``. Scalar students
predict their target directly. Every loss returns one value per ensemble member, ``(E,)``, so each
member keeps its own loss, early stopping and pruning.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def label_logprobs(log_odds: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``(..., n - 1)`` log-odds against the last label -> ``(..., n)`` log-probabilities at ``temperature``."""
    logits = torch.cat([log_odds, torch.zeros_like(log_odds[..., :1])], -1) / temperature
    return logits.log_softmax(-1)


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per member: ``(E, batch, out)`` -> ``(E,)``."""
    return (prediction - target).square().mean((1, 2))


def kl_divergence(
    student_log_odds: torch.Tensor, teacher_log_odds: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) over the label set at temperature T, scaled by T^2 (Hinton et al.), per member."""
    teacher = label_logprobs(teacher_log_odds, temperature)
    student = label_logprobs(student_log_odds, temperature)
    return F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1).mean(1) * temperature**2


def soft_cross_entropy(
    student_log_odds: torch.Tensor, teacher_log_odds: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's soft labels at temperature T, scaled by T^2, per member."""
    teacher = label_logprobs(teacher_log_odds, temperature).exp()
    student = label_logprobs(student_log_odds, temperature)
    return -(teacher * student).sum(-1).mean(1) * temperature**2


def distillation_loss(
    name: str, prediction: torch.Tensor, target: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """The named loss per member; ``prediction`` and ``target`` in the target's own units."""
    if name in ("mse", "mse_logodds"):
        return mse(prediction, target)
    if name == "kl":
        return kl_divergence(prediction, target, temperature)
    if name == "soft_ce":
        return soft_cross_entropy(prediction, target, temperature)
    raise ValueError(f"loss: expected one of mse, mse_logodds, kl, soft_ce; got {name!r}")
