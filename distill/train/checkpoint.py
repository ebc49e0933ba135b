"""Training checkpoints: a student, its optimiser's state and the loop's state, in one folder.

The folder holds the KAN (``save_pretrained``: ``config.json`` + ``model.safetensors``), optionally
the best snapshot of every member so far (``snapshot/``, saved the same way), the optimiser's
tensors (``optimizer.safetensors``; Adam's moments or L-BFGS's history) and ``state.json``
(everything else: phase, step, members, the cache's fingerprint, the optimiser's non-tensor state).
It is written whole under a temporary name and swapped in by two renames, so a kill leaves the
previous checkpoint or the new one, never a mix; `recover_checkpoint` finishes a swap that a kill
cut between its renames. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kandistill.students import KAN
from kandistill.students.files import atomic_write_json

TENSOR = "__tensor__"


def flatten_state(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in nested dicts/lists by ``{"__tensor__": key}``, collecting it in ``tensors``."""
    if isinstance(value, torch.Tensor):
        key = prefix or "root"
        tensors[key] = value.detach().cpu().contiguous()
        return {TENSOR: key}
    if isinstance(value, dict):
        return {str(k): flatten_state(v, f"{prefix}.{k}" if prefix else str(k), tensors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    return value


def unflatten_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `flatten_state`."""
    if isinstance(value, dict):
        if set(value) == {TENSOR}:
            return tensors[value[TENSOR]]
        return {k: unflatten_state(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [unflatten_state(v, tensors) for v in value]
    return value


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state dict read back from JSON (its integer parameter keys became strings)."""
    state = {**state, "state": {int(k): v for k, v in state["state"].items()}}
    optimizer.load_state_dict(state)


def save_checkpoint(
    folder: Path,
    model: KAN,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    snapshot: KAN | None = None,
) -> None:
    """Write the checkpoint (with ``snapshot``, the best weights so far, if given) under a temporary name,
    then swap it in for the previous one."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    if snapshot is not None:
        snapshot.save_pretrained(tmp / "snapshot")
    tensors: dict[str, torch.Tensor] = {}
    record = {**state, "optimizer": flatten_state(optimizer.state_dict(), "", tensors) if optimizer else None}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    atomic_write_json(tmp / "state.json", record, indent=1)  # last, and whole: marks it complete
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(folder: Path) -> None:
    """Finish a swap that a kill interrupted, and remove what killed writes left beside ``folder``.

    Between `save_checkpoint`'s two renames ``folder`` is missing, the previous checkpoint is
    ``.NAME.old-PID`` and the new one ``.NAME.tmp-PID``, complete (its ``state.json`` is written
    last): the newest complete one becomes ``folder``. One process at a time (the main one).
    """
    folder = Path(folder)
    leftovers = [*sorted(folder.parent.glob(f".{folder.name}.tmp-*")),
                 *sorted(folder.parent.glob(f".{folder.name}.old-*"))]  # fmt: skip
    complete = [path for path in leftovers if (path / "state.json").is_file()]
    if complete and not (folder / "state.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(complete[0], folder)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(folder: Path) -> tuple[KAN, dict[str, Any] | None, dict[str, Any]] | None:
    """``(model, optimizer state or None, loop state)`` from a checkpoint folder, or None if there is none.

    The model's tensors are copied into its own parameters by ``load_state_dict``, the optimiser's
    are cloned: a resumed run continues bit for bit as the uninterrupted one would have.
    """
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        return None
    state = json.loads((folder / "state.json").read_text())
    # Clones: safetensors' tensors lie in its file buffer, not 64-byte aligned, and torch's vectorised
    # reductions (L-BFGS's dot products) round differently on unaligned memory, so a resumed run
    # would part from an uninterrupted one.
    tensors = {name: t.clone() for name, t in load_file(str(folder / "optimizer.safetensors")).items()}
    optimizer = state.pop("optimizer")
    return KAN.from_pretrained(folder / "model"), unflatten_state(optimizer, tensors) if optimizer else None, state


def load_snapshot(folder: Path) -> KAN | None:
    """The best-so-far snapshot saved with the checkpoint in ``folder``, or None if it holds none."""
    path = Path(folder) / "snapshot"
    return KAN.from_pretrained(path) if (Path(folder) / "state.json").is_file() and path.is_dir() else None
