"""The `kandistill` command: train from a cache, inspect, help, and exit codes."""

import importlib
import json
import subprocess
import sys

import pytest
import torch

from kandistill.pipelines.cli import BAD_INPUT, build_parser, main


def test_train_from_a_cache_then_inspect(tmp_path, capsys):
    from kandistill.distill.targets.cache import generate_targets, sample_inputs
    from kandistill.teachers.mlp import MLP, MLPTeacher
    from kandistill.teachers.schema import FeatureSchema, NumericFeature

    torch.manual_seed(0)
    schema = FeatureSchema((NumericFeature("a", -1, 1), NumericFeature("b", -1, 1)))
    teacher = MLPTeacher(MLP([2, 8, 1], "tanh"), schema, ["y"])
    generate_targets(teacher, sample_inputs(schema, 300, "lhs", seed=0), tmp_path / "cache")
    args = ["train", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--student", "s=y"]
    assert main([*args, "--hidden", "3", "--steps", "20"]) == 0
    assert "s " in capsys.readouterr().out
    fidelity = json.loads((tmp_path / "run" / "fidelity.json").read_text())
    assert fidelity["s"]["r2"] > 0.99
    assert main(["inspect", str(tmp_path / "run" / "students" / "s")]) == 0
    assert "s: ['a', 'b'] -> ['y']" in capsys.readouterr().out
    bad = ["train", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "bad"), "--student", "s=z"]
    assert main(bad) == 2
    assert "no target 'z'" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2


def test_help_names_every_command():
    text = build_parser().format_help()
    for command in ("run", "targets", "train", "extract", "audit", "demo", "inspect"):
        assert command in text


@pytest.mark.parametrize("argv", [["--help"], ["run", "BAD"]])
def test_help_and_a_bad_config_load_no_model_library(argv, tmp_path):
    """``kandistill --help``, and a config with an unknown key (exit 2), import no torch, transformers or datasets."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: {kind: feynman_mlp, colour: red}\nstudents: [{name: s, targets: [t]}]\n")
    argv = [str(bad) if a == "BAD" else a for a in argv]
    heavy = "{'torch', 'transformers', 'datasets', 'accelerate'}"
    code = ("import json, sys\nfrom kandistill.pipelines.cli import main\ntry:\n    code = main(%r)\n"
            "except SystemExit as exit:\n    code = exit.code\n"
            f"print(json.dumps([code, sorted({heavy} & set(sys.modules))]))") % argv  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == [0 if argv == ["--help"] else 2, []]
    assert "usage: kandistill" in done.stdout if argv == ["--help"] else "teacher.colour" in done.stderr


def test_every_bad_input_error_is_where_the_cli_looks_for_it():
    for module, name in BAD_INPUT.items():
        assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)
