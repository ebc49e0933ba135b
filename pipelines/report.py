"""The audit stage: declared checks on the teacher and the students, and what the report says.

For every student: its formula and components (`kandistill.distill.extract.components`: each with its share of the
variance, as a formula, an indicator table, a curve or a heatmap), a plot per feature of the student's
partial dependence over the feature's range with the data's density below it (`kandistill.pipelines.plots`),
feature importance (the spread of each partial dependence), fidelity (student vs teacher, formula vs
teacher, on held-out rows) and the checks:

* ``monotonic: {feature: increasing}``: each audited row against the same row with the feature moved
  up by a tenth of its range; the fraction of pairs where the output moves the wrong way, on the
  teacher and on the student, each with its 95% bootstrap interval;
* ``protected: [feature]``: counterfactuals on the **teacher itself** (each audited row with only the
  protected attribute set to each of its values, run through the teacher again) and as the student
  predicts them; the statistics are `kandistill.pipelines.checks`' (signed effects against the reference value
  with bootstrap intervals, verdicts by a stated rule, outcomes per group, the effect binned by each
  other numeric feature).

`kandistill.pipelines.render` writes ``report/index.html`` (one file: images as data URIs), ``report.md``, each
student's model card and, on request, ``report.pdf``; this module writes ``provenance.json`` and
``audit.json``, the audit as data::

    {"findings": [sentence, ...],
     "students": {NAME: {
        "fidelity": {metric: value}, "importance": {feature: spread}, "formula": text or null,
        "components": null or {"levels": {"main_effects", "with_interactions", "student", "formula": R^2 vs teacher},
                               "remainder_share", "negligible": [feature],
                               "parts": [{"name", "features", "kind" ("formula" | "table" | "curve" | "surface"),
                                          "variance_share", "expression": text or null, "fit_r2", "note"}]},
        "monotonic": [{"feature", "direction", "rows", "teacher_violations", "teacher_violations_ci": [lo, hi],
                       "student_violations", "student_violations_ci"}],
        "protected": [{"feature", "reference", "threshold", "rule", "verdict" ("flagged" | "review" | "not flagged"),
                       "effects": [{"value", "reference", "rows", "teacher_effect", "teacher_ci", "student_effect",
                                    "student_ci", "verdict", and for label sets "teacher_flip_rate", "teacher_flip_ci",
                                    "student_flip_rate", "student_flip_ci"}],
                       "groups": {"groups": [{"value", "rows", "mean_output", "positive_rate"}],
                                  "rate_ratio", "four_fifths"},
                       "where": [{"feature", "bins": [{"low", "high", "rows", "effect", "ci"}], "sentence"}],
                       "teacher_mean_abs_change",
                       with paraphrases "by_wording": {"wordings": [{"wording", "rows", "verdict", "effects"}],
                                                       "values": [{"value", "outcomes", "depends_on_wording"}],
                                                       "depends_on_wording", "rule"}}]}}}

With paraphrases (``teacher.templates``) a monotonic check also holds ``teacher_by_wording`` and
``student_by_wording`` (``[{"wording", "rows", "rate", "ci"}]``), ``depends_on_wording`` and ``wording_rule``.

Intervals are 95% percentile bootstraps over the audited rows (seeded: a rerun gives the same report).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from kandistill.distill.extract.components import ComponentModel
from kandistill.distill.extract.formula import rounded
from kandistill.distill.targets.cache import SoftTargetCache, library_versions
from kandistill.distill.train.loop import split_rows
from kandistill.pipelines import checks
from kandistill.pipelines.config import RunConfig
from kandistill.pipelines.findings import StudentAudit
from kandistill.pipelines.plots import component_plot, formula_image, importance_plot, plot_slug, shape_plot
from kandistill.pipelines.render import VERDICT_WORDS, model_card, output_unit, print_pdf, write_html, write_markdown
from kandistill.pipelines.run_folder import RunFolder
from kandistill.pipelines.surrogate import Surrogate, read_formula_record
from kandistill.pipelines.teacher import build_teacher
from kandistill.students.files import atomic_write_json
from kandistill.teachers.base import Progress, Teacher
from kandistill.teachers.hashing import hash_json
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema
from kandistill.teachers.template import TEMPLATE_FEATURE

logger = logging.getLogger(__name__)


REPORTED_LIBRARIES = ("safetensors", "sympy", "numpy")


def report_library_versions() -> dict[str, str]:
    """The versions the cache manifest records, and those of the libraries the students and formulas use."""
    versions = dict(library_versions())
    for name in REPORTED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def build_provenance(config: RunConfig, describe: dict, manifest: dict, cache_fingerprint: str) -> dict:
    """What the run used: the teacher (its ``describe()``), the cache (its manifest), config, code, libraries.

    The config's teacher holds only the fields of its kind (`kandistill.pipelines.config.TeacherConfig`);
    ``trust_remote_code`` is recorded apart, and only for the kinds that load code from a model folder.
    """
    provenance = {
        "run": config.name,
        "teacher_kind": config.teacher.kind,
        "teacher_model": describe.get("model") or describe.get("teacher"),
        "teacher_revision": describe.get("revision"),
        "teacher_source": describe.get("source"),
        "teacher_fingerprint": manifest["teacher_fingerprint"],
        "data_hash": manifest["inputs_hash"],
        "cache_fingerprint": cache_fingerprint,
        "config_hash": hash_json(config.model_dump()),
        "code_version": code_version(),
    }
    if hasattr(config.teacher, "trust_remote_code"):
        provenance["trust_remote_code"] = config.teacher.trust_remote_code
    return {**provenance, "libraries": report_library_versions(), "config": config.model_dump()}


def teacher_output(teacher: Teacher, targets: tuple[str, ...], kind: str, batch: dict[str, list],
                   progress: Progress | None = None) -> np.ndarray:  # fmt: skip
    """The teacher's first output in the student's terms ``(rows,)``: a column, or the first label's log-odds."""
    answers = teacher(batch, progress)
    if kind == "labels":
        return (answers[targets[0]] - answers[targets[-1]]).double().numpy()
    return answers[targets[0]].double().numpy()


def monotonic_check(teacher_fn, student_fn, x: np.ndarray, j: int, low: float, high: float, direction: str,
                    wordings: tuple[np.ndarray, list[str]] | None = None) -> dict:  # fmt: skip
    """Fraction of ``(x, x + step e_j)`` pairs whose output moves against ``direction`` (teacher, student),
    each with its 95% bootstrap interval over rows; with ``wordings`` (each row's paraphrase index, and the
    paraphrases' names) the same per paraphrase, and whether the teacher's share depends on the wording."""
    step = (high - low) / 10
    start = np.clip(x[:, j], low, high - step)
    lower, upper = x.copy(), x.copy()
    lower[:, j], upper[:, j] = start, start + step
    sign = 1 if direction == "increasing" else -1
    result = {"rows": len(x)}
    for who, fn in (("teacher", teacher_fn), ("student", student_fn)):
        violated = (sign * (fn(upper) - fn(lower)) < -1e-6).astype(np.float64)
        result[f"{who}_violations"] = float(violated.mean())
        result[f"{who}_violations_ci"] = checks.bootstrap_ci(violated)
        if wordings is not None:
            result[f"{who}_by_wording"] = checks.rates_by_wording(violated, *wordings)
    if wordings is not None:
        result["depends_on_wording"] = checks.intervals_apart(result["teacher_by_wording"])
        result["wording_rule"] = checks.MONOTONIC_WORDING_RULE
    return result


def protected_check(teacher_fn, student_fn, x: np.ndarray, schema: FeatureSchema, j: int, reference: str | None,
                    labels: bool, threshold: float,
                    wordings: tuple[np.ndarray, list[str]] | None = None) -> dict:  # fmt: skip
    """Set every audited row's protected attribute ``j`` to each of its values and run the teacher (and the student)
    again: the signed effects against the reference value (`checks.pairwise_effects`), the outcomes per value
    of the rows as they are, and the strongest effect binned by each other numeric feature; with ``wordings``
    (each row's paraphrase index, and the paraphrases' names) the effects per paraphrase
    (`checks.protected_by_wording`)."""
    feature = schema.features[j]
    teacher, student = {}, {}
    for code, value in enumerate(feature.values):
        moved = x.copy()
        moved[:, j] = code
        teacher[value], student[value] = teacher_fn(moved), student_fn(moved)
    reference = reference or feature.values[0]
    effects = checks.pairwise_effects(teacher, student, reference, labels, threshold)
    top = checks.strongest(effects)
    change = teacher[top["value"]] - teacher[reference]
    numeric = [i for i, other in enumerate(schema.features) if i != j and not isinstance(other, CategoricalFeature)]
    where = [checks.binned_effect(change, x[:, i], schema.features[i].name) for i in numeric]
    result = {
        "feature": feature.name, "reference": reference, "threshold": threshold, "rule": checks.rule(threshold),
        "verdict": checks.overall_verdict([e["verdict"] for e in effects]), "effects": effects,
        "groups": checks.group_outcomes(x[:, j].astype(int), list(feature.values), teacher_fn(x), labels),
        "where": where,
        "teacher_mean_abs_change": float(np.mean([np.abs(t - teacher[reference]).mean() for t in teacher.values()])),
    }  # fmt: skip
    if wordings is not None:
        result["by_wording"] = checks.protected_by_wording(teacher, student, *wordings, reference, labels, threshold)
    return result


def partial_dependence(predict, x: np.ndarray, j: int, values: np.ndarray) -> np.ndarray:
    """The mean prediction over rows ``x`` with feature ``j`` set to each of ``values``."""
    out = []
    for value in values:
        moved = x.copy()
        moved[:, j] = value
        out.append(predict(moved).mean())
    return np.asarray(out)


def code_version() -> str:
    """The git commit of the code when run from a checkout, else the installed version."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()  # fmt: skip
        return f"git {commit}"
    except (OSError, subprocess.SubprocessError):
        try:
            return f"kandistill {metadata.version('kandistill')}"
        except metadata.PackageNotFoundError:
            return "unknown"


def audit_student(config: RunConfig, folder: RunFolder, cache: SoftTargetCache, teacher: Teacher, spec,
                  x_val: np.ndarray, plots: Path, index: int = 0,
                  progress: Progress | None = None) -> StudentAudit:  # fmt: skip
    """The checks and plots of the ``index``-th student; its plots are ``plots/{index}_...png``. ``progress`` is
    told of every row the teacher answers (`teacher_rows` in all)."""
    surrogate = Surrogate.from_run(folder.root, spec.name)
    schema = cache.schema
    fidelity = json.loads((folder.train / "fidelity.json").read_text())[spec.name]
    formula_path = folder.formulas / f"{spec.name}.json"
    formula = read_formula_record(formula_path, schema) if formula_path.is_file() else None
    output = surrogate.outputs[0]
    audit = StudentAudit(spec.name, output, formula, fidelity, {})

    def student_fn(x: np.ndarray) -> np.ndarray:
        return surrogate.predict_encoded(x)[:, 0]

    def teacher_fn(x: np.ndarray) -> np.ndarray:
        return teacher_output(teacher, spec.targets, spec.kind, schema.decode(x), progress)

    dependences = {}
    for j, feature in enumerate(schema.features):
        if isinstance(feature, CategoricalFeature):
            values = np.arange(len(feature.values), dtype=np.float64)
        else:
            values = np.linspace(feature.low, feature.high, 40)
            if feature.integer:
                values = np.unique(np.round(values))
        dependences[feature.name] = (values, partial_dependence(student_fn, x_val, j, values))
        audit.importance[feature.name] = float(np.ptp(dependences[feature.name][1]))
    span = max(audit.importance.values())
    for j, feature in enumerate(schema.features):
        name = f"{index}_{j}_{plot_slug(feature.name)}.png"
        values, dependence = dependences[feature.name]
        shape_plot(plots / name, feature, values, dependence, x_val[:, j], output, min_span=0.1 * span)
        audit.shapes[feature.name] = f"plots/{name}"
    importance_plot(plots / f"{index}_importance.png", audit.importance)
    audit.plots["importance"] = f"plots/{index}_importance.png"
    if formula:
        formula_image(plots / f"{index}_formula.png", formula.latex[0], formula.text[0])
        audit.plots["formula"] = f"plots/{index}_formula.png"
        audit.components = formula.components[0] if formula.components else None
    for k, component in enumerate(audit.components.components if audit.components else []):
        component_plot(plots / f"{index}_component{k}.png", component, output)
        audit.component_plots.append(f"plots/{index}_component{k}.png")

    declared = config.checks
    wordings = None  # with paraphrases: each audited row's paraphrase (an index) and the paraphrases' names
    if config.templates() and TEMPLATE_FEATURE in schema.names:
        t = schema.names.index(TEMPLATE_FEATURE)
        wordings = (x_val[:, t].astype(int), list(schema.features[t].values))
    for feature_name, direction in declared.monotonic.items():
        j = schema.names.index(feature_name)
        feature = schema.features[j]
        categorical = isinstance(feature, CategoricalFeature)
        low, high = (0.0, len(feature.values) - 1.0) if categorical else (feature.low, feature.high)
        result = monotonic_check(teacher_fn, student_fn, x_val, j, low, high, direction, wordings)
        audit.monotonic.append({"feature": feature_name, "direction": direction, **result})
    for feature_name in declared.protected:
        j = schema.names.index(feature_name)
        feature = schema.features[j]
        if not isinstance(feature, CategoricalFeature):
            raise ValueError(f"checks.protected: {feature_name!r} is numeric; protected attributes are categorical")
        audit.protected.append(protected_check(teacher_fn, student_fn, x_val, schema, j,
                                               declared.reference.get(feature_name), spec.kind == "labels",
                                               declared.protected_threshold, wordings))  # fmt: skip
    if wordings is not None:
        audit.wordings = config.templates()
    return audit


def effect_sentence(audit: StudentAudit, check: dict) -> str:
    """The strongest signed effect of a protected attribute, in words, with its interval, rule and verdict."""
    top = checks.strongest(check["effects"])
    low, high = top["teacher_ci"]
    flips = f"; {top['teacher_flip_rate']:.1%} of decisions change" if "teacher_flip_rate" in top else ""
    return (f"{audit.name}: {check['feature']} {top['value']} gets {top['teacher_effect']:+.2f} {output_unit(audit)} "
            f"({checks.LEVEL:.0%} CI {low:+.2f} to {high:+.2f}, {top['rows']:,} rows) against identical inputs with "
            f"{check['feature']} {check['reference']}{flips} (rule: the CI against ±{check['threshold']:g}): "
            f"{VERDICT_WORDS[check['verdict']]}.")  # fmt: skip


def group_sentence(audit: StudentAudit, check: dict) -> str | None:
    """The positive-decision rate per value, and the four-fifths rule (label sets only)."""
    groups = check["groups"]
    if "rate_ratio" not in groups:
        return None
    rates = ", ".join(f"{g['value']} {g['positive_rate']:.1%}" for g in groups["groups"] if g["rows"])
    return (f"{audit.name}: positive decisions by {check['feature']} on the audited inputs: {rates}; lowest to "
            f"highest {groups['rate_ratio']:.2f} (four-fifths rule, at least {checks.FOUR_FIFTHS:g}: "
            f"{groups['four_fifths']}).")  # fmt: skip


def wording_sentences(audit: StudentAudit, check: dict) -> list[str]:
    """A protected check per paraphrase: for each value, its effect and verdict on each wording, and whether the
    finding depends on the wording (`checks.PROTECTED_WORDING_RULE`)."""
    if "by_wording" not in check:
        return []
    by_wording, lines = check["by_wording"], []
    for i, value in enumerate(by_wording["values"]):
        parts = ", ".join(f"{w['wording']} {w['effects'][i]['teacher_effect']:+.2f} "
                          f"({VERDICT_WORDS[w['effects'][i]['verdict']]})" for w in by_wording["wordings"])  # fmt: skip
        outcomes = set(value["outcomes"].values())
        verdict = (checks.WORDING if value["depends_on_wording"] else "the same on every wording"
                   if len(outcomes) == 1 else "no wording contradicts another (the others need review)")  # fmt: skip
        lines.append(f"{audit.name}: {check['feature']} {value['value']} against {check['reference']}, by wording: "
                     f"{parts}: {verdict}.")  # fmt: skip
    return lines


def monotonic_sentence(audit: StudentAudit, check: dict) -> str:
    """A monotonic check in words; with paraphrases, the teacher's share on each wording too."""
    sentence = (f"{audit.name}: {check['direction']} in {check['feature']}? violated by "
                f"{check['teacher_violations']:.1%} of input pairs on the teacher, "
                f"{check['student_violations']:.1%} on the student")  # fmt: skip
    if "teacher_by_wording" not in check:
        return sentence + "."
    parts = ", ".join(f"{w['wording']} {w['rate']:.1%}" for w in check["teacher_by_wording"])
    verdict = checks.WORDING if check["depends_on_wording"] else "within each other's intervals"
    return f"{sentence}; on the teacher by wording: {parts} ({verdict})."


def components_sentence(audit: StudentAudit) -> str:
    """The student's components by share, and the fidelity of each level of the decomposition."""
    model = audit.components
    ranked = sorted(model.components, key=lambda c: -c.variance_share)
    parts = ", ".join(f"{c.name} {c.variance_share:.1%} ({c.kind})" for c in ranked)
    levels = ", ".join(f"{words} {model.r2[k]:.4f}" for k, words in LEVEL_WORDS.items() if k in model.r2)
    return f"{audit.name}: components by share of the variance: {parts or 'none'}; R^2 against the teacher: {levels}."


LEVEL_WORDS = {"main_effects": "main effects", "with_interactions": "with interactions", "student": "student",
               "formula": "formula"}  # fmt: skip


def components_data(model: ComponentModel | None) -> dict | None:
    """A student's components for ``audit.json``."""
    if model is None:
        return None
    return {"levels": model.r2, "remainder_share": model.remainder_share, "negligible": model.negligible,
            "parts": [{"name": c.name, "features": list(c.features), "kind": c.kind,
                       "variance_share": c.variance_share,
                       "expression": None if c.expression is None else str(rounded(c.expression)),
                       "fit_r2": c.fit_r2, "note": c.note} for c in model.components]}  # fmt: skip


def headline(audits: list[StudentAudit]) -> list[str]:
    """The findings a reviewer reads first, one sentence each."""
    lines = []
    for audit in audits:
        for check in audit.protected:
            lines.append(effect_sentence(audit, check))
            lines += wording_sentences(audit, check)
            if sentence := group_sentence(audit, check):
                lines.append(sentence)
            lines += [f"{audit.name}: where the {check['feature']} effect lives: {where['sentence']}."
                      for where in check["where"] if where["sentence"]]  # fmt: skip
        for check in audit.monotonic:
            lines.append(monotonic_sentence(audit, check))
        if audit.components:
            lines.append(components_sentence(audit))
        if audit.formula:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in audit.formula.fidelity_vs_teacher.items())
            lines.append(f"{audit.name}: {audit.formula.targets[0]} ≈ {audit.formula.text[0]} "
                         f"({scores} against the teacher).")  # fmt: skip
    return lines


def teacher_rows(config: RunConfig, schema: FeatureSchema, rows: int) -> int:
    """How many rows the teacher answers in one student's checks: each monotonic check runs every audited row
    twice (``x`` and ``x + step``), each protected check once per value and once as it is."""
    protected = sum(len(schema[name].values) + 1 for name in config.checks.protected)
    return rows * (2 * len(config.checks.monotonic) + protected)


def stage_audit(config: RunConfig, folder: RunFolder, cache: SoftTargetCache, progress: bool = True) -> Path:
    """Run the checks and write the report; skipped when nothing it depends on has changed."""
    formulas = sorted(folder.formulas.glob("*.json")) if folder.formulas.is_dir() else []
    students = sorted((folder.train / "students").glob("*/model.safetensors"))
    stamp = hash_json({"cache": cache.fingerprint, "config": config.model_dump(),
                       "students": [p.stat().st_mtime_ns for p in students],
                       "formulas": [p.read_text() for p in formulas]})  # fmt: skip
    report = folder.report
    stamp_path = report / "stamp.json"
    if stamp_path.is_file() and json.loads(stamp_path.read_text()).get("stamp") == stamp:
        logger.info("audit: unchanged, skipped")
        if config.audit.pdf and not (report / "report.pdf").is_file():
            print_pdf(report / "index.html", report / "report.pdf")
        return report / "index.html"
    plots = report / "plots"
    shutil.rmtree(plots, ignore_errors=True)  # the plots of an earlier audit (other students, other features)
    plots.mkdir(parents=True)
    teacher = build_teacher(config, folder, alone=True, progress=progress)
    _, val_rows = split_rows(len(cache), config.train.validation_fraction, config.train.seed)
    x_val = cache.features()[val_rows[: config.checks.rows]]
    specs = config.student_specs()
    total = len(specs) * teacher_rows(config, cache.schema, len(x_val))
    bar = tqdm(
        total=total, unit="row", desc="audit: teacher on counterfactual inputs", disable=not (progress and total)
    )
    audits = [audit_student(config, folder, cache, teacher, spec, x_val, plots, i, bar.update)
              for i, spec in enumerate(specs)]  # fmt: skip
    bar.close()
    logger.info("audit: writing the report (%d student(s))", len(audits))
    provenance = build_provenance(config, teacher.describe(), cache.manifest, cache.fingerprint)
    findings = headline(audits)
    for audit in audits:
        model_card(folder.train / "students" / audit.name, audit, provenance)
    atomic_write_json(report / "provenance.json", provenance, default=str)
    write_markdown(report / "report.md", config, audits, findings, provenance)
    write_html(report / "index.html", config, audits, findings, provenance)
    summary = {"findings": findings, "students": {a.name: {"fidelity": a.fidelity, "importance": a.importance,
               "monotonic": a.monotonic, "protected": a.protected,
               "formula": a.formula.text[0] if a.formula else None,
               "components": components_data(a.components)} for a in audits}}  # fmt: skip
    atomic_write_json(report / "audit.json", summary)
    if config.audit.pdf:
        logger.info("audit: printing report.pdf with headless Chromium")
        print_pdf(report / "index.html", report / "report.pdf")
    atomic_write_json(stamp_path, {"stamp": stamp})
    logger.info("audit: %d finding(s); report at %s", len(findings), report / "index.html")
    return report / "index.html"
