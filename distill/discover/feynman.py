"""The AI Feynman equation table: read it, sample an equation, and train an MLP teacher on one.

A table (``Filename, Number, Output, Formula, # variables, v1_name, v1_low, v1_high, ...``) is read from
a path. Without one, the few equations that ship inside the package (``distill/discover/data/feynman_examples.csv``:
the demo's I.12.1, I.14.4 and I.6.2, written in the table's format) are read with `importlib.resources`,
so the demo works from an installed wheel. The whole AI Feynman table is benchmark data, not shipped:
``scripts/bench_feynman.py`` takes its path. Formulas are parsed by `extract.formula.parse_formula` (an
allow-listed AST walk), never evaluated.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sympy

from kandistill.distill.extract.canonical import equivalent_up_to_constant
from kandistill.distill.extract.formula import evaluate, parse_formula
from kandistill.teachers.schema import FeatureSchema, NumericFeature

if TYPE_CHECKING:
    import torch

    from kandistill.teachers.mlp import MLPTeacher

EXAMPLES = "feynman_examples.csv"  # in the package's data folder


class FeynmanTableError(ValueError):
    """A missing or malformed equation table; the message names the file, line and field."""


@dataclass(frozen=True)
class FeynmanEquation:
    name: str
    formula: str
    variables: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]

    def expression(self) -> sympy.Expr:
        return parse_formula(self.formula, list(self.variables))

    def schema(self) -> FeatureSchema:
        return FeatureSchema(tuple(NumericFeature(v, lo, hi) for v, (lo, hi) in zip(self.variables, self.ranges,
                                                                                   strict=True)))  # fmt: skip

    def sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` uniform samples ``(n, n_variables)`` and the formula's values there ``(n,)``, float32."""
        rng = np.random.default_rng(seed)
        x = np.column_stack([rng.uniform(lo, hi, n) for lo, hi in self.ranges])
        y = evaluate(self.expression(), self.variables, x)
        import torch  # here, so that reading the table (a run config's check) needs no torch

        return torch.from_numpy(x).float(), torch.from_numpy(y.copy()).float()


MAX_OPS_TO_SIMPLIFY = 500


def is_recovered(found: sympy.Expr, truth: sympy.Expr, variables: list[str], x: np.ndarray) -> bool:
    """SRBench's rule: ``found - truth`` or ``found / truth`` simplifies to a constant, in some common
    form (`extract.canonical.equivalent_up_to_constant`: as written, canonical, or rewritten with ``exp``).
    A variable positive on every row of ``x`` is positive for sympy too: ``-n log(V1 / V2)`` is
    ``n log(V2 / V1)`` only for positive volumes.

    Evaluated by `kandistill.distill.extract.formula.evaluate` (no generated code); a formula of more than
    ``MAX_OPS_TO_SIMPLIFY`` operations is not simplified (sympy could take hours) and counts as not recovered.
    """
    with np.errstate(all="ignore"):
        a, b = evaluate(found, variables, x), evaluate(truth, variables, x)
    if sympy.count_ops(found) > MAX_OPS_TO_SIMPLIFY:
        return False
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return False
    diff, ratio = a - b, a / b
    close_diff = np.ptp(diff) <= 1e-6 * max(np.ptp(b), np.abs(b).max())
    close_ratio = np.all(np.isfinite(ratio)) and np.ptp(ratio) <= 1e-6 * max(abs(np.median(ratio)), 1e-12)
    if not (close_diff or close_ratio):
        return False
    positive = {sympy.Symbol(v, real=True): sympy.Symbol(v, positive=True)
                for k, v in enumerate(variables) if np.all(x[:, k] > 0)}  # fmt: skip
    return equivalent_up_to_constant(found.xreplace(positive), truth.xreplace(positive))


def read_feynman_csv(path: str | Path | None = None) -> list[FeynmanEquation]:
    """The equations of an AI Feynman CSV (blank rows skipped); without ``path``, the built-in examples."""
    if path is None:
        text = resources.files("kandistill.distill.discover").joinpath("data", EXAMPLES).read_text(encoding="utf-8-sig")
        source = EXAMPLES
    else:
        path = Path(path)
        if not path.is_file():
            raise FeynmanTableError(f"no Feynman equation table at {path}: pass the path of the AI Feynman "
                                    "FeynmanEquations.csv (the public AI Feynman equation table)")  # fmt: skip
        text, source = path.read_text(encoding="utf-8-sig"), str(path)
    equations = []
    for line, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
        if not (row.get("Filename") or "").strip():
            continue
        try:
            n = int(row["# variables"])
            names = tuple(row[f"v{k}_name"].strip() for k in range(1, n + 1))
            ranges = tuple((float(row[f"v{k}_low"]), float(row[f"v{k}_high"])) for k in range(1, n + 1))
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise FeynmanTableError(f"{source}:{line}: bad variable fields ({err})") from None
        equations.append(FeynmanEquation(row["Filename"].strip(), row["Formula"].strip(), names, ranges))
    return equations


def feynman_equation(name: str, path: str | Path | None = None) -> FeynmanEquation:
    """One equation by name, from the table at ``path`` or else from the built-in examples."""
    equations = {eq.name: eq for eq in read_feynman_csv(path)}
    if name not in equations:
        if path is None:
            raise FeynmanTableError(
                f"no equation {name!r} among the built-in examples ({', '.join(equations)}); "
                "for the others, pass the path of the AI Feynman table (FeynmanEquations.csv)"
            )
        raise FeynmanTableError(f"{path}: no equation {name!r}; it has {', '.join(sorted(equations)[:5])}, ...")
    return equations[name]


def feynman_teacher(name: str = "I.12.1", path: str | Path | None = None, *, samples: int = 4000,
                    hidden: tuple[int, ...] = (64, 64), steps: int = 3000, seed: int = 0,
                    polish_steps: int = 0, progress: bool = False) -> MLPTeacher:  # fmt: skip
    """An MLP teacher trained on ``samples`` draws of one Feynman equation (default I.12.1, F = mu N_n);
    see `train_mlp` for ``polish_steps``."""
    from kandistill.teachers.mlp import MLPTeacher, train_mlp

    equation = feynman_equation(name, path)
    x, y = equation.sample(samples, seed)
    schema = equation.schema()
    mlp = train_mlp(x, y[:, None], schema, hidden, steps=steps, seed=seed, polish_steps=polish_steps,
                    progress=progress)  # fmt: skip
    return MLPTeacher(mlp, schema, [equation.name])
