"""The KAN layer and network: reference agreement, grid operations, pruning, ensembles, bad input."""

import math

import pytest
import torch
from torch import nn

from kandistill.distill.train.fit import FitConfig, fit_kan
from kandistill.students import KAN, KANLayer
from kandistill.students.splines import cox_de_boor_basis, uniform_grid


def feynman_pykan(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.sin(math.pi * x[..., :1]) + x[..., 1:2] ** 2)


def uniform_inputs(n: int, d: int, seed: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    return lo + torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) * (hi - lo)


@pytest.fixture(scope="module")
def trained_kan() -> tuple[KAN, torch.Tensor]:
    """A KAN trained coarse to fine (G = 5, then 10), as in the KAN schedule."""
    x = uniform_inputs(500, 2, seed=0)
    model = KAN([2, 5, 1], grid=5, seed=0)
    fit_kan(model, x, feynman_pykan(x), FitConfig(steps=20))
    model = model.refine(10)
    fit_kan(model, x, feynman_pykan(x), FitConfig(steps=20))
    return model, x


def naive_layer(layer: KANLayer, x: torch.Tensor) -> torch.Tensor:
    """Loop over every edge of student 0 and apply the definition of phi_ij."""
    out = torch.zeros(x.shape[0], layer.out_dim, dtype=x.dtype)
    for i in range(layer.in_dim):
        basis = cox_de_boor_basis(x[:, i : i + 1], layer.grid[0, i : i + 1], layer.k)[:, 0]
        for j in range(layer.out_dim):
            spline = basis @ layer.coef[0, i, :, j]
            phi = layer.scale_base[0, i, j] * nn.functional.silu(x[:, i]) + layer.scale_spline[0, i, j] * spline
            out[:, j] += layer.mask[0, i, j] * phi
    return out + layer.bias[0]


def test_layer_matches_naive_per_edge_loop():
    torch.manual_seed(0)
    layer = KANLayer(3, 4, grid=6, k=3).double()
    with torch.no_grad():
        lo, hi = torch.full((1, 3), -1.0, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
        layer.grid.copy_(uniform_grid(lo, hi, 6, 3))  # exactly uniform in float64
        layer.coef.normal_()
        layer.bias.normal_()
        layer.mask[0, 1, 2] = 0.0
    x = uniform_inputs(64, 3, seed=1).double() * 0.99
    torch.testing.assert_close(layer(x[None])[0], naive_layer(layer, x), atol=1e-12, rtol=0)


def test_layer_gradcheck_float64_inputs_and_parameters():
    torch.manual_seed(0)
    layer = KANLayer(2, 3, grid=4, k=3).double()
    x = (uniform_inputs(8, 2, seed=2).double() * 0.9).unsqueeze(0).requires_grad_()
    names = ["coef", "scale_base", "scale_spline", "bias"]
    params = tuple(getattr(layer, n).detach().clone().requires_grad_() for n in names)

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_edge_functions_sum_to_the_output(trained_kan):
    model, x = trained_kan
    edges = model.edge_functions(x)
    assert [tuple(v.outputs.shape) for v in edges] == [(1, 500, 2, 5), (1, 500, 5, 1)]
    rebuilt = edges[-1].outputs.sum(2) + model.layers[-1].bias[:, None]
    torch.testing.assert_close(rebuilt[0], model(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(edges[1].inputs[0], model.layers[0](x[None])[0], atol=1e-5, rtol=1e-5)


def test_update_grid_keeps_the_function(trained_kan):
    """Knots move to the data's quantiles; the function is kept up to the spline's O(h^4) error."""
    model, x = trained_kan
    model = model.member(0)
    before = model(x)
    model.update_grid(x, uniform_fraction=0.02)
    assert not model.layers[0].uniform
    rel = (model(x) - before).norm() / before.norm()
    assert rel < 1e-3


@pytest.mark.parametrize(("new_grid", "tolerance"), [(20, 1e-5), (15, 1e-3)])
def test_refine_keeps_the_function(trained_kan, new_grid, tolerance):
    """A multiple of the old grid size represents the old splines exactly; any other size nearly."""
    model, x = trained_kan
    finer = model.refine(new_grid)
    assert finer.config.grid == new_grid and finer.layers[0].coef.shape[2] == new_grid + 3
    rel = (finer(x) - model(x)).norm() / model(x).norm()
    assert rel < tolerance


def test_prune_removes_dead_nodes_and_keeps_the_output():
    torch.manual_seed(0)
    model = KAN([2, 4, 1], seed=0)
    x = uniform_inputs(300, 2, seed=3)
    with torch.no_grad():
        model.layers[0].coef[:, :, :, 2:] = 0.0  # hidden nodes 2 and 3 get (almost) nothing in
        model.layers[0].scale_base[:, :, 2:] = 0.0
        model.layers[0].scale_base[:, :, :2] = 1.0
        model.layers[1].coef.normal_()
        model.layers[1].scale_base.fill_(0.5)
    pruned = model.prune(x, edge_threshold=1e-3, node_threshold=1e-3)
    assert pruned.width == [2, 2, 1]
    torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-5)


def test_prune_folds_constant_edges_into_the_bias():
    model = KAN([1, 1], seed=0)
    with torch.no_grad():
        model.layers[0].coef.fill_(0.7)  # a constant spline: sum of the basis is 1
        model.layers[0].scale_base.zero_()
    x = uniform_inputs(50, 1, seed=4)
    pruned = model.prune(x)
    assert pruned.layers[0].mask.sum() == 0
    torch.testing.assert_close(pruned(x), model(x))


def test_ensemble_equals_separate_students_forward_and_backward():
    width, e = [3, 4, 2], 5
    ensemble = KAN(width, ensemble=e, seed=10)
    singles = [KAN(width, seed=10 + i) for i in range(e)]
    x = uniform_inputs(32, 3, seed=5)
    y_ens = ensemble(x)
    y_ens.square().sum().backward()
    for i, single in enumerate(singles):
        y = single(x)
        torch.testing.assert_close(y_ens[i], y)
        y.square().sum().backward()
        torch.testing.assert_close(ensemble.layers[0].coef.grad[i], single.layers[0].coef.grad[0])
    stacked = KAN.stack(singles)
    torch.testing.assert_close(stacked(x), y_ens.detach())
    torch.testing.assert_close(ensemble.member(3)(x), singles[3](x))


def test_ensemble_takes_per_member_inputs():
    model = KAN([2, 3, 1], ensemble=2, seed=0)
    x = torch.stack([uniform_inputs(10, 2, seed=6), uniform_inputs(10, 2, seed=7)])
    out = model(x)
    torch.testing.assert_close(out[1], model.member(1)(x[1]))


def test_symbolic_edges_compute_their_function():
    model = KAN([2, 1], seed=0)
    model.fix_symbolic(0, 0, 0, "sin", affine=(math.pi, 0.0, 2.0, 0.5))
    model.fix_symbolic(0, 1, 0, "x^2", affine=(1.0, 0.0, 1.0, 0.0))
    x = uniform_inputs(40, 2, seed=8)
    expected = 2 * torch.sin(math.pi * x[:, 0]) + 0.5 + x[:, 1] ** 2
    torch.testing.assert_close(model(x)[:, 0], expected, atol=1e-5, rtol=1e-5)
    assert model.symbolic_edges() == {
        (0, 0, 0): ("sin", pytest.approx([math.pi, 0.0, 2.0, 0.5])),
        (0, 1, 0): ("x^2", [1.0, 0.0, 1.0, 0.0]),
    }
    model.unfix_symbolic(0, 0, 0)
    assert list(model.symbolic_edges()) == [(0, 1, 0)]


def test_symbolic_affine_is_trainable():
    model = KAN([1, 1], seed=0)
    with torch.no_grad():
        model.layers[0].scale_base.zero_()
        model.layers[0].coef.zero_()
    model.fix_symbolic(0, 0, 0, "exp", affine=(0.5, 0.0, 1.0, 0.0))
    x = uniform_inputs(200, 1, seed=9)
    fit_kan(model, x, 3 * torch.exp(1.5 * x) - 1, FitConfig(steps=15, grid_update_every=0))
    a, b, c, d = model.symbolic_edges()[(0, 0, 0)][1]
    offset = d + model.layers[0].bias.item()  # the edge's d and the node's bias are one constant
    assert abs(a - 1.5) < 1e-3 and abs(c * math.exp(b) - 3) < 1e-3 and abs(offset + 1) < 1e-3


def test_kan_fits_exp_sin_plus_square_to_held_out_rmse_below_1e2():
    x_train, x_test = uniform_inputs(1000, 2, seed=11), uniform_inputs(1000, 2, seed=12)
    model = KAN([2, 5, 1], grid=5, seed=0)
    fit_kan(model, x_train, feynman_pykan(x_train), FitConfig(steps=40))
    model = model.refine(10)
    fit_kan(model, x_train, feynman_pykan(x_train), FitConfig(steps=40))
    rmse = (model(x_test) - feynman_pykan(x_test)).square().mean().sqrt()
    assert rmse < 1e-2


def test_sparsity_penalty_matches_its_definition(trained_kan):
    model, x = trained_kan
    _, penalty = model.forward_with_penalty(x, l1=1.0, entropy=2.0)
    expected = 0.0
    for v in model.edge_functions(x):
        s = v.outputs[0].abs().mean(0)
        p = s / s.sum()
        expected += s.sum() - 2.0 * (p * p.log()).sum()
    torch.testing.assert_close(penalty[0], expected, atol=1e-4, rtol=1e-4)


def test_compiled_basis_matches_eager():
    x = uniform_inputs(64, 3, seed=13).requires_grad_()
    eager = KAN([3, 4, 1], seed=0)
    compiled = KAN([3, 4, 1], seed=0, compiled_basis=True)
    y_e, y_c = eager(x), compiled(x)
    torch.testing.assert_close(y_c, y_e, atol=1e-5, rtol=1e-5)
    (g_e,) = torch.autograd.grad(y_e.sum(), x)
    (g_c,) = torch.autograd.grad(y_c.sum(), x)
    torch.testing.assert_close(g_c, g_e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda: torch.zeros(4, 3), r"expected shape \(batch, 2\)"),
        (lambda: torch.tensor([[0.1, float("nan")]]), "NaN"),
        (lambda: torch.zeros(3, 4, 2), "ensemble size 1"),
        (lambda: [[0.0, 1.0]], "torch.Tensor"),
    ],
)
def test_bad_input_is_named(make_input, message):
    with pytest.raises((ValueError, TypeError), match=message):
        KAN([2, 3, 1])(make_input())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"width": [2]}, "width"), ({"width": [2, -3, 1]}, "width"), ({"width": [2, 1], "grid": 0}, "grid")],
)
def test_bad_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KAN(**kwargs)


def test_remove_hidden_node_folds_a_constant_node_into_the_bias():
    model = KAN([2, 3, 1], seed=0)
    with torch.no_grad():
        model.layers[0].coef[:, :, :, 1] = 0.0  # hidden node 1 sees a constant input
        model.layers[0].scale_base[:, :, 1] = 0.0
        model.layers[0].bias[:, 1] = 0.4
    x = uniform_inputs(100, 2, seed=14)
    smaller = model.remove_hidden_node(1, 1, x)
    assert smaller.width == [2, 2, 1]
    torch.testing.assert_close(smaller(x), model(x))
