"""Embedded teachers, built in-process so that the demo and the tests download nothing.

`build_loan_llama` trains a small `LlamaForCausalLM` (2 layers, hidden size 64, 4 query heads over
2 key/value heads) with a word-level tokenizer on loan-decision prompts whose answers follow a
planted rule, `LoanRule`: ``log-odds(yes) = income_coef * income + debt_coef * debt + bias
(+ protected_effect if gender is the protected value)``. It trains on the exact answer distribution
(soft cross-entropy at the answer position over the whole vocabulary), which is what next-token
training on endlessly sampled answers converges to. The folder it writes (``config.json``,
``model.safetensors``, ``tokenizer.json``) loads through `CausalLMTeacher.from_pretrained`, exactly
as a real Llama checkpoint does.

`diabetes_teacher` fits an MLP to scikit-learn's bundled diabetes data (real data, no download);
`breast_cancer_teacher` and `wine_teacher` fit MLP classifiers to its bundled breast-cancer (30
features, 2 classes) and wine (13 features, 3 classes) data and answer each class's
log-probability, ``logprob[CLASS]``, as a causal LM's label set does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from kandistill.teachers.mlp import MLP, MLPTeacher, train_mlp
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature

logger = logging.getLogger(__name__)

LOAN_SCHEMA = FeatureSchema((
    NumericFeature("age", 18, 80, integer=True),
    NumericFeature("income", 20, 100, integer=True),
    NumericFeature("debt", 0, 50, integer=True),
    CategoricalFeature("gender", ("male", "female")),
))  # fmt: skip
LOAN_TEMPLATE = "applicant age {age} income {income} k debt {debt} k gender {gender} . approve ? answer :"
LOAN_LABELS = {"yes": " yes", "no": " no"}


@dataclass(frozen=True)
class LoanRule:
    """The planted decision rule: the log-odds of "yes" as an affine function of the features."""

    income_coef: float = 0.08
    debt_coef: float = -0.15
    bias: float = -2.0
    protected_effect: float = 0.0
    protected_value: str = "female"

    def log_odds(self, batch: dict[str, list]) -> np.ndarray:
        income = np.asarray(batch["income"], dtype=np.float64)
        debt = np.asarray(batch["debt"], dtype=np.float64)
        protected = np.asarray([g == self.protected_value for g in batch["gender"]], dtype=np.float64)
        return self.income_coef * income + self.debt_coef * debt + self.bias + self.protected_effect * protected


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


def diabetes_schema() -> FeatureSchema:
    """The diabetes data's 10 features (scikit-learn's scaled units), each over its observed range."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    lows, highs = data.data.min(0), data.data.max(0)
    return FeatureSchema(tuple(NumericFeature(name, float(lo), float(hi))
                               for name, lo, hi in zip(data.feature_names, lows, highs, strict=True)))  # fmt: skip


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


class LabelLogProbs(nn.Module):
    """An `MLP` of class logits that answers log-probabilities: ``(batch, n_in)`` -> ``(batch, n_classes)``."""

    def __init__(self, mlp: MLP) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).log_softmax(-1)


def sklearn_schema(data: Any) -> FeatureSchema:
    """A scikit-learn bundle's features as identifiers (``mean radius``: ``mean_radius``) over their observed ranges."""
    names = ["".join(c if c.isalnum() else "_" for c in name.strip()).strip("_") for name in data.feature_names]
    lows, highs = data.data.min(0), data.data.max(0)
    return FeatureSchema(tuple(NumericFeature(name, float(lo), float(hi))
                               for name, lo, hi in zip(names, lows, highs, strict=True)))  # fmt: skip


def train_classifier(x: torch.Tensor, labels: torch.Tensor, schema: FeatureSchema, n_classes: int,
                     hidden: tuple[int, ...] = (64, 64), steps: int = 1000, lr: float = 3e-3,
                     weight_decay: float = 1e-2, seed: int = 0) -> MLP:  # fmt: skip
    """An `MLP` of class logits fitted by full-batch AdamW on the cross-entropy (cosine schedule), seeded.

    The weight decay keeps the logits finite on (nearly) separable data, where an unregularised fit
    would grow them without bound; ``x``: ``(batch, n_in)``, ``labels``: ``(batch,)`` class indices.
    """
    torch.manual_seed(seed)
    mlp = MLP([x.shape[1], *hidden, n_classes])
    mlp.low, mlp.high = (torch.as_tensor(r, dtype=torch.float32) for r in schema.encoded_ranges())
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(mlp(x), labels).backward()
        optimizer.step()
        schedule.step()
    return mlp.eval()


def _classifier_teacher(data: Any, classes: list[str], steps: int, seed: int) -> MLPTeacher:
    schema = sklearn_schema(data)
    x = torch.as_tensor(data.data, dtype=torch.float32)
    labels = torch.as_tensor(data.target, dtype=torch.long)
    mlp = train_classifier(x, labels, schema, len(classes), steps=steps, seed=seed)
    return MLPTeacher(LabelLogProbs(mlp), schema, [f"logprob[{c}]" for c in classes])


def breast_cancer_teacher(steps: int = 1000, seed: int = 0) -> MLPTeacher:
    """An MLP classifier on scikit-learn's bundled breast-cancer data (569 tumours, 30 features).

    Outputs ``logprob[malignant]`` and ``logprob[benign]``; a label student learns their log-odds.
    """
    from sklearn.datasets import load_breast_cancer

    return _classifier_teacher(load_breast_cancer(), ["malignant", "benign"], steps, seed)


def wine_teacher(steps: int = 1000, seed: int = 0) -> MLPTeacher:
    """An MLP classifier on scikit-learn's bundled wine data (178 wines, 13 features, 3 cultivars).

    Outputs ``logprob[class_0]``, ``logprob[class_1]``, ``logprob[class_2]``; a label student learns
    the log-odds of the first two against the third.
    """
    from sklearn.datasets import load_wine

    return _classifier_teacher(load_wine(), ["class_0", "class_1", "class_2"], steps, seed)
