"""The README's code blocks run as written (issue 15), in a fresh folder, at a small size.

Every fenced block in README.md is either run here or listed in `SKIPPED` with the reason; a new block
that is neither fails `test_every_block_is_run_or_skipped`, so the README cannot drift from the code.
Python blocks run in reading order in one namespace per section, as a reader pasting them would, and as
written: never edited here. A long block reads its size from ``README_ROWS``, which the tests set small. The
``kandistill`` lines run through `kandistill.pipelines.cli.main`. The demo's run folder, which the blocks read after
`kandistill demo`, is the session's quick demo (tests/conftest.py).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sympy
import torch

from kandistill.distill.extract.formula import evaluate
from kandistill.pipelines.cli import main
from kandistill.pipelines.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"

# The blocks the tests below run, each found by a line it holds.
CONFIG = "name: llama-loan-audit"
SURROGATE = 'decision = Surrogate.from_run("runs/demo/loan", "decision")'
STUDENT = "model = KAN(width=[2, 5, 1], grid=5, k=3, seed=0)"
EXTRACTION = "from kandistill.distill.extract import Extraction, extract_formula"
TEACHER = "teacher = CausalLMTeacher.from_pretrained("
DISTILL = "from kandistill.distill.train import StudentSpec, TrainConfig, train_students"
TRAIN_CLI = "kandistill train --cache runs/loan/targets"
DEMO_OUTPUT = "Demo finished in"
RUN = (CONFIG, SURROGATE, STUDENT, EXTRACTION, TEACHER, DISTILL, TRAIN_CLI, DEMO_OUTPUT)

# The blocks not run here, each found by a line it holds, and why.
SKIPPED = {
    "pip install -e . -c constraints.txt": "creates .venv, installs the package and runs the full demo (minutes); "
    "tests/test_pipeline.py runs the quick demo in-process",
    "kandistill demo --real": "installs the smollm2 extra and runs the real-model demo (minutes); "
    "tests/test_smollm2.py runs the same path through the CLI on a small config",
    ".venv/bin/python -m pytest": "creates .venv, installs the dev extras and runs the whole suite, this test included",
    "kandistill run CONFIG": "the commands' usage, with placeholders (CONFIG, runs/NAME); tests/test_cli.py runs them",
    "run config ──► pipelines": "a diagram, not code",
    "pip install --no-deps -r scripts/requirements-bench.txt": "installs benchmark-only packages, then a benchmark",
}

README_ROWS = 300  # the size the teacher and distillation blocks run at here (their default: 4,000)

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the block's first code line in README.md


def readme_blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown text."""
    return [Block(m["language"], m["code"], text.count("\n", 0, m.start("code")) + 1)
            for m in re.finditer(r"^```(?P<language>\S*)\n(?P<code>.*?)^```$", text, re.M | re.S)]  # fmt: skip


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def block(key: str) -> Block:
    found = [b for b in BLOCKS if key in b.code]
    assert len(found) == 1, f"README.md: {len(found)} code blocks hold {key!r}, expected one"
    return found[0]


def code_of(source: Block, standins: dict[str, str]) -> str:
    """The block's text with each stand-in put in (for the config example's model folder, which a test checks
    but never loads); each replaced text must be there exactly once."""
    code = source.code
    for text, standin in standins.items():
        assert code.count(text) == 1, f"README.md:{source.line}: {text!r} is no longer in the block"
        code = code.replace(text, standin)
    return code


def run_python(key: str, namespace: dict) -> dict:
    """Run a Python block as written in ``namespace``; tracebacks name README.md and its line numbers."""
    source = block(key)
    assert source.language == "python", f"README.md:{source.line}: expected a python block"
    exec(compile("\n" * (source.line - 1) + source.code, str(README), "exec"), namespace)
    return namespace


def run_commands(key: str, capsys) -> list[str]:
    """Run each ``kandistill`` line of a bash block through the CLI's `main`; assert that each exits 0."""
    printed = []
    for line in block(key).code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line)
        assert argv[0] == "kandistill", line
        assert main(argv[1:]) == 0, capsys.readouterr().err
        printed.append(capsys.readouterr().out)
    return printed


def demo_in(folder: Path, demo: tuple[str, Path]) -> None:
    """``runs/demo/loan`` in ``folder``, as `kandistill demo` leaves it: a copy of the session's quick demo."""
    shutil.copytree(demo[1] / "loan", folder / "runs" / "demo" / "loan")


def test_every_block_is_run_or_skipped():
    keys = (*RUN, *SKIPPED)
    for b in BLOCKS:
        matched = [key for key in keys if key in b.code]
        assert len(matched) == 1, f"README.md:{b.line}: a block that this test neither runs nor skips ({matched})"
    for key in keys:
        block(key)  # each key names exactly one block


def test_the_config_block_is_a_valid_run_config(tmp_path):
    checkpoint = tmp_path / "Llama-3.2-1B-Instruct"  # a user's model folder: checked to exist, not read
    checkpoint.mkdir()
    path = tmp_path / "llama_audit.yaml"
    path.write_text(code_of(block(CONFIG), {"/models/Llama-3.2-1B-Instruct": str(checkpoint)}), encoding="utf-8")
    config = load_config(path)
    assert config.schema().names == ["age", "income", "debt", "gender"]
    assert config.teacher.kind == "causal_lm" and config.inputs.rows == 20000
    assert [s.name for s in config.students] == ["decision"]


def test_the_surrogate_block(tmp_path, monkeypatch, demo):
    demo_in(tmp_path, demo)
    monkeypatch.chdir(tmp_path)
    ns = run_python(SURROGATE, {})
    decision, applicant = ns["decision"], ns["applicant"]
    predicted = decision.predict(applicant)
    assert predicted.shape == (1, 1) and np.isfinite(predicted).all()
    names = decision.schema.names
    value = evaluate(decision.formula(), names, applicant)  # raw values: the category as its string
    assert abs(value[0] - predicted[0, 0]) < 0.5  # the formula stands for the student
    assert decision.predict(applicant, source="formula")[0, 0] == pytest.approx(value[0])
    assert {c.name for c in decision.components()} == {"income", "debt", "gender"}
    contributions = decision.explain(applicant)
    assert list(contributions) == names and all(c.shape == (1, 1) for c in contributions.values())
    assert contributions["gender"][0, 0] < -0.3 < 0.3 < contributions["income"][0, 0]  # the planted rule's signs


def test_the_student_and_extraction_blocks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = run_python(STUDENT, {})
    x_train = ns["x_train"]
    assert torch.equal(ns["loaded"](x_train), ns["model"](x_train))  # saved and loaded back: the same function
    assert not (tmp_path / "students").exists() and (tmp_path / "runs" / "my_kan" / "model.safetensors").is_file()

    run_python(EXTRACTION, ns)
    expression = ns["result"].expressions[0]
    x, y = sorted(expression.free_symbols, key=lambda s: s.name)
    assert sympy.simplify(expression - sympy.exp(sympy.sin(sympy.pi * x) + y**2)) == 0
    assert ns["result"].fidelity["r2_vs_teacher"] > 0.99999
    loaded = ns["Extraction"].load(tmp_path / "runs" / "formulas" / "head.json")
    np.testing.assert_allclose(loaded.callable()(ns["x_test"].numpy()), ns["y_test"].numpy(), rtol=1e-4)

    found = ns["found"].expression
    q1, q2, r = sorted(found.free_symbols, key=lambda s: s.name)
    ratio = sympy.simplify(found / (q1 * q2 / r**2))
    assert not ratio.free_symbols and abs(float(ratio) - 1 / (4 * np.pi)) < 1e-4


def test_the_teacher_distill_and_train_command_blocks(tmp_path, monkeypatch, demo, capsys):
    demo_in(tmp_path, demo)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("README_ROWS", str(README_ROWS))
    ns = run_python(TEACHER, {})
    cache = ns["cache"]
    assert cache.features().shape == (README_ROWS, 4)
    p_yes, p_no = np.exp(cache.target("logprob[yes]")), np.exp(cache.target("logprob[no]"))
    np.testing.assert_allclose(p_yes + p_no, 1, rtol=1e-4)
    assert p_yes.std() > 0.1  # the teacher's answers follow its inputs

    run_python(DISTILL, ns)
    result = ns["result"]
    assert len(ns["heads"]) == 8  # 2 layers x 4 query heads of the embedded Llama
    assert set(result.students) == {"decision", *(name.split(".dla")[0] for name in ns["heads"])}
    assert result.fidelity["decision"]["r2_logodds"] > 0.99 and result.fidelity["decision"]["agreement"] > 0.95

    (printed,) = run_commands(TRAIN_CLI, capsys)
    students = tmp_path / "runs" / "loan" / "train" / "students"
    head0 = json.loads((students / "head0" / "student.json").read_text())
    assert head0["fidelity"]["r2"] > 0.9 and "head0" in printed


def verdicts(printed: str) -> set[tuple[str, ...]]:
    """The verdicts in the demo's findings: protected attributes flagged or not, monotonic checks held
    on the teacher or not, formulas recovered or not (numbers aside: the quick demo is smaller)."""
    found = set()
    for line in printed.splitlines():
        if match := re.search(r": (\w+) .* against identical inputs with .*: (FLAGGED|REVIEW|not flagged)\.$", line):
            found.add(("protected", *match.groups()))
        if match := re.search(r"(increasing|decreasing) in (\w+)\? violated by ([\d.]+)% of input pairs on the teacher",
                              line):  # fmt: skip
            found.add(("monotonic", match[1], match[2], "holds" if float(match[3]) < 1 else "violated"))
        if match := re.search(r"(\S+): the formula .* is (recovered exactly|NOT recovered exactly)", line):
            found.add(("recovery", *match.groups()))
    return found


def test_the_demo_prints_what_the_readme_says(demo):
    """The README's demo output (the full demo, on a fresh clone) and the quick demo agree on every verdict."""
    promised = block(DEMO_OUTPUT).code
    assert verdicts(promised) == {
        ("protected", "gender", "FLAGGED"),
        ("monotonic", "increasing", "income", "holds"),
        ("monotonic", "decreasing", "debt", "holds"),
        ("recovery", "I.12.1", "recovered exactly"),
    }
    assert verdicts(demo[0]) == verdicts(promised), demo[0]
    assert "Report: " in demo[0] and "loan/report/index.html" in demo[0]
