"""Symbolic extraction: per-edge choices, composition, and formulas that are data, never code."""

import json
import math
import random

import numpy as np
import pytest
import sympy
import torch

from kandistill.distill.extract.edges import Extraction, compose
from kandistill.distill.extract.formula import FormulaError, from_tree, parse_formula, to_tree
from kandistill.distill.extract.symbolic_fit import choose, fit_symbols
from kandistill.students import KAN
from kandistill.students.symbols import DEFAULT_SYMBOLS

# Functions that are the same family under an affine change of argument and value.
EQUIVALENT = [{"sin", "cos"}, {"tanh", "sigmoid"}]


def random_curve(name: str, rng: random.Random, x: torch.Tensor) -> torch.Tensor:
    """c * f(a x + b) + d with constants that keep f's argument where f is well defined and not linear."""
    a = rng.uniform(1, 2) * rng.choice([-1, 1])
    b = rng.uniform(-0.5, 0.5)
    c = rng.uniform(0.5, 2) * rng.choice([-1, 1])
    d = rng.uniform(-1, 1)
    if name in ("sqrt", "log", "1/x", "1/x^2"):
        a = abs(a)
        b = a + rng.uniform(0.2, 1)
    elif name == "arcsin":
        a, b = rng.uniform(0.5, 0.9), 0.0
    elif name == "tan":
        a = rng.uniform(0.8, 1.3)
    elif name in ("signed_sqrt", "signed_x^1.5", "abs"):
        b = rng.uniform(-0.3, 0.3)
    return c * DEFAULT_SYMBOLS[name].torch_fn(a * x + b) + d


def test_each_library_function_is_chosen_and_its_curve_recovered():
    names = [n for n in DEFAULT_SYMBOLS.names() if n != "0"]
    x = torch.linspace(-1, 1, 200, dtype=torch.float64)
    correct = total = 0
    for seed in range(5):
        rng = random.Random(seed)
        ys = torch.stack([random_curve(n, rng, x) for n in names])
        fits = fit_symbols(x.expand(len(names), -1), ys, DEFAULT_SYMBOLS)
        for name, y, choice in zip(names, ys, choose(fits), strict=True):
            total += 1
            if choice.name == name or any({name, choice.name} <= s for s in EQUIVALENT):
                correct += 1
                a, b, c, d = choice.params
                fitted = c * DEFAULT_SYMBOLS[choice.name].torch_fn(a * x + b) + d
                assert (fitted - y).abs().max() < 1e-4 * (1 + y.abs().max()), name
    assert correct / total >= 0.95


def test_choice_trades_fit_against_complexity_and_reports_the_runner_up():
    x = torch.linspace(-1, 1, 100, dtype=torch.float64)[None]
    y = 2 * x**2 - 1 + 1e-9 * torch.sin(40 * x)  # x^2 (complexity 2), not a sum of cosines
    (choice,) = choose(fit_symbols(x, y, DEFAULT_SYMBOLS))
    assert choice.name == "x^2" and choice.r2 > 0.999999
    assert choice.runner_up != "x^2"
    (choice,) = choose(fit_symbols(x, 3 * x + 1, DEFAULT_SYMBOLS))
    assert choice.name == "x"  # many functions fit a line; the simplest wins


def test_compose_equals_the_network_when_every_edge_is_symbolic():
    model = KAN([2, 2, 1], seed=0)
    model.fix_symbolic(0, 0, 0, "sin", (math.pi, 0.1, 0.8, 0.2))
    model.fix_symbolic(0, 1, 0, "x^2", (1.2, -0.3, 0.5, 0.0))
    model.fix_symbolic(0, 0, 1, "exp", (0.7, 0.0, 1.1, -0.4))
    model.fix_symbolic(0, 1, 1, "tanh", (2.0, 0.5, 1.0, 0.3))
    model.fix_symbolic(1, 0, 0, "x", (1.5, 0.0, 1.0, 0.0))
    model.fix_symbolic(1, 1, 0, "gaussian", (0.9, 0.2, -0.7, 0.1))
    with torch.no_grad():
        model.layers[0].bias.copy_(torch.tensor([[0.25, -0.5]]))
        model.layers[1].bias.fill_(1.5)
    (expr,) = compose(model, ["p", "q"])
    x = torch.rand(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float32) * 2 - 1
    formula = Extraction(["p", "q"], [expr]).callable()(x.double().numpy())
    np.testing.assert_allclose(formula[:, 0], model(x)[:, 0].detach().double().numpy(), atol=1e-5)


def test_formula_json_round_trips_exactly(tmp_path):
    p, q = sympy.symbols("p q", real=True)
    expr = sympy.exp(sympy.sin(sympy.pi * p) + q**2) + sympy.Rational(1, 3) * sympy.sqrt(sympy.Abs(p)) - 0.125
    result = Extraction(["p", "q"], [expr], fidelity={"r2_vs_student": 0.99})
    result.save(tmp_path / "f.json")
    loaded = Extraction.load(tmp_path / "f.json")
    assert loaded.expressions[0] == expr and loaded.features == ["p", "q"]
    assert loaded.fidelity == {"r2_vs_student": 0.99}
    assert loaded.latex()[0] == sympy.latex(expr)


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"fn": "__import__", "args": [{"var": "p"}]}, "unknown function '__import__'"),
        ({"fn": "eval", "args": [{"num": 1}]}, "unknown function 'eval'"),
        ({"var": "os"}, "unknown feature 'os'"),
        ({"num": "1+1"}, "expected a finite number"),
        ({"num": float("nan")}, "expected a finite number"),
        ({"op": "call", "args": [{"num": 1}]}, "expected add, mul or pow"),
        ({"rational": [1, 0]}, "rational"),
        ("exp(p)", "expected a node object"),
    ],
)
def test_malicious_or_malformed_formula_files_are_rejected(tmp_path, tree, message):
    data = {"format_version": 1, "features": ["p"], "outputs": [tree]}
    (tmp_path / "f.json").write_text(json.dumps(data, allow_nan=True))
    with pytest.raises(FormulaError, match=message):
        Extraction.load(tmp_path / "f.json")


def test_formula_text_is_parsed_without_evaluation():
    theta, sigma = sympy.symbols("theta sigma", real=True)
    expr = parse_formula("exp(-(theta/sigma)**2/2)/(sqrt(2*pi)*sigma)", ["theta", "sigma"])
    assert sympy.simplify(expr - sympy.exp(-((theta / sigma) ** 2) / 2) / (sympy.sqrt(2 * sympy.pi) * sigma)) == 0
    assert from_tree(to_tree(expr), ["theta", "sigma"]) == expr
    for bad in ["__import__('os').system('true')", "theta.real", "[theta]", "lambda: 1", "open('x')"]:
        with pytest.raises(FormulaError):
            parse_formula(bad, ["theta", "sigma"])


def test_all_feynman_formulas_parse(feynman_rows):
    for row in feynman_rows:
        variables = [row[f"v{k}_name"] for k in range(1, int(row["# variables"]) + 1)]
        expr = parse_formula(row["Formula"], variables)
        assert {s.name for s in expr.free_symbols} <= set(variables), row["Filename"]


@pytest.mark.usefixtures("one_thread")
def test_exp_sin_plus_square_is_recovered_exactly_from_4_of_5_training_seeds():
    """Sparse fit, prune, extract: sympy shows the formula equals the truth (pykan's recipe: 2 of 3).

    The structure (which nodes stay, which function on each edge) comes from the student; the
    constants are refitted to the data, as discovery does. Step counts bound the work (seconds
    per seed), on one thread, whose rounding does not change with the machine's load. Rounding
    still differs between CPUs, and a seed's outcome with it: 31 of 32 runs recover (16 seeds,
    each also with its rows shuffled), so one seed in five may fail.
    """
    from kandistill.distill.extract.edges import extract_formula
    from kandistill.distill.train.schedule import ScheduleConfig, sparse_fit

    def truth_fn(x):
        return torch.exp(torch.sin(math.pi * x[:, :1]) + x[:, 1:] ** 2)

    px, py = sympy.symbols("x y", real=True)
    truth = sympy.exp(sympy.sin(sympy.pi * px) + py**2)
    schedule = ScheduleConfig(sparse_steps=20, refit_steps=20, node_refit_steps=15)
    recovered = 0
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        x, x_test = torch.rand(300, 2, generator=generator) * 2 - 1, torch.rand(300, 2, generator=generator) * 2 - 1
        model = sparse_fit(KAN([2, 5, 1], seed=seed), x, truth_fn(x), schedule)
        result = extract_formula(model, x, ["x", "y"], x_test, truth_fn(x_test), fit_constants_to="teacher")
        if sympy.simplify(result.expressions[0] - truth) == 0:
            recovered += 1
            assert result.fidelity["r2_vs_teacher"] > 0.999999
    assert recovered >= 4


def test_greedy_pruning_stops_at_its_deadline_and_keeps_the_network(caplog):
    """No node removal is tried once the deadline has passed: the network comes back as it was."""
    from kandistill.distill.train.schedule import ScheduleConfig, prune_greedily

    x = torch.rand(200, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = KAN([2, 4, 1], seed=0)
    pruned = prune_greedily(model, x, x[:, :1] + x[:, 1:], ScheduleConfig(), deadline=0.0)
    assert pruned is model and pruned.width == [2, 4, 1]
    assert "out of time" in caplog.text


def test_a_fraction_with_a_common_float_factor_is_made_monic_and_snaps():
    """Feynman I.39.11 via its MLP teacher came out as 0.0776 V p / (0.0776 gamma - 0.0776): no single
    float is near a simple value, but divided through by the denominator's lead each one is."""
    from kandistill.distill.extract.edges import monic_denominator, snap_constants

    v, p, g = sympy.symbols("V pr gamma", real=True)
    found = sympy.Float(0.07761797) * v * p / (sympy.Float(0.07761599) * g - sympy.Float(0.07761022))
    lead = sympy.fraction(monic_denominator(found))[1].coeff(g)
    assert float(lead) == 1.0
    x = np.random.default_rng(0).uniform([1, 1, 2], [5, 5, 5], size=(300, 3))
    reference = x[:, 0] * x[:, 1] / (x[:, 2] - 1) * (1 + 1e-5 * np.random.default_rng(1).standard_normal(300))
    assert snap_constants(found, ["V", "pr", "gamma"], x, reference) == v * p / (g - 1)
