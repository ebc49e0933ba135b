"""The `kandistill` command: train from a cache, inspect, help, and exit codes."""

import json
import subprocess
import sys

import torch

from kandistill.pipelines.cli import build_parser, main


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


def test_the_help_loads_no_model_library():
    """``kandistill --help`` imports what it needs to parse arguments, and no torch, transformers or datasets."""
    heavy = "{'torch', 'transformers', 'datasets', 'accelerate', 'sympy'}"
    code = ("import json, sys\nfrom kandistill.pipelines.cli import main\ntry:\n    main(['--help'])\n"
            f"except SystemExit:\n    pass\nprint(json.dumps(sorted({heavy} & set(sys.modules))))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: kandistill" in done.stdout and json.loads(done.stdout.splitlines()[-1]) == []
