"""Loading Hugging Face teachers: local folder or Hub id, safetensors only, dtype and device defaults."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kandistill.teachers.base import TeacherError
from kandistill.teachers.hashing import hash_files, hash_json, hash_tensors

HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weight files of a model folder (pickled ``.bin`` weights are never loaded)."""
    return sorted(folder.glob("*.safetensors"))


def resolve_source(path_or_id: str | Path) -> str:
    """A checked local model folder, or a Hub id (``name`` or ``org/name``) passed through.

    Raises `TeacherError` for a folder that does not exist or lacks ``config.json`` or safetensors weights.
    """
    text = str(path_or_id)
    folder = Path(text).expanduser()
    if not (isinstance(path_or_id, Path) or folder.exists() or text.startswith((".", "~", "/"))) and HUB_ID.fullmatch(
        text
    ):
        return text
    if not folder.is_dir():
        raise TeacherError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise TeacherError(f"model folder {folder} has no config.json")
    if not weight_files(folder):
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (it has {pickled}; kandistill loads safetensors only, never pickles)" if pickled else ""
        raise TeacherError(f"model folder {folder} has no weights: expected model.safetensors{hint}")
    return str(folder)


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch dtype; by default bfloat16 on a GPU and float32 elsewhere."""
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    resolved = resolved or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise TeacherError(f"dtype: expected a floating torch dtype such as 'bfloat16', got {dtype!r}")
    return resolved


def model_weights_digest(name_or_path: str, model: PreTrainedModel) -> str:
    """Hash the weight files of a local folder (streamed from disk), else the model's tensors."""
    folder = Path(name_or_path)
    files = weight_files(folder) if name_or_path and folder.is_dir() else []
    return hash_files(files) if files else hash_tensors(model.state_dict())


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides the tokens: vocabulary, normaliser and rules, not the padding state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return hash_json({"class": type(tokenizer).__name__, "vocab": tokenizer.get_vocab()})
    spec = json.loads(backend.to_str())
    return hash_json({key: value for key, value in spec.items() if key not in ("truncation", "padding")})
