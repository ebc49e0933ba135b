"""Content hashes (of JSON data, tensors and files) that fingerprint teachers, caches and students."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def hash_json(data: Any) -> str:
    """A hex digest of JSON data, independent of key order."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """A hex digest of named tensors: names, dtypes, shapes and bytes, in name order."""
    import torch  # here, so that the other hashes (and the command line's start) need no torch

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
