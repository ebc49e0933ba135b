"""save_pretrained / from_pretrained: exact round trips and clear errors on bad folders."""

import json
import math
import tempfile
from functools import cache
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kandistill.students import KAN, KANConfig
from kandistill.students.persistence import CONFIG_NAME, MAX_ABS_VALUE, WEIGHTS_NAME, implied_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


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


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**config, **changes}))


def edit_tensors(folder: Path, edit) -> None:
    tensors = safetensors.torch.load_file(folder / WEIGHTS_NAME)
    edit(tensors)
    safetensors.torch.save_file(tensors, folder / WEIGHTS_NAME)


@pytest.fixture
def no_allocation(monkeypatch):
    """Building a model from a file's config fails the test: checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("KAN.from_config called before the file's sizes were checked")

    monkeypatch.setattr(KAN, "from_config", refuse)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": [30000, 30000]}, r"config.json: KAN width: .*30000.*at most 4096"),
        ({"width": [1] * 200_000}, r"config.json: KAN width: 200000 entries"),
        ({"width": [4096, 4096]}, r"config.json: .* at most 50000000 values"),
        ({"grid": 10**9}, r"config.json: KAN grid: 1000000000"),
        ({"k": 10**6}, r"config.json: KAN k: 1000000"),
        ({"ensemble": 10**7}, r"config.json: KAN ensemble: 10000000"),
        ({"width": [3, 5, 2]}, r"'layers.0.bias' has shape \(1, 4\), but .*config.json .* implies \(1, 5\)"),
    ],
)
def test_sizes_are_checked_before_allocating(model, tmp_path, no_allocation, changes, message):
    model.save_pretrained(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        KAN.from_pretrained(tmp_path)


def test_a_student_that_could_not_be_loaded_is_not_saved(tmp_path):
    with pytest.raises(ValueError, match=r"cannot save .*ensemble: 4097; at most 4096"):
        KAN([1, 1], ensemble=4097).save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", [3, True, 2]),
        ("grid", True),
        ("grid", 8.0),
        ("k", "3"),
        ("ensemble", None),
        ("grid_range", "ab"),
        ("grid_range", [float("-inf"), float("inf")]),
        ("grid_range", [0, 1, 2]),
        ("noise_scale", "x"),
        ("base_scale", float("nan")),
        ("seed", True),
        ("seed", 2**70),
        ("compiled_basis", 1),
        ("symbols", [["x"]]),
        ("symbols", ["x", "x"]),
    ],
)
def test_config_fields_of_the_wrong_type_are_named(model, tmp_path, field, value):
    model.save_pretrained(tmp_path)
    edit_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=rf"{CONFIG_NAME}: KAN {field}: expected"):
        KAN.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b" " * (2 << 20) + b"{}", "bytes"),
    ],
)
def test_unreadable_configs_are_named(model, tmp_path, data, message):
    model.save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_bytes(data)
    with pytest.raises(ValueError, match=f"{CONFIG_NAME}.*{message}"):
        KAN.from_pretrained(tmp_path)


def set_item(name: str, index: tuple, value: float):
    def edit(tensors):
        tensors[name][index] = value

    return edit


def replace(name: str, fn):
    def edit(tensors):
        tensors[name] = fn(tensors[name])

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (replace("layers.0.grid", lambda t: t.flip(-1)), r"'layers.0.grid' is not strictly increasing"),
        (set_item("layers.1.grid", (0, 2, 5), 0.0), r"'layers.1.grid' is not strictly increasing"),
        (set_item("layers.1.mask", (0, 0, 0), 1e30), r"'layers.1.mask' holds values other than 0 and 1"),
        (set_item("layers.0.sym_mask", (0, 0, 0), 0.5), r"'layers.0.sym_mask' holds values other than 0 and 1"),
        (set_item("layers.0.coef", (0, 0, 0, 0), 1e30), r"'layers.0.coef' holds values beyond"),
        (set_item("layers.1.scale_base", (0, 0, 0), -1e12), r"'layers.1.scale_base' holds values beyond"),
        (set_item("layers.0.sym_affine", (0, 1, 3, 0), 1e20), r"'layers.0.sym_affine' holds values beyond"),
        (set_item("layers.0.sym_index", (0, 1, 3), 99), r"'layers.0.sym_index' names symbols outside"),
        (replace("layers.0.coef", lambda t: t.to(torch.int32)), r"'layers.0.coef' has dtype int32"),
        (replace("layers.1.scale_spline", lambda t: t.long()), r"'layers.1.scale_spline' has dtype int64"),
        (replace("layers.0.grid", lambda t: t.double()), r"'layers.0.grid' has dtype float64.*float32"),
        (replace("layers.0.sym_index", lambda t: t.float()), r"'layers.0.sym_index' has dtype float32.*int64"),
        (replace("layers.1.mask", lambda t: t.bool()), r"'layers.1.mask' has dtype bool"),
    ],
)
def test_tampered_tensors_are_refused(model, tmp_path, edit, message):
    model.save_pretrained(tmp_path)
    edit_tensors(tmp_path, edit)
    with pytest.raises(ValueError, match=WEIGHTS_NAME + ".*" + message):
        KAN.from_pretrained(tmp_path)


def test_every_legitimate_student_still_loads(tmp_path):
    """fp64, an ensemble, moved and refined grids, pruned nodes and edges, symbolic edges."""
    x = inputs(200, 3).double()
    ens = KAN([3, 5, 2], grid=4, k=2, ensemble=3, seed=4).double()
    ens.update_grid(x, uniform_fraction=0.02, margin=0.1)
    ens = ens.refine(9).prune(x, edge_threshold=0.05, node_threshold=0.02)
    ens.fix_symbolic(0, 2, 0, "exp", affine=(0.5, -0.1, 2.0, 1.0), member=1)
    ens.fix_symbolic(1, 0, 1, "1/x^2")
    ens.save_pretrained(tmp_path)
    loaded = KAN.from_pretrained(tmp_path)
    assert loaded.config == ens.config and next(loaded.parameters()).dtype == torch.float64
    assert torch.equal(loaded(x), ens(x))


@pytest.mark.parametrize(
    "config", [KANConfig([3, 4, 2]), KANConfig([1, 1], grid=1, k=1), KANConfig([2, 7, 3, 1], 9, 4, 5)]
)
def test_implied_shapes_are_the_models(config):
    shapes = {name: tuple(t.shape) for name, t in KAN.from_config(config).state_dict().items()}
    assert implied_shapes(config) == shapes


def test_a_loaded_student_predicts_on_an_empty_batch(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert KAN.from_pretrained(tmp_path)(torch.zeros(0, 3)).shape == (0, 2)
    ens = KAN([3, 4, 2], ensemble=2, seed=0)
    assert ens(torch.zeros(0, 3)).shape == ens(torch.zeros(2, 0, 3)).shape == (2, 0, 2)


# --- fuzzing saved students --------------------------------------------------------------------------------


@cache
def fuzz_base() -> tuple[dict, dict[str, torch.Tensor]]:
    """A small student with every kind of state, as its config and tensors."""
    m = KAN([3, 4, 2], grid=4, seed=1)
    m.update_grid(inputs(), uniform_fraction=0.3)
    with torch.no_grad():
        m.layers[1].mask[0, 2, 1] = 0.0
    m.fix_symbolic(0, 1, 3, "sin", affine=(2.0, 0.1, 0.5, -0.2))
    with tempfile.TemporaryDirectory() as folder:
        m.save_pretrained(folder)
        config = json.loads((Path(folder) / CONFIG_NAME).read_text())
        return config, safetensors.torch.load_file(Path(folder) / WEIGHTS_NAME)


DELETE = object()
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
)
LONG_LISTS = st.builds(lambda n, v: [v] * n, st.integers(0, 300_000), st.sampled_from([1, 2, 3, 4096, 30000]))
SIZES = st.sampled_from([0, -1, 2, 3, 4, 8, 4096, 30000, 10**9, 2**63, [3, 4, 2], [3, 30000, 2], [30000, 30000]])
CONFIG_EDITS = st.tuples(
    st.sampled_from([*KANConfig.__dataclass_fields__, "model_type", "extra"]),
    JSON_VALUES | LONG_LISTS | SIZES | st.just(DELETE),
).filter(lambda edit: edit != ("compiled_basis", True))  # a compiled basis takes seconds to build, by design
EXTREMES = [math.nan, math.inf, -math.inf, 1e30, -1e9, 1e6, 2.0, 1.0, 0.5, 0.0, -1.0]
VALUES = st.sampled_from(EXTREMES) | st.floats(-10, 10)
DTYPES = [torch.int32, torch.int64, torch.uint8, torch.bool, torch.float16, torch.bfloat16, torch.float64]


@st.composite
def tensor_edits(draw):
    """One change to the tensors: a value, a flip, a dtype, a shape, a missing or extra tensor, a truncated file."""
    kinds = ["value", "value", "flip", "dtype", "shape", "drop", "extra", "all_float64", "truncate"]
    kind, name = draw(st.sampled_from(kinds)), draw(st.sampled_from(sorted(fuzz_base()[1])))
    if kind == "truncate":
        return kind, name, draw(st.integers(0, 4000))
    tensor = fuzz_base()[1][name].clone()
    if kind == "value":
        index = draw(st.integers(0, tensor.numel() - 1))
        value = draw(st.integers(-5, 40) if name.endswith("sym_index") else VALUES)
        tensor.view(-1)[index] = value
    elif kind == "flip":
        tensor = tensor.flip(-1)
    elif kind == "dtype":
        tensor = tensor.to(draw(st.sampled_from(DTYPES)))
    elif kind == "shape":
        tensor = draw(st.sampled_from([tensor.reshape(-1), tensor[..., :-1], tensor.unsqueeze(0), tensor[:0]]))
    return kind, name, tensor


def write_student(folder: Path, config, tensors: dict[str, torch.Tensor]) -> None:
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    safetensors.torch.save_file({n: t.contiguous() for n, t in tensors.items()}, folder / WEIGHTS_NAME)


@settings(
    max_examples=200, deadline=20_000, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(config_edit=st.none() | CONFIG_EDITS, tensor_edit=st.none() | tensor_edits())
def test_fuzzed_students_load_correctly_or_are_refused(config_edit, tensor_edit):
    config, tensors = fuzz_base()
    config, tensors = dict(config), dict(tensors)
    if config_edit is not None:
        key, value = config_edit
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    if tensor_edit is not None:
        kind, name, tensor = tensor_edit
        if kind == "drop":
            del tensors[name]
        elif kind == "extra":
            tensors["layers.9.coef"] = tensor
        elif kind == "all_float64":
            tensors = {n: t.double() if t.is_floating_point() else t for n, t in tensors.items()}
        elif kind != "truncate":
            tensors[name] = tensor
    with tempfile.TemporaryDirectory() as folder:
        write_student(Path(folder), config, tensors)
        if tensor_edit is not None and tensor_edit[0] == "truncate":
            weights = Path(folder) / WEIGHTS_NAME
            weights.write_bytes(weights.read_bytes()[: tensor_edit[2]])
        try:
            loaded = KAN.from_pretrained(folder)
        except (ValueError, FileNotFoundError) as err:
            assert str(err)
            event("refused")
            return
    event("loaded")
    x = inputs(32, 3).to(next(loaded.parameters()).dtype)
    y = loaded(x)
    assert y.shape == (32, 2) and torch.isfinite(y).all()
    for t in loaded.state_dict().values():
        assert not t.is_floating_point() or t.abs().max() <= MAX_ABS_VALUE
