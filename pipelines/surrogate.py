"""`Surrogate`: a trained student as an interpretable stand-in for its teacher, in the features' units.

    surrogate = Surrogate.from_run("runs/demo/loan", "decision")
    surrogate.predict({"age": [40], "income": [70], "debt": [10], "gender": ["female"]})  # (1, out)
    surrogate.formula()   # sympy, from formulas/decision.json (never parsed as code)
    surrogate.formula_record()  # the whole checked record: targets, text, LaTeX, fidelity
    surrogate.explain(features)  # per-feature contributions

Features may be a dict of columns or anything DataFrame-like (``frame[name]`` gives a column).
`explain` attributes a prediction to each feature as the change when that feature alone is moved
to its baseline (the middle of a numeric range, the first category); for an additive student these
contributions are exact and sum, with the baseline's prediction, to the prediction.

Every file is checked before use: ``student.json`` by `Surrogate` (`SurrogateError` naming the file
and field), a run's formula record by `read_formula_record` (`FormulaError`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sympy
import torch

from kandistill.distill.extract.components import Component, ComponentModel, raw_column
from kandistill.distill.extract.formula import (
    FormulaError,
    check_scores,
    check_variables,
    evaluate,
    from_trees,
    read_json,
    rounded,
)
from kandistill.distill.train.config import StudentSpec, TrainError
from kandistill.students import KAN
from kandistill.students.scaling import scale_inputs
from kandistill.teachers.hashing import hash_json, hash_tensors
from kandistill.teachers.names import InvalidNameError, check_slug
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, SchemaError


class SurrogateError(ValueError):
    """A student folder whose ``student.json`` is malformed or does not fit its model; names the file and field."""


@dataclass(frozen=True)
class FormulaRecord:
    """A run's ``formulas/STUDENT.json`` (written by the extract stage), checked by `read_formula_record`.

    Per output: ``expressions`` (sympy), ``forms`` (``components``: the constant and symbolic terms of the
    student's components, to which its curves and surfaces are added; ``expression``: one expression for
    the whole output, from ``extract.mode: formula``), ``components`` (a `ComponentModel`, or None when the
    record was read without the feature schema) and ``notes``. ``text`` and ``latex`` are derived here,
    never read from the file, so that what a report shows is what the formula tree holds.
    """

    student: str
    features: tuple[str, ...]
    targets: tuple[str, ...]
    expressions: tuple[sympy.Expr, ...]
    fidelity_vs_teacher: dict[str, float]
    text: tuple[str, ...]
    latex: tuple[str, ...]
    forms: tuple[str, ...] = ()
    components: tuple[ComponentModel | None, ...] = ()
    notes: tuple[str, ...] = ()

    def predict(self, k: int, columns: Any) -> np.ndarray:
        """Output ``k`` of the formula at raw feature columns (category strings included) -> ``(rows,)``."""
        columns = {name: columns[name] for name in self.features}
        total = evaluate(self.expressions[k], list(self.features), columns)
        if self.forms and self.forms[k] == "components":
            model = self.components[k]
            if model is None:
                raise FormulaError(f"{self.student}: reading the components needs the feature schema")
            total = total + sum((c.values_at({n: raw_column(columns[n]) for n in c.features})
                                 for c in model.components if c.expression is None), np.zeros(len(total)))  # fmt: skip
        return total


def _tabulated(model: ComponentModel | None) -> list[str]:
    """The non-symbolic parts of a formula, by name: ``curve(age)``, ``surface(bmi, sex)``."""
    return [] if model is None else [f"{c.kind}({', '.join(c.features)})" for c in model.components
                                     if c.expression is None]  # fmt: skip


def read_formula_record(path: str | Path, features: FeatureSchema | list[str] | None = None) -> FormulaRecord:
    """Read and check a formula record; ``features``, when given, must be exactly the file's features (a
    `FeatureSchema` also checks and reads the components).

    Raises :class:`FormulaError` naming the file and the field (`FileNotFoundError` if there is none).
    """
    path = Path(path)
    schema = features if isinstance(features, FeatureSchema) else None
    features = schema.names if schema is not None else features
    data = read_json(path)
    if not isinstance(data, dict):
        raise FormulaError(f"{path}: expected a formula record (an object), got {type(data).__name__}")
    try:
        student = check_slug(data.get("student"), f"{path}: student")
    except InvalidNameError as err:
        raise FormulaError(str(err)) from None
    names = check_variables(data.get("features"), f"{path}: features")
    if features is not None and names != list(features):
        raise FormulaError(f"{path}: features {names} are not the student's {list(features)}")
    outputs = data.get("outputs")
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
        raise FormulaError(f"{path}: outputs: expected a non-empty list of objects")
    targets = [o.get("target") for o in outputs]
    if not all(isinstance(t, str) and t for t in targets) or len(set(targets)) != len(targets):
        raise FormulaError(f"{path}: outputs: each needs a distinct, non-empty target name, got {targets!r:.200}")
    forms = [o.get("form", "expression") for o in outputs]
    notes = [o.get("note", "") for o in outputs]
    if not all(f in ("components", "expression") for f in forms) or not all(isinstance(n, str) for n in notes):
        raise FormulaError(f"{path}: outputs: form must be 'components' or 'expression', note a string")
    if any(f == "components" and "components" not in o for f, o in zip(forms, outputs, strict=True)):
        raise FormulaError(f"{path}: outputs: a formula of the form 'components' needs its components")
    expressions = from_trees([(f"{path}: outputs[{k}].tree", o.get("tree")) for k, o in enumerate(outputs)], names)
    models = [None if schema is None or "components" not in o
              else ComponentModel.from_json(o["components"], schema, f"{path}: outputs[{k}].components")
              for k, o in enumerate(outputs)]  # fmt: skip
    tails = [_tabulated(m) if f == "components" else [] for m, f in zip(models, forms, strict=True)]
    return FormulaRecord(student, tuple(names), tuple(targets), tuple(expressions),
                         check_scores(data.get("fidelity_vs_teacher"), f"{path}: fidelity_vs_teacher"),
                         tuple(" + ".join([str(rounded(e)), *t]) for e, t in zip(expressions, tails, strict=True)),
                         tuple(" + ".join([sympy.latex(rounded(e), mul_symbol="dot"),
                                           *(rf"\operatorname{{{x.split('(')[0]}}}({_latex_names(x)})" for x in t)])
                               for e, t in zip(expressions, tails, strict=True)),
                         tuple(forms), tuple(models), tuple(notes))  # fmt: skip


def _latex_names(tabulated: str) -> str:
    """The feature names of ``curve(a, b)`` as LaTeX (underscores escaped)."""
    return tabulated.split("(", 1)[1].rstrip(")").replace("_", r"\_")


def _numbers(record: dict, key: str, length: int, where: str) -> np.ndarray:
    values = record.get(key)
    numbers = isinstance(values, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not (numbers and len(values) == length and all(math.isfinite(v) for v in values)):
        raise SurrogateError(f"{where}: {key}: expected {length} finite numbers, got {str(values)[:80]}")
    return np.asarray(values, dtype=np.float64)


class Surrogate:
    """A KAN student in the features' and the targets' own units: raw feature values in, predictions out.

    The KAN inside (``surrogate.model``, or ``KAN.from_pretrained(folder)`` alone) works in its own units,
    inputs scaled onto ``[-1, 1]`` and standardised outputs; ``student.json`` holds the scaling between the two
    (`kandistill.students.scaling.scale_inputs`, then ``output_std`` and ``output_mean``).
    """

    def __init__(self, model: KAN, record: dict[str, Any], folder: Path, formula_path: Path | None = None) -> None:
        """Checks ``record`` (the folder's ``student.json``) against itself and ``model``: `SurrogateError`."""
        self.model, self.record, self.folder, self.formula_path = model.eval(), record, folder, formula_path
        where = str(folder / "student.json")
        if not isinstance(record, dict):
            raise SurrogateError(f"{where}: expected an object, got {type(record).__name__}")
        try:
            check_slug(record.get("name"), "name")
            targets = record.get("targets")
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise SurrogateError(f"{where}: targets: expected a list of column names, got {str(targets)[:80]}")
            self.spec = StudentSpec(record["name"], tuple(targets), kind=str(record.get("kind")))
            self.schema = FeatureSchema.from_dict(record.get("features"))
        except (InvalidNameError, TrainError, SchemaError) as err:
            raise SurrogateError(f"{where}: {err}") from None
        self.low, self.high = (_numbers(record, k, len(self.schema), where) for k in ("input_low", "input_high"))
        self.mean, self.std = (_numbers(record, k, self.spec.n_outputs, where) for k in ("output_mean", "output_std"))
        if not np.all(self.low < self.high):
            raise SurrogateError(f"{where}: input_low must be below input_high for each feature")
        if not np.all(self.std > 0):
            raise SurrogateError(f"{where}: output_std must be positive, got {self.std.tolist()}")
        if not isinstance(record.get("fidelity"), dict):
            raise SurrogateError(f"{where}: fidelity: expected an object of scores")
        if model.ensemble != 1 or model.width[0] != len(self.schema) or model.width[-1] != self.spec.n_outputs:
            raise SurrogateError(f"{where}: the model (width {model.width}, ensemble {model.ensemble}) does not fit "
                                 f"{len(self.schema)} features and {self.spec.n_outputs} outputs")  # fmt: skip

    @classmethod
    def from_folder(cls, folder: str | Path, schema: FeatureSchema | None = None) -> Surrogate:
        folder = Path(folder)
        if not (folder / "student.json").is_file():
            raise FileNotFoundError(f"{folder}: no student.json (not a student folder written by the train stage)")
        try:
            record = json.loads((folder / "student.json").read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:
            raise SurrogateError(f"{folder / 'student.json'}: not valid JSON ({str(err)[:200]})") from None
        surrogate = cls(KAN.from_pretrained(folder), record, folder)
        if schema is not None and surrogate.schema != schema:
            raise SurrogateError(f"{folder}: the student was trained on other features than {schema.names}")
        return surrogate

    @classmethod
    def from_run(cls, run: str | Path, name: str) -> Surrogate:
        """The student ``name`` of a run folder, with its formula when the extract stage has run."""
        run = Path(run)
        folder = run / "train" / "students" / check_slug(name, "student name")
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
        return self.spec.output_names

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
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.schema):
            raise ValueError(f"{self.name}: expected encoded features (rows, {len(self.schema)}), got {x.shape}")
        scaled = torch.as_tensor(scale_inputs(x, self.low, self.high), dtype=torch.float32)
        with torch.no_grad():
            y = self.model(scaled).double().numpy()
        return y * self.std + self.mean

    def predict(self, features: Any, source: str = "student") -> np.ndarray:
        """Predictions ``(rows, out)``: scalar targets, or a label set's log-odds against its last label.

        ``source``: ``student`` (the KAN), ``formula`` (the extracted formula, with any curves and surfaces
        it names) or ``components`` (the intercept plus every tabulated component), on raw feature values.
        """
        if source == "student":
            return self.predict_encoded(self.encode(features))
        if source not in ("formula", "components"):
            raise ValueError(f"source: expected 'student', 'formula' or 'components', got {source!r}")
        columns = self.schema.decode(self.encode(features))  # checks every value against the schema
        record = self.formula_record()
        if source == "formula":
            return np.stack([record.predict(k, columns) for k in range(len(record.targets))], 1)
        return np.stack([self._components(record, k).predict(columns, "components")
                         for k in range(len(record.targets))], 1)  # fmt: skip

    def components(self, output: int = 0) -> list[Component]:
        """The named parts of output ``output`` (see `kandistill.distill.extract.components`), largest share first."""
        model = self._components(self.formula_record(), output)
        return sorted(model.components, key=lambda c: -c.variance_share)

    def _components(self, record: FormulaRecord, output: int) -> ComponentModel:
        model = record.components[output] if output < len(record.components) else None
        if model is None:
            raise FileNotFoundError(f"{self.formula_path}: no components for output {output} (rerun the extract stage)")
        return model

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

    def formula_record(self) -> FormulaRecord:
        """The checked formula record of this student (`read_formula_record`), for its features and outputs."""
        if self.formula_path is None:
            raise FileNotFoundError(f"no formula for student {self.name!r}: run the extract stage first")
        record = read_formula_record(self.formula_path, self.schema)
        if record.student != self.name or list(record.targets) != self.outputs:
            raise FormulaError(f"{self.formula_path}: the record is of student {record.student!r} with outputs "
                               f"{list(record.targets)}, not {self.name!r} with {self.outputs}")  # fmt: skip
        return record

    def formula(self) -> list[sympy.Expr] | sympy.Expr:
        """The extracted formula (one per output; a single expression for a single output)."""
        expressions = list(self.formula_record().expressions)
        return expressions[0] if len(expressions) == 1 else expressions

    def __repr__(self) -> str:
        return f"Surrogate({self.name!r}: {self.schema.names} -> {self.outputs})"
