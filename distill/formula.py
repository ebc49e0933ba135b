"""Formulas as data: sympy expressions <-> JSON trees of allow-listed nodes, and a safe text parser.

A formula file never holds code. Each node is one of

    {"num": 1.5}                       a float (or an int)
    {"rational": [1, 3]}               an exact fraction
    {"const": "pi"}                    pi or E
    {"var": "income"}                  a feature, which must be declared in the file
    {"op": "add" | "mul" | "pow", "args": [...]}
    {"fn": "exp", "args": [...]}       a function from :data:`FUNCTIONS`

and is rebuilt into sympy by calling sympy's constructors, so loading never passes a string to
``eval``, ``sympify`` or ``parse_expr``. :func:`parse_formula` reads infix text (such as the AI
Feynman table's formulas) through Python's ``ast`` parser and the same allowlist.
"""

from __future__ import annotations

import ast
import math
import numbers
from collections.abc import Iterable

import sympy

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


class FormulaError(ValueError):
    """A formula tree or text that is malformed or names something outside the allowlist."""


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
    for op, cls in (("add", sympy.Add), ("mul", sympy.Mul), ("pow", sympy.Pow)):
        if isinstance(expr, cls):
            return {"op": op, "args": [to_tree(a) for a in expr.args]}
    if expr.func in _SYMPY_TO_NAME:
        return {"fn": _SYMPY_TO_NAME[expr.func], "args": [to_tree(a) for a in expr.args]}
    raise FormulaError(f"cannot store {type(expr).__name__} node {expr}: not in the formula allowlist")


def from_tree(node: object, variables: Iterable[str], path: str = "formula") -> sympy.Expr:
    """Rebuild a sympy expression from a tree, checking every node; ``variables`` are the allowed names."""
    allowed = set(variables)
    return _build(node, allowed, path)


def _build(node: object, allowed: set[str], path: str) -> sympy.Expr:
    if not isinstance(node, dict) or len(node) not in (1, 2):
        raise FormulaError(f"{path}: expected a node object, got {node!r:.80}")
    if "num" in node:
        value = node["num"]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise FormulaError(f"{path}.num: expected a finite number, got {value!r:.80}")
        return sympy.Integer(value) if isinstance(value, int) else sympy.Float(value)
    if "rational" in node:
        pq = node["rational"]
        if not (isinstance(pq, list) and len(pq) == 2 and all(type(v) is int for v in pq) and pq[1] != 0):
            raise FormulaError(f"{path}.rational: expected [p, q] with integers and q != 0, got {pq!r:.80}")
        return sympy.Rational(pq[0], pq[1])
    if "const" in node:
        if node["const"] not in _CONSTANTS:
            raise FormulaError(f"{path}.const: expected one of {sorted(_CONSTANTS)}, got {node['const']!r:.80}")
        return _CONSTANTS[node["const"]]
    if "var" in node:
        name = node["var"]
        if name not in allowed:
            raise FormulaError(f"{path}.var: unknown feature {name!r:.80}; declared: {sorted(allowed)}")
        return sympy.Symbol(name, real=True)
    args = node.get("args")
    if not isinstance(args, list) or not args:
        raise FormulaError(f"{path}.args: expected a non-empty list, got {args!r:.80}")
    built = [_build(a, allowed, f"{path}.args[{i}]") for i, a in enumerate(args)]
    if "op" in node:
        op = node["op"]
        if op == "add":
            return sympy.Add(*built)
        if op == "mul":
            return sympy.Mul(*built)
        if op == "pow" and len(built) == 2:
            return sympy.Pow(*built)
        raise FormulaError(f"{path}.op: expected add, mul or pow (with 2 args), got {op!r:.80}")
    if "fn" in node:
        name = node["fn"]
        if name not in FUNCTIONS:
            raise FormulaError(f"{path}.fn: unknown function {name!r:.80}; allowed: {sorted(FUNCTIONS)}")
        return FUNCTIONS[name](*built)
    raise FormulaError(f"{path}: a node needs one of num, rational, const, var, op, fn; got keys {sorted(node)}")


def parse_formula(text: str, variables: Iterable[str]) -> sympy.Expr:
    """Parse infix text such as ``"exp(-theta**2/2)/sqrt(2*pi)"`` into sympy, without evaluating it.

    Python's ``ast`` parses the text (it executes nothing); only numbers, the declared
    ``variables``, ``pi``, ``E``, ``+ - * / **`` and the allow-listed functions are accepted.
    """
    allowed = set(variables)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise FormulaError(f"cannot parse formula {text!r:.120}: {err.msg}") from None
    return _from_ast(tree.body, allowed, text)


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


def _from_ast(node: ast.AST, allowed: set[str], text: str) -> sympy.Expr:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return sympy.Integer(node.value) if isinstance(node.value, int) else sympy.Float(node.value)
    if isinstance(node, ast.Name):
        if node.id in allowed:
            return sympy.Symbol(node.id, real=True)
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise FormulaError(f"formula {text!r:.120}: unknown name {node.id!r}; declared: {sorted(allowed)}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_from_ast(node.left, allowed, text), _from_ast(node.right, allowed, text))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _from_ast(node.operand, allowed, text)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        name = _TEXT_ALIASES.get(node.func.id, node.func.id)
        if name in FUNCTIONS:
            return FUNCTIONS[name](*(_from_ast(a, allowed, text) for a in node.args))
        raise FormulaError(f"formula {text!r:.120}: unknown function {node.func.id!r}; allowed: {sorted(FUNCTIONS)}")
    raise FormulaError(f"formula {text!r:.120}: unsupported syntax {ast.dump(node)[:60]}")
