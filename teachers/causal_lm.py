"""`CausalLMTeacher`: a causal LM answering a sub-task (a prompt template and a label set).

Each row of inputs fills the template into a prompt; the teacher reads the next-token distribution
at the answer position (the prompt's last token) and returns, per label, the log-probability
renormalised over the label set (``logprob[LABEL]``) and the raw logit of the label's first token
(``logit[LABEL]``). A label of several tokens scores the sum of its tokens' log-probabilities (one
extra teacher-forced forward per such label). Optional `teachers.taps` read internal heads and
neurons; optional ``top_k`` keeps the full next-token distribution compressed to its top k
log-probabilities, their token ids and the tail's mass.

Prompts run in batches sorted by length, left-padded, with position ids that skip the padding, so
a prompt's answer does not depend on its batch (to float rounding).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from teachers.base import Teacher, TeacherError, hash_json, process_state
from teachers.loading import model_weights_digest, resolve_dtype, resolve_source, tokenizer_digest
from teachers.schema import Batch, FeatureSchema
from teachers.taps import LlamaParts, TapRecorder, parse_taps
from teachers.template import Template

logger = logging.getLogger(__name__)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token ids: ``input_ids``, ``attention_mask`` and ``position_ids``, each ``(batch, length)``.

    Position ids count real tokens only, so a padded prompt sees the positions it would see alone.
    """
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq) :] = torch.as_tensor(seq)
            mask[row, length - len(seq) :] = 1
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    return ids, mask, positions


class CausalLMTeacher(Teacher):
    """A causal LM scoring a label set after a templated prompt, with optional taps and top-k."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        schema: FeatureSchema,
        template: str | Template,
        labels: Mapping[str, str],
        *,
        taps: Sequence[str] = (),
        top_k: int | None = None,
        batch_size: int = 16,
        name_or_path: str = "",
        revision: str | None = None,
    ) -> None:
        self.model, self.tokenizer, self.schema = model.eval(), tokenizer, schema
        self.template = template if isinstance(template, Template) else Template(template)
        self.template.check(schema)
        self.labels = dict(labels)
        self.batch_size, self.name_or_path, self.revision = batch_size, name_or_path, revision
        self.label_ids = self._encode_labels()
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        self.tap_names = list(taps)
        self.taps = parse_taps(self.tap_names, LlamaParts.of(model), list(self.labels)) if taps else []
        if top_k is not None and not 0 < top_k <= model.config.vocab_size:
            raise TeacherError(f"top_k: expected 1..{model.config.vocab_size}, got {top_k}")
        self.top_k = top_k
        self._weights_digest: str | None = None

    def _encode_labels(self) -> dict[str, list[int]]:
        if len(self.labels) < 2:
            raise TeacherError(f"labels: expected at least two labels, got {self.labels}")
        encoded = {}
        unknown = self.tokenizer.unk_token_id
        for name, word in self.labels.items():
            if not name or any(c in name for c in "[]-*"):
                raise TeacherError(f"labels: name {name!r} must be non-empty without '[', ']', '-' or '*'")
            ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            if not ids or (unknown is not None and unknown in ids):
                raise TeacherError(f"label {name!r}: the tokenizer cannot encode its verbalizer {word!r} "
                                   f"(got token ids {ids}, unknown token id {unknown})")  # fmt: skip
            encoded[name] = list(ids)
        return encoded

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        schema: FeatureSchema,
        template: str | Template,
        labels: Mapping[str, str],
        *,
        taps: Sequence[str] = (),
        top_k: int | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        batch_size: int = 16,
    ) -> CausalLMTeacher:
        """Load a causal LM from a local folder or a Hub id (``trust_remote_code`` is off unless asked).

        ``dtype`` defaults to bfloat16 on a GPU and float32 on a CPU; ``device`` defaults to this
        process's accelerate device; ``device_map="auto"`` spreads a model larger than one GPU.
        """
        source = resolve_source(path_or_id)
        device = torch.device(device) if device is not None else process_state().device
        dtype = resolve_dtype(dtype, device)
        options: dict[str, Any] = {"trust_remote_code": trust_remote_code, "revision": revision}
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **options)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map,
                                                         use_safetensors=True, **options)  # fmt: skip
        except (OSError, ValueError) as err:
            raise TeacherError(f"cannot load the causal LM {source!r}: {err}") from err
        if device_map is None:
            model.to(device)
        return cls(model, tokenizer, schema, template, labels, taps=taps, top_k=top_k, batch_size=batch_size,
                   name_or_path=source, revision=revision)  # fmt: skip

    @property
    def outputs(self) -> list[str]:
        names = [f"logprob[{label}]" for label in self.labels] + [f"logit[{label}]" for label in self.labels]
        names += [tap.name for tap in self.taps]
        if self.top_k:
            names += ["next_token.topk_logprobs", "next_token.topk_ids", "next_token.tail_mass"]
        return names

    def prompts(self, batch: Batch) -> list[str]:
        return self.template.render(self.schema, batch)

    @torch.no_grad()
    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        token_ids = self.tokenizer(self.prompts(batch), add_special_tokens=True)["input_ids"]
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        parts = [self._score([token_ids[i] for i in order[s : s + self.batch_size]])
                 for s in range(0, len(order), self.batch_size)]  # fmt: skip
        if not parts:
            raise TeacherError("empty batch")
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.as_tensor(order)] = torch.arange(len(order))
        return {name: torch.cat([p[name] for p in parts])[inverse] for name in self.outputs}

    def _forward(self, sequences: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        """Log-softmax of the last ``keep`` positions' logits, ``(batch, keep, vocab)`` float32."""
        ids, mask, positions = (t.to(self.model.device) for t in left_pad(sequences, self.pad_id))
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        return logits.float()

    def _score(self, prompts: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        recorder = TapRecorder(LlamaParts.of(self.model), self.taps, {k: v[0] for k, v in self.label_ids.items()})
        with recorder:
            logits = self._forward(prompts, keep=1)[:, -1]
        tapped = recorder.read() if self.taps else {}
        logprobs = logits.log_softmax(-1)
        scores, raw = [], []
        for ids in self.label_ids.values():
            raw.append(logits[:, ids[0]])
            if len(ids) == 1:
                scores.append(logprobs[:, ids[0]])
            else:
                continued = self._forward([[*p, *ids[:-1]] for p in prompts], keep=len(ids)).log_softmax(-1)
                scores.append(continued.gather(2, torch.as_tensor(ids, device=continued.device).expand(
                    len(prompts), -1)[..., None])[..., 0].sum(1))  # fmt: skip
        label_logprobs = torch.stack(scores, 1)
        label_logprobs = label_logprobs - label_logprobs.logsumexp(1, keepdim=True)
        out = {f"logprob[{label}]": label_logprobs[:, j].cpu() for j, label in enumerate(self.labels)}
        out |= {f"logit[{label}]": raw[j].cpu() for j, label in enumerate(self.labels)}
        out |= tapped
        if self.top_k:
            top = logprobs.topk(self.top_k, dim=-1)
            out["next_token.topk_logprobs"] = top.values.cpu()
            out["next_token.topk_ids"] = top.indices.cpu()
            out["next_token.tail_mass"] = (1 - top.values.exp().sum(-1)).clamp_min(0).cpu()
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "teacher": "causal_lm",
            "model": self.name_or_path,
            "revision": self.revision,
            "model_config": hash_json(self.model.config.to_json_string(use_diff=True)),
            "tokenizer": tokenizer_digest(self.tokenizer),
            "template": self.template.text,
            "labels": self.labels,
            "label_tokens": self.label_ids,
            "taps": self.tap_names,
            "top_k": self.top_k,
            "dtype": str(self.model.dtype),
        }

    def weights_digest(self) -> str:
        if self._weights_digest is None:
            self._weights_digest = model_weights_digest(self.name_or_path, self.model)
        return self._weights_digest
