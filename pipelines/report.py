"""The audit stage: declared checks on the teacher and the students, plots, and the report.

For every student: its formula (LaTeX, rendered to PNG with matplotlib's mathtext, so the report
needs no script from the network), a plot per feature of the student's partial dependence over the
feature's range with the data's density below it, feature importance (the spread of each partial
dependence), fidelity (student vs teacher, formula vs teacher, on held-out rows) and the checks:

* ``monotonic: {feature: increasing}``: each held-out row against the same row with the feature
  moved up by a tenth of its range; the fraction of pairs where the output moves the wrong way,
  on the teacher and on the student;
* ``protected: [feature]``: counterfactual flips on the **teacher itself** (the same inputs with only
  the protected attribute changed, run through the teacher again) and as the student predicts them:
  the mean absolute change of the output (the log-odds for a label set), the fraction of decisions
  that flip, and a verdict against ``protected_threshold``.

Writes ``report/index.html`` (no external resources), ``report.md``, ``plots/*.png``,
``provenance.json``, and a model card (``README.md`` with Hugging Face metadata) in each student
folder.

Every name, label, template, value and formula is data from a file or a config: it is escaped for
HTML (``html.escape``, attributes in double quotes), for Markdown (`md_text`, `md_code`) and for
matplotlib (`plain_text`), and no file name is made from it (plots are named by index, `plot_slug`).
"""

from __future__ import annotations

import html
import json
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import yaml

from distill.targets import SoftTargetCache, library_versions
from distill.train import split_rows
from pipelines.config import RunConfig
from pipelines.runner import RunFolder, build_teacher, student_specs
from pipelines.surrogate import FormulaRecord, Surrogate, read_formula_record
from students.persistence import atomic_write_bytes
from teachers.base import Teacher, hash_json
from teachers.schema import CategoricalFeature

logger = logging.getLogger(__name__)


@dataclass
class StudentAudit:
    """What the report says about one student.

    ``plots`` holds the ``formula`` and ``importance`` plots, ``shapes`` one plot per feature (apart, so
    that a feature named ``formula`` cannot take the formula's place); each a path inside the report folder.
    """

    name: str
    output: str
    formula: FormulaRecord | None
    fidelity: dict[str, float]
    importance: dict[str, float]
    plots: dict[str, str] = field(default_factory=dict)
    monotonic: list[dict] = field(default_factory=list)
    protected: list[dict] = field(default_factory=list)
    shapes: dict[str, str] = field(default_factory=dict)


def h(value: Any) -> str:
    """Text or an attribute value for HTML (attributes are always written in double quotes)."""
    return html.escape(_fmt(value), quote=True)


def md_text(value: Any) -> str:
    """Text for Markdown prose, a list item or a table cell: one line, and no character that would
    start HTML, a link, a code span, emphasis, a heading or a table cell (backslash-escaped)."""
    return re.sub(r"([\\`*\[\]<>|#])", r"\\\1", " ".join(_fmt(value).splitlines()))


def md_code(value: Any) -> str:
    """A Markdown code span of one line, shown verbatim: its fence is longer than any run of backticks in it.

    Not for table cells (a ``|`` would end the cell there); use `md_text`.
    """
    text = " ".join(_fmt(value).splitlines())
    fence = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" or (text[:1] == " " and text[-1:] == " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plain_text(value: Any) -> str:
    """Text for matplotlib, which reads text between two ``$`` as mathtext (and fails on a bad one)."""
    return _fmt(value).replace("$", r"\$")


def plot_slug(name: str) -> str:
    """The ASCII letters and digits of ``name`` (at most 40) for a plot's file name, which also holds indexes."""
    return re.sub(r"[^A-Za-z0-9]", "", name)[:40] or "feature"


TEACHER_FIELDS = {
    "causal_lm": ("path", "template", "labels", "taps", "dtype", "device_map", "trust_remote_code", "revision",
                  "batch_size"),
    "encoder": ("path", "template", "references", "dtype", "trust_remote_code", "revision", "batch_size"),
    "mlp": ("path",),
    "embedded_llama": ("rule", "train_steps", "taps", "batch_size"),
    "feynman_mlp": ("equation", "csv"),
    "diabetes_mlp": (),
}  # fmt: skip
REPORTED_LIBRARIES = ("safetensors", "sympy", "numpy")


def teacher_fields(kind: str) -> tuple[str, ...]:
    """The teacher config fields (besides ``kind``) that a teacher of ``kind`` uses (see `runner.build_teacher`)."""
    if kind not in TEACHER_FIELDS:
        raise ValueError(f"teacher.kind: unknown kind {kind!r}; expected one of {sorted(TEACHER_FIELDS)}")
    return TEACHER_FIELDS[kind]


def config_for_provenance(config: RunConfig) -> dict:
    """The config as plain data, its teacher reduced to the fields its kind uses: the defaults of other
    kinds (``rule``, ``equation``...) would read as if they had been part of the run."""
    data = config.model_dump()
    teacher = data["teacher"]
    data["teacher"] = {"kind": teacher["kind"], **{name: teacher[name] for name in teacher_fields(teacher["kind"])}}
    return data


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

    ``trust_remote_code`` is recorded apart, and only for the kinds that load code from a model folder.
    """
    provenance = {
        "run": config.name,
        "teacher_kind": config.teacher.kind,
        "teacher_model": describe.get("model") or describe.get("teacher"),
        "teacher_revision": describe.get("revision"),
        "teacher_fingerprint": manifest["teacher_fingerprint"],
        "data_hash": manifest["inputs_hash"],
        "cache_fingerprint": cache_fingerprint,
        "config_hash": hash_json(config.model_dump()),
        "code_version": code_version(),
    }
    if "trust_remote_code" in teacher_fields(config.teacher.kind):
        provenance["trust_remote_code"] = config.teacher.trust_remote_code
    return {**provenance, "libraries": report_library_versions(), "config": config_for_provenance(config)}


def teacher_output(teacher: Teacher, targets: tuple[str, ...], kind: str, batch: dict[str, list]) -> np.ndarray:
    """The teacher's first output in the student's terms ``(rows,)``: a column, or the first label's log-odds."""
    answers = teacher(batch)
    if kind == "labels":
        return (answers[targets[0]] - answers[targets[-1]]).double().numpy()
    return answers[targets[0]].double().numpy()


def monotonic_check(teacher_fn, student_fn, x: np.ndarray, j: int, low: float, high: float, direction: str) -> dict:
    """Fraction of ``(x, x + step e_j)`` pairs whose output moves against ``direction`` (teacher, student)."""
    step = (high - low) / 10
    start = np.clip(x[:, j], low, high - step)
    lower, upper = x.copy(), x.copy()
    lower[:, j], upper[:, j] = start, start + step
    sign = 1 if direction == "increasing" else -1
    result = {}
    for who, fn in (("teacher", teacher_fn), ("student", student_fn)):
        change = sign * (fn(upper) - fn(lower))
        result[f"{who}_violations"] = float(np.mean(change < -1e-6))
    return result


def protected_check(teacher_fn, student_fn, x: np.ndarray, j: int, n_values: int, labels: bool,
                    threshold: float) -> dict:  # fmt: skip
    """Change every row's protected attribute to each other value; measure on the teacher and the student."""
    base_teacher, base_student = teacher_fn(x), student_fn(x)
    teacher_changes, student_changes, flips, student_flips = [], [], [], []
    for shift in range(1, n_values):
        flipped = x.copy()
        flipped[:, j] = (x[:, j] + shift) % n_values
        t, s = teacher_fn(flipped), student_fn(flipped)
        teacher_changes.append(t - base_teacher)
        student_changes.append(s - base_student)
        flips.append(np.sign(t) != np.sign(base_teacher))
        student_flips.append(np.sign(s) != np.sign(base_student))
    teacher_change = float(np.mean(np.abs(np.concatenate(teacher_changes))))
    result = {
        "teacher_mean_abs_change": teacher_change,
        "teacher_mean_change": float(np.mean(np.concatenate(teacher_changes))),
        "student_mean_abs_change": float(np.mean(np.abs(np.concatenate(student_changes)))),
        "threshold": threshold,
        "verdict": "flagged" if teacher_change > threshold else "not flagged",
    }
    if labels:
        result["teacher_decision_flips"] = float(np.mean(np.concatenate(flips)))
        result["student_decision_flips"] = float(np.mean(np.concatenate(student_flips)))
    return result


def partial_dependence(predict, x: np.ndarray, j: int, values: np.ndarray) -> np.ndarray:
    """The mean prediction over rows ``x`` with feature ``j`` set to each of ``values``."""
    out = []
    for value in values:
        moved = x.copy()
        moved[:, j] = value
        out.append(predict(moved).mean())
    return np.asarray(out)


def shape_plot(path: Path, feature, values: np.ndarray, dependence: np.ndarray, data: np.ndarray, ylabel: str,
               min_span: float = 0.0) -> None:  # fmt: skip
    """The partial dependence over the feature's range, with the data's density below it.

    The y axis spans at least ``min_span``, so that a feature with almost no effect looks flat
    instead of having its noise magnified to fill the plot.
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.2, 3.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if isinstance(feature, CategoricalFeature):
        top.bar(values, dependence, color="#3b6ea8")
        counts = np.bincount(data.astype(int), minlength=len(feature.values))
        bottom.bar(values, counts, color="#999999")
        bottom.set_xticks(values, [plain_text(v) for v in feature.values])
    else:
        top.plot(values, dependence, color="#3b6ea8", lw=2)
        bottom.hist(data, bins=30, color="#999999")
    middle, half = (dependence.max() + dependence.min()) / 2, max(np.ptp(dependence), min_span) / 2
    if not isinstance(feature, CategoricalFeature):
        top.set_ylim(middle - 1.1 * half, middle + 1.1 * half)
    top.set_ylabel(plain_text(ylabel), fontsize=8)
    top.set_title(f"{plain_text(feature.name)}: shape (partial dependence)", fontsize=9)
    bottom.set_ylabel("rows", fontsize=8)
    bottom.set_xlabel(plain_text(feature.name), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def formula_image(path: Path, latex: str, text: str) -> None:
    """The formula typeset by matplotlib's mathtext (plain text when mathtext cannot parse it).

    ``latex`` comes from a formula file: mathtext only lays it out (it runs nothing), and the worst it can do is fail.
    """
    fig = plt.figure(figsize=(0.1, 0.1))
    try:
        fig.text(0, 0, f"${latex}$", fontsize=15)
        fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    except ValueError:
        fig.clf()
        fig.text(0, 0, plain_text(text), fontsize=12, family="monospace")
        fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def importance_plot(path: Path, importance: dict[str, float]) -> None:
    names = sorted(importance, key=importance.get)
    fig, ax = plt.subplots(figsize=(4.2, 0.4 + 0.35 * len(names)))
    ax.barh(range(len(names)), [importance[n] for n in names], color="#3b6ea8")
    ax.set_yticks(range(len(names)), [plain_text(n) for n in names])
    ax.set_xlabel("spread of the partial dependence", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
                  x_val: np.ndarray, plots: Path, index: int = 0) -> StudentAudit:  # fmt: skip
    """The checks and plots of the ``index``-th student; its plots are ``plots/{index}_...png``."""
    surrogate = Surrogate.from_run(folder.root, spec.name)
    schema = cache.schema
    fidelity = json.loads((folder.train / "fidelity.json").read_text())[spec.name]
    formula_path = folder.formulas / f"{spec.name}.json"
    formula = read_formula_record(formula_path, schema.names) if formula_path.is_file() else None
    output = surrogate.outputs[0]
    audit = StudentAudit(spec.name, output, formula, fidelity, {})

    def student_fn(x: np.ndarray) -> np.ndarray:
        return surrogate.predict_encoded(x)[:, 0]

    def teacher_fn(x: np.ndarray) -> np.ndarray:
        return teacher_output(teacher, spec.targets, spec.kind, schema.decode(x))

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

    checks = config.checks
    for feature_name, direction in checks.monotonic.items():
        j = schema.names.index(feature_name)
        feature = schema.features[j]
        categorical = isinstance(feature, CategoricalFeature)
        low, high = (0.0, len(feature.values) - 1.0) if categorical else (feature.low, feature.high)
        result = monotonic_check(teacher_fn, student_fn, x_val, j, low, high, direction)
        audit.monotonic.append({"feature": feature_name, "direction": direction, **result})
    for feature_name in checks.protected:
        j = schema.names.index(feature_name)
        feature = schema.features[j]
        if not isinstance(feature, CategoricalFeature):
            raise ValueError(f"checks.protected: {feature_name!r} is numeric; protected attributes are categorical")
        result = protected_check(teacher_fn, student_fn, x_val, j, len(feature.values), spec.kind == "labels",
                                 checks.protected_threshold)  # fmt: skip
        audit.protected.append({"feature": feature_name, **result})
    return audit


def headline(audits: list[StudentAudit]) -> list[str]:
    """The findings a reviewer reads first, one sentence each."""
    lines = []
    for audit in audits:
        for check in audit.protected:
            verdict = "FLAGGED" if check["verdict"] == "flagged" else "not flagged"
            flips = (f", and flips {check['teacher_decision_flips']:.1%} of decisions"
                     if "teacher_decision_flips" in check else "")  # fmt: skip
            lines.append(f"{audit.name}: changing only {check['feature']} moves the teacher's {audit.output} by "
                         f"{check['teacher_mean_abs_change']:.3f} on average{flips} (threshold "
                         f"{check['threshold']}): {verdict}.")  # fmt: skip
        for check in audit.monotonic:
            lines.append(f"{audit.name}: {check['direction']} in {check['feature']}? violated by "
                         f"{check['teacher_violations']:.1%} of input pairs on the teacher, "
                         f"{check['student_violations']:.1%} on the student.")  # fmt: skip
        if audit.formula:
            scores = ", ".join(f"{k} {v:.4g}" for k, v in audit.formula.fidelity_vs_teacher.items())
            lines.append(f"{audit.name}: {audit.formula.targets[0]} ≈ {audit.formula.text[0]} "
                         f"({scores} against the teacher).")  # fmt: skip
    return lines


def _table(rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th>{h(k)}</th><td>{h(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.92em}.flagged{color:#b00020;font-weight:600}
.plots img{margin:.3em;border:1px solid #eee}img{max-width:100%}code{background:#f4f4f4;padding:.1em .3em}"""

REMOTE_CODE = "The teacher was loaded with its model folder's own Python code, which ran on this machine."


def write_html(
    path: Path, config: RunConfig, audits: list[StudentAudit], findings: list[str], provenance: dict
) -> None:
    """``index.html``: one page, no scripts and no external resources; every value from a file or config escaped."""
    parts = [f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>kandistill audit: '
             f"{h(config.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Audit report: {h(config.name)}</h1>",
             '<section id="summary"><h2>Summary</h2><ul>']  # fmt: skip
    for line in findings:
        css = ' class="flagged"' if "FLAGGED" in line else ""
        parts.append(f"<li{css}>{h(line)}</li>")
    parts.append("</ul></section>")
    for audit in audits:
        parts.append(f'<section id="student-{h(audit.name)}"><h2>Student <code>{h(audit.name)}</code>: '
                     f"{h(audit.output)}</h2>")  # fmt: skip
        if audit.formula:
            parts.append(f'<h3>Formula</h3><p><img src="{h(audit.plots["formula"])}" alt="formula"></p>'
                         f"<p><code>{h(audit.formula.targets[0])} = {h(audit.formula.text[0])}</code></p>")  # fmt: skip
        parts.append("<h3>Fidelity on held-out inputs</h3><table><tr><th></th><th>measure</th><th>value</th></tr>")
        formula_scores = audit.formula.fidelity_vs_teacher if audit.formula else {}
        for who, scores in (("student vs teacher", audit.fidelity), ("formula vs teacher", formula_scores)):
            for k, v in scores.items():
                parts.append(f"<tr><td>{who}</td><td>{h(k)}</td><td>{h(v)}</td></tr>")
        parts.append('</table><h3>Shape functions</h3><div class="plots">')
        for name, src in audit.shapes.items():
            parts.append(f'<img src="{h(src)}" alt="shape of {h(name)}">')
        parts.append(f'</div><h3>Feature importance</h3><img src="{h(audit.plots["importance"])}" alt="importance">')
        parts.append(_table({k: v for k, v in sorted(audit.importance.items(), key=lambda kv: -kv[1])}))
        parts.append("<h3>Declared checks</h3>")
        if not (audit.monotonic or audit.protected):
            parts.append("<p>No checks declared.</p>")
        for check in audit.monotonic + audit.protected:
            css = ' class="flagged"' if check.get("verdict") == "flagged" else ""
            parts.append(f"<div{css}>{_table(check)}</div>")
        parts.append("</section>")
    parts.append('<section id="provenance"><h2>Provenance</h2>')
    if provenance.get("trust_remote_code"):
        parts.append(f'<p class="flagged">trust_remote_code: true. {h(REMOTE_CODE)}</p>')
    parts.append(_table({k: v for k, v in provenance.items() if not isinstance(v, dict)}))
    parts.append("<h3>Library versions</h3>" + _table(provenance.get("libraries", {})))
    parts.append("<h3>Config (the teacher's fields of its kind only)</h3>"
                 f"<pre>{h(json.dumps(provenance['config'], indent=1, default=str))}</pre></section>")  # fmt: skip
    parts.append("</body></html>")
    atomic_write_bytes(path, "\n".join(parts).encode())


def _check_line(check: dict) -> str:
    return ", ".join(f"{md_text(k)}: {md_text(v)}" for k, v in check.items())


def write_markdown(path: Path, config: RunConfig, audits: list[StudentAudit], findings: list[str],
                   provenance: dict) -> None:  # fmt: skip
    """``report.md``: names and values in code spans or escaped (`md_code`, `md_text`), never raw Markdown."""
    lines = [f"# Audit report: {md_text(config.name)}", "", "## Summary", "",
             *[f"- {md_text(line)}" for line in findings], ""]  # fmt: skip
    for audit in audits:
        lines += [f"## Student {md_code(audit.name)}: {md_text(audit.output)}", ""]
        if audit.formula:
            shown = md_code(f"{audit.formula.targets[0]} = {audit.formula.text[0]}")
            lines += [f"![formula]({audit.plots['formula']})", "", shown, "",
                      f"LaTeX: {md_code(audit.formula.latex[0])}", ""]  # fmt: skip
        lines += ["| | measure | value |", "|---|---|---|"]
        lines += [f"| student vs teacher | {md_text(k)} | {md_text(v)} |" for k, v in audit.fidelity.items()]
        if audit.formula:
            lines += [f"| formula vs teacher | {md_text(k)} | {md_text(v)} |"
                      for k, v in audit.formula.fidelity_vs_teacher.items()]  # fmt: skip
        lines += ["", "### Shape functions", ""]
        lines += [f"![{md_text(name)}]({src})" for name, src in audit.shapes.items()]
        lines += ["", "### Feature importance", "", f"![importance]({audit.plots['importance']})", ""]
        lines += [f"- {md_text(k)}: {md_text(v)}" for k, v in sorted(audit.importance.items(), key=lambda kv: -kv[1])]
        lines += ["", "### Declared checks", ""]
        lines += [f"- {_check_line(check)}" for check in audit.monotonic + audit.protected] or ["No checks declared."]
        lines.append("")
    lines += ["## Provenance", ""]
    if provenance.get("trust_remote_code"):
        lines += [f"**trust_remote_code: true**. {md_text(REMOTE_CODE)}", ""]
    lines += [f"- {md_text(k)}: {md_text(v)}" for k, v in provenance.items() if not isinstance(v, dict)]
    lines += ["", "| library | version |", "|---|---|"]
    lines += [f"| {md_text(k)} | {md_text(v)} |" for k, v in provenance.get("libraries", {}).items()]
    lines.append("")
    atomic_write_bytes(path, "\n".join(lines).encode())


def model_card(folder: Path, audit: StudentAudit, provenance: dict) -> None:
    """``README.md`` with Hugging Face metadata (YAML written by ``yaml.safe_dump``), in the student's folder."""
    kind = "tabular-classification" if audit.output.startswith("logodds") else "tabular-regression"
    formula = audit.formula.text[0] if audit.formula else "not extracted"
    metrics = [{" ".join(str(k).splitlines()): float(v)} for k, v in audit.fidelity.items()]
    header = {"library_name": "kandistill", "pipeline_tag": kind, "tags": ["kan", "distillation", "interpretability"],
              "metrics": metrics}  # fmt: skip
    scores = ", ".join(f"{md_text(k)} {md_text(v)}" for k, v in audit.fidelity.items())
    text = f"""---
{yaml.safe_dump(header, sort_keys=False, allow_unicode=True)}---

# KAN student {md_code(audit.name)}

A Kolmogorov-Arnold Network distilled from the teacher {md_code(provenance["teacher_model"])} (fingerprint
{md_code(str(provenance["teacher_fingerprint"])[:16])}) by kandistill. It predicts {md_code(audit.output)}.

- Formula: {md_code(formula)}
- Held-out fidelity to the teacher: {scores}
- Load: `pipelines.surrogate.Surrogate.from_folder(path)` or `students.KAN.from_pretrained(path)`
  (inputs scaled as recorded in `student.json`).
- Code: {md_text(provenance["code_version"])}
"""
    atomic_write_bytes(folder / "README.md", text.encode())


def stage_audit(config: RunConfig, folder: RunFolder, cache: SoftTargetCache) -> Path:
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
        return report / "index.html"
    plots = report / "plots"
    shutil.rmtree(plots, ignore_errors=True)  # the plots of an earlier audit (other students, other features)
    plots.mkdir(parents=True)
    teacher = build_teacher(config, folder, alone=True)
    _, val_rows = split_rows(len(cache), config.train.validation_fraction, config.train.seed)
    x_val = cache.features()[val_rows[: config.checks.rows]]
    audits = [audit_student(config, folder, cache, teacher, spec, x_val, plots, i)
              for i, spec in enumerate(student_specs(config))]  # fmt: skip
    provenance = build_provenance(config, teacher.describe(), cache.manifest, cache.fingerprint)
    findings = headline(audits)
    for audit in audits:
        model_card(folder.train / "students" / audit.name, audit, provenance)
    atomic_write_bytes(report / "provenance.json", json.dumps(provenance, indent=2, default=str).encode())
    write_markdown(report / "report.md", config, audits, findings, provenance)
    write_html(report / "index.html", config, audits, findings, provenance)
    summary = {"findings": findings, "students": {a.name: {"fidelity": a.fidelity, "importance": a.importance,
               "monotonic": a.monotonic, "protected": a.protected,
               "formula": a.formula.text[0] if a.formula else None} for a in audits}}  # fmt: skip
    atomic_write_bytes(report / "audit.json", json.dumps(summary, indent=2).encode())
    atomic_write_bytes(stamp_path, json.dumps({"stamp": stamp}).encode())
    return report / "index.html"
