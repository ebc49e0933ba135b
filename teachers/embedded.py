"""Embedded teachers, built in-process so that the demo and the tests download nothing.

`build_loan_llama` trains a small `LlamaForCausalLM` (2 layers, hidden size 64, 4 query heads over
2 key/value heads) with a word-level tokenizer on loan-decision prompts whose answers follow a
planted rule, `LoanRule`: ``log-odds(yes) = income_coef * income + debt_coef * debt + bias
(+ protected_effect if gender is the protected value)``. It trains on the exact answer distribution
(soft cross-entropy at the answer position over the whole vocabulary), which is what next-token
training on endlessly sampled answers converges to. The folder it writes (``config.json``,
``model.safetensors``, ``tokenizer.json``) loads through `CausalLMTeacher.from_pretrained`, exactly
as a real Llama checkpoint does.

`diabetes_teacher` fits an MLP to scikit-learn's bundled diabetes data (real data, no download): the
``diabetes_mlp`` teacher of run configs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kandistill.teachers.mlp import MLPTeacher, train_mlp
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema
from kandistill.teachers.tasks import LOAN_SCHEMA, LOAN_TEMPLATE, LoanRule, diabetes_schema

logger = logging.getLogger(__name__)


def sample_uniform(schema: FeatureSchema, n: int, generator: np.random.Generator) -> dict[str, list]:
    """``n`` rows drawn uniformly over the schema (integers and categories included)."""
    x = np.empty((n, len(schema)))
    for j, feature in enumerate(schema.features):
        if isinstance(feature, CategoricalFeature):
            x[:, j] = generator.integers(0, len(feature.values), n)
        elif feature.integer:
            x[:, j] = generator.integers(int(feature.low), int(feature.high) + 1, n)
        else:
            x[:, j] = generator.uniform(feature.low, feature.high, n)
    return schema.decode(x)


def word_tokenizer(template: str, schema: FeatureSchema, answers: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (whitespace split) whose vocabulary covers the template and the features."""
    words = template.replace("{", " ").replace("}", " ").split()
    for feature in schema.features:
        if isinstance(feature, CategoricalFeature):
            words += list(feature.values)
        else:
            words += [str(v) for v in range(int(feature.low), int(feature.high) + 1)]
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + words + answers))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")  # fmt: skip


def build_loan_llama(
    folder: str | Path,
    rule: LoanRule | None = None,
    *,
    steps: int = 800,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Train the embedded loan Llama on ``rule`` for ``steps`` steps and save it (model + tokenizer) into
    ``folder``. A step count, never a time budget: the same seed gives the same teacher on any machine."""
    rule = rule or LoanRule()
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    tokenizer = word_tokenizer(LOAN_TEMPLATE, LOAN_SCHEMA, ["yes", "no"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config)
    yes, no = (tokenizer.convert_tokens_to_ids(w) for w in ("yes", "no"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="teacher: training the embedded Llama", unit="step", disable=not progress)
    for step in bar:
        batch = sample_uniform(LOAN_SCHEMA, batch_size, generator)
        prompts = [LOAN_TEMPLATE.format(**{k: batch[k][i] for k in batch}) for i in range(batch_size)]
        ids = torch.as_tensor(tokenizer(prompts)["input_ids"])  # one template: every prompt has the same length
        p_yes = torch.sigmoid(torch.as_tensor(rule.log_odds(batch), dtype=torch.float32))
        logprobs = model(input_ids=ids, logits_to_keep=1).logits[:, -1].log_softmax(-1)
        loss = -(p_yes * logprobs[:, yes] + (1 - p_yes) * logprobs[:, no]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    logger.info("embedded Llama trained in %.1f s (final loss %.4f)", time.perf_counter() - start, loss.item())
    folder = Path(folder)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "planted_rule.json").write_text(json.dumps(asdict(rule), indent=2))
    return folder


def diabetes_teacher(hidden: tuple[int, ...] = (64, 64), steps: int = 3000, seed: int = 0,
                     progress: bool = False) -> MLPTeacher:  # fmt: skip
    """An MLP fitted to scikit-learn's bundled diabetes data (442 patients, 10 features)."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = torch.as_tensor(data.data, dtype=torch.float32)
    y = torch.as_tensor(data.target, dtype=torch.float32)[:, None]
    schema = diabetes_schema()
    return MLPTeacher(train_mlp(x, y, schema, hidden, steps=steps, seed=seed, progress=progress), schema,
                      ["progression"])  # fmt: skip
