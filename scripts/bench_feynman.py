"""Symbolic recovery on the AI Feynman equations: sample, fit a KAN student, extract, check with sympy.

For each equation of a CSV in the AI Feynman format (``Filename, Number, Output, Formula,
# variables, v1_name, v1_low, v1_high, ...``): sample the variables uniformly over their ranges,
compute the target from the formula (parsed safely, never evaluated as code), find a formula
with :func:`kandistill.distill.discover.recursive.discover_with_teacher` (the plain search, then, unless it is exact,
the recursive split-and-solve through an MLP teacher fitted to the samples; ``--plain``: the plain
search :func:`kandistill.distill.discover.search.discover_formula` only), optionally distilling from an MLP teacher
fitted to the samples first (``--via-mlp``: the targets are its outputs and the recursion queries it),
and check it against the truth. As in SRBench, an equation counts
as recovered when sympy shows the difference is a constant or the ratio is a non-zero constant;
a numeric check on the samples comes first so that sympy only sees near-certain matches, and a
result found after ``--seconds-per-equation`` does not count.

    python scripts/bench_feynman.py [--csv FILE] [--limit N] [--only NAME ...] [--seconds-per-equation S]
                                    [--via-mlp] [--plain]

Prints a table and, as its last line, one JSON object with ``total``, ``recovered``, ``rate`` and
``median_seconds`` (and the settings).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import sympy
import torch
from torch import nn

from kandistill.distill.discover.feynman import FeynmanTableError, is_recovered, read_feynman_csv
from kandistill.distill.discover.recursive import TeacherDiscoverConfig, discover_with_teacher
from kandistill.distill.discover.search import DiscoverConfig, discover_formula
from kandistill.distill.discover.separability import BoxTeacher

# Benchmark data, not shipped with the package: the project's machines have it beside the checkout.
DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "feynman" / "FeynmanEquations.csv"


def fit_mlp_teacher(
    x: torch.Tensor, y: torch.Tensor, steps: int = 2000, seed: int = 0
) -> tuple[torch.Tensor, BoxTeacher]:
    """Fit a small MLP to the samples; its outputs on them (the teacher's soft targets) and the MLP as a
    teacher on the samples' box, whose error is its RMSE against the samples."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    y_mean, y_std = y.mean(), y.std().clamp_min(1e-8)
    mlp = nn.Sequential(nn.Linear(x.shape[1], 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(mlp.parameters(), lr=3e-3)
    xs, ys = (x - mean) / std, ((y - y_mean) / y_std)[:, None]
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(mlp(xs), ys).backward()
        optimizer.step()
    mlp.eval()

    def teacher(z: torch.Tensor) -> torch.Tensor:
        return mlp((z - mean) / std)[:, 0] * y_std + y_mean

    with torch.no_grad():
        outputs = teacher(x)
    error = float((outputs - y).square().mean().sqrt())
    return outputs, BoxTeacher(teacher, x.min(0).values, x.max(0).values, error)


@contextmanager
def time_limit(seconds: float):
    """Raise ``TimeoutError`` in this (main) thread after ``seconds``: sympy can run for hours."""

    def expire(signum, frame):
        raise TimeoutError(f"over {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"equation table (default: {DEFAULT_CSV})")
    parser.add_argument("--limit", type=int, default=None, help="only the first N equations")
    parser.add_argument("--seconds-per-equation", type=float, default=60.0, help="budget per equation (default 60)")
    parser.add_argument("--samples", type=int, default=1000, help="samples per equation (default 1000)")
    parser.add_argument("--via-mlp", action="store_true", help="distil from an MLP teacher fitted to the samples")
    parser.add_argument("--plain", action="store_true", help="the plain search only (no teacher recursion)")
    parser.add_argument("--only", nargs="+", default=None, help="only these equations (by name)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small students: threads only add synchronisation
    logging.basicConfig(level=logging.ERROR)

    if not args.csv.is_file():
        raise SystemExit(
            f"bench_feynman: no equation table at {args.csv}. It is the public AI Feynman table "
            "FeynmanEquations.csv (100 equations; e.g. data/FeynmanEquations.csv of "
            "trishullab/LibraryAugmentedSymbolicRegression.jl): pass its path with --csv FILE"
        )
    try:
        equations = read_feynman_csv(args.csv)
        equations = [e for e in equations if args.only is None or e.name in args.only][: args.limit]
    except FeynmanTableError as err:
        raise SystemExit(f"bench_feynman: {err}") from None
    source = ("via an MLP teacher" if args.via_mlp else "directly from data") + ("; plain search" if args.plain else "")
    print(f"{len(equations)} equations from {args.csv}; {args.samples} samples; {source}; "
          f"budget {args.seconds_per_equation:.0f} s")  # fmt: skip
    print(f"{'equation':<12}{'vars':>5}{'ok':>4}{'R2 val':>12}{'s':>7}  {'by':<18}  found")
    rows = []
    for eq in equations:
        start = time.perf_counter()
        x, y = eq.sample(args.samples, args.seed)
        truth = eq.expression()
        target, teacher = fit_mlp_teacher(x, y, seed=args.seed) if args.via_mlp else (y, None)
        try:
            with time_limit(1.5 * args.seconds_per_equation):
                config = DiscoverConfig(seed=args.seed, seconds=0.6 * args.seconds_per_equation)
                if args.plain:
                    found = discover_formula(x, target, list(eq.variables), config)
                else:
                    both = TeacherDiscoverConfig(plain=config, seconds=0.6 * args.seconds_per_equation)
                    found = discover_with_teacher(x, target, list(eq.variables), teacher, both)
                expr, r2, by = found.expression, found.r2_validation, found.transform
                ok = is_recovered(expr, truth, list(eq.variables), x.double().numpy())
        except Exception as err:  # a benchmark records a failure and goes on
            expr, r2, ok, by = sympy.Symbol(f"<failed: {type(err).__name__}>"), float("nan"), False, "-"
        seconds = time.perf_counter() - start
        ok = ok and seconds <= args.seconds_per_equation
        rows.append({"equation": eq.name, "recovered": ok, "seconds": seconds, "r2": r2, "by": by, "found": str(expr)})
        mark = "yes" if ok else "no"
        print(f"{eq.name:<12}{len(eq.variables):>5}{mark:>4}{r2:>12.6f}{seconds:>7.1f}  {by:<18}  {str(expr)[:70]}",
              flush=True)  # fmt: skip

    recovered = sum(r["recovered"] for r in rows)
    summary = {
        "total": len(rows),
        "recovered": recovered,
        "rate": recovered / max(len(rows), 1),
        "median_seconds": statistics.median(r["seconds"] for r in rows) if rows else None,
        "via_mlp": args.via_mlp,
        "plain": args.plain,
        "samples": args.samples,
        "seconds_per_equation": args.seconds_per_equation,
        "csv": str(args.csv),
    }
    print(f"recovered {recovered} of {len(rows)} ({summary['rate']:.1%}); median {summary['median_seconds']:.1f} s")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
