"""`CausalLMTeacher`: a causal LM answering a sub-task (a prompt template and a label set).

Each row of inputs fills the template into a prompt (with `kandistill.teachers.template.Templates`, the paraphrase
that the row's ``template`` feature names); with ``chat=True`` the prompt becomes a user turn of the
tokenizer's chat template followed by its generation prompt (the assistant's prefix), as instruct models
expect. The teacher reads the next-token distribution at the answer position (the prompt's last token,
right after the assistant prefix in chat) and returns, per label, the log-probability renormalised over
the label set (``logprob[LABEL]``) and the raw logit of the label's first token (``logit[LABEL]``; of its
first form). A label may have several surface forms (``{"yes": [" yes", " Yes", "Yes"]}``): its
probability is the sum over its forms, ``logsumexp`` of their log-probabilities. A form of several
tokens scores the sum of its tokens' log-probabilities (one extra teacher-forced forward per such
form). Optional `kandistill.teachers.taps` read internal heads and neurons; optional ``top_k`` keeps the full
next-token distribution compressed to its top k log-probabilities, their token ids and the tail's mass.

``from_pretrained`` takes a model folder, a Hub id or a ``.gguf`` file (dequantised once into a cached
folder by `kandistill.teachers.gguf`; its hash, package and quantisation are part of the description).

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

from kandistill.teachers.base import Progress, Teacher, TeacherError, process_state
from kandistill.teachers.gguf import GgufSource, dequantised_folder, is_gguf
from kandistill.teachers.hashing import hash_json
from kandistill.teachers.loading import model_weights_digest, resolve_dtype, resolve_source, tokenizer_digest
from kandistill.teachers.schema import Batch, FeatureSchema
from kandistill.teachers.taps import LlamaParts, TapRecorder, parse_taps
from kandistill.teachers.template import Template, Templates, as_template

Labels = Mapping[str, str | Sequence[str]]  # label name -> its word, or its surface forms
MAX_FORMS = 50

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
        template: str | Template | Templates | Mapping[str, str] | Sequence[str],
        labels: Labels,
        *,
        taps: Sequence[str] = (),
        top_k: int | None = None,
        batch_size: int = 16,
        name_or_path: str = "",
        revision: str | None = None,
        chat: bool = False,
        source: GgufSource | None = None,
    ) -> None:
        """``template``: one template, or paraphrases (`Templates`, a list or ``{name: text}``), in which case the
        schema gains the categorical feature ``template`` unless it has it. ``source``: where the weights came
        from when they were dequantised from a GGUF file (recorded in `describe`)."""
        self.model, self.tokenizer = model.eval(), tokenizer
        self.template = as_template(template)
        self.schema = self.template.extend(schema) if isinstance(self.template, Templates) else schema
        self.template.check(self.schema)
        self.labels = dict(labels)
        self.batch_size, self.name_or_path, self.revision = batch_size, name_or_path, revision
        self.chat, self.source = chat, source
        if chat and not getattr(tokenizer, "chat_template", None):
            raise TeacherError(f"chat: the tokenizer of {name_or_path or 'this model'} has no chat template")
        self.label_forms = self._encode_labels()
        self.label_ids = {name: forms[0] for name, forms in self.label_forms.items()}  # each label's first form
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        self.tap_names = list(taps)
        self.taps = parse_taps(self.tap_names, LlamaParts.of(model), list(self.labels)) if taps else []
        if top_k is not None and not 0 < top_k <= model.config.vocab_size:
            raise TeacherError(f"top_k: expected 1..{model.config.vocab_size}, got {top_k}")
        self.top_k = top_k
        self._weights_digest: str | None = None

    def _encode_labels(self) -> dict[str, list[list[int]]]:
        """Each label's forms as token ids; a form that two labels share, or two forms with the same tokens, would
        count one answer twice, so they are errors."""
        if len(self.labels) < 2:
            raise TeacherError(f"labels: expected at least two labels, got {self.labels}")
        encoded: dict[str, list[list[int]]] = {}
        owner: dict[tuple[int, ...], str] = {}
        unknown = self.tokenizer.unk_token_id
        for name, words in self.labels.items():
            if not name or any(c in name for c in "[]-*"):
                raise TeacherError(f"labels: name {name!r} must be non-empty without '[', ']', '-' or '*'")
            forms = [words] if isinstance(words, str) else list(words)
            if not 0 < len(forms) <= MAX_FORMS or not all(isinstance(w, str) and w for w in forms):
                raise TeacherError(f"label {name!r}: expected a word or a list of 1 to {MAX_FORMS} non-empty "
                                   f"words, got {str(words)[:80]!r}")  # fmt: skip
            encoded[name] = []
            for word in forms:
                ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
                if not ids or (unknown is not None and unknown in ids):
                    raise TeacherError(f"label {name!r}: the tokenizer cannot encode its verbalizer {word!r} "
                                       f"(got token ids {ids}, unknown token id {unknown})")  # fmt: skip
                if tuple(ids) in owner:
                    raise TeacherError(f"label {name!r}: the form {word!r} has the same tokens {ids} as a form of "
                                       f"label {owner[tuple(ids)]!r}; each answer may count once")  # fmt: skip
                owner[tuple(ids)] = name
                encoded[name].append(list(ids))
        return encoded

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        schema: FeatureSchema,
        template: str | Template | Templates | Mapping[str, str] | Sequence[str],
        labels: Labels,
        *,
        taps: Sequence[str] = (),
        top_k: int | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        batch_size: int = 16,
        chat: bool = False,
        cache_dir: str | Path | None = None,
    ) -> CausalLMTeacher:
        """Load a causal LM from a local folder, a Hub id or a ``.gguf`` file (``trust_remote_code`` is off
        unless asked). A GGUF file is dequantised once into ``cache_dir`` (default:
        `kandistill.teachers.gguf.cache_root`).

        ``dtype`` defaults to bfloat16 on a GPU and float32 on a CPU; ``device`` defaults to this
        process's accelerate device; ``device_map="auto"`` spreads a model larger than one GPU.
        """
        gguf = None
        if is_gguf(path_or_id):
            path_or_id, gguf = dequantised_folder(path_or_id, cache_dir)
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
                   name_or_path=source, revision=revision, chat=chat, source=gguf)  # fmt: skip

    @property
    def outputs(self) -> list[str]:
        names = [f"logprob[{label}]" for label in self.labels] + [f"logit[{label}]" for label in self.labels]
        names += [tap.name for tap in self.taps]
        if self.top_k:
            names += ["next_token.topk_logprobs", "next_token.topk_ids", "next_token.tail_mass"]
        return names

    def prompts(self, batch: Batch) -> list[str]:
        return self.template.render(self.schema, batch)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of prompts; with ``chat``, each prompt as a user turn, then the assistant's prefix."""
        if not self.chat:
            return [list(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
        turns = [[{"role": "user", "content": prompt}] for prompt in prompts]
        ids = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True, return_dict=False)
        return [list(row) for row in ids]

    @torch.no_grad()
    def __call__(self, batch: Batch, progress: Progress | None = None) -> dict[str, torch.Tensor]:
        token_ids = self.encode(self.prompts(batch))
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        parts = []
        for s in range(0, len(order), self.batch_size):
            parts.append(self._score([token_ids[i] for i in order[s : s + self.batch_size]]))
            if progress is not None:
                progress(len(order[s : s + self.batch_size]))
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
        for forms in self.label_forms.values():
            raw.append(logits[:, forms[0][0]])
            scores.append(torch.stack([self._form_logprob(prompts, logprobs, ids) for ids in forms], 1).logsumexp(1))
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

    def _form_logprob(self, prompts: Sequence[Sequence[int]], logprobs: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """The log-probability ``(batch,)`` of one surface form after each prompt: the sum over its tokens."""
        if len(ids) == 1:
            return logprobs[:, ids[0]]
        continued = self._forward([[*p, *ids[:-1]] for p in prompts], keep=len(ids)).log_softmax(-1)
        index = torch.as_tensor(ids, device=continued.device).expand(len(prompts), -1)[..., None]
        return continued.gather(2, index)[..., 0].sum(1)

    def describe(self) -> dict[str, Any]:
        """What decides the answers. Keys for chat, paraphrases and GGUF sources appear only when used, so a
        teacher without them keeps the fingerprint (and the caches) it had before they existed."""
        single = isinstance(self.template, Template)
        label_tokens = {name: self.label_ids[name] if isinstance(words, str) else self.label_forms[name]
                        for name, words in self.labels.items()}  # fmt: skip
        described = {
            "teacher": "causal_lm",
            "model": self.source.label() if self.source else self.name_or_path,
            "revision": self.revision,
            "model_config": hash_json(self.model.config.to_json_string(use_diff=True)),
            "tokenizer": tokenizer_digest(self.tokenizer),
            "template": self.template.text if single else None,
            "labels": self.labels,
            "label_tokens": label_tokens,
            "taps": self.tap_names,
            "top_k": self.top_k,
            "dtype": str(self.model.dtype),
        }
        if not single:
            described["templates"] = self.template.texts
        if self.chat:
            described |= {"chat": True, "chat_template": self.tokenizer.chat_template}
        if self.source:
            described["source"] = self.source.to_dict()
        return described

    def weights_digest(self) -> str:
        if self._weights_digest is None:
            self._weights_digest = model_weights_digest(self.name_or_path, self.model)
        return self._weights_digest
