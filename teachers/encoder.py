"""`EncoderTeacher`: a sentence encoder (BERT family, e.g. MiniLM) as a teacher of similarity scores.

Each row of a batch is written as text by a `Template`, tokenized and encoded; the last hidden state
``(batch, tokens, hidden)`` is mean-pooled over the real tokens (padding excluded by the attention mask)
to ``(batch, hidden)`` and L2-normalised. Named reference texts are embedded the same way, once, to
``(n_references, hidden)``; the outputs are the cosines ``cosine[NAME]``, one float32 ``(batch,)`` tensor
per reference, so a student learns a scalar function of the inputs for each.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch.nn import functional as F
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from teachers.base import Teacher, TeacherError, hash_files, hash_json, hash_tensors, process_state
from teachers.schema import Batch, FeatureSchema
from teachers.template import Template

logger = logging.getLogger(__name__)

WEIGHT_GLOBS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
# `torch_dtype` became `dtype` in transformers 4.56; the old name warns in 5.x.
DTYPE_KWARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (safetensors, pytorch bins and their shard indexes)."""
    return sorted({p for pattern in WEIGHT_GLOBS for p in folder.glob(pattern) if p.is_file()})


def local_folder(path_or_id: str | Path) -> Path | None:
    """The folder that ``path_or_id`` names, or None if it reads as a Hub id (``name`` or ``org/name``)."""
    path = Path(path_or_id).expanduser()
    text = str(path_or_id)
    if isinstance(path_or_id, Path) or path.exists() or text.startswith((".", "~", "/")) or not HUB_ID.fullmatch(text):
        return path
    return None


def check_references(references: Mapping[str, str]) -> dict[str, str]:
    """Raise `TeacherError` unless ``references`` maps plain names (no brackets) to non-empty texts."""
    if not isinstance(references, Mapping) or not references:
        raise TeacherError(f"references: expected a non-empty mapping name -> text, got {references!r}")
    for name, text in references.items():
        if not isinstance(name, str) or not name or "[" in name or "]" in name:
            raise TeacherError(f"references: name {name!r} must be a non-empty string without brackets")
        if not isinstance(text, str) or not text.strip():
            raise TeacherError(f"references[{name!r}]: expected a non-empty text, got {text!r}")
    return dict(references)


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides the tokens: the tokenizer's vocabulary, normaliser and rules, not its padding state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return hash_json({"class": type(tokenizer).__name__, "vocab": tokenizer.get_vocab()})
    spec = json.loads(backend.to_str())
    return hash_json({key: value for key, value in spec.items() if key not in ("truncation", "padding")})


class EncoderTeacher(Teacher):
    """Cosine similarities between each row's rendered text and named reference texts.

    ``name_or_path`` records where the model came from; when it is a local folder, its weight files
    are what `weights_digest` hashes (otherwise the model's tensors are).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, schema: FeatureSchema,
                 template: Template, references: Mapping[str, str], batch_size: int = 32,
                 name_or_path: str = "") -> None:  # fmt: skip
        template.check(schema)
        if tokenizer.pad_token is None:
            raise TeacherError(f"the tokenizer {type(tokenizer).__name__} has no pad token; set one to batch texts")
        if int(batch_size) < 1:
            raise TeacherError(f"batch_size: expected a positive integer, got {batch_size}")
        self.model, self.tokenizer, self.schema, self.template = model.eval(), tokenizer, schema, template
        self.references, self.batch_size = check_references(references), int(batch_size)
        self.name_or_path = name_or_path
        self._reference_embeddings: torch.Tensor | None = None
        self._weights_digest: str | None = None
        self._tokenizer_digest: str | None = None

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, schema: FeatureSchema, template: Template,
                        references: Mapping[str, str], *, trust_remote_code: bool = False,
                        dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
                        revision: str | None = None, batch_size: int = 32) -> EncoderTeacher:  # fmt: skip
        """Load a model folder or Hub id with `AutoModel`/`AutoTokenizer`.

        ``dtype`` defaults to bfloat16 on CUDA, float32 elsewhere; ``device`` to accelerate's device.
        """
        template.check(schema)
        check_references(references)
        folder = local_folder(path_or_id)
        if folder is not None and not folder.is_dir():
            raise TeacherError(f"{folder}: no such model folder")
        if folder is not None and not weight_files(folder):
            raise TeacherError(f"{folder}: no weights (expected *.safetensors, pytorch_model.bin or their index json)")
        device = torch.device(device) if device is not None else process_state().device
        dtype = getattr(torch, dtype, dtype) if isinstance(dtype, str) else dtype
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TeacherError(f"dtype: expected a floating torch dtype, got {dtype!r}")
        source = str(folder if folder is not None else path_or_id)
        options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if revision is not None:
            options["revision"] = revision
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **options)
            model = AutoModel.from_pretrained(source, **{DTYPE_KWARG: dtype}, **options)
        except (OSError, ValueError) as err:
            raise TeacherError(f"{source}: cannot load an encoder and its tokenizer: {err}") from err
        logger.info("encoder teacher %s on %s in %s", source, device, dtype)
        return cls(model.to(device), tokenizer, schema, template, references, batch_size, name_or_path=source)

    @property
    def outputs(self) -> list[str]:
        return [f"cosine[{name}]" for name in self.references]

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled, L2-normalised embeddings ``(len(texts), hidden)`` float32, in the order of ``texts``.

        Texts go through the model in batches of similar token length (less padding), then back in order.
        """
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True)["input_ids"]]
        order = torch.tensor(sorted(range(len(texts)), key=lengths.__getitem__), dtype=torch.long)
        chunks = []
        for index in order.split(self.batch_size):
            encoded = self.tokenizer([texts[i] for i in index], padding=True, truncation=True, return_tensors="pt")
            encoded = encoded.to(self.model.device)
            hidden = self.model(**encoded).last_hidden_state.float()
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0), dim=-1))
        pooled = torch.cat(chunks)
        result = torch.empty_like(pooled)
        result[order.to(pooled.device)] = pooled
        return result

    def reference_embeddings(self) -> torch.Tensor:
        """The references' embeddings ``(n_references, hidden)``, computed on first use."""
        if self._reference_embeddings is None:
            self._reference_embeddings = self.embed(list(self.references.values()))
        return self._reference_embeddings

    @torch.no_grad()
    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        texts = self.template.render(self.schema, batch)
        if not texts:
            return {name: torch.zeros(0) for name in self.outputs}
        cosines = (self.embed(texts) @ self.reference_embeddings().T).clamp(-1.0, 1.0).cpu()
        return {name: cosines[:, j].contiguous() for j, name in enumerate(self.outputs)}

    def describe(self) -> dict[str, Any]:
        if self._tokenizer_digest is None:
            self._tokenizer_digest = tokenizer_digest(self.tokenizer)
        return {
            "teacher": "encoder",
            "model": self.name_or_path,
            "config": json.loads(json.dumps(self.model.config.to_dict(), default=str)),
            "tokenizer": {"digest": self._tokenizer_digest, "max_length": self.tokenizer.model_max_length},
            "template": self.template.text,
            "references": dict(self.references),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "pooling": "mean",
        }

    def weights_digest(self) -> str:
        if self._weights_digest is None:
            folder = Path(self.name_or_path) if self.name_or_path else None
            files = weight_files(folder) if folder is not None and folder.is_dir() else []
            self._weights_digest = hash_files(files) if files else hash_tensors(self.model.state_dict())
        return self._weights_digest
