"""A student as a short list of named components, each in its plainest faithful form, and the formula they
add up to.

The student's functional ANOVA (:mod:`kandistill.distill.extract.anova`) gives the parts and their shares of the
variance. Each part is then written as plainly as stays true to it:

- a numeric feature's main effect: ``c * f(a x + b)`` for a library function ``f``, when one fits the
  curve within tolerance and is finite on every row of the data (kind ``formula``); otherwise the
  curve itself, tabulated (kind ``curve``);
- a categorical feature's main effect: its table of per-value effects, written as indicator terms
  ``t * [region = north]``. Values whose effects agree within tolerance share one term; the largest
  such group (or the group of the reference value, when one is given) is the baseline, absorbed in the
  intercept (kind ``table``). Groups are formed from the effects and the value names only, so the
  terms do not depend on the order in which a config lists the values;
- a pairwise interaction: products ``c * g(x_i) * h(x_j)`` when its surface is close to rank one and
  each factor fits (``0.3*bmi*[sex = male]``), otherwise the surface, tabulated (kind ``surface``).

The formula is a constant plus the symbolic terms, their coefficients refitted jointly by least
squares against the student, with the curves and surfaces held as they are. So a student reads as
the sum of its symbolic parts plus named non-symbolic ones, never as one deep, opaque expression.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import sympy
import torch

from kandistill.distill.extract.anova import Decomposition, Part, decompose
from kandistill.distill.extract.formula import FormulaError, check_score, evaluate, from_trees, indicator, to_tree
from kandistill.distill.extract.symbolic_fit import fit_symbols, ranked
from kandistill.distill.train.metrics import r2_score
from kandistill.students.symbols import DEFAULT_SYMBOLS, SymbolLibrary
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema

logger = logging.getLogger(__name__)

KINDS = ("formula", "table", "curve", "surface")
MAX_COMPONENTS = 256  # per output, in a formula file
MAX_GRID = 256  # points per axis of a tabulated component, in a formula file


@dataclass
class ComponentConfig:
    """How a student is split and how plainly each part may be written.

    ``max_interactions``: the budget of pairwise interactions kept (by share). ``min_share``: a part
    with less of the variance is left out (main effects: listed as negligible). ``tolerance``: a
    symbolic form may leave at most this share of the total variance unexplained (so a small part may
    be fitted more roughly than a large one), and must reach ``min_fit_r2`` on its own part.
    ``category_tolerance``: categories whose effects differ by less than this many standard deviations
    of the student's output share one indicator term. ``references``: per categorical feature, the
    value to use as the baseline. ``seconds``: a budget for the whole decomposition; pairs and
    symbolic fits not started when it is spent are skipped (with a warning: the result then depends on
    the machine's speed).
    """

    max_interactions: int = 3
    min_share: float = 0.005
    tolerance: float = 0.002
    min_fit_r2: float = 0.9
    category_tolerance: float = 0.02
    complexity_weight: float = 2.0
    references: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None
    seed: int = 0


@dataclass
class Component:
    """One named part of a student.

    ``grid`` holds one axis per feature: numbers (a numeric feature), or the category values (strings).
    ``values`` is the part on that grid, centred on the data: ``(g,)`` or ``(g1, g2)``. ``expression``
    is the symbolic form in the features' units (categories as indicators), None for a curve or a
    surface; ``fit_r2`` its R^2 against the part; ``note`` says why a part stayed non-symbolic.
    """

    name: str
    features: tuple[str, ...]
    kind: str
    variance_share: float
    expression: sympy.Expr | None
    grid: tuple[tuple[float, ...] | tuple[str, ...], ...]
    values: np.ndarray
    fit_r2: float | None = None
    note: str = ""

    def values_at(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """The tabulated part at raw feature columns (numbers, or category strings) -> ``(rows,)``."""
        brackets = [_bracket(axis, np.asarray(columns[f]), f) for axis, f in zip(self.grid, self.features, strict=True)]
        if len(brackets) == 1:
            (left, weight), = brackets  # fmt: skip
            return (1 - weight) * self.values[left] + weight * self.values[np.minimum(left + 1, len(self.values) - 1)]
        (ia, wa), (ib, wb) = brackets
        v = self.values
        ia1, ib1 = np.minimum(ia + 1, v.shape[0] - 1), np.minimum(ib + 1, v.shape[1] - 1)
        return ((1 - wa) * (1 - wb) * v[ia, ib] + wa * (1 - wb) * v[ia1, ib] + (1 - wa) * wb * v[ia, ib1]
                + wa * wb * v[ia1, ib1])  # fmt: skip


def _bracket(axis: tuple, column: np.ndarray, feature: str) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the grid cell's left index and the weight of its right end (a category: its index, 0)."""
    if axis and isinstance(axis[0], str):
        index = {value: k for k, value in enumerate(axis)}
        unknown = sorted({str(v) for v in column if v not in index})
        if unknown:
            raise FormulaError(f"{feature}: values {unknown[:5]} are not among the component's {list(axis)[:10]}")
        return np.asarray([index[v] for v in column], dtype=int), np.zeros(len(column))
    grid = np.asarray(axis, dtype=np.float64)
    column = column.astype(np.float64)
    if len(grid) == 1:
        return np.zeros(len(column), dtype=int), np.zeros(len(column))
    left = np.clip(np.searchsorted(grid, column, side="right") - 1, 0, len(grid) - 2)
    return left, np.clip((column - grid[left]) / (grid[left + 1] - grid[left]), 0.0, 1.0)


@dataclass
class ComponentModel:
    """A student's components and their formula, for one output.

    ``intercept``: the student's mean on the data (the components' constant). ``formula``: the
    constant and symbolic terms (what the non-symbolic components add is not in it). ``negligible``:
    main effects below the share threshold; ``remainder_share``: the variance no listed part explains.
    ``r2``: the fidelity of each level (main effects; with interactions; the full student; the
    formula), measured by the caller against the teacher.
    """

    features: list[str]
    intercept: float
    components: list[Component]
    formula: sympy.Expr
    remainder_share: float
    negligible: list[str] = field(default_factory=list)
    r2: dict[str, float] = field(default_factory=dict)

    def predict(self, columns: Mapping[str, Sequence], source: str = "formula") -> np.ndarray:
        """Raw feature columns (category strings included) -> ``(rows,)``: the formula plus the non-symbolic
        components (``source="formula"``), or the intercept plus the tabulated components (``"components"``),
        or plus the main effects only (``"main_effects"``)."""
        raw = {name: raw_column(columns[name]) for name in self.features}
        if source in ("components", "main_effects"):
            rows = len(next(iter(raw.values())))
            parts = [c for c in self.components if source == "components" or len(c.features) == 1]
            return self.intercept + sum((c.values_at(raw) for c in parts), np.zeros(rows))
        if source != "formula":
            raise ValueError(f"source: expected 'formula', 'components' or 'main_effects', got {source!r}")
        total = evaluate(self.formula, self.features, raw)
        for component in self.components:
            if component.expression is None:
                total = total + component.values_at(raw)
        return total

    def to_json(self) -> dict:
        return {
            "tree": to_tree(self.formula),
            "intercept": self.intercept,
            "remainder_share": self.remainder_share,
            "negligible": self.negligible,
            "levels": self.r2,
            "components": [
                {
                    "name": c.name,
                    "features": list(c.features),
                    "kind": c.kind,
                    "variance_share": c.variance_share,
                    "tree": None if c.expression is None else to_tree(c.expression),
                    "grid": [list(axis) for axis in c.grid],
                    "values": c.values.tolist(),
                    "fit_r2": c.fit_r2,
                    "note": c.note,
                }
                for c in self.components
            ],
        }

    @classmethod
    def from_json(cls, data: object, schema: FeatureSchema, where: str) -> ComponentModel:
        """Check and rebuild (trees through `extract.formula.from_trees`: nothing is evaluated as code)."""
        if not isinstance(data, dict):
            raise FormulaError(f"{where}: expected an object")
        items = data.get("components")
        if not isinstance(items, list) or len(items) > MAX_COMPONENTS:
            raise FormulaError(f"{where}.components: expected a list of at most {MAX_COMPONENTS} components")
        trees = [(f"{where}.tree", data.get("tree"))]
        trees += [(f"{where}.components[{k}].tree", c.get("tree")) for k, c in enumerate(items)
                  if isinstance(c, dict) and c.get("tree") is not None]  # fmt: skip
        expressions = iter(from_trees(trees, schema.names))
        formula = next(expressions)
        components = [_component(c, schema, f"{where}.components[{k}]", expressions) for k, c in enumerate(items)]
        negligible = data.get("negligible")
        if not isinstance(negligible, list) or not set(negligible) <= set(schema.names):
            raise FormulaError(f"{where}.negligible: expected a list of feature names")
        levels = data.get("levels")
        if not isinstance(levels, dict):
            raise FormulaError(f"{where}.levels: expected an object of scores")
        return cls(schema.names, _finite(data.get("intercept"), f"{where}.intercept"), components, formula,
                   check_score(data.get("remainder_share"), f"{where}.remainder_share"), list(negligible),
                   {str(k): check_score(v, f"{where}.levels.{k}") for k, v in levels.items()})  # fmt: skip


def _finite(value: object, where: str) -> float:
    number = check_score(value, where)
    if not math.isfinite(number):
        raise FormulaError(f"{where}: expected a finite number, got {value!r}")
    return number


def _component(item: object, schema: FeatureSchema, where: str, expressions) -> Component:
    """A `Component` from its JSON object, each field checked against the schema."""
    if not isinstance(item, dict):
        raise FormulaError(f"{where}: expected an object")
    features = item.get("features")
    if not (isinstance(features, list) and 1 <= len(features) <= 2 and all(f in schema.names for f in features)
            and len(set(features)) == len(features)):  # fmt: skip
        raise FormulaError(f"{where}.features: expected one or two of the features {schema.names}")
    kind, name, note = item.get("kind"), item.get("name"), item.get("note", "")
    if kind not in KINDS or not isinstance(name, str) or len(name) > 200 or not isinstance(note, str):
        raise FormulaError(f"{where}: kind must be one of {KINDS}, name and note strings")
    if (item.get("tree") is None) != (kind in ("curve", "surface")):
        raise FormulaError(f"{where}: a curve or surface has no tree; a formula or table needs one")
    grid = item.get("grid")
    if not isinstance(grid, list) or len(grid) != len(features):
        raise FormulaError(f"{where}.grid: expected one axis per feature")
    axes = tuple(
        _axis(axis, schema[f], f"{where}.grid[{k}]") for k, (axis, f) in enumerate(zip(grid, features, strict=True))
    )
    try:
        values = np.asarray(item.get("values"), dtype=np.float64)
    except (TypeError, ValueError):
        raise FormulaError(f"{where}.values: expected numbers on the grid") from None
    if values.shape != tuple(len(a) for a in axes) or not np.isfinite(values).all():
        raise FormulaError(f"{where}.values: expected finite numbers of shape {tuple(len(a) for a in axes)}")
    fit_r2 = item.get("fit_r2")
    return Component(name, tuple(features), kind, _finite(item.get("variance_share"), f"{where}.variance_share"),
                     None if item.get("tree") is None else next(expressions), axes, values,
                     None if fit_r2 is None else check_score(fit_r2, f"{where}.fit_r2"), note)  # fmt: skip


def _axis(axis: object, feature, where: str) -> tuple:
    if not isinstance(axis, list) or not 1 <= len(axis) <= MAX_GRID:
        raise FormulaError(f"{where}: expected a list of 1 to {MAX_GRID} grid points")
    if isinstance(feature, CategoricalFeature):
        if not all(isinstance(v, str) and v in feature.values for v in axis) or len(set(axis)) != len(axis):
            raise FormulaError(f"{where}: expected distinct values of {feature.name} ({list(feature.values)[:10]})")
        return tuple(axis)
    numbers = [_finite(v, f"{where}[{k}]") for k, v in enumerate(axis)]
    if any(b <= a for a, b in pairwise(numbers)):
        raise FormulaError(f"{where}: grid points must increase strictly")
    return tuple(numbers)


def raw_column(column: Any) -> np.ndarray:
    """A column of raw feature values (a list, an array, a Series or one value): an object array of category
    strings, or float64 numbers."""
    values = (
        column.tolist() if hasattr(column, "tolist") else list(column) if isinstance(column, list | tuple) else [column]
    )
    values = values if isinstance(values, list) else [values]
    array = np.asarray(values, dtype=object)
    return array if all(isinstance(v, str) for v in values) else array.astype(np.float64)


# --- building components from a student ---------------------------------------------------------------


@dataclass
class _Term:
    """A column of the final least-squares fit: its expression, values on the fit rows, its owner."""

    expression: sympy.Expr
    owner: int  # index of the component it belongs to


def decompose_student(
    predict: Callable[[np.ndarray], np.ndarray],
    schema: FeatureSchema,
    x: np.ndarray,
    x_check: np.ndarray | None = None,
    config: ComponentConfig | None = None,
    library: SymbolLibrary = DEFAULT_SYMBOLS,
) -> ComponentModel:
    """Components of ``predict`` (encoded rows ``(rows, n)`` -> ``(rows,)``) on the rows ``x``.

    Every symbolic form must be finite on ``x`` and on ``x_check`` (e.g. held-out rows) as well.
    """
    config = config or ComponentConfig()
    deadline = None if config.seconds is None else time.monotonic() + config.seconds
    categorical = [isinstance(f, CategoricalFeature) for f in schema.features]
    decomposition = decompose(predict, x, categorical, config.max_interactions, config.min_share, seed=config.seed)
    rows = x if x_check is None else np.concatenate([x, x_check])
    builder = _Builder(schema, config, library, decomposition, _columns(schema, rows), deadline)
    return builder.build(predict, x)


def _columns(schema: FeatureSchema, x: np.ndarray) -> dict[str, np.ndarray]:
    """Encoded rows -> raw columns (floats; category strings)."""
    return {name: raw_column(column) for name, column in schema.decode(x).items()}


class _Builder:
    """Writes each part of a decomposition in its plainest faithful form, then refits the terms jointly."""

    def __init__(self, schema: FeatureSchema, config: ComponentConfig, library: SymbolLibrary,
                 decomposition: Decomposition, check_columns: dict, deadline: float | None) -> None:  # fmt: skip
        self.schema, self.config, self.library, self.decomposition = schema, config, library, decomposition
        self.check_columns, self.deadline = check_columns, deadline
        self.std = math.sqrt(max(decomposition.variance, 1e-300))
        self.components: list[Component] = []
        self.terms: list[_Term] = []
        self.skipped = False

    def build(self, predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> ComponentModel:
        names = self.schema.names
        negligible = []
        for part in self.decomposition.mains:
            if part.share < self.config.min_share:
                negligible.append(names[part.features[0]])
                continue
            self._main(part)
        for part in self.decomposition.pairs:
            self._pair(part)
        if self.skipped:
            logger.warning("components: the %s s budget ran out; some parts were kept as tables without a formula "
                           "search, so the result depends on this machine's speed", self.config.seconds)  # fmt: skip
        formula = self._refit(predict, x)
        return ComponentModel(names, self.decomposition.intercept, self.components, formula,
                              self.decomposition.remainder_share, negligible)  # fmt: skip

    def _out_of_time(self) -> bool:
        self.skipped = self.skipped or (self.deadline is not None and time.monotonic() > self.deadline)
        return self.skipped

    # a part's axes, as stored: numbers, or category values
    def _axis(self, k: int, grid: np.ndarray) -> tuple:
        feature = self.schema.features[k]
        if isinstance(feature, CategoricalFeature):
            return tuple(feature.values[int(c)] for c in grid)
        return tuple(float(v) for v in grid)

    def _main(self, part: Part) -> None:
        k = part.features[0]
        feature = self.schema.features[k]
        axis = self._axis(k, part.grid[0])
        owner = len(self.components)
        if isinstance(feature, CategoricalFeature):
            effects = dict(zip(axis, part.values.tolist(), strict=True))
            tolerance = self.config.category_tolerance * self.std
            groups, base = group_categories(effects, tolerance, self.config.references.get(feature.name))
            expression = sympy.Integer(0)
            for members, effect in groups:
                column = _indicators(feature.name, members)
                expression += sympy.Float(effect - base) * column
                self.terms.append(_Term(column, owner))
            effect_of = {v: e for members, e in groups for v in members}
            grouped = np.asarray([effect_of.get(v, base) for v in axis])
            r2 = r2_score(grouped - grouped.mean(), part.values - part.values.mean())
            self.components.append(Component(feature.name, (feature.name,), "table", part.share, expression,
                                             (axis,), part.values, r2))  # fmt: skip
            return
        fit = None if self._out_of_time() else self._fit_curve(k, part.grid[0], part.values, part.share)
        if isinstance(fit, str) or fit is None:
            note = fit or "not searched: the time budget was spent"
            self.components.append(Component(feature.name, (feature.name,), "curve", part.share, None, (axis,),
                                             part.values, None, note))  # fmt: skip
            return
        term, coefficient, r2 = fit
        self.terms.append(_Term(term, owner))
        self.components.append(Component(feature.name, (feature.name,), "formula", part.share,
                                         sympy.Float(coefficient) * term, (axis,), part.values, r2))  # fmt: skip

    def _fit_curve(self, k: int, grid: np.ndarray, values: np.ndarray, share: float) -> tuple | str:
        """The plainest ``f(a x + b)`` (lowest complexity, then best score) that fits ``values`` on ``grid``
        within tolerance and is finite on the data: ``(term, c, R^2)``; or a note saying why none is."""
        feature = self.schema.features[k]
        symbol = sympy.Symbol(feature.name, real=True)
        low, high = feature.low, feature.high
        z = 2 * (grid - low) / (high - low) - 1
        fits = fit_symbols(torch.as_tensor(z)[None], torch.as_tensor(values)[None], self.library)
        best, non_finite = -math.inf, []
        rank = {index: r for r, index in enumerate(ranked(fits, self.config.complexity_weight)[0].tolist())}
        for index in sorted(rank, key=lambda k: (fits.complexity[k].item(), rank[k])):
            name, r2 = fits.names[index], float(fits.r2[0, index])
            if name == "0" or not math.isfinite(r2):
                continue
            best = max(best, r2)
            if r2 < self.config.min_fit_r2 or (1 - r2) * share > self.config.tolerance:
                continue
            a, b, c, _ = fits.params[0, index].tolist()
            if name == "x":
                term, coefficient = symbol, c * a * 2 / (high - low)
            else:
                inner = sympy.expand(sympy.Float(a) * (2 * (symbol - low) / (high - low) - 1) + sympy.Float(b))
                term, coefficient = self.library[name].sympy_fn(inner), c
            if self._finite(term):
                return term, coefficient, r2
            non_finite.append(name)
        if non_finite:
            return f"the functions that fit ({', '.join(non_finite)}) are not finite on every row of the data"
        return f"no library function fits within tolerance (best R^2 {best:.3g})"

    def _finite(self, term: sympy.Expr) -> bool:
        """Is ``term`` finite (and real) on every row of the data and of the check rows?"""
        try:
            values = evaluate(term, self.schema.names, self.check_columns)
        except FormulaError:
            return False
        return bool(np.isfinite(values).all())

    def _pair(self, part: Part) -> None:
        i, j = part.features
        names = self.schema.names
        axes = (self._axis(i, part.grid[0]), self._axis(j, part.grid[1]))
        name = f"{names[i]} x {names[j]}"
        owner = len(self.components)
        factors = None if self._out_of_time() else self._factors(part)
        if isinstance(factors, str) or factors is None:
            note = factors or "not searched: the time budget was spent"
            self.components.append(Component(name, (names[i], names[j]), "surface", part.share, None, axes,
                                             part.values, None, note))  # fmt: skip
            return
        products, marginals, r2 = factors
        known = {t.expression for t in self.terms}
        self.terms += [_Term(p, owner) for p in products]
        self.terms += [_Term(m, owner) for m in marginals if m not in known]
        self.components.append(Component(name, (names[i], names[j]), "formula", part.share, sympy.Add(*products),
                                         axes, part.values, r2))  # fmt: skip

    def _factors(self, part: Part) -> tuple | str:
        """Product terms for a pair whose surface is close to rank one, with their marginal columns and the R^2
        of the products (and marginals) against the surface; or a note saying why there are none."""
        u_, s, vt = np.linalg.svd(part.values)
        if s[0] <= 0:
            return "the surface is flat"
        factors = []
        for k, vector in zip(part.features, (u_[:, 0] * s[0], vt[0]), strict=True):
            feature = self.schema.features[k]
            grid = part.grid[len(factors)]
            if isinstance(feature, CategoricalFeature):
                effects = dict(zip(self._axis(k, grid), vector.tolist(), strict=True))
                spread = float(np.ptp(vector)) if len(vector) > 1 else 0.0
                groups, _ = group_categories(effects, 0.05 * spread, self.config.references.get(feature.name))
                factors.append([_indicators(feature.name, members) for members, _ in groups])
            else:
                fit = self._fit_curve(k, grid, vector, part.share)
                if isinstance(fit, str):
                    return f"no product form: the {feature.name} factor: {fit}"
                factors.append([fit[0]])
        products = [g * h for g in factors[0] for h in factors[1]]
        marginals = factors[0] + factors[1]
        mesh = [axis.reshape(-1) for axis in np.meshgrid(*part.grid, indexing="ij")]
        raw = {**self._placeholders(len(mesh[0]))}
        for k, column in zip(part.features, mesh, strict=True):
            feature = self.schema.features[k]
            raw[feature.name] = raw_column(self._axis(k, column)) if isinstance(feature, CategoricalFeature) else column
        design = np.stack([np.ones(len(mesh[0]))] + [evaluate(t, self.schema.names, raw) for t in products + marginals],
                          1)  # fmt: skip
        target = part.values.reshape(-1)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        r2 = r2_score(design @ coef, target)
        if r2 < self.config.min_fit_r2 or (1 - r2) * part.share > self.config.tolerance:
            return f"no product form fits the surface within tolerance (R^2 {r2:.3g})"
        if not all(self._finite(t) for t in products):
            return "no product form is finite on the data"
        return products, marginals, r2

    def _placeholders(self, rows: int) -> dict[str, np.ndarray]:
        """Placeholder raw columns for features a term does not use."""
        return {f.name: (np.full(rows, f.values[0], dtype=object) if isinstance(f, CategoricalFeature)
                         else np.full(rows, float(f.low))) for f in self.schema.features}  # fmt: skip

    def _refit(self, predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> sympy.Expr:
        """The symbolic terms' coefficients and the constant, by least squares against the student on ``x``
        with the non-symbolic components held as they are; each component's expression is rewritten with its
        refitted terms."""
        columns = _columns(self.schema, x)
        target = predict(x) - sum((c.values_at(columns) for c in self.components if c.expression is None),
                                  np.zeros(len(x)))  # fmt: skip
        design = np.stack([np.ones(len(x))] + [evaluate(t.expression, self.schema.names, columns)
                                               for t in self.terms], 1)  # fmt: skip
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        by_owner: dict[int, sympy.Expr] = {}
        for term, c in zip(self.terms, coef[1:].tolist(), strict=True):
            by_owner[term.owner] = by_owner.get(term.owner, sympy.Integer(0)) + sympy.Float(c) * term.expression
        for owner, expression in by_owner.items():
            self.components[owner].expression = expression
        return sympy.Float(coef[0]) + sympy.Add(*by_owner.values())


def _indicators(feature: str, values: Sequence[str]) -> sympy.Expr:
    """``[feature = v1] + [feature = v2] + ...``: one indicator column for a group of values."""
    return sympy.Add(*(indicator(feature, v) for v in sorted(values)))


def group_categories(effects: Mapping[str, float], tolerance: float,
                     reference: str | None = None) -> tuple[list[tuple[list[str], float]], float]:  # fmt: skip
    """Group category values whose effects chain within ``tolerance`` of each other.

    Returns the non-baseline groups (values, mean effect) and the baseline group's mean effect. The
    baseline is the group of ``reference`` when given, else the largest group (ties: the group with the
    alphabetically first value). Depends on the effects and the names only, not on their order.
    """
    ordered = sorted(effects.items(), key=lambda item: (item[1], item[0]))
    groups: list[list[tuple[str, float]]] = [[ordered[0]]]
    for value, effect in ordered[1:]:
        if effect - groups[-1][-1][1] > tolerance:
            groups.append([])
        groups[-1].append((value, effect))
    with_reference = [g for g in groups if any(v == reference for v, _ in g)]
    baseline = with_reference[0] if with_reference else min(groups, key=lambda g: (-len(g), min(v for v, _ in g)))
    summary = [([v for v, _ in g], float(np.mean([e for _, e in g]))) for g in groups if g is not baseline]
    return summary, float(np.mean([e for _, e in baseline]))
