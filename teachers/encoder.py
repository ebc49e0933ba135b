"""`EncoderTeacher`: a sentence encoder (BERT family, e.g. MiniLM) as a teacher of similarity scores.

Each row of a batch is written as text by a `Template`, tokenized and encoded; the last hidden state
``(batch, tokens, hidden)`` is mean-pooled over the real tokens (padding excluded by the attention mask)
to ``(batch, hidden)`` and L2-normalised. Named reference texts are embedded the same way, once, to
``(n_references, hidden)``; the outputs are the cosines ``cosine[NAME]``, one float32 ``(batch,)`` tensor
per reference, so a student learns a scalar function of the inputs for each.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from kandistill.teachers.base import Progress, Teacher, TeacherError, process_state
from kandistill.teachers.hashing import hash_json
from kandistill.teachers.loading import model_weights_digest, resolve_dtype, resolve_source, tokenizer_digest
from kandistill.teachers.schema import Batch, FeatureSchema
from kandistill.teachers.template import Template

logger = logging.getLogger(__name__)


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
        source = resolve_source(path_or_id)
        device = torch.device(device) if device is not None else process_state().device
        dtype = resolve_dtype(dtype, device)
        options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if revision is not None:
            options["revision"] = revision
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **options)
            model = AutoModel.from_pretrained(source, dtype=dtype, **options)
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
    def __call__(self, batch: Batch, progress: Progress | None = None) -> dict[str, torch.Tensor]:
        texts = self.template.render(self.schema, batch)
        if not texts:
            return {name: torch.zeros(0) for name in self.outputs}
        cosines = (self.embed(texts) @ self.reference_embeddings().T).clamp(-1.0, 1.0).cpu()
        if progress is not None:
            progress(len(texts))
        return {name: cosines[:, j].contiguous() for j, name in enumerate(self.outputs)}

    def describe(self) -> dict[str, Any]:
        if self._tokenizer_digest is None:
            self._tokenizer_digest = tokenizer_digest(self.tokenizer)
        return {
            "teacher": "encoder",
            "model": self.name_or_path,
            "model_config": hash_json(self.model.config.to_json_string(use_diff=True)),
            "tokenizer": {"digest": self._tokenizer_digest, "max_length": self.tokenizer.model_max_length},
            "template": self.template.text,
            "references": dict(self.references),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "pooling": "mean",
        }

    def weights_digest(self) -> str:
        if self._weights_digest is None:
            self._weights_digest = model_weights_digest(self.name_or_path, self.model)
        return self._weights_digest
