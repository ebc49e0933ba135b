"""Find a formula for data (or a teacher's outputs) end to end: fit a sparse KAN, then extract.

Candidates go from simple to rich: first a student without hidden layer (``[n, 1]``, an
additive model: one 1-D function per feature), then one with a hidden layer (``[n, hidden, 1]``),
and with ``deep`` one with two (``[n, hidden, hidden, 1]``).
When the target keeps one sign everywhere (to within its error, ``target_error``), each is also
tried on the logarithm of its size, fitted on the rows where it has that sign: a product of powers
and exponentials becomes a sum (the AI Feynman trick), so monomials such as
``G m1 m2 / r^2`` need no hidden layer at all. Each formula is judged on held-out points against
the target in its original space; the best fit wins, a simpler formula wins a tie, and the
search stops at the first formula that is exact to ``exact_r2`` (or that no richer candidate could
beat by ``simplicity_margin``). A formula that is not finite on every row, or scores below
``min_r2``, is never returned. A formula found through the logarithm has its constants rounded once more in
the target's own space, where ``exp`` merged them (``2 * 2.737 * exp(-1.7) Nn mu`` is ``Nn mu``). The formula
returned is in canonical form (`kandistill.distill.extract.canonical`:
ratios of exponentials as ``tanh``, the shortest simplification).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import sympy
import torch

from kandistill.distill.extract.canonical import canonical_on_data
from kandistill.distill.extract.edges import Extraction, extract_formula, snap_constants
from kandistill.distill.train.metrics import r2_score
from kandistill.distill.train.schedule import ScheduleConfig, sparse_fit
from kandistill.students import KAN

logger = logging.getLogger(__name__)


@dataclass
class DiscoverConfig:
    """Student shape, schedule, and which target transforms to try.

    ``hidden``: the hidden width of the second candidate (None: additive candidates only); ``additive``:
    whether to try the first (off when a caller has tried it already); ``deep``: a
    third with two hidden layers of that width, tried last (off by default: on the Feynman equations
    that the others miss it found none, and it costs the most time).
    ``simplicity_margin``: a richer candidate must beat a simpler one's held-out R^2 by more than
    this to be chosen (0: the best R^2 wins; audits use 0.01 to keep a readable additive formula
    when a deeper one is barely better). ``complexity_weight``: how much each unit of a library
    function's complexity must buy in fit (a decade of 1 - R^2 per ``1 / weight``), per edge.
    ``snap_growth``: how much a constant's rounding to a simple number may multiply 1 - R^2
    (5 suits exact laws in clean data; an audit of a noisy teacher wants about 1.2). ``target_error``: the
    RMSE that the targets' own error amounts to (a teacher's, when they are its outputs): a rounding that
    keeps the formula that close is always kept, since the targets cannot tell the two apart.
    ``min_r2``: a formula is returned only if it is finite on every fit and held-out row and reaches
    this held-out R^2 (none does: `FloatingPointError`). ``seconds``: no candidate starts after it is
    spent, nor, once one formula is kept, when less is left than the previous candidate took (a warning
    says so: the result then depends on the machine's speed).
    """

    hidden: int | None = 5
    additive: bool = True
    deep: bool = False
    grid: int = 5
    seed: int = 0
    log_target: bool = True
    validation_fraction: float = 0.2
    exact_r2: float = 1 - 1e-9
    seconds: float | None = None
    simplicity_margin: float = 0.0
    complexity_weight: float = 0.5
    snap_growth: float = 5.0
    target_error: float = 0.0
    min_r2: float = 0.0
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(sparse_steps=20, refit_steps=20, node_refit_steps=15)
    )


@dataclass
class Discovery:
    """The chosen formula, how it was found, and every candidate's held-out R^2."""

    extraction: Extraction
    transform: str
    r2_validation: float
    candidates: dict[str, float]

    @property
    def expression(self) -> sympy.Expr:
        return self.extraction.expressions[0]


def discover_formula(
    x: torch.Tensor, y: torch.Tensor, features: list[str], config: DiscoverConfig | None = None
) -> Discovery:
    """A formula for ``y`` (``(batch,)`` or ``(batch, 1)``) as a function of ``x`` (``(batch, n)``)."""
    config = config or DiscoverConfig()
    y = y.reshape(-1, 1)
    if x.shape[0] != y.shape[0] or x.shape[1] != len(features):
        raise ValueError(f"discover_formula: x {tuple(x.shape)}, y {tuple(y.shape)}, {len(features)} features")
    if not torch.isfinite(y).all():
        raise ValueError("discover_formula: the targets contain NaN or infinite values")
    n_val = max(1, int(config.validation_fraction * x.shape[0]))
    x_fit, x_val, y_fit, y_val = x[n_val:], x[:n_val], y[n_val:], y[:n_val]
    sign = _sign(y[:, 0], 3 * config.target_error)
    transforms = ["identity"] + (["log" if sign > 0 else "log(-y)"] if config.log_target and sign else [])
    n, h = x.shape[1], config.hidden
    widths = (
        ([[n, 1]] if config.additive else [])
        + ([[n, h, 1]] if h else [])
        + ([[n, h, h, 1]] if h and config.deep else [])
    )
    candidates = [(w, t) for w in widths for t in transforms]
    deadline = None if config.seconds is None else time.monotonic() + config.seconds

    best: Discovery | None = None
    scores: dict[str, float] = {}
    last_seconds = 0.0  # a candidate takes at least as long as the simpler one before it
    for width, transform in candidates:
        if best is not None and best.r2_validation >= min(config.exact_r2, 1 - config.simplicity_margin):
            break  # no richer candidate can beat it by the margin
        started = time.monotonic()
        if deadline and started + (last_seconds if best is not None else 0.0) > deadline:
            logger.warning(
                "discover_formula: the %s s budget ran out before the %s candidate; the result depends "
                "on this machine's speed (raise the budget)",
                config.seconds,
                f"{transform} {width}",
            )
            break
        forward = {"identity": lambda t: t, "log": torch.log, "log(-y)": lambda t: torch.log(-t)}[transform]
        model = KAN(width, grid=config.grid, seed=config.seed)
        fit, val = (y_fit[:, 0] * sign > 0, y_val[:, 0] * sign > 0) if sign else (slice(None), slice(None))
        scale = _decade(forward(y_fit[fit]))
        try:
            model = sparse_fit(model, x_fit[fit], scale * forward(y_fit[fit]), config.schedule, deadline)
            extraction = extract_formula(
                model,
                x_fit[fit],
                features,
                x_val[val],
                scale * forward(y_val[val]),
                fit_constants_to="teacher",
                refit_steps=10,
                complexity_weight=config.complexity_weight,
                snap_growth=config.snap_growth,
                snap_floor=_indistinguishable(
                    forward(y_val[val])[:, 0], config.target_error, y_val[val][:, 0], transform
                ),
                deadline=deadline,
            )
        except (FloatingPointError, ValueError) as err:
            logger.warning("%s target: no formula (%s)", transform, err)
            continue
        last_seconds = time.monotonic() - started
        extraction.expressions = [e / scale for e in extraction.expressions]
        if transform != "identity":
            extraction.expressions = [sign * sympy.exp(e) for e in extraction.expressions]
        with np.errstate(all="ignore"):
            pred = extraction.callable()(x_val.double().numpy())[:, 0]
            on_fit = extraction.callable()(x_fit.double().numpy())[:, 0]
        score = r2_score(pred, y_val.double().numpy()[:, 0])
        label = f"{transform} {width}"
        scores[label] = score
        if not (np.isfinite(on_fit).all() and score >= config.min_r2):
            logger.info("%s: %s is not finite on every row or scores R^2 %.3g < %s; not kept", label,
                        extraction.expressions[0], score, config.min_r2)  # fmt: skip
            continue
        candidate = Discovery(extraction, label, score, scores)
        if best is None or _better(candidate, best, config.simplicity_margin):
            best = candidate
    if best is None:
        raise FloatingPointError(f"discover_formula: no candidate is finite on every row with held-out R^2 >= "
                                 f"{config.min_r2} ({scores})")  # fmt: skip
    expression = best.expression
    if not best.transform.startswith("identity"):  # exp(...) merged constants that were rounded apart
        expression = expression.xreplace({e: e.evalf() for e in expression.atoms(sympy.exp) if e.is_number})
        floor = _indistinguishable(y_fit[:, 0], config.target_error, y_fit[:, 0], "identity")
        expression = snap_constants(expression, features, x_fit.double().numpy(), y_fit.double().numpy()[:, 0],
                                    growth=config.snap_growth, floor=floor, deadline=deadline)  # fmt: skip
    best.extraction.expressions[0] = canonical_on_data(expression, features, x_val.double().numpy())
    return best


def _decade(target: torch.Tensor) -> int:
    """The power of ten (at least 1) that brings the spread of ``target`` to at least 1: the sparsity penalty
    and the pruning thresholds are absolute, so the small parts of a small target (``1 / f^2`` of
    ``v / sqrt(1 - v^2 / c^2)``, about ``0.1 / v^2 - 0.1 / c^2``) would be pruned as noise."""
    spread = float(target.double().std())
    return 10 ** max(0, math.ceil(-math.log10(spread))) if 0 < spread < 1 else 1


def _sign(y: torch.Tensor, margin: float, share: float = 0.9) -> int:
    """1 (or -1) when ``y`` ``(batch,)`` is positive (negative) to within ``margin`` (the targets' own error)
    everywhere, and beyond it on at least ``share`` of the rows, so that the logarithm of its size is worth
    fitting on those rows; else 0. A teacher's outputs can cross zero by its error where the truth is small."""
    for sign in (1, -1):
        if bool((sign * y > -margin).all()) and float((sign * y > margin).double().mean()) >= share:
            return sign
    return 0


def _indistinguishable(target: torch.Tensor, error: float, y: torch.Tensor, transform: str, cap: float = 1e-3) -> float:
    """The ``1 - R^2`` on ``target`` ``(batch,)`` (``y`` after ``transform``) that an error of RMSE ``error``
    in ``y`` amounts to, at most ``cap``; on ``log y`` the error is relative to ``y`` (its median over rows:
    rows near zero, where the relative error is large, would allow any rounding)."""
    if error <= 0:
        return 1e-8
    rms = error if transform == "identity" else float((error / y.double().abs()).median())
    return min((rms / max(float(target.double().std()), 1e-300)) ** 2, cap)


def _better(a: Discovery, b: Discovery, margin: float = 0.0, tie: float = 1e-9) -> bool:
    """Is the later (richer) candidate ``a`` better than ``b``: higher R^2 by more than ``margin``, or fewer ops."""
    if abs(a.r2_validation - b.r2_validation) > max(tie, margin):
        return a.r2_validation > b.r2_validation
    return margin == 0 and sympy.count_ops(a.expression) < sympy.count_ops(b.expression)
