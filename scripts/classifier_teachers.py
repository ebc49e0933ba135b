"""Benchmark-only teachers: MLP classifiers on scikit-learn's bundled breast-cancer (30 features, 2 classes) and
wine (13 features, 3 classes) data, answering each class's log-probability, ``logprob[CLASS]``, as a causal LM's
label set does (used by ``bench_students.py``; the library's own embedded teachers are in
`kandistill.teachers.embedded`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kandistill.teachers.mlp import MLP, MLPTeacher
from kandistill.teachers.schema import FeatureSchema, NumericFeature


class LabelLogProbs(nn.Module):
    """An `MLP` of class logits that answers log-probabilities: ``(batch, n_in)`` -> ``(batch, n_classes)``."""

    def __init__(self, mlp: MLP) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).log_softmax(-1)


def sklearn_schema(data: Any) -> FeatureSchema:
    """A scikit-learn bundle's features as identifiers (``mean radius``: ``mean_radius``) over their observed ranges."""
    names = ["".join(c if c.isalnum() else "_" for c in name.strip()).strip("_") for name in data.feature_names]
    lows, highs = data.data.min(0), data.data.max(0)
    return FeatureSchema(tuple(NumericFeature(name, float(lo), float(hi))
                               for name, lo, hi in zip(names, lows, highs, strict=True)))  # fmt: skip


def train_classifier(x: torch.Tensor, labels: torch.Tensor, schema: FeatureSchema, n_classes: int,
                     hidden: tuple[int, ...] = (64, 64), steps: int = 1000, lr: float = 3e-3,
                     weight_decay: float = 1e-2, seed: int = 0) -> MLP:  # fmt: skip
    """An `MLP` of class logits fitted by full-batch AdamW on the cross-entropy (cosine schedule), seeded.

    The weight decay keeps the logits finite on (nearly) separable data, where an unregularised fit
    would grow them without bound; ``x``: ``(batch, n_in)``, ``labels``: ``(batch,)`` class indices.
    """
    torch.manual_seed(seed)
    mlp = MLP([x.shape[1], *hidden, n_classes])
    mlp.low, mlp.high = (torch.as_tensor(r, dtype=torch.float32) for r in schema.encoded_ranges())
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(mlp(x), labels).backward()
        optimizer.step()
        schedule.step()
    return mlp.eval()


def _classifier_teacher(data: Any, classes: list[str], steps: int, seed: int) -> MLPTeacher:
    schema = sklearn_schema(data)
    x = torch.as_tensor(data.data, dtype=torch.float32)
    labels = torch.as_tensor(data.target, dtype=torch.long)
    mlp = train_classifier(x, labels, schema, len(classes), steps=steps, seed=seed)
    return MLPTeacher(LabelLogProbs(mlp), schema, [f"logprob[{c}]" for c in classes])


def breast_cancer_teacher(steps: int = 1000, seed: int = 0) -> MLPTeacher:
    """An MLP classifier on scikit-learn's bundled breast-cancer data (569 tumours, 30 features).

    Outputs ``logprob[malignant]`` and ``logprob[benign]``; a label student learns their log-odds.
    """
    from sklearn.datasets import load_breast_cancer

    return _classifier_teacher(load_breast_cancer(), ["malignant", "benign"], steps, seed)


def wine_teacher(steps: int = 1000, seed: int = 0) -> MLPTeacher:
    """An MLP classifier on scikit-learn's bundled wine data (178 wines, 13 features, 3 cultivars).

    Outputs ``logprob[class_0]``, ``logprob[class_1]``, ``logprob[class_2]``; a label student learns
    the log-odds of the first two against the third.
    """
    from sklearn.datasets import load_wine

    return _classifier_teacher(load_wine(), ["class_0", "class_1", "class_2"], steps, seed)
