"""The end-to-end runner: targets -> train -> extract -> audit over one run folder (`kandistill.pipelines.run_folder`).

Each stage records a stamp (a hash of everything its result depends on) beside its output. A rerun
skips a stage whose stamp is unchanged and redoes one whose inputs changed; the targets and train
stages also resume from their own shards and checkpoints, so a run killed anywhere finishes with
``kandistill run CONFIG``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sympy
import torch
import yaml
from tqdm.auto import tqdm

from kandistill.distill.discover.search import DiscoverConfig, discover_formula
from kandistill.distill.extract.components import ComponentConfig, decompose_student
from kandistill.distill.extract.formula import evaluate, to_tree
from kandistill.distill.targets.cache import (
    MANIFEST,
    CacheError,
    SoftTargetCache,
    generate_targets,
    read_inputs,
    sample_inputs,
)
from kandistill.distill.targets.lock import folder_lock
from kandistill.distill.train.loop import split_rows, target_matrix, train_students
from kandistill.distill.train.metrics import label_fidelity, r2_score, scalar_fidelity
from kandistill.pipelines.config import RunConfig
from kandistill.pipelines.report import stage_audit
from kandistill.pipelines.run_folder import (
    STAGES,
    TRAIN_OUTPUTS,
    RunFolder,
    check_run_folder,
    clear,
    main_process_first,
    mark_run_folder,
    read_stamp,
)
from kandistill.pipelines.surrogate import FormulaRecord, Surrogate, read_formula_record
from kandistill.pipelines.teacher import build_teacher
from kandistill.students.files import atomic_write_bytes, atomic_write_json
from kandistill.teachers.base import process_state
from kandistill.teachers.hashing import hash_json
from kandistill.teachers.schema import CategoricalFeature

logger = logging.getLogger(__name__)

CACHE_OUTPUTS = (MANIFEST, "shards", "dataset")  # what the targets stage writes, deleted (alone) on a change


def stage_targets(config: RunConfig, folder: RunFolder, progress: bool = True) -> SoftTargetCache:
    logger.info("targets: loading the %s teacher", config.teacher.kind)
    teacher = build_teacher(config, folder, progress=progress)
    inputs_config = config.inputs
    if inputs_config.csv:
        inputs = read_inputs(inputs_config.csv, teacher.schema)
    else:
        inputs = sample_inputs(teacher.schema, inputs_config.rows, inputs_config.sampler, inputs_config.seed)
    logger.info("targets: the teacher answers %d inputs into %s", len(next(iter(inputs.values()))), folder.targets)
    try:
        cache = generate_targets(teacher, inputs, folder.targets, shard_size=inputs_config.shard_size,
                                 progress=progress)  # fmt: skip
    except CacheError as err:
        if "was made with a different" not in str(err):
            raise
        logger.warning("targets: the teacher or inputs changed (%s); recomputing the cache", str(err)[:120])
        clear(folder.targets, CACHE_OUTPUTS)
        cache = generate_targets(teacher, inputs, folder.targets, shard_size=inputs_config.shard_size,
                                 progress=progress)  # fmt: skip
    logger.info("targets: done, %d rows x %d outputs", len(cache), len(cache.outputs))
    return cache


def stage_train(config: RunConfig, folder: RunFolder, cache: SoftTargetCache, progress: bool = True) -> dict:
    stamp = hash_json({"cache": cache.fingerprint, "train": config.train.model_dump(),
                       "students": [s.model_dump(exclude={"extract"}) for s in config.students]})  # fmt: skip
    if read_stamp(folder.train / "stamp.json") == stamp and (folder.train / "fidelity.json").is_file():
        logger.info("train: unchanged, skipped")
        return json.loads((folder.train / "fidelity.json").read_text())

    def fresh_folder() -> None:
        if read_stamp(folder.train / "stamp.json") != stamp:
            clear(folder.train, TRAIN_OUTPUTS)
            atomic_write_json(folder.train / "stamp.json", {"stamp": stamp})

    main_process_first(fresh_folder)
    logger.info("train: %d student(s) on %d rows", len(config.students), len(cache))
    result = train_students(cache, config.student_specs(), folder.train, config.train_config(progress))
    for name, scores in result.fidelity.items():
        logger.info("train: %s, held-out fidelity %s", name, ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    return result.fidelity


def stage_extract(config: RunConfig, folder: RunFolder, cache: SoftTargetCache,
                  progress: bool = True) -> dict[str, FormulaRecord]:  # fmt: skip
    """Per student with ``extract: true``: its components and their formula, in the features' own units
    (and with ``mode: formula``, one expression for the whole student when a valid one is found).

    ``extract.seconds`` bounds each student's extraction: the outputs share it, and the formula search
    gets what the components left. ``progress``: a bar of the students' outputs done.
    """
    results = {}
    specs = [(s, c) for s, c in zip(config.student_specs(), config.students, strict=True) if c.extract]
    bar = tqdm(total=sum(len(s.output_names) for s, _ in specs), desc="extract: outputs", unit="output",
               disable=not progress)  # fmt: skip
    train_rows, val_rows = split_rows(len(cache), config.train.validation_fraction, config.train.seed)
    x = cache.features()
    schema = cache.schema
    for spec, _ in specs:
        surrogate = Surrogate.from_folder(folder.train / "students" / spec.name, schema)
        stamp = hash_json({"student": surrogate.digest(), "extract": config.extract.model_dump(),
                           "references": config.checks.reference})  # fmt: skip
        path = folder.formulas / f"{spec.name}.json"
        if read_stamp(path) == stamp:
            results[spec.name] = read_formula_record(path, schema)
            logger.info("extract: %s unchanged, skipped", spec.name)
            bar.update(len(spec.output_names))
            continue
        start = time.monotonic()
        x_fit, x_val = x[train_rows[: config.extract.rows]], x[val_rows]
        teacher_y = target_matrix(cache, spec)[val_rows]
        student_val = surrogate.predict_encoded(x_val)
        outputs = []
        for j, target in enumerate(spec.output_names):
            left = config.extract.seconds - (time.monotonic() - start)
            logger.info("extract: components of %s", target)
            model = decompose_student(_output(surrogate, j), schema, x_fit, x_val,
                                      ComponentConfig(max_interactions=config.extract.interactions,
                                                      min_share=config.extract.min_share,
                                                      tolerance=config.extract.tolerance,
                                                      complexity_weight=config.extract.complexity_weight,
                                                      references=dict(config.checks.reference),
                                                      seconds=max(left / (len(spec.output_names) - j), 1e-3),
                                                      seed=config.train.seed))  # fmt: skip
            columns = schema.decode(x_val)
            model.r2 = {level: r2_score(y, teacher_y[:, j]) for level, y in (
                ("main_effects", model.predict(columns, "main_effects")),
                ("with_interactions", model.predict(columns, "components")),
                ("student", student_val[:, j]), ("formula", model.predict(columns, "formula")))}  # fmt: skip
            output = {"target": target, "form": "components", "tree": to_tree(model.formula),
                      "components": model.to_json()}  # fmt: skip
            if config.extract.mode == "formula":
                error = scalar_fidelity(torch.as_tensor(student_val[:, j]), torch.as_tensor(teacher_y[:, j]))["rmse"]
                left = config.extract.seconds - (time.monotonic() - start)
                output.update(_single_expression(config, surrogate, j, schema, x_fit, x_val, student_val[:, j],
                                                 error, left))  # fmt: skip
            outputs.append(output)
            bar.update()
        record = {"student": spec.name, "features": schema.names, "outputs": outputs, "fidelity_vs_teacher": {}}
        atomic_write_json(
            path, record, default=str
        )  # unstamped (a kill here redoes the stage); read back to measure what it holds
        formula_y = np.stack([read_formula_record(path, schema).predict(k, schema.decode(x_val))
                              for k in range(len(outputs))], 1)  # fmt: skip
        measure = label_fidelity if spec.kind == "labels" else scalar_fidelity
        fidelity = measure(torch.as_tensor(formula_y), torch.as_tensor(teacher_y))
        atomic_write_json(path, {"stamp": stamp, **record, "fidelity_vs_teacher": fidelity}, default=str)
        results[spec.name] = read_formula_record(path, schema)
        for target, text in zip(results[spec.name].targets, results[spec.name].text, strict=True):
            logger.info("extract: %s = %s", target, text)
        logger.info("extract: %s took %.1f s", spec.name, time.monotonic() - start)
    bar.close()
    return results


def _output(surrogate: Surrogate, j: int, chunk: int = 32_768) -> Callable[[np.ndarray], np.ndarray]:
    """Output ``j`` of a student as a function of encoded rows ``(rows, n)`` -> ``(rows,)``, in chunks."""

    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([surrogate.predict_encoded(x[k : k + chunk])[:, j] for k in range(0, len(x), chunk)])

    return predict


def _single_expression(config: RunConfig, surrogate: Surrogate, j: int, schema, x_fit: np.ndarray,
                       x_val: np.ndarray, student_val: np.ndarray, error: float, seconds: float) -> dict:  # fmt: skip
    """``extract.mode: formula``: one expression for output ``j``, kept only if it is finite on every fit and
    held-out row and reaches ``extract.min_r2`` against the student on the held-out rows; else a note.

    ``error``: the student's held-out RMSE against the teacher. The search fits the student's outputs, which
    stand for the teacher only to that error, so a constant's rounding that keeps the formula that close to
    them is kept (`DiscoverConfig.target_error`): a student cannot tell ``Nn*mu`` from
    ``0.18*(2*Nn - 0.01)*(2.75*mu - 0.01)``, and the simpler one wins."""
    if any(isinstance(f, CategoricalFeature) for f in schema.features):
        return {"note": "no single-expression search: categorical features enter formulas only as indicators"}
    discover = DiscoverConfig(seconds=max(seconds, 1e-3), simplicity_margin=config.extract.simplicity_margin,
                              complexity_weight=config.extract.complexity_weight, seed=config.train.seed,
                              snap_growth=config.extract.snap_growth, hidden=config.extract.hidden,
                              min_r2=config.extract.min_r2, target_error=error)  # fmt: skip
    try:
        found = discover_formula(torch.as_tensor(x_fit, dtype=torch.float32),
                                 torch.as_tensor(_output(surrogate, j)(x_fit), dtype=torch.float32), schema.names,
                                 discover)  # fmt: skip
    except FloatingPointError as err:
        return {"note": f"the single-expression search found no valid formula ({err}); the components' is used"}
    expression = found.expression
    values = evaluate_formulas([expression], schema.names, np.concatenate([x_fit, x_val]))
    r2 = r2_score(values[len(x_fit) :, 0], student_val)
    if not np.isfinite(values).all() or not r2 >= config.extract.min_r2:
        shown = str(sympy.N(expression, 4))[:200]
        return {"note": f"the single expression {shown} was not finite on every row or reached R^2 {r2:.3g} < "
                        f"{config.extract.min_r2}; the components' formula is used"}  # fmt: skip
    return {"form": "expression", "tree": to_tree(expression)}


def evaluate_formulas(expressions: list, features: list[str], x: np.ndarray) -> np.ndarray:
    """Evaluate sympy formulas of the named features on ``x`` ``(rows, n)`` -> ``(rows, len(expressions))``,
    with the tree evaluator that never generates code (`kandistill.distill.extract.formula.evaluate`)."""
    with np.errstate(all="ignore"):
        return np.stack([evaluate(expr, features, x) for expr in expressions], 1)


def run(config: RunConfig, root: str | Path, stages: tuple[str, ...] = STAGES, progress: bool = True) -> RunFolder:
    """Run ``stages`` (in order) of ``config`` in the folder ``root``; see the module docstring."""
    folder = RunFolder(Path(root))
    state = process_state()
    check_run_folder(folder.root)  # on every process, before any writes: all of them stop on a bad folder
    state.wait_for_everyone()
    folder.root.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder.root, "run", rank=state.process_index):  # a second run of this folder is refused
        main_process_first(lambda: mark_run_folder(folder.root))
        resolved = yaml.safe_dump(config.model_dump(), sort_keys=False).encode()
        main_process_first(lambda: atomic_write_bytes(folder.root / "config.yaml", resolved))
        cache = None
        if "targets" in stages:
            cache = stage_targets(config, folder, progress)
        needs_cache = any(s in stages for s in ("train", "extract", "audit"))
        if needs_cache and cache is None:
            cache = SoftTargetCache.load(folder.targets)
        if "train" in stages:
            stage_train(config, folder, cache, progress)
        if "extract" in stages:
            main_process_first(lambda: stage_extract(config, folder, cache, progress))
        if "audit" in stages:
            main_process_first(lambda: stage_audit(config, folder, cache, progress))
    return folder
