"""Benchmark the KAN student: one layer against pykan and a GEMM floor, training steps against an MLP.

What it measures, side by side in one run (float32, ``torch.set_num_threads(2)``):

* forward+backward of one 64 -> 64 layer (G = 5, k = 3, batch 4096) for this project's
  ``KANLayer`` (eager and ``compiled_basis=True``; the compiled variant's first call, which
  includes its one-off compile, is reported separately as ``compile_s``), pykan 0.2.8's
  ``KANLayer``, and the GEMM floor ``nn.Linear(64 * (G + k + 1), 64)``: the matmul that a
  basis-expanded KAN layer reduces to. Every input requires grad, so each backward computes the
  input gradient as well as the parameter gradients;
* one Adam step (zero_grad, forward, MSE loss, backward, step) at batch 1024 of a [8, 16, 16, 1]
  KAN (eager and compiled) against an MLP of the same widths (``nn.Linear`` + SiLU), and of an
  ensemble of 16 such KANs (input ``(16, 1024, 8)``) against one.

Each time is the median of ``--repeats`` samples taken after a warm-up; the compared variants'
samples are interleaved (in a rotating order) so that machine noise hits them alike, and each
sample averages enough calls to last about 20 ms. On CUDA the device is synchronised before every
clock read. The compile time depends on the state of the inductor cache (a second run is faster).

Run from the repository root (pykan is a benchmark-only requirement, never a project one)::

    pip install --no-deps -r scripts/requirements-bench.txt
    python scripts/bench_kan.py [--device cuda] [--repeats 30]

Without pykan its numbers are reported as null. The script prints a table, then, as its last
line, one JSON object with the timings (ms), ``compile_s`` and the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

if importlib.util.find_spec("students") is None:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from students import KAN, KANLayer

THREADS = 2
DIM, GRID, ORDER, LAYER_BATCH = 64, 5, 3, 4096
WIDTH, STEP_BATCH, ENSEMBLE = [8, 16, 16, 1], 1024, 16
SAMPLE_MS = 20.0  # each timing sample averages enough calls to last about this long
TARGETS = {  # ratio key: (comparison, bound, what the ratio is)
    "layer_vs_floor": ("<=", 2.0, "layer / GEMM floor"),
    "pykan_vs_layer": (">=", 25.0, "pykan / layer"),
    "small_vs_mlp": ("<=", 3.0, "KAN step / MLP step"),
    "ensemble16_vs_one": ("<=", 4.0, "ensemble-16 step / one student's step"),
}


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


def compare(
    variants: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 3
) -> dict[str, float]:
    """Median ms per call of each variant, with the variants' samples interleaved."""
    calls = {}
    for name, fn in variants.items():
        for _ in range(warmup):
            fn()
        single = statistics.median(ms_per_call(fn, 1, device) for _ in range(3))
        calls[name] = max(1, math.ceil(SAMPLE_MS / max(single, 1e-3)))
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(ms_per_call(variants[name], calls[name], device))
    return {name: statistics.median(s) for name, s in samples.items()}


def first_call_s(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of the first call (for a compiled variant: its compile)."""
    return ms_per_call(fn, 1, device) / 1e3


def fwd_bwd(
    forward: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor
) -> Callable[[], None]:
    """Forward, then the gradients of ``x`` and of every trainable parameter for the output gradient ``grad_out``."""
    params = [p for p in module.parameters() if p.requires_grad]

    def run() -> None:
        torch.autograd.grad(forward(x), [x, *params], grad_out, allow_unused=True)

    return run


def adam_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

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
        return first_call_s(fn, device)
    except Exception as error:
        print(f"NOTE: {name} failed ({type(error).__name__}: {error}); reported as null.", file=sys.stderr)
        return None


def bench_layer(device: torch.device, repeats: int) -> dict[str, float | None]:
    torch.manual_seed(0)
    x = torch.rand(1, LAYER_BATCH, DIM, device=device).mul_(2).sub_(1).requires_grad_()
    eager = KANLayer(DIM, DIM, GRID, ORDER).to(device)
    floor = nn.Linear(DIM * (GRID + ORDER + 1), DIM).to(device)
    floor_x = torch.randn(LAYER_BATCH, DIM * (GRID + ORDER + 1), device=device, requires_grad=True)
    grad_out = torch.randn(LAYER_BATCH, DIM, device=device)
    variants: dict[str, Callable[[], object]] = {
        "gemm_floor": fwd_bwd(floor, floor, floor_x, grad_out),
        "layer_eager": fwd_bwd(eager, eager, x, grad_out[None]),
    }
    compiled = KANLayer(DIM, DIM, GRID, ORDER, compiled_basis=True).to(device)
    compiled_fwd_bwd = fwd_bwd(compiled, compiled, x, grad_out[None])
    compile_s = try_compiled("the compiled layer", compiled_fwd_bwd, device)
    if compile_s is not None:
        variants["layer_compiled"] = compiled_fwd_bwd

    pykan_layer = load_pykan_layer()
    if pykan_layer is not None:
        theirs = pykan_layer(in_dim=DIM, out_dim=DIM, num=GRID, k=ORDER, device=str(device))
        x2 = x.detach()[0].clone().requires_grad_()
        variants["pykan"] = fwd_bwd(lambda t: theirs(t)[0], theirs, x2, grad_out)

    ms: dict[str, float | None] = {"layer_compiled": None, "pykan": None}
    ms.update(compare(variants, repeats, device))
    ms["compile_s"] = compile_s
    return ms


def bench_steps(device: torch.device, repeats: int) -> dict[str, float | None]:
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
    ms: dict[str, float | None] = {"small_compiled": None, "ensemble16_compiled": None}
    for name, ensemble, inputs, targets in (("small", 1, x, y), ("ensemble16", ENSEMBLE, xe, ye)):
        step = adam_step(kan(ensemble, True), inputs, targets)
        seconds = try_compiled(f"the compiled {name} KAN", step, device)
        if seconds is not None:
            variants[f"{name}_compiled"] = step
            ms[f"{name}_compiled_first_call_s"] = seconds
    ms.update(compare(variants, repeats, device))
    return ms


def best(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def meets(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    op, bound, _ = TARGETS[key]
    ok = value <= bound if op == "<=" else value >= bound
    return "ok" if ok else "MISSED"


def fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return "null" if value is None else f"{value:{spec}}{suffix}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeats", type=int, default=30, help="timing samples per variant (default 30)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    torch.set_num_threads(THREADS)

    layer = bench_layer(device, args.repeats)
    steps = bench_steps(device, args.repeats)

    result: dict[str, object] = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": THREADS,
        "repeats": args.repeats,
        "layer_fwd_bwd_ms": best(layer["layer_eager"], layer["layer_compiled"]),
        "layer_eager_fwd_bwd_ms": layer["layer_eager"],
        "layer_compiled_fwd_bwd_ms": layer["layer_compiled"],
        "compile_s": layer["compile_s"],
        "gemm_floor_fwd_bwd_ms": layer["gemm_floor"],
        "pykan_fwd_bwd_ms": layer["pykan"],
        "small_step_ms": best(steps["small_eager"], steps["small_compiled"]),
        "small_eager_step_ms": steps["small_eager"],
        "small_compiled_step_ms": steps["small_compiled"],
        "mlp_small_step_ms": steps["mlp"],
        "ensemble16_step_ms": best(steps["ensemble16_eager"], steps["ensemble16_compiled"]),
        "ensemble16_eager_step_ms": steps["ensemble16_eager"],
        "ensemble16_compiled_step_ms": steps["ensemble16_compiled"],
        "small_compiled_first_call_s": steps.get("small_compiled_first_call_s"),
        "ensemble16_compiled_first_call_s": steps.get("ensemble16_compiled_first_call_s"),
    }
    result["layer_vs_floor"] = ratio(result["layer_fwd_bwd_ms"], result["gemm_floor_fwd_bwd_ms"])
    result["pykan_vs_layer"] = ratio(result["pykan_fwd_bwd_ms"], result["layer_fwd_bwd_ms"])
    result["small_vs_mlp"] = ratio(result["small_step_ms"], result["mlp_small_step_ms"])
    result["ensemble16_vs_one"] = ratio(result["ensemble16_step_ms"], result["small_step_ms"])
    result["targets_met"] = {key: meets(key, result[key]) == "ok" for key in TARGETS if result[key] is not None}

    floor, mlp, one = layer["gemm_floor"], steps["mlp"], result["small_step_ms"]
    rows = [
        (f"layer {DIM}->{DIM} G={GRID} k={ORDER} batch {LAYER_BATCH}, fwd+bwd", None, None, ""),
        ("  GEMM floor nn.Linear(576, 64)", floor, floor, "floor"),
        ("  KANLayer eager", layer["layer_eager"], floor, "floor"),
        ("  KANLayer compiled_basis", layer["layer_compiled"], floor, "floor"),
        ("  pykan 0.2.8 KANLayer", layer["pykan"], floor, "floor"),
        (f"Adam step {WIDTH}, batch {STEP_BATCH}", None, None, ""),
        ("  MLP (Linear + SiLU)", mlp, mlp, "MLP"),
        ("  KAN eager", steps["small_eager"], mlp, "MLP"),
        ("  KAN compiled_basis", steps["small_compiled"], mlp, "MLP"),
        (f"  KAN ensemble {ENSEMBLE} eager", steps["ensemble16_eager"], one, "one student"),
        (f"  KAN ensemble {ENSEMBLE} compiled_basis", steps["ensemble16_compiled"], one, "one student"),
    ]
    print(f"\ndevice {device}, torch {torch.__version__}, {THREADS} threads, median of {args.repeats} samples\n")
    print(f"{'variant':<48} {'ms':>10}  ratio")
    for label, value, ref, ref_name in rows:
        if ref_name == "":
            print(label)
        else:
            print(f"{label:<48} {fmt(value, '10.3f'):>10}  {fmt(ratio(value, ref), '.2f', 'x')} {ref_name}")
    print(f"\ncompile (first fwd+bwd of the compiled layer): {fmt(layer['compile_s'], '.2f', ' s')}")
    print("\ntargets (best of eager / compiled):")
    for key, (op, bound, what) in TARGETS.items():
        value = fmt(result[key], ".2f", "x")
        print(f"  {key:<18} {value:>8}  target {op} {bound:g}x  {meets(key, result[key]):<6} ({what})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
