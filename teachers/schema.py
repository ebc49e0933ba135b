"""Feature schemas: the named inputs a teacher answers, with their ranges or category sets.

A batch of inputs is columnar, like a `datasets.Dataset`: ``{feature name: sequence of values}``.
Numeric features carry a closed range and may be integers (a prompt writes ``42``, not ``42.0``);
categorical features carry their allowed values. Students see every feature as a number: a numeric
feature as itself, a categorical one as the index of its value (`FeatureSchema.encode`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kandistill.teachers.names import InvalidNameError, check_identifier

Batch = Mapping[str, Sequence[Any]]


class SchemaError(ValueError):
    """An input that does not fit the schema; the message names the feature and the value."""


MAX_FEATURES = 1000
MAX_VALUES = 1000
MAX_VALUE_CHARS = 200


def _check_name(name: object) -> None:
    try:
        check_identifier(name, "feature name")
    except InvalidNameError as err:
        raise SchemaError(str(err)) from None


@dataclass(frozen=True)
class NumericFeature:
    """A number in ``[low, high]``; ``integer`` features are rounded and written without decimals."""

    name: str
    low: float
    high: float
    integer: bool = False

    def __post_init__(self) -> None:
        _check_name(self.name)
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise SchemaError(
                f"feature {self.name!r}: expected a finite range low < high, got [{self.low}, {self.high}]"
            )

    def check(self, values: Sequence[Any]) -> np.ndarray:
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise SchemaError(f"feature {self.name!r}: expected numbers, got {list(values)[:3]!r}...") from err
        bad = ~np.isfinite(array) | (array < self.low) | (array > self.high)
        if bad.any():
            value = array[np.argmax(bad)]
            raise SchemaError(f"feature {self.name!r}: value {value} is outside its range [{self.low}, {self.high}]")
        if self.integer and np.any(array != np.round(array)):
            value = array[np.argmax(array != np.round(array))]
            raise SchemaError(f"feature {self.name!r}: expected an integer, got {value}")
        return array

    def format(self, value: Any) -> str:
        return str(int(value)) if self.integer else f"{float(value):g}"

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": "numeric", "low": self.low, "high": self.high, "integer": self.integer}


@dataclass(frozen=True)
class CategoricalFeature:
    """One of a fixed, ordered set of strings; its index is what a student sees."""

    name: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name)
        object.__setattr__(self, "values", tuple(self.values))
        long = [v for v in self.values if not isinstance(v, str) or not 0 < len(v) <= MAX_VALUE_CHARS]
        if long:
            raise SchemaError(f"feature {self.name!r}: each value must be a string of 1 to {MAX_VALUE_CHARS} "
                              f"characters, got {str(long[0])[:80]!r}")  # fmt: skip
        if not 2 <= len(self.values) <= MAX_VALUES or len(set(self.values)) != len(self.values):
            raise SchemaError(f"feature {self.name!r}: expected 2 to {MAX_VALUES} distinct values, "
                              f"got {len(self.values)} ({len(set(self.values))} distinct)")  # fmt: skip

    def check(self, values: Sequence[Any]) -> np.ndarray:
        index = {v: i for i, v in enumerate(self.values)}
        for value in values:
            if value not in index:
                raise SchemaError(f"feature {self.name!r}: value {value!r} is not one of {list(self.values)}")
        return np.asarray([index[v] for v in values], dtype=np.float64)

    def format(self, value: Any) -> str:
        return str(value)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": "categorical", "values": list(self.values)}


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True)
class FeatureSchema:
    """The ordered features of a teacher's inputs."""

    features: tuple[Feature, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        names = [f.name for f in self.features]
        if not 0 < len(names) <= MAX_FEATURES:
            raise SchemaError(f"a feature schema needs 1 to {MAX_FEATURES} features, got {len(names)}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SchemaError(f"duplicate feature names: {duplicates}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature {name!r}; the schema has {self.names}")

    def __len__(self) -> int:
        return len(self.features)

    def encode(self, batch: Batch) -> np.ndarray:
        """Check a columnar batch and return it as numbers, ``(batch, n_features)`` float64.

        Raises `SchemaError` naming the first missing, unknown or out-of-range feature and value.
        """
        missing = [n for n in self.names if n not in batch]
        if missing:
            raise SchemaError(f"inputs lack features {missing}; the schema has {self.names}")
        unknown = [n for n in batch if n not in self.names]
        if unknown:
            raise SchemaError(f"inputs have features {unknown} that the schema does not declare ({self.names})")
        lengths = {n: len(batch[n]) for n in self.names}
        if len(set(lengths.values())) != 1:
            raise SchemaError(f"feature columns differ in length: {lengths}")
        columns = [f.check(batch[f.name]) for f in self.features]
        return np.stack(columns, axis=1)

    def encoded_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Each feature's range as encoded, two ``(n_features,)`` arrays: a category's index spans
        ``[0, n_values - 1]``."""
        low = [0.0 if isinstance(f, CategoricalFeature) else f.low for f in self.features]
        high = [len(f.values) - 1.0 if isinstance(f, CategoricalFeature) else f.high for f in self.features]
        return np.asarray(low), np.asarray(high)

    def decode(self, x: np.ndarray) -> dict[str, list]:
        """The inverse of `encode`: numbers ``(batch, n_features)`` back to a columnar batch."""
        batch: dict[str, list] = {}
        for j, feature in enumerate(self.features):
            column = np.asarray(x[:, j])
            if isinstance(feature, CategoricalFeature):
                batch[feature.name] = [feature.values[int(i)] for i in column]
            elif feature.integer:
                batch[feature.name] = [int(v) for v in np.round(column)]
            else:
                batch[feature.name] = [float(v) for v in column]
        return batch

    def to_dict(self) -> list[dict]:
        return [f.to_dict() for f in self.features]

    @classmethod
    def from_dict(cls, items: Sequence[Mapping[str, Any]]) -> FeatureSchema:
        """Build a schema from plain data (a config file's ``features`` list), naming any bad field."""
        if not isinstance(items, Sequence) or isinstance(items, str) or not 0 < len(items) <= MAX_FEATURES:
            raise SchemaError(f"features: expected a list of 1 to {MAX_FEATURES} features")
        return cls(tuple(_feature_from_dict(item, f"features[{i}]") for i, item in enumerate(items)))


def _feature_from_dict(item: Any, where: str) -> Feature:
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise SchemaError(f"{where}: expected a mapping with a 'name', got {str(item)[:80]!r}")
    kind = item.get("kind", "categorical" if "values" in item else "numeric")
    if kind not in ("numeric", "categorical"):
        raise SchemaError(f"{where}.kind: expected 'numeric' or 'categorical', got {str(kind)[:40]!r}")
    where = f"{where} ({item['name'][:40]})"
    if kind == "numeric":
        low, high, integer = item.get("low"), item.get("high"), item.get("integer", False)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
        if set(item) - {"name", "kind", "low", "high", "integer"} or not numbers or not isinstance(integer, bool):
            raise SchemaError(f"{where}: numeric features take name, low and high (numbers), integer (true/false)")
        return NumericFeature(item["name"], low, high, integer)
    values = item.get("values")
    if set(item) - {"name", "kind", "values"} or not isinstance(values, list | tuple):
        raise SchemaError(f"{where}: categorical features take name and a list of values")
    return CategoricalFeature(item["name"], tuple(str(v) if isinstance(v, int | float) else v for v in values))
