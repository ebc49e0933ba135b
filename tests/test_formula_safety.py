"""Formula and student files are data: a name is never code, a tiny file never hangs, anything malformed
raises FormulaError (formulas) or SurrogateError (student.json) naming the file and the field."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import sympy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kandistill.distill.extract.edges import Extraction
from kandistill.distill.extract.formula import FUNCTIONS, FormulaError, from_tree, parse_formula, to_tree
from kandistill.pipelines.surrogate import Surrogate
from kandistill.students import KAN
from kandistill.teachers.schema import FeatureSchema, NumericFeature

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = FeatureSchema((NumericFeature("a", 0, 1), NumericFeature("b", -1, 1)))


def code(marker: Path) -> str:
    """A 'name' that is Python code: it creates ``marker`` if it is ever executed."""
    return f"__import__('os').system('touch {marker}')"


def student_record(**changes) -> dict:
    """``student.json`` as `train.loop.save_student` writes it, for two features and one scalar output."""
    record = {"name": "s", "kind": "scalar", "targets": ["y"], "loss": None, "temperature": 1.0,
              "features": SCHEMA.to_dict(), "input_low": [0.0, -1.0], "input_high": [1.0, 1.0],
              "output_mean": [0.5], "output_std": [2.0], "fidelity": {"r2": 0.9, "rmse": 0.1},
              "cache_fingerprint": "c", "teacher_fingerprint": "t"}  # fmt: skip
    return {**record, **changes}


def formula_record(tree: object = None, **changes) -> dict:
    """``formulas/s.json`` as the extract stage writes it."""
    tree = tree if tree is not None else {"op": "add", "args": [{"var": "a"}, {"var": "b"}]}
    record = {"stamp": "x", "student": "s", "features": ["a", "b"],
              "outputs": [{"target": "y", "tree": tree, "text": "a + b", "latex": "a + b"}],
              "fidelity_vs_teacher": {"r2": 0.99, "rmse": 0.01}}  # fmt: skip
    return {**record, **changes}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder with one trained-looking student ``s`` (an untrained KAN) and no formula yet."""
    torch.set_num_threads(1)
    folder = tmp_path / "run" / "train" / "students" / "s"
    KAN([2, 1], seed=0).save_pretrained(folder)
    (folder / "student.json").write_text(json.dumps(student_record()))
    (tmp_path / "run" / "formulas").mkdir()
    return tmp_path / "run"


def write_formula(run: Path, data: object) -> Path:
    path = run / "formulas" / "s.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# 1. A name from a file is never code.


def test_a_formula_record_whose_name_is_code_is_refused_and_never_run(run, tmp_path):
    marker = tmp_path / "MARKER"
    for features in (["a", "b"], [code(marker), "b"]):
        write_formula(run, formula_record({"var": code(marker)}, features=features))
        with pytest.raises(FormulaError, match=r"s\.json.*(not a plain name|not the student's)"):
            Surrogate.from_run(run, "s").formula()
    extraction = {"format_version": 1, "features": ["a", code(marker)], "outputs": [{"var": code(marker)}]}
    (tmp_path / "f.json").write_text(json.dumps(extraction))
    with pytest.raises(FormulaError, match="not a plain name"):
        Extraction.load(tmp_path / "f.json")
    assert not marker.exists()


def test_evaluating_a_formula_never_runs_a_symbol_name(tmp_path):
    marker = tmp_path / "MARKER"
    a, odd = sympy.Symbol("a", real=True), sympy.Symbol(code(marker), real=True)
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    for backend in ("numpy", "torch"):  # lambdify writes the names of symbols that are not arguments into code
        with pytest.raises(FormulaError, match=r"not one of the features|not features"):
            Extraction(["a"], [a + odd]).callable(backend)(x[:, :1])
        assert not marker.exists()
    from kandistill.distill.extract.formula import evaluate

    with pytest.raises(FormulaError, match="not one of the features"):
        evaluate(a + odd, ["a"], x[:, :1])
    features = ["a", code(marker)]  # even as declared features, odd names are only looked up
    np.testing.assert_allclose(Extraction(features, [a + 2 * odd]).callable()(x)[:, 0], [5.0, 11.0])
    np.testing.assert_allclose(Extraction(features, [a + 2 * odd]).callable("torch")(torch.tensor(x))[:, 0], [5, 11])
    assert not marker.exists()


def test_the_safe_evaluator_matches_lambdify_on_allowed_formulas():
    from kandistill.distill.extract.formula import evaluate

    a, b = sympy.symbols("a b", real=True)
    x = np.random.default_rng(0).uniform(-2, 2, (64, 2))
    formulas = [a + 2 * b, sympy.exp(-(a**2)) * sympy.sin(sympy.pi * b), sympy.sqrt(sympy.Abs(a)) / 3 - 0.125,
                sympy.log(a**2 + 1) + sympy.atan(b) * sympy.sign(a), sympy.Integer(3),
                b ** sympy.Rational(3, 2)]  # fmt: skip
    for expr in formulas:
        with np.errstate(all="ignore"):
            expected = np.broadcast_to(sympy.lambdify([a, b], expr, "numpy")(*x.T), (64,))
        np.testing.assert_allclose(evaluate(expr, ["a", "b"], x), expected, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(evaluate(to_tree(expr), ["a", "b"], x), expected, rtol=1e-12, equal_nan=True)


# 2. A tiny file never hangs a reader (checked in a subprocess, so that a regression fails instead of hanging).

HUGE_POWER = {"op": "pow", "args": [{"num": 10}, {"num": 10000000000}]}
BOUNDED_READS = """
import json, sys, time
from pathlib import Path
from kandistill.distill.extract.edges import Extraction
from kandistill.distill.extract.formula import FormulaError, from_tree, parse_formula
from kandistill.pipelines.surrogate import read_formula_record
folder = Path(sys.argv[1])
reads = {"from_tree": lambda: from_tree(json.loads(sys.argv[2]), []),
         "Extraction.load": lambda: Extraction.load(folder / "extraction.json"),
         "read_formula_record": lambda: read_formula_record(folder / "record.json"),
         "parse_formula": lambda: parse_formula("2**10**10", []),
         "nested_exp": lambda: parse_formula("exp(exp(exp(10)))", [])}
for name, read in reads.items():
    try:
        read()
        print(name, "accepted")
    except FormulaError as err:
        print(name, "FormulaError", err)
"""


def test_a_tiny_formula_with_a_huge_power_is_refused_at_once(tmp_path):
    assert len(json.dumps(HUGE_POWER)) <= 90
    extraction = {"format_version": 1, "features": [], "outputs": [HUGE_POWER]}
    (tmp_path / "extraction.json").write_text(json.dumps(extraction))
    (tmp_path / "record.json").write_text(json.dumps(formula_record(HUGE_POWER)))
    done = subprocess.run([sys.executable, "-c", BOUNDED_READS, str(tmp_path), json.dumps(HUGE_POWER)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 5 and all(" FormulaError " in line for line in lines), done.stdout
    assert all("exponent must be at most 64" in line or "not finite" in line for line in lines), done.stdout
    assert "record.json: outputs[0].tree" in done.stdout


def test_a_huge_power_in_a_run_formula_is_refused(run, capsys):
    from kandistill.pipelines.cli import EXIT_BAD_INPUT, main

    write_formula(run, formula_record({"op": "pow", "args": [{"num": 10}, {"num": 100}]}))
    with pytest.raises(FormulaError, match="exponent must be at most 64"):
        Surrogate.from_run(run, "s").formula()
    assert main(["inspect", str(run)]) == EXIT_BAD_INPUT
    assert "s.json: outputs[0].tree: a constant exponent must be at most 64" in capsys.readouterr().err


# 3. Malformed trees raise FormulaError naming the node, never another exception.


def deep(levels: int) -> dict:
    tree: dict = {"var": "a"}
    for _ in range(levels):
        tree = {"fn": "sin", "args": [tree]}
    return tree


MALFORMED_TREES = [
    ({"var": ["a"]}, "formula.var: expected a name"),
    ({"num": 10**400}, "formula.num: .*integer at most"),
    ({"rational": [1, 10**20]}, "formula.rational: p and q"),
    (deep(200), r"formula(\.args\[0\])+: nested deeper than 64"),
    (deep(5000), "nested deeper than 64"),
    ({"fn": "exp", "args": [{"var": "a"}, {"var": "a"}]}, "formula: exp takes one argument"),
    ({"op": "pow", "args": [{"num": 0}, {"num": -1}]}, "formula: evaluates to zoo"),
    ({"fn": "log", "args": [{"num": 0}]}, "evaluates to zoo"),
    ({"fn": "sqrt", "args": [{"num": -1}]}, "evaluates to I"),
    ({"fn": "exp", "args": [{"num": 1000.0}]}, "not finite"),
    ({"op": "pow", "args": [{"num": 1e300}, {"num": 2}]}, "not finite"),
    ({"num": True}, "expected a finite number"),
    ({"num": 1, "var": "a"}, "a node needs one of"),
    ({"fn": ["exp"], "args": [{"var": "a"}]}, "formula.fn: unknown function"),
    ({"const": ["pi"]}, "formula.const: expected one of"),
    ({"op": "add", "args": [{"var": "a"}, [1]]}, r"formula.args\[1\]: expected a node object"),
    (None, "expected a node object"),
    ({"op": "add", "args": [{"var": "a"}] * 10_001}, "more than 10000 nodes"),
]


@pytest.mark.parametrize(("tree", "message"), MALFORMED_TREES)
def test_malformed_trees_raise_a_formula_error_naming_the_node(tree, message):
    with pytest.raises(FormulaError, match=message):
        from_tree(tree, ["a"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fidelity": None}, r"f\.json\.fidelity: expected an object"),
        ({"fidelity": {"r2": "high"}}, r"f\.json\.fidelity\.r2: expected a number"),
        ({"features": ["a", "a"]}, r"f\.json\.features: duplicate names \['a'\]"),
        ({"features": "a"}, r"f\.json\.features: expected a list"),
        ({"edges": [1]}, r"f\.json\.edges\[0\]: expected an object"),
        ({"edges": None}, r"f\.json\.edges: expected a list"),
        ({"outputs": [{"var": "a"}, {"num": 10**20}]}, r"f\.json\.outputs\[1\]\.num"),
    ],
)
def test_malformed_formula_files_raise_a_formula_error_naming_the_field(tmp_path, change, message):
    data = {"format_version": 1, "features": ["a"], "outputs": [{"var": "a"}], "edges": [], "fidelity": {}, **change}
    (tmp_path / "f.json").write_text(json.dumps(data))
    with pytest.raises(FormulaError, match=message):
        Extraction.load(tmp_path / "f.json")


def test_a_file_that_is_not_json_or_too_deep_raises_a_formula_error(tmp_path):
    for text in ("{", "[" * 100_000, '{"num": ' + "9" * 5000 + "}", b"\xff\xfe"):
        path = tmp_path / "f.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(FormulaError, match=r"f\.json: not valid JSON"):
            Extraction.load(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x**(10**10)", "exponent must be at most 64"),
        ("x**(1/1000)", "denominator must be at most 64"),
        ("1+" * 3000 + "1", "cannot parse|nested deeper"),
        ("-" * 100 + "x", "nested deeper than 64"),
        ("1/0", "evaluates to zoo"),
        ("sin(x, x)", "sin takes one argument"),
        ("x" * 20_000, "at most 10000 characters"),
    ],
)
def test_parse_formula_has_the_same_bounds(text, message):
    with pytest.raises(FormulaError, match=message):
        parse_formula(text, ["x"])


def test_formula_variables_must_be_plain_distinct_names():
    for variables in (["a", "a"], ["a b"], ["_a"], [code(Path("M"))]):
        with pytest.raises(FormulaError):
            from_tree({"num": 1}, variables)
        with pytest.raises(FormulaError):
            parse_formula("1", variables)


# 4. The run's formula record: one validated reader; text and LaTeX derived, not read.


def test_the_formula_record_is_read_checked_and_its_text_derived(run):
    from kandistill.pipelines.surrogate import read_formula_record

    tree = {"op": "mul", "args": [{"num": 0.123456789}, {"fn": "exp", "args": [{"var": "a"}]}]}
    output = {"target": "y", "tree": tree, "text": "rm -rf /", "latex": "\\input{/etc/passwd}"}
    path = write_formula(run, formula_record(outputs=[output]))
    record = read_formula_record(path, ["a", "b"])
    a = sympy.Symbol("a", real=True)
    assert record.student == "s" and record.features == ("a", "b") and record.targets == ("y",)
    assert record.expressions == (0.123456789 * sympy.exp(a),)
    assert record.text == ("0.1235*exp(a)",) and record.latex == ("0.1235 \\cdot e^{a}",)
    assert record.fidelity_vs_teacher == {"r2": 0.99, "rmse": 0.01}
    surrogate = Surrogate.from_run(run, "s")
    assert surrogate.formula() == record.expressions[0] and surrogate.formula_record() == record


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fidelity_vs_teacher": None}, "fidelity_vs_teacher: expected an object"),
        ({"fidelity_vs_teacher": {"r2": None}}, r"fidelity_vs_teacher\.r2: expected a number"),
        ({"fidelity_vs_teacher": {"r2": True}}, r"fidelity_vs_teacher\.r2: expected a number"),
        ({"features": ["b", "a"]}, "are not the student's"),
        ({"features": ["a", "a"]}, "features: duplicate names"),
        ({"student": "../s"}, "student: '../s' is not a simple name"),
        ({"student": "t"}, "record is of student 't'"),
        ({"outputs": []}, "outputs: expected a non-empty list"),
        ({"outputs": [{"tree": {"var": "a"}}]}, "each needs a distinct, non-empty target"),
        ({"outputs": [{"target": "z", "tree": {"var": "a"}}]}, "with outputs \\['z'\\]"),
        ({"outputs": [{"target": "y"}]}, r"outputs\[0\]\.tree: expected a node object"),
    ],
)
def test_a_malformed_formula_record_raises_a_formula_error_naming_the_file_and_field(run, change, message):
    write_formula(run, formula_record(**change))
    with pytest.raises(FormulaError, match=r"s\.json.*" + message):
        Surrogate.from_run(run, "s").formula()


def test_a_formula_record_that_is_not_an_object_or_json_is_refused(run):
    from kandistill.pipelines.surrogate import read_formula_record

    for data in ([], "{", "null"):
        path = write_formula(run, data)
        with pytest.raises(FormulaError, match=r"s\.json: (expected a formula record|not valid JSON)"):
            read_formula_record(path)


# 5. A tampered student.json is refused before use; zero rows give zero predictions.


ONE_FEATURE = [{"name": "a", "low": 0, "high": 1}]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"output_std": [float("nan")]}, "output_std: expected 1 finite numbers"),
        ({"output_std": [0.0]}, "output_std must be positive"),
        ({"output_mean": [0.0, 1.0]}, "output_mean: expected 1 finite numbers"),
        ({"input_low": [0.0]}, "input_low: expected 2 finite numbers"),
        ({"input_low": [1.0, -1.0]}, "input_low must be below input_high"),
        ({"input_high": ["1", 1]}, "input_high: expected 2 finite numbers"),
        ({"name": "../../etc"}, "name: '../../etc' is not a simple name"),
        ({"targets": "y"}, "targets: expected a list"),
        ({"kind": "poem"}, "kind must be one of"),
        ({"features": ONE_FEATURE}, "input_low: expected 1 finite numbers"),
        ({"features": ONE_FEATURE, "input_low": [0], "input_high": [1]}, "does not fit 1 features"),
        ({"features": None}, "features"),
        ({"fidelity": None}, "fidelity: expected an object"),
    ],
)
def test_a_tampered_student_json_raises_naming_the_file_and_field(run, change, message):
    from kandistill.pipelines.surrogate import SurrogateError

    folder = run / "train" / "students" / "s"
    (folder / "student.json").write_text(json.dumps(student_record(**change)))
    with pytest.raises(SurrogateError, match=r"student\.json: .*" + message):
        Surrogate.from_folder(folder)


def test_a_student_json_that_is_not_json_is_refused(run):
    from kandistill.pipelines.surrogate import SurrogateError

    folder = run / "train" / "students" / "s"
    for text in ("{", "[]"):
        (folder / "student.json").write_text(text)
        with pytest.raises(SurrogateError, match=r"student\.json: (not valid JSON|expected an object)"):
            Surrogate.from_folder(folder)


def test_zero_rows_give_zero_predictions_and_contributions(run):
    surrogate = Surrogate.from_run(run, "s")
    assert surrogate.predict({"a": [], "b": []}).shape == (0, 1)
    assert surrogate.predict_encoded(np.zeros((0, 2))).shape == (0, 1)
    contributions = surrogate.explain({"a": np.array([]), "b": np.array([])})
    assert set(contributions) == {"a", "b"} and all(c.shape == (0, 1) for c in contributions.values())
    assert surrogate.predict({"a": [0.5], "b": [0.0]}).shape == (1, 1)


# Fuzz: whatever a file holds, a reader returns a finite, storable formula or raises FormulaError.

BIG = st.integers(-(10**20), 10**20)
JUNK = st.one_of(st.none(), st.booleans(), BIG, st.floats(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))  # fmt: skip
NUMBERS = st.one_of(st.integers(-100, 100), BIG, st.floats(), st.sampled_from([0, 1, -1, 0.5]))
ODD_LEAVES = [{"const": "pi"}, {"const": "E"}, {"const": "e"}, {"var": "a"}, {"var": "b"}, {"var": "c"},
              {"var": "__import__('os')"}, {"var": "a", "num": 1}, {}]  # fmt: skip
LEAVES = st.one_of(
    st.builds(lambda v: {"num": v}, st.one_of(NUMBERS, JUNK)),
    st.builds(lambda p, q: {"rational": [p, q]}, st.integers(-(10**16), 10**16), st.integers(-5, 10**16)),
    st.sampled_from(ODD_LEAVES),
    JUNK,
)
OPS = st.sampled_from(["add", "mul", "pow", "pow", "sub", 3])
FNS = st.sampled_from([*sorted(FUNCTIONS), "eval", "cosh"])


def nodes(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.builds(lambda op, args: {"op": op, "args": args}, OPS, st.lists(children, max_size=4)),
        st.builds(lambda fn, args: {"fn": fn, "args": args}, FNS, st.lists(children, min_size=1, max_size=2)),
        st.builds(lambda args: {"op": "add", "args": args, "fn": "exp"}, st.lists(children, max_size=2)),
        st.lists(children, max_size=2),
    )


TREES = st.recursive(LEAVES, nodes, max_leaves=24)
FUZZ = settings(max_examples=300, deadline=20_000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def assert_finite_and_storable(expr: sympy.Expr, variables: list[str]) -> None:
    from kandistill.distill.extract.formula import evaluate

    assert isinstance(expr, sympy.Expr)
    assert not expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I)
    assert from_tree(to_tree(expr), variables) == expr
    assert isinstance(str(sympy.N(expr, 4)), str)
    assert evaluate(expr, variables, np.full((2, len(variables)), 0.5)).shape == (2,)


@FUZZ
@given(TREES)
def test_fuzz_from_tree_returns_a_finite_formula_or_a_formula_error(tree):
    try:
        expr = from_tree(tree, ["a", "b"])
    except FormulaError:
        return
    assert_finite_and_storable(expr, ["a", "b"])


OUTPUT = st.fixed_dictionaries({"target": st.one_of(st.just("y"), JUNK)}, optional={"tree": TREES, "text": JUNK})
SCORES = st.dictionaries(st.sampled_from(["r2", "kl"]), st.one_of(NUMBERS, JUNK), max_size=2)
RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "stamp": st.one_of(st.text(max_size=4), JUNK),
        "student": st.one_of(st.just("s"), st.text(max_size=4), JUNK),
        "features": st.one_of(st.just(["a", "b"]), st.lists(st.sampled_from(["a", "b", "1x", "_a"]), max_size=3), JUNK),
        "outputs": st.one_of(st.lists(st.one_of(OUTPUT, JUNK), max_size=2), JUNK),
        "fidelity_vs_teacher": st.one_of(SCORES, JUNK),
    },
)


@settings(FUZZ, max_examples=150)
@given(RECORDS)
def test_fuzz_read_formula_record_returns_a_checked_record_or_a_formula_error(record):
    from kandistill.pipelines.surrogate import read_formula_record

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.json"
        path.write_text(json.dumps(record))
        try:
            result = read_formula_record(path)
        except FormulaError as err:
            assert "s.json" in str(err)
            return
    assert result.features == tuple(record["features"]) and len(result.expressions) == len(record["outputs"])
    assert all(isinstance(v, float) for v in result.fidelity_vs_teacher.values())
    for expr, text in zip(result.expressions, result.text, strict=True):
        assert_finite_and_storable(expr, list(result.features))
        assert text == str(sympy.N(expr, 4))
    assert len(result.latex) == len(result.expressions)
