"""The library's one R^2: scikit-learn's numbers, and the same edge cases for every caller."""

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score as sklearn_r2

from kandistill.distill.train.metrics import r2_score


def test_r2_matches_scikit_learn_on_columns_and_tensors():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(200, 3)) * [1.0, 5.0, 0.1]
    prediction = target + rng.normal(size=target.shape) * 0.3
    expected = sklearn_r2(target, prediction, multioutput="variance_weighted")
    assert r2_score(prediction, target) == pytest.approx(expected, rel=1e-12)
    assert r2_score(torch.as_tensor(prediction), torch.as_tensor(target)) == pytest.approx(expected, rel=1e-12)
    assert r2_score(prediction[:, 0], target[:, 0]) == pytest.approx(sklearn_r2(target[:, 0], prediction[:, 0]))


def test_r2_edge_cases():
    target = np.arange(10.0)
    assert r2_score(np.where(target == 3, np.nan, target), target) == -np.inf
    assert r2_score(np.full(10, np.inf), target) == -np.inf
    assert r2_score(target.mean(), target) == pytest.approx(0.0)  # a constant prediction broadcasts
    assert r2_score(np.ones(10), np.ones(10)) == 1.0 and r2_score(np.zeros(10), np.ones(10)) == 0.0
