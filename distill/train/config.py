"""What the train stage is asked: the students (`StudentSpec`) and the schedule (`TrainConfig`), checked on creation.

Kept apart from the loop so that reading a saved student (`kandistill.Surrogate`) needs neither accelerate nor
the soft-target cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kandistill.teachers.names import InvalidNameError, check_slug

LOSSES = {"scalar": ("mse",), "labels": ("mse_logodds", "kl", "soft_ce")}  # the losses each kind of student takes
DEFAULT_LOSS = {"scalar": "mse", "labels": "mse_logodds"}


class TrainError(ValueError):
    """A training request that cannot be met; the message names the student, target or field."""


@dataclass(frozen=True)
class StudentSpec:
    """One student: its name, the cache columns it learns, and how.

    ``kind="scalar"``: one output per target column (a head, a regression output), MSE.
    ``kind="labels"``: the targets are a label set's ``logprob[LABEL]`` columns; the student predicts
    the log-odds of each label against the last, trained by ``mse_logodds`` (default: fidelity is
    judged on log-odds, and MSE keeps saturated regions accurate, where KL has little gradient),
    ``kl`` or ``soft_ce`` at ``temperature``. ``seed`` initialises the student (default: the
    config's seed plus the student's position among those sharing its ensemble).
    """

    name: str
    targets: tuple[str, ...]
    kind: str = "scalar"
    loss: str | None = None
    temperature: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        try:
            check_slug(self.name, "student name")
        except InvalidNameError as err:
            raise TrainError(str(err)) from None
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.kind not in LOSSES:
            raise TrainError(f"student {self.name!r}: kind must be one of {sorted(LOSSES)}, got {self.kind!r}")
        if self.loss is not None and self.loss not in LOSSES[self.kind]:
            raise TrainError(f"student {self.name!r}: loss for {self.kind} targets must be one of "
                             f"{LOSSES[self.kind]}, got {self.loss!r}")  # fmt: skip
        if not self.targets or (self.kind == "labels" and len(self.targets) < 2):
            raise TrainError(f"student {self.name!r}: needs targets (two or more for a label set)")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise TrainError(f"student name {self.name!r}: expected a plain folder name")
        if not self.temperature > 0:
            raise TrainError(f"student {self.name!r}: temperature must be positive, got {self.temperature}")

    @classmethod
    def for_labels(cls, name: str, labels: Sequence[str], **options: Any) -> StudentSpec:
        return cls(name, tuple(f"logprob[{label}]" for label in labels), kind="labels", **options)

    @property
    def n_outputs(self) -> int:
        return len(self.targets) - (self.kind == "labels")

    @property
    def output_names(self) -> list[str]:
        """What each output is: the target column, or ``logodds[A-LAST]`` for a label set."""
        if self.kind == "scalar":
            return list(self.targets)
        labels = [t.removeprefix("logprob[").removesuffix("]") for t in self.targets]
        return [f"logodds[{label}-{labels[-1]}]" for label in labels[:-1]]

    @property
    def loss_name(self) -> str:
        return self.loss or DEFAULT_LOSS[self.kind]


@dataclass
class TrainConfig:
    """The students' shape and the KAN schedule; every field maps onto the loop below.

    The recipe options (defaults: the plain schedule): ``members`` seeds per student train side by
    side in the ensemble and the one with the lowest held-out loss becomes the student;
    ``schedule="cosine"`` gives Adam a linear warm-up over ``warmup`` of its steps, then a cosine
    decay to zero; ``polish_steps`` L-BFGS steps then polish each chosen student; ``smoothness``
    weighs the P-spline penalty (`kandistill.students.smoothness_penalty`); the grid follows the data at every
    ``grid_update_every``-th step of the fit phase up to step ``grid_update_until`` (``0``: never), shaped by
    ``grid_uniform_fraction`` and ``grid_margin`` (a share of each input's range; ``1.0``: uniform grids,
    whose closed-form basis is the fast one); ``selection_fraction`` of
    the training rows, when set, decides early stopping, snapshots and the choice of member, so that
    the validation rows that the fidelity is measured on take no part in training at all.
    ``batch_size``, when set, gives Adam minibatches of that many training rows (each epoch a
    seeded permutation, a function of the step count, so a resumed run draws the same batches):
    many more updates for the same work on a large cache, such as one sampled well beyond the
    teacher's own data; L-BFGS (and the polish) always takes the full batch.
    """

    hidden: list[int] = field(default_factory=lambda: [5])
    grid: int = 5
    k: int = 3
    refine_grid: int | None = 10
    optimizer: str = "auto"
    lr: float | None = None
    steps: int | None = None
    sparse_steps: int = 0
    l1: float = 1e-3
    entropy: float = 1e-3
    prune_threshold: float = 1e-2
    validation_fraction: float = 0.2
    eval_every: int = 10
    patience: int = 10
    seed: int = 0
    checkpoint_every: int = 50
    lbfgs_max_rows: int = 50_000
    members: int = 1
    schedule: str = "constant"
    warmup: float = 0.05
    polish_steps: int = 0
    smoothness: float = 0.0
    grid_update_every: int = 10
    grid_update_until: int = 50
    grid_uniform_fraction: float = 0.02
    grid_margin: float = 0.0
    selection_fraction: float = 0.0
    batch_size: int | None = None
    mixed_precision: str = "no"
    log_with: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.hidden = list(self.hidden)
        if not all(isinstance(h, int) and h >= 1 for h in self.hidden):
            raise TrainError(f"hidden: expected positive integers, got {self.hidden}")
        if self.optimizer not in ("auto", "lbfgs", "adam"):
            raise TrainError(f"optimizer: expected auto, lbfgs or adam, got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise TrainError(f"schedule: expected constant or cosine, got {self.schedule!r}")
        if not 0 < self.validation_fraction < 1:
            raise TrainError(f"validation_fraction: expected a number in (0, 1), got {self.validation_fraction}")
        for name in ("grid", "k", "eval_every", "patience", "checkpoint_every", "members"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TrainError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise TrainError(f"batch_size: expected a positive integer or None, got {self.batch_size!r}")
        for name in ("polish_steps", "grid_update_every", "grid_update_until"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise TrainError(f"{name}: expected a non-negative integer, got {getattr(self, name)!r}")
        for name, low, high in (("warmup", 0, 1), ("grid_uniform_fraction", 0, 1), ("selection_fraction", 0, 0.9)):
            if not low <= getattr(self, name) <= high:
                raise TrainError(f"{name}: expected a number in [{low}, {high}], got {getattr(self, name)!r}")
        for name in ("smoothness", "grid_margin"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise TrainError(f"{name}: expected a non-negative number, got {getattr(self, name)!r}")

    def optimizer_for(self, members: int, rows: int) -> str:
        if self.optimizer != "auto":
            return self.optimizer
        return "lbfgs" if members == 1 and rows <= self.lbfgs_max_rows else "adam"

    def steps_for(self, optimizer: str) -> int:
        return self.steps if self.steps is not None else (100 if optimizer == "lbfgs" else 1000)

    def lr_for(self, optimizer: str) -> float:
        return self.lr if self.lr is not None else (1.0 if optimizer == "lbfgs" else 1e-2)
