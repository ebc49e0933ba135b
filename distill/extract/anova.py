"""A function's functional ANOVA on its data: an intercept, main effects, the pairwise interactions that
matter, and what is left.

    f(x) = f0 + sum_i f_i(x_i) + sum_(i,j) f_ij(x_i, x_j) + remainder(x)

Each part is a partial dependence, centred: ``f_i(v)`` is the mean of ``f`` over the background rows
with feature ``i`` set to ``v``, minus ``f0``; ``f_ij`` is the pair's partial dependence minus both
main effects and ``f0``. When the features are sampled independently (the targets stage's samplers
do so), these are exactly the functional ANOVA components, and their variances add up to the
function's. A part's *share* is its variance over the data divided by the function's.

Numeric features are tabulated at quantiles of the data (so the table follows where the data lies)
and interpolated linearly between them; categorical ones (given as codes ``0 .. k-1``) at each code.
Pairs are screened by Sobol total indices: only features that take part in interactions (total
effect well above the main effect) are paired, so that the cost stays at a few hundred thousand
evaluations of ``f`` however many features there are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]  # (rows, n_features) -> (rows,)


@dataclass(frozen=True)
class Part:
    """One component, tabulated: ``grid`` holds one axis per feature (numbers, or codes of a categorical
    feature), ``values`` its value at each grid point (``(g,)`` or ``(g1, g2)``), centred on the data."""

    features: tuple[int, ...]
    grid: tuple[np.ndarray, ...]
    values: np.ndarray
    share: float


@dataclass(frozen=True)
class Decomposition:
    """``intercept`` (f0), the main effects (one per feature), the kept pairs, and the shares of the total
    variance ``variance`` that the pairs screened but not kept and any higher interactions leave."""

    intercept: float
    variance: float
    mains: tuple[Part, ...]
    pairs: tuple[Part, ...]
    remainder_share: float
    screened_pairs: int

    def predict(self, x: np.ndarray, with_pairs: bool = True) -> np.ndarray:
        """The sum of the tabulated parts at ``x`` ``(rows, n)`` -> ``(rows,)``."""
        parts = self.mains + (self.pairs if with_pairs else ())
        return self.intercept + sum((part_values(p, x) for p in parts), np.zeros(len(x)))


def part_values(part: Part, x: np.ndarray) -> np.ndarray:
    """A tabulated part at each row of ``x`` ``(rows, n)``: linear between grid points, flat beyond them."""
    if len(part.features) == 1:
        return np.interp(x[:, part.features[0]], part.grid[0], part.values)
    (i, j), (gi, gj) = part.features, part.grid
    ia, wa = _bracket(gi, x[:, i])
    ib, wb = _bracket(gj, x[:, j])
    v = part.values
    return ((1 - wa) * (1 - wb) * v[ia, ib] + wa * (1 - wb) * v[ia + 1, ib]
            + (1 - wa) * wb * v[ia, ib + 1] + wa * wb * v[ia + 1, ib + 1])  # fmt: skip


def _bracket(grid: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per value, the grid cell's left index and the weight of its right end (clamped to the grid)."""
    if len(grid) == 1:
        return np.zeros(len(values), dtype=int), np.zeros(len(values))
    left = np.clip(np.searchsorted(grid, values, side="right") - 1, 0, len(grid) - 2)
    weight = np.clip((values - grid[left]) / (grid[left + 1] - grid[left]), 0.0, 1.0)
    return left, weight


def feature_grid(column: np.ndarray, categorical: bool, points: int) -> np.ndarray:
    """Where to tabulate a feature: each code of a categorical one, or up to ``points`` data quantiles."""
    if categorical:
        return np.unique(column.astype(int)).astype(np.float64)
    return np.unique(np.quantile(column, np.linspace(0, 1, points)))


def _partial_dependence(predict: Predict, background: np.ndarray, columns: Sequence[int],
                        points: np.ndarray) -> np.ndarray:  # fmt: skip
    """Mean of ``predict`` over ``background`` with ``columns`` set to each row of ``points`` ``(p, len(columns))``
    -> ``(p,)``."""
    rows = np.repeat(background[None], len(points), 0)  # (points, background, n)
    rows[:, :, list(columns)] = points[:, None, :]
    return predict(rows.reshape(-1, background.shape[1])).reshape(len(points), -1).mean(1)


def total_effects(predict: Predict, a: np.ndarray, b: np.ndarray, variance: float) -> np.ndarray:
    """Sobol total indices by Jansen's estimator: ``E[(f(A) - f(A with column i from B))^2] / 2 / Var``."""
    fa = predict(a)
    totals = []
    for i in range(a.shape[1]):
        mixed = a.copy()
        mixed[:, i] = b[:, i]
        totals.append(0.5 * np.mean((fa - predict(mixed)) ** 2) / variance)
    return np.asarray(totals)


def decompose(
    predict: Predict,
    x: np.ndarray,
    categorical: Sequence[bool],
    max_pairs: int = 3,
    min_share: float = 0.005,
    grid_points: int = 33,
    pair_grid_points: int = 12,
    background_rows: int = 256,
    max_screened_features: int = 10,
    seed: int = 0,
) -> Decomposition:
    """The functional ANOVA of ``predict`` on the rows ``x`` ``(rows, n)`` (see the module docstring).

    Keeps at most ``max_pairs`` pairwise interactions, each with a share of at least ``min_share``,
    chosen by share among the pairs of the ``max_screened_features`` features whose total effect
    exceeds their main effect the most. Deterministic for a given ``seed``.
    """
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    background = x[rng.permutation(len(x))[:background_rows]]
    fx = predict(x)
    intercept, variance = float(fx.mean()), float(fx.var())
    if not np.isfinite(fx).all():
        raise FloatingPointError("decompose: the function is not finite on its data")
    scale = max(variance, 1e-300)

    mains = []
    for i, is_category in enumerate(categorical):
        grid = feature_grid(x[:, i], is_category, grid_points)
        values = _partial_dependence(predict, background, [i], grid[:, None])
        mains.append(_centred(Part((i,), (grid,), values, 0.0), x, scale))

    pairs: list[Part] = []
    screened = 0
    if max_pairs and x.shape[1] > 1 and variance > 0:
        half = len(x) // 2
        order = rng.permutation(len(x))
        totals = total_effects(predict, x[order[:half]], x[order[half : 2 * half]], scale)
        involvement = totals - np.asarray([m.share for m in mains])
        candidates = [i for i in np.argsort(-involvement)[:max_screened_features] if involvement[i] > min_share / 2]
        for i, j in combinations(sorted(int(c) for c in candidates), 2):
            screened += 1
            pairs.append(_pair(predict, x, background, mains, (i, j), categorical, pair_grid_points, intercept, scale))
        pairs = [p for p in sorted(pairs, key=lambda p: -p.share) if p.share >= min_share][:max_pairs]

    kept = Decomposition(intercept, variance, tuple(mains), tuple(pairs), 0.0, screened)
    remainder = float(np.var(fx - kept.predict(x)) / scale)
    return Decomposition(intercept, variance, tuple(mains), tuple(pairs), remainder, screened)


def _pair(predict: Predict, x: np.ndarray, background: np.ndarray, mains: list[Part], pair: tuple[int, int],
          categorical: Sequence[bool], points: int, intercept: float, scale: float) -> Part:  # fmt: skip
    """The centred interaction of two features, tabulated on a coarse grid of both."""
    i, j = pair
    gi, gj = (feature_grid(x[:, k], categorical[k], points) for k in pair)
    grid = np.stack(np.meshgrid(gi, gj, indexing="ij"), -1).reshape(-1, 2)
    joint = _partial_dependence(predict, background, pair, grid).reshape(len(gi), len(gj))
    main_i = np.interp(gi, mains[i].grid[0], mains[i].values)
    main_j = np.interp(gj, mains[j].grid[0], mains[j].values)
    return _centred(Part(pair, (gi, gj), joint - main_i[:, None] - main_j[None, :], 0.0), x, scale)


def _centred(part: Part, x: np.ndarray, scale: float) -> Part:
    """``part`` shifted to mean zero on the data ``x``, with its share of the variance ``scale``."""
    on_data = part_values(part, x)
    return Part(part.features, part.grid, part.values - on_data.mean(), float(on_data.var() / scale))
