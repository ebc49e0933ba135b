"""The embedded teachers' tasks, apart from their models: the loan decision (features, prompt, answers, and the
planted rule the embedded Llama learns) and the diabetes data's features. Light (no torch): run configs are
checked against these before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature

LOAN_SCHEMA = FeatureSchema((
    NumericFeature("age", 18, 80, integer=True),
    NumericFeature("income", 20, 100, integer=True),
    NumericFeature("debt", 0, 50, integer=True),
    CategoricalFeature("gender", ("male", "female")),
))  # fmt: skip
LOAN_TEMPLATE = "applicant age {age} income {income} k debt {debt} k gender {gender} . approve ? answer :"
LOAN_LABELS = {"yes": " yes", "no": " no"}


@dataclass(frozen=True)
class LoanRule:
    """The planted decision rule: the log-odds of "yes" as an affine function of the features."""

    income_coef: float = 0.08
    debt_coef: float = -0.15
    bias: float = -2.0
    protected_effect: float = 0.0
    protected_value: str = "female"

    def log_odds(self, batch: dict[str, list]) -> np.ndarray:
        income = np.asarray(batch["income"], dtype=np.float64)
        debt = np.asarray(batch["debt"], dtype=np.float64)
        protected = np.asarray([g == self.protected_value for g in batch["gender"]], dtype=np.float64)
        return self.income_coef * income + self.debt_coef * debt + self.bias + self.protected_effect * protected


def diabetes_schema() -> FeatureSchema:
    """The diabetes data's 10 features (scikit-learn's scaled units), each over its observed range."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    lows, highs = data.data.min(0), data.data.max(0)
    return FeatureSchema(tuple(NumericFeature(name, float(lo), float(hi))
                               for name, lo, hi in zip(data.feature_names, lows, highs, strict=True)))  # fmt: skip
