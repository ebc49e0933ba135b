"""The ``kandistill`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipelines.demo import run_demo


def _demo(args: argparse.Namespace) -> int:
    result = run_demo(Path(args.out), seed=args.seed, steps=args.steps)
    print(f"Fitted {result.formula} with a [2, 5, 1] KAN in {result.seconds:.1f} s")
    for grid, rmse in zip(result.grids, result.held_out_rmse, strict=True):
        print(f"  grid {grid:>3}: held-out RMSE {rmse:.2e}")
    print(f"  held-out R^2 {result.held_out_r2:.6f}")
    print(f"Student saved in {result.student_dir}")
    print(f"Report: {result.report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kandistill",
        description="Distil black-box models into small, inspectable KAN students.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the embedded demo (no downloads) and write a report")
    demo.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--steps", type=int, default=50, help="L-BFGS steps per grid size (default: 50)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
