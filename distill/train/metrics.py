"""How closely one thing matches another: a student its teacher, a formula its student. The one R^2 of the library.

Scalar targets: R^2 and RMSE. Label sets (given as log-odds against the last label,
``(batch, n_labels - 1)``): agreement of the top label, the mean KL(teacher || student), and the R^2
of the log-odds.
"""

from __future__ import annotations

import numpy as np
import torch

from kandistill.distill.train.losses import label_logprobs


def r2_score(prediction: torch.Tensor | np.ndarray | float, target: torch.Tensor | np.ndarray) -> float:
    """``1 - SS_res / SS_tot`` over all entries, each column of ``target`` centred apart (``(rows,)`` or
    ``(rows, out)``; ``prediction`` broadcasts to it, so a constant prediction is scored too).

    The edge cases, the same for every caller: a prediction that is not finite everywhere scores ``-inf``
    (worse than any finite one, so a search never picks it); a constant target scores 1 when matched exactly
    and 0 otherwise (scikit-learn's convention), never NaN.
    """
    target = _numpy(target)
    prediction = np.broadcast_to(_numpy(prediction), target.shape)
    if not np.isfinite(prediction).all():
        return -np.inf
    residual = float(np.sum((prediction - target) ** 2))
    total = float(np.sum((target - target.mean(0)) ** 2))
    if total > 0:
        return 1 - residual / total
    return 1.0 if residual == 0 else 0.0


def _numpy(values: torch.Tensor | np.ndarray | float) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return np.asarray(values, dtype=np.float64)


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
