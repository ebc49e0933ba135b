"""CausalLMTeacher on a tiny Llama saved and loaded like a real one: exact label scores, taps, errors."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kandistill.teachers.base import TeacherError
from kandistill.teachers.causal_lm import CausalLMTeacher
from kandistill.teachers.embedded import word_tokenizer
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature, SchemaError

JOBS = ("clerk", "senior software engineer", "retired teacher of classical music")
SCHEMA = FeatureSchema((NumericFeature("income", 0, 20, integer=True), CategoricalFeature("job", JOBS)))
TEMPLATE = "income {income} job {job} . approve ? answer :"
LABELS = {"yes": " yes", "no": " no", "unsure": " not sure"}  # the last label has two tokens
BATCH = {"income": [3, 17, 0, 9, 12, 20, 5, 8, 1, 14, 6, 19, 2], "job": [JOBS[i % 3] for i in range(13)]}
TAPS = ["layers.*.attn.heads.*.out", "layers.*.attn.heads.*.dla[yes-no]", "layers.1.mlp.neurons.3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A random 2-layer Llama (4 query heads over 2 key/value heads), weights large enough to matter."""
    torch.manual_seed(0)
    tokenizer = word_tokenizer(TEMPLATE, SCHEMA, ["yes", "no", "not", "sure"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load(folder, **options) -> CausalLMTeacher:
    return CausalLMTeacher.from_pretrained(folder, SCHEMA, TEMPLATE, LABELS, **options)


def by_hand(teacher: CausalLMTeacher, prompt: str) -> torch.Tensor:
    """One prompt, no padding, one teacher-forced forward per label: renormalised label log-probs."""
    ids = teacher.tokenizer(prompt)["input_ids"]
    scores = []
    for word in LABELS.values():
        label = teacher.tokenizer(word, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = teacher.model(torch.tensor([ids + label[:-1]])).logits[0].log_softmax(-1)
        scores.append(sum(logprobs[len(ids) - 1 + j, t] for j, t in enumerate(label)))
    scores = torch.stack(scores)
    return scores - scores.logsumexp(0)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_label_logprobs_equal_a_hand_written_forward(folder, batch_size):
    teacher = load(folder, batch_size=batch_size)
    out = teacher(BATCH)
    expected = torch.stack([by_hand(teacher, p) for p in teacher.prompts(BATCH)])
    got = torch.stack([out[f"logprob[{label}]"] for label in LABELS], 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert expected.std(0).min() > 0.05, "the check needs label scores that vary between prompts"
    lengths = {len(teacher.tokenizer(p)["input_ids"]) for p in teacher.prompts(BATCH)}
    assert len(lengths) == 3, "prompts of several lengths, so batches of 7 are padded"


def test_taps_decompose_the_attention_output_and_the_logit_difference(folder):
    teacher = load(folder, taps=TAPS)
    parts = {}
    decoder = teacher.model.get_decoder()

    def keep(name, take_input):
        def hook(module, args, output):
            parts[name] = (args[0] if take_input else output)[0, -1].float()

        return hook

    handles = [decoder.embed_tokens.register_forward_hook(keep("embed", False))]
    for i, layer in enumerate(decoder.layers):
        handles += [layer.self_attn.o_proj.register_forward_hook(keep(f"attn{i}", False)),
                    layer.mlp.register_forward_hook(keep(f"mlp{i}", False)),
                    layer.mlp.down_proj.register_forward_hook(keep(f"neurons{i}", True))]  # fmt: skip
    row = {"income": [9], "job": [JOBS[2]]}
    out = teacher(row)
    with torch.no_grad():
        teacher.model(torch.tensor([teacher.tokenizer(teacher.prompts(row)[0])["input_ids"]]))
    for handle in handles:
        handle.remove()

    n_heads, head_dim = 4, 8  # query heads, not the 2 key/value heads
    assert sum(name.endswith(".out") for name in teacher.outputs) == 2 * n_heads
    for i, layer in enumerate(decoder.layers):
        w_o = layer.self_attn.o_proj.weight
        writes = [out[f"layers.{i}.attn.heads.{h}.out"][0] @ w_o[:, h * head_dim : (h + 1) * head_dim].T
                  for h in range(n_heads)]  # fmt: skip
        torch.testing.assert_close(sum(writes), parts[f"attn{i}"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["layers.1.mlp.neurons.3"][0], parts["neurons1"][3], atol=1e-6, rtol=0)

    # The rest of the residual stream: embeddings and MLP outputs, through the same linearised norm.
    resid = parts["embed"] + sum(parts[f"attn{i}"] + parts[f"mlp{i}"] for i in range(2))
    norm = decoder.norm
    scale = norm.weight * torch.rsqrt(resid.pow(2).mean() + norm.variance_epsilon)
    yes, no = (teacher.label_ids[k][0] for k in ("yes", "no"))
    unembed = teacher.model.get_output_embeddings().weight
    rest = ((parts["embed"] + parts["mlp0"] + parts["mlp1"]) * scale) @ (unembed[yes] - unembed[no])
    heads = sum(out[f"layers.{i}.attn.heads.{h}.dla[yes-no]"][0] for i in range(2) for h in range(n_heads))
    difference = out["logit[yes]"][0] - out["logit[no]"][0]
    # float32 sums of terms of size ~1: rounding is ~1e-6 per term; 1e-4 leaves room, a wrong slice misses by ~1.
    assert abs(difference.item()) > 0.1
    torch.testing.assert_close(heads + rest, difference, atol=1e-4, rtol=0)


def test_top_k_keeps_the_head_of_the_distribution_and_the_tail_mass(folder):
    teacher = load(folder, top_k=5)
    out = teacher(BATCH)
    ids = teacher.tokenizer(teacher.prompts(BATCH)[0])["input_ids"]
    with torch.no_grad():
        full = teacher.model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    top = full.topk(5)
    torch.testing.assert_close(out["next_token.topk_logprobs"][0], top.values, atol=1e-5, rtol=0)
    assert out["next_token.topk_ids"][0].tolist() == top.indices.tolist()
    torch.testing.assert_close(out["next_token.tail_mass"][0], 1 - top.values.exp().sum(), atol=1e-5, rtol=0)


def test_fingerprint_names_weights_template_labels_and_taps(folder, tmp_path):
    base = load(folder).fingerprint()
    assert load(folder).fingerprint() == base
    assert CausalLMTeacher.from_pretrained(folder, SCHEMA, TEMPLATE + " ?", LABELS).fingerprint() != base
    assert CausalLMTeacher.from_pretrained(folder, SCHEMA, TEMPLATE, {"yes": " yes", "no": " no"}).fingerprint() != base
    assert load(folder, taps=["layers.0.mlp.neurons.1"]).fingerprint() != base
    teacher = load(folder)
    with torch.no_grad():
        teacher.model.lm_head.weight[0, 0] += 1
    teacher.model.save_pretrained(tmp_path)
    teacher.tokenizer.save_pretrained(tmp_path)
    assert load(tmp_path).fingerprint() != base


def test_bad_input_is_named(folder, tmp_path):
    with pytest.raises(TeacherError, match=r"slot \{salary\} has no feature"):
        CausalLMTeacher.from_pretrained(folder, SCHEMA, "salary {salary} answer :", LABELS)
    with pytest.raises(TeacherError, match=r"label 'maybe'.*' perhaps'"):
        CausalLMTeacher.from_pretrained(folder, SCHEMA, TEMPLATE, {"yes": " yes", "maybe": " perhaps"})
    with pytest.raises(SchemaError, match=r"'income': value 21.0 is outside"):
        load(folder)({"income": [21], "job": ["clerk"]})
    with pytest.raises(SchemaError, match=r"'job': value 'pilot'"):
        load(folder)({"income": [2], "job": ["pilot"]})
    with pytest.raises(TeacherError, match=r"heads.9"):
        load(folder, taps=["layers.0.attn.heads.9.out"])
    with pytest.raises(TeacherError, match=r"expected layers"):
        load(folder, taps=["layers.0.attention"])
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(TeacherError, match=f"model folder {tmp_path} has no weights"):
        load(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(TeacherError, match=r"never pickles"):
        load(tmp_path)
    with pytest.raises(TeacherError, match=r"does not exist"):
        load(tmp_path / "missing")


FORMS = {"yes": [" yes", " sure"], "no": [" no", " not sure"]}  # " not sure" has two tokens: a teacher-forced forward


def test_surface_forms_sum_their_probabilities(folder):
    """A label's probability is the sum over its forms (logsumexp of their log-probabilities), renormalised."""
    teacher = CausalLMTeacher.from_pretrained(folder, SCHEMA, TEMPLATE, FORMS, batch_size=5)
    out = teacher(BATCH)
    expected = []
    for prompt in teacher.prompts(BATCH):
        ids = teacher.tokenizer(prompt)["input_ids"]
        labels = []
        for forms in FORMS.values():
            per_form = []
            for word in forms:
                form = teacher.tokenizer(word, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    logprobs = teacher.model(torch.tensor([ids + form[:-1]])).logits[0].log_softmax(-1)
                per_form.append(sum(logprobs[len(ids) - 1 + j, t] for j, t in enumerate(form)))
            labels.append(torch.stack(per_form).exp().sum().log())
        labels = torch.stack(labels)
        expected.append(labels - labels.logsumexp(0))
    got = torch.stack([out["logprob[yes]"], out["logprob[no]"]], 1)
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)
    assert teacher.label_forms["no"][1] == teacher.tokenizer(" not sure", add_special_tokens=False)["input_ids"]
    single = load(folder)(BATCH)["logit[yes]"]  # logit[LABEL] is the first form's first token's logit
    torch.testing.assert_close(out["logit[yes]"], single, atol=1e-5, rtol=0)


def test_paraphrases_add_a_template_feature_and_answer_as_each_wording(folder):
    """Each row is asked in the paraphrase its ``template`` value names: the same answers as a teacher of that
    wording alone."""
    wordings = {"plain": TEMPLATE, "short": "job {job} income {income} . approve ? answer :"}
    teacher = CausalLMTeacher.from_pretrained(folder, SCHEMA, wordings, LABELS, batch_size=4)
    assert teacher.schema.names == ["income", "job", "template"]
    assert teacher.schema["template"].values == ("plain", "short")
    batch = {**BATCH, "template": ["plain", "short"] * 6 + ["short"]}
    out = teacher(batch)
    for name, text in wordings.items():
        rows = [i for i, t in enumerate(batch["template"]) if t == name]
        alone = CausalLMTeacher.from_pretrained(folder, SCHEMA, text, LABELS)({k: [BATCH[k][i] for i in rows]
                                                                               for k in BATCH})  # fmt: skip
        torch.testing.assert_close(out["logprob[yes]"][rows], alone["logprob[yes]"], atol=1e-5, rtol=0)
    assert teacher.prompts(batch)[1] == wordings["short"].format(income=17, job=JOBS[1])
    assert teacher.describe()["templates"] == wordings and teacher.describe()["template"] is None
    listed = CausalLMTeacher.from_pretrained(folder, SCHEMA, list(wordings.values()), LABELS)
    assert listed.schema["template"].values == ("t1", "t2")
    assert listed.fingerprint() != teacher.fingerprint()  # the names are part of the inputs


def test_paraphrase_surface_form_and_chat_errors_are_named(folder):
    with pytest.raises(TeacherError, match=r"templates: expected 2 to 100 paraphrases"):
        CausalLMTeacher.from_pretrained(folder, SCHEMA, [TEMPLATE], LABELS)
    with pytest.raises(TeacherError, match=r"templates.b: template slot \{salary\}"):
        CausalLMTeacher.from_pretrained(folder, SCHEMA, {"a": TEMPLATE, "b": "salary {salary} :"}, LABELS)
    taken = FeatureSchema((*SCHEMA.features, CategoricalFeature("template", ("x", "y"))))
    with pytest.raises(TeacherError, match=r"'template' is reserved"):
        CausalLMTeacher.from_pretrained(folder, taken, {"a": TEMPLATE, "b": TEMPLATE + " ?"}, LABELS)
    with pytest.raises(TeacherError, match=r"label 'no': the form ' yes' has the same tokens"):
        CausalLMTeacher.from_pretrained(folder, SCHEMA, TEMPLATE, {"yes": [" yes"], "no": [" no", " yes"]})
    with pytest.raises(TeacherError, match=r"label 'no': expected a word or a list"):
        CausalLMTeacher.from_pretrained(folder, SCHEMA, TEMPLATE, {"yes": " yes", "no": []})
    with pytest.raises(TeacherError, match=r"has no chat template"):
        load(folder, chat=True)
