"""The KAN student: a stack of KAN layers, with the operations of the KAN schedule.

``KAN(width=[4, 8, 1], grid=5, k=3, ensemble=E)`` holds ``E`` independent students of the same
shape; they train as one batched op, and ``member(e)`` / ``KAN.stack`` convert between an
ensemble and single students. Operations that change the shape (``refine``, ``prune``) return a
new network; those that keep it (``update_grid``, ``fix_symbolic``) work in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kandistill.students.config import KANConfig
from kandistill.students.layer import KANLayer
from kandistill.students.persistence import read_kan_files, write_kan_files
from kandistill.students.symbols import DEFAULT_SYMBOLS, SymbolLibrary


@dataclass
class EdgeValues:
    """One layer's edges on a batch: ``inputs`` ``(E, batch, in)``, ``outputs`` ``(E, batch, in, out)``."""

    inputs: torch.Tensor
    outputs: torch.Tensor


class KAN(nn.Module):
    """A Kolmogorov-Arnold Network (or an ensemble of ``ensemble`` independent ones).

    ``forward`` takes ``(batch, width[0])``, broadcast to every member, or ``(E, batch, width[0])``;
    it returns ``(batch, width[-1])`` for a single student fed 2-D input, else ``(E, batch, width[-1])``.
    """

    def __init__(
        self,
        width: list[int],
        grid: int = 5,
        k: int = 3,
        ensemble: int = 1,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        noise_scale: float = 0.3,
        base_scale: float = 1.0,
        seed: int | None = None,
        compiled_basis: bool = False,
        symbols: SymbolLibrary = DEFAULT_SYMBOLS,
    ):
        super().__init__()
        self.config = KANConfig(
            width, grid, k, ensemble, grid_range, noise_scale, base_scale, seed, compiled_basis, symbols.names()
        )
        self.symbols = symbols
        self.provenance: dict[str, str] = {}
        generators = [None if seed is None else torch.Generator().manual_seed(seed + e) for e in range(ensemble)]
        self.layers = nn.ModuleList(
            KANLayer(
                w_in,
                w_out,
                grid,
                k,
                ensemble,
                grid_range,
                noise_scale,
                base_scale,
                generators,
                symbols,
                compiled_basis,
            )
            for w_in, w_out in zip(self.config.width[:-1], self.config.width[1:], strict=False)
        )

    @property
    def width(self) -> list[int]:
        return [self.layers[0].in_dim] + [layer.out_dim for layer in self.layers]

    @property
    def ensemble(self) -> int:
        return self.config.ensemble

    def _sync_config(self) -> None:
        self.config.width = self.width
        self.config.grid = self.layers[0].n_intervals

    def _as_ensemble_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"KAN input: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (2, 3) or x.shape[-1] != self.width[0]:
            raise ValueError(
                f"KAN input: expected shape (batch, {self.width[0]}) or ({self.ensemble}, batch, "
                f"{self.width[0]}), got {tuple(x.shape)}"
            )
        if x.dim() == 3 and x.shape[0] != self.ensemble:
            raise ValueError(f"KAN input: leading dimension {x.shape[0]} != ensemble size {self.ensemble}")
        if torch.isnan(x).any():
            rows = torch.isnan(x).flatten(0, -2).any(-1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"KAN input contains NaN (first rows: {rows})")
        return x.expand(self.ensemble, *x.shape) if x.dim() == 2 else x

    def _squeeze(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y.squeeze(0) if x.dim() == 2 and self.ensemble == 1 else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._as_ensemble_input(x)
        for layer in self.layers:
            h = layer(h)
        return self._squeeze(h, x)

    def edge_functions(self, x: torch.Tensor) -> list[EdgeValues]:
        """Every edge's input and output values on ``x``, layer by layer (for plots and extraction)."""
        h = self._as_ensemble_input(x)
        values = []
        for layer in self.layers:
            edges = layer.edge_outputs(h)
            values.append(EdgeValues(h, edges))
            h = edges.sum(2) + layer.bias.unsqueeze(1)
        return values

    def forward_with_penalty(
        self, x: torch.Tensor, l1: float = 1.0, entropy: float = 2.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Output and the sparsity penalty of each member, ``(E,)``, from one pass.

        Per layer, with ``s_ij`` the mean magnitude of edge ``(i, j)`` over the batch:
        ``l1 * sum s_ij + entropy * H(s / sum s)`` (the KAN paper's regulariser).
        """
        edges = self.edge_functions(x)
        penalty = sum(sparsity_penalty(v.outputs, l1, entropy) for v in edges)
        last = edges[-1].outputs.sum(2) + self.layers[-1].bias.unsqueeze(1)
        return self._squeeze(last, x), penalty

    @torch.no_grad()
    def update_grid(
        self, x: torch.Tensor, uniform_fraction: float = 0.02, margin: float = 0.0, relative_margin: float = 0.0
    ) -> None:
        """Move every layer's grid to its inputs' quantiles on ``x``, keeping the network's function
        (see `KANLayer.update_grid`)."""
        h = self._as_ensemble_input(x)
        for layer in self.layers:
            layer.update_grid(h, uniform_fraction, margin, relative_margin)
            h = layer(h)

    @torch.no_grad()
    def refine(self, grid: int) -> KAN:
        """A copy with ``grid`` intervals per edge (coarse to fine), computing the same function."""
        new = self._copy()
        new.layers = nn.ModuleList(layer.refined(grid) for layer in self.layers)
        new._sync_config()
        return new

    @torch.no_grad()
    def edge_importance(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per layer ``(E, in, out)``: the standard deviation of each edge's output over ``x``.

        A constant edge carries no information (its value can move into the bias), so the
        spread, not the magnitude, measures what an edge contributes.
        """
        return [v.outputs.std(1) for v in self.edge_functions(x)]

    @torch.no_grad()
    def prune(self, x: torch.Tensor, edge_threshold: float = 3e-2, node_threshold: float = 1e-2) -> KAN:
        """A smaller copy without the edges and hidden nodes that contribute little on ``x``.

        An edge whose output varies less than ``edge_threshold`` (standard deviation over ``x``)
        is masked and its mean moved into the bias of its output node, so the output is kept up
        to that variation. A hidden node is removed when its strongest incoming or outgoing edge
        is below ``node_threshold`` in every member; members that do not need a node that
        others keep have its edges masked. Input and output nodes are never removed.
        """
        new = self._copy()
        edges = new.edge_functions(x)
        strong = [v.outputs.std(1) * layer.mask >= edge_threshold for v, layer in zip(edges, new.layers, strict=False)]
        scores = [v.outputs.std(1) * keep for v, keep in zip(edges, strong, strict=False)]
        # dead[h]: (E, width[h]) hidden nodes that do not matter; input and output nodes never die.
        dead = [torch.zeros(self.ensemble, w, dtype=torch.bool) for w in self.width]
        for h in range(1, len(new.layers)):
            dead[h] = (scores[h - 1].amax(1) < node_threshold) | (scores[h].amax(2) < node_threshold)
        for n, (layer, v) in enumerate(zip(new.layers, edges, strict=False)):
            dropped = ~strong[n] | dead[n].unsqueeze(2) | dead[n + 1].unsqueeze(1)
            folded = dropped & (layer.mask > 0) & ~dead[n + 1].unsqueeze(1)
            layer.bias += (v.outputs.mean(1) * folded).sum(1)
            layer.mask *= ~dropped
        for h in range(1, len(new.layers)):
            keep = (~dead[h]).any(0).nonzero().flatten().tolist() or [0]
            before, after = new.layers[h - 1], new.layers[h]
            new.layers[h - 1] = before.select(list(range(before.in_dim)), keep)
            new.layers[h] = after.select(keep, list(range(after.out_dim)))
        new._sync_config()
        return new

    @torch.no_grad()
    def remove_hidden_node(self, boundary: int, node: int, x: torch.Tensor) -> KAN:
        """A copy without hidden node ``node`` between layers ``boundary - 1`` and ``boundary``.

        The node's outgoing edges are replaced by their mean over ``x``, folded into the biases
        of the next layer, so a node that barely varies is removed at no cost.
        """
        if not 0 < boundary < len(self.layers):
            raise IndexError(f"hidden boundaries are 1..{len(self.layers) - 1}, got {boundary}")
        new = self._copy()
        outgoing = new.layers[boundary]
        means = new.edge_functions(x)[boundary].outputs.mean(1)[:, node, :]
        outgoing.bias += means * outgoing.mask[:, node, :]
        keep = [i for i in range(outgoing.in_dim) if i != node]
        incoming = new.layers[boundary - 1]
        new.layers[boundary - 1] = incoming.select(list(range(incoming.in_dim)), keep)
        new.layers[boundary] = outgoing.select(keep, list(range(outgoing.out_dim)))
        new._sync_config()
        return new

    @torch.no_grad()
    def fix_symbolic(
        self,
        layer: int,
        i: int,
        j: int,
        name: str,
        affine: tuple[float, float, float, float] = (1.0, 0.0, 1.0, 0.0),
        member: int | None = None,
    ) -> None:
        """Replace edge ``(i, j)`` of ``layer`` by ``c * f(a * x + b) + d`` with ``f = symbols[name]``.

        ``affine`` is ``(a, b, c, d)``, trainable afterwards. ``member=None`` fixes the edge in
        every member of the ensemble.
        """
        target = self.layers[layer]
        if not (0 <= i < target.in_dim and 0 <= j < target.out_dim):
            raise IndexError(f"layer {layer} has edges ({target.in_dim} x {target.out_dim}), got ({i}, {j})")
        members = slice(None) if member is None else slice(member, member + 1)
        target.sym_index[members, i, j] = self.symbols.index(name)
        target.sym_mask[members, i, j] = 1.0
        target.sym_affine[members, i, j] = torch.tensor(affine, dtype=target.sym_affine.dtype)
        target.refresh()

    @torch.no_grad()
    def unfix_symbolic(self, layer: int, i: int, j: int, member: int | None = None) -> None:
        """Return edge ``(i, j)`` of ``layer`` to its spline."""
        members = slice(None) if member is None else slice(member, member + 1)
        self.layers[layer].sym_mask[members, i, j] = 0.0
        self.layers[layer].refresh()

    def symbolic_edges(self, member: int = 0) -> dict[tuple[int, int, int], tuple[str, list[float]]]:
        """``{(layer, i, j): (name, [a, b, c, d])}`` for the fixed, unpruned edges of one member."""
        names = self.symbols.names()
        fixed = {}
        for n, layer in enumerate(self.layers):
            active = (layer.sym_mask[member] > 0) & (layer.mask[member] > 0)
            for i, j in active.nonzero().tolist():
                fixed[(n, i, j)] = (names[layer.sym_index[member, i, j]], layer.sym_affine[member, i, j].tolist())
        return fixed

    def member(self, e: int) -> KAN:
        """Student ``e`` of the ensemble, as a single-student KAN (a copy)."""
        if not 0 <= e < self.ensemble:
            raise IndexError(f"member {e} out of range for an ensemble of {self.ensemble}")
        state = {name: t[e : e + 1].clone() for name, t in self.state_dict().items()}
        return self._from_state(state, ensemble=1, seed=None if self.config.seed is None else self.config.seed + e)

    @classmethod
    def stack(cls, students: list[KAN]) -> KAN:
        """One ensemble holding ``kandistill.students`` (all of the same shape), in order."""
        first = students[0]
        for s in students[1:]:
            if s.width != first.width or s.config.grid != first.config.grid or s.config.k != first.config.k:
                raise ValueError(
                    f"KAN.stack: shapes differ: width {s.width} grid {s.config.grid} k {s.config.k} vs "
                    f"width {first.width} grid {first.config.grid} k {first.config.k}"
                )
        state = {name: torch.cat([s.state_dict()[name] for s in students]) for name in first.state_dict()}
        return first._from_state(state, ensemble=sum(s.ensemble for s in students), seed=first.config.seed)

    def _from_state(self, state: dict[str, torch.Tensor], ensemble: int, seed: int | None) -> KAN:
        config = KANConfig(**{**self.config.to_dict(), "ensemble": ensemble, "seed": seed})
        new = KAN.from_config(config, self.symbols)
        new.to(next(self.parameters()).dtype).load_state_dict(state)
        new.provenance = dict(self.provenance)
        return new

    def _copy(self) -> KAN:
        return self._from_state({n: t.clone() for n, t in self.state_dict().items()}, self.ensemble, self.config.seed)

    @classmethod
    def from_config(cls, config: KANConfig, symbols: SymbolLibrary = DEFAULT_SYMBOLS) -> KAN:
        """An untrained KAN of the shape that ``config`` describes."""
        missing = [n for n in config.symbols if n not in symbols]
        if missing:
            raise ValueError(f"KAN config names symbols {missing} that the symbol library lacks")
        if config.symbols != symbols.names():
            symbols = type(symbols)([symbols[n] for n in config.symbols])
        return cls(
            config.width, config.grid, config.k, config.ensemble, config.grid_range,
            config.noise_scale, config.base_scale, config.seed, config.compiled_basis, symbols,
        )  # fmt: skip

    def save_pretrained(self, directory: str | Path, provenance: dict[str, str] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (with ``provenance`` in its metadata).

        A model beyond the load limits (``kandistill.students.persistence.MAX_*``) is refused, so none is
        written that :meth:`from_pretrained` cannot read.
        """
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        return write_kan_files(Path(directory), self.config, tensors, {**self.provenance, **(provenance or {})})

    @classmethod
    def from_pretrained(cls, directory: str | Path, symbols: SymbolLibrary = DEFAULT_SYMBOLS) -> KAN:
        """Load a KAN saved by :meth:`save_pretrained`, checking the config against the tensors.

        The model works in its own units: inputs scaled to its grid (``[-1, 1]`` for a trained student)
        and standardised outputs. A student of a run, in the features' and the targets' units, is
        ``kandistill.Surrogate.from_run(run, name)`` (which reads the scaling from ``student.json``).
        """
        config, tensors, provenance = read_kan_files(Path(directory), symbols)
        model = cls.from_config(config, symbols)
        model.to(tensors["layers.0.coef"].dtype).load_state_dict(tensors)
        model.provenance = provenance
        return model


def smoothness_penalty(model: KAN) -> torch.Tensor:
    """Each member's roughness, ``(E,)``: the mean squared second difference of its spline coefficients.

    The P-spline penalty: zero for edges whose splines are linear, so it pulls every edge towards a
    straight line (plus its SiLU) without shrinking it, and a student cannot chase the fine detail
    between training points that held-out points do not share.
    """
    terms = [(layer.coef.diff(2, dim=2) * layer.scale_spline.unsqueeze(2)).square().mean((1, 2, 3))
             for layer in model.layers if layer.coef.shape[2] > 2]  # fmt: skip
    return sum(terms, torch.zeros(model.ensemble, dtype=model.layers[0].coef.dtype))


def sparsity_penalty(edge_outputs: torch.Tensor, l1: float, entropy: float) -> torch.Tensor:
    """The KAN paper's L1 + entropy penalty of one layer, per member: ``(E, batch, in, out)`` -> ``(E,)``."""
    scale = edge_outputs.abs().mean(1)
    total = scale.sum((1, 2))
    p = scale / total.clamp_min(1e-12)[:, None, None]
    h = -(p * (p + 1e-12).log()).sum((1, 2))
    return l1 * total + entropy * h
