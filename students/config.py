"""`KANConfig`: everything needed to rebuild a KAN's shape, checked field by field (it may come from a file)."""

from __future__ import annotations

import reprlib
import sys
from dataclasses import asdict, dataclass, field
from typing import NoReturn

from kandistill.students.symbols import DEFAULT_SYMBOLS


@dataclass
class KANConfig:
    """Everything needed to rebuild a KAN's shape; stored as ``config.json``."""

    width: list[int]
    grid: int = 5
    k: int = 3
    ensemble: int = 1
    grid_range: tuple[float, float] = (-1.0, 1.0)
    noise_scale: float = 0.3
    base_scale: float = 1.0
    seed: int | None = None
    compiled_basis: bool = False
    symbols: list[str] = field(default_factory=lambda: DEFAULT_SYMBOLS.names())

    def __post_init__(self) -> None:
        # A config may come from a file: check every field's type before anything is built from it.
        # bool is an int subclass, so ``True`` would pass for a width of 1 without the explicit test.
        width = self.width
        if not isinstance(width, (list, tuple)) or len(width) < 2 or not all(_is_int(w) and w >= 1 for w in width):
            _refuse("width", "a list of at least two positive integers", width)
        self.width = list(self.width)
        for name in ("grid", "k", "ensemble"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                _refuse(name, "a positive integer", value)
        if not (
            isinstance(self.grid_range, (list, tuple))
            and len(self.grid_range) == 2
            and all(map(_is_finite, self.grid_range))
            and self.grid_range[0] < self.grid_range[1]
        ):
            _refuse("grid_range", "(low, high): finite numbers with low < high", self.grid_range)
        self.grid_range = tuple(self.grid_range)
        for name in ("noise_scale", "base_scale"):
            if not _is_finite(getattr(self, name)):
                _refuse(name, "a finite number", getattr(self, name))
        if self.seed is not None and not (_is_int(self.seed) and -(2**63) <= self.seed < 2**63):
            _refuse("seed", "null or an integer in [-2**63, 2**63)", self.seed)
        if not isinstance(self.compiled_basis, bool):
            _refuse("compiled_basis", "true or false", self.compiled_basis)
        if not isinstance(self.symbols, list) or not all(isinstance(s, str) for s in self.symbols):
            _refuse("symbols", "a list of symbol names", self.symbols)
        if len(set(self.symbols)) != len(self.symbols):
            _refuse("symbols", "distinct names", self.symbols)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    """A real number within float range (``math.isfinite`` would overflow on a 400-digit int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _refuse(field: str, expected: str, value: object) -> NoReturn:
    """Raise the config error; ``reprlib`` keeps a 200,000-entry list from flooding the message."""
    raise ValueError(f"KAN {field}: expected {expected}, got {reprlib.repr(value)}")
