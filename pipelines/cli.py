"""The ``kandistill`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from distill.targets import CacheError
from distill.train import StudentSpec, TrainConfig, TrainError, distill
from pipelines.demo import run_demo

EXIT_BAD_INPUT = 2


def _demo(args: argparse.Namespace) -> int:
    result = run_demo(Path(args.out), seed=args.seed, steps=args.steps)
    print(f"Fitted {result.formula} with a [2, 5, 1] KAN in {result.seconds:.1f} s")
    for grid, rmse in zip(result.grids, result.held_out_rmse, strict=True):
        print(f"  grid {grid:>3}: held-out RMSE {rmse:.2e}")
    print(f"  held-out R^2 {result.held_out_r2:.6f}")
    print(f"Student saved in {result.student_dir}")
    print(f"Report: {result.report}")
    return 0


def _student_specs(args: argparse.Namespace) -> list[StudentSpec]:
    specs = []
    for option, kind in ((args.student, "scalar"), (args.labels, "labels")):
        for item in option or []:
            name, _, columns = item.partition("=")
            if not name or not columns:
                raise TrainError(f"expected NAME=COLUMN[,COLUMN...], got {item!r}")
            values = columns.split(",")
            specs.append(StudentSpec.for_labels(name, values) if kind == "labels" else StudentSpec(name, tuple(values)))
    if not specs:
        raise TrainError("name at least one student: --student NAME=COLUMN or --labels NAME=LABEL,LABEL")
    return specs


def _train(args: argparse.Namespace) -> int:
    config = TrainConfig(hidden=args.hidden, grid=args.grid, refine_grid=args.refine_grid or None,
                         optimizer=args.optimizer, steps=args.steps, seed=args.seed)  # fmt: skip
    result = distill(args.cache, _student_specs(args), args.out, config)
    print(f"{'student':<32} fidelity on held-out rows")
    for name, scores in result.fidelity.items():
        print(f"{name:<32} " + "  ".join(f"{k} {v:.5g}" for k, v in scores.items()))
    print(f"Students saved in {Path(args.out) / 'students'}")
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

    train = commands.add_parser(
        "train",
        help="train KAN students on a soft-target cache",
        description="Train KAN students on a soft-target cache (see distill.train). Students of the same "
        "kind train as one ensemble; the run resumes from OUT/checkpoints if interrupted. Works under "
        "`accelerate launch -m pipelines.cli train ...` unchanged.",
    )
    train.add_argument("cache", help="soft-target cache folder (written by the targets stage)")
    train.add_argument("out", help="output folder: students/NAME, fidelity.json, checkpoints")
    train.add_argument("--student", action="append", metavar="NAME=COLUMN", help="a scalar student of a cache column")
    train.add_argument("--labels", action="append", metavar="NAME=A,B", help="a student of a label set's log-odds")
    train.add_argument("--hidden", type=int, nargs="+", default=[5], help="hidden layer widths (default: 5)")
    train.add_argument("--grid", type=int, default=5, help="grid intervals at first (default: 5)")
    train.add_argument("--refine-grid", type=int, default=10, help="grid after refinement; 0: none (default: 10)")
    train.add_argument("--optimizer", choices=["auto", "lbfgs", "adam"], default="auto")
    train.add_argument("--steps", type=int, default=None, help="steps per phase (default: 100 L-BFGS, 1000 Adam)")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    except (TrainError, CacheError) as err:
        print(f"kandistill {args.command}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
