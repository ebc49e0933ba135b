"""How well the extract stage keeps its time budgets: seconds used against seconds allowed, in one run.

The tests check what a spent budget does (parts stay tabulated, a warning says so); how long the work then
takes is a property of the machine, so it is measured here instead of asserted in a test:

* **components, budget spent at once**: `extract.components.decompose_student` of a ten-feature function
  with ``seconds=1e-6``: every part stays tabulated; the time is what the tabulation alone costs;
* **extract stage, ten features**: the diabetes MLP teacher's student (``extract: {mode: formula,
  seconds: S}``), the components and the single-expression search sharing the budget.

Each line prints the seconds used, the budget and their ratio (the goal: at most 2, the overrun being the
one step in flight when the budget ran out).

    .venv/bin/python scripts/bench_budgets.py [--seconds 20] [--rows 1000]

Last line: one JSON object with each case's ``seconds``, ``budget`` and ``ratio``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

import numpy as np
import torch

from kandistill.distill.extract.components import ComponentConfig, decompose_student
from kandistill.pipelines.config import parse_config
from kandistill.pipelines.runner import run
from kandistill.teachers.schema import FeatureSchema, NumericFeature


def components_spent(rows: int) -> float:
    schema = FeatureSchema(tuple(NumericFeature(f"x{k}", -1, 1) for k in range(10)))
    x = np.random.default_rng(6).uniform(-1, 1, (rows, 10))
    start = time.monotonic()
    decompose_student(lambda r: np.sin(r).sum(1) + r[:, 0] * r[:, 1], schema, x, config=ComponentConfig(seconds=1e-6))
    return time.monotonic() - start


def extract_stage(rows: int, seconds: float) -> float:
    config = parse_config({"name": "budget", "teacher": {"kind": "diabetes_mlp"}, "inputs": {"rows": rows},
                           "students": [{"name": "progression", "targets": ["progression"]}],
                           "train": {"hidden": [4], "steps": 30, "refine_grid": 6},
                           "extract": {"mode": "formula", "seconds": seconds, "rows": 600, "hidden": 5}})  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        run(config, folder, stages=("targets", "train"), progress=False)
        start = time.monotonic()
        run(config, folder, stages=("extract",), progress=False)
        return time.monotonic() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="the extract stage's budget (default 20)")
    parser.add_argument("--rows", type=int, default=1500, help="rows (default 1500)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    # A spent budget: the allowance is the tabulation's own cost, taken as 10 s on 2 CPU cores.
    cases = {"components, budget spent at once": (components_spent(args.rows), 10.0),
             "extract stage, ten features": (extract_stage(args.rows, args.seconds), args.seconds)}  # fmt: skip
    result = {}
    print(f"{'case':<36}{'seconds':>10}{'budget':>10}{'ratio':>8}")
    for name, (used, budget) in cases.items():
        print(f"{name:<36}{used:>10.1f}{budget:>10.1f}{used / budget:>8.2f}")
        result[name] = {"seconds": round(used, 2), "budget": budget, "ratio": round(used / budget, 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
