"""The KAN schedule on in-memory data: fit sparse, prune, then keep only the hidden nodes that matter.

Thresholds on edge activity prune what the sparsity penalty switched off, but the penalty
often leaves a function spread over two or three hidden nodes. :func:`prune_greedily` then
removes the weakest hidden node, refits, and keeps the removal while the fit stays good: the
network is chosen by its fidelity, not by a threshold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from kandistill.distill.train.fit import FitConfig, fit_kan
from kandistill.students import KAN

logger = logging.getLogger(__name__)


@dataclass
class ScheduleConfig:
    """Steps and weights of each phase; ``keep_factor`` bounds how much a node removal may cost."""

    sparse_steps: int = 50
    l1: float = 0.01
    entropy: float = 0.02
    refit_steps: int = 50
    node_refit_steps: int = 30
    keep_factor: float = 3.0
    loss_floor: float = 1e-4


def _loss(model: KAN, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error relative to the targets' variance (1 - R^2)."""
    with torch.no_grad():
        return ((model(x) - y).square().mean() / y.var().clamp_min(1e-30)).item()


def node_importance(model: KAN, x: torch.Tensor) -> list[tuple[float, int, int]]:
    """``(score, boundary, node)`` for every hidden node, weakest first.

    A node's score is its strongest incoming edge's spread times its strongest outgoing edge's
    spread (standard deviations over ``x``): it matters only if it both varies and is used.
    """
    importance = model.edge_importance(x)
    scores = []
    for h in range(1, len(model.layers)):
        incoming = importance[h - 1][0].amax(0)
        outgoing = importance[h][0].amax(1)
        scores += [(float(i * o), h, n) for n, (i, o) in enumerate(zip(incoming, outgoing, strict=True))]
    return sorted(scores)


def prune_greedily(
    model: KAN, x: torch.Tensor, y: torch.Tensor, config: ScheduleConfig, deadline: float | None = None
) -> KAN:
    """Remove hidden nodes one at a time while ``1 - R^2`` stays within ``keep_factor`` of the start.

    Each round tries the nodes weakest first and keeps the first removal that still fits after
    a short refit (importance predicts which node can go only roughly); it stops when no node can,
    or when ``deadline`` (a `time.monotonic` value) has passed (with a warning: the network is then
    larger than it needs to be).
    """
    if model.ensemble != 1:
        raise ValueError("prune_greedily: one student at a time (use model.member(e))")
    budget = max(config.keep_factor * _loss(model, x, y), config.loss_floor)
    while True:
        smaller = _first_removal_within(model, x, y, budget, config.node_refit_steps, deadline)
        if smaller is None:
            return model
        model = smaller


def _first_removal_within(
    model: KAN, x: torch.Tensor, y: torch.Tensor, budget: float, steps: int, deadline: float | None
) -> KAN | None:
    """The first network, trying hidden nodes weakest first, that fits within ``budget`` without one."""
    for _, boundary, node in node_importance(model, x):
        if model.width[boundary] == 1:
            continue
        if deadline is not None and time.monotonic() > deadline:
            logger.warning("prune_greedily: out of time; width %s is kept unpruned", model.width)
            return None
        trial = model.remove_hidden_node(boundary, node, x)
        try:
            fit_kan(trial, x, y, FitConfig(steps=steps, grid_update_every=0))
        except FloatingPointError:
            continue
        if _loss(trial, x, y) <= budget:
            logger.info("removed hidden node %d of boundary %d: width %s", node, boundary, trial.width)
            return trial
    return None


def sparse_fit(
    model: KAN, x: torch.Tensor, y: torch.Tensor, config: ScheduleConfig | None = None, deadline: float | None = None
) -> KAN:
    """Fit with the sparsity penalty, prune by threshold, prune nodes greedily (until ``deadline``, a
    `time.monotonic` value), refit."""
    config = config or ScheduleConfig()
    fit_kan(model, x, y, FitConfig(steps=config.sparse_steps, l1=config.l1, entropy=config.entropy))
    model = model.prune(x)
    fit_kan(model, x, y, FitConfig(steps=config.refit_steps))
    model = prune_greedily(model, x, y, config, deadline)
    fit_kan(model, x, y, FitConfig(steps=config.refit_steps, grid_update_every=0))
    return model
