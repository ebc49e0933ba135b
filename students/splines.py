"""B-spline bases on per-input knot grids: the math of a KAN edge, as pure functions.

A grid of ``G`` intervals for splines of order ``k`` holds ``G + 2k + 1`` knots: the ``G + 1``
knots that span the input range plus ``k`` extension knots on each side, so that every point of
the range is covered by exactly ``k + 1`` basis functions and the ``G + k`` basis functions sum
to one there.

Shapes: ``x`` is ``(..., n_in)``, ``grid`` is ``(..., n_in, G + 2k + 1)`` and broadcasts against
``x``'s leading dimensions; bases are ``(..., n_in, G + k)``.
"""

from __future__ import annotations

import functools
import math

import torch


def uniform_grid(lo: torch.Tensor, hi: torch.Tensor, n_intervals: int, order: int) -> torch.Tensor:
    """Knots spaced evenly over ``[lo, hi]`` with ``order`` extension knots each side.

    ``lo`` and ``hi`` have shape ``(...)``; the result has shape ``(..., n_intervals + 2 * order + 1)``.
    """
    h = (hi - lo) / n_intervals
    steps = torch.arange(-order, n_intervals + order + 1, dtype=lo.dtype, device=lo.device)
    return lo.unsqueeze(-1) + steps * h.unsqueeze(-1)


def extend_knots(inner: torch.Tensor, order: int) -> torch.Tensor:
    """Add ``order`` knots on each side of ``inner`` (``(..., G + 1)``), spaced like its end intervals."""
    h_lo = inner[..., 1:2] - inner[..., 0:1]
    h_hi = inner[..., -1:] - inner[..., -2:-1]
    steps = torch.arange(1, order + 1, dtype=inner.dtype, device=inner.device)
    left = inner[..., 0:1] - steps.flip(0) * h_lo
    right = inner[..., -1:] + steps * h_hi
    return torch.cat([left, inner, right], dim=-1)


def is_uniform(grid: torch.Tensor, rtol: float = 1e-5) -> bool:
    """Whether every input's knots are evenly spaced (the closed-form basis then applies)."""
    steps = grid.diff(dim=-1)
    return bool(torch.allclose(steps, steps[..., :1].expand_as(steps), rtol=rtol, atol=0.0))


def cox_de_boor_basis(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """B-spline basis on any non-decreasing knot grid by the Cox-de Boor recursion.

    Vectorised over the batch, the inputs and the basis index; the only loop is over the order.
    ``x``: ``(..., n_in)``; ``grid``: ``(..., n_in, n_knots)``; returns ``(..., n_in, n_knots - order - 1)``.
    """
    x = x.unsqueeze(-1)
    basis = ((x >= grid[..., :-1]) & (x < grid[..., 1:])).to(x.dtype)
    for p in range(1, order + 1):
        left = (x - grid[..., : -(p + 1)]) / (grid[..., p:-1] - grid[..., : -(p + 1)])
        right = (grid[..., p + 1 :] - x) / (grid[..., p + 1 :] - grid[..., 1:-p])
        basis = left * basis[..., :-1] + right * basis[..., 1:]
    return basis


def _reciprocal_spans(grid: torch.Tensor, p: int) -> torch.Tensor:
    """``1 / (t[j + p] - t[j])`` per knot ``j``, 0 where two knots coincide (the 0/0 = 0 convention)."""
    span = grid[..., p:] - grid[..., :-p]
    return torch.where(span > 0, 1.0 / torch.where(span > 0, span, 1.0), 0.0)


def _knot_basis_levels(x: torch.Tensor, grid: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The order-``order`` and order-``order - 1`` bases by Cox-de Boor, with few temporaries.

    Uses ``right_j = 1 - left_{j+1}`` (both weights come from one ``(x - t_j) / (t_{j+p} - t_j)``
    tensor) and in-place updates, so each level allocates three full-size tensors.
    """
    x = x.unsqueeze(-1)
    basis = ((x >= grid[..., :-1]) & (x < grid[..., 1:])).to(x.dtype)
    lower = basis
    for p in range(1, order + 1):
        lower = basis
        weight = (x - grid[..., :-p]).mul_(_reciprocal_spans(grid, p))
        basis = weight[..., :-1] * lower[..., :-1]
        basis.add_(weight[..., 1:].neg_().add_(1.0).mul_(lower[..., 1:]))
    return basis, lower


class _KnotBasis(torch.autograd.Function):
    """Cox-de Boor basis with the analytic derivative as its backward.

    ``dB_{j,k}/dx = k (B_{j,k-1} / (t_{j+k} - t_j) - B_{j+1,k-1} / (t_{j+k+1} - t_{j+1}))``, from
    the order ``k - 1`` basis the forward computed anyway; autograd would otherwise record every
    elementwise op of the recursion. The grid is a buffer and gets no gradient.
    """

    @staticmethod
    def forward(ctx, x, grid, order):
        basis, lower = _knot_basis_levels(x, grid, order)
        if x.requires_grad:
            ctx.save_for_backward(lower.mul_(_reciprocal_spans(grid, order)) if order else lower)
        ctx.order = order
        return basis

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0] or ctx.order == 0:
            return None, None, None
        (scaled,) = ctx.saved_tensors
        slope = scaled[..., :-1] - scaled[..., 1:]
        return slope.mul_(grad).sum(-1).mul_(ctx.order), None, None


def knot_basis(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """B-spline basis on any non-decreasing grid: :func:`cox_de_boor_basis`'s values, faster.

    Shapes as in :func:`cox_de_boor_basis`; differentiable in ``x`` only.
    """
    if grid.requires_grad:
        raise ValueError("knot_basis: the grid must not require a gradient")
    return _KnotBasis.apply(x, grid, order)


def _cardinal_terms(order: int) -> list[tuple[float, float]]:
    """(offset, weight) pairs of the centred cardinal B-spline's truncated-power form.

    ``N(r) = sum_j weight_j * max(offset_j - r, 0) ** order`` with ``r = |s - (order + 1) / 2|``.
    """
    half = (order + 1) / 2
    return [
        ((half - j), (-1) ** j * math.comb(order + 1, j) / math.factorial(order))
        for j in range(math.ceil(half))
        if half - j > 0
    ]


def _offsets(x: torch.Tensor, start: torch.Tensor, step: torch.Tensor, order: int, n_basis: int) -> torch.Tensor:
    """``s[..., j]``: signed distance, in grid steps, from basis ``j``'s centre: ``(..., n_in, n_basis)``."""
    centres = torch.arange(n_basis, dtype=x.dtype, device=x.device) + (order + 1) / 2
    return ((x - start) / step).unsqueeze(-1) - centres


def cardinal_value(s: torch.Tensor, order: int) -> torch.Tensor:
    """The centred cardinal B-spline at offsets ``s``: ``sum_j w_j * max(o_j - |s|, 0) ** order``.

    Written with in-place ops (``s`` is overwritten): each full-size temporary costs a fresh
    allocation, which on CPU costs more than the arithmetic.
    """
    r = s.abs_()
    terms = _cardinal_terms(order)
    value = None
    for n, (offset, weight) in enumerate(terms):
        t = r if n == len(terms) - 1 else r.clone()
        t = t.neg_().add_(offset).clamp_min_(0.0).pow_(order)
        value = t.mul_(weight) if value is None else value.add_(t, alpha=weight)
    return value


def cardinal_slope(s: torch.Tensor, order: int) -> torch.Tensor:
    """Derivative of :func:`cardinal_value` with respect to ``s``."""
    r = s.abs()
    terms = _cardinal_terms(order)
    slope = None
    for n, (offset, weight) in enumerate(terms):
        t = r if n == len(terms) - 1 else r.clone()
        t = t.neg_().add_(offset).clamp_min_(0.0)
        t = t.pow_(order - 1) if order > 1 else t.gt_(0).to(t.dtype)
        slope = t.mul_(-order * weight) if slope is None else slope.add_(t, alpha=-order * weight)
    return slope.mul_(s.sign_())


def _value_kernel(x, start, step, order: int, n_basis: int):
    return cardinal_value(_offsets(x, start, step, order, n_basis), order)


def _grad_kernel(grad, x, start, step, order: int, n_basis: int):
    return cardinal_slope(_offsets(x, start, step, order, n_basis), order).mul_(grad).sum(-1) / step


@functools.cache
def _compiled_kernels() -> tuple:
    """The two kernels fused by ``torch.compile`` (one elementwise pass each, built on first use)."""
    return torch.compile(_value_kernel, dynamic=None), torch.compile(_grad_kernel, dynamic=None)


class _UniformBasis(torch.autograd.Function):
    """Closed-form basis on a uniform grid with a hand-written backward.

    The backward recomputes the slope from ``x`` instead of letting autograd record every
    elementwise op of the truncated-power form, which would dominate a KAN layer's cost.
    """

    @staticmethod
    def forward(ctx, x, start, step, order, n_basis, compiled):
        value_fn = _compiled_kernels()[0] if compiled else _value_kernel
        ctx.save_for_backward(x, start, step)
        ctx.order, ctx.n_basis, ctx.compiled = order, n_basis, compiled
        return value_fn(x, start, step, order, n_basis)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        x, start, step = ctx.saved_tensors
        grad_fn = _compiled_kernels()[1] if ctx.compiled else _grad_kernel
        return grad_fn(grad, x, start, step, ctx.order, ctx.n_basis), None, None, None, None, None


def uniform_basis(x: torch.Tensor, grid: torch.Tensor, order: int, compiled: bool = False) -> torch.Tensor:
    """B-spline basis on a uniform grid in closed form (same result as :func:`cox_de_boor_basis`).

    Each basis function is a shifted cardinal B-spline, evaluated from its truncated-power form,
    so the cost is a handful of elementwise ops whatever the order, with no recursion.
    ``compiled=True`` runs the forward and backward as two ``torch.compile``-fused kernels
    (faster, after a one-off compile of a few seconds).
    """
    start = grid[..., 0].detach()
    step = (grid[..., 1] - grid[..., 0]).detach()
    return _UniformBasis.apply(x, start, step, order, grid.shape[-1] - order - 1, compiled)


def spline_basis(
    x: torch.Tensor, grid: torch.Tensor, order: int, uniform: bool, compiled: bool = False
) -> torch.Tensor:
    """The basis by the fastest exact route: closed form when ``uniform``, else Cox-de Boor."""
    return uniform_basis(x, grid, order, compiled) if uniform else knot_basis(x, grid, order)


def quantile_grid(
    x: torch.Tensor,
    n_intervals: int,
    order: int,
    uniform_fraction: float,
    margin: float = 0.0,
    relative_margin: float = 0.0,
) -> torch.Tensor:
    """A grid that follows the data: the inner knots sit at the inputs' quantiles.

    ``x``: ``(..., batch, n_in)``. The inner knots are ``uniform_fraction * uniform +
    (1 - uniform_fraction) * quantiles`` over ``[min - pad, max + pad]`` per input, with ``pad =
    margin + relative_margin * (max - min)``, as in the KAN paper's ``grid_eps``; ``1.0`` keeps the
    grid uniform (and the closed-form basis). A relative margin leaves room for held-out inputs
    slightly beyond the training range, where a spline would otherwise fall to zero.
    Returns ``(..., n_in, n_intervals + 2 * order + 1)``.
    """
    xs = x.transpose(-1, -2).to(torch.float64)
    lo, hi = xs.amin(-1), xs.amax(-1)
    pad = margin + relative_margin * (hi - lo)
    lo, hi = lo - pad, hi + pad
    same = hi - lo < 1e-6
    lo, hi = torch.where(same, lo - 0.5, lo), torch.where(same, hi + 0.5, hi)
    levels = torch.linspace(0, 1, n_intervals + 1, dtype=xs.dtype, device=xs.device)
    even = lo.unsqueeze(-1) + levels * (hi - lo).unsqueeze(-1)
    if uniform_fraction >= 1.0:
        return uniform_grid(lo, hi, n_intervals, order).to(x.dtype)
    quantiles = torch.quantile(xs, levels, dim=-1).movedim(0, -1)
    quantiles[..., 0], quantiles[..., -1] = lo, hi
    inner = uniform_fraction * even + (1 - uniform_fraction) * quantiles
    return extend_knots(inner, order).to(x.dtype)


def fit_coefficients(basis: torch.Tensor, values: torch.Tensor, ridge: float = 1e-8) -> torch.Tensor:
    """Least-squares spline coefficients, solved in float64 with a tiny ridge for empty intervals.

    ``basis``: ``(..., batch, n_basis)``, ``values``: ``(..., batch, n_out)``; returns
    ``(..., n_basis, n_out)`` minimising ``|basis @ coef - values|^2 + ridge * |coef|^2``.
    """
    a = basis.to(torch.float64)
    gram = a.transpose(-1, -2) @ a
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    rhs = a.transpose(-1, -2) @ values.to(torch.float64)
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).unsqueeze(-1).clamp_min(1e-12)
    coef = torch.linalg.solve(gram + ridge * scale * eye, rhs)
    return coef.to(basis.dtype)
