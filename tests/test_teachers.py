"""Teachers: schemas, MLP teachers saved and loaded, and the embedded teachers' planted behaviour."""

import numpy as np
import pytest
import torch

from kandistill.distill.discover.feynman import FeynmanTableError, feynman_teacher
from kandistill.teachers.base import TeacherError
from kandistill.teachers.causal_lm import CausalLMTeacher
from kandistill.teachers.embedded import diabetes_teacher, sample_uniform
from kandistill.teachers.mlp import MLP, MLPTeacher
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature, SchemaError
from kandistill.teachers.tasks import LOAN_LABELS, LOAN_SCHEMA, LOAN_TEMPLATE, LoanRule

SCHEMA = FeatureSchema((NumericFeature("x", -1, 1), NumericFeature("n", 0, 10, integer=True),
                        CategoricalFeature("c", ("a", "b", "c"))))  # fmt: skip


def test_schema_encodes_decodes_and_names_bad_values():
    batch = {"x": [0.5, -1.0], "n": [3, 10], "c": ["c", "a"]}
    x = SCHEMA.encode(batch)
    np.testing.assert_array_equal(x, [[0.5, 3, 2], [-1, 10, 0]])
    assert SCHEMA.decode(x) == batch
    assert FeatureSchema.from_dict(SCHEMA.to_dict()) == SCHEMA
    with pytest.raises(SchemaError, match=r"'x': value 1.5 is outside its range"):
        SCHEMA.encode({**batch, "x": [1.5, 0]})
    with pytest.raises(SchemaError, match=r"'x': value nan"):
        SCHEMA.encode({**batch, "x": [float("nan"), 0]})
    with pytest.raises(SchemaError, match=r"'n': expected an integer, got 2.5"):
        SCHEMA.encode({**batch, "n": [2.5, 1]})
    with pytest.raises(SchemaError, match=r"'c': value 'd' is not one of"):
        SCHEMA.encode({**batch, "c": ["d", "a"]})
    with pytest.raises(SchemaError, match=r"lack features \['c'\]"):
        SCHEMA.encode({"x": [0.0], "n": [1]})
    with pytest.raises(SchemaError, match=r"features\[0\].kind"):
        FeatureSchema.from_dict([{"name": "x", "kind": "text"}])


def test_mlp_teacher_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    teacher = MLPTeacher(MLP([3, 16, 2]), SCHEMA, ["y", "z"])
    batch = {"x": [0.1, -0.7, 0.9], "n": [0, 5, 10], "c": ["a", "b", "c"]}
    teacher.save_pretrained(tmp_path)
    loaded = MLPTeacher.from_pretrained(tmp_path)
    for name in ("y", "z"):
        torch.testing.assert_close(loaded(batch)[name], teacher(batch)[name], atol=0, rtol=0)
    assert loaded.fingerprint() == teacher.fingerprint()
    assert not any(p.suffix in {".bin", ".pt", ".pkl"} for p in tmp_path.iterdir())

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 1)

        def forward(self, x):
            return self.linear(x).tanh()

    custom = MLPTeacher(Custom(), SCHEMA, ["y"])
    custom.save_pretrained(tmp_path / "custom")
    with pytest.raises(TeacherError, match=r"pass module="):
        MLPTeacher.from_pretrained(tmp_path / "custom")
    again = MLPTeacher.from_pretrained(tmp_path / "custom", module=Custom())
    torch.testing.assert_close(again(batch)["y"], custom(batch)["y"])
    with pytest.raises(TeacherError, match=r"nowhere: missing config.json"):
        MLPTeacher.from_pretrained(tmp_path / "nowhere")


def test_embedded_llama_follows_its_planted_rule(loan_llama):
    teacher = CausalLMTeacher.from_pretrained(loan_llama, LOAN_SCHEMA, LOAN_TEMPLATE, LOAN_LABELS, batch_size=256)
    held_out = sample_uniform(LOAN_SCHEMA, 2000, np.random.default_rng(12345))
    out = teacher(held_out)
    log_odds = (out["logprob[yes]"] - out["logprob[no]"]).numpy()
    planted = LoanRule(protected_effect=-1.0).log_odds(held_out)
    agreement = np.mean(np.sign(log_odds) == np.sign(planted))
    assert agreement >= 0.95, agreement
    assert np.corrcoef(log_odds, planted)[0, 1] > 0.98
    assert (loan_llama / "tokenizer.json").is_file() and (loan_llama / "model.safetensors").is_file()


def test_diabetes_and_feynman_teachers_fit_their_data():
    from sklearn.datasets import load_diabetes

    teacher = diabetes_teacher(steps=1500)
    data = load_diabetes()
    batch = {name: data.data[:, j].tolist() for j, name in enumerate(teacher.schema.names)}
    predicted = teacher(batch)["progression"].numpy()
    r2 = 1 - np.mean((predicted - data.target) ** 2) / np.var(data.target)
    assert r2 > 0.5, r2  # a real, noisy data set: a linear model reaches about 0.52

    teacher = feynman_teacher("I.12.1", steps=1500)  # F = mu * N_n
    x = torch.tensor([[1.5, 2.0], [1.0, 3.0], [4.0, 4.5]])
    y = teacher(dict(zip(teacher.schema.names, x.T.tolist(), strict=True)))["I.12.1"]
    torch.testing.assert_close(y, x[:, 0] * x[:, 1], atol=0.05, rtol=0.01)
    with pytest.raises(FeynmanTableError, match=r"no equation 'I.999' among the built-in examples \(I.6.2, I.12"):
        feynman_teacher("I.999")
