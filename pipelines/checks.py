"""The statistics of the audit's protected checks, as pure functions of arrays (no teacher, no I/O).

A counterfactual effect is measured row by row: the same audited row with the protected attribute set
to a value, against the same row set to the reference value. Its uncertainty is a percentile bootstrap
over rows (a seeded generator, so that a report is reproducible); every value's effect is resampled with
the same seed, so that an effect does not depend on the order of the values in the config.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000
FOUR_FIFTHS = 0.8


def bootstrap_ci(values: np.ndarray, seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL) -> list[float]:
    """The percentile bootstrap interval of the mean of ``values`` (resampling rows with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))]


def verdict(ci: list[float], threshold: float) -> str:
    """``flagged`` when the interval lies entirely beyond ±threshold, ``not flagged`` when it lies inside,
    ``review`` when it straddles the threshold."""
    low, high = ci
    if low > threshold or high < -threshold:
        return "flagged"
    if -threshold <= low and high <= threshold:
        return "not flagged"
    return "review"


def overall_verdict(verdicts: list[str]) -> str:
    """The worst of several verdicts: flagged, then review, then not flagged."""
    return next((v for v in ("flagged", "review") if v in verdicts), "not flagged")


def rule(threshold: float) -> str:
    """The verdict rule in words, printed beside each verdict."""
    return (f"flagged if the {LEVEL:.0%} CI lies entirely beyond ±{threshold:g}, review if it straddles "
            f"±{threshold:g}, not flagged if it lies inside")  # fmt: skip


def _measure(outputs: dict[str, np.ndarray], value: str, reference: str, labels: bool, seed: int) -> dict:
    change = outputs[value] - outputs[reference]
    result = {"effect": float(change.mean()), "ci": bootstrap_ci(change, seed)}
    if labels:
        flips = (np.sign(outputs[value]) != np.sign(outputs[reference])).astype(np.float64)
        result |= {"flip_rate": float(flips.mean()), "flip_ci": bootstrap_ci(flips, seed)}
    return result


def pairwise_effects(teacher: dict[str, np.ndarray], student: dict[str, np.ndarray], reference: str, labels: bool,
                     threshold: float, seed: int = 0) -> list[dict]:  # fmt: skip
    """For each value but the reference: the mean change of the output (row by row, against the same rows at the
    reference value) with its interval, the decision flip rate (label sets), on the teacher and as the student
    predicts it, and the verdict of the teacher's interval. ``teacher``/``student``: value -> outputs per row."""
    effects = []
    for value in teacher:
        if value == reference:
            continue
        t = _measure(teacher, value, reference, labels, seed)
        s = _measure(student, value, reference, labels, seed)
        effects.append({"value": value, "reference": reference, "rows": len(teacher[value]),
                        **{f"teacher_{k}": v for k, v in t.items()}, **{f"student_{k}": v for k, v in s.items()},
                        "verdict": verdict(t["ci"], threshold)})  # fmt: skip
    return effects


def strongest(effects: list[dict]) -> dict:
    """The pairwise effect of the largest size on the teacher (the one the headline states)."""
    return max(effects, key=lambda e: abs(e["teacher_effect"]))


def group_outcomes(codes: np.ndarray, values: list[str], outputs: np.ndarray, labels: bool) -> dict:
    """Each value's rows, mean output and (label sets) positive-decision rate (output > 0) on the audited
    inputs as they are; the ratio of the lowest to the highest rate, against the four-fifths rule."""
    groups = []
    for code, value in enumerate(values):
        mine = outputs[codes == code]
        group = {"value": value, "rows": int(mine.size), "mean_output": float(mine.mean()) if mine.size else None}
        if labels:
            group["positive_rate"] = float((mine > 0).mean()) if mine.size else None
        groups.append(group)
    result: dict = {"groups": groups}
    rates = [g["positive_rate"] for g in groups if g.get("positive_rate") is not None]
    if labels and rates and max(rates) > 0:
        ratio = min(rates) / max(rates)
        result |= {"rate_ratio": ratio, "four_fifths": "passes" if ratio >= FOUR_FIFTHS else "fails"}
    return result


def _where(bins: list[dict], i: int, name: str) -> str:
    low, high = bins[i]["low"], bins[i]["high"]
    if i == 0:
        return f"below {name} {high:.3g}"
    if i == len(bins) - 1:
        return f"above {name} {low:.3g}"
    return f"for {name} {low:.3g} to {high:.3g}"


def binned_effect(change: np.ndarray, other: np.ndarray, name: str, bins: int = 4, seed: int = 0) -> dict:
    """The per-row effect ``change`` in quantile bins of another feature's values ``other``, each with its
    interval; a sentence when the strongest and weakest bins' intervals do not overlap (the effect differs
    by more than its uncertainty)."""
    edges = np.unique(np.quantile(other, np.linspace(0, 1, bins + 1)))
    index = np.clip(np.searchsorted(edges, other, side="right") - 1, 0, max(len(edges) - 2, 0))
    table = []
    for b in range(max(len(edges) - 1, 1)):
        rows = change[index == b]
        if rows.size:
            high = float(edges[min(b + 1, len(edges) - 1)])
            table.append({"low": float(edges[b]), "high": high, "rows": int(rows.size), "effect": float(rows.mean()),
                          "ci": bootstrap_ci(rows, seed)})  # fmt: skip
    result: dict = {"feature": name, "bins": table, "sentence": None}
    if len(table) > 1:
        strong = max(range(len(table)), key=lambda i: abs(table[i]["effect"]))
        weak = min(range(len(table)), key=lambda i: abs(table[i]["effect"]))
        (slo, shi), (wlo, whi) = table[strong]["ci"], table[weak]["ci"]
        if shi < wlo or whi < slo:
            result["sentence"] = (f"the effect is {table[strong]['effect']:+.2f} {_where(table, strong, name)} and "
                                  f"{table[weak]['effect']:+.2f} {_where(table, weak, name)}")  # fmt: skip
    return result


# Per wording: with paraphrases (`kandistill.teachers.template.Templates`), every audited row was asked in one of
# them, and each check is measured on the rows of each wording as well as on all of them.
WORDING = "depends on the wording"
PROTECTED_WORDING_RULE = ("depends on the wording when one paraphrase's verdict is flagged and another's is not "
                          "flagged, or two are flagged in opposite directions (review counts as neither)")  # fmt: skip
MONOTONIC_WORDING_RULE = ("depends on the wording when the share of violations on two paraphrases differs beyond "
                          f"their {LEVEL:.0%} intervals (the intervals do not overlap)")  # fmt: skip


def outcome(effect: dict) -> str:
    """A protected effect's verdict with its direction: ``flagged (higher)``, ``flagged (lower)``, ``review`` or
    ``not flagged``."""
    if effect["verdict"] != "flagged":
        return effect["verdict"]
    return "flagged (higher)" if effect["teacher_effect"] > 0 else "flagged (lower)"


def differs(outcomes: list[str]) -> bool:
    """Whether definite outcomes disagree (`PROTECTED_WORDING_RULE`): ``review`` is neither holding nor not."""
    return len({o for o in outcomes if o != "review"}) > 1


def protected_by_wording(teacher: dict[str, np.ndarray], student: dict[str, np.ndarray], codes: np.ndarray,
                         wordings: list[str], reference: str, labels: bool, threshold: float) -> dict:  # fmt: skip
    """`pairwise_effects` on the rows of each wording (``codes``: each row's index into ``wordings``), and for each
    value whether its verdict depends on the wording::

        {"wordings": [{"wording", "rows", "verdict", "effects": [...]}],
         "values": [{"value", "outcomes": {wording: outcome}, "depends_on_wording"}], "depends_on_wording", "rule"}
    """
    per_wording = []
    for code, name in enumerate(wordings):
        rows = codes == code
        if not rows.any():
            continue
        effects = pairwise_effects({v: t[rows] for v, t in teacher.items()}, {v: s[rows] for v, s in student.items()},
                                   reference, labels, threshold)  # fmt: skip
        per_wording.append({"wording": name, "rows": int(rows.sum()), "effects": effects,
                            "verdict": overall_verdict([e["verdict"] for e in effects])})  # fmt: skip
    values = []
    for i, value in enumerate(v for v in teacher if v != reference):
        outcomes = {w["wording"]: outcome(w["effects"][i]) for w in per_wording}
        values.append({"value": value, "outcomes": outcomes, "depends_on_wording": differs(list(outcomes.values()))})
    return {"wordings": per_wording, "values": values, "rule": PROTECTED_WORDING_RULE,
            "depends_on_wording": any(v["depends_on_wording"] for v in values)}  # fmt: skip


def rates_by_wording(violated: np.ndarray, codes: np.ndarray, wordings: list[str], seed: int = 0) -> list[dict]:
    """The share of violations ``violated`` (0/1 per row) on the rows of each wording, with its interval."""
    return [{"wording": name, "rows": int((codes == code).sum()), "rate": float(violated[codes == code].mean()),
             "ci": bootstrap_ci(violated[codes == code], seed)}
            for code, name in enumerate(wordings) if (codes == code).any()]  # fmt: skip


def intervals_apart(groups: list[dict]) -> bool:
    """Whether the groups with the highest and the lowest ``rate`` have intervals that do not overlap
    (`MONOTONIC_WORDING_RULE`)."""
    if len(groups) < 2:
        return False
    high = max(groups, key=lambda g: g["rate"])
    low = min(groups, key=lambda g: g["rate"])
    return high["ci"][0] > low["ci"][1]
