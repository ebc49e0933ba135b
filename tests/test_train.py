"""The train stage: fidelity on real teachers, ensembles, processes, resume, and bad input."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kandistill.distill.discover.feynman import feynman_teacher
from kandistill.distill.targets.cache import SoftTargetCache, generate_targets, sample_inputs
from kandistill.distill.train.checkpoint import load_checkpoint, recover_checkpoint, save_checkpoint
from kandistill.distill.train.config import StudentSpec, TrainConfig, TrainError
from kandistill.distill.train.loop import train_students
from kandistill.students import KAN
from kandistill.teachers.causal_lm import CausalLMTeacher
from kandistill.teachers.mlp import MLP, MLPTeacher
from kandistill.teachers.schema import FeatureSchema, NumericFeature
from kandistill.teachers.tasks import LOAN_LABELS, LOAN_SCHEMA, LOAN_TEMPLATE

WORKER = Path(__file__).parent / "train_worker.py"
ROOT = Path(__file__).resolve().parents[1]
QUICK = {"hidden": [3], "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama_cache(loan_llama, tmp_path_factory):
    teacher = CausalLMTeacher.from_pretrained(loan_llama, LOAN_SCHEMA, LOAN_TEMPLATE, LOAN_LABELS,
                                              taps=["layers.*.attn.heads.*.dla[yes-no]"], batch_size=256)  # fmt: skip
    inputs = sample_inputs(LOAN_SCHEMA, 2500, "lhs", seed=0)
    return generate_targets(teacher, inputs, tmp_path_factory.mktemp("llama") / "targets", shard_size=1000)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """A smooth two-input MLP teacher, 601 rows (481 to train on: an odd count, shards of unequal size)."""
    torch.manual_seed(0)
    schema = FeatureSchema((NumericFeature("a", -2, 2), NumericFeature("b", 0, 3)))
    teacher = MLPTeacher(MLP([2, 16, 1], "tanh"), schema, ["y"])
    return generate_targets(teacher, sample_inputs(schema, 601, "lhs", seed=0), tmp_path_factory.mktemp("small") / "t")


def test_a_feynman_mlp_teacher_distils_to_r2_0999(tmp_path):
    teacher = feynman_teacher("I.12.1", steps=1500)  # F = mu * N_n, two variables
    cache = generate_targets(teacher, sample_inputs(teacher.schema, 1500, "lhs", seed=0), tmp_path / "targets")
    result = train_students(
        cache, [StudentSpec("force", ("I.12.1",))], tmp_path / "run", TrainConfig(steps=50, **QUICK)
    )
    assert result.fidelity["force"]["r2"] >= 0.999, result.fidelity
    saved = json.loads((tmp_path / "run" / "students" / "force" / "student.json").read_text())
    assert saved["fidelity"] == result.fidelity["force"] and saved["cache_fingerprint"] == cache.fingerprint
    loaded = KAN.from_pretrained(tmp_path / "run" / "students" / "force")
    x = torch.zeros(3, 2)
    torch.testing.assert_close(loaded(x), result.students["force"](x))


def test_the_llama_label_log_odds_distil_with_agreement_098(llama_cache, tmp_path):
    spec = StudentSpec.for_labels("decision", ["yes", "no"])
    result = train_students(llama_cache, [spec], tmp_path / "run", TrainConfig(steps=50, **QUICK))
    fidelity = result.fidelity["decision"]
    assert fidelity["r2_logodds"] >= 0.98 and fidelity["agreement"] >= 0.98, fidelity
    kl = train_students(llama_cache, [StudentSpec.for_labels("decision", ["yes", "no"], loss="kl", temperature=2.0)],
                 tmp_path / "kl", TrainConfig(steps=30, refine_grid=None, **QUICK))  # fmt: skip
    assert kl.fidelity["decision"]["agreement"] >= 0.95, kl.fidelity


def test_heads_train_as_one_ensemble_and_each_equals_its_student_alone(llama_cache, tmp_path):
    heads = [name for name in llama_cache.outputs if name.endswith(".dla[yes-no]")]
    assert len(heads) == 8
    specs = [StudentSpec(f"head{i}", (name,)) for i, name in enumerate(heads)]
    config = TrainConfig(optimizer="adam", steps=60, eval_every=5, patience=3, **QUICK)
    together = train_students(llama_cache, specs, tmp_path / "together", config)
    assert min(f["r2"] for f in together.fidelity.values()) > 0.95, together.fidelity
    alone = train_students(llama_cache, [StudentSpec("head5", (heads[5],), seed=5)], tmp_path / "alone", config)
    x = torch.rand(200, 4) * 2 - 1
    # Adam updates each parameter from its own gradient, so only float rounding differs between the
    # batched and the single forward (~1e-7 relative per step); 1e-4 of the output scale allows for
    # its growth over 120 steps.
    with torch.no_grad():
        got, want = together.students["head5"](x), alone.students["head5"](x)
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)
    assert together.fidelity["head5"] == pytest.approx(alone.fidelity["head5"], rel=1e-4)


def run_worker(cache: Path, out: Path, processes: int = 1, **options) -> subprocess.Popen:
    """The worker in a fresh process (or ``processes`` of them under torchrun, on a free port), on one thread."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    extra = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in options.items()]
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    launcher = [] if processes == 1 else torchrun
    command = [sys.executable, *launcher, str(WORKER), str(cache), str(out), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]


def worker_result(out: Path, rank: int = 0) -> dict:
    """``{"fidelity": {...}, "steps": training steps taken}`` of one worker process."""
    return json.loads((out / f"result-rank{rank}.json").read_text())


def test_two_processes_average_the_gradient_of_one_and_reach_its_fidelity(small_cache, tmp_path):
    """Data parallelism computes the one-process loss and gradient; the two training paths then part.

    The 481 training rows split 241 + 240: each process takes the mean loss of its shard weighted by
    the shard's size, and the gradients are averaged, which is the one-process mean summed in
    another order. So the first gradient agrees to float32 rounding (measured: about 1e-6 of each
    tensor's largest component; shards weighted equally are off by 2e-4 to 1e-2). L-BFGS then
    amplifies such differences: merely shuffling the rows of a one-process run moves its final R^2
    anywhere from 0.990 to 0.9999 (on this cache and a 600-row one), so the two runs are held to the
    same quality, not the same weights. Every process ends with the same student: each averages the
    same numbers.
    """
    finish(run_worker(small_cache.folder, tmp_path / "one", record_gradient=True))
    finish(run_worker(small_cache.folder, tmp_path / "two", processes=2, record_gradient=True))
    one = load_file(tmp_path / "one" / "gradient-rank0.safetensors")
    two = [load_file(tmp_path / "two" / f"gradient-rank{r}.safetensors") for r in (0, 1)]
    assert one.keys() == two[0].keys() == two[1].keys() and len(one) > 1
    for name, want in one.items():
        assert torch.equal(two[0][name], two[1][name]), name
        torch.testing.assert_close(two[0][name], want, rtol=1e-5, atol=1e-5 * want.abs().max().item(), msg=name)
    assert worker_result(tmp_path / "two", 0) == worker_result(tmp_path / "two", 1)
    fidelity = worker_result(tmp_path / "one")["fidelity"]["r2"], worker_result(tmp_path / "two")["fidelity"]["r2"]
    assert min(fidelity) > 0.98, fidelity


def test_a_run_killed_while_checkpointing_resumes_to_the_same_student(small_cache, tmp_path):
    """Killed inside its second checkpoint write, a run resumes from the first (mid-phase, with L-BFGS's
    history) and ends bit for bit where an uninterrupted run with the same settings ends."""
    finish(run_worker(small_cache.folder, tmp_path / "whole", checkpoint_every=10))
    killed = run_worker(small_cache.folder, tmp_path / "killed", checkpoint_every=10, kill_in_checkpoint=2)
    output, _ = killed.communicate(timeout=900)
    assert killed.returncode == -signal.SIGKILL, output[-3000:]
    state = json.loads((tmp_path / "killed" / "checkpoints" / "y" / "state.json").read_text())
    assert (state["phase"], state["step"]) == (0, 10) and state["optimizer"]["state"], state
    assert not (tmp_path / "killed" / "students").exists()
    finish(run_worker(small_cache.folder, tmp_path / "killed", checkpoint_every=10))
    students = [load_file(tmp_path / run / "students" / "y" / "model.safetensors") for run in ("whole", "killed")]
    assert students[0].keys() == students[1].keys()
    assert all(torch.equal(students[0][n], students[1][n]) for n in students[0]), "the resumed student differs"
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["y"]  # the killed write: cleared
    whole, resumed = worker_result(tmp_path / "whole"), worker_result(tmp_path / "killed")
    assert resumed == {"fidelity": whole["fidelity"], "steps": whole["steps"] - 10}, (whole, resumed)


def test_a_kill_between_the_two_renames_of_a_checkpoint_swap_loses_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints" / "s"
    save_checkpoint(folder, KAN([2, 2, 1], seed=0), None, {"step": 1})
    rename = os.replace

    def killed_at_the_second_rename(src, dst):
        if Path(src).name.startswith(".s.tmp-"):  # the first rename moved the previous checkpoint aside
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, KAN([2, 2, 1], seed=1), None, {"step": 2})
    monkeypatch.undo()
    assert not folder.exists() and len(list(folder.parent.iterdir())) == 2
    recover_checkpoint(folder)
    model, _, state = load_checkpoint(folder)
    assert state["step"] == 2 and torch.equal(model.layers[0].coef, KAN([2, 2, 1], seed=1).layers[0].coef)
    assert [p.name for p in folder.parent.iterdir()] == ["s"]


def test_bad_input_is_named(small_cache, tmp_path):
    with pytest.raises(TrainError, match=r"no target 'z'; it has \['y'\]"):
        train_students(small_cache, [StudentSpec("s", ("z",))], tmp_path / "a", TrainConfig(**QUICK))
    with pytest.raises(TrainError, match=r"hidden: expected positive integers, got \[0\]"):
        TrainConfig(hidden=[0])
    with pytest.raises(TrainError, match="kind must be one of"):
        StudentSpec("s", ("y",), kind="regression")
    with pytest.raises(TrainError, match="loss for scalar targets"):
        StudentSpec("s", ("y",), loss="kl")
    with pytest.raises(Exception, match="not a soft-target cache"):
        train_students(tmp_path / "nowhere", [StudentSpec("s", ("y",))], tmp_path / "b")

    # The cache's files are hash-checked and its stage refuses non-finite outputs: a NaN reaches the
    # train stage only in a cache object built in memory.
    table = small_cache.dataset.to_dict()
    table["y"][17] = float("nan")
    nan_cache = dataclasses.replace(small_cache, dataset=datasets.Dataset.from_dict(table))
    with pytest.raises(TrainError, match="column 'y' has a non-finite value at row 17"):
        train_students(nan_cache, [StudentSpec("s", ("y",))], tmp_path / "c", TrainConfig(**QUICK))

    tiny = generate_targets(MLPTeacher(MLP([2, 4, 1]), small_cache.schema, ["y"]),
                            sample_inputs(small_cache.schema, 5, seed=0), tmp_path / "tiny")  # fmt: skip
    with pytest.raises(TrainError, match="has 5 rows; students need at least 10"):
        train_students(tiny, [StudentSpec("s", ("y",))], tmp_path / "d")

    config = TrainConfig(steps=20, refine_grid=None, **QUICK)
    train_students(small_cache, [StudentSpec("s", ("y",))], tmp_path / "e", config)
    other = SoftTargetCache.load(tiny.folder)
    other_cache = generate_targets(MLPTeacher(MLP([2, 4, 1]), other.schema, ["y"]),
                                   sample_inputs(other.schema, 50, seed=1), tmp_path / "other")  # fmt: skip
    shutil.copytree(tmp_path / "e" / "checkpoints", tmp_path / "f" / "checkpoints")
    with pytest.raises(TrainError, match="made for another cache"):
        train_students(other_cache, [StudentSpec("s", ("y",))], tmp_path / "f", config)
    assert np.isfinite(json.loads((tmp_path / "e" / "fidelity.json").read_text())["s"]["r2"])


def test_an_ensemble_sparsifies_with_each_member_penalised_alone(small_cache, tmp_path):
    """The sparsify phase sums the members' penalties (a vector), as it sums their losses."""
    specs = [StudentSpec("a", ("y",)), StudentSpec("b", ("y",), seed=3)]
    config = TrainConfig(optimizer="adam", steps=20, sparse_steps=10, refine_grid=None, **QUICK)
    result = train_students(small_cache, specs, tmp_path / "run", config)
    assert set(result.fidelity) == {"a", "b"} and all(f["r2"] > 0.5 for f in result.fidelity.values()), result.fidelity
