"""Benchmark the KAN student: one layer against pykan and a GEMM floor, training steps against an MLP.

What it measures, side by side in one run (float32, ``torch.set_num_threads(2)``):

* forward+backward of one 64 -> 64 layer (G = 5, k = 3, batch 4096) for this project's
  ``KANLayer`` (eager and ``compiled_basis=True``; the compiled variant's first call, which
  includes its one-off compile, is reported separately as ``compile_s``), pykan 0.2.8's
  ``KANLayer``, and the GEMM floor ``nn.Linear(64 * (G + k + 1), 64)``: the matmul that a
  basis-expanded KAN layer reduces to. Every input requires grad, so each backward computes the
  input gradient as well as the parameter gradients;
* forward+backward of the spline basis alone on a moved (quantile) grid, where the closed form does
  not apply, at the layer's size: ``kandistill.students.splines.knot_basis`` (Cox-de Boor with the analytic
  derivative as its backward) against autograd through the plain recursion (``cox_de_boor_basis``);
* one Adam step (zero_grad, forward, MSE loss, backward, step) at batch 1024 of a [8, 16, 16, 1]
  KAN (eager and compiled) against an MLP of the same widths (``nn.Linear`` + SiLU), and of an
  ensemble of 16 such KANs (input ``(16, 1024, 8)``) against one.

Timing: each variant is warmed up, then ``--repeats`` rounds each take one sample of every
compared variant, in a rotating order; a sample averages enough calls to last about 20 ms
(``time.perf_counter``; on CUDA the device is synchronised before every clock read). A time is the
median of its samples (the table also shows the minimum). A ratio is the median over rounds of
the ratio within each round, whose samples are a few ms apart: on a noisy machine, whose speed
drifts over seconds, that is far more stable than a ratio of medians (so it can differ a little
from the ratio of the printed times). ``compile_s`` is measured with whatever inductor cache the
machine has: a cold cache (the first run on a machine) makes it several times longer.

Run from the repository root (pykan is a benchmark-only requirement, never a project one)::

    pip install --no-deps -r scripts/requirements-bench.txt
    python scripts/bench_kan.py [--device cuda] [--repeats 30]

Without pykan its numbers are reported as null. The script prints a table, then, as its last
line, one JSON object with the timings (ms), ``compile_s`` and the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from kandistill.students import KAN, KANLayer
from kandistill.students.splines import cox_de_boor_basis, knot_basis, quantile_grid

THREADS = 2
DIM, GRID, ORDER, LAYER_BATCH = 64, 5, 3, 4096
WIDTH, STEP_BATCH, ENSEMBLE = [8, 16, 16, 1], 1024, 16
SAMPLE_MS = 20.0  # each timing sample averages enough calls to last about this long
TARGETS = {  # ratio key: (comparison, bound, what the ratio is)
    "layer_vs_floor": ("<=", 2.0, "layer / GEMM floor"),
    "pykan_vs_layer": (">=", 25.0, "pykan / layer"),
    "recursion_vs_knot_basis": (">=", 1.5, "autograd Cox-de Boor / knot_basis"),
    "small_vs_mlp": ("<=", 3.0, "KAN step / MLP step"),
    "ensemble16_vs_one": ("<=", 4.0, "ensemble-16 step / one student's step"),
}
LAYER = ("layer_eager", "layer_compiled")  # the variants of one KAN, each reported at its best
SMALL = ("small_eager", "small_compiled")
ENSEMBLE16 = ("ensemble16_eager", "ensemble16_compiled")

Samples = dict[str, list[float]]  # ms per call of each variant, one entry per round, rounds aligned


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ms_per_call(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3 / calls


def interleaved(
    variants: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 3
) -> Samples:
    """``repeats`` rounds; each round takes one sample of every variant, in a rotating order."""
    calls = {}
    for name, fn in variants.items():
        single = min([ms_per_call(fn, 1, device) for _ in range(warmup)][1:])
        calls[name] = max(1, math.ceil(SAMPLE_MS / max(single, 1e-3)))
    names = list(variants)
    samples: Samples = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(ms_per_call(variants[name], calls[name], device))
    return samples


def median_ms(samples: Samples, *names: str) -> float | None:
    """The median time of the fastest of ``names`` (those that ran); None if none ran."""
    medians = [statistics.median(samples[n]) for n in names if n in samples]
    return min(medians) if medians else None


def paired_ratio(samples: Samples, numerator: tuple[str, ...], denominator: tuple[str, ...]) -> float | None:
    """Median over rounds of (fastest of ``numerator``) / (fastest of ``denominator``) within the round.

    Both sides of each ratio come from the same round, a few ms apart, so a slowdown of the machine
    that outlasts a round cancels out; a ratio of medians would not be as stable.
    """
    num, den = [n for n in numerator if n in samples], [n for n in denominator if n in samples]
    if not num or not den:
        return None
    rounds = zip(*(samples[n] for n in num), *(samples[n] for n in den), strict=True)
    return statistics.median(min(r[: len(num)]) / min(r[len(num) :]) for r in rounds)


def fwd_bwd(
    forward: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor
) -> Callable[[], None]:
    """Forward, then the gradients of ``x`` and of every trainable parameter for the output gradient ``grad_out``."""
    params = [p for p in module.parameters() if p.requires_grad]

    def run() -> None:
        torch.autograd.grad(forward(x), [x, *params], grad_out, allow_unused=True)

    return run


def adam_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # same for every variant

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()

    return step


def load_pykan_layer() -> type[nn.Module] | None:
    try:
        from kan.KANLayer import KANLayer as PykanLayer
    except Exception as error:  # pykan's import chain pulls sklearn, pandas, ...: any failure means "absent"
        print(
            f"NOTE: pykan is not importable ({type(error).__name__}: {error}); its numbers are null. "
            "Install it with: pip install --no-deps -r scripts/requirements-bench.txt",
            file=sys.stderr,
        )
        return None
    return PykanLayer


def try_compiled(name: str, fn: Callable[[], None], device: torch.device) -> float | None:
    """Seconds of ``fn``'s first call (which compiles it), or None, with a note, if compiling fails."""
    try:
        return ms_per_call(fn, 1, device) / 1e3
    except Exception as error:
        print(f"NOTE: {name} failed ({type(error).__name__}: {error}); reported as null.", file=sys.stderr)
        return None


def bench_layer(device: torch.device, repeats: int) -> tuple[Samples, float | None]:
    """Forward+backward of one layer: samples of every variant, and the compiled layer's first-call seconds."""
    torch.manual_seed(0)
    x = torch.rand(1, LAYER_BATCH, DIM, device=device).mul_(2).sub_(1).requires_grad_()
    grad_out = torch.randn(LAYER_BATCH, DIM, device=device)
    floor = nn.Linear(DIM * (GRID + ORDER + 1), DIM).to(device)
    floor_x = torch.randn(LAYER_BATCH, DIM * (GRID + ORDER + 1), device=device, requires_grad=True)
    eager = KANLayer(DIM, DIM, GRID, ORDER).to(device)
    variants: dict[str, Callable[[], object]] = {
        "gemm_floor": fwd_bwd(floor, floor, floor_x, grad_out),
        "layer_eager": fwd_bwd(eager, eager, x, grad_out[None]),
    }
    compiled = KANLayer(DIM, DIM, GRID, ORDER, compiled_basis=True).to(device)
    compiled_fwd_bwd = fwd_bwd(compiled, compiled, x, grad_out[None])
    compile_s = try_compiled("the compiled layer", compiled_fwd_bwd, device)
    if compile_s is not None:
        variants["layer_compiled"] = compiled_fwd_bwd
    moved = quantile_grid(x.detach(), GRID, ORDER, uniform_fraction=0.02).unsqueeze(1)
    grad_basis = torch.randn(1, LAYER_BATCH, DIM, GRID + ORDER, device=device)
    no_parameters = nn.Module()
    variants["knot_basis"] = fwd_bwd(lambda t: knot_basis(t, moved, ORDER), no_parameters, x, grad_basis)
    variants["recursion"] = fwd_bwd(lambda t: cox_de_boor_basis(t, moved, ORDER), no_parameters, x, grad_basis)
    pykan_layer = load_pykan_layer()
    if pykan_layer is not None:
        theirs = pykan_layer(in_dim=DIM, out_dim=DIM, num=GRID, k=ORDER, device=str(device))
        x_2d = x.detach()[0].clone().requires_grad_()
        variants["pykan"] = fwd_bwd(lambda t: theirs(t)[0], theirs, x_2d, grad_out)
    return interleaved(variants, repeats, device), compile_s


def bench_steps(device: torch.device, repeats: int) -> tuple[Samples, dict[str, float | None]]:
    """Adam steps: samples of every variant, and each compiled variant's first-call seconds."""
    torch.manual_seed(0)
    x = torch.rand(STEP_BATCH, WIDTH[0], device=device).mul_(2).sub_(1)
    y = torch.randn(STEP_BATCH, WIDTH[-1], device=device)
    xe = torch.rand(ENSEMBLE, STEP_BATCH, WIDTH[0], device=device).mul_(2).sub_(1)
    ye = torch.randn(ENSEMBLE, STEP_BATCH, WIDTH[-1], device=device)
    layers: list[nn.Module] = []
    for w_in, w_out in itertools.pairwise(WIDTH):
        layers += [nn.Linear(w_in, w_out), nn.SiLU()]
    mlp = nn.Sequential(*layers[:-1]).to(device)

    def kan(ensemble: int, compiled: bool) -> nn.Module:
        return KAN(WIDTH, GRID, ORDER, ensemble=ensemble, seed=0, compiled_basis=compiled).to(device)

    variants: dict[str, Callable[[], object]] = {
        "mlp": adam_step(mlp, x, y),
        "small_eager": adam_step(kan(1, False), x, y),
        "ensemble16_eager": adam_step(kan(ENSEMBLE, False), xe, ye),
    }
    first_call: dict[str, float | None] = {}
    for name, ensemble, inputs, targets in (("small", 1, x, y), ("ensemble16", ENSEMBLE, xe, ye)):
        step = adam_step(kan(ensemble, True), inputs, targets)
        first_call[name] = try_compiled(f"the compiled {name} KAN", step, device)
        if first_call[name] is not None:
            variants[f"{name}_compiled"] = step
    return interleaved(variants, repeats, device), first_call


def verdict(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    op, bound, _ = TARGETS[key]
    return "ok" if (value <= bound if op == "<=" else value >= bound) else "MISSED"


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "null" if value is None else format(value, spec) + suffix


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeats", type=int, default=30, help="timing rounds (default 30)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    torch.set_num_threads(THREADS)

    layer_samples, compile_s = bench_layer(device, args.repeats)
    step_samples, first_call = bench_steps(device, args.repeats)
    samples = {**layer_samples, **step_samples}

    result: dict[str, object] = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": THREADS,
        "repeats": args.repeats,
        "layer_fwd_bwd_ms": median_ms(samples, *LAYER),
        "layer_eager_fwd_bwd_ms": median_ms(samples, "layer_eager"),
        "layer_compiled_fwd_bwd_ms": median_ms(samples, "layer_compiled"),
        "compile_s": compile_s,
        "gemm_floor_fwd_bwd_ms": median_ms(samples, "gemm_floor"),
        "pykan_fwd_bwd_ms": median_ms(samples, "pykan"),
        "small_step_ms": median_ms(samples, *SMALL),
        "small_eager_step_ms": median_ms(samples, "small_eager"),
        "small_compiled_step_ms": median_ms(samples, "small_compiled"),
        "mlp_small_step_ms": median_ms(samples, "mlp"),
        "ensemble16_step_ms": median_ms(samples, *ENSEMBLE16),
        "ensemble16_eager_step_ms": median_ms(samples, "ensemble16_eager"),
        "ensemble16_compiled_step_ms": median_ms(samples, "ensemble16_compiled"),
        "small_compiled_first_call_s": first_call["small"],
        "ensemble16_compiled_first_call_s": first_call["ensemble16"],
        "layer_vs_floor": paired_ratio(samples, LAYER, ("gemm_floor",)),
        "pykan_vs_layer": paired_ratio(samples, ("pykan",), LAYER),
        "knot_basis_fwd_bwd_ms": median_ms(samples, "knot_basis"),
        "recursion_fwd_bwd_ms": median_ms(samples, "recursion"),
        "recursion_vs_knot_basis": paired_ratio(samples, ("recursion",), ("knot_basis",)),
        "small_vs_mlp": paired_ratio(samples, SMALL, ("mlp",)),
        "ensemble16_vs_one": paired_ratio(samples, ENSEMBLE16, SMALL),
    }
    result["targets_met"] = {key: verdict(key, result[key]) == "ok" for key in TARGETS if result[key] is not None}

    rows = [
        (f"layer {DIM}->{DIM}, G={GRID}, k={ORDER}, batch {LAYER_BATCH}: forward+backward", None, ()),
        (f"  GEMM floor nn.Linear({DIM * (GRID + ORDER + 1)}, {DIM})", "gemm_floor", ("gemm_floor",)),
        ("  KANLayer eager", "layer_eager", ("gemm_floor",)),
        ("  KANLayer compiled_basis", "layer_compiled", ("gemm_floor",)),
        ("  pykan 0.2.8 KANLayer", "pykan", ("gemm_floor",)),
        (f"spline basis on a moved grid, {DIM} inputs, batch {LAYER_BATCH}: forward+backward", None, ()),
        ("  knot_basis (analytic backward)", "knot_basis", ("knot_basis",)),
        ("  cox_de_boor_basis through autograd", "recursion", ("knot_basis",)),
        (f"Adam step, width {WIDTH}, batch {STEP_BATCH}", None, ()),
        ("  MLP (nn.Linear + SiLU)", "mlp", ("mlp",)),
        ("  KAN eager", "small_eager", ("mlp",)),
        ("  KAN compiled_basis", "small_compiled", ("mlp",)),
        (f"  KAN ensemble of {ENSEMBLE}, eager", "ensemble16_eager", SMALL),
        (f"  KAN ensemble of {ENSEMBLE}, compiled_basis", "ensemble16_compiled", SMALL),
    ]
    reference = {("gemm_floor",): "floor", ("knot_basis",): "knot_basis", ("mlp",): "MLP", SMALL: "one student (best)"}
    print(f"\n{device}, torch {torch.__version__}, {THREADS} threads, {args.repeats} interleaved rounds")
    print("ratio: median over rounds of the per-round ratio (see the module docstring)\n")
    print(f"{'variant':<52} {'median ms':>10} {'min ms':>10}  ratio")
    for label, name, ref in rows:
        if name is None:
            print(label)
            continue
        times = samples.get(name)
        median = statistics.median(times) if times else None
        low = min(times) if times else None
        ratio = fmt(paired_ratio(samples, (name,), ref), ".2f", "x")
        print(f"{label:<52} {fmt(median, '10.3f'):>10} {fmt(low, '10.3f'):>10}  {ratio} {reference[ref]}")
    print(f"\ncompile: first forward+backward of the compiled layer took {fmt(compile_s, '.2f', ' s')}")
    print("\ntargets (each KAN at the better of eager / compiled_basis):")
    for key, (op, bound, what) in TARGETS.items():
        value = fmt(result[key], ".2f", "x")
        print(f"  {key:<18} {value:>8}  target {op} {bound:g}x  {verdict(key, result[key]):<6}  {what}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
