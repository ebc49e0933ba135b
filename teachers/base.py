"""The teacher interface, and the hashes that fingerprint a teacher.

A teacher answers a columnar batch of named inputs (see `kandistill.teachers.schema`) with named outputs, each
a float tensor ``(batch,)`` or ``(batch, d)``. Its `fingerprint` hashes everything that decides its
answers (weights, model config, template, label set, taps, dtype), so that a soft-target cache made
by one teacher is never mistaken for another's.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from kandistill.teachers.schema import Batch, FeatureSchema

Progress = Callable[[int], object]  # told how many more rows are done: `tqdm.update`


def process_state() -> PartialState:
    """This process's accelerate state; without a GPU, a torchrun/``accelerate launch`` run uses gloo on CPUs."""
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


def hash_json(data: Any) -> str:
    """A hex digest of JSON data, independent of key order."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """A hex digest of named tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.blake2b(digest_size=32)
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def hash_files(paths: Iterable[Path], chunk: int = 1 << 24) -> str:
    """A hex digest of files' names and bytes, read in chunks (weights of many GB never sit in memory)."""
    digest = hashlib.blake2b(digest_size=32)
    for path in sorted(Path(p) for p in paths):
        digest.update(f"{path.name}|".encode())
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()
