"""The README's main command: `kandistill demo` trains, saves, reports."""

import json

import torch

from pipelines.cli import main
from pipelines.demo import target
from students import KAN


def test_demo_writes_a_student_a_report_and_a_plot(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "8"]) == 0
    printed = capsys.readouterr().out
    assert "held-out RMSE" in printed and str(tmp_path / "report.md") in printed

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["grids"] == [5, 10, 20] and len(metrics["held_out_rmse"]) == 3
    assert metrics["held_out_r2"] > 0.99
    report = (tmp_path / "report.md").read_text()
    assert f"{metrics['held_out_rmse'][-1]:.2e}" in report and "plots/edges.png" in report
    assert (tmp_path / "plots" / "edges.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    student = KAN.from_pretrained(tmp_path / "students" / "exp_sin")
    x = torch.rand(500, 2, generator=torch.Generator().manual_seed(99)) * 2 - 1
    rmse = (student(x) - target(x)).square().mean().sqrt().item()
    assert abs(rmse - metrics["held_out_rmse"][-1]) < 0.5 * metrics["held_out_rmse"][-1] + 1e-3
    assert student.provenance["target"] == "exp(sin(pi*x) + y**2)"


def test_train_command_distils_a_cache_and_names_bad_targets(tmp_path, capsys):
    from distill.targets import generate_targets, sample_inputs
    from teachers.mlp import MLP, MLPTeacher
    from teachers.schema import FeatureSchema, NumericFeature

    torch.manual_seed(0)
    schema = FeatureSchema((NumericFeature("a", -1, 1), NumericFeature("b", -1, 1)))
    teacher = MLPTeacher(MLP([2, 8, 1], "tanh"), schema, ["y"])
    generate_targets(teacher, sample_inputs(schema, 300, "lhs", seed=0), tmp_path / "cache")
    args = ["train", str(tmp_path / "cache"), str(tmp_path / "run"), "--student", "s=y", "--hidden", "3"]
    assert main([*args, "--steps", "20"]) == 0
    assert "s " in capsys.readouterr().out
    fidelity = json.loads((tmp_path / "run" / "fidelity.json").read_text())
    assert fidelity["s"]["r2"] > 0.99
    assert main(["train", str(tmp_path / "cache"), str(tmp_path / "bad"), "--student", "s=z"]) == 2
    assert "no target 'z'" in capsys.readouterr().err
