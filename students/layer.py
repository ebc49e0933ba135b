"""One KAN layer: a learnable 1-D function on every edge, for an ensemble of independent students.

Edge ``(i, j)`` of student ``e`` computes

    phi_eij(x) = mask * (w_base * silu(x) + w_spline * sum_k coef_eikj B_k(x))
                 + sym_mask * (c * f(a * x + b) + d)

and output node ``j`` sums its edges plus a bias. The forward pass never forms the per-edge
values: it expands the input into its spline basis, ``(E, batch, in, n_basis)``, and applies
one batched matmul with ``(E, in * n_basis, out)`` (plus a small one for the silu branch).
Per-edge values are only built on request (:meth:`KANLayer.edge_outputs`), for plots,
pruning, regularisation and extraction.
"""

from __future__ import annotations

import torch
from torch import nn

from kandistill.students.splines import (
    extend_knots,
    fit_coefficients,
    is_uniform,
    quantile_grid,
    spline_basis,
    uniform_grid,
)
from kandistill.students.symbols import DEFAULT_SYMBOLS, SymbolLibrary


class KANLayer(nn.Module):
    """``E`` independent KAN layers of width ``in_dim -> out_dim``, evaluated as one batched op.

    Inputs are ``(E, batch, in_dim)``; outputs ``(E, batch, out_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        grid: int = 5,
        k: int = 3,
        ensemble: int = 1,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        noise_scale: float = 0.3,
        base_scale: float = 1.0,
        generators: list[torch.Generator | None] | None = None,
        symbols: SymbolLibrary = DEFAULT_SYMBOLS,
        compiled_basis: bool = False,
    ):
        super().__init__()
        if in_dim < 1 or out_dim < 1 or grid < 1 or k < 1 or ensemble < 1:
            raise ValueError(
                f"KANLayer: in_dim, out_dim, grid, k and ensemble must be >= 1, got "
                f"in_dim={in_dim}, out_dim={out_dim}, grid={grid}, k={k}, ensemble={ensemble}"
            )
        self.in_dim, self.out_dim, self.n_intervals, self.k = in_dim, out_dim, grid, k
        self.ensemble = ensemble
        self.symbols = symbols
        self.compiled_basis = compiled_basis
        n_basis = grid + k
        generators = generators or [None] * ensemble

        lo, hi = torch.full((ensemble, in_dim), grid_range[0]), torch.full((ensemble, in_dim), grid_range[1])
        self.register_buffer("grid", uniform_grid(lo, hi, grid, k))
        self.register_buffer("mask", torch.ones(ensemble, in_dim, out_dim))
        self.register_buffer("sym_mask", torch.zeros(ensemble, in_dim, out_dim))
        self.register_buffer("sym_index", torch.zeros(ensemble, in_dim, out_dim, dtype=torch.long))

        def uniform_noise(shape, g):
            return torch.rand(shape, generator=g) * 2 - 1

        self.coef = nn.Parameter(
            torch.stack([uniform_noise((in_dim, n_basis, out_dim), g) for g in generators]) * (noise_scale / (2 * grid))
        )
        self.scale_base = nn.Parameter(
            torch.stack([uniform_noise((in_dim, out_dim), g) for g in generators]) * (base_scale / in_dim**0.5)
        )
        self.scale_spline = nn.Parameter(torch.full((ensemble, in_dim, out_dim), 1 / in_dim**0.5))
        self.bias = nn.Parameter(torch.zeros(ensemble, out_dim))
        self.sym_affine = nn.Parameter(torch.tensor([1.0, 0.0, 1.0, 0.0]).repeat(ensemble, in_dim, out_dim, 1))
        self.refresh()
        self.register_load_state_dict_post_hook(lambda module, _: module.refresh())

    @property
    def n_basis(self) -> int:
        return self.n_intervals + self.k

    def refresh(self) -> None:
        """Recompute the flags derived from the buffers (after a load or an in-place edit)."""
        self.uniform = is_uniform(self.grid)
        self.has_symbolic = bool(self.sym_mask.any())

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """Spline basis of the inputs: ``(E, batch, in)`` -> ``(E, batch, in, n_basis)``."""
        return spline_basis(x, self.grid.unsqueeze(1), self.k, self.uniform, self.compiled_basis)

    def _numeric_mask(self) -> torch.Tensor:
        return self.mask * (1 - self.sym_mask) if self.has_symbolic else self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(E, batch, in)`` -> ``(E, batch, out)``."""
        e = x.shape[0]
        mask = self._numeric_mask()
        w_spline = (self.scale_spline * mask).unsqueeze(2) * self.coef
        y = torch.baddbmm(self.bias.unsqueeze(1), nn.functional.silu(x), self.scale_base * mask)
        # flatten, not reshape(e, batch, -1), which is ambiguous for an empty batch
        y = torch.baddbmm(y, self.basis(x).flatten(2), w_spline.reshape(e, -1, self.out_dim))
        if self.has_symbolic:
            y = y + self.symbolic_outputs(x).sum(2)
        return y

    def spline_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Each edge's bare spline ``sum_k coef B_k(x)``: ``(E, batch, in)`` -> ``(E, batch, in, out)``."""
        return torch.einsum("ebin,eino->ebio", self.basis(x), self.coef)

    def edge_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Each edge's value ``phi_ij(x_i)``: ``(E, batch, in)`` -> ``(E, batch, in, out)``.

        ``edge_outputs(x).sum(2) + bias`` equals ``forward(x)``.
        """
        base = nn.functional.silu(x).unsqueeze(-1) * self.scale_base.unsqueeze(1)
        numeric = (base + self.spline_outputs(x) * self.scale_spline.unsqueeze(1)) * self._numeric_mask().unsqueeze(1)
        if self.has_symbolic:
            numeric = numeric + self.symbolic_outputs(x)
        return numeric

    def symbolic_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Values ``c * f(a * x + b) + d`` of the symbolic edges (zero elsewhere): ``(E, batch, in, out)``."""
        a, b, c, d = (t.unsqueeze(1) for t in self.sym_affine.unbind(-1))
        z = a * x.unsqueeze(-1) + b
        active = (self.sym_mask * self.mask).unsqueeze(1) > 0
        out = torch.zeros_like(z)
        for index in self.sym_index[self.sym_mask > 0].unique().tolist():
            selected = active & (self.sym_index == index).unsqueeze(1)
            fn = self.symbols[self.symbols.names()[index]].torch_fn
            out = torch.where(selected, c * fn(torch.where(selected, z, 0.0)) + d, out)
        return out

    @torch.no_grad()
    def update_grid(
        self, x: torch.Tensor, uniform_fraction: float = 0.02, margin: float = 0.0, relative_margin: float = 0.0
    ) -> None:
        """Move the grid to follow the inputs ``x`` (``(E, batch, in)``), keeping each edge's function.

        The knots go to the inputs' quantiles (mixed with a uniform grid by ``uniform_fraction``)
        over their range widened by ``margin + relative_margin * range`` on each side; the
        coefficients are refitted by least squares to the old splines' values on ``x``.
        """
        old = self.spline_outputs(x).permute(0, 2, 1, 3)
        self.grid.copy_(quantile_grid(x, self.n_intervals, self.k, uniform_fraction, margin, relative_margin))
        self.refresh()
        basis = self.basis(x).permute(0, 2, 1, 3)
        self.coef.copy_(fit_coefficients(basis, old))

    @torch.no_grad()
    def refined(self, n_intervals: int, samples_per_interval: int = 8) -> KANLayer:
        """A copy on a grid of ``n_intervals`` over the same range, with each edge's function kept.

        Knots are interpolated along the old grid, so a uniform grid stays uniform, and when
        ``n_intervals`` is a multiple of the old count the old splines are represented exactly.
        """
        inner = self.grid[..., self.k : self.k + self.n_intervals + 1]
        positions = torch.linspace(0, self.n_intervals, n_intervals + 1, dtype=inner.dtype)
        left = positions.floor().long().clamp(max=self.n_intervals - 1)
        frac = positions - left
        new_inner = inner[..., left] * (1 - frac) + inner[..., left + 1] * frac
        levels = torch.linspace(0, 1, samples_per_interval * (n_intervals + self.k), dtype=inner.dtype)
        x = (inner[..., :1] + levels * (inner[..., -1:] - inner[..., :1])).transpose(1, 2)
        old = self.spline_outputs(x).permute(0, 2, 1, 3)

        state = {n: t for n, t in self.state_dict().items() if n not in ("grid", "coef")}
        state["grid"] = extend_knots(new_inner, self.k)
        state["coef"] = torch.zeros(self.ensemble, self.in_dim, n_intervals + self.k, self.out_dim)
        new = self._like(self.in_dim, self.out_dim, n_intervals, state)
        new.coef.copy_(fit_coefficients(new.basis(x).permute(0, 2, 1, 3), old))
        return new

    @torch.no_grad()
    def select(self, inputs: list[int], outputs: list[int]) -> KANLayer:
        """A copy keeping only the given input and output nodes (for node pruning)."""
        keep = {0: torch.tensor(inputs, dtype=torch.long), 1: torch.tensor(outputs, dtype=torch.long)}
        state = {}
        for name, tensor in self.state_dict().items():
            for side, axis in enumerate(_NODE_AXES[name]):
                if axis is not None:
                    tensor = tensor.index_select(axis, keep[side])
            state[name] = tensor
        return self._like(len(inputs), len(outputs), self.n_intervals, state)

    def _like(self, in_dim: int, out_dim: int, n_intervals: int, state: dict) -> KANLayer:
        new = KANLayer(
            in_dim, out_dim, n_intervals, self.k, self.ensemble,
            symbols=self.symbols, compiled_basis=self.compiled_basis,
        )  # fmt: skip
        new.to(self.coef.dtype).load_state_dict(state)
        return new


_NODE_AXES = {  # per tensor: (its input-node axis, its output-node axis)
    "grid": (1, None),
    "mask": (1, 2),
    "sym_mask": (1, 2),
    "sym_index": (1, 2),
    "coef": (1, 3),
    "scale_base": (1, 2),
    "scale_spline": (1, 2),
    "bias": (None, 1),
    "sym_affine": (1, 2),
}
