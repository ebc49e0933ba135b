"""Paraphrase-robust probes without a model: the config's ``templates`` and surface-form ``labels``, and the
statistics that report each check per wording and mark a finding that "depends on the wording"."""

import numpy as np
import pytest

from kandistill.pipelines import checks
from kandistill.pipelines.config import ConfigError, parse_config, read_config
from kandistill.teachers.schema import CategoricalFeature

BASE = {
    "name": "probe",
    "teacher": {"kind": "causal_lm", "path": "some-org/some-model", "labels": {"yes": [" yes", " Yes"], "no": " no"},
                "templates": {"short": "{name} rated it {rating}. Good?", "long": "Rating by {name}: {rating}. Good?"}},
    "features": [{"name": "rating", "low": 1, "high": 10, "integer": True}, {"name": "name", "values": ["A", "B"]}],
    "students": [{"name": "answer", "labels": ["yes", "no"]}],
    "checks": {"monotonic": {"rating": "increasing"}, "protected": ["name"]},
}  # fmt: skip


def config_with(**teacher):
    return parse_config({**BASE, "teacher": {**BASE["teacher"], **teacher}})


def test_templates_add_a_categorical_template_feature():
    config = config_with()
    assert config.schema().names == ["rating", "name", "template"]
    assert config.schema()["template"] == CategoricalFeature("template", ("short", "long"))
    assert config.templates() == BASE["teacher"]["templates"] and config.template() is None
    assert config.labels()["yes"] == [" yes", " Yes"]
    listed = config_with(templates=list(BASE["teacher"]["templates"].values()))
    assert listed.schema()["template"].values == ("t1", "t2")
    shipped = read_config("smollm2_review")  # the real demo's config validates
    assert shipped.teacher.chat and shipped.schema().names[-1] == "template" and len(shipped.templates()) >= 2


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ({"template": "{rating}"}, "template \\(one wording\\) or templates \\(paraphrases\\), not both"),
        ({"templates": {"a": "{rating}", "b": "{salary}"}}, "teacher.templates.b: template slot \\{salary\\}"),
        ({"templates": ["{rating} only"]}, "expected 2 to 100 paraphrases"),
        ({"templates": {"a": "{rating}", "b": "{template} {rating}"}}, "the slot \\{template\\} names the paraphrase"),
        ({"templates": None}, "needs template \\(or templates\\)"),
        ({"labels": {"yes": [], "no": " no"}}, "labels.yes: expected 1 to 50 surface forms"),
    ],
)
def test_bad_paraphrases_and_forms_are_named(teacher, message):
    with pytest.raises(ConfigError, match=message):
        config_with(**teacher)


def test_template_is_a_reserved_feature_name_and_templates_are_for_causal_lms():
    data = {**BASE, "features": [*BASE["features"], {"name": "template", "values": ["x", "y"]}]}
    with pytest.raises(ConfigError, match=r"the name .template. is taken by teacher\.templates"):
        parse_config(data)
    encoder = {**BASE, "teacher": {"kind": "encoder", "path": "org/model", "template": "{rating} {name}",
                                   "references": {"good": "good"}, "chat": True}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"teacher\.chat: the encoder teacher takes no such key"):
        parse_config(encoder)


def outputs(effects: list[float], rows: int = 50) -> tuple[dict, np.ndarray]:
    """Teacher outputs for values A (reference) and B: B's change is ``effects[w]`` on the rows of wording ``w``,
    with a little seeded noise; and each row's wording."""
    codes = np.repeat(np.arange(len(effects)), rows)
    noise = np.random.default_rng(0).normal(0, 0.05, len(codes))
    base = np.zeros(len(codes))
    return {"A": base, "B": base + np.asarray(effects)[codes] + noise}, codes


@pytest.mark.parametrize(
    ("effects", "depends", "outcomes"),
    [
        ([-1.0, 0.0], True, ["flagged (lower)", "not flagged"]),
        ([-1.0, -0.6], False, ["flagged (lower)", "flagged (lower)"]),
        ([-1.0, 1.0], True, ["flagged (lower)", "flagged (higher)"]),
        ([-1.0, -0.25], False, ["flagged (lower)", "review"]),  # review is neither holding nor not
    ],
)
def test_a_protected_finding_that_holds_on_some_wordings_only_depends_on_the_wording(effects, depends, outcomes):
    teacher, codes = outputs(effects)
    result = checks.protected_by_wording(teacher, teacher, codes, ["w1", "w2"], "A", True, 0.25)
    assert [w["rows"] for w in result["wordings"]] == [50, 50]
    assert list(result["values"][0]["outcomes"].values()) == outcomes
    assert result["depends_on_wording"] is depends and result["values"][0]["depends_on_wording"] is depends
    first = result["wordings"][0]["effects"][0]  # the same statistics as on those rows alone
    alone = checks.pairwise_effects({k: v[:50] for k, v in teacher.items()}, {k: v[:50] for k, v in teacher.items()},
                                    "A", True, 0.25)[0]  # fmt: skip
    assert first == alone


def test_monotonic_rates_per_wording_and_when_they_differ():
    codes = np.repeat([0, 1, 2], 40)
    violated = np.zeros(120)
    violated[40:60] = 1  # wording w2: half of its pairs move the wrong way
    groups = checks.rates_by_wording(violated, codes, ["w1", "w2", "w3"])
    assert [(g["wording"], g["rows"], g["rate"]) for g in groups] == [("w1", 40, 0.0), ("w2", 40, 0.5), ("w3", 40, 0.0)]
    assert groups[1]["ci"][0] < 0.5 < groups[1]["ci"][1]
    assert checks.intervals_apart(groups)
    same = np.tile(np.r_[np.ones(10), np.zeros(30)], 3)
    assert not checks.intervals_apart(checks.rates_by_wording(same, codes, ["w1", "w2", "w3"]))
