"""`Surrogate`: a trained student as an interpretable stand-in for its teacher, in the features' units.

    surrogate = Surrogate.from_run("runs/demo/loan", "decision")
    surrogate.predict({"age": [40], "income": [70], "debt": [10], "gender": ["female"]})  # (1, out)
    surrogate.formula()   # sympy, from formulas/decision.json (never parsed as code)
    surrogate.explain(features)  # per-feature contributions

Features may be a dict of columns or anything DataFrame-like (``frame[name]`` gives a column).
`explain` attributes a prediction to each feature as the change when that feature alone is moved
to its baseline (the middle of a numeric range, the first category); for an additive student these
contributions are exact and sum, with the baseline's prediction, to the prediction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import sympy
import torch

from distill.formula import from_tree
from distill.train import StudentSpec
from students import KAN
from teachers.base import hash_json, hash_tensors
from teachers.schema import CategoricalFeature, FeatureSchema


class Surrogate:
    """A KAN student with its input scaling and output units (``student.json``)."""

    def __init__(self, model: KAN, record: dict[str, Any], folder: Path, formula_path: Path | None = None) -> None:
        self.model, self.record, self.folder, self.formula_path = model.eval(), record, folder, formula_path
        self.schema = FeatureSchema.from_dict(record["features"])
        self.low, self.high = np.asarray(record["input_low"]), np.asarray(record["input_high"])
        self.mean, self.std = np.asarray(record["output_mean"]), np.asarray(record["output_std"])

    @classmethod
    def from_folder(cls, folder: str | Path, schema: FeatureSchema | None = None) -> Surrogate:
        folder = Path(folder)
        if not (folder / "student.json").is_file():
            raise FileNotFoundError(f"{folder}: no student.json (not a student folder written by the train stage)")
        record = json.loads((folder / "student.json").read_text())
        if schema is not None and record["features"] != schema.to_dict():
            raise ValueError(f"{folder}: the student was trained on other features than {schema.names}")
        return cls(KAN.from_pretrained(folder), record, folder)

    @classmethod
    def from_run(cls, run: str | Path, name: str) -> Surrogate:
        """The student ``name`` of a run folder, with its formula when the extract stage has run."""
        run = Path(run)
        folder = run / "train" / "students" / name
        if not folder.is_dir():
            found = sorted(p.name for p in (run / "train" / "students").glob("*")) if (run / "train").is_dir() else []
            raise FileNotFoundError(f"{run}: no student {name!r}; the run has {found}")
        surrogate = cls.from_folder(folder)
        formula = run / "formulas" / f"{name}.json"
        surrogate.formula_path = formula if formula.is_file() else None
        return surrogate

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def outputs(self) -> list[str]:
        return StudentSpec(self.name, tuple(self.record["targets"]), kind=self.record["kind"]).output_names

    def digest(self) -> str:
        """A hash of the weights and the scaling record (not of file bytes, which hold a save time)."""
        return hash_json({"weights": hash_tensors(self.model.state_dict()), "record": self.record})

    def encode(self, features: Any) -> np.ndarray:
        """Named features (a dict of columns or a DataFrame-like) -> ``(rows, n_features)`` numbers."""
        columns = {}
        for name in self.schema.names:
            try:
                column = features[name]
            except (KeyError, IndexError, TypeError) as err:
                raise KeyError(f"features lack {name!r}; the student needs {self.schema.names}") from err
            column = column.tolist() if hasattr(column, "tolist") else column
            columns[name] = list(column) if isinstance(column, list | tuple) else [column]
        return self.schema.encode(columns)

    def predict_encoded(self, x: np.ndarray) -> np.ndarray:
        """``(rows, n_features)`` encoded features -> ``(rows, out)`` predictions in the target's units."""
        scaled = torch.as_tensor(2 * (x - self.low) / (self.high - self.low) - 1, dtype=torch.float32)
        with torch.no_grad():
            y = self.model(scaled).double().numpy()
        return y * self.std + self.mean

    def predict(self, features: Any) -> np.ndarray:
        """Predictions ``(rows, out)``: scalar targets, or a label set's log-odds against its last label."""
        return self.predict_encoded(self.encode(features))

    def baseline(self) -> np.ndarray:
        """The reference input of `explain`: the middle of each numeric range, each feature's first category."""
        return np.asarray([0.0 if isinstance(f, CategoricalFeature) else (f.low + f.high) / 2
                           for f in self.schema.features])  # fmt: skip

    def explain(self, features: Any) -> dict[str, np.ndarray]:
        """Per feature ``(rows, out)``: the prediction minus the prediction with that feature at its baseline."""
        x = self.encode(features)
        full = self.predict_encoded(x)
        base = self.baseline()
        contributions = {}
        for j, name in enumerate(self.schema.names):
            moved = x.copy()
            moved[:, j] = base[j]
            contributions[name] = full - self.predict_encoded(moved)
        return contributions

    def formula(self) -> list[sympy.Expr] | sympy.Expr:
        """The extracted formula (one per output; a single expression for a single output)."""
        if self.formula_path is None:
            raise FileNotFoundError(f"no formula for student {self.name!r}: run the extract stage first")
        record = json.loads(self.formula_path.read_text())
        expressions = [from_tree(item["tree"], record["features"], path=f"{self.formula_path.name}:{item['target']}")
                       for item in record["outputs"]]  # fmt: skip
        return expressions[0] if len(expressions) == 1 else expressions

    def __repr__(self) -> str:
        return f"Surrogate({self.name!r}: {self.schema.names} -> {self.outputs})"
