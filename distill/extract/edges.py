"""Symbolic extraction: turn a trained KAN student into a formula, and say how faithful it is.

The steps, each a function of its own:

1. :func:`auto_symbolic` fits every active edge to every library function at once
   (:mod:`kandistill.distill.extract.symbolic_fit`) and fixes each edge to its chosen ``c * f(a x + b) + d``;
2. :func:`refit` trains what is left (the affine constants and the biases) on the data;
3. :func:`compose` writes the network as one sympy expression in the feature names;
4. :func:`snap_constants` replaces constants by simple values (integers, small fractions,
   multiples of pi) only where the formula's fit does not get worse beyond a tolerance.

:func:`extract_formula` runs them all and measures the formula against the student (and the
teacher, when its outputs are given) on held-out inputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import sympy
import torch

from kandistill.distill.extract.canonical import cheap_to_simplify, has_high_powers
from kandistill.distill.extract.formula import (
    FormulaError,
    check_score,
    check_scores,
    check_variables,
    evaluate,
    from_trees,
    read_json,
    to_tree,
)
from kandistill.distill.extract.symbolic_fit import choose, fit_symbols
from kandistill.distill.train.fit import FitConfig, fit_kan
from kandistill.distill.train.metrics import r2_score
from kandistill.students import KAN
from kandistill.students.files import atomic_write_json

FORMAT_VERSION = 1
logger = logging.getLogger(__name__)


@dataclass
class EdgeChoice:
    """The function chosen for edge ``(layer, i, j)``, with its fit and the runner-up's."""

    layer: int
    i: int
    j: int
    name: str
    params: list[float]
    r2: float
    runner_up: str
    runner_up_r2: float


@dataclass
class Extraction:
    """A student's formula (one expression per output) with its provenance and fidelity."""

    features: list[str]
    expressions: list[sympy.Expr]
    edges: list[EdgeChoice] = field(default_factory=list)
    fidelity: dict[str, float] = field(default_factory=dict)

    def latex(self) -> list[str]:
        return [sympy.latex(e) for e in self.expressions]

    def callable(self, backend: str = "numpy"):
        """``f(x)`` with ``x`` of shape ``(batch, n_features)`` -> ``(batch, n_outputs)``.

        numpy: `extract.formula.evaluate` (a tree walk, no generated code). Other backends: lambdify with
        dummy symbols, after checking that every symbol is a feature: lambdify writes the names of symbols
        that are not arguments into the generated source, where a name such as ``__import__('os')...`` runs.
        """
        if backend == "numpy":
            return lambda x: np.stack([evaluate(e, self.features, x) for e in self.expressions], 1)
        unknown = sorted({s.name for e in self.expressions for s in e.free_symbols} - set(self.features))
        if unknown:
            raise FormulaError(f"the formula uses {unknown[:5]!r:.200}, which are not features ({self.features})")
        symbols = [sympy.Symbol(n, real=True) for n in self.features]
        modules = TORCH_MODULES if backend == "torch" else backend
        fns = [sympy.lambdify(symbols, e, modules=modules, dummify=True) for e in self.expressions]
        lib = torch if backend == "torch" else np

        def evaluate_with(x):
            columns = [x[:, k] for k in range(x.shape[1])]
            outs = [fn(*columns) + 0 * columns[0] for fn in fns]
            return lib.stack(outs, 1)

        return evaluate_with

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "features": self.features,
            "outputs": [to_tree(e) for e in self.expressions],
            "edges": [asdict(e) for e in self.edges],
            "fidelity": self.fidelity,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), self.to_json())

    @classmethod
    def from_json(cls, data: object, source: str = "formula") -> Extraction:
        """Validate and rebuild; nothing in ``data`` is evaluated as code, and anything malformed raises
        :class:`FormulaError` naming ``source`` and the field."""
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise FormulaError(f"{source}: not a kandistill formula file (format_version {FORMAT_VERSION})")
        features = check_variables(data.get("features"), f"{source}.features")
        outputs = data.get("outputs")
        if not isinstance(outputs, list) or not outputs:
            raise FormulaError(f"{source}.outputs: expected a non-empty list of formula trees")
        expressions = from_trees([(f"{source}.outputs[{k}]", t) for k, t in enumerate(outputs)], features)
        edges = data.get("edges", [])
        if not isinstance(edges, list):
            raise FormulaError(f"{source}.edges: expected a list, got {type(edges).__name__}")
        return cls(features, expressions, [_edge(e, f"{source}.edges[{k}]") for k, e in enumerate(edges)],
                   check_scores(data.get("fidelity", {}), f"{source}.fidelity"))  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> Extraction:
        path = Path(path)
        return cls.from_json(read_json(path), str(path))


def _edge(value: object, where: str) -> EdgeChoice:
    """An `EdgeChoice` from its JSON object, each field checked."""
    fields = ("layer", "i", "j", "name", "params", "r2", "runner_up", "runner_up_r2")
    if not isinstance(value, dict) or set(value) != set(fields):
        raise FormulaError(f"{where}: expected an object with exactly {list(fields)}")
    if not (all(type(value[k]) is int for k in ("layer", "i", "j")) and isinstance(value["name"], str)
            and isinstance(value["runner_up"], str) and isinstance(value["params"], list)):  # fmt: skip
        raise FormulaError(f"{where}: layer, i and j must be integers, name and runner_up strings, params a list")
    params = [check_score(v, f"{where}.params[{k}]") for k, v in enumerate(value["params"])]
    return EdgeChoice(value["layer"], value["i"], value["j"], value["name"], params,
                      check_score(value["r2"], f"{where}.r2"), value["runner_up"],
                      check_score(value["runner_up_r2"], f"{where}.runner_up_r2"))  # fmt: skip


def auto_symbolic(
    model: KAN, x: torch.Tensor, names: list[str] | None = None, complexity_weight: float = 0.5
) -> list[EdgeChoice]:
    """Fix every active spline edge of a single-student ``model`` to its best library function."""
    if model.ensemble != 1:
        raise ValueError("auto_symbolic: extract one student at a time (use model.member(e))")
    with torch.no_grad():
        edges = model.edge_functions(x)
    where, xs, ys = [], [], []
    for n, (layer, values) in enumerate(zip(model.layers, edges, strict=True)):
        active = (layer.mask[0] > 0) & (layer.sym_mask[0] == 0)
        for i, j in active.nonzero().tolist():
            where.append((n, i, j))
            xs.append(values.inputs[0, :, i])
            ys.append(values.outputs[0, :, i, j])
    if not where:
        return []
    fits = fit_symbols(torch.stack(xs), torch.stack(ys), model.symbols, names)
    choices = []
    for (n, i, j), c in zip(where, choose(fits, complexity_weight), strict=True):
        model.fix_symbolic(n, i, j, c.name, affine=tuple(c.params))
        choices.append(EdgeChoice(n, i, j, c.name, c.params, c.r2, c.runner_up, c.runner_up_r2))
    return choices


def refit(model: KAN, x: torch.Tensor, y: torch.Tensor, steps: int = 20) -> bool:
    """Train the symbolic edges' constants and the biases (the splines are masked out).

    If the optimiser diverges (a line search can step into an overflowing ``exp``), the
    constants of the edge fits are kept; returns whether the refit was kept.
    """
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        fit_kan(model, x, y, FitConfig(steps=steps, grid_update_every=0))
    except FloatingPointError as err:
        logger.warning("refit diverged (%s); keeping the per-edge fits", err)
        model.load_state_dict(before)
        return False
    return True


def compose(model: KAN, features: list[str]) -> list[sympy.Expr]:
    """The network of a single student, all of whose active edges are symbolic, as sympy."""
    if len(features) != model.width[0]:
        raise ValueError(f"compose: {len(features)} feature names for {model.width[0]} inputs")
    nodes: list[sympy.Expr] = [sympy.Symbol(n, real=True) for n in features]
    names = model.symbols.names()
    for n, layer in enumerate(model.layers):
        active = layer.mask[0] > 0
        spline = active & (layer.sym_mask[0] == 0)
        if spline.any():
            raise ValueError(f"compose: layer {n} still has spline edges {spline.nonzero().tolist()[:5]}")
        outputs = []
        for j in range(layer.out_dim):
            total = sympy.Float(layer.bias[0, j].item())
            for i in active[:, j].nonzero().flatten().tolist():
                a, b, c, d = (sympy.Float(v) for v in layer.sym_affine[0, i, j].tolist())
                fn = model.symbols[names[layer.sym_index[0, i, j]]].sympy_fn
                total += c * fn(a * nodes[i] + b) + d
            outputs.append(total)
        nodes = outputs
    return [canonical(e) for e in nodes]


def canonical(expr: sympy.Expr) -> sympy.Expr:
    """Distribute numbers into sums and split ``exp`` of sums, so redundant constants merge."""
    return sympy.expand(expr, deep=True, mul=True, power_exp=True, power_base=False, log=False, multinomial=False)


def _candidates(value: float) -> list[sympy.Expr]:
    """Simple numbers near ``value``, simplest first: 0, the nearest integer, then by the size of the
    denominator, a plain fraction before the multiple of pi with the same denominator (where both fit, ``1``
    wins over ``pi / 3`` and ``pi`` over ``22 / 7``), then ``1 / (k pi)``."""
    out: list[sympy.Expr] = [sympy.Integer(0), sympy.Integer(round(value))]
    for limit in (2, 3, 4, 6, 10):
        frac = Fraction(value).limit_denominator(limit)
        out.append(sympy.Rational(frac.numerator, frac.denominator))
        frac_pi = Fraction(value / np.pi).limit_denominator(limit)
        out.append(sympy.pi * sympy.Rational(frac_pi.numerator, frac_pi.denominator))
    sign = -1 if value < 0 else 1  # last, and only 1 / (k pi): h / (2 pi) and 1 / (4 pi epsilon) make them common,
    out += [sympy.Rational(sign, k) / sympy.pi for k in (1, 2, 4)]  # while n / (k pi) would fit noise
    unique = [sympy.Integer(0)]  # always worth a try: the fit check decides
    for c in out[1:]:
        if c not in unique and abs(float(c) - value) <= 0.1 * abs(value) + 1e-3:
            unique.append(c)
    return unique


_TORCH_EXTRAS = {  # functions sympy's simplification can produce that its torch printer lacks
    "cot": lambda z: 1 / torch.tan(z),
    "sec": lambda z: 1 / torch.cos(z),
    "csc": lambda z: 1 / torch.sin(z),
    "coth": lambda z: 1 / torch.tanh(z),
    "sech": lambda z: 1 / torch.cosh(z),
    "csch": lambda z: 1 / torch.sinh(z),
    "acot": lambda z: torch.atan(1 / z),
}
TORCH_MODULES = [_TORCH_EXTRAS, "torch"]


class _Scorer:
    """``1 - R^2`` of expressions in ``features`` against ``reference`` on ``x``, and constant refits."""

    def __init__(self, features: list[str], x: np.ndarray, reference: np.ndarray):
        self.symbols = [sympy.Symbol(n, real=True) for n in features]
        self.columns = [torch.from_numpy(np.ascontiguousarray(x[:, k])) for k in range(x.shape[1])]
        self.reference = torch.from_numpy(np.ascontiguousarray(reference))
        self.total = (self.reference - self.reference.mean()).square().sum().clamp_min(1e-300)

    def loss(self, expr: sympy.Expr, fn=None, constants: torch.Tensor | None = None) -> torch.Tensor:
        """``1 - R^2``; infinite for an expression torch cannot evaluate or that is not finite."""
        args = self.columns if constants is None else [*self.columns, *constants]
        try:
            # evalf: cos(1) is no tensor; dummify: no feature name is written into the generated source
            fn = fn or sympy.lambdify(self.symbols, expr.evalf(), TORCH_MODULES, dummify=True)
            with torch.no_grad() if constants is None else torch.enable_grad():
                pred = torch.as_tensor(fn(*args))
                if pred.is_complex():  # a power or root of a negative base: not a real formula on these rows
                    return torch.tensor(torch.inf, dtype=torch.float64)
                pred = pred.to(torch.float64).expand_as(self.reference)
        except (TypeError, ValueError, RuntimeError, NameError, NotImplementedError):
            return torch.tensor(torch.inf, dtype=torch.float64)
        loss = (pred - self.reference).square().sum() / self.total
        return loss if torch.isfinite(loss) else torch.tensor(torch.inf, dtype=torch.float64)

    def refit(self, expr: sympy.Expr, steps: int = 30) -> sympy.Expr:
        """Least-squares refit of every float constant of ``expr`` (L-BFGS, float64); kept if better."""
        floats = sorted(expr.atoms(sympy.Float), key=lambda f: float(f))
        if not floats:
            return expr
        params = sympy.symbols(f"_c0:{len(floats)}")
        template = expr.xreplace(dict(zip(floats, params, strict=True)))
        try:
            fn = sympy.lambdify([*self.symbols, *params], template.evalf(), TORCH_MODULES, dummify=True)
        except (TypeError, ValueError, NameError, NotImplementedError):
            return expr
        theta = torch.tensor([float(f) for f in floats], dtype=torch.float64, requires_grad=True)
        before = self.loss(expr).item()
        scale = before if 0 < before < np.inf else 1.0  # near an exact fit, 1 - R^2 is below L-BFGS's tolerances
        optimizer = torch.optim.LBFGS([theta], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self.loss(template, fn, theta.unbind()) / scale
            if torch.isfinite(loss) and loss.requires_grad:
                loss.backward()
            return loss

        try:
            optimizer.step(closure)
        except RuntimeError:  # a line search into a domain error
            return expr
        fitted = template.xreplace({p: sympy.Float(v) for p, v in zip(params, theta.tolist(), strict=True)})
        return fitted if self.loss(fitted).item() < before else expr


def _snap_one(expr: sympy.Expr, atom: sympy.Float, scorer: _Scorer, max_loss: float) -> sympy.Expr | None:
    """``expr`` with ``atom`` replaced by the first simple candidate that keeps the loss under
    ``max_loss`` (as it is, or after refitting the other floats), or None."""
    for candidate in _candidates(float(atom)):
        trial = canonical(expr.xreplace({atom: candidate}))
        if scorer.loss(trial).item() <= max_loss:
            return trial
        trial = scorer.refit(trial)
        if scorer.loss(trial).item() <= max_loss:
            return trial
    return None


def _drop_constants(expr: sympy.Expr, scorer: _Scorer, max_loss: float, max_tries: int,
                    deadline: float | None) -> tuple[sympy.Expr, int]:  # fmt: skip
    """``expr`` with every float that can be 0 set to 0 (the rest refitted), the smallest first, and the
    number of floats tried.

    Before any other rounding: a term the fit does not need goes first, while the other constants are still
    free to take up its work. Rounded first, they would pin the formula to a point where a tiny offset must
    stay to make up for them (``10 log(2 Nn - 0.0106) + ... - 17`` instead of ``10 log(Nn mu) + c``).
    A refit gives every float a new value, so the floats that must stay are counted by rank, not kept by name."""
    tries = kept = 0
    while tries < max_tries and (deadline is None or time.monotonic() < deadline):
        floats = sorted(expr.atoms(sympy.Float), key=lambda f: abs(float(f)))
        if kept >= len(floats):
            break
        tries += 1
        trial = canonical(expr.xreplace({floats[kept]: sympy.Integer(0)}))
        if scorer.loss(trial).item() > max_loss:
            trial = scorer.refit(trial)
        if scorer.loss(trial).item() <= max_loss:
            expr = trial  # one float fewer
        else:
            kept += 1
    return expr, tries


def _closeness(atom: sympy.Float) -> float:
    """How far ``atom`` is from its nearest simple non-zero candidate, relative to its size."""
    value = float(atom)
    distances = [abs(float(c) - value) for c in _candidates(value) if c != 0]
    return min(distances, default=abs(value)) / max(abs(value), 1e-12)


def monic_denominator(expr: sympy.Expr, max_ops: int = 40) -> sympy.Expr:
    """``expr`` as a fraction whose denominator's first term has coefficient 1, when the denominator holds
    floats: ``0.0776*V*p/(0.0776*gamma - 0.0776)`` becomes ``1.0*V*p/(gamma - 1.0)``, whose constants
    can then snap one at a time (a float is only ever snapped to a simple value near it). Formulas over
    ``max_ops`` operations (before or after) or with high powers (`has_high_powers`), or whose denominator is 1
    or exact, come back unchanged."""
    if sympy.count_ops(expr) > max_ops or has_high_powers(expr):
        return expr
    num, den = sympy.fraction(sympy.together(expr))
    if not den.has(sympy.Float):
        return expr
    lead = next((t.as_coeff_Mul()[0] for t in sympy.Add.make_args(sympy.expand(den)) if t.free_symbols), None)
    if not isinstance(lead, sympy.Float) or lead == 0:
        return expr
    monic = sympy.expand(num / lead) / sympy.expand(den / lead)
    return monic if sympy.count_ops(monic) <= max_ops else expr  # expanding powers of sums can blow it up


def snap_constants(
    expr: sympy.Expr,
    features: list[str],
    x: np.ndarray,
    reference: np.ndarray,
    growth: float = 5.0,
    floor: float = 1e-8,
    min_r2: float = 0.99,
    max_constants: int = 24,
    max_tries: int = 60,
    deadline: float | None = None,
) -> sympy.Expr:
    """Replace floats by simple numbers while the formula still fits ``reference``.

    The constants are first refitted to ``reference`` (after :func:`monic_denominator`); then each
    float, the one nearest to a simple value first, is tried against simple candidates (0, integers,
    small fractions, small multiples of pi), with the remaining floats refitted after each try. A
    replacement is kept only if ``1 - R^2`` stays below ``max(growth * base, floor)``, ``base`` being the refitted
    formula's: relative, so that an offset that barely moves R^2 is not rounded into a wrong
    value. A formula whose R^2 is below ``min_r2``, or with more than ``max_constants`` floats,
    is refitted but not snapped: rounding cannot make a wrong formula right, and the search
    grows with the square of the number of constants; at most ``max_tries`` constants are tried (none after
    ``deadline``, a `time.monotonic` value),
    and only a small result free of trigonometric functions is passed to ``sympy.simplify``
    (`kandistill.distill.extract.canonical.cheap_to_simplify`), whose cost grows fast with size.
    ``x``: ``(batch, n_features)``; ``reference``: ``(batch,)``.
    """
    scorer = _Scorer(features, x, reference)
    expr = scorer.refit(monic_denominator(expr))
    base = scorer.loss(expr).item()
    if 1 - base < min_r2 or len(expr.atoms(sympy.Float)) > max_constants:
        return expr
    max_loss = max(growth * base, floor)
    expr, tries = _drop_constants(expr, scorer, max_loss, max_tries, deadline)
    rejected: set[sympy.Float] = set()
    while tries < max_tries and (deadline is None or time.monotonic() < deadline):
        for atom in sorted(expr.atoms(sympy.Float) - rejected, key=_closeness):
            tries += 1
            snapped = _snap_one(expr, atom, scorer, max_loss)
            if snapped is not None:
                expr = snapped  # one float fewer, so this loop ends
                break
            rejected.add(atom)
            if tries >= max_tries or (deadline is not None and time.monotonic() > deadline):
                break
        else:
            break
    return sympy.simplify(expr) if cheap_to_simplify(expr, max_ops=40) else expr


def extract_formula(
    model: KAN,
    x: torch.Tensor,
    features: list[str],
    x_test: torch.Tensor | None = None,
    teacher_test: torch.Tensor | None = None,
    names: list[str] | None = None,
    complexity_weight: float = 0.5,
    refit_steps: int = 20,
    fit_constants_to: str = "student",
    snap_growth: float = 5.0,
    snap_floor: float = 1e-8,
    deadline: float | None = None,
) -> Extraction:
    """Extract a formula from a copy of ``model`` (member 0 of an ensemble); see the module docstring.

    Fidelity (R^2 per output, averaged) is reported for the formula against the student on
    ``x_test`` (default: ``x``) and, when ``teacher_test`` is given, against the teacher.
    The formula's constants are refitted and snapped against the student's outputs on ``x_test``,
    or against ``teacher_test`` with ``fit_constants_to="teacher"`` (when the formula is meant to
    stand for the teacher itself, as in symbolic regression on data). No constant is snapped after
    ``deadline`` (a `time.monotonic` value): the formula is then returned with its fitted constants.
    ``snap_growth`` and ``snap_floor`` are :func:`snap_constants`' ``growth`` and ``floor``.
    """
    if fit_constants_to not in ("student", "teacher") or (fit_constants_to == "teacher" and teacher_test is None):
        raise ValueError(f"extract_formula: fit_constants_to={fit_constants_to!r} needs 'student', or teacher_test")
    student = model.member(0)
    x_test = x if x_test is None else x_test
    with torch.no_grad():
        target = student(x)
        student_test = student(x_test).double().numpy()
    edges = auto_symbolic(student, x, names, complexity_weight)
    if refit_steps:
        refit(student, x, target, refit_steps)
    xs = x_test.double().numpy()
    teacher = None if teacher_test is None else teacher_test.reshape(x_test.shape[0], -1).double().numpy()
    reference = teacher if fit_constants_to == "teacher" else student_test
    expressions = [
        snap_constants(e, features, xs, reference[:, k], growth=snap_growth, floor=snap_floor, deadline=deadline)
        for k, e in enumerate(compose(student, features))
    ]
    result = Extraction(features, expressions, edges)
    with np.errstate(all="ignore"):
        pred = result.callable()(xs)
    result.fidelity["r2_vs_student"] = float(
        np.mean([r2_score(pred[:, k], student_test[:, k]) for k in range(pred.shape[1])])
    )
    if teacher is not None:
        result.fidelity["r2_vs_teacher"] = float(
            np.mean([r2_score(pred[:, k], teacher[:, k]) for k in range(pred.shape[1])])
        )
    return result
