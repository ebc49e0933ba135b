"""The symbolic library: the 1-D functions an edge can be fixed to, in torch and in sympy.

Each :class:`Symbol` pairs a torch function (used in training, so it must be finite and
differentiable on the whole real line) with the sympy function that it equals on its natural
domain, and a complexity that extraction trades against fit quality. Functions with a singular
point (``1/x``, ``log``, ``sqrt``) are made safe in torch by keeping their argument ``EPS`` away
from it; the sympy form is the textbook one.

The default library is read-only; to add entries, build a new one:
``SymbolLibrary({**DEFAULT_SYMBOLS, "cosh": Symbol("cosh", torch.cosh, sympy.cosh, 4)})``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import sympy
import torch

EPS = 1e-4


@dataclass(frozen=True)
class Symbol:
    """One library entry: ``torch_fn`` and ``sympy_fn`` compute the same 1-D function."""

    name: str
    torch_fn: Callable[[torch.Tensor], torch.Tensor]
    sympy_fn: Callable[[sympy.Expr], sympy.Expr]
    complexity: int


def _away_from_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() < EPS, torch.where(x < 0, -EPS, EPS), x)


def _inverse(x: torch.Tensor) -> torch.Tensor:
    return 1 / _away_from_zero(x)


def _inverse_square(x: torch.Tensor) -> torch.Tensor:
    return 1 / _away_from_zero(x) ** 2


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(EPS).sqrt()


def _log(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(EPS).log()


def _tan(x: torch.Tensor) -> torch.Tensor:
    return torch.tan(x.clamp(-1.5, 1.5))


def _arcsin(x: torch.Tensor) -> torch.Tensor:
    return torch.arcsin(x.clamp(-1 + EPS, 1 - EPS))


def _signed_sqrt(x: torch.Tensor) -> torch.Tensor:
    return x.sign() * x.abs().clamp_min(EPS).sqrt()


def _signed_power(power: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return x.sign() * x.abs().clamp_min(EPS) ** power

    fn.__name__ = f"signed_power_{power}"
    return fn


def _sympy_signed_power(power: sympy.Rational) -> Callable[[sympy.Expr], sympy.Expr]:
    return lambda x: sympy.sign(x) * sympy.Abs(x) ** power


_ENTRIES = [
    Symbol("0", torch.zeros_like, lambda x: sympy.Integer(0), 0),
    Symbol("x", lambda x: x, lambda x: x, 1),
    Symbol("x^2", torch.square, lambda x: x**2, 2),
    Symbol("x^3", lambda x: x**3, lambda x: x**3, 3),
    Symbol("x^4", lambda x: x**4, lambda x: x**4, 3),
    Symbol("1/x", _inverse, lambda x: 1 / x, 2),
    Symbol("1/x^2", _inverse_square, lambda x: x**-2, 2),
    Symbol("sqrt", _sqrt, sympy.sqrt, 2),
    Symbol("exp", torch.exp, sympy.exp, 2),
    Symbol("log", _log, sympy.log, 2),
    Symbol("sin", torch.sin, sympy.sin, 2),
    Symbol("cos", torch.cos, sympy.cos, 2),
    Symbol("tan", _tan, sympy.tan, 3),
    Symbol("tanh", torch.tanh, sympy.tanh, 3),
    Symbol("sigmoid", torch.sigmoid, lambda x: 1 / (1 + sympy.exp(-x)), 3),
    Symbol("arctan", torch.arctan, sympy.atan, 3),
    Symbol("arcsin", _arcsin, sympy.asin, 4),
    Symbol("abs", torch.abs, sympy.Abs, 3),
    Symbol("gaussian", lambda x: torch.exp(-(x**2)), lambda x: sympy.exp(-(x**2)), 3),
    Symbol("signed_sqrt", _signed_sqrt, _sympy_signed_power(sympy.Rational(1, 2)), 3),
    Symbol("signed_x^1.5", _signed_power(1.5), _sympy_signed_power(sympy.Rational(3, 2)), 3),
]


class SymbolLibrary(Mapping[str, Symbol]):
    """A read-only, ordered mapping from name to :class:`Symbol`.

    The order fixes each symbol's index, which is how a KAN stores an edge's function.
    """

    def __init__(self, symbols: Mapping[str, Symbol] | list[Symbol]):
        items = list(symbols.values()) if isinstance(symbols, Mapping) else list(symbols)
        by_name: dict[str, Symbol] = {}
        for symbol in items:
            if symbol.name in by_name:
                raise ValueError(f"symbol library: duplicate name {symbol.name!r}")
            by_name[symbol.name] = symbol
        self._symbols = MappingProxyType(by_name)
        self._index = {name: i for i, name in enumerate(by_name)}

    def __getitem__(self, name: str) -> Symbol:
        try:
            return self._symbols[name]
        except KeyError:
            raise KeyError(f"unknown symbol {name!r}; the library has {list(self._symbols)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._symbols)

    def __len__(self) -> int:
        return len(self._symbols)

    def index(self, name: str) -> int:
        """Position of ``name`` in the library (raises ``KeyError`` naming the library if absent)."""
        self[name]
        return self._index[name]

    def names(self) -> list[str]:
        return list(self._symbols)


DEFAULT_SYMBOLS = SymbolLibrary(_ENTRIES)
