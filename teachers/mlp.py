"""`MLPTeacher`: a plain torch module as a teacher, stored as ``config.json`` + ``model.safetensors``.

Any module that maps ``(batch, n_features)`` float32 to ``(batch, n_outputs)`` can teach. The `MLP`
built here also scales its inputs by the schema's ranges and its outputs by the training targets'
mean and spread (both stored as buffers), so a folder rebuilds it without code. A module of another
kind is loaded by passing an instance to `MLPTeacher.from_pretrained(path, module=...)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from kandistill.students.files import atomic_write_bytes, atomic_write_json
from kandistill.students.scaling import scale_inputs
from kandistill.teachers.base import Progress, Teacher, TeacherError
from kandistill.teachers.hashing import hash_tensors
from kandistill.teachers.schema import Batch, FeatureSchema

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


class MLP(nn.Module):
    """A fully connected network with input scaling to [-1, 1] and output de-standardisation.

    ``sizes = [n_in, h1, ..., n_out]``; ``low``/``high`` ``(n_in,)`` are the inputs' ranges;
    ``out_mean``/``out_std`` ``(n_out,)`` undo the targets' standardisation.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "silu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise TeacherError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise TeacherError(f"sizes: expected at least two positive integers, got {list(sizes)}")
        self.sizes, self.activation = [int(s) for s in sizes], activation
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(self.sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.register_buffer("low", -torch.ones(self.sizes[0]))
        self.register_buffer("high", torch.ones(self.sizes[0]))
        self.register_buffer("out_mean", torch.zeros(self.sizes[-1]))
        self.register_buffer("out_std", torch.ones(self.sizes[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(scale_inputs(x, self.low, self.high)) * self.out_std + self.out_mean

    def spec(self) -> dict[str, Any]:
        return {"kind": "mlp", "sizes": self.sizes, "activation": self.activation}


def train_mlp(x: torch.Tensor, y: torch.Tensor, schema: FeatureSchema, hidden: Sequence[int] = (64, 64),
              steps: int = 3000, lr: float = 3e-3, seed: int = 0, activation: str = "silu",
              polish_steps: int = 0, progress: bool = False) -> MLP:  # fmt: skip
    """Fit an `MLP` to ``x (batch, n_in) -> y (batch, n_out)`` with full-batch Adam, seeded.

    ``polish_steps`` full-batch L-BFGS steps (20 iterations each) follow Adam: on a smooth law they
    take the relative error from about 1e-1 to 1e-3 at the worst point, which an exact formula
    recovery through the teacher needs. ``progress``: a bar of the steps on stderr.
    """
    torch.manual_seed(seed)
    mlp = MLP([x.shape[1], *hidden, y.shape[1]], activation)
    mlp.low, mlp.high = (torch.as_tensor(r, dtype=torch.float32) for r in schema.encoded_ranges())
    mlp.out_mean, mlp.out_std = y.mean(0), y.std(0).clamp_min(1e-8)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    target = (y - mlp.out_mean) / mlp.out_std

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = nn.functional.mse_loss((mlp(x) - mlp.out_mean) / mlp.out_std, target)
        value.backward()
        return value

    bar = tqdm(total=steps + polish_steps, desc="teacher: fitting the MLP", unit="step", disable=not progress)
    for _ in range(steps):
        loss()
        optimizer.step()
        schedule.step()
        bar.update()
    if polish_steps:
        optimizer = torch.optim.LBFGS(mlp.parameters(), max_iter=20, history_size=50, line_search_fn="strong_wolfe")
        for _ in range(polish_steps):
            optimizer.step(loss)
            bar.update()
    bar.close()
    return mlp.eval()


class MLPTeacher(Teacher):
    """A torch module over the schema's encoded features, with one named output per column."""

    def __init__(self, module: nn.Module, schema: FeatureSchema, outputs: Sequence[str], batch_size: int = 4096):
        self.module, self.schema, self._outputs = module.eval(), schema, list(outputs)
        self.batch_size = batch_size
        if len(set(self._outputs)) != len(self._outputs) or not self._outputs:
            raise TeacherError(f"outputs: expected distinct names, got {self._outputs}")

    @property
    def outputs(self) -> list[str]:
        return list(self._outputs)

    @torch.no_grad()
    def __call__(self, batch: Batch, progress: Progress | None = None) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(self.schema.encode(batch), dtype=torch.float32)
        y = torch.cat([self.module(chunk) for chunk in x.split(self.batch_size)]) if len(x) else x.new_zeros(0, 1)
        if progress is not None:
            progress(len(x))
        if y.ndim != 2 or y.shape[1] != len(self._outputs):
            raise TeacherError(f"the module returned shape {tuple(y.shape)}; expected (batch, {len(self._outputs)}) "
                               f"for outputs {self._outputs}")  # fmt: skip
        return {name: y[:, j].float().cpu() for j, name in enumerate(self._outputs)}

    def describe(self) -> dict[str, Any]:
        spec = self.module.spec() if isinstance(self.module, MLP) else {"kind": type(self.module).__name__}
        return {"teacher": "mlp", "module": spec, "outputs": self._outputs}

    def weights_digest(self) -> str:
        return hash_tensors(self.module.state_dict())

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into the folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        weights = save(state, metadata={"format": "pt", "fingerprint": self.fingerprint()})
        atomic_write_bytes(folder / WEIGHTS_NAME, weights)
        config = {"schema": self.schema.to_dict(), "outputs": self._outputs, **self.describe()}
        atomic_write_json(folder / CONFIG_NAME, config)
        return folder

    @classmethod
    def from_pretrained(cls, path: str | Path, module: nn.Module | None = None) -> MLPTeacher:
        """Load a folder written by `save_pretrained`; ``module`` is required for modules other than `MLP`."""
        folder = Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise TeacherError(
                    f"{folder}: missing {name} (is this a folder written by MLPTeacher.save_pretrained?)"
                )
        try:
            config = json.loads((folder / CONFIG_NAME).read_text())
            state = load_file(str(folder / WEIGHTS_NAME))
        except (json.JSONDecodeError, SafetensorError, OSError) as err:
            raise TeacherError(f"{folder}: unreadable teacher files: {err}") from err
        if module is None:
            spec = config.get("module", {})
            if spec.get("kind") != "mlp":
                raise TeacherError(f"{folder / CONFIG_NAME}: module kind {spec.get('kind')!r} cannot be rebuilt "
                                   "from config; pass module=... to from_pretrained")  # fmt: skip
            module = MLP(spec["sizes"], spec["activation"])
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            raise TeacherError(f"{folder / WEIGHTS_NAME}: weights do not fit the module: {err}") from err
        return cls(module, FeatureSchema.from_dict(config["schema"]), config["outputs"])
