"""How closely a student matches its teacher on held-out inputs.

Scalar targets: R^2 and RMSE. Label sets (given as log-odds against the last label,
``(batch, n_labels - 1)``): agreement of the top label, the mean KL(teacher || student), and the R^2
of the log-odds.
"""

from __future__ import annotations

import torch

from kandistill.distill.train.losses import label_logprobs


def r2_score(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """1 - SS_res / SS_tot over all entries (columns centred separately)."""
    residual = (prediction - target).double().square().sum()
    total = (target - target.mean(0, keepdim=True)).double().square().sum()
    return float(1 - residual / total) if total > 0 else float("nan")


def scalar_fidelity(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``(batch, out)`` student vs teacher: ``r2`` and ``rmse``."""
    return {"r2": r2_score(prediction, target), "rmse": float((prediction - target).double().square().mean().sqrt())}


def label_fidelity(student_log_odds: torch.Tensor, teacher_log_odds: torch.Tensor) -> dict[str, float]:
    """``(batch, n_labels - 1)`` log-odds: ``agreement`` of the top label, ``kl`` and ``r2_logodds``."""
    student, teacher = label_logprobs(student_log_odds.double()), label_logprobs(teacher_log_odds.double())
    return {
        "agreement": float((student.argmax(-1) == teacher.argmax(-1)).double().mean()),
        "kl": float((teacher.exp() * (teacher - student)).sum(-1).mean()),
        "r2_logodds": r2_score(student_log_odds, teacher_log_odds),
    }
