"""save_pretrained / from_pretrained: exact round trips and clear errors on bad folders."""

import json

import pytest
import safetensors.torch
import torch

from students import KAN
from students.persistence import CONFIG_NAME, WEIGHTS_NAME


def inputs(n: int = 64, d: int = 3) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture
def model() -> KAN:
    """A KAN with every kind of state: moved grid, pruned edge, symbolic edge, refined grid."""
    m = KAN([3, 4, 2], grid=4, seed=1)
    m.update_grid(inputs(), uniform_fraction=0.3)
    m = m.refine(8)
    with torch.no_grad():
        m.layers[1].mask[0, 2, 1] = 0.0
    m.fix_symbolic(0, 1, 3, "sin", affine=(2.0, 0.1, 0.5, -0.2))
    return m


def test_round_trip_is_exact(model, tmp_path):
    model.save_pretrained(tmp_path / "student", provenance={"teacher": "abc123"})
    loaded = KAN.from_pretrained(tmp_path / "student")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(loaded(inputs()), model(inputs()))
    assert loaded.config == model.config and loaded.width == [3, 4, 2] and loaded.config.grid == 8
    assert loaded.provenance["teacher"] == "abc123" and "torch_version" in loaded.provenance
    assert loaded.symbolic_edges() == model.symbolic_edges()
    assert not loaded.layers[0].uniform


def test_ensemble_round_trip(tmp_path):
    ens = KAN([2, 3, 1], ensemble=4, seed=0)
    ens.save_pretrained(tmp_path)
    assert torch.equal(KAN.from_pretrained(tmp_path)(inputs(d=2)), ens(inputs(d=2)))


def test_files_are_config_json_and_safetensors(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["model_type"] == "kan" and config["width"] == [3, 4, 2]
    tensors = safetensors.torch.load_file(tmp_path / WEIGHTS_NAME)
    assert tensors["layers.0.coef"].shape == (1, 3, 11, 4)


def test_missing_files_are_named(model, tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        KAN.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        KAN.from_pretrained(tmp_path)


def test_corrupt_weights_are_named(model, tmp_path):
    model.save_pretrained(tmp_path)
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        KAN.from_pretrained(tmp_path)


def test_config_that_does_not_match_the_weights(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["width"] = [3, 5, 2]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'layers.0.bias' has shape \(1, 4\).*width=\[3, 5, 2\].*implies \(1, 5\)"):
        KAN.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(width="wide"), "width"),
        (lambda c: c.update(depth=3), r"unknown config keys \['depth'\]"),
        (lambda c: c.update(model_type="llama"), "not a KAN config"),
        (lambda c: c.update(symbols=["x", "no_such_fn"]), "no_such_fn"),
    ],
)
def test_bad_config_values_are_named(model, tmp_path, edit, message):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    edit(config)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        KAN.from_pretrained(tmp_path)


def test_nan_weights_are_refused(model, tmp_path):
    model.save_pretrained(tmp_path)
    tensors = safetensors.torch.load_file(tmp_path / WEIGHTS_NAME)
    tensors["layers.1.coef"][0, 0, 0, 0] = float("nan")
    safetensors.torch.save_file(tensors, tmp_path / WEIGHTS_NAME)
    with pytest.raises(ValueError, match=r"'layers.1.coef' holds NaN"):
        KAN.from_pretrained(tmp_path)


def test_a_failed_save_leaves_the_previous_files(model, tmp_path):
    model.save_pretrained(tmp_path)
    before = (tmp_path / WEIGHTS_NAME).read_bytes()
    with pytest.raises(TypeError, match="provenance values must be strings"):
        model.save_pretrained(tmp_path, provenance={"step": 3})
    assert (tmp_path / WEIGHTS_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
