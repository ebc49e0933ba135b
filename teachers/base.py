"""The teacher interface: named inputs to named outputs, with a fingerprint.

A teacher answers a columnar batch of named inputs (see `kandistill.teachers.schema`) with named outputs, each
a float tensor ``(batch,)`` or ``(batch, d)``. Its `fingerprint` hashes everything that decides its
answers (weights, model config, template, label set, taps, dtype), so that a soft-target cache made
by one teacher is never mistaken for another's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kandistill.teachers.hashing import hash_json
from kandistill.teachers.schema import Batch, FeatureSchema

if TYPE_CHECKING:
    import torch
    from accelerate import PartialState

Progress = Callable[[int], object]  # told how many more rows are done: `tqdm.update`


def process_state() -> PartialState:
    """This process's accelerate state; without a GPU, a torchrun/``accelerate launch`` run uses gloo on CPUs.

    Imported here, not above: the interface and its errors load without torch (the command line's ``--help``).
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


class TeacherError(ValueError):
    """A teacher that cannot be built or run as asked; the message names what is wrong."""


class Teacher(ABC):
    """Anything that answers ``inputs -> outputs`` for a batch, with named inputs and outputs."""

    schema: FeatureSchema

    @property
    @abstractmethod
    def outputs(self) -> list[str]:
        """The names of the outputs `__call__` returns, in order."""

    @abstractmethod
    def __call__(self, batch: Batch, progress: Progress | None = None) -> dict[str, torch.Tensor]:
        """Answer a columnar batch: ``{output name: float tensor (batch,) or (batch, d)}`` on the CPU.
        ``progress``, if given, is called with the number of rows answered each time some are done (a
        progress bar's ``update``), so that a long batch is never silent."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What decides the answers besides the weights (plain JSON data): recorded in cache manifests."""

    @abstractmethod
    def weights_digest(self) -> str:
        """A hash of the weights."""

    def fingerprint(self) -> str:
        """A hash of the weights, the description and the schema: two different teachers never share one."""
        return hash_json({"weights": self.weights_digest(), "describe": self.describe(),
                          "schema": self.schema.to_dict()})  # fmt: skip
