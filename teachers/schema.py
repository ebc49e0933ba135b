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

Batch = Mapping[str, Sequence[Any]]


class SchemaError(ValueError):
    """An input that does not fit the schema; the message names the feature and the value."""


@dataclass(frozen=True)
class NumericFeature:
    """A number in ``[low, high]``; ``integer`` features are rounded and written without decimals."""

    name: str
    low: float
    high: float
    integer: bool = False

    def __post_init__(self) -> None:
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
        object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise SchemaError(f"feature {self.name!r}: expected at least two distinct values, got {self.values}")

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
        if not names:
            raise SchemaError("a feature schema needs at least one feature")
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
        features: list[Feature] = []
        for i, item in enumerate(items):
            where = f"features[{i}]"
            if not isinstance(item, Mapping) or "name" not in item:
                raise SchemaError(f"{where}: expected a mapping with a 'name', got {item!r}")
            kind = item.get("kind", "categorical" if "values" in item else "numeric")
            if kind == "numeric":
                extra = set(item) - {"name", "kind", "low", "high", "integer"}
                if extra or "low" not in item or "high" not in item:
                    raise SchemaError(f"{where} ({item['name']}): numeric features take name, low, high, integer")
                features.append(NumericFeature(str(item["name"]), float(item["low"]), float(item["high"]),
                                               bool(item.get("integer", False))))  # fmt: skip
            elif kind == "categorical":
                extra = set(item) - {"name", "kind", "values"}
                if extra or not isinstance(item.get("values"), Sequence) or isinstance(item.get("values"), str):
                    raise SchemaError(f"{where} ({item['name']}): categorical features take name and a list of values")
                features.append(CategoricalFeature(str(item["name"]), tuple(str(v) for v in item["values"])))
            else:
                raise SchemaError(f"{where}.kind: expected 'numeric' or 'categorical', got {kind!r}")
        return cls(tuple(features))
