"""The ``kandistill`` command line.

Exit codes: 0 done; 2 bad input (a config, a cache, a target that is wrong: the message names it);
1 an unexpected failure (a traceback). Works unchanged under ``accelerate launch -m kandistill.pipelines.cli``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kandistill.pipelines.examples import example_configs
from kandistill.pipelines.run_folder import STAGES

if TYPE_CHECKING:
    from kandistill.distill.train.config import StudentSpec

EXIT_BAD_INPUT = 2


# The errors that mean bad input (exit 2; each message names the field, file or value), by module: an error
# can only come from a module that is loaded, so checking for one loads nothing (``--help`` loads no torch).
BAD_INPUT = {
    "kandistill.distill.extract.formula": "FormulaError",
    "kandistill.distill.targets.cache": "CacheError",
    "kandistill.distill.targets.lock": "FolderBusyError",
    "kandistill.distill.train.config": "TrainError",
    "kandistill.pipelines.config": "ConfigError",
    "kandistill.pipelines.run_folder": "RunFolderError",
    "kandistill.pipelines.surrogate": "SurrogateError",
    "kandistill.students.persistence": "StudentFileError",
    "kandistill.teachers.base": "TeacherError",
    "kandistill.teachers.names": "InvalidNameError",
    "kandistill.teachers.schema": "SchemaError",
}


def is_bad_input(error: Exception) -> bool:
    if isinstance(error, FileNotFoundError | NotADirectoryError):
        return True
    return any(isinstance(error, getattr(sys.modules[module], name)) for module, name in BAD_INPUT.items()
               if module in sys.modules)  # fmt: skip


def _run_stages(args: argparse.Namespace, stages: tuple[str, ...]) -> int:
    from kandistill.pipelines.config import read_config

    config = read_config(args.config)  # a bad config is reported before any model library loads
    configure_library_logging(args.verbose)
    from kandistill.pipelines.render import find_chromium, print_pdf
    from kandistill.pipelines.runner import run

    pdf = getattr(args, "pdf", False)
    if pdf:
        find_chromium()  # before any work: a missing browser is a clear error (exit 2)
    out = Path(args.out) if args.out else Path("runs") / config.name
    folder = run(config, out, stages, progress=not args.quiet)
    print(f"{', '.join(stages)}: done in {folder.root}")
    if "audit" in stages:
        print(f"Report: {folder.report / 'index.html'}")
    if pdf:
        print(f"PDF: {print_pdf(folder.report / 'index.html', folder.report / 'report.pdf')}")
    return 0


def _student_specs(args: argparse.Namespace) -> list[StudentSpec]:
    from kandistill.distill.train.config import StudentSpec, TrainError

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
    if args.cache is None:
        return _run_stages(args, ("train",))
    from kandistill.distill.train.config import TrainConfig
    from kandistill.distill.train.loop import train_students

    configure_library_logging(args.verbose)
    config = TrainConfig(hidden=args.hidden, grid=args.grid, refine_grid=args.refine_grid or None,
                         optimizer=args.optimizer, steps=args.steps, seed=args.seed,
                         progress=not args.quiet)  # fmt: skip
    out = args.out or "runs/train"
    result = train_students(args.cache, _student_specs(args), out, config)
    print(f"{'student':<32} fidelity on held-out rows")
    for name, scores in result.fidelity.items():
        print(f"{name:<32} " + "  ".join(f"{k} {v:.5g}" for k, v in scores.items()))
    print(f"Students saved in {Path(out) / 'students'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from kandistill.pipelines.demo import run_demo, run_real_demo

    configure_library_logging(args.verbose)
    demo = run_real_demo if args.real else run_demo
    result = demo(Path(args.out), quick=args.quick, progress=not args.quiet)
    print(f"Demo finished in {result.seconds:.0f} s.")
    for line in result.findings:
        print(f"  - {line}")
    for report in result.reports:
        print(f"Report: {report}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from kandistill.distill.extract.formula import rounded
    from kandistill.pipelines.surrogate import Surrogate

    path = Path(args.path)
    if (path / "student.json").is_file():
        students = [Surrogate.from_folder(path)]
    elif (path / "train" / "students").is_dir():
        students = [Surrogate.from_run(path, p.name) for p in sorted((path / "train" / "students").iterdir())]
    else:
        raise FileNotFoundError(f"{path}: neither a run folder (with train/students) nor a student folder")
    for surrogate in students:
        print(f"{surrogate.name}: {surrogate.schema.names} -> {surrogate.outputs}")
        print("  fidelity (held out): " + json.dumps(surrogate.record["fidelity"]))
        if surrogate.formula_path is not None:
            record = surrogate.formula_record()
            for k, (target, text) in enumerate(zip(record.targets, record.text, strict=True)):
                print(f"  {target} = {text}")
                model = record.components[k] if k < len(record.components) else None
                if model is None:
                    continue
                levels = ("main_effects", "with_interactions", "student", "formula")
                shown = ", ".join(f"{k} {model.r2[k]:.4f}" for k in levels if k in model.r2)
                print(f"    R^2 against the teacher: {shown}")
                for c in sorted(model.components, key=lambda c: -c.variance_share):
                    form = str(rounded(c.expression)) if c.expression is not None else f"tabulated; {c.note}"
                    print(f"    {c.variance_share:6.1%}  {c.name} ({c.kind}): {form}")
    return 0


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Each stage's start, progress bars and result by default, on stderr; ``quiet``: errors only (the findings
    still go to stdout); ``verbose``: details, and the logs and progress bars of transformers and datasets too
    (`configure_library_logging`, which the commands that load them call)."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(message)s")
    logging.getLogger("kandistill").setLevel(level)


def configure_library_logging(verbose: bool) -> None:
    """transformers' and datasets' logs and progress bars: shown with ``-v``, else their bars are off."""
    import datasets
    import transformers

    if verbose:
        transformers.utils.logging.set_verbosity_info()
        datasets.utils.logging.set_verbosity_info()
    else:
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kandistill",
        description="Distil black-box models into small, inspectable KAN students, and audit them. "
        "A run config (YAML) names the teacher, its inputs, the students and the checks; "
        "`kandistill run CONFIG` goes targets -> train -> extract -> audit, resuming where it stopped.",
        epilog="Examples: kandistill demo | kandistill inspect runs/demo/loan | kandistill run demo_loan "
        f"(a config that ships with the package; the others: {', '.join(example_configs())})",
    )
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="also log details and library progress bars")
    loudness.add_argument("-q", "--quiet", action="store_true", help="print only the findings and errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, stages, text in (("run", STAGES, "all stages: targets, train, extract, audit"),
                               ("targets", ("targets",), "run the teacher over the inputs into a soft-target cache"),
                               ("extract", ("extract",), "extract each student's formula"),
                               ("audit", ("audit",), "run the declared checks and write the report")):  # fmt: skip
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("config", help="run config (YAML), or an example's name (demo_loan, ...)")
        command.add_argument("--out", help="run folder (default: runs/NAME from the config)")
        if name == "audit":
            command.add_argument("--pdf", action="store_true", help="also print report/report.pdf (headless Chromium)")
        command.set_defaults(handler=lambda args, stages=stages: _run_stages(args, stages))

    train = commands.add_parser(
        "train",
        help="train KAN students: from a run config, or from a cache folder with --cache",
        description="Train KAN students. Either `kandistill train CONFIG` (the run's train stage) or "
        "`kandistill train --cache DIR --out DIR --labels decision=yes,no --student h=COLUMN ...`. "
        "Students of the same kind train as one ensemble; an interrupted run resumes from its checkpoints.",
    )
    train.add_argument("config", nargs="?", help="run config (YAML)")
    train.add_argument("--out", help="output folder (with a config: the run folder)")
    train.add_argument("--cache", help="a soft-target cache folder, instead of a config")
    train.add_argument("--student", action="append", metavar="NAME=COLUMN", help="a scalar student of a cache column")
    train.add_argument("--labels", action="append", metavar="NAME=A,B", help="a student of a label set's log-odds")
    train.add_argument("--hidden", type=int, nargs="+", default=[5], help="hidden layer widths (default: 5)")
    train.add_argument("--grid", type=int, default=5, help="grid intervals at first (default: 5)")
    train.add_argument("--refine-grid", type=int, default=10, help="grid after refinement; 0: none (default: 10)")
    train.add_argument("--optimizer", choices=["auto", "lbfgs", "adam"], default="auto")
    train.add_argument("--steps", type=int, default=None, help="steps per phase (default: 100 L-BFGS, 1000 Adam)")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=_train)

    demo = commands.add_parser("demo", help="the embedded demo: a loan-decision Llama audit and a formula recovery")
    demo.add_argument("--out", default="runs/demo", help="folder for the demo's runs (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="smaller sizes (for tests); the findings still hold")
    real = "audit the real pretrained SmolLM2-135M-Instruct instead (configs/smollm2_review.yaml, smollm2 extra)"
    demo.add_argument("--real", action="store_true", help=real)
    demo.set_defaults(handler=_demo)

    inspect = commands.add_parser("inspect", help="print the formulas and fidelity of a run or a student")
    inspect.add_argument("path", help="a run folder or a student folder")
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.config is None and args.cache is None:
        parser.error("train: give a run CONFIG, or --cache DIR with --student/--labels")
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, never inside one
            return args.handler(args)
    except Exception as err:
        if not is_bad_input(err):
            raise
        print(f"kandistill {args.command}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
