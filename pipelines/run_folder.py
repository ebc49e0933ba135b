"""A run folder: its layout, the marker that makes it ours, per-stage stamps, and the one-process-at-a-time helper.

runs/NAME/
  kandistill-run.json  the marker: kandistill deletes only inside a folder that has it
  config.yaml      the resolved config
  teacher/         an embedded teacher, built once (real teachers are read where they are)
  targets/         the soft-target cache (kandistill.distill.targets)
  train/           students/NAME (+ student.json, README.md), fidelity.json, checkpoints
  formulas/        NAME.json: the formula as an allow-listed JSON tree, its LaTeX, its fidelity
  report/          index.html, report.md, plots/*.png, provenance.json, audit.json
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kandistill.students.files import atomic_write_json
from kandistill.teachers.base import process_state

STAGES = ("targets", "train", "extract", "audit")
RUN_MARKER = "kandistill-run.json"
# What the train stage writes into its folder: on a changed input, it deletes these and nothing else.
TRAIN_OUTPUTS = ("students", "checkpoints", "fidelity.json")


class RunFolderError(ValueError):
    """A run folder that kandistill may not use: not a run folder, or not a folder."""


@dataclass(frozen=True)
class RunFolder:
    """The paths of a run folder."""

    root: Path

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def targets(self) -> Path:
        return self.root / "targets"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def formulas(self) -> Path:
        return self.root / "formulas"

    @property
    def report(self) -> Path:
        return self.root / "report"


def read_stamp(path: Path) -> str | None:
    """The ``stamp`` a stage recorded in ``path`` (None if there is none or the file is unreadable)."""
    try:
        return json.loads(path.read_text()).get("stamp")
    except (OSError, json.JSONDecodeError):
        return None


def clear(folder: Path, names: tuple[str, ...]) -> None:
    """Delete the entries ``names`` of ``folder`` (what a stage wrote there), and nothing else."""
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def check_run_folder(root: Path) -> None:
    """Raise `RunFolderError` unless ``root`` is new, empty, or a kandistill run folder (it has the marker),
    so that a run never writes into, or deletes from, a folder that kandistill did not make."""
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"run folder {root} exists and is not a folder")
    if root.is_dir() and not (root / RUN_MARKER).is_file() and any(root.iterdir()):
        raise RunFolderError(f"{root} is not empty and is not a kandistill run folder (it has no {RUN_MARKER}); "
                             "choose another --out, or empty it")  # fmt: skip


def mark_run_folder(root: Path) -> None:
    """Write the marker that makes ``root`` a kandistill run folder (once)."""
    if not (root / RUN_MARKER).is_file():
        atomic_write_json(root / RUN_MARKER, {"kandistill": "run folder"})


def main_process_first(work: Callable[[], object]) -> None:
    """Do ``work`` on the main process only while the others wait (a no-op wait on one process)."""
    state = process_state()
    if state.is_main_process:
        work()
    state.wait_for_everyone()
