"""The audit report: names and values from files and configs stay data in index.html, report.md and the
model cards; plots have safe names; the provenance shows what the run used, and no debug output."""

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import sympy
import yaml

from kandistill.pipelines.config import parse_config
from kandistill.pipelines.findings import StudentAudit
from kandistill.pipelines.plots import formula_image, plot_slug
from kandistill.pipelines.render import model_card, print_pdf, write_html, write_markdown
from kandistill.pipelines.report import build_provenance
from kandistill.pipelines.runner import run
from kandistill.pipelines.surrogate import FormulaRecord
from kandistill.teachers.mlp import MLP, MLPTeacher
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature

pytestmark = pytest.mark.usefixtures("one_thread")

HOSTILE = "\"'><script>alert(1)</script>"
# Also breaks Markdown: a code span, a table cell, a link, a heading on a new line, mathtext for matplotlib.
WORSE = HOSTILE + " `x` | y [a](javascript:alert(1))\n# z $\\frac{$"

TAGS = "html head meta title style body h1 h2 h3 h4 section ul li p img code table tr th td div pre"
LIBRARIES = ("kandistill", "torch", "transformers", "accelerate", "datasets", "safetensors", "sympy", "numpy")


def hostile_audit(name: str = WORSE) -> StudentAudit:
    effect = {
        "value": name,
        "reference": "r",
        "rows": 10,
        "teacher_effect": 0.5,
        "teacher_ci": [0.4, 0.6],
        "student_effect": 0.4,
        "student_ci": [0.3, 0.5],
        "verdict": "flagged",
    }
    check = {
        "feature": name,
        "reference": "r",
        "threshold": 0.1,
        "rule": "r",
        "verdict": "flagged",
        "effects": [effect],
        "groups": {"groups": [{"value": name, "rows": 10, "mean_output": 0.1}]},
        "where": [
            {
                "feature": name,
                "bins": [{"low": 0.0, "high": 1.0, "rows": 10, "effect": 0.5, "ci": [0.4, 0.6]}],
                "sentence": None,
            }
        ],
    }
    return StudentAudit(
        name=name, output=name,
        formula=FormulaRecord(name, ("x",), (name,), (sympy.Symbol("x"),), {name: 0.5}, (name,), (name,)),
        fidelity={"r2": 0.9, name: 0.1}, importance={name: 1.0, "formula": 0.5, "importance": 0.25},
        plots={"formula": "plots/0_formula.png", "importance": "plots/0_importance.png"},
        shapes={name: "plots/0_0_scriptalert1script.png", "formula": "plots/0_1_formula.png",
                "importance": "plots/0_2_importance.png"},
        monotonic=[{"feature": name, "direction": "increasing", "rows": 10, "teacher_violations": 0.0,
                    "teacher_violations_ci": [0.0, 0.0], "student_violations": 0.1,
                    "student_violations_ci": [0.0, 0.3]}],
        protected=[check],
    )  # fmt: skip


PLOTS = [
    "plots/0_formula.png",
    "plots/0_0_scriptalert1script.png",
    "plots/0_1_formula.png",
    "plots/0_2_importance.png",
    "plots/0_importance.png",
]  # in the order the page shows them


def hostile_config(trust_remote_code: bool = True):
    """A causal-LM config whose free text (template, a label's text, values, run name) is hostile; never loaded."""
    config = parse_config({
        "teacher": {"kind": "causal_lm", "path": ".", "template": WORSE.replace("{", "{{") + " {a} {g}",
                    "labels": {"yes": HOSTILE, "no": " n"}, "trust_remote_code": trust_remote_code},
        "features": [{"name": "a", "low": 0, "high": 1}, {"name": "g", "values": [HOSTILE, "$\\frac{$"]}],
        "students": [{"name": "s", "labels": ["yes", "no"]}],
        "checks": {"protected": ["g"]},
    })  # fmt: skip
    return config.model_copy(update={"name": WORSE})  # past the config's own checks, as a name might get


def hostile_provenance(config) -> dict:
    manifest = {"teacher_fingerprint": "f" * 64, "inputs_hash": HOSTILE}
    return build_provenance(config, {"teacher": "causal_lm", "model": WORSE, "revision": HOSTILE}, manifest, HOSTILE)


class Page(HTMLParser):
    """The tags, attributes and text of a page, as a browser's parser sees them."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.attributes, self.text = [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, k, v) for k, v in attrs]

    def handle_data(self, data):
        self.text.append(data)


def assert_safe_html(page: str) -> Page:
    """No script, no event handler, no link; attributes in double quotes; the hostile text shown as text."""
    assert HOSTILE not in page and "<script" not in page.lower() and "render-check" not in page
    assert not re.search(r"<[a-z]+[^>]*=\s*'", page), "attributes are in double quotes"
    parsed = Page(page)
    assert set(parsed.tags) <= set(TAGS.split()), parsed.tags
    assert not [a for a in parsed.attributes if a[1].startswith("on") or a[1] == "href"]
    assert HOSTILE in "".join(parsed.text), "the value is shown, as text"
    return parsed


def without_code_spans(markdown: str) -> str:
    """The Markdown outside its code spans (a run of n backticks up to the next run of exactly n)."""
    return re.sub(r"(?<!`)(`+)(?!`)(.*?)(?<!`)\1(?!`)", "", markdown)


def assert_safe_markdown(markdown: str) -> None:
    """No HTML or links outside code spans, closed code spans, no heading of its own, tables of even rows."""
    prose = without_code_spans(markdown)
    assert not re.search(r"(?<!\\)[<>]", prose), "no HTML outside code spans"
    assert not re.search(r"(?<!\\)\[", prose.replace("![", "")), "no links but the report's own images"
    assert not re.search(r"(?<!\\)`", prose), "every code span is closed"
    cells = None
    for line in markdown.splitlines():
        assert not line.startswith(("# z", "$")), line
        count = len(re.findall(r"(?<!\\)\|", without_code_spans(line))) if line.startswith("|") else None
        assert cells is None or count is None or count == cells, line
        cells = count


def test_hostile_names_and_values_are_escaped_in_the_html(tmp_path):
    config = hostile_config()
    (tmp_path / "plots").mkdir()
    for number, src in enumerate(PLOTS):
        (tmp_path / src).write_bytes(b"\x89PNG" + bytes([number]))
    write_html(tmp_path / "index.html", config, [hostile_audit()], [f"{WORSE}: FLAGGED"], hostile_provenance(config))
    page = (tmp_path / "index.html").read_text()
    parsed = assert_safe_html(page)
    sources = [v for tag, k, v in parsed.attributes if k == "src"]
    embedded = [base64.b64encode(b"\x89PNG" + bytes([i])).decode() for i in range(5)]
    assert sources == [f"data:image/png;base64,{e}" for e in embedded]
    assert "teacher_mean_abs_change" not in page and "teacher_effect" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_hostile_names_and_values_are_escaped_in_the_markdown_and_the_model_card(tmp_path):
    config = hostile_config()
    provenance = hostile_provenance(config)
    write_markdown(tmp_path / "report.md", config, [hostile_audit()], [f"{WORSE}: FLAGGED"], provenance)
    assert_safe_markdown((tmp_path / "report.md").read_text())
    model_card(tmp_path, hostile_audit(), provenance)
    card = (tmp_path / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    metadata = yaml.safe_load(front)
    assert metadata["library_name"] == "kandistill"
    assert metadata["metrics"] == [{"r2": 0.9}, {WORSE.replace("\n", " "): 0.1}]
    assert_safe_markdown(body)


def test_plot_names_are_slugs():
    assert plot_slug(WORSE) == "scriptalert1scriptxyajavascriptalert1zfr"
    assert plot_slug("../..") == "feature" and plot_slug("é" * 3) == "feature" and len(plot_slug("a" * 500)) == 40


def test_a_formula_that_mathtext_cannot_read_still_renders(tmp_path):
    formula_image(tmp_path / "f.png", "\\frac{", "$\\frac{$ + x")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("causal_lm", ("path", "template", "templates", "chat", "labels", "taps", "dtype", "device_map",
                       "trust_remote_code", "revision", "batch_size")),
        ("encoder", ("path", "template", "references", "dtype", "trust_remote_code", "revision", "batch_size")),
        ("mlp", ("path",)),
        ("embedded_llama", ("rule", "train_steps", "taps", "batch_size")),
        ("feynman_mlp", ("equation", "csv")),
        ("diabetes_mlp", ()),
    ],
)  # fmt: skip
def test_the_provenance_lists_only_the_teacher_fields_its_kind_uses(kind, fields):
    teacher = {"kind": kind, **({"path": ".", "template": "{a}", "labels": {"y": " y", "n": " n"}} if kind ==
               "causal_lm" else {"path": ".", "template": "{a}", "references": {"r": "x"}} if kind == "encoder"
               else {"path": "."} if kind == "mlp" else {})}  # fmt: skip
    features = [{"name": "a", "low": 0, "high": 1}] if kind in ("causal_lm", "encoder") else None
    targets = {"labels": ["y", "n"]} if kind == "causal_lm" else {"labels": ["yes", "no"]} if kind == \
        "embedded_llama" else {"targets": ["t"]}  # fmt: skip
    config = parse_config({"teacher": teacher, "features": features, "students": [{"name": "s", **targets}]})
    shown = build_provenance(config, {}, {"teacher_fingerprint": "t", "inputs_hash": "i"}, "c")["config"]
    assert sorted(shown["teacher"]) == sorted(["kind", *fields])
    assert shown["train"] == config.train.model_dump() and shown["students"] == config.model_dump()["students"]


def test_the_provenance_shows_library_versions_and_a_trusted_remote_code_loudly(tmp_path):
    config = hostile_config()
    provenance = hostile_provenance(config)
    assert set(provenance["libraries"]) == set(LIBRARIES) and provenance["trust_remote_code"] is True
    assert "rule" not in provenance["config"]["teacher"] and "equation" not in provenance["config"]["teacher"]
    write_html(tmp_path / "index.html", config, [hostile_audit()], [], provenance)
    page = (tmp_path / "index.html").read_text()
    for name in LIBRARIES:
        assert f"<tr><th>{name}</th><td>{provenance['libraries'][name]}</td></tr>" in page
    assert '<p class="flagged">trust_remote_code: true' in page
    write_markdown(tmp_path / "report.md", config, [hostile_audit()], [], provenance)
    markdown = (tmp_path / "report.md").read_text()
    assert "**trust_remote_code: true**" in markdown and f"| torch | {provenance['libraries']['torch']} |" in markdown
    quiet = hostile_provenance(hostile_config(trust_remote_code=False))
    write_html(tmp_path / "quiet.html", config, [hostile_audit()], [], quiet)
    assert quiet["trust_remote_code"] is False
    assert "trust_remote_code: true" not in (tmp_path / "quiet.html").read_text()


def test_a_real_run_writes_a_safe_report_with_slug_named_plots(tmp_path):
    """An MLP teacher whose categorical values are hostile free text, audited end to end (no formula); its
    feature named ``importance`` keeps its own plot beside the importance plot."""
    values = (HOSTILE, "$\\frac{$", "b")
    schema = FeatureSchema((NumericFeature("importance", 0.0, 1.0), CategoricalFeature("g", values)))
    MLPTeacher(MLP([2, 4, 1]), schema, ["y"]).save_pretrained(tmp_path / "teacher")
    config = parse_config({
        "teacher": {"kind": "mlp", "path": str(tmp_path / "teacher")},
        "inputs": {"rows": 200},
        "students": [{"name": "s", "targets": ["y"], "extract": False}],
        "train": {"hidden": [2], "grid": 3, "refine_grid": None, "steps": 5},
        "checks": {"monotonic": {"importance": "increasing"}, "protected": ["g"], "rows": 50},
        "audit": {"pdf": bool(shutil.which("chromium") or shutil.which("chromium-browser"))},  # report.pdf too
    })  # fmt: skip
    folder = run(config.model_copy(update={"name": WORSE}), tmp_path / "run", progress=False)
    report = folder.report
    assert (report / "report.pdf").is_file() == config.audit.pdf
    parsed = assert_safe_html((report / "index.html").read_text())
    sources = [v for _, k, v in parsed.attributes if k == "src"]
    plots = ["plots/0_0_importance.png", "plots/0_1_g.png", "plots/0_importance.png"]
    assert sources == [f"data:image/png;base64,{base64.b64encode((report / p).read_bytes()).decode()}" for p in plots]
    assert sorted(p.name for p in (report / "plots").iterdir()) == sorted(Path(p).name for p in plots)
    assert_safe_markdown((report / "report.md").read_text())
    card = (folder.train / "students" / "s" / "README.md").read_text()
    assert_safe_markdown(card.split("---\n", 2)[2])
    provenance = json.loads((report / "provenance.json").read_text())
    assert provenance["config"]["teacher"] == {"kind": "mlp", "path": str(tmp_path / "teacher")}
    assert set(provenance["libraries"]) == set(LIBRARIES) and "trust_remote_code" not in provenance
    protected = json.loads((report / "audit.json").read_text())["students"]["s"]["protected"]
    assert np.isfinite(protected[0]["teacher_mean_abs_change"]) and protected[0]["reference"] == HOSTILE
    assert {e["value"] for e in protected[0]["effects"]} == {"$\\frac{$", "b"}


def test_the_demo_report_prints_to_a_pdf_of_several_pages_with_the_headline(demo, tmp_path):
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("pdftotext"):
        pytest.skip("needs chromium and pdftotext (poppler-utils)")
    pdf = print_pdf(demo[1] / "loan" / "report" / "index.html", tmp_path / "report.pdf")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert text.count("\f") > 1, "more than one page"
    headline = next(line for line in json.loads((demo[1] / "loan" / "report" / "audit.json").read_text())["findings"]
                    if "against identical inputs" in line)  # fmt: skip
    assert " ".join(headline.split()[:6]) in " ".join(text.split())
