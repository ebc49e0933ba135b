"""Full-batch fitting of a KAN to in-memory data: the inner loop of the KAN schedule.

L-BFGS is what small KANs train best with (the KAN paper's choice); Adam is there for noisy or
large problems. The grid follows the data during the first steps, as in the KAN paper.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from kandistill.students import KAN

logger = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """How to fit: optimiser, steps, sparsity penalty and grid updates."""

    steps: int = 50
    optimizer: str = "lbfgs"
    lr: float = 1.0
    l1: float = 0.0
    entropy: float = 0.0
    grid_update_every: int = 10
    grid_update_until: int = 50
    grid_uniform_fraction: float = 0.02
    progress: bool = False
    description: str = "fit"

    def __post_init__(self) -> None:
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"fit optimizer: expected 'lbfgs' or 'adam', got {self.optimizer!r}")
        if self.steps < 0:
            raise ValueError(f"fit steps: expected a non-negative integer, got {self.steps}")


@dataclass
class FitHistory:
    """Per step: the mean squared error on the training data (without the penalty)."""

    train_mse: list[float] = field(default_factory=list)


def _make_optimizer(model: KAN, config: FitConfig) -> torch.optim.Optimizer:
    if config.optimizer == "lbfgs":
        return torch.optim.LBFGS(
            model.parameters(), lr=config.lr, history_size=10, line_search_fn="strong_wolfe",
            tolerance_grad=1e-32, tolerance_change=1e-32,
        )  # fmt: skip
    return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)


def fit_kan(model: KAN, x: torch.Tensor, y: torch.Tensor, config: FitConfig | None = None) -> FitHistory:
    """Fit ``model`` to ``y`` on ``x`` in place, by full-batch optimisation of the mean squared error.

    ``x``: ``(batch, in)`` (or ``(E, batch, in)`` for an ensemble); ``y``: the model's output shape.
    With ``l1`` or ``entropy`` set, the KAN paper's sparsity penalty is added to the loss.
    """
    config = config or FitConfig()
    if not torch.isfinite(y).all():
        raise ValueError("fit_kan: the targets y contain NaN or infinite values")
    expected = (*model(x[..., :1, :]).shape[:-2], x.shape[-2], model.width[-1])
    if y.shape != expected:
        raise ValueError(f"fit_kan: targets y have shape {tuple(y.shape)}, expected {tuple(expected)}")
    optimizer = _make_optimizer(model, config)
    penalised = config.l1 > 0 or config.entropy > 0
    history = FitHistory()
    last_mse = math.nan

    def loss_fn() -> torch.Tensor:
        nonlocal last_mse
        optimizer.zero_grad()
        if penalised:
            pred, penalty = model.forward_with_penalty(x, config.l1, config.entropy)
            mse = (pred - y).square().mean()
            loss = mse + penalty.sum()
        else:
            mse = (model(x) - y).square().mean()
            loss = mse
        loss.backward()
        last_mse = mse.item()
        return loss

    for step in tqdm(range(config.steps), disable=not config.progress, desc=config.description, leave=False):
        if config.grid_update_every and step % config.grid_update_every == 0 and step < config.grid_update_until:
            model.update_grid(x, config.grid_uniform_fraction)
        optimizer.step(loss_fn)
        if not math.isfinite(last_mse):
            raise FloatingPointError(f"fit_kan: the loss became {last_mse} at step {step}")
        history.train_mse.append(last_mse)
    return history
