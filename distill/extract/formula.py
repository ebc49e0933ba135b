"""Formulas as data: sympy expressions <-> JSON trees of allow-listed nodes, a safe text parser, a safe evaluator.

A formula file never holds code. Each node is one of

    {"num": 1.5}                       a float (or an int)
    {"rational": [1, 3]}               an exact fraction
    {"const": "pi"}                    pi or E
    {"var": "income"}                  a feature, which must be declared in the file
    {"op": "add" | "mul" | "pow", "args": [...]}
    {"fn": "exp", "args": [...]}       a function from :data:`FUNCTIONS`, of one argument
    {"indicator": ["region", "north"]} 1 where a categorical feature takes that value, else 0

and is rebuilt into sympy by calling sympy's constructors, so loading never passes a string to
``eval``, ``sympify`` or ``parse_expr``. :func:`parse_formula` reads infix text (such as the AI
Feynman table's formulas) through Python's ``ast`` parser and the same allowlist.

Sympy computes with exact numbers as it builds (``10**10000000000`` would be computed), and
``sympy.N`` of a huge constant such as ``exp(exp(exp(10)))`` never ends, so a file could hang a
reader. Reading is therefore bounded: depth, node count, the size of constants and exponents, and the
size of any exact number the arithmetic may produce are checked *before* each node is built, and every
constant part of the result must be a finite real number within :data:`MAX_FLOAT`. Variables must be
plain identifiers (`kandistill.teachers.names.check_identifier`). :func:`evaluate` computes a formula with numpy
by walking it, so no source code is generated from a formula (as ``sympy.lambdify`` does).
"""

from __future__ import annotations

import ast
import json
import math
import numbers
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import reduce
from pathlib import Path

import numpy as np
import sympy
from sympy.core.symbol import Str

from kandistill.teachers.names import InvalidNameError, check_identifier
from kandistill.teachers.schema import MAX_VALUE_CHARS

FUNCTIONS: dict[str, type[sympy.Function]] = {
    "exp": sympy.exp,
    "log": sympy.log,
    "sqrt": sympy.sqrt,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "tanh": sympy.tanh,
    "asin": sympy.asin,
    "acos": sympy.acos,
    "atan": sympy.atan,
    "abs": sympy.Abs,
    "sign": sympy.sign,
}
_SYMPY_TO_NAME = {fn: name for name, fn in FUNCTIONS.items() if name != "sqrt"}
_TEXT_ALIASES = {"ln": "log", "arcsin": "asin", "arccos": "acos", "arctan": "atan", "Abs": "abs"}
_CONSTANTS = {"pi": sympy.pi, "E": sympy.E}

MAX_DEPTH = 64  # nesting of a tree, or of a text formula's syntax
MAX_NODES = 10_000  # nodes of one tree, text formula or file (building costs about 0.1 to 1 ms a node)
MAX_TEXT = 10_000  # characters of a text formula
MAX_INTEGER = 10**15  # an integer's magnitude, and a fraction's numerator and denominator
MAX_FLOAT = 1e300  # a float's magnitude, and that of every constant part of a formula
MAX_EXPONENT = 64  # a constant exponent's magnitude, and a fractional exponent's numerator and denominator
MAX_EXACT_BITS = 4096  # bound on the size (bits of numerator + denominator) of any exact number sympy may compute
MAX_FILE_BYTES = 1 << 22  # a formula file


class FormulaError(ValueError):
    """A formula tree or text that is malformed or names something outside the allowlist."""


class Indicator(sympy.Function):
    """``[feature = value]``: 1 where the categorical ``feature`` takes ``value``, 0 elsewhere.

    Build it with :func:`indicator`; its arguments are the feature's symbol and the value as a
    ``sympy.Str`` (a name, not a symbol: it adds no free symbol).
    """

    nargs = 2
    is_real = True
    is_nonnegative = True

    @classmethod
    def eval(cls, feature, value):
        if not isinstance(feature, sympy.Symbol) or not isinstance(value, Str):
            raise TypeError("Indicator takes a feature symbol and a sympy.Str value")
        return None

    @property
    def feature(self) -> str:
        return self.args[0].name

    @property
    def value(self) -> str:
        return self.args[1].name

    def _sympystr(self, printer) -> str:
        return f"[{self.feature} = {self.value}]"

    def _latex(self, printer, exp=None) -> str:
        text = rf"\left[{printer._print(self.args[0])} = \text{{{_latex_text(self.value)}}}\right]"
        return text if exp is None else f"{text}^{{{printer._print(exp)}}}"


def indicator(feature: str, value: str) -> Indicator:
    """``[feature = value]`` as sympy (the feature's symbol is real, like every feature's)."""
    return Indicator(sympy.Symbol(feature, real=True), Str(value))


def _latex_text(text: str) -> str:
    """``text`` safe inside LaTeX's ``\\text{}``."""
    special = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "%": r"\%", "&": r"\&",
               "#": r"\#", "$": r"\$", "^": r"\^{}", "~": r"\~{}"}  # fmt: skip
    return "".join(special.get(ch, ch) for ch in text)


def to_tree(expr: sympy.Expr) -> dict:
    """A JSON-ready tree of ``expr`` (raises :class:`FormulaError` on a node outside the allowlist)."""
    if isinstance(expr, sympy.Integer):
        return {"num": int(expr)}
    if isinstance(expr, sympy.Rational):
        return {"rational": [int(expr.p), int(expr.q)]}
    if isinstance(expr, sympy.Float):
        return {"num": float(expr)}
    if expr is sympy.pi or expr is sympy.E:
        return {"const": str(expr)}
    if isinstance(expr, sympy.Symbol):
        return {"var": expr.name}
    if isinstance(expr, Indicator):
        return {"indicator": [expr.feature, expr.value]}
    for op, cls in (("add", sympy.Add), ("mul", sympy.Mul), ("pow", sympy.Pow)):
        if isinstance(expr, cls):
            return {"op": op, "args": [to_tree(a) for a in expr.args]}
    if expr.func in _SYMPY_TO_NAME:
        return {"fn": _SYMPY_TO_NAME[expr.func], "args": [to_tree(a) for a in expr.args]}
    raise FormulaError(f"cannot store {type(expr).__name__} node {expr}: not in the formula allowlist")


def rounded(expr: sympy.Expr, digits: int = 4) -> sympy.Expr:
    """``expr`` with every float rounded to ``digits`` significant digits, for display (``sympy.N`` leaves
    the floats inside a function's argument as they are)."""
    return expr.xreplace({f: sympy.Float(f, digits) for f in expr.atoms(sympy.Float)})


def check_variables(names: object, where: str) -> list[str]:
    """``names`` if it is a list of distinct plain identifiers (the only names that become symbols)."""
    if not isinstance(names, list | tuple):
        raise FormulaError(f"{where}: expected a list of feature names, got {_show(names)}")
    try:
        checked = [check_identifier(name, f"{where}[{k}]") for k, name in enumerate(names)]
    except InvalidNameError as err:
        raise FormulaError(str(err)) from None
    if len(set(checked)) != len(checked):
        raise FormulaError(f"{where}: duplicate names {sorted({n for n in checked if checked.count(n) > 1})}")
    return checked


def read_json(path: Path) -> object:
    """The JSON data of a formula file, or :class:`FormulaError` naming the file (bounded in size; missing
    files raise `FileNotFoundError`)."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise FormulaError(f"{path}: larger than {MAX_FILE_BYTES} bytes, not a formula file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSON syntax, bad UTF-8, an integer beyond Python's digit limit
        raise FormulaError(f"{path}: not valid JSON ({str(err)[:200]})") from None


def check_score(value: object, where: str) -> float:
    """A score read from a file: a JSON number (not a bool, null or string). NaN and infinities are kept: the
    fidelity code writes them (an R^2 against a constant teacher is NaN, a failed fit scores -inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormulaError(f"{where}: expected a number, got {_show(value)}")
    return float(value)


def check_scores(value: object, where: str) -> dict[str, float]:
    """``{metric: score}`` read from a file, each checked by `check_score`."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise FormulaError(f"{where}: expected an object of named scores, got {_show(value)}")
    return {k: check_score(v, f"{where}.{k}") for k, v in value.items()}


def from_tree(node: object, variables: Iterable[str], path: str = "formula") -> sympy.Expr:
    """Rebuild a sympy expression from a tree, checking every node; ``variables`` are the allowed names.

    Raises :class:`FormulaError` naming the node's path for anything malformed, unknown or out of bounds.
    """
    return from_trees([(path, node)], variables)[0]


def from_trees(trees: Sequence[tuple[str, object]], variables: Iterable[str]) -> list[sympy.Expr]:
    """`from_tree` of each ``(path, tree)`` of one file: the trees share :data:`MAX_NODES`, so that
    reading a file is bounded however many formulas it holds."""
    builder = _Builder(check_variables(list(variables), f"{trees[0][0] if trees else 'formula'}: variables"))
    return [builder.tree(node, path, 0).expr for path, node in trees]


def parse_formula(text: str, variables: Iterable[str]) -> sympy.Expr:
    """Parse infix text such as ``"exp(-theta**2/2)/sqrt(2*pi)"`` into sympy, without evaluating it.

    Python's ``ast`` parses the text (it executes nothing); only numbers, the declared
    ``variables``, ``pi``, ``E``, ``+ - * / **`` and the allow-listed functions are accepted,
    within the same bounds as :func:`from_tree`.
    """
    where = f"formula {str(text)[:120]!r}"
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise FormulaError(f"{where}: expected text of at most {MAX_TEXT} characters")
    builder = _Builder(check_variables(list(variables), f"{where}: variables"))
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise FormulaError(f"{where}: cannot parse ({err.msg})") from None
    except (ValueError, RecursionError, MemoryError) as err:  # null bytes, huge literals, deep nesting
        raise FormulaError(f"{where}: cannot parse ({type(err).__name__})") from None
    return builder.text(tree.body, where, 0).expr


def evaluate(
    formula: sympy.Expr | dict,
    features: Sequence[str],
    x: np.ndarray | Mapping[str, Sequence],
    categories: Mapping[str, Sequence[str]] | None = None,
) -> np.ndarray:
    """A formula (sympy, or a tree) of the named ``features`` at each row of ``x`` -> ``(rows,)``.

    ``x`` is ``(rows, n)`` numbers (a categorical feature as its code: the index of its value in
    ``categories[feature]``, which `Indicator` nodes need), or a mapping from feature name to a column
    of raw values (category strings included). Walks the expression with numpy, so that no source code
    is generated (``sympy.lambdify`` writes symbol names into Python source): safe whatever the names
    are. Float64; NaN or inf where the formula is undefined or overflows. Raises :class:`FormulaError`
    on a node it cannot compute, or an indicator of a value the feature does not have.
    """
    if isinstance(formula, dict):
        formula = from_tree(formula, features)
    if isinstance(x, Mapping):
        missing = [name for name in features if name not in x]
        if missing:
            raise FormulaError(f"evaluate: no column for {missing}; the formula's features are {list(features)}")
        columns = {name: _column(x[name]) for name in features}
        rows = len(next(iter(columns.values()))) if columns else 0
        if any(len(c) != rows for c in columns.values()):
            raise FormulaError(f"evaluate: columns of different lengths {[len(c) for c in columns.values()]}")
    else:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(features):
            raise FormulaError(
                f"evaluate: x has shape {x.shape}, expected (rows, {len(features)}) for {list(features)}"
            )
        columns, rows = {name: x[:, k] for k, name in enumerate(features)}, x.shape[0]
    if isinstance(formula, numbers.Real):
        formula = sympy.Float(formula)
    with np.errstate(all="ignore"):
        value = _walk(formula, columns, {}, categories or {})
    return np.array(np.broadcast_to(np.asarray(value, dtype=np.float64), (rows,)))


def _column(values: Sequence) -> np.ndarray:
    """A raw column: float64 for numbers, an object array for category strings."""
    array = np.asarray(values.tolist() if hasattr(values, "tolist") else list(values), dtype=object).reshape(-1)
    if all(isinstance(v, str) for v in array):
        return array
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError):
        raise FormulaError(f"evaluate: a column mixes numbers and text: {_show(list(array[:3]))}") from None


def _indicator(node: Indicator, columns: dict[str, np.ndarray], categories: Mapping[str, Sequence[str]]) -> np.ndarray:
    """``[feature = value]`` on a column of raw strings, or of codes into ``categories[feature]``."""
    column = columns[node.feature]
    if column.dtype == object:
        return (column == node.value).astype(np.float64)
    values = list(categories.get(node.feature, ()))
    if node.value not in values:
        raise FormulaError(f"evaluate: [{node.feature} = {node.value}] needs the feature's category values "
                           f"(got {values[:10]}), or its column as strings")  # fmt: skip
    return (column == values.index(node.value)).astype(np.float64)


_NON_FINITE = {sympy.nan: math.nan, sympy.zoo: math.nan, sympy.oo: math.inf, -sympy.oo: -math.inf}
_NUMPY: dict[type, Callable[[np.ndarray], np.ndarray]] = {
    sympy.exp: np.exp,
    sympy.log: np.log,
    sympy.sin: np.sin,
    sympy.cos: np.cos,
    sympy.tan: np.tan,
    sympy.tanh: np.tanh,
    sympy.asin: np.arcsin,
    sympy.acos: np.arccos,
    sympy.atan: np.arctan,
    sympy.Abs: np.abs,
    sympy.sign: np.sign,
    # not stored in trees, but sympy's simplification produces them in extracted formulas
    sympy.sinh: np.sinh,
    sympy.cosh: np.cosh,
    sympy.cot: lambda z: 1 / np.tan(z),
    sympy.sec: lambda z: 1 / np.cos(z),
    sympy.csc: lambda z: 1 / np.sin(z),
    sympy.coth: lambda z: 1 / np.tanh(z),
    sympy.sech: lambda z: 1 / np.cosh(z),
    sympy.csch: lambda z: 1 / np.sinh(z),
    sympy.acot: lambda z: np.arctan(1 / z),
}


def _walk(expr: sympy.Basic, columns: dict[str, np.ndarray], cache: dict, categories: Mapping) -> np.ndarray | float:
    if expr in cache:
        return cache[expr]
    if isinstance(expr, Indicator):
        if expr.feature not in columns:
            raise FormulaError(f"evaluate: the formula uses {expr.feature!r}, not one of the features {list(columns)}")
        value = _indicator(expr, columns, categories)
    elif isinstance(expr, sympy.Symbol):
        if expr.name not in columns:
            raise FormulaError(f"evaluate: the formula uses {expr.name!r}, not one of the features {list(columns)}")
        value = columns[expr.name]
    elif isinstance(expr, sympy.Rational | sympy.Float) or expr is sympy.pi or expr is sympy.E:
        value = _float(expr)
    elif expr in _NON_FINITE:
        value = _NON_FINITE[expr]
    elif isinstance(expr, sympy.Add):
        value = reduce(np.add, (_walk(a, columns, cache, categories) for a in expr.args))
    elif isinstance(expr, sympy.Mul):
        value = reduce(np.multiply, (_walk(a, columns, cache, categories) for a in expr.args))
    elif isinstance(expr, sympy.Pow):
        base, exponent = (_walk(a, columns, cache, categories) for a in expr.args)
        value = np.sqrt(base) if expr.exp == sympy.S.Half else np.power(base, exponent)
    elif type(expr) in _NUMPY and len(expr.args) == 1:
        value = _NUMPY[type(expr)](np.asarray(_walk(expr.args[0], columns, cache, categories), dtype=np.float64))
    else:
        raise FormulaError(f"evaluate: cannot compute {type(expr).__name__} node {_show(expr)}")
    cache[expr] = value
    return value


def _float(number: sympy.Expr) -> float:
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _show(value: object) -> str:
    """A short repr for messages (``repr`` of a huge int raises, of a deep list recurses)."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    try:
        return reprlib.repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


class _Built:
    """A built node: the expression, and a bound on the bits of any exact number sympy may compute in it."""

    __slots__ = ("bits", "expr")

    def __init__(self, expr: sympy.Expr, bits: int) -> None:
        self.expr, self.bits = expr, bits


_FLOATS: dict[type, Callable[[float], float]] = {
    sympy.exp: math.exp,
    sympy.log: math.log,
    sympy.sin: math.sin,
    sympy.cos: math.cos,
    sympy.tan: math.tan,
    sympy.tanh: math.tanh,
    sympy.asin: math.asin,
    sympy.acos: math.acos,
    sympy.atan: math.atan,
    sympy.Abs: abs,
    sympy.sign: lambda v: math.copysign(1.0, v) if v else 0.0,
}


class _Builder:
    """Builds one formula (a tree or parsed text) node by node, within the module's bounds."""

    def __init__(self, variables: list[str]) -> None:
        self.variables = set(variables)
        self.nodes = 0
        self.values: dict[sympy.Basic, float | None] = {}  # each checked sub-expression's value (None: not constant)

    def tree(self, node: object, path: str, depth: int) -> _Built:
        """A JSON tree node (see the module docstring)."""
        self._count(path, depth)
        if not isinstance(node, dict):
            raise FormulaError(f"{path}: expected a node object, got {_show(node)}")
        keys = set(node)
        if keys == {"num"}:
            return self.number(node["num"], f"{path}.num")
        if keys == {"rational"}:
            pq = node["rational"]
            if not (isinstance(pq, list) and len(pq) == 2 and all(type(v) is int for v in pq) and pq[1] != 0):
                raise FormulaError(f"{path}.rational: expected [p, q] with integers and q != 0, got {_show(pq)}")
            if max(abs(pq[0]), abs(pq[1])) > MAX_INTEGER:
                raise FormulaError(f"{path}.rational: p and q must be at most {MAX_INTEGER:.0e} in magnitude")
            return self.check(sympy.Rational(pq[0], pq[1]), abs(pq[0]).bit_length() + abs(pq[1]).bit_length(), path)
        if keys == {"const"}:
            if not isinstance(node["const"], str) or node["const"] not in _CONSTANTS:
                raise FormulaError(f"{path}.const: expected one of {sorted(_CONSTANTS)}, got {_show(node['const'])}")
            return _Built(_CONSTANTS[node["const"]], 0)
        if keys == {"var"}:
            return self.variable(node["var"], f"{path}.var")
        if keys == {"indicator"}:
            pair = node["indicator"]
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)):
                raise FormulaError(
                    f"{path}.indicator: expected [feature, value] with a string value, got {_show(pair)}"
                )
            if not 0 < len(pair[1]) <= MAX_VALUE_CHARS:
                raise FormulaError(f"{path}.indicator[1]: a category value of 1 to {MAX_VALUE_CHARS} characters")
            feature = self.variable(pair[0], f"{path}.indicator[0]")
            return _Built(Indicator(feature.expr, Str(pair[1])), 0)
        if keys in ({"op", "args"}, {"fn", "args"}):
            args = node["args"]
            if not isinstance(args, list) or not args:
                raise FormulaError(f"{path}.args: expected a non-empty list, got {_show(args)}")
            name = node.get("op", node.get("fn"))
            if "op" in node and name not in ("add", "mul", "pow"):
                raise FormulaError(f"{path}.op: expected add, mul or pow (with 2 args), got {_show(name)}")
            if "fn" in node and (not isinstance(name, str) or name not in FUNCTIONS):
                raise FormulaError(f"{path}.fn: unknown function {_show(name)}; allowed: {sorted(FUNCTIONS)}")
            built = [self.tree(a, f"{path}.args[{i}]", depth + 1) for i, a in enumerate(args)]
            return self.apply(name, built, path)
        raise FormulaError(f"{path}: a node needs one of num, rational, const, var, indicator, op+args, fn+args; "
                           f"got keys {_show(sorted(map(str, keys)))}")  # fmt: skip

    def text(self, node: ast.AST, where: str, depth: int) -> _Built:
        """A node of a parsed text formula."""
        path = f"{where} at column {getattr(node, 'col_offset', 0) + 1}"
        self._count(path, depth)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return self.number(node.value, path)
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS and node.id not in self.variables:
                return _Built(_CONSTANTS[node.id], 0)
            return self.variable(node.id, path)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.text(node.operand, where, depth + 1)
            if isinstance(node.op, ast.UAdd):
                return operand
            return self.apply("mul", [_Built(sympy.Integer(-1), 1), operand], path)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div | ast.Pow):
            left, right = self.text(node.left, where, depth + 1), self.text(node.right, where, depth + 1)
            if isinstance(node.op, ast.Sub):
                right = self.apply("mul", [_Built(sympy.Integer(-1), 1), right], path)
            elif isinstance(node.op, ast.Div):
                right = self.apply("pow", [right, _Built(sympy.Integer(-1), 1)], path)
            op = {ast.Add: "add", ast.Sub: "add", ast.Mult: "mul", ast.Div: "mul", ast.Pow: "pow"}[type(node.op)]
            return self.apply(op, [left, right], path)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            name = _TEXT_ALIASES.get(node.func.id, node.func.id)
            if name not in FUNCTIONS:
                raise FormulaError(f"{path}: unknown function {node.func.id!r}; allowed: {sorted(FUNCTIONS)}")
            return self.apply(name, [self.text(a, where, depth + 1) for a in node.args], path)
        raise FormulaError(f"{path}: unsupported syntax {type(node).__name__}")

    def _count(self, path: str, depth: int) -> None:
        self.nodes += 1
        if depth > MAX_DEPTH:
            raise FormulaError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if self.nodes > MAX_NODES:
            raise FormulaError(f"{path}: the formula has more than {MAX_NODES} nodes")

    def number(self, value: object, path: str) -> _Built:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise FormulaError(f"{path}: expected a finite number, got {_show(value)}")
        if isinstance(value, numbers.Integral):
            if abs(int(value)) > MAX_INTEGER:
                raise FormulaError(f"{path}: expected a finite number, and an integer at most {MAX_INTEGER:.0e} in "
                                   f"magnitude, got {_show(int(value))}")  # fmt: skip
            return _Built(sympy.Integer(int(value)), abs(int(value)).bit_length())
        if not (math.isfinite(value) and abs(value) <= MAX_FLOAT):
            raise FormulaError(f"{path}: expected a finite number at most {MAX_FLOAT:g} in magnitude, got {value!r}")
        return _Built(sympy.Float(float(value)), 0)

    def variable(self, name: object, path: str) -> _Built:
        try:
            check_identifier(name, path)
        except InvalidNameError as err:
            raise FormulaError(str(err)) from None
        if name not in self.variables:
            raise FormulaError(f"{path}: unknown feature {name!r}; declared: {sorted(self.variables)}")
        return _Built(sympy.Symbol(name, real=True), 0)

    def apply(self, name: str, args: list[_Built], path: str) -> _Built:
        """``name`` (add, mul, pow or a function) of built ``args``, bounded before sympy computes anything."""
        bits = sum(a.bits for a in args)
        if name in ("add", "mul"):
            constructor: Callable[..., sympy.Expr] = sympy.Add if name == "add" else sympy.Mul
            bits += sum(a.bits > 0 for a in args)  # a carry per exact operand
        elif name == "pow":
            if len(args) != 2:
                raise FormulaError(f"{path}.op: expected add, mul or pow (with 2 args), got pow with {len(args)}")
            bits = self._exponent_bits(args[0], args[1], path)
            constructor = sympy.Pow
        else:
            if len(args) != 1:
                raise FormulaError(f"{path}: {name} takes one argument, got {len(args)}")
            constructor = FUNCTIONS[name]
        if bits > MAX_EXACT_BITS:
            raise FormulaError(f"{path}: its exact constants could grow beyond {MAX_EXACT_BITS} bits "
                               f"(too many or too large integers, fractions or exponents)")  # fmt: skip
        try:
            result = constructor(*(a.expr for a in args))
        except (TypeError, ValueError, ArithmeticError, RecursionError) as err:
            raise FormulaError(f"{path}: sympy cannot build {name} of these arguments ({type(err).__name__})") from None
        return self.check(result, bits, path)

    def _exponent_bits(self, base: _Built, exponent: _Built, path: str) -> int:
        value = self._value(exponent.expr, path)
        if value is not None and abs(value) > MAX_EXPONENT:
            raise FormulaError(f"{path}: a constant exponent must be at most {MAX_EXPONENT} in size, got {value:g}")
        if isinstance(exponent.expr, sympy.Rational):
            p, q = exponent.expr.p, exponent.expr.q
            if q > MAX_EXPONENT:
                raise FormulaError(f"{path}: a fractional exponent's denominator must be at most {MAX_EXPONENT}, "
                                   f"got {q}")  # fmt: skip
            return base.bits * max(abs(p), 1) + exponent.bits
        return base.bits + exponent.bits

    def check(self, expr: sympy.Expr, bits: int, path: str) -> _Built:
        """``expr`` if it is within the allowlist and each constant part is a finite real number."""
        self._value(expr, path)
        return _Built(expr, bits)

    def _value(self, expr: sympy.Basic, path: str) -> float | None:
        """The value of a constant ``expr`` (None if it has a variable); raises unless it is finite, real and
        within :data:`MAX_FLOAT`, or if ``expr`` holds a node outside the allowlist. Memoised: each
        sub-expression is checked once, however often sympy reuses it."""
        if expr in self.values:
            return self.values[expr]
        if isinstance(expr, sympy.Symbol | Indicator):
            value = None
        elif isinstance(expr, sympy.Rational | sympy.Float) or expr is sympy.pi or expr is sympy.E:
            value = _float(expr)
        elif isinstance(expr, sympy.Add | sympy.Mul | sympy.Pow) or (type(expr) in _FLOATS and len(expr.args) == 1):
            parts = [self._value(a, path) for a in expr.args]
            value = None if None in parts else _real(expr, parts)
        else:
            raise FormulaError(f"{path}: evaluates to {_show(expr)}, which is not a finite real formula "
                               f"({type(expr).__name__} is outside the allowlist)")  # fmt: skip
        if value is not None and not (math.isfinite(value) and abs(value) <= MAX_FLOAT):
            raise FormulaError(f"{path}: a constant part evaluates to {value:g}, beyond {MAX_FLOAT:g} or not finite")
        self.values[expr] = value
        return value


def _real(expr: sympy.Basic, parts: list[float]) -> float:
    """The float value of a constant node from its arguments' values; NaN where it is not a real number."""
    try:
        if isinstance(expr, sympy.Add):
            return math.fsum(parts)
        if isinstance(expr, sympy.Mul):
            return math.prod(parts)
        if isinstance(expr, sympy.Pow):
            return math.pow(*parts)
        return _FLOATS[type(expr)](parts[0])
    except OverflowError:
        return math.inf
    except (ValueError, ZeroDivisionError):  # a complex result, or a pole
        return math.nan
