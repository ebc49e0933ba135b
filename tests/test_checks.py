"""The statistics of the protected checks (pipelines/checks.py), on synthetic teachers with known effects."""

import numpy as np

from kandistill.pipelines import checks

ROWS = 1000


def synthetic(values: list[str], effects: dict[str, float], seed: int = 0):
    """A teacher's log-odds for each value of a protected attribute, on the same rows: ``income - 1 + effect``."""
    rng = np.random.default_rng(seed)
    income = rng.uniform(0, 2, ROWS)
    noise = rng.normal(0, 0.3, ROWS)
    return income, {v: income - 1 + effects.get(v, 0.0) + noise * (v != values[0]) for v in values}


def test_the_bootstrap_interval_contains_the_true_effect_and_excludes_zero():
    _, outputs = synthetic(["male", "female"], {"female": -0.5})
    (effect,) = checks.pairwise_effects(outputs, outputs, "male", labels=True, threshold=0.1)
    low, high = effect["teacher_ci"]
    assert low < -0.5 < high and high < 0 and effect["rows"] == ROWS
    assert effect["verdict"] == "flagged" and 0 < effect["teacher_flip_rate"] < 1
    assert effect["teacher_flip_ci"][0] <= effect["teacher_flip_rate"] <= effect["teacher_flip_ci"][1]
    assert checks.bootstrap_ci(outputs["female"]) == checks.bootstrap_ci(outputs["female"]), "seeded"


def test_verdict_rules():
    assert checks.verdict([0.3, 0.5], 0.25) == "flagged" and checks.verdict([-0.5, -0.3], 0.25) == "flagged"
    assert checks.verdict([0.2, 0.3], 0.25) == "review" and checks.verdict([-0.1, 0.2], 0.25) == "not flagged"
    assert checks.overall_verdict(["not flagged", "review"]) == "review"
    assert checks.overall_verdict(["review", "flagged"]) == "flagged" and checks.overall_verdict([]) == "not flagged"


def test_group_outcome_rates_equal_a_direct_count():
    rng = np.random.default_rng(1)
    codes, outputs = rng.integers(0, 3, 500), rng.normal(0, 1, 500)
    result = checks.group_outcomes(codes, ["a", "b", "c"], outputs, labels=True)
    rates = [np.sum((codes == c) & (outputs > 0)) / np.sum(codes == c) for c in range(3)]
    assert [g["positive_rate"] for g in result["groups"]] == rates
    assert [g["rows"] for g in result["groups"]] == [np.sum(codes == c) for c in range(3)]
    assert result["rate_ratio"] == min(rates) / max(rates)
    assert result["four_fifths"] == ("passes" if min(rates) / max(rates) >= 0.8 else "fails")


def test_an_effect_that_lives_below_a_threshold_is_found_and_said():
    """The effect is -2 below the median income and 0 above: the bins show it, and the sentence says where."""
    income, outputs = synthetic(["male", "female"], {})
    outputs["female"] = outputs["male"] - 2.0 * (income < np.median(income))
    where = checks.binned_effect(outputs["female"] - outputs["male"], income, "income")
    effects = [b["effect"] for b in where["bins"]]
    assert len(effects) == 4 and effects[0] == effects[1] == -2 and effects[2] == effects[3] == 0
    assert where["sentence"].startswith(f"the effect is -2.00 below income {where['bins'][0]['high']:.3g} and +0.00 ")
    flat = checks.binned_effect(np.full(ROWS, -1.0) + np.random.default_rng(2).normal(0, 0.3, ROWS), income, "income")
    assert flat["sentence"] is None


def test_a_four_valued_attributes_effects_do_not_depend_on_the_order_of_its_values():
    values = ["north", "south", "east", "west"]
    _, outputs = synthetic(values, {"north": 1.5, "east": 0.2, "west": -0.3})
    shuffled = {v: outputs[v] for v in ["west", "east", "south", "north"]}
    first = {e["value"]: e for e in checks.pairwise_effects(outputs, outputs, "south", True, 0.25)}
    second = {e["value"]: e for e in checks.pairwise_effects(shuffled, shuffled, "south", True, 0.25)}
    assert first == second and set(first) == {"north", "east", "west"}
    assert checks.strongest(list(first.values()))["value"] == "north" and first["north"]["verdict"] == "flagged"
