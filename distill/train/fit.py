"""Fitting a KAN to in-memory data, and the parts every KAN training loop shares.

`train_steps` is the one step loop: `fit_kan` (the full-batch fit inside extraction and discovery) runs it
once, and the train stage (`kandistill.distill.train.loop`: ensembles, processes, checkpoints, early
stopping) runs it between its evaluations, with the same optimisers (`make_optimizer`) and grid schedule
(`GridUpdates`), so every KAN in the library trains the same way.

L-BFGS is what small KANs train best with (the KAN paper's choice); Adam is there for noisy or
large problems. The grid follows the data during the first steps, as in the KAN paper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from kandistill.students import KAN

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridUpdates:
    """When the grid follows the data: at every ``every``-th step up to step ``until`` (inclusive; ``every=0``:
    never), with ``uniform_fraction`` and ``margin`` as in `KAN.update_grid`."""

    every: int = 10
    until: int = 40
    uniform_fraction: float = 0.02
    margin: float = 0.0

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step <= self.until

    def apply(self, model: KAN, x: torch.Tensor) -> None:
        model.update_grid(x, self.uniform_fraction, relative_margin=self.margin)


def make_optimizer(parameters: Iterable[torch.nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer:
    """``lbfgs``: full-batch L-BFGS with a strong-Wolfe line search and no early exit on small changes (the
    steps are counted by the caller); ``adam``: Adam."""
    if name == "lbfgs":
        return torch.optim.LBFGS(parameters, lr=lr, history_size=10, line_search_fn="strong_wolfe",
                                 tolerance_grad=1e-32, tolerance_change=1e-32)  # fmt: skip
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise ValueError(f"optimizer: expected 'lbfgs' or 'adam', got {name!r}")


@dataclass
class FitConfig:
    """How to fit: optimiser, steps, sparsity penalty and grid updates."""

    steps: int = 50
    optimizer: str = "lbfgs"
    lr: float = 1.0
    l1: float = 0.0
    entropy: float = 0.0
    grid_update_every: int = 10
    grid_update_until: int = 40
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
    """Per step: the training loss at the step's end (the mean squared error, plus the penalty if any)."""

    losses: list[float] = field(default_factory=list)


def train_steps(model: KAN, optimizer: torch.optim.Optimizer, closure_at: Callable[[int], Callable[[], torch.Tensor]],
                steps: range, grid: GridUpdates | None = None, grid_x: torch.Tensor | None = None,
                lr_at: Callable[[int], float] | None = None, progress: tqdm | None = None,
                what: str = "fit_kan") -> list[float]:  # fmt: skip
    """The one KAN step loop, under `fit_kan` and the train stage's phases alike.

    For each step: the grid follows ``grid_x`` when ``grid`` says so, the learning rate is ``lr_at(step)`` when
    given, and the optimiser steps on ``closure_at(step)`` (zero the gradients, compute the loss, backward,
    return it: L-BFGS calls it several times per step). Returns each step's last loss; a non-finite one raises
    `FloatingPointError` naming ``what`` and the step.
    """
    losses = []
    for step in steps:
        if grid is not None and grid.due(step):
            grid.apply(model, grid_x)
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        closure, last = closure_at(step), [math.nan]

        def recorded(closure: Callable[[], torch.Tensor] = closure, last: list[float] = last) -> torch.Tensor:
            loss = closure()
            last[0] = float(loss.detach())
            return loss

        optimizer.step(recorded)
        if not math.isfinite(last[0]):
            raise FloatingPointError(f"{what}: the training loss became {last[0]} at step {step}; "
                                     "lower the learning rate")  # fmt: skip
        losses.append(last[0])
        if progress is not None:
            progress.update(1)
    return losses


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
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr)
    grid = GridUpdates(config.grid_update_every, config.grid_update_until, config.grid_uniform_fraction)
    penalised = config.l1 > 0 or config.entropy > 0

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        if penalised:
            pred, penalty = model.forward_with_penalty(x, config.l1, config.entropy)
            value = (pred - y).square().mean() + penalty.sum()
        else:
            value = (model(x) - y).square().mean()
        value.backward()
        return value

    with tqdm(total=config.steps, disable=not config.progress, desc=config.description, leave=False) as bar:
        losses = train_steps(model, optimizer, lambda _: loss, range(config.steps), grid, x, progress=bar)
    return FitHistory(losses)
