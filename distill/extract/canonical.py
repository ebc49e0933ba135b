"""Canonical forms of found formulas: one readable way to write each, and an equivalence test.

A KAN's edges compose ``exp`` and sums freely, so a formula can come out as
``(exp(4*x) - exp(2*y)) / (exp(4*x) + exp(2*y))`` when it means ``tanh(2*x - y)``. :func:`canonical_form`
rewrites such ratios of exponentials as ``tanh`` and keeps the shortest of the
rewrites it tries; :func:`equivalent_up_to_constant` decides whether two formulas differ by an
additive or a multiplicative constant, comparing them in several common forms (as written,
canonical, everything rewritten as ``exp``), since ``sympy.simplify(found - truth)`` alone misses
some matches. :func:`canonical_on_data` also uses the inputs' signs: ``Abs(m)`` is ``m`` where
``m > 0`` on every row.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import sympy

from kandistill.distill.extract.formula import FUNCTIONS, FormulaError, evaluate

MAX_OPS = 500  # sympy.simplify's cost grows fast with size: larger formulas are left as they are


def _exp_argument(ratio: sympy.Expr) -> sympy.Expr | None:
    """``z`` when ``ratio`` is ``exp(z)`` (after merging powers), else None."""
    merged = sympy.powsimp(sympy.powdenest(ratio, force=True), combine="exp", force=True)
    if isinstance(merged, sympy.exp):
        return sympy.expand(merged.args[0])
    return None


def _ratio_to_tanh(expr: sympy.Expr) -> sympy.Expr:
    """``(A - B) / (A + B)`` with ``A / B = exp(2 z)`` as ``tanh(z)`` (and its inverse as ``1 / tanh(z)``)."""
    if not isinstance(expr, sympy.Mul | sympy.Pow):
        return expr
    num, den = sympy.fraction(sympy.together(expr))
    for top, bottom, inverse in ((num, den, False), (den, num, True)):
        bottom = sympy.expand(bottom)
        if not (isinstance(bottom, sympy.Add) and len(bottom.args) == 2):
            continue
        a, b = bottom.args
        z = _exp_argument(a / b)
        if z is None:
            continue
        scale = sympy.simplify(sympy.expand(top) / (a - b))  # top = scale (A - B), so expr = scale^{+-1} fn(z / 2)
        if not scale.free_symbols and scale != 0:
            return 1 / (scale * sympy.tanh(z / 2)) if inverse else scale * sympy.tanh(z / 2)
    return expr


def canonical_form(expr: sympy.Expr, max_ops: int = MAX_OPS) -> sympy.Expr:
    """The shortest (by ``count_ops``) of ``expr``, its rewrite with exponential ratios as ``tanh``,
    and (when small and free of trigonometric functions, whose simplification can take minutes) both
    simplified; formulas over ``max_ops`` operations are returned unchanged."""
    if sympy.count_ops(expr) > max_ops:
        return expr
    tried = [expr]  # candidates using a function a formula file cannot hold (coth, sinh, ...) are dropped below
    rewritten = expr.replace(lambda e: isinstance(e, sympy.Mul | sympy.Pow), _ratio_to_tanh)
    tried.append(rewritten)
    for e in (expr, rewritten):
        if not cheap_to_simplify(e):
            continue
        try:
            tried.append(sympy.simplify(e))
        except (TypeError, ValueError, RecursionError):  # sympy gives up on some inputs
            continue
    tried = [_exact_numbers(_fold_constants(e)) for e in tried if _writable(e)] or [expr]
    return min(tried, key=lambda e: (sympy.count_ops(e), len(str(e))))


def canonical_on_data(expr: sympy.Expr, features: list[str], x: np.ndarray, max_ops: int = 60) -> sympy.Expr:
    """``expr`` with :func:`resolve_signs` on ``x`` ``(batch, n)``, then in canonical form, if that computes
    the same values on ``x`` (to 1e-8 relative); else ``expr`` unchanged."""
    form = canonical_form(resolve_signs(expr, features, x), max_ops=max_ops)
    if form == expr:
        return expr
    try:
        before, after = evaluate(expr, features, x), evaluate(form, features, x)
    except FormulaError:
        return expr
    same = np.all(np.isfinite(after)) and np.allclose(after, before, rtol=1e-8, atol=1e-8 * np.abs(before).max())
    return form if same else expr


def resolve_signs(expr: sympy.Expr, features: list[str], x: np.ndarray) -> sympy.Expr:
    """Each ``Abs(a)`` whose argument keeps one sign on every row of ``x`` ``(batch, n)`` as ``a`` or ``-a``:
    ``sqrt(m**2)`` of a real ``m`` is ``Abs(m)``, which is just ``m`` for a mass. A square root of a small
    rational function is factored first, so that a perfect square shows: ``sqrt(1 - 2*v/c + v**2/c**2)`` is
    ``Abs(c - v)/Abs(c)``, which is ``(c - v)/c`` where ``v < c``."""

    def root(node: sympy.Pow) -> sympy.Expr:
        if sympy.count_ops(node.base) > 20 or not node.base.is_rational_function():
            return node
        factored = sympy.Pow(sympy.factor(node.base), node.exp)
        return factored if factored.has(sympy.Abs) else node

    def unsigned(node: sympy.Abs) -> sympy.Expr:
        try:
            with np.errstate(all="ignore"):
                values = evaluate(node.args[0], features, x)
        except FormulaError:
            return node
        if np.all(values > 0):
            return node.args[0]
        if np.all(values < 0):
            return -node.args[0]
        return node

    halves = (sympy.Rational(1, 2), sympy.Rational(-1, 2))
    expr = expr.replace(lambda e: isinstance(e, sympy.Pow) and e.exp in halves and e.base.free_symbols, root)
    return expr.replace(lambda e: isinstance(e, sympy.Abs), unsigned)


def _simple_fraction(value: float, rtol: float = 1e-8, max_denominator: int = 12) -> sympy.Rational | None:
    """The fraction of denominator at most ``max_denominator`` within ``rtol`` (relative) of ``value``, if any."""
    frac = Fraction(value).limit_denominator(max_denominator)
    return sympy.Rational(frac.numerator, frac.denominator) if abs(value - frac) <= rtol * abs(value) else None


def _exact_numbers(expr: sympy.Expr) -> sympy.Expr:
    """Each float that is a simple fraction to float precision as that fraction: a refit leaves ``0.999999998``
    where the law has 1, which sympy cannot match to 1."""
    exact = {f: _simple_fraction(float(f)) for f in expr.atoms(sympy.Float)}
    return expr.xreplace({f: r for f, r in exact.items() if r is not None})


def _fold_constants(expr: sympy.Expr) -> sympy.Expr:
    """Each product's constant factors as one number when one is a float and another a function of a constant:
    ``0.04321*exp(pi)*x`` is ``1.0*x`` (simplifying a formula fitted in log space splits a constant that way).
    A float times ``pi`` is folded only into a simple fraction: ``0.3183098862*pi*x`` is ``x``, while
    ``2.0*pi*x`` stays as it is."""

    def fold(product: sympy.Mul) -> sympy.Expr:
        constants = [a for a in product.args if not a.free_symbols]
        if not any(a.has(sympy.Float) for a in constants):
            return product
        value = sympy.Mul(*constants).evalf()
        if not isinstance(value, sympy.Float):
            return product
        if not any(a.atoms(sympy.Function) for a in constants):
            if not any(a.atoms(sympy.NumberSymbol) for a in constants):
                return product
            value = _simple_fraction(float(value))
            if value is None:
                return product
        return value * sympy.Mul(*(a for a in product.args if a.free_symbols))

    return expr.replace(lambda e: isinstance(e, sympy.Mul), fold)


def cheap_to_simplify(expr: sympy.Expr, max_ops: int = 30) -> bool:
    """Small, with no trigonometric or hyperbolic functions and no high powers: ``sympy.simplify`` of
    ``tan(... atan(...) ...)`` of 22 operations was measured at over 4 minutes, its ``trigsimp`` ran for over a
    minute on a ``tanh``, and a leaf snapped to ``(4.5*u - 29)**(-59)`` (Feynman I.32.17) stalled it."""
    simple = {sympy.exp, sympy.log, sympy.Abs, sympy.sign}
    return (sympy.count_ops(expr) <= max_ops and all(type(f) in simple for f in expr.atoms(sympy.Function))
            and not has_high_powers(expr))  # fmt: skip


def has_high_powers(expr: sympy.Expr, max_power: int = 8, max_digits: int = 15) -> bool:
    """Does ``expr`` raise a sum to an integer power above ``max_power``, or hold a number of more than
    ``max_digits`` digits? Expanding such a formula, as simplification and `sympy.together` do, explodes."""
    powers = (p for p in expr.atoms(sympy.Pow) if p.exp.is_Integer and p.base.is_Add)
    numbers = (max(abs(r.p), abs(r.q)) for r in expr.atoms(sympy.Rational))
    return any(abs(int(p.exp)) > max_power for p in powers) or any(n >= 10**max_digits for n in numbers)


def _writable(expr: sympy.Expr) -> bool:
    """Does ``expr`` use only the functions of `extract.formula.FUNCTIONS` (what a formula file holds)?"""
    allowed = set(FUNCTIONS.values())
    return all(type(f) in allowed for f in expr.atoms(sympy.Function))


def _constant(expr: sympy.Expr) -> bool:
    return not expr.free_symbols


def equivalent_up_to_constant(found: sympy.Expr, truth: sympy.Expr) -> bool:
    """Does ``found - truth`` or ``found / truth`` (non-zero) simplify to a constant in some common form?

    The forms tried: both canonical (:func:`canonical_form`); both rewritten with ``exp`` only
    (``tanh``, ``cosh``, ... become exponentials); as written. Formulas over
    ``MAX_OPS`` operations count as not equivalent.
    """
    if sympy.count_ops(found) > MAX_OPS or sympy.count_ops(truth) > MAX_OPS or has_high_powers(found):
        return False
    forms = [
        (canonical_form(found), canonical_form(truth)),
        (found.rewrite(sympy.exp), truth.rewrite(sympy.exp)),
        (found, truth),
    ]
    for a, b in forms:
        if _constant(sympy.simplify(a - b)):
            return True
        ratio = sympy.simplify(a / b)
        if _constant(ratio) and ratio != 0:
            return True
    return False
