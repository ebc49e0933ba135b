"""Students that match their teachers: the training recipe (members, schedule, snapshots, polish) and its choices."""

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kandistill.distill.targets.cache import generate_targets, sample_inputs
from kandistill.distill.train import loop as train_stage
from kandistill.distill.train.config import StudentSpec, TrainConfig, TrainError
from kandistill.distill.train.loop import learning_rate, train_students
from kandistill.students import KAN, smoothness_penalty
from kandistill.students.scaling import scale_inputs
from kandistill.teachers.mlp import MLPTeacher
from kandistill.teachers.schema import FeatureSchema, NumericFeature

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = {"optimizer": "adam", "schedule": "cosine", "refine_grid": None, "grid_uniform_fraction": 1.0,
          "grid_margin": 0.1, "progress": False}  # fmt: skip


class Planted(nn.Module):
    """``x1 * x2 + sin(x3)``: an interaction that no additive model holds. ``(batch, 3)`` -> ``(batch, 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] * x[:, 1] + torch.sin(x[:, 2]))[:, None]


@pytest.fixture(scope="module")
def planted_cache(tmp_path_factory):
    schema = FeatureSchema(tuple(NumericFeature(f"x{i}", -2, 2) for i in (1, 2, 3)))
    teacher = MLPTeacher(Planted(), schema, ["y"])
    return generate_targets(teacher, sample_inputs(schema, 1200, "lhs", seed=0), tmp_path_factory.mktemp("p") / "t")


def test_a_planted_interaction_is_matched_to_r2_099(planted_cache, tmp_path):
    config = TrainConfig(hidden=[8], grid=5, steps=300, members=2, polish_steps=30, **RECIPE)
    result = train_students(planted_cache, [StudentSpec("y", ("y",))], tmp_path / "run", config)
    assert result.fidelity["y"]["r2"] >= 0.99, result.fidelity


def test_the_member_with_the_lowest_held_out_loss_becomes_the_student(planted_cache, tmp_path):
    config = TrainConfig(hidden=[3], grid=3, steps=40, members=3, selection_fraction=0.2, **RECIPE)
    result = train_students(planted_cache, [StudentSpec("y", ("y",))], tmp_path / "run", config)
    record = json.loads((tmp_path / "run" / "students" / "y" / "student.json").read_text())
    losses = record["selection"]["validation_losses"]
    assert len(losses) == 3 and len(set(losses)) == 3, losses
    assert record["selection"]["member"] == losses.index(min(losses))
    # the saved student is that member: its loss on the selection rows (recomputed here) is the minimum
    rows, _ = train_stage.split_rows(len(planted_cache), 0.2, 0)
    _, select = train_stage.split_rows(len(rows), 0.2, 1)
    x = torch.as_tensor(
        scale_inputs(planted_cache.features(), *planted_cache.schema.encoded_ranges()), dtype=torch.float32
    )
    y = torch.as_tensor(planted_cache.target("y"), dtype=torch.float32)[:, None]
    mean, std = y[rows].mean(), y[rows].std()
    student = KAN.from_pretrained(tmp_path / "run" / "students" / "y")
    with torch.no_grad():
        loss = ((student(x[rows[select]]) - (y[rows[select]] - mean) / std) ** 2).mean().item()
    assert loss == pytest.approx(min(losses), rel=1e-5)
    assert result.fidelity["y"] == record["fidelity"]


def test_a_run_interrupted_after_the_choice_resumes_with_the_same_choice(planted_cache, tmp_path, monkeypatch):
    """Interrupted in its polish phase (after the choice is checkpointed), a run resumes to the very
    student that an uninterrupted run ends with, and keeps the member it chose."""
    spec = [StudentSpec("y", ("y",))]
    config = TrainConfig(hidden=[3], grid=3, steps=30, members=3, polish_steps=5, checkpoint_every=10, **RECIPE)
    train_students(planted_cache, spec, tmp_path / "whole", config)
    step = train_stage.GroupTrainer.closure  # asked once per training step

    def interrupted_in_polish(self, model, optimizer, members, penalty):
        if self.phases[-1].startswith("polish") and isinstance(optimizer, torch.optim.LBFGS):
            raise KeyboardInterrupt
        return step(self, model, optimizer, members, penalty)

    monkeypatch.setattr(train_stage.GroupTrainer, "closure", interrupted_in_polish)
    with pytest.raises(KeyboardInterrupt):
        train_students(planted_cache, spec, tmp_path / "cut", config)
    monkeypatch.undo()
    state = json.loads((tmp_path / "cut" / "checkpoints" / "y" / "state.json").read_text())
    assert state["selection"] and state["phase"] == 2, state  # fit, select done; polish0 next
    train_students(planted_cache, spec, tmp_path / "cut", config)
    records = [json.loads((tmp_path / run / "students" / "y" / "student.json").read_text()) for run in ("whole", "cut")]
    assert records[0]["selection"] == records[1]["selection"] == state["selection"][0]
    weights = [load_file(tmp_path / run / "students" / "y" / "model.safetensors") for run in ("whole", "cut")]
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0]), "the resumed student differs"


def test_a_phase_ends_on_its_best_snapshot_not_its_last_step(planted_cache, tmp_path, monkeypatch):
    """Adam at a learning rate far too high wanders off after a good start: the student is the best
    point seen on the held-out rows, not the last one."""
    seen = []
    measure = train_stage.GroupTrainer.validation_loss

    def recorded(self, model, members):
        losses = measure(self, model, members)
        seen.append(float(losses[0]))
        return losses

    monkeypatch.setattr(train_stage.GroupTrainer, "validation_loss", recorded)
    options = RECIPE | {"schedule": "constant", "lr": 0.5}
    wild = TrainConfig(hidden=[3], grid=3, steps=55, eval_every=5, patience=10**6, **options)
    result = train_students(planted_cache, [StudentSpec("y", ("y",))], tmp_path / "run", wild)
    assert len(seen) == 1 + 55 // 5 and seen[-1] > min(seen) * 1.1, seen  # the start, then every 5 steps
    r2 = result.fidelity["y"]["r2"]  # measured on the same held-out rows (no selection_fraction)
    assert 1 - r2 == pytest.approx(min(seen) * (len(planted_cache) - 1) / len(planted_cache), rel=0.05), (r2, seen)


def test_learning_rate_warms_up_then_decays_to_zero():
    rates = [learning_rate(s, 100, 0.01, "cosine", 0.1) for s in range(100)]
    assert rates[0] == pytest.approx(0.001) and rates[9] == pytest.approx(0.01)
    assert rates[10] == pytest.approx(0.01) and rates[55] == pytest.approx(0.005, rel=0.02)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:])) and rates[-1] < 1e-5
    assert learning_rate(57, 100, 0.01, "constant", 0.1) == 0.01


def test_the_smoothness_penalty_is_zero_on_straight_splines_only():
    model = KAN([2, 3, 1], grid=5, seed=0)
    assert (smoothness_penalty(model) > 0).all()
    with torch.no_grad():
        for layer in model.layers:
            layer.coef.copy_(torch.linspace(-1, 1, layer.coef.shape[2])[None, None, :, None].expand_as(layer.coef))
    assert smoothness_penalty(model).abs().max() < 1e-12


@pytest.mark.parametrize(("options", "message"), [
    ({"members": 0}, "members: expected a positive integer, got 0"),
    ({"schedule": "linear"}, "schedule: expected constant or cosine, got 'linear'"),
    ({"polish_steps": -1}, "polish_steps: expected a non-negative integer, got -1"),
    ({"selection_fraction": 0.95}, r"selection_fraction: expected a number in \[0, 0.9\], got 0.95"),
    ({"smoothness": float("nan")}, "smoothness: expected a non-negative number, got nan"),
])  # fmt: skip
def test_bad_recipe_options_are_named(options, message):
    with pytest.raises(TrainError, match=message):
        TrainConfig(**options)


def test_the_diabetes_teachers_student_reaches_r2_09_on_inputs_beyond_its_data(tmp_path):
    """The MLP fitted to scikit-learn's diabetes data, distilled on 16,000 inputs (the teacher is
    cheap to query; on its 442 patients' worth of rows a KAN overfits) by Adam on minibatches."""
    from kandistill.teachers.embedded import diabetes_teacher

    teacher = diabetes_teacher()
    cache = generate_targets(teacher, sample_inputs(teacher.schema, 16000, "lhs", seed=0), tmp_path / "t")
    config = TrainConfig(hidden=[16, 16], grid=3, steps=1500, batch_size=512, lr=0.02, eval_every=50,
                         selection_fraction=0.15, patience=20, **RECIPE)  # fmt: skip
    result = train_students(cache, [StudentSpec("d", ("progression",))], tmp_path / "run", config)
    assert result.fidelity["d"]["r2"] >= 0.9, result.fidelity


def test_minibatches_are_a_seeded_function_of_the_step_that_cover_every_row_each_epoch(planted_cache, tmp_path):
    config = TrainConfig(hidden=[3], grid=3, steps=12, batch_size=300, eval_every=4, **RECIPE)
    seen = []
    step = train_stage.GroupTrainer.closure  # asked once per training step

    def recorded(self, model, optimizer, members, penalty):
        seen.append(self.batch.clone())
        return step(self, model, optimizer, members, penalty)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_stage.GroupTrainer, "closure", recorded)
        train_students(planted_cache, [StudentSpec("y", ("y",))], tmp_path / "run", config)
    rows = round(1200 * 0.8)  # 960 training rows: batches of 300, 300, 300, 60 per epoch
    assert [len(b) for b in seen[:4]] == [300, 300, 300, 60]
    assert torch.equal(torch.cat(seen[:4]).sort().values, torch.arange(rows))
    assert not torch.equal(seen[0], seen[4])  # a new permutation each epoch
    trainer = train_stage.GroupTrainer.__new__(train_stage.GroupTrainer)
    trainer.config, trainer.data = config, type("D", (), {"x_train": torch.zeros(rows, 3)})()
    assert all(torch.equal(trainer.minibatch(0, s), seen[s]) for s in range(12))
