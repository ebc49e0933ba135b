"""Ask a differentiable teacher how its function splits: separability, symmetry, irrelevant inputs.

The AI Feynman idea, on any torch callable ``f: (batch, n) -> (batch,)`` valid on a box. Each
test compares the teacher with itself at points chosen so that the property makes the
difference vanish, and measures what is left in units of the teacher's own error ``error`` (its
RMSE against the truth or the data it was fitted to): a z-score. A property holds when the RMS
z-score (of the 90% smallest: an MLP's error is largest at a few corner points) is at most ``factor``
(3 by default): a difference of four teacher values that are each
off by ``error`` is about ``2 error``, while a real dependence is of the size of ``f`` itself.

- additive separability, ``f = g(x_A) + h(x_B)``: ``f(a, b) + f(a', b') - f(a, b') - f(a', b) = 0``;
- multiplicative separability, the same on ``log |f|`` where ``f`` keeps its sign well away from 0 (the
  error becomes ``error / |f|`` there), else ``f(a, b) f(a', b') - f(a, b') f(a', b) = 0``; after an
  offset (``f - c = g h``), with ``c`` from :func:`product_offset`;
- symmetries, ``f`` depends on ``x_i - x_j`` (or ``x_i + x_j``, ``x_i / x_j``, ``x_i x_j``) only:
  moving both inputs along the curve that keeps the combination fixed does not change ``f``;
- an irrelevant input: redrawing ``x_i`` does not change ``f``.

Finite differences over large steps, not derivatives, decide: they average the teacher's small
wiggles, and their noise is known from ``error``. :func:`symmetry_gradient_residual` gives the
matching derivative test (``df/dx_i + df/dx_j = 0`` for a difference, ...), used to rank pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

SYMMETRIES = ("minus", "plus", "divide", "times")


@dataclass
class BoxTeacher:
    """A teacher ``fn: (batch, n) -> (batch,)`` (or ``(batch, 1)``), valid on ``low <= x <= high``
    (``(n,)`` each), with ``error``: its RMSE, the scale every test measures against."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    low: torch.Tensor
    high: torch.Tensor
    error: float

    def __post_init__(self) -> None:
        self.low = torch.as_tensor(self.low, dtype=torch.float32).reshape(-1)
        self.high = torch.as_tensor(self.high, dtype=torch.float32).reshape(-1)
        if self.low.shape != self.high.shape or not bool((self.low <= self.high).all()):
            raise ValueError(f"BoxTeacher: low {self.low.tolist()} and high {self.high.tolist()} do not make a box")
        if not self.error >= 0:
            raise ValueError(f"BoxTeacher: error must be a non-negative number, got {self.error}")

    @property
    def n(self) -> int:
        return self.low.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` values at ``x`` ``(batch, n)``."""
        with torch.no_grad():
            return self.fn(x.float()).reshape(-1)

    def sample(self, points: int, seed: int) -> torch.Tensor:
        """``(points, n)`` uniform draws from the box."""
        u = torch.rand(points, self.n, generator=torch.Generator().manual_seed(seed))
        return self.low + u * (self.high - self.low)


@dataclass
class Verdict:
    """One test's RMS z-score and whether it is at most the threshold."""

    name: str
    score: float
    holds: bool


def _noise(teacher: BoxTeacher, values: torch.Tensor) -> float:
    """The error scale: the teacher's, floored at float32 resolution of its values (an exact teacher)."""
    return max(teacher.error, 1e-6 * float(values.abs().max()), 1e-12)


def _rms(z: torch.Tensor, keep: float = 0.9) -> float:
    """RMS of the smallest ``keep`` share of ``|z|``: a teacher's error is larger at a few points (the
    box's corners) than its RMSE says, while a real dependence shows at most points."""
    if not z.numel():
        return float("inf")
    kept = z.abs().flatten().sort().values[: max(1, int(keep * z.numel()))]
    return float(kept.square().mean().sqrt())


def _mixed(teacher: BoxTeacher, part: Sequence[int], points: int, seed: int) -> torch.Tensor:
    """``(4, points)`` teacher values at ``(a, b), (a', b'), (a, b'), (a', b)``: ``a`` the inputs in ``part``."""
    x, x2 = teacher.sample(points, seed), teacher.sample(points, seed + 1)
    mask = torch.zeros(teacher.n, dtype=torch.bool)
    mask[list(part)] = True
    ab2 = torch.where(mask, x, x2)
    a2b = torch.where(mask, x2, x)
    return teacher(torch.cat([x, x2, ab2, a2b])).reshape(4, points)


def additive_split(teacher: BoxTeacher, part: Sequence[int], points: int = 256, seed: int = 0,
                   factor: float = 3.0) -> Verdict:  # fmt: skip
    """Is ``f = g(x_part) + h(x_rest)``?"""
    f = _mixed(teacher, part, points, seed)
    residual = f[0] + f[1] - f[2] - f[3]
    return _verdict(f"additive {list(part)}", _rms(residual / (2 * _noise(teacher, f))), factor)


def keeps_sign(teacher: BoxTeacher, points: int = 256, seed: int = 0, margin: float = 10.0) -> bool:
    """Does ``f`` keep one sign, at least ``margin`` errors away from 0, on sampled points?"""
    f = teacher(teacher.sample(points, seed))
    return bool((f.abs() > margin * _noise(teacher, f)).all() and ((f > 0).all() or (f < 0).all()))


def multiplicative_split(teacher: BoxTeacher, part: Sequence[int], points: int = 256, seed: int = 0,
                         factor: float = 3.0) -> Verdict:  # fmt: skip
    """Is ``f = g(x_part) h(x_rest)``? Tested on ``log |f|`` where ``f`` keeps its sign well away from 0;
    elsewhere (``f`` crosses 0, as ``-m B cos(theta)`` does) on ``f(a, b) f(a', b') - f(a, b') f(a', b) = 0``,
    whose error is the teacher's times the four values' norm."""
    f = _mixed(teacher, part, points, seed)
    noise = _noise(teacher, f)
    name = f"multiplicative {list(part)}"
    if bool((f.abs() > 10 * noise).all()) and (bool((f > 0).all()) or bool((f < 0).all())):
        logs = f.abs().log()
        residual = logs[0] + logs[1] - logs[2] - logs[3]
        scale = noise * f.abs().reciprocal().square().sum(0).sqrt()  # error of the log residual, per point
    else:
        residual = f[0] * f[1] - f[2] * f[3]
        scale = noise * f.square().sum(0).sqrt().clamp_min(noise)
    return _verdict(name, _rms(residual / scale), factor)


def product_offset(teacher: BoxTeacher, part: Sequence[int], points: int = 256, seed: int = 0) -> float:
    """The constant ``c`` for which ``f - c = g(x_part) h(x_rest)`` fits best (least squares). For such an ``f``,
    ``f(a, b) f(a', b') - f(a, b') f(a', b)`` is ``c`` times ``f(a, b) + f(a', b') - f(a, b') - f(a', b)``:
    ``1 + alpha cos(theta)`` is no product of a part in ``alpha`` and one in ``theta``, but ``f - 1`` is. Test
    the split on ``f - c`` with :func:`multiplicative_split`."""
    f = _mixed(teacher, part, points, seed)
    plus, times = f[0] + f[1] - f[2] - f[3], f[0] * f[1] - f[2] * f[3]
    return float((plus * times).sum() / (plus * plus).sum().clamp_min(1e-300))


def move_pair(x: torch.Tensor, i: int, j: int, kind: str, step: torch.Tensor) -> torch.Tensor:
    """``x`` with ``(x_i, x_j)`` moved by ``step`` ``(batch,)`` along the curve that keeps the
    combination ``kind`` fixed: ``minus`` adds ``step`` to both, ``plus`` adds it to one and takes it
    from the other, ``divide`` multiplies both by ``exp(step)``, ``times`` multiplies one and divides
    the other."""
    moved = x.clone()
    if kind == "minus":
        moved[:, i], moved[:, j] = x[:, i] + step, x[:, j] + step
    elif kind == "plus":
        moved[:, i], moved[:, j] = x[:, i] + step, x[:, j] - step
    elif kind == "divide":
        moved[:, i], moved[:, j] = x[:, i] * step.exp(), x[:, j] * step.exp()
    elif kind == "times":
        moved[:, i], moved[:, j] = x[:, i] * step.exp(), x[:, j] * (-step).exp()
    else:
        raise ValueError(f"move_pair: kind must be one of {SYMMETRIES}, got {kind!r}")
    return moved


def symmetry(teacher: BoxTeacher, i: int, j: int, kind: str, points: int = 256, seed: int = 0,
             factor: float = 3.0, min_points: int = 32) -> Verdict:  # fmt: skip
    """Does ``f`` depend on ``x_i`` and ``x_j`` only through ``kind`` (see :func:`move_pair`)?

    Steps are drawn up to a quarter of the inputs' range (in log for ``divide``/``times``, which need
    positive inputs); moved points outside the box are dropped (fewer than ``min_points`` left: fails).
    """
    name = f"{kind} ({i}, {j})"
    if kind in ("divide", "times") and not bool((teacher.low[[i, j]] > 0).all()):
        return Verdict(name, float("inf"), False)
    x = teacher.sample(4 * points, seed)
    g = torch.Generator().manual_seed(seed + 7)
    if kind in ("divide", "times"):
        span = float(torch.log(teacher.high[[i, j]] / teacher.low[[i, j]]).min())
    else:
        span = float((teacher.high[[i, j]] - teacher.low[[i, j]]).min())
    step = (torch.rand(x.shape[0], generator=g) - 0.5) * 0.5 * span
    moved = move_pair(x, i, j, kind, step)
    inside = ((moved >= teacher.low) & (moved <= teacher.high)).all(1)
    x, moved = x[inside][:points], moved[inside][:points]
    if x.shape[0] < min_points:
        return Verdict(name, float("inf"), False)
    f = teacher(torch.cat([x, moved])).reshape(2, -1)
    return _verdict(name, _rms((f[1] - f[0]) / (2**0.5 * _noise(teacher, f))), factor)


def irrelevant(teacher: BoxTeacher, i: int, points: int = 256, seed: int = 0, factor: float = 3.0) -> Verdict:
    """Does ``f`` not depend on ``x_i``: does redrawing it leave ``f`` unchanged?"""
    x, x2 = teacher.sample(points, seed), teacher.sample(points, seed + 1)
    moved = x.clone()
    moved[:, i] = x2[:, i]
    f = teacher(torch.cat([x, moved])).reshape(2, -1)
    return _verdict(f"irrelevant {i}", _rms((f[1] - f[0]) / (2**0.5 * _noise(teacher, f))), factor)


def symmetry_gradient_residual(teacher: BoxTeacher, i: int, j: int, kind: str, points: int = 256,
                               seed: int = 0) -> float:  # fmt: skip
    """How far the gradient is from the symmetry's: RMS of ``g_i + g_j`` (minus), ``g_i - g_j`` (plus),
    ``x_i g_i + x_j g_j`` (divide) or ``x_i g_i - x_j g_j`` (times), over the RMS of the two terms.

    0 for an exact symmetry, about 1 for none; cheap (one backward pass), so it ranks the pairs
    worth the finite-difference test.
    """
    x = teacher.sample(points, seed).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(teacher.fn(x).sum(), x)
    gi, gj = grad[:, i], grad[:, j]
    if kind in ("divide", "times"):
        gi, gj = gi * x[:, i].detach(), gj * x[:, j].detach()
    combined = gi + gj if kind in ("minus", "divide") else gi - gj
    return _rms(combined) / max(_rms(torch.stack([gi, gj])), 1e-30)


def _verdict(name: str, score: float, factor: float) -> Verdict:
    return Verdict(name, score, score <= factor)


def splits(n: int, max_n_all: int = 8) -> list[tuple[int, ...]]:
    """Candidate parts ``A`` of a split of ``n`` inputs, smallest first (each split once: ``A``
    holds input 0 when it is half of them); all of them up to ``max_n_all`` inputs, else singletons."""
    sizes = range(1, n // 2 + 1) if n <= max_n_all else [1]
    out = []
    for size in sizes:
        for part in combinations(range(n), size):
            if 2 * size == n and 0 not in part:
                continue
            out.append(part)
    return out
