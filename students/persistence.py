"""Saving and loading KANs the Hugging Face way: ``config.json`` + ``model.safetensors``.

Writes are atomic (a temporary name, then a rename), so an interrupted save never leaves a
half-written file. Loads check every tensor against the shapes that the config implies and
fail with an error naming the file, the tensor and both shapes. No pickle is ever read.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from students.kan import KAN, KANConfig
from students.symbols import SymbolLibrary

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _library_version() -> str:
    try:
        return metadata.version("kandistill")
    except metadata.PackageNotFoundError:
        return "unknown"


def save_kan(model: KAN, directory: Path, provenance: dict[str, str] | None = None) -> Path:
    """Save ``model`` into ``directory``; ``provenance`` strings go into the safetensors metadata."""
    metadata_ = {
        "format": "pt",
        "kandistill_version": _library_version(),
        "torch_version": torch.__version__,
        **model.provenance,
        **(provenance or {}),
    }
    bad = {k: type(v).__name__ for k, v in metadata_.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"provenance values must be strings; got {bad}")
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    config = {"model_type": "kan", **model.config.to_dict()}
    atomic_write_bytes(directory / WEIGHTS_NAME, safetensors.torch.save(tensors, metadata=metadata_))
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return directory


def _read_config(path: Path) -> KANConfig:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("model_type") != "kan":
        raise ValueError(f'{path}: not a KAN config (expected "model_type": "kan")')
    raw.pop("model_type")
    known = set(KANConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}")
    try:
        return KANConfig(**raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def load_kan(directory: Path, symbols: SymbolLibrary) -> KAN:
    """Load a KAN from ``directory``; see :meth:`KAN.from_pretrained`."""
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"KAN.from_pretrained: missing {path}")
    config = _read_config(config_path)
    try:
        with safetensors.safe_open(weights_path, framework="pt") as f:
            provenance = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({err})") from None

    model = KAN.from_config(config, symbols)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights_path} does not match {config_path}: missing tensors {missing}, unexpected {unexpected}"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{weights_path}: tensor {name!r} has shape {tuple(tensor.shape)}, but {config_path} "
                f"(width={config.width}, grid={config.grid}, k={config.k}, ensemble={config.ensemble}) "
                f"implies {tuple(expected[name].shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{weights_path}: tensor {name!r} holds NaN or infinite values")
        n_symbols = len(config.symbols)
        if name.endswith("sym_index") and tensor.numel() and not 0 <= tensor.min() <= tensor.max() < n_symbols:
            raise ValueError(f"{weights_path}: tensor {name!r} names symbols outside the {n_symbols} in the config")
    model.to(tensors["layers.0.coef"].dtype).load_state_dict(tensors)
    model.provenance = {k: v for k, v in provenance.items() if k != "format"}
    return model
