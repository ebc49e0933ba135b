"""The one input scaling: each feature from its range ``[low, high]`` onto ``[-1, 1]``, the KAN grid's range."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def scale_inputs(x: Array, low: Array, high: Array) -> Array:
    """``(rows, features)`` in the features' units -> the same on ``[-1, 1]`` (numpy or torch, as given)."""
    return 2 * (x - low) / (high - low) - 1
