"""The B-spline bases against scipy and a plain Cox-de Boor loop."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import BSpline

from kandistill.students.splines import (
    cox_de_boor_basis,
    fit_coefficients,
    is_uniform,
    knot_basis,
    quantile_grid,
    uniform_basis,
    uniform_grid,
)


def naive_basis(x: float, knots: list[float], order: int) -> list[float]:
    """Textbook Cox-de Boor, one point, plain Python loops."""
    n = len(knots) - 1
    b = [1.0 if knots[i] <= x < knots[i + 1] else 0.0 for i in range(n)]
    for p in range(1, order + 1):
        b = [
            (x - knots[i]) / (knots[i + p] - knots[i]) * b[i]
            + (knots[i + p + 1] - x) / (knots[i + p + 1] - knots[i + 1]) * b[i + 1]
            for i in range(n - p)
        ]
    return b


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("n_intervals", [3, 5, 11])
def test_uniform_basis_matches_scipy_and_sums_to_one(order, n_intervals):
    grid = uniform_grid(torch.tensor([-1.0, 0.5]).double(), torch.tensor([1.0, 4.0]).double(), n_intervals, order)
    inner_lo, inner_hi = grid[:, order], grid[:, -order - 1]
    x = inner_lo + torch.rand(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * (
        inner_hi - inner_lo
    )
    basis = uniform_basis(x, grid, order)
    for i in range(2):
        ref = BSpline.design_matrix(x[:, i].numpy(), grid[i].numpy(), order).toarray()
        np.testing.assert_allclose(basis[:, i].numpy(), ref, atol=1e-6)
    torch.testing.assert_close(basis.sum(-1), torch.ones(500, 2, dtype=torch.float64), atol=1e-12, rtol=0)


def test_cox_de_boor_matches_naive_loop_on_a_nonuniform_grid():
    knots = [-3.0, -2.0, -1.5, -1.0, -0.2, 0.1, 0.9, 1.0, 2.5, 3.0, 4.0]
    grid = torch.tensor([knots], dtype=torch.float64)
    xs = torch.linspace(-1.0, 0.999, 37, dtype=torch.float64)
    basis = cox_de_boor_basis(xs[:, None], grid, 3)[:, 0]
    ref = torch.tensor([naive_basis(float(x), knots, 3) for x in xs], dtype=torch.float64)
    torch.testing.assert_close(basis, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_knot_basis_equals_the_recursion_and_its_gradient_passes_gradcheck(order):
    knots = [-3.0, -2.0, -1.5, -1.0, -0.2, 0.1, 0.9, 1.0, 2.5, 3.0, 4.0]
    grid = torch.tensor([knots, [k / 2 for k in knots]], dtype=torch.float64)
    x = torch.rand(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 1.9 - 0.95
    torch.testing.assert_close(knot_basis(x, grid, order), cox_de_boor_basis(x, grid, order), atol=1e-12, rtol=0)
    if order:
        assert torch.autograd.gradcheck(lambda x: knot_basis(x, grid, order), (x.requires_grad_(),))


def test_knot_basis_on_coinciding_knots_is_finite_and_sums_to_one():
    grid = torch.tensor([[-2.0, -1.0, -1.0, -1.0, 0.0, 0.5, 0.5, 1.0, 2.0, 3.0]], dtype=torch.float64)
    x = torch.linspace(-0.99, 0.99, 41, dtype=torch.float64)[:, None]
    basis = knot_basis(x, grid, 2)
    assert torch.isfinite(basis).all()
    torch.testing.assert_close(basis.sum(-1), torch.ones(41, 1, dtype=torch.float64), atol=1e-12, rtol=0)


def test_uniform_basis_gradcheck_float64():
    grid = uniform_grid(torch.tensor([-1.0, -2.0, 0.0]), torch.tensor([1.0, 2.0, 1.0]), 5, 3).double()
    x = (
        torch.rand(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: uniform_basis(x, grid, 3), (x,))


def test_closed_form_and_recursion_agree():
    grid = uniform_grid(torch.tensor([-2.0]).double(), torch.tensor([3.0]).double(), 7, 3)
    x = torch.linspace(-2.0, 2.99, 200, dtype=torch.float64)[:, None]
    torch.testing.assert_close(uniform_basis(x, grid, 3), cox_de_boor_basis(x, grid, 3), atol=1e-12, rtol=0)


def test_quantile_grid_follows_the_data_and_uniform_fraction_one_stays_uniform():
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)).double()
    adaptive = quantile_grid(x, 4, 3, uniform_fraction=0.0)
    inner = adaptive[:, 3:8]
    expected = torch.quantile(x.T, torch.linspace(0, 1, 5, dtype=torch.float64), dim=-1).T
    torch.testing.assert_close(inner, expected)
    assert not is_uniform(adaptive)
    assert is_uniform(quantile_grid(x, 4, 3, uniform_fraction=1.0))


def test_fit_coefficients_recovers_a_spline():
    grid = uniform_grid(torch.tensor([-1.0]), torch.tensor([1.0]), 6, 3).double()
    x = torch.linspace(-1, 1, 300, dtype=torch.float64)[:, None]
    basis = uniform_basis(x, grid, 3)[:, 0]
    coef = torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fit_coefficients(basis, basis @ coef), coef, atol=1e-6, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    lo=st.floats(-5, 5),
    width=st.floats(0.1, 10),
    n_intervals=st.integers(1, 12),
    order=st.integers(1, 5),
    fractions=st.lists(st.floats(0, 0.999), min_size=1, max_size=20),
)
def test_basis_is_a_nonnegative_partition_of_unity(lo, width, n_intervals, order, fractions):
    grid = uniform_grid(torch.tensor([lo], dtype=torch.float64), torch.tensor([lo + width], dtype=torch.float64),
                        n_intervals, order)  # fmt: skip
    x = lo + torch.tensor(fractions, dtype=torch.float64)[:, None] * width
    basis = uniform_basis(x, grid, order)
    assert (basis >= -1e-12).all()
    torch.testing.assert_close(basis.sum(-1), torch.ones_like(x), atol=1e-9, rtol=0)
    torch.testing.assert_close(basis, cox_de_boor_basis(x, grid, order), atol=1e-9, rtol=0)
