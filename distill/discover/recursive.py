"""Solve for a formula by splitting the problem where a teacher says it splits (AI Feynman's recursion).

:func:`solve` asks a :class:`~kandistill.distill.discover.separability.BoxTeacher`, in this order, whether its function
ignores an input (then drops it), depends on two inputs only through ``x_i - x_j``, ``x_i + x_j``,
``x_i / x_j`` or ``x_i x_j`` (then replaces them by one new input), or splits as ``g(x_A) h(x_B)`` or
as ``g(x_A) + h(x_B)``, also after a simple outer function (``f^2``, ``1 / f``) or as ``c + g(x_A) h(x_B)``,
then solves ``g`` and ``h`` as sub-problems: the teacher with the other inputs held at the box's centre
(for a product, a point where ``f`` is not near 0). Each sub-problem is solved the same way, down to a
leaf that a small KAN student solves
(`kandistill.distill.discover.search.discover_formula`). The parts are composed, the whole formula's constants are
refitted and snapped against the teacher (`kandistill.distill.extract.edges.snap_constants`), and it is kept only if
it matches the teacher on fresh points to within the teacher's own error; otherwise the next option
is tried, the leaf last.

Where the problem comes with data rows (``rows``: inputs and outputs), a sub-problem reached by
dropping inputs or merging a pair keeps them, transformed (AI Feynman does the same): its leaf is fitted
to, and its formulas are checked against, those rows rather than the teacher, whose error grows
along the curves a merged pair is sampled on. A split's parts have no rows: they are the teacher's
function with the other inputs held fixed.

:func:`discover_with_teacher` is the entry point for data: the plain search first, and when that is
not exact, the recursion through an MLP teacher fitted to the data (or the one given).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations_with_replacement

import numpy as np
import sympy
import torch

from kandistill.distill.discover.search import DiscoverConfig, Discovery, discover_formula
from kandistill.distill.discover.separability import (
    SYMMETRIES,
    BoxTeacher,
    additive_split,
    irrelevant,
    keeps_sign,
    multiplicative_split,
    product_offset,
    splits,
    symmetry,
    symmetry_gradient_residual,
)
from kandistill.distill.extract.canonical import canonical_on_data
from kandistill.distill.extract.edges import Extraction, snap_constants
from kandistill.distill.extract.formula import FormulaError, evaluate
from kandistill.distill.train.metrics import r2_score
from kandistill.teachers.mlp import train_mlp
from kandistill.teachers.schema import FeatureSchema, NumericFeature

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rows:
    """Data a (sub-)problem comes with: inputs ``x`` ``(batch, n)``, outputs ``y`` ``(batch,)``, and ``error``,
    the RMSE a right formula has against ``y`` (0 for exact data; a teacher's error for its outputs)."""

    x: torch.Tensor
    y: torch.Tensor
    error: float = 0.0


@dataclass
class SolveConfig:
    """How hard to look. ``points``: samples per (sub-)problem for its student; ``test_points``: per
    teacher test; ``factor``: a test passes at an RMS z-score up to this; a formula is accepted when its
    RMSE against the teacher is at most ``factor * error`` (floored at ``floor`` times the teacher's
    spread, for exact teachers); ``max_tries``: how many symmetries, and splits of each kind, that hold
    are followed per (sub-)problem before its leaf; ``growth``: with rows, a leaf's simplest formula wins
    only within this factor of the closest one's RMSE; ``min_leaf_seconds``: a leaf's student search
    starts only with this many seconds per input left before the deadline; ``gradient_cut``: symmetry
    pairs whose gradient residual is above it are not tested; ``leaf``: the student search for leaves
    (its ``seconds`` is set from the deadline)."""

    points: int = 600
    test_points: int = 256
    factor: float = 3.0
    floor: float = 1e-5
    max_depth: int = 12
    max_tries: int = 2
    growth: float = 5.0
    min_leaf_seconds: float = 2.0
    gradient_cut: float = 0.3
    seed: int = 0
    leaf: DiscoverConfig = field(default_factory=DiscoverConfig)


@dataclass
class Solution:
    """The formula, its R^2 against the teacher on fresh points, and the splits that led to it."""

    expression: sympy.Expr
    r2: float
    steps: list[str]


def _symbols(names: list[str]) -> list[sympy.Symbol]:
    return [sympy.Symbol(n, real=True) for n in names]


def restrict(teacher: BoxTeacher, keep: list[int], base: torch.Tensor) -> BoxTeacher:
    """The teacher as a function of the inputs ``keep`` only, the others held at ``base`` ``(n,)``."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        x = base.expand(z.shape[0], -1).clone()
        x[:, keep] = z
        return teacher.fn(x).reshape(-1)

    return BoxTeacher(fn, teacher.low[keep], teacher.high[keep], teacher.error)


def merge_pair(teacher: BoxTeacher, i: int, j: int, kind: str) -> tuple[BoxTeacher, list[int]]:
    """The teacher as a function of ``u`` (``x_i - x_j``, ``x_i + x_j``, ``x_i / x_j`` or ``x_i x_j``)
    and the other inputs (returned, in order): ``x_j`` is put mid-way in the range that keeps both
    ``x_i`` and ``x_j`` in the box (any point on the curve gives the same value when the symmetry holds)."""
    lo, hi = teacher.low, teacher.high
    others = [k for k in range(teacher.n) if k not in (i, j)]
    u_range = {
        "minus": (lo[i] - hi[j], hi[i] - lo[j]),
        "plus": (lo[i] + lo[j], hi[i] + hi[j]),
        "divide": (lo[i] / hi[j], hi[i] / lo[j]),
        "times": (lo[i] * lo[j], hi[i] * hi[j]),
    }[kind]

    def fn(z: torch.Tensor) -> torch.Tensor:
        u = z[:, 0]
        a, b = {
            "minus": (lo[i] - u, hi[i] - u),
            "plus": (u - hi[i], u - lo[i]),
            "divide": (lo[i] / u, hi[i] / u),
            "times": (u / hi[i], u / lo[i]),
        }[kind]
        xj = (torch.maximum(a, lo[j]) + torch.minimum(b, hi[j])) / 2
        xi = {"minus": u + xj, "plus": u - xj, "divide": u * xj, "times": u / xj}[kind]
        x = torch.empty(z.shape[0], teacher.n)
        x[:, i], x[:, j] = xi.clamp(lo[i], hi[i]), xj
        x[:, others] = z[:, 1:]
        return teacher.fn(x).reshape(-1)

    low = torch.cat([u_range[0].reshape(1), lo[others]])
    high = torch.cat([u_range[1].reshape(1), hi[others]])
    return BoxTeacher(fn, low, high, teacher.error), others


def _combination(kind: str, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    return {"minus": a - b, "plus": a + b, "divide": a / b, "times": a * b}[kind]


_LEAF_OUTERS = (  # a target transform for a leaf's student, and how to undo it on the formula
    ("f", lambda y: y, lambda e: e),
    ("1/f", lambda y: 1 / y, lambda e: 1 / e),
    ("f^2", lambda y: y.square(), sympy.sqrt),
    ("1/f^2", lambda y: y.square().reciprocal(), lambda e: 1 / sympy.sqrt(e)),
)


def polynomial(x: torch.Tensor, y: torch.Tensor, names: list[str], degree: int = 2, max_terms: int = 15,
               deadline: float | None = None) -> sympy.Expr | None:  # fmt: skip
    """The least-squares polynomial of ``degree`` (1 where that would take more than ``max_terms``
    terms) in ``names`` for ``y (batch,)`` at ``x (batch, n)``, float64, its coefficients snapped to
    simple values (`extract.edges.snap_constants`: small ones to 0) unless ``deadline`` (a `time.monotonic`
    value) has passed. None when ``y`` is not finite."""
    xs, ys = x.double().numpy(), y.double().numpy()
    if not np.all(np.isfinite(ys)):
        return None
    snap = True
    n = xs.shape[1]
    if len(list(combinations_with_replacement(range(n + 1), degree))) > max_terms:
        degree = 1
    powers = [c for c in combinations_with_replacement(range(n + 1), degree)]  # index n: the constant 1
    columns = np.column_stack([np.prod([xs[:, k] for k in c if k < n], axis=0) if any(k < n for k in c)
                               else np.ones(len(ys)) for c in powers])  # fmt: skip
    coefficients, *_ = np.linalg.lstsq(columns, ys, rcond=None)
    if deadline is not None and time.monotonic() > deadline:
        snap = False
    symbols = _symbols(names)
    expr = sum(
        (sympy.Float(float(a)) * sympy.Mul(*[symbols[k] for k in c if k < n]) for a, c in zip(coefficients, powers,
                                                                                              strict=True)),
        sympy.Integer(0),
    )  # fmt: skip
    return snap_constants(expr, names, xs, ys, deadline=deadline) if snap else expr


def _simplest_within(found: list[tuple[sympy.Expr, float]], band: float) -> sympy.Expr | None:
    """Of ``(formula, RMSE)`` pairs, the simplest (`_complexity`) with RMSE at most ``band``; else the closest."""
    finite = [(e, r) for e, r in found if np.isfinite(r)]
    within = [e for e, r in finite if r <= band]
    if within:
        return min(within, key=_complexity)
    return min(finite, key=lambda pair: pair[1])[0] if finite else None


def _complexity(expr: sympy.Expr) -> tuple[int, int]:
    """Free constants, then operations. A free constant is a float, or a rational whose numerator or
    denominator exceeds 12: snapping a noisy quadratic's coefficients can give ``sqrt(1518*chi**2 + 3024*chi
    + 1530)``, no simpler than ``4.21*(chi + 1)``."""
    numbers = expr.atoms(sympy.Float, sympy.Rational)
    free = [a for a in numbers if isinstance(a, sympy.Float) or max(abs(a.p), abs(a.q)) > 12]
    return len(free), int(sympy.count_ops(expr))


class _Solver:
    def __init__(self, config: SolveConfig, deadline: float | None, reserved: set[str]):
        self.config, self.deadline, self.reserved, self.steps = config, deadline, set(reserved), []
        self.closest: dict[int, tuple[sympy.Expr, float]] = {}  # per teacher: the rejected formula nearest to it

    def note(self, depth: int, step: str) -> None:
        self.steps.append(f"{'  ' * depth}{step}")
        logger.info("%s%s", "  " * depth, step)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def fresh_name(self) -> str:
        k = len(self.reserved)
        while f"u{k}" in self.reserved:
            k += 1
        self.reserved.add(f"u{k}")
        return f"u{k}"

    def data(self, teacher: BoxTeacher, seed: int, rows: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The problem's rows if it has them, else ``points`` fresh samples of the teacher."""
        if rows is not None:
            return rows.x, rows.y
        x = teacher.sample(self.config.points, self.config.seed + seed)
        return x, teacher(x)

    def accepts(self, expr: sympy.Expr | None, teacher: BoxTeacher, names: list[str], rows: Rows | None = None) -> bool:
        """Does ``expr`` match the teacher (or the rows) on fresh points to within the teacher's error?"""
        if expr is None:
            return False
        rmse, tolerance = self.rmse(expr, teacher, names, rows)[0], self.tolerance(teacher)
        logger.info("%s: RMSE %.3g against the teacher or its rows, tolerance %.3g", expr, rmse, tolerance)
        closest = self.closest.get(id(teacher))
        if np.isfinite(rmse) and (closest is None or rmse < closest[1]):
            self.closest[id(teacher)] = (expr, rmse)
        return rmse <= tolerance

    def tolerance(self, teacher: BoxTeacher) -> float:
        _, y = self.data(teacher, 991)
        return max(self.config.factor * teacher.error, self.config.floor * float(y.std()), 1e-12)

    def rmse(self, expr: sympy.Expr, teacher: BoxTeacher, names: list[str],
             rows: Rows | None = None) -> tuple[float, float]:  # fmt: skip
        """RMSE and R^2 of ``expr`` against the rows, or the teacher on fresh points."""
        x, y = self.data(teacher, 991, rows)
        try:
            pred = evaluate(expr, names, x.double().numpy())
        except FormulaError:  # a function the evaluator does not compute (sympy's simplify can write one)
            return float("inf"), -float("inf")
        ref = y.double().numpy()
        if not np.all(np.isfinite(pred)):
            return float("inf"), -float("inf")
        sse = float(np.sum((pred - ref) ** 2))
        return (sse / len(ref)) ** 0.5, 1 - sse / max(float(np.sum((ref - ref.mean()) ** 2)), 1e-300)

    def refit(self, expr: sympy.Expr, teacher: BoxTeacher, names: list[str], rows: Rows | None = None) -> sympy.Expr:
        """Refit the composed formula's constants against the rows or the teacher, and snap each one that their
        own error cannot tell from a simple value (`snap_floor` of that error)."""
        x, y = self.data(teacher, 17, rows)
        own = self.tolerance(teacher) / self.config.factor if rows is None else rows.error
        floor = snap_floor(max(own, self.config.floor * float(y.std())), y)
        return snap_constants(expr, names, x.double().numpy(), y.double().numpy(), floor=floor, deadline=self.deadline)

    def leaf(self, teacher: BoxTeacher, names: list[str], rows: Rows | None = None) -> sympy.Expr | None:
        """A formula for the teacher (or the rows) on ``f``, ``1 / f``, ``f^2`` and ``1 / f^2`` (the last
        three where ``f > 0``): a polynomial of degree 2 (AI Feynman's first try; cheap; also of ``sin f`` where
        ``|f| <= pi / 2``, for ``arcsin(lambda / (n d))``), or failing that a
        KAN student's (`discover_formula`, which also tries ``log``) while time is left: additive students
        on every transform first (cheap, and exact for sums such as ``1 / f^2 = 1 / v^2 - 1 / c^2``), then
        ones with a hidden layer. Of the formulas
        within the teacher's tolerance, and with rows within ``growth`` times the closest one's RMSE, the
        shortest wins, else the closest. The search stops early at a formula as close as the target's own
        error (the teacher's, or the rows'): the student search counts it as exact, and a richer candidate
        must win by more than the ``1 - R^2`` it accounts for."""
        x, y = self.data(teacher, 0, rows)
        if float(y.std()) <= self.config.floor * max(float(y.abs().max()), 1e-30):
            return sympy.Float(float(y.mean()))
        tolerance, factor = self.tolerance(teacher), self.config.factor
        close = tolerance / factor if rows is None else max(rows.error, self.config.floor * float(y.std()))
        noise = min((factor * close / float(y.std())) ** 2, 1e-2)
        span = 100 if rows is None or rows.error > 0 else 1e4  # 1 / f amplifies an error where f is small
        outers = [o for o in _LEAF_OUTERS if o[0] == "f" or (bool((y > 0).all()) and float(y.max() / y.min()) < span)]
        found: list[tuple[sympy.Expr, float]] = []
        polynomials = [(name, forward, inverse, False) for name, forward, inverse in outers]
        if bool((y.abs() <= math.pi / 2).all()):  # arcsin(u): its sine is a polynomial, in u or (one input) in 1 / u
            flips = [False, True] if x.shape[1] == 1 and bool((x > 0).all()) else [False]
            polynomials += [("sin f", torch.sin, sympy.asin, flip) for flip in flips]
        if self.out_of_time():
            polynomials = polynomials[:1]  # the plain polynomial only: the caller falls back on its closest formula
        for name, forward, inverse, flip in polynomials:
            poly = polynomial(1 / x if flip else x, forward(y), names, deadline=self.deadline)
            if poly is None:
                continue
            expr = inverse(poly.xreplace({s: 1 / s for s in _symbols(names)}) if flip else poly)
            found.append((expr, self.rmse(expr, teacher, names, rows)[0]))
            logger.info("leaf %s, polynomial in %s: %s (RMSE %.3g)", names, name, expr, found[-1][1])
        leaf = self.config.leaf
        additive = [(o, {"hidden": None, "deep": False}, False) for o in outers]
        if x.shape[1] == 1 and bool((x > 0).all()):  # 1 / (exp(1 / u) - 1): additive in 1 / u, not in u
            additive += [(o, {"hidden": None, "deep": False}, True) for o in outers[:2]]
        hidden = [(o, {"additive": False}, False) for o in outers] if leaf.hidden else []
        for (name, forward, inverse), shape, flip in additive + hidden:
            if min((r for _, r in found), default=np.inf) <= close:
                break  # as close as the target's own error: no other transform can do better
            seconds = None if self.deadline is None else self.deadline - time.monotonic()
            if seconds is not None and seconds < self.config.min_leaf_seconds * len(names):
                break  # a student's first candidate runs to its end: not started without time for it
            config = DiscoverConfig(**{**leaf.__dict__, **shape, "seconds": seconds,
                                       "exact_r2": min(leaf.exact_r2, 1 - noise),
                                       "simplicity_margin": max(leaf.simplicity_margin, noise),
                                       "target_error": close})  # fmt: skip
            try:
                discovery = discover_formula(1 / x if flip else x, forward(y), names, config)
            except FloatingPointError as err:
                logger.info("leaf %s on %s: no formula (%s)", names, name, err)
                continue
            expr = discovery.expression.xreplace({s: 1 / s for s in _symbols(names)}) if flip else discovery.expression
            expr = inverse(expr)
            found.append((expr, self.rmse(expr, teacher, names, rows)[0]))
            logger.info("leaf %s on %s: %s (RMSE %.3g)", names, name, expr, found[-1][1])
        closest = min((r for _, r in found), default=np.inf)
        band = tolerance if rows is None else min(tolerance, max(self.config.growth * closest, factor * close))
        return _simplest_within(found, band)

    def solve(self, teacher: BoxTeacher, names: list[str], depth: int, rows: Rows | None = None) -> sympy.Expr | None:
        """A formula for ``teacher`` in ``names``: a split's if one is accepted, else the leaf's if it
        is, else the closest one tried (None if none)."""
        cfg = self.config
        test = {"points": cfg.test_points, "seed": cfg.seed, "factor": cfg.factor}
        if depth < cfg.max_depth and not self.out_of_time():
            for attempt in (self.drop_inputs, self.merge_pairs, self.split):
                expr = attempt(teacher, names, depth, test, rows)
                if expr is not None:
                    return expr
        expr = self.leaf(teacher, names, rows)
        if self.accepts(expr, teacher, names, rows):
            return expr
        closest = self.closest.get(id(teacher))
        return expr if closest is None else closest[0]

    def drop_inputs(self, teacher: BoxTeacher, names: list[str], depth: int, test: dict,
                    rows: Rows | None = None) -> sympy.Expr | None:  # fmt: skip
        keep = [i for i in range(teacher.n) if not irrelevant(teacher, i, **test).holds]
        if len(keep) == teacher.n:
            return None
        centre = (teacher.low + teacher.high) / 2
        if not keep:
            return sympy.Float(float(teacher(centre[None])[0]))
        self.note(depth, f"irrelevant: {[n for k, n in enumerate(names) if k not in keep]}")
        sub = [names[k] for k in keep]
        sub_rows = None if rows is None else Rows(rows.x[:, keep], rows.y, rows.error)
        expr = self.solve(restrict(teacher, keep, centre), sub, depth + 1, sub_rows)
        return expr if self.accepts(expr, teacher, names, rows) else None

    def merge_pairs(self, teacher: BoxTeacher, names: list[str], depth: int, test: dict,
                    rows: Rows | None = None) -> sympy.Expr | None:  # fmt: skip
        if teacher.n < 2:
            return None
        pairs = []
        for i in range(teacher.n):
            for j in range(i + 1, teacher.n):
                for kind in SYMMETRIES:
                    if kind in ("divide", "times") and not bool((teacher.low[[i, j]] > 0).all()):
                        continue
                    score = symmetry_gradient_residual(teacher, i, j, kind, test["points"], test["seed"])
                    if score <= self.config.gradient_cut:
                        pairs.append((score, i, j, kind))
        tries = 0
        for _, i, j, kind in sorted(pairs):
            if self.out_of_time() or tries >= self.config.max_tries:
                break
            if not symmetry(teacher, i, j, kind, **test).holds:
                continue
            tries += 1
            sub_teacher, others = merge_pair(teacher, i, j, kind)
            u = self.fresh_name()
            self.note(depth, f"symmetry: {u} = {_combination(kind, *_symbols([names[i], names[j]]))}")
            sub_rows = None
            if rows is not None:
                x = rows.x.double()
                u_rows = _combination(kind, x[:, i], x[:, j])[:, None]
                sub_rows = Rows(torch.cat([u_rows, x[:, others]], 1).float(), rows.y, rows.error)
            expr = self.solve(sub_teacher, [u] + [names[k] for k in others], depth + 1, sub_rows)
            if expr is None:
                continue
            a, b = _symbols([names[i], names[j]])
            expr = expr.xreplace({sympy.Symbol(u, real=True): _combination(kind, a, b)})
            if self.accepts(expr, teacher, names, rows):
                return expr
        return None

    def split(self, teacher: BoxTeacher, names: list[str], depth: int, test: dict,
              rows: Rows | None = None) -> sympy.Expr | None:  # fmt: skip
        """``g(x_A) h(x_B)``, or ``g(x_A) + h(x_B)`` of ``f``, of ``f^2`` or of ``1 / f`` (a simple outer
        function), or ``c + g(x_A) h(x_B)`` (`views`). ``g``, the smaller part, is solved on the teacher; with
        rows, ``h`` is then solved on what the rows leave once ``g`` is divided out or subtracted (exact when
        ``g`` is), and ``g`` once more on what they leave once ``h`` is (a slice of the teacher holds the other
        inputs at one point, where its error can be larger than on the rows)."""
        if teacher.n < 2:
            return None
        centre = (teacher.low + teacher.high) / 2
        for kind, view, check, combine, outer_kind in self.views(teacher, test):
            tries = 0
            for part in splits(teacher.n):
                if self.out_of_time() or tries >= self.config.max_tries:
                    break
                if not check(view, part, **test).holds:
                    continue
                tries += 1
                rest = [k for k in range(teacher.n) if k not in part]
                part_names, rest_names = [names[k] for k in part], [names[k] for k in rest]
                self.note(depth, f"{kind}: {part_names} | {rest_names}")
                product = kind.startswith("multiplicative")
                base = _product_base(view, test["points"], test["seed"]) if product else centre
                f0 = sympy.Float(float(view(base[None])[0]))
                g = self.solve(restrict(view, list(part), base), part_names, depth + 1)
                if g is None:
                    continue
                view_rows = None if rows is None else rows if outer_kind == "f" else outer_rows(rows, *outer_kind)
                split_kind = "multiplicative" if product else "additive"
                rest_rows = (
                    None if rows is None else remainder_rows(view_rows, g, part_names, list(part), rest, split_kind, f0)
                )
                h = self.solve(restrict(view, rest, base), rest_names, depth + 1, rest_rows)
                if h is None:
                    continue
                parts = [g]
                if rest_rows is not None:  # g again, on what the rows leave once h is taken out: no slice's error
                    g_rows = remainder_rows(view_rows, h, rest_names, rest, list(part), split_kind, f0)
                    again = self.solve(restrict(view, list(part), base), part_names, depth + 1, g_rows)
                    parts = [again, g] if again is not None and again != g else parts
                for g_part in parts:
                    expr = self.refit(combine(g_part, h, f0), teacher, names, rows)
                    if self.accepts(expr, teacher, names, rows):
                        return expr
        return None

    def views(self, teacher: BoxTeacher, test: dict) -> Iterator[tuple]:
        """The views `split` tries, lazily, each as ``(kind, view, check, combine, outer_kind)``: ``f`` as a product,
        as a sum; where ``f`` keeps its sign, ``f^2`` (for a positive ``f``) and ``1 / f`` as sums; last
        ``f - c`` as a product, for the first split part whose `product_offset` ``c`` makes one."""
        yield "multiplicative", teacher, multiplicative_split, lambda g, h, f0: g * h / f0, "f"
        yield "additive", teacher, additive_split, lambda g, h, f0: g + h - f0, "f"
        if keeps_sign(teacher, test["points"], test["seed"]):
            if bool((teacher((teacher.low + teacher.high)[None] / 2) > 0).all()):
                yield ("additive in f^2", outer(teacher, "square"), additive_split,
                       lambda g, h, f0: sympy.sqrt(g + h - f0), ("square",))  # fmt: skip
            yield ("additive in 1/f", outer(teacher, "reciprocal"), additive_split,
                   lambda g, h, f0: 1 / (g + h - f0), ("reciprocal",))  # fmt: skip
        size = float(teacher(teacher.sample(test["points"], test["seed"])).abs().median())
        for part in splits(teacher.n):
            if self.out_of_time():
                return
            c = product_offset(teacher, part, test["points"], test["seed"])
            if not np.isfinite(c) or abs(c) <= max(test["factor"] * teacher.error, 1e-3 * size):
                continue
            shifted = outer(teacher, "shift", offset=c)
            if multiplicative_split(shifted, part, **test).holds:
                c = _simple_number(c, test["factor"] * teacher.error)
                yield ("multiplicative in f - c", outer(teacher, "shift", offset=float(c)), multiplicative_split,
                       lambda g, h, f0, c=c: c + g * h / f0, ("shift", float(c)))  # fmt: skip
                return


def _simple_number(value: float, tolerance: float) -> sympy.Expr:
    """The integer nearest ``value`` if within ``tolerance`` (at least float32 resolution), else ``value``."""
    nearest = round(value)
    close = abs(value - nearest) <= max(tolerance, 1e-6 * max(abs(value), 1.0))
    return sympy.Integer(nearest) if close else sympy.Float(value)


def _product_base(teacher: BoxTeacher, points: int, seed: int) -> torch.Tensor:
    """The point ``(n,)`` where a product split ``f = g h / f0`` holds the other inputs: the box's centre, unless
    ``f`` is near 0 there (below a fifth of its median size; ``1 / r2 - 1 / r1`` at ``r1 = r2``), where the
    slices would be too; then the sampled point nearest the centre among those where ``|f|`` is above its median."""
    centre = (teacher.low + teacher.high) / 2
    x = teacher.sample(points, seed)
    size = teacher(x).abs()
    if float(teacher(centre[None]).abs()[0]) >= 0.2 * float(size.median()):
        return centre
    distance = ((x - centre) / (teacher.high - teacher.low).clamp_min(1e-30)).square().sum(1)
    distance[size < size.median()] = float("inf")
    return x[int(distance.argmin())]


def outer_rows(rows: Rows, kind: str, offset: float = 0.0) -> Rows:
    """The rows of ``f^2`` (``kind="square"``), ``1 / f`` (``"reciprocal"``) or ``f - offset`` (``"shift"``), their
    error scaled as `outer` does."""
    y = rows.y.double()
    if kind == "shift":
        return Rows(rows.x, (y - offset).float(), rows.error)
    if kind == "square":
        return Rows(rows.x, y.square().float(), rows.error * 2 * float(y.abs().median()))
    if kind == "reciprocal":
        return Rows(rows.x, y.reciprocal().float(), rows.error / float(y.abs().median()) ** 2)
    raise ValueError(f"outer_rows: kind must be 'square', 'reciprocal' or 'shift', got {kind!r}")


def remainder_rows(rows: Rows, g: sympy.Expr, g_names: list[str], part: list[int], rest: list[int], kind: str,
                   f0: sympy.Float) -> Rows | None:  # fmt: skip
    """Rows for ``h`` of the split ``f = g h / f0`` (``kind`` "multiplicative") or ``f = g + h - f0``, given the
    formula ``g`` of the inputs ``part``: ``f0 f / g`` or ``f - g + f0`` on the inputs ``rest``. A product keeps
    the rows where ``|g|`` is above a tenth of its median. None where ``g`` is not finite, or (for a product)
    near zero on half the rows."""
    try:
        gx = torch.from_numpy(evaluate(g, g_names, rows.x[:, part].double().numpy()))
    except FormulaError:
        return None
    if not bool(torch.isfinite(gx).all()):
        return None
    y, f0 = rows.y.double(), float(f0)
    if kind == "multiplicative":
        keep = gx.abs() > 0.1 * gx.abs().median()  # dividing by g near 0 would blow up the rows' error there
        if float(keep.double().mean()) < 0.5:
            return None
        gx, y = gx[keep], y[keep]
        h = Rows(rows.x[keep][:, rest], (f0 * y / gx).float(), rows.error * float((f0 / gx).abs().median()))
    else:
        h = Rows(rows.x[:, rest], (y - gx + f0).float(), rows.error)
    return h if bool(torch.isfinite(h.y).all()) and np.isfinite(h.error) else None


def snap_floor(tolerance: float, y: torch.Tensor, cap: float = 1e-3) -> float:
    """The ``1 - R^2`` that an RMSE of ``tolerance`` against ``y`` ``(batch,)`` amounts to (at most ``cap``):
    a snapped constant that keeps the formula this close to the teacher is as right as the teacher can say."""
    return min((tolerance / max(float(y.std()), 1e-300)) ** 2, cap)


def outer(teacher: BoxTeacher, kind: str, points: int = 256, seed: int = 0, offset: float = 0.0) -> BoxTeacher:
    """``f^2`` (``kind="square"``), ``1 / f`` (``"reciprocal"``) or ``f - offset`` (``"shift"``) as a teacher; its
    error is the teacher's times the outer function's median slope over sampled values (its largest would make
    every test pass where ``f`` is small; a wrong split is caught when the composed formula is checked)."""
    if kind == "shift":
        return BoxTeacher(lambda x: teacher.fn(x).reshape(-1) - offset, teacher.low, teacher.high, teacher.error)
    f = teacher(teacher.sample(points, seed)).abs()
    if kind == "square":
        return BoxTeacher(lambda x: teacher.fn(x).reshape(-1).square(), teacher.low, teacher.high,
                          teacher.error * 2 * float(f.median()))  # fmt: skip
    if kind == "reciprocal":
        return BoxTeacher(lambda x: teacher.fn(x).reshape(-1).reciprocal(), teacher.low, teacher.high,
                          teacher.error / float(f.median()) ** 2)  # fmt: skip
    raise ValueError(f"outer: kind must be 'square', 'reciprocal' or 'shift', got {kind!r}")


def solve(teacher: BoxTeacher, features: list[str], config: SolveConfig | None = None,
          deadline: float | None = None, rows: Rows | None = None) -> Solution:  # fmt: skip
    """A formula for the teacher's function of ``features``, found by recursive splitting (module docstring).

    ``deadline``: a `time.monotonic` value after which no split is tried and leaves get no new candidate.
    ``rows``: data inside the teacher's box that the teacher stands for (`Rows`); sub-problems that keep
    them are solved on them. Raises `FloatingPointError` when no formula is found at all.
    """
    config = config or SolveConfig()
    if len(features) != teacher.n:
        raise ValueError(f"solve: {len(features)} features for a teacher of {teacher.n} inputs")
    if rows is not None:
        rows = Rows(rows.x.float(), rows.y.reshape(-1).float(), rows.error)
        if rows.x.shape != (rows.y.shape[0], teacher.n):
            raise ValueError(f"solve: rows of x {tuple(rows.x.shape)} and y {tuple(rows.y.shape)} for "
                             f"{teacher.n} inputs")  # fmt: skip
    solver = _Solver(config, deadline, set(features))
    expr = solver.solve(teacher, list(features), 0, rows)
    if expr is None:
        raise FloatingPointError(f"solve: no formula for {features}")
    if not solver.accepts(expr, teacher, features, rows):  # a leaf's best effort: refit on the whole once more
        expr = solver.refit(expr, teacher, features, rows)
    expr = canonical_on_data(expr, features, teacher.sample(config.test_points, config.seed).double().numpy())
    return Solution(expr, solver.rmse(expr, teacher, features)[1], solver.steps)


def fit_teacher(x: torch.Tensor, y: torch.Tensor, features: list[str], steps: int = 1500, polish_steps: int = 30,
                validation_fraction: float = 0.2, seed: int = 0) -> BoxTeacher:  # fmt: skip
    """An MLP teacher (`kandistill.teachers.mlp.train_mlp`, 64 x 64, SiLU) fitted to ``x (batch, n) -> y (batch,)``;
    its ``error`` is its RMSE on the held-out first ``validation_fraction`` of the rows."""
    n_val = max(1, int(validation_fraction * x.shape[0]))
    low, high = x.min(0).values, x.max(0).values
    ranges = zip(features, low.tolist(), high.tolist(), strict=True)
    schema = FeatureSchema(tuple(NumericFeature(f, lo, hi) for f, lo, hi in ranges))
    y = y.reshape(-1, 1).float()
    mlp = train_mlp(x[n_val:].float(), y[n_val:], schema, steps=steps, seed=seed, polish_steps=polish_steps)
    mlp.eval()
    with torch.no_grad():
        error = float((mlp(x[:n_val].float()) - y[:n_val]).square().mean().sqrt())
    return BoxTeacher(lambda z: mlp(z)[:, 0], low, high, error)


@dataclass
class TeacherDiscoverConfig:
    """The recursion (``solve``) through a teacher, then the plain search (``plain``) unless the recursion's
    formula is exact on the data. ``seconds`` for both: the teacher's fit and the recursion stop after
    ``1 - plain_share`` of it; the snapping of the recursion's formula, then the plain search, get what is left.
    The chosen formula, when it is near exact (held-out R^2 at least ``1 - 1e-4``) with free constants, is
    snapped once more within ``snap_share`` of ``seconds`` beyond them: a search's snapping stops at its deadline."""

    plain: DiscoverConfig = field(default_factory=DiscoverConfig)
    solve: SolveConfig = field(default_factory=SolveConfig)
    seconds: float | None = None
    plain_share: float = 0.4
    snap_share: float = 0.1
    teacher_steps: int = 1500


def discover_with_teacher(x: torch.Tensor, y: torch.Tensor, features: list[str], teacher: BoxTeacher | None = None,
                          config: TeacherDiscoverConfig | None = None) -> Discovery:  # fmt: skip
    """A formula for ``y`` ``(batch,)`` of ``x`` ``(batch, n)``: :func:`solve` on ``teacher`` (default: an
    MLP fitted to the data, :func:`fit_teacher`), its constants refitted to the data; unless that is exact
    (``plain.exact_r2``; for a given teacher, whose outputs ``y`` are, as close as its error allows) with at
    most one unsnapped constant, also `discover_formula`. The better on the
    held-out rows (the plain search's validation rows, the first ``plain.validation_fraction``) wins:
    higher R^2, or on a tie (1e-9, or both exact) fewer free constants and operations; a near-exact winner is
    snapped once more (``snap_share``). As with `discover_formula`, a formula that is not finite on every row
    or scores below ``plain.min_r2`` is never returned (none is: `FloatingPointError`)."""
    config = config or TeacherDiscoverConfig()
    plain_config = DiscoverConfig(**{**config.plain.__dict__})
    start = time.monotonic()
    deadline = None if config.seconds is None else start + config.seconds
    solve_deadline = None if config.seconds is None else start + (1 - config.plain_share) * config.seconds
    n_val = max(1, int(plain_config.validation_fraction * x.shape[0]))
    xs, ys = x.double().numpy(), y.reshape(-1).double().numpy()
    found, exact, given = None, plain_config.exact_r2, teacher
    floor = snap_floor(given.error, y.reshape(-1)) if given is not None and given.error else 1e-8
    try:
        if teacher is not None:  # y is the teacher's outputs: no formula matches them closer than its error
            exact = min(exact, 1 - snap_floor(config.solve.factor * teacher.error, y.reshape(-1)))
            plain_config.target_error = max(plain_config.target_error, teacher.error)
        teacher = teacher or fit_teacher(x, y, features, steps=config.teacher_steps, seed=plain_config.seed)
        rows = Rows(x[n_val:], y.reshape(-1)[n_val:], 0.0 if given is None else given.error)
        solution = solve(teacher, features, config.solve, solve_deadline, rows)
        # snapped within the whole budget, not the recursion's: a near-exact formula is worth the time
        expr = snap_constants(solution.expression, features, xs[n_val:], ys[n_val:], floor=floor, deadline=deadline)
        expr = canonical_on_data(expr, features, xs)
        r2 = r2_score(evaluate(expr, features, xs[:n_val]), ys[:n_val])
        if np.all(np.isfinite(evaluate(expr, features, xs))) and r2 >= plain_config.min_r2:
            found = Discovery(Extraction(list(features), [expr]), "teacher recursion", r2, {"teacher recursion": r2})
    except (FloatingPointError, FormulaError) as err:
        logger.info("discover_with_teacher: the recursion found nothing (%s)", err)
    best = _choose(found, x, y, features, plain_config, exact, config.solve.min_leaf_seconds, deadline)
    if config.seconds is None:
        return best  # the searches snapped without a deadline
    return _snap_again(best, features, xs, ys, n_val, floor, config.snap_share * config.seconds)


def _choose(found: Discovery | None, x: torch.Tensor, y: torch.Tensor, features: list[str],
            plain_config: DiscoverConfig, exact: float, min_leaf_seconds: float,
            deadline: float | None) -> Discovery:  # fmt: skip
    """The recursion's formula (``found``), or the plain search's when that is better (`discover_with_teacher`)."""
    if found is not None and found.r2_validation >= exact and _complexity(found.expression)[0] <= 1:
        return found  # exact with at most one free constant: the plain search cannot do better
    if deadline is not None:
        plain_config.seconds = max(deadline - time.monotonic(), 0.0)
        if found is not None and plain_config.seconds < min_leaf_seconds * len(features):
            return found  # the plain search's first student runs to its end: not started without time for it
    try:
        plain = discover_formula(x, y, features, plain_config)
    except FloatingPointError:
        if found is None:
            raise
        return found
    if found is None:
        return plain
    plain.candidates["teacher recursion"] = found.r2_validation
    found.candidates = plain.candidates
    both_exact = min(found.r2_validation, plain.r2_validation) >= exact
    if abs(found.r2_validation - plain.r2_validation) > 1e-9 and not both_exact:
        return found if found.r2_validation > plain.r2_validation else plain
    return found if _complexity(found.expression) < _complexity(plain.expression) else plain


def _snap_again(found: Discovery, features: list[str], xs: np.ndarray, ys: np.ndarray, n_val: int, floor: float,
                seconds: float, near_exact: float = 1e-4) -> Discovery:  # fmt: skip
    """``found`` with its constants snapped once more (`snap_constants` on the rows after the first ``n_val``,
    for ``seconds``) when its held-out R^2 is within ``near_exact`` of 1 and it keeps free constants: the
    searches' snapping stops at their deadline, which can leave ``0.0531 a^2 q^2 / (c^3 (10 eps + 0.011)^1.0005)``
    for ``a^2 q^2 / (6 pi eps c^3)``. Kept if simpler and as close on the held-out rows (to the R^2 growth
    `snap_constants` allows)."""
    if seconds <= 0 or found.r2_validation < 1 - near_exact or _complexity(found.expression)[0] == 0:
        return found
    expr = snap_constants(found.expression, features, xs[n_val:], ys[n_val:], floor=floor,
                          deadline=time.monotonic() + seconds)  # fmt: skip
    expr = canonical_on_data(expr, features, xs)
    if _complexity(expr) >= _complexity(found.expression):
        return found
    try:
        on_rows, r2 = evaluate(expr, features, xs), r2_score(evaluate(expr, features, xs[:n_val]), ys[:n_val])
    except FormulaError:
        return found
    if not np.all(np.isfinite(on_rows)) or 1 - r2 > max(5 * (1 - found.r2_validation), floor):
        return found
    logger.info("discover_with_teacher: snapped once more to %s (held-out R^2 %.9f)", expr, r2)
    found.extraction.expressions[0] = expr
    found.r2_validation = r2
    return found
