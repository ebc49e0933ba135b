"""Fit ``c * f(a * x + b) + d`` to many 1-D curves and many library functions at once.

For each curve (an edge's recorded inputs and outputs) and each library function ``f``:

1. a grid search over ``(a, b)``; for each pair, ``(c, d)`` is the closed-form least-squares
   line of ``y`` on ``f(a x + b)``, so the search scores every pair by its true R^2;
2. a few Gauss-Newton (Levenberg-Marquardt) steps on ``(a, b)`` from the best pair, still with
   ``(c, d)`` solved in closed form at every step (variable projection).

Everything is batched over ``(curve, function, grid point)``; the only Python loop is over the
library's functions. R^2 here is ``1 - SS_res / SS_tot`` (not a squared correlation, which
would hide an offset).

Choosing a function trades fit against complexity by one documented score:

    score = log10(1 - R^2 + 1e-10) + complexity_weight * complexity
            + max(0, log10(rms(f) / std(f)) - 1)

and the lowest score wins: one more unit of complexity must buy a ``10 ** complexity_weight``
times smaller unexplained variance. The last term charges fits that only work by cancelling
large constants: ``-110 * cos(0.13 y)`` matches ``y^2`` through its Taylor series, and its
``f`` varies by a thousandth of its size over the data. A tenfold ratio is free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kandistill.students.symbols import SymbolLibrary

A_GRID = torch.cat([-torch.logspace(1, -1, 12), torch.logspace(-1, 1, 12)])
B_GRID = torch.linspace(-4, 4, 13)


@dataclass
class SymbolFits:
    """Fits of every function to every curve.

    ``r2`` and ``leverage`` (``rms(f) / std(f)`` over the curve's points) are ``(curves,
    functions)``; ``params`` is ``(curves, functions, 4)``, holding ``(a, b, c, d)``.
    """

    names: list[str]
    complexity: torch.Tensor
    r2: torch.Tensor
    leverage: torch.Tensor
    params: torch.Tensor


@dataclass
class Choice:
    """The function chosen for one curve, its parameters ``(a, b, c, d)`` and R^2, and the runner-up."""

    name: str
    params: list[float]
    r2: float
    runner_up: str
    runner_up_r2: float


def _line_fit(f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form ``y ~ c f + d`` along the last axis: returns ``c``, ``d`` and the residual sum of squares."""
    f_mean, y_mean = f.mean(-1, keepdim=True), y.mean(-1, keepdim=True)
    fc, yc = f - f_mean, y - y_mean
    var = fc.square().sum(-1)
    cov = (fc * yc).sum(-1)
    c = torch.where(var > 1e-20, cov / var.clamp_min(1e-20), torch.zeros_like(var))
    d = y_mean.squeeze(-1) - c * f_mean.squeeze(-1)
    sse = (yc.square().sum(-1) - c * cov).clamp_min(0.0)
    return c, d, sse


def _thin(x: torch.Tensor, y: torch.Tensor, max_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape[-1] <= max_points:
        return x, y
    order = x.argsort(-1)
    keep = order[:, torch.linspace(0, x.shape[-1] - 1, max_points).round().long()]
    return x.gather(-1, keep), y.gather(-1, keep)


def _evaluate(fn, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``f(a x + b)`` per curve (``a``, ``b``: ``(curves,)``; ``x``: ``(curves, points)``), non-finite -> 0."""
    values = fn(a.unsqueeze(-1) * x + b.unsqueeze(-1))
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))


def fit_symbols(
    x: torch.Tensor,
    y: torch.Tensor,
    library: SymbolLibrary,
    names: list[str] | None = None,
    lm_steps: int = 10,
    max_points: int = 96,
) -> SymbolFits:
    """Fit every function in ``names`` (default: the whole library) to every curve.

    ``x``, ``y``: ``(curves, points)``; curves of more than ``max_points`` points are thinned to
    ``max_points`` evenly spaced in ``x`` order. Computed in float64.
    """
    x, y = _thin(x.double(), y.double(), max_points)
    names = names or library.names()
    sst = (y - y.mean(-1, keepdim=True)).square().sum(-1).clamp_min(1e-30)
    n_curves = x.shape[0]
    r2 = torch.empty(n_curves, len(names), dtype=torch.float64)
    params = torch.empty(n_curves, len(names), 4, dtype=torch.float64)
    leverage = torch.empty(n_curves, len(names), dtype=torch.float64)
    a_grid, b_grid = torch.meshgrid(A_GRID, B_GRID, indexing="ij")
    a_grid, b_grid = a_grid.flatten(), b_grid.flatten()
    x32, y32 = x.float(), y.float()
    for k, name in enumerate(names):
        fn = library[name].torch_fn
        best = _line_fit(_evaluate(fn, x32[:, None, :], a_grid, b_grid), y32[:, None, :])[2].argmin(-1)
        a, b = a_grid[best].double(), b_grid[best].double()
        a, b = _levenberg_marquardt(fn, x, y, a, b, lm_steps)
        values = _evaluate(fn, x, a, b)
        c, d, sse = _line_fit(values, y)
        r2[:, k] = 1 - sse / sst
        params[:, k] = torch.stack([a, b, c, d], -1)
        leverage[:, k] = values.square().mean(-1).sqrt() / values.std(-1).clamp_min(1e-30)
    complexity = torch.tensor([library[n].complexity for n in names], dtype=torch.float64)
    return SymbolFits(list(names), complexity, r2, leverage, params)


def _levenberg_marquardt(fn, x, y, a, b, steps: int, h: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine ``(a, b)`` per curve, minimising the projected residual; finite-difference Jacobian."""
    damping = torch.full_like(a, 1e-3)
    for _ in range(steps):
        values = _evaluate(fn, x, a, b)
        c, d, sse = _line_fit(values, y)
        residual = c[:, None] * values + d[:, None] - y
        da = (_evaluate(fn, x, a + h, b) - _evaluate(fn, x, a - h, b)) / (2 * h)
        db = (_evaluate(fn, x, a, b + h) - _evaluate(fn, x, a, b - h)) / (2 * h)
        jac = _project_out(torch.stack([c[:, None] * da, c[:, None] * db], -1), values)
        ja, jb = jac.unbind(-1)
        gaa, gbb, gab = ja.square().sum(-1), jb.square().sum(-1), (ja * jb).sum(-1)
        ra, rb = (ja * residual).sum(-1), (jb * residual).sum(-1)
        lift = damping * ((gaa + gbb) / 2).clamp_min(1e-12)
        gaa, gbb = gaa + lift, gbb + lift
        det = (gaa * gbb - gab.square()).clamp_min(1e-300)
        step_a, step_b = -(gbb * ra - gab * rb) / det, -(gaa * rb - gab * ra) / det
        new_sse = _line_fit(_evaluate(fn, x, a + step_a, b + step_b), y)[2]
        better = new_sse < sse
        a = torch.where(better, a + step_a, a)
        b = torch.where(better, b + step_b, b)
        damping = torch.where(better, damping / 3, damping * 4)
    return a, b


def _project_out(jac: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Remove from each Jacobian column ``(curves, points, 2)`` its part in span{1, f}.

    ``(c, d)`` are re-solved at every step, so only the part of a change in ``(a, b)`` that
    they cannot absorb moves the residual (Kaufman's variable-projection Jacobian). A
    direction they absorb entirely, such as ``b`` in ``exp(a x + b)``, becomes zero.
    """
    jac = jac - jac.mean(1, keepdim=True)
    fc = (values - values.mean(1, keepdim=True)).unsqueeze(-1)
    coef = (fc * jac).sum(1, keepdim=True) / fc.square().sum(1, keepdim=True).clamp_min(1e-30)
    return jac - coef * fc


def ranked(fits: SymbolFits, complexity_weight: float = 0.5) -> torch.Tensor:
    """Per curve, the functions' indices from the lowest score to the highest (see the module docstring):
    ``(curves, functions)``; a fit whose score is not finite comes last."""
    cancellation = (fits.leverage.log10() - 1).clamp_min(0.0).nan_to_num(0.0)
    score = torch.log10((1 - fits.r2).clamp_min(0.0) + 1e-10) + complexity_weight * fits.complexity + cancellation
    score = torch.where(torch.isfinite(score), score, torch.full_like(score, float("inf")))
    return score.argsort(-1)


def choose(fits: SymbolFits, complexity_weight: float = 0.5) -> list[Choice]:
    """Per curve, the function with the lowest score (see the module docstring)."""
    order = ranked(fits, complexity_weight)
    choices = []
    for curve, ranks in enumerate(order.tolist()):
        first, second = ranks[0], ranks[1] if len(ranks) > 1 else ranks[0]
        choices.append(
            Choice(
                fits.names[first],
                fits.params[curve, first].tolist(),
                fits.r2[curve, first].item(),
                fits.names[second],
                fits.r2[curve, second].item(),
            )
        )
    return choices
