"""Writing the audit: ``index.html`` (one file, images as data URIs, no scripts), ``report.md``, each
student's model card, and the PDF (headless Chromium).

Every name, label, template, value and formula is data from a file or a config: it is escaped for
HTML (``html.escape``, attributes in double quotes) and for Markdown (`md_text`, `md_code`). Tables
show plain-language labels (`label`); the raw keys stay in ``audit.json``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kandistill.distill.extract.formula import rounded
from kandistill.pipelines import checks
from kandistill.pipelines.config import RunConfig
from kandistill.pipelines.findings import StudentAudit
from kandistill.students.files import atomic_write_bytes

logger = logging.getLogger(__name__)

VERDICT_WORDS = {"flagged": "FLAGGED", "review": "REVIEW", "not flagged": "not flagged"}


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


def output_unit(audit: StudentAudit) -> str:
    """What the output is measured in, for sentences and table headers."""
    return "log-odds" if audit.output.startswith("logodds") else f"in {audit.output}"


LABELS = {
    "r2": "R² (share of the variance explained)", "r2_logodds": "R² of the log-odds", "rmse": "root mean squared error",
    "agreement": "decisions that agree", "kl": "KL divergence (nats)",
    "run": "run name", "teacher_kind": "teacher kind",
    "teacher_model": "teacher (model or source)", "teacher_revision": "teacher revision",
    "teacher_fingerprint": "teacher fingerprint", "data_hash": "hash of the teacher's inputs",
    "cache_fingerprint": "soft-target cache fingerprint", "config_hash": "hash of the config",
    "code_version": "code version", "trust_remote_code": "ran the model folder's own code",
}  # fmt: skip


def label(key: Any) -> str:
    """A plain-language label for a key of the audit's data (the key itself, spaced, when none is known)."""
    return LABELS.get(key, str(key).replace("_", " "))


def _ci(value: float, ci: list[float], percent: bool = False) -> str:
    if percent:
        return f"{value:.1%} ({ci[0]:.1%} to {ci[1]:.1%})"
    return f"{value:+.3f} ({ci[0]:+.3f} to {ci[1]:+.3f})"


def check_tables(audit: StudentAudit) -> list[tuple[str, list[str], list[list[str]], str | None]]:
    """The declared checks as (title, header, rows, sentence) with plain-language labels; the rows are text.
    With paraphrases, the wordings first, and each check per wording after the check on all rows."""
    tables = []
    if wordings := getattr(audit, "wordings", None):
        tables.append(("The wordings: each audited input was asked in one of these paraphrases (verbatim)",
                       ["wording", "prompt template"], [[k, v] for k, v in wordings.items()], None))  # fmt: skip
    if audit.monotonic:
        rows = [[c["feature"], c["direction"], str(c["rows"]),
                 *(_ci(c[f"{who}_violations"], c[f"{who}_violations_ci"], True) for who in ("teacher", "student"))]
                for c in audit.monotonic]  # fmt: skip
        tables.append(("Monotonicity: input pairs one tenth of the range apart that move the wrong way",
                       ["feature", "expected", "rows", f"teacher ({checks.LEVEL:.0%} CI)",
                        f"student ({checks.LEVEL:.0%} CI)"], rows, None))  # fmt: skip
        tables += [_monotonic_by_wording(c) for c in audit.monotonic if "teacher_by_wording" in c]
    level = f"{checks.LEVEL:.0%} CI"
    for c in audit.protected:
        name, unit = c["feature"], output_unit(audit)
        flips = "teacher_flip_rate" in c["effects"][0]
        header = ["value", "rows", f"teacher: mean change {unit} ({level})"]
        header += [f"teacher: decisions that change ({level})"] if flips else []
        header += [f"student: mean change {unit} ({level})"]
        header += [f"student: decisions that change ({level})"] if flips else []
        rows = []
        for e in c["effects"]:
            row = [e["value"], f"{e['rows']:,}", _ci(e["teacher_effect"], e["teacher_ci"])]
            row += [_ci(e["teacher_flip_rate"], e["teacher_flip_ci"], True)] if flips else []
            row += [_ci(e["student_effect"], e["student_ci"])]
            row += [_ci(e["student_flip_rate"], e["student_flip_ci"], True)] if flips else []
            rows.append([*row, VERDICT_WORDS[e["verdict"]]])
        tables.append((f"Protected attribute {name}: each value against identical inputs with {name} = "
                       f"{c['reference']}", [*header, "verdict"], rows,
                       f"Verdict: {VERDICT_WORDS[c['verdict']]}. Rule: {c['rule']}."))  # fmt: skip
        if "by_wording" in c:
            tables.append(_protected_by_wording(c, unit))
        groups = c["groups"]
        rate = "rate_ratio" in groups
        rows = [[g["value"], f"{g['rows']:,}", *([_fmt_rate(g.get("positive_rate"))] if rate else []),
                 "—" if g["mean_output"] is None else f"{g['mean_output']:+.3f}"]
                for g in groups["groups"]]  # fmt: skip
        sentence = (f"Lowest to highest positive-decision rate: {groups['rate_ratio']:.2f}; the four-fifths rule "
                    f"(at least {checks.FOUR_FIFTHS:g}) {groups['four_fifths']}." if rate else None)  # fmt: skip
        tables.append((f"Outcomes by {name} on the audited inputs, as they are (teacher)",
                       ["value", "rows", *(["positive decisions (log-odds > 0)"] if rate else []),
                        f"mean teacher output {unit}"], rows, sentence))  # fmt: skip
        top = checks.strongest(c["effects"])
        for where in c["where"]:
            rows = [[f"{b['low']:.4g} to {b['high']:.4g}", f"{b['rows']:,}", _ci(b["effect"], b["ci"])]
                    for b in where["bins"]]  # fmt: skip
            tables.append((f"Where it lives: the effect of {name} {top['value']} (against {c['reference']}) by "
                           f"{where['feature']}", [where["feature"], "rows", f"teacher: mean change ({level})"],
                           rows, where["sentence"] and f"Finding: {where['sentence']}."))  # fmt: skip
    return tables


def _monotonic_by_wording(c: dict) -> tuple[str, list[str], list[list[str]], str]:
    """A monotonic check on the rows of each wording, and whether the teacher's share depends on the wording."""
    rows = [[t["wording"], f"{t['rows']:,}", _ci(t["rate"], t["ci"], True), _ci(s["rate"], s["ci"], True)]
            for t, s in zip(c["teacher_by_wording"], c["student_by_wording"], strict=True)]  # fmt: skip
    found = checks.WORDING.capitalize() if c["depends_on_wording"] else "No wording differs beyond the intervals"
    return (f"Monotonicity in {c['feature']} ({c['direction']}) by wording: input pairs that move the wrong way",
            ["wording", "rows", f"teacher ({checks.LEVEL:.0%} CI)", f"student ({checks.LEVEL:.0%} CI)"], rows,
            f"{found}. Rule: {c['wording_rule']}.")  # fmt: skip


def _protected_by_wording(c: dict, unit: str) -> tuple[str, list[str], list[list[str]], str]:
    """A protected check on the rows of each wording; for each value, whether its verdict depends on the wording."""
    by_wording = c["by_wording"]
    rows = [[w["wording"], e["value"], f"{e['rows']:,}", _ci(e["teacher_effect"], e["teacher_ci"]),
             _ci(e["student_effect"], e["student_ci"]), VERDICT_WORDS[e["verdict"]]]
            for w in by_wording["wordings"] for e in w["effects"]]  # fmt: skip
    depends = [v["value"] for v in by_wording["values"] if v["depends_on_wording"]]
    found = (f"{checks.WORDING.capitalize()}: {', '.join(depends)}" if depends
             else "No value's verdict depends on the wording")  # fmt: skip
    level = f"{checks.LEVEL:.0%} CI"
    return (f"Protected attribute {c['feature']} by wording: each value against {c['reference']} on the inputs "
            "asked in each paraphrase", ["wording", "value", "rows", f"teacher: mean change {unit} ({level})",
            f"student: mean change {unit} ({level})", "verdict"], rows,
            f"{found}. Rule: {by_wording['rule']}.")  # fmt: skip


def component_tables(audit: StudentAudit) -> tuple[list[str], list[list[str]], list[list[str]], str]:
    """The components table (one row per part, largest share first), the levels table, and a note on what the
    components leave out."""
    model = audit.components
    rows = [[c.name, c.kind, f"{c.variance_share:.1%}",
             str(rounded(c.expression)) if c.expression is not None else f"tabulated ({c.note})" if c.note
             else "tabulated", "" if c.fit_r2 is None else f"{c.fit_r2:.4f}"]
            for c in sorted(model.components, key=lambda c: -c.variance_share)]  # fmt: skip
    words = {"main_effects": "main effects only", "with_interactions": "main effects and the kept interactions",
             "student": "the full student", "formula": "the formula"}  # fmt: skip
    levels = [[text, _fmt(model.r2[k])] for k, text in words.items() if k in model.r2]
    note = (f"The student's output as a sum of parts, each with its share of the variance on the data. Left out: "
            f"features with less than the share threshold ({', '.join(model.negligible) or 'none'}); "
            f"higher interactions and unkept pairs, {model.remainder_share:.2%} of the variance.")  # fmt: skip
    return ["component", "kind", "share", "form", "fit R²"], rows, levels, note


def _fmt_rate(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.1%}"


def _table(rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th>{h(label(k))}</th><td>{h(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.92em}.flagged{color:#b00020;font-weight:600}
.plots img{margin:.3em;border:1px solid #eee}img{max-width:100%}code{background:#f4f4f4;padding:.1em .3em}
pre{white-space:pre-wrap;background:#f4f4f4;padding:.5em}section{break-before:page}section#summary{break-before:auto}"""


def _img(folder: Path, src: str, alt: str) -> str:
    """An image embedded as a data URI (base64 PNG), so that ``index.html`` is one file; its alt text if missing."""
    path = folder / src
    if not path.is_file():
        return f"<p>({h(alt)}: image missing)</p>"
    return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" alt="{h(alt)}">'


def _grid(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{h(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def teacher_summary(config: RunConfig, provenance: dict) -> dict:
    """The teacher a reviewer needs to name: its model, source and fingerprint; the prompt and label words."""
    teacher = config.teacher
    source = getattr(teacher, "path", None) or ("trained by kandistill on a planted rule"
                                                if teacher.kind == "embedded_llama" else "built in")  # fmt: skip
    return {"teacher_model": provenance.get("teacher_model"), "teacher_kind": config.teacher.kind, "source": source,
            "teacher_fingerprint": provenance.get("teacher_fingerprint"), "template": config.template(),
            "templates": config.templates() or {}, "chat": getattr(teacher, "chat", False),
            "labels": config.labels(), "references": getattr(teacher, "references", None)}  # fmt: skip


REMOTE_CODE = "The teacher was loaded with its model folder's own Python code, which ran on this machine."


def write_html(
    path: Path, config: RunConfig, audits: list[StudentAudit], findings: list[str], provenance: dict
) -> None:
    """``index.html``: one file (images as data URIs), no scripts and no external resources; every value from a file
    or config escaped; a page break before each section when printed."""
    folder = path.parent
    parts = [f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>kandistill audit: '
             f"{h(config.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Audit report: {h(config.name)}</h1>",
             '<section id="summary"><h2>Summary</h2><ul>']  # fmt: skip
    for line in findings:
        css = ' class="flagged"' if "FLAGGED" in line else ""
        parts.append(f"<li{css}>{h(line)}</li>")
    parts.append("</ul></section>")
    teacher = teacher_summary(config, provenance)
    parts.append('<section id="teacher"><h2>The teacher</h2>')
    parts.append(_table({k: teacher[k] for k in ("teacher_model", "teacher_kind", "source", "teacher_fingerprint")}))
    if teacher["template"] is not None:
        parts.append(f"<h3>Prompt template (verbatim)</h3><pre>{h(teacher['template'])}</pre>")
    for name, text in teacher["templates"].items():
        parts.append(f"<h3>Prompt wording <code>{h(name)}</code> (verbatim)</h3><pre>{h(text)}</pre>")
    if teacher["chat"]:
        parts.append(
            "<p>Each prompt is a user turn of the model's chat template; the answer is read after the "
            "assistant prefix.</p>"
        )
    if teacher["labels"]:
        parts.append("<h3>Label words (the tokens whose probabilities are read)</h3>")
        parts.append(_grid(["label", "words (verbatim, quoted)"], [[k, repr(v)] for k, v in teacher["labels"].items()]))
    if teacher["references"]:
        parts.append("<h3>Reference texts</h3>")
        parts.append(_grid(["name", "text"], [[k, v] for k, v in teacher["references"].items()]))
    parts.append("</section>")
    for audit in audits:
        parts.append(f'<section id="student-{h(audit.name)}"><h2>Student <code>{h(audit.name)}</code>: '
                     f"{h(audit.output)}</h2>")  # fmt: skip
        if audit.formula:
            parts.append(f"<h3>Formula</h3><p>{_img(folder, audit.plots['formula'], 'formula')}</p>"
                         f"<p><code>{h(audit.formula.targets[0])} = {h(audit.formula.text[0])}</code></p>")  # fmt: skip
        parts.append("<h3>Fidelity on held-out inputs</h3>")
        formula_scores = audit.formula.fidelity_vs_teacher if audit.formula else {}
        rows = [[who, label(k), _fmt(v)] for who, scores in (("student vs teacher", audit.fidelity),
                ("formula vs teacher", formula_scores)) for k, v in scores.items()]  # fmt: skip
        parts.append(_grid(["", "measure", "value"], rows))
        if audit.components:
            header, table_rows, levels, note = component_tables(audit)
            parts.append(f"<h3>Components</h3><p>{h(note)}</p>{_grid(header, table_rows)}")
            parts.append(_grid(["level", "R² against the teacher (held out)"], levels))
            parts.append('<div class="plots">')
            parts += [_img(folder, src, f"component {c.name}")
                      for c, src in zip(audit.components.components, audit.component_plots, strict=True)]  # fmt: skip
            parts.append("</div>")
        parts.append('<h3>Shape functions</h3><div class="plots">')
        parts += [_img(folder, src, f"shape of {name}") for name, src in audit.shapes.items()]
        parts.append(f"</div><h3>Feature importance</h3>{_img(folder, audit.plots['importance'], 'importance')}")
        ranked = sorted(audit.importance.items(), key=lambda kv: -kv[1])
        parts.append(_grid(["feature", "spread of its partial dependence"], [[k, _fmt(v)] for k, v in ranked]))
        parts.append("<h3>Declared checks</h3>")
        if not (audit.monotonic or audit.protected):
            parts.append("<p>No checks declared.</p>")
        for title, header, rows, sentence in check_tables(audit):
            css = ' class="flagged"' if sentence and "FLAGGED" in sentence else ""
            parts.append(f"<h4>{h(title)}</h4>{_grid(header, rows)}")
            parts.append(f"<p{css}>{h(sentence)}</p>" if sentence else "")
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


def write_markdown(path: Path, config: RunConfig, audits: list[StudentAudit], findings: list[str],
                   provenance: dict) -> None:  # fmt: skip
    """``report.md``: names and values in code spans or escaped (`md_code`, `md_text`), never raw Markdown."""
    lines = [f"# Audit report: {md_text(config.name)}", "", "## Summary", "",
             *[f"- {md_text(line)}" for line in findings], ""]  # fmt: skip
    teacher = teacher_summary(config, provenance)
    lines += ["## The teacher", ""]
    lines += [f"- {md_text(label(k))}: {md_text(teacher[k])}" for k in ("teacher_model", "teacher_kind", "source",
              "teacher_fingerprint")]  # fmt: skip
    if teacher["template"] is not None:
        lines += ["", "Prompt template (verbatim, one line per line of the template):", ""]
        lines += [f"- {md_code(line)}" for line in teacher["template"].splitlines() or [""]]
    for name, text in teacher["templates"].items():
        lines += ["", f"Prompt wording {md_code(name)} (verbatim):", ""]
        lines += [f"- {md_code(line)}" for line in text.splitlines() or [""]]
    if teacher["chat"]:
        lines += [
            "",
            "Each prompt is a user turn of the model's chat template; the answer is read after the assistant prefix.",
        ]
    if teacher["labels"]:
        lines += ["", "| label | words (verbatim, quoted) |", "|---|---|"]
        lines += [f"| {md_text(k)} | {md_text(repr(v))} |" for k, v in teacher["labels"].items()]
    lines.append("")
    for audit in audits:
        lines += [f"## Student {md_code(audit.name)}: {md_text(audit.output)}", ""]
        if audit.formula:
            shown = md_code(f"{audit.formula.targets[0]} = {audit.formula.text[0]}")
            lines += [f"![formula]({audit.plots['formula']})", "", shown, "",
                      f"LaTeX: {md_code(audit.formula.latex[0])}", ""]  # fmt: skip
        lines += ["| | measure | value |", "|---|---|---|"]
        lines += [f"| student vs teacher | {md_text(label(k))} | {md_text(v)} |" for k, v in audit.fidelity.items()]
        if audit.formula:
            lines += [f"| formula vs teacher | {md_text(label(k))} | {md_text(v)} |"
                      for k, v in audit.formula.fidelity_vs_teacher.items()]  # fmt: skip
        if audit.components:
            header, table_rows, levels, note = component_tables(audit)
            lines += ["", "### Components", "", md_text(note), "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]  # fmt: skip
            lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in table_rows]
            lines += ["", "| level | R² against the teacher (held out) |", "|---|---|"]
            lines += [f"| {md_text(a)} | {md_text(b)} |" for a, b in levels]
            shown = zip(audit.components.components, audit.component_plots, strict=True)
            lines += ["", *[f"![{md_text(c.name)}]({src})" for c, src in shown]]
        lines += ["", "### Shape functions", ""]
        lines += [f"![{md_text(name)}]({src})" for name, src in audit.shapes.items()]
        lines += ["", "### Feature importance", "", f"![importance]({audit.plots['importance']})", ""]
        lines += [f"- {md_text(k)}: {md_text(v)}" for k, v in sorted(audit.importance.items(), key=lambda kv: -kv[1])]
        lines += ["", "### Declared checks", ""]
        if not (audit.monotonic or audit.protected):
            lines.append("No checks declared.")
        for title, header, rows, sentence in check_tables(audit):
            lines += [f"#### {md_text(title)}", "", "| " + " | ".join(md_text(c) for c in header) + " |",
                      "|" + "---|" * len(header)]  # fmt: skip
            lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in rows]
            lines += ["", md_text(sentence), ""] if sentence else [""]
        lines.append("")
    lines += ["## Provenance", ""]
    if provenance.get("trust_remote_code"):
        lines += [f"**trust_remote_code: true**. {md_text(REMOTE_CODE)}", ""]
    lines += [f"- {md_text(label(k))}: {md_text(v)}" for k, v in provenance.items() if not isinstance(v, dict)]
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
- Load: `kandistill.pipelines.surrogate.Surrogate.from_folder(path)` or `kandistill.students.KAN.from_pretrained(path)`
  (inputs scaled as recorded in `student.json`).
- Code: {md_text(provenance["code_version"])}
"""
    atomic_write_bytes(folder / "README.md", text.encode())


def find_chromium() -> str:
    """The headless browser that prints the report, or a `FileNotFoundError` that says what to install."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise FileNotFoundError("printing the report to PDF needs Chromium, and none was found on PATH: install it "
                            "(Debian/Ubuntu: apt-get install chromium), or leave out --pdf and audit.pdf")  # fmt: skip


def print_pdf(index: Path, pdf: Path, timeout: float = 180) -> Path:
    """Print ``index.html`` to ``pdf`` with headless Chromium (A4/Letter by its defaults, a page per section)."""
    browser = find_chromium()
    partial = pdf.with_name(pdf.name + ".partial")
    partial.unlink(missing_ok=True)
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--print-to-pdf={partial}",
               "--no-pdf-header-footer", index.resolve().as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{browser} could not print {index} to PDF (exit {done.returncode}): {done.stderr[-500:]}")
    partial.replace(pdf)
    logger.info("audit: printed %s", pdf)
    return pdf
