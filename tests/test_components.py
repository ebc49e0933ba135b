"""A student as named components: indicators for categories, interactions as products, valid formulas only,
a real time budget."""

import json
from itertools import permutations

import numpy as np
import pytest
import sympy
import torch

from kandistill.distill.discover.feynman import read_feynman_csv
from kandistill.distill.discover.search import DiscoverConfig, discover_formula
from kandistill.distill.extract.anova import decompose
from kandistill.distill.extract.components import ComponentConfig, ComponentModel, decompose_student, group_categories
from kandistill.distill.extract.formula import FormulaError, Indicator, evaluate, from_tree, indicator, to_tree
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature

pytestmark = pytest.mark.usefixtures("one_thread")

REGIONS = ("north", "south", "west", "east")


def _rows(schema: FeatureSchema, n: int, seed: int = 0) -> np.ndarray:
    """Independent uniform rows, encoded (categories as codes)."""
    rng = np.random.default_rng(seed)
    columns = [rng.integers(0, len(f.values), n) if isinstance(f, CategoricalFeature) else rng.uniform(f.low, f.high, n)
               for f in schema.features]  # fmt: skip
    return np.stack(columns, 1).astype(np.float64)


def _terms(expr: sympy.Expr, feature: str) -> dict[str, float]:
    """The coefficient of each ``[feature = value]`` in a sum of terms; fails if the feature enters otherwise."""
    terms = {}
    for term in sympy.Add.make_args(sympy.expand(expr)):
        marks = [a for a in term.atoms(Indicator) if a.feature == feature]
        if sympy.Symbol(feature, real=True) in term.free_symbols and not marks:
            raise AssertionError(f"{feature} enters {term} other than through an indicator")
        if marks:
            assert len(marks) == 1 and term.free_symbols == {sympy.Symbol(feature, real=True)}, term
            terms[marks[0].value] = float(term / marks[0])
    return terms


def test_a_category_effect_on_the_third_value_is_one_indicator_term():
    schema = FeatureSchema((NumericFeature("income", 20, 100), CategoricalFeature("region", REGIONS)))
    x = _rows(schema, 2000)

    def teacher(rows):  # the effect sits on the third value, west; a little noise-like wiggle elsewhere
        return 0.05 * rows[:, 0] + 1.5 * (rows[:, 1] == 2) + 0.001 * np.sin(7 * rows[:, 1])

    model = decompose_student(teacher, schema, x[:1500], x[1500:])
    region = next(c for c in model.components if c.name == "region")
    assert region.kind == "table" and region.grid == (REGIONS,)
    assert _terms(model.formula, "region").keys() == {"west"}
    assert _terms(model.formula, "region")["west"] == pytest.approx(1.5, rel=0.1)
    assert str(region.expression).endswith("*[region = west]")
    income = next(c for c in model.components if c.name == "income")
    assert income.kind == "formula" and sympy.simplify(income.expression / sympy.Symbol("income", real=True)).is_number
    held_out = schema.decode(x[1500:])
    assert model.predict(held_out) == pytest.approx(teacher(x[1500:]), abs=0.01)


def test_indicator_terms_do_not_depend_on_the_order_of_the_values():
    found = []
    for order in [REGIONS, *list(permutations(REGIONS))[7::9]]:
        schema = FeatureSchema((NumericFeature("income", 20, 100), CategoricalFeature("region", order)))
        x = _rows(schema, 1500, seed=1)
        codes = {v: k for k, v in enumerate(order)}
        effect = np.asarray([{"north": 0.0, "south": 0.0, "west": 1.5, "east": -0.7}[v] for v in order])

        def teacher(rows, effect=effect):
            return 0.05 * rows[:, 0] + effect[rows[:, 1].astype(int)]

        model = decompose_student(teacher, schema, x)
        found.append({k: round(v, 3) for k, v in _terms(model.formula, "region").items()})
        assert codes  # each order really is a different coding
    assert all(terms == found[0] for terms in found) and found[0] == {"west": 1.5, "east": -0.7}


def test_group_categories_merges_equal_effects_and_picks_a_baseline_by_name_not_order():
    effects = {"b": 0.0, "a": 0.001, "c": 1.0, "d": 1.002}
    groups, base = group_categories(effects, 0.01)
    # two groups of two: the baseline holds the alphabetically first value
    assert groups == [(["c", "d"], pytest.approx(1.001))] and base == pytest.approx(0.0005)
    reversed_groups, _ = group_categories(dict(reversed(list(effects.items()))), 0.01)
    assert reversed_groups == groups
    with_reference, base = group_categories(effects, 0.01, reference="d")
    assert with_reference == [(["b", "a"], pytest.approx(0.0005))] and base == pytest.approx(1.001)


def test_a_planted_interaction_is_the_largest_pair_and_a_product():
    schema = FeatureSchema(tuple(NumericFeature(n, -1, 1) for n in ("x1", "x2", "x3", "x4")))
    x = _rows(schema, 2000, seed=2)

    def teacher(rows):
        return 2 * rows[:, 0] * rows[:, 1] + np.sin(rows[:, 2]) + 0.3 * rows[:, 3]

    model = decompose_student(teacher, schema, x[:1500], x[1500:])
    pairs = [c for c in model.components if len(c.features) == 2]
    assert pairs[0].name == "x1 x x2" and pairs[0].kind == "formula"
    assert pairs[0].variance_share == max(c.variance_share for c in pairs) > 0.3
    x1, x2 = sympy.symbols("x1 x2", real=True)
    assert float(sympy.expand(pairs[0].expression).coeff(x1 * x2)) == pytest.approx(2.0, rel=0.02)
    held_out = schema.decode(x[1500:])
    truth = teacher(x[1500:])
    r2 = {s: 1 - np.mean((model.predict(held_out, s) - truth) ** 2) / truth.var()
          for s in ("main_effects", "components", "formula")}  # fmt: skip
    assert r2["main_effects"] < 0.8 < 0.999 < r2["components"] and r2["formula"] > 0.999


def test_the_decomposition_shares_add_up_and_tables_interpolate():
    schema = FeatureSchema((NumericFeature("a", 0, 1), NumericFeature("b", 0, 1), NumericFeature("c", 0, 1)))
    x = _rows(schema, 1500, seed=3)

    def f(rows):
        return rows[:, 0] ** 2 + np.exp(rows[:, 1]) * rows[:, 2]

    parts = decompose(f, x, [False] * 3, max_pairs=3)
    total = sum(p.share for p in parts.mains + parts.pairs) + parts.remainder_share
    assert total == pytest.approx(1.0, abs=0.02)
    assert [p.features for p in parts.pairs] == [(1, 2)]
    assert np.corrcoef(parts.predict(x), f(x))[0, 1] > 0.999


def test_a_curve_stays_a_curve_when_no_function_fits():
    schema = FeatureSchema((NumericFeature("t", 0, 1), NumericFeature("u", 0, 1)))
    x = _rows(schema, 1500, seed=4)

    def f(rows):  # a staircase: no library function fits it within tolerance
        return np.floor(rows[:, 0] * 4) + 0.1 * rows[:, 1]

    model = decompose_student(f, schema, x)
    t = next(c for c in model.components if c.name == "t")
    assert t.kind == "curve" and t.expression is None and "no library function" in t.note
    assert sympy.Symbol("t", real=True) not in model.formula.free_symbols
    assert np.mean(np.abs(model.predict(schema.decode(x)) - f(x))) < 0.1  # linear between 33 quantiles


def test_components_round_trip_through_json_and_bad_records_are_refused():
    schema = FeatureSchema((NumericFeature("income", 20, 100), CategoricalFeature("region", REGIONS)))
    x = _rows(schema, 800, seed=5)
    model = decompose_student(lambda r: 0.05 * r[:, 0] - 0.8 * (r[:, 1] == 1), schema, x)
    data = json.loads(json.dumps(model.to_json()))
    loaded = ComponentModel.from_json(data, schema, "record")
    columns = schema.decode(x)
    assert loaded.predict(columns) == pytest.approx(model.predict(columns))
    assert loaded.predict(columns, "components") == pytest.approx(model.predict(columns, "components"))
    bad = [
        ("grid", lambda c: c["grid"][0].__setitem__(0, "atlantis")),
        ("values", lambda c: c.__setitem__("values", [1.0])),
        ("kind", lambda c: c.__setitem__("kind", "oracle")),
        ("tree", lambda c: c.__setitem__("tree", {"fn": "eval", "args": [{"num": 1}]})),
    ]
    for _field, damage in bad:
        broken = json.loads(json.dumps(data))
        damage(next(c for c in broken["components"] if c["name"] == "region"))
        with pytest.raises(FormulaError, match=r"record\.components\[\d\]"):
            ComponentModel.from_json(broken, schema, "record")


def test_indicator_nodes_render_store_and_evaluate_on_strings_or_codes():
    expr = 1.5 * indicator("region", "north") - 0.2 * sympy.Symbol("age", real=True)
    assert str(expr) == "-0.2*age + 1.5*[region = north]"
    assert r"\left[region = \text{north}\right]" in sympy.latex(expr)
    tree = to_tree(expr)
    assert {"indicator": ["region", "north"]} in tree["args"][0]["args"] + tree["args"][1]["args"]
    assert from_tree(tree, ["age", "region"]) == expr
    raw = {"age": [10, 20], "region": ["north", "east"]}
    assert list(evaluate(expr, ["age", "region"], raw)) == pytest.approx([-0.5, -4.0])
    codes = np.asarray([[10, 0], [20, 3]])
    assert list(evaluate(expr, ["age", "region"], codes, {"region": REGIONS})) == pytest.approx([-0.5, -4.0])
    with pytest.raises(FormulaError, match="region"):
        evaluate(expr, ["age", "region"], codes)  # codes without the value list
    with pytest.raises(FormulaError, match="indicator"):
        from_tree({"indicator": ["region", 3]}, ["region"])
    with pytest.raises(FormulaError, match="unknown feature"):
        from_tree({"indicator": ["nowhere", "north"]}, ["region"])


def test_a_spent_time_budget_leaves_parts_tabulated_and_says_so(caplog):
    """A budget spent before the search (``1e-6`` s) leaves every part tabulated, on any machine; how long
    the stage takes against its budget is measured by ``scripts/bench_budgets.py``."""
    schema = FeatureSchema(tuple(NumericFeature(f"x{k}", -1, 1) for k in range(10)))
    x = _rows(schema, 1500, seed=6)

    def f(rows):
        return np.sin(rows).sum(1) + rows[:, 0] * rows[:, 1]

    model = decompose_student(f, schema, x, config=ComponentConfig(seconds=1e-6))
    assert all(c.kind in ("curve", "surface") for c in model.components) and "budget" in caplog.text
    assert "time budget" in model.components[0].note


FEYNMAN = ["I.6.2a", "I.12.1", "I.29.4", "II.38.14", "I.34.27"]  # a log-target, products, ratios, a square root


@pytest.mark.parametrize("name", FEYNMAN)
def test_no_returned_formula_is_non_finite_on_its_data(name, feynman_csv):
    equation = next(e for e in read_feynman_csv(feynman_csv) if e.name == name)
    x, y = equation.sample(400, seed=0)
    config = DiscoverConfig(hidden=None, seconds=600, min_r2=0.5)
    found = discover_formula(x, y, list(equation.variables), config)
    values = evaluate(found.expression, list(equation.variables), x.double().numpy())
    assert np.isfinite(values).all() and found.r2_validation >= 0.5


def test_discover_never_returns_a_formula_that_is_nan_on_part_of_the_data(monkeypatch):
    """The issue's case: the only candidate is ``log(0.667 - 10 x)``, NaN on most rows."""
    import kandistill.distill.discover.search as discover

    x = torch.linspace(0, 1, 200)[:, None]
    y = torch.log((0.667 - 10 * x).clamp_min(1e-3))[:, 0]

    class Bad:
        def __init__(self):
            self.expressions = [sympy.log(0.667 - 10 * sympy.Symbol("z", real=True))]

        def callable(self):
            return lambda rows: np.log(0.667 - 10 * rows[:, :1])

    monkeypatch.setattr(discover, "sparse_fit", lambda model, *a, **k: model)
    monkeypatch.setattr(discover, "extract_formula", lambda *a, **k: Bad())
    with pytest.raises(FloatingPointError, match="no candidate is finite"):
        discover_formula(x, y, ["z"], DiscoverConfig(hidden=None, log_target=False))
