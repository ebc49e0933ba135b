"""Teacher tests: separability, symmetry and irrelevant inputs, decided on MLP teachers fitted to known laws."""

import math

import pytest
import torch

from kandistill.distill.discover.recursive import fit_teacher, merge_pair, outer, restrict
from kandistill.distill.discover.separability import (
    BoxTeacher,
    additive_split,
    irrelevant,
    multiplicative_split,
    product_offset,
    splits,
    symmetry,
    symmetry_gradient_residual,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp_teacher(fn, low: float, high: float, d: int, seed: int = 0) -> BoxTeacher:
    """A small MLP (600 Adam steps, 3 L-BFGS polishes) fitted to 800 samples of ``fn``."""
    x = low + torch.rand(800, d, generator=torch.Generator().manual_seed(seed)) * (high - low)
    return fit_teacher(x, fn(x), [f"v{k}" for k in range(d)], steps=600, polish_steps=3, seed=seed)


def test_xy_plus_sin_z_splits_additively_and_only_there():
    teacher = mlp_teacher(lambda x: x[:, 0] * x[:, 1] + torch.sin(x[:, 2]), -1.0, 1.0, 3)
    assert teacher.error < 0.05  # the tolerances scale with this: a useless teacher would pass anything
    verdicts = {part: additive_split(teacher, part) for part in splits(3)}
    assert [p for p, v in verdicts.items() if v.holds] == [(2,)]  # z | x, y
    assert min(v.score for p, v in verdicts.items() if p != (2,)) > 10  # far beyond the threshold 3
    assert not any(multiplicative_split(teacher, p).holds for p in splits(3))  # across 0: on f f' - f f'
    assert not any(irrelevant(teacher, i).holds for i in range(3))


def test_x_squared_exp_y_splits_multiplicatively_not_additively():
    teacher = mlp_teacher(lambda x: x[:, 0] ** 2 * torch.exp(x[:, 1]), 0.5, 2.0, 2)
    assert multiplicative_split(teacher, (0,)).holds
    assert not additive_split(teacher, (0,)).holds
    assert not any(symmetry(teacher, 0, 1, kind).holds for kind in ("minus", "plus", "divide"))


def test_a_function_of_x_minus_y_is_found_symmetric():
    teacher = mlp_teacher(lambda x: torch.sin(2 * (x[:, 0] - x[:, 1])) + (x[:, 0] - x[:, 1]) ** 2, -1.0, 1.0, 2)
    assert symmetry(teacher, 0, 1, "minus").holds
    assert not symmetry(teacher, 0, 1, "plus").holds
    assert not additive_split(teacher, (0,)).holds
    assert symmetry_gradient_residual(teacher, 0, 1, "minus") < 0.1 < symmetry_gradient_residual(teacher, 0, 1, "plus")


def test_an_ignored_input_is_irrelevant_on_an_exact_teacher():
    teacher = BoxTeacher(lambda x: torch.exp(x[:, 0]) * x[:, 2], [0, 0, 1], [1, 1, 2], error=0.0)
    assert [irrelevant(teacher, i).holds for i in range(3)] == [False, True, False]
    assert symmetry(teacher, 0, 2, "minus").score > 3 and multiplicative_split(teacher, (0,)).holds


def test_sub_teachers_compute_the_teacher_on_their_inputs():
    """`restrict` holds the other inputs fixed; `merge_pair` feeds x_i, x_j on the curve u = x_i / x_j."""
    teacher = BoxTeacher(lambda x: x[:, 0] / x[:, 1] + x[:, 2], [1, 2, 0], [3, 4, 1], error=0.0)
    base = torch.tensor([2.0, 3.0, 0.5])
    sub = restrict(teacher, [0, 2], base)
    z = torch.tensor([[1.5, 0.25], [3.0, 1.0]])
    torch.testing.assert_close(sub(z), z[:, 0] / 3.0 + z[:, 1])
    merged, others = merge_pair(teacher, 0, 1, "divide")
    assert others == [2]
    torch.testing.assert_close(merged.low, torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(merged.high, torch.tensor([1.5, 1.0]))
    u = torch.tensor([[0.25, 0.1], [0.8, 0.0], [1.5, 1.0]])
    torch.testing.assert_close(merged(u), u[:, 0] + u[:, 1])


def test_a_bad_box_is_refused():
    with pytest.raises(ValueError, match="box"):
        BoxTeacher(math.sin, [1.0, 0.0], [0.0, 1.0], error=0.0)
    with pytest.raises(ValueError, match="error"):
        BoxTeacher(math.sin, [0.0], [1.0], error=float("nan"))


def test_the_offset_that_makes_a_product_is_estimated_on_an_mlp_teacher():
    """f = 2 + x cos(y) is no product of parts; f - 2 is, and `product_offset` finds the 2 from the teacher."""
    teacher = mlp_teacher(lambda x: 2 + x[:, 0] * torch.cos(x[:, 1]), 1.0, 3.0, 2)
    c = product_offset(teacher, (0,))
    assert abs(c - 2) < 0.05
    assert not multiplicative_split(teacher, (0,)).holds
    assert multiplicative_split(outer(teacher, "shift", offset=c), (0,)).holds
