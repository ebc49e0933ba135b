"""The train stage: fidelity on real teachers, ensembles, processes, resume, and bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from distill.feynman import feynman_teacher
from distill.targets import SoftTargetCache, generate_targets, sample_inputs
from distill.train import StudentSpec, TrainConfig, TrainError, distill
from students import KAN
from teachers.causal_lm import CausalLMTeacher
from teachers.embedded import LOAN_LABELS, LOAN_SCHEMA, LOAN_TEMPLATE
from teachers.mlp import MLP, MLPTeacher
from teachers.schema import FeatureSchema, NumericFeature

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
    """A smooth two-input MLP teacher, 600 rows: small enough for subprocess runs."""
    torch.manual_seed(0)
    schema = FeatureSchema((NumericFeature("a", -2, 2), NumericFeature("b", 0, 3)))
    teacher = MLPTeacher(MLP([2, 16, 1], "tanh"), schema, ["y"])
    return generate_targets(teacher, sample_inputs(schema, 600, "lhs", seed=0), tmp_path_factory.mktemp("small") / "t")


def test_a_feynman_mlp_teacher_distils_to_r2_0999(tmp_path):
    teacher = feynman_teacher("I.12.1", steps=1500)  # F = mu * N_n, two variables
    cache = generate_targets(teacher, sample_inputs(teacher.schema, 1500, "lhs", seed=0), tmp_path / "targets")
    result = distill(cache, [StudentSpec("force", ("I.12.1",))], tmp_path / "run", TrainConfig(steps=50, **QUICK))
    assert result.fidelity["force"]["r2"] >= 0.999, result.fidelity
    saved = json.loads((tmp_path / "run" / "students" / "force" / "student.json").read_text())
    assert saved["fidelity"] == result.fidelity["force"] and saved["cache_fingerprint"] == cache.fingerprint
    loaded = KAN.from_pretrained(tmp_path / "run" / "students" / "force")
    x = torch.zeros(3, 2)
    torch.testing.assert_close(loaded(x), result.students["force"](x))


def test_the_llama_label_log_odds_distil_with_agreement_098(llama_cache, tmp_path):
    spec = StudentSpec.for_labels("decision", ["yes", "no"])
    result = distill(llama_cache, [spec], tmp_path / "run", TrainConfig(steps=50, **QUICK))
    fidelity = result.fidelity["decision"]
    assert fidelity["r2_logodds"] >= 0.98 and fidelity["agreement"] >= 0.98, fidelity
    kl = distill(llama_cache, [StudentSpec.for_labels("decision", ["yes", "no"], loss="kl", temperature=2.0)],
                 tmp_path / "kl", TrainConfig(steps=30, refine_grid=None, **QUICK))  # fmt: skip
    assert kl.fidelity["decision"]["agreement"] >= 0.95, kl.fidelity


def test_heads_train_as_one_ensemble_and_each_equals_its_student_alone(llama_cache, tmp_path):
    heads = [name for name in llama_cache.outputs if name.endswith(".dla[yes-no]")]
    assert len(heads) == 8
    specs = [StudentSpec(f"head{i}", (name,)) for i, name in enumerate(heads)]
    config = TrainConfig(optimizer="adam", steps=60, eval_every=5, patience=3, **QUICK)
    together = distill(llama_cache, specs, tmp_path / "together", config)
    assert min(f["r2"] for f in together.fidelity.values()) > 0.95, together.fidelity
    alone = distill(llama_cache, [StudentSpec("head5", (heads[5],), seed=5)], tmp_path / "alone", config)
    x = torch.rand(200, 4) * 2 - 1
    # Adam updates each parameter from its own gradient, so only float rounding differs between the
    # batched and the single forward (~1e-7 relative per step); 1e-4 of the output scale allows for
    # its growth over 120 steps.
    with torch.no_grad():
        got, want = together.students["head5"](x), alone.students["head5"](x)
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)
    assert together.fidelity["head5"] == pytest.approx(alone.fidelity["head5"], rel=1e-4)


def run_worker(cache: Path, out: Path, processes: int = 1, **options) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                                          "--master_port=29541"]  # fmt: skip
    command = [sys.executable, *launcher, str(WORKER), str(cache), str(out), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> dict:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]


def test_two_processes_reach_the_fidelity_of_one(small_cache, tmp_path):
    finish(run_worker(small_cache.folder, tmp_path / "one"))
    finish(run_worker(small_cache.folder, tmp_path / "two", processes=2))
    one = json.loads((tmp_path / "one" / "worker_fidelity.json").read_text())["y"]
    two = json.loads((tmp_path / "two" / "worker_fidelity.json").read_text())["y"]
    assert one["r2"] > 0.999 and two["r2"] > 0.999
    assert abs(one["r2"] - two["r2"]) < 1e-3, (one, two)  # the loss is averaged in another order


def test_a_killed_run_resumes_from_its_checkpoint(small_cache, tmp_path):
    finish(run_worker(small_cache.folder, tmp_path / "whole", checkpoint_every=10))
    process = run_worker(small_cache.folder, tmp_path / "killed", checkpoint_every=10, slow=2.0)
    state = tmp_path / "killed" / "checkpoints" / "y" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed_from = json.loads(state.read_text())
    assert (resumed_from["phase"], resumed_from["step"]) != (0, 0) and not (tmp_path / "killed" / "students").exists()
    finish(run_worker(small_cache.folder, tmp_path / "killed", checkpoint_every=10))
    whole = json.loads((tmp_path / "whole" / "worker_fidelity.json").read_text())["y"]
    resumed = json.loads((tmp_path / "killed" / "worker_fidelity.json").read_text())["y"]
    assert resumed["r2"] == pytest.approx(whole["r2"], abs=1e-6), (whole, resumed)


def test_bad_input_is_named(small_cache, tmp_path):
    with pytest.raises(TrainError, match=r"no target 'z'; it has \['y'\]"):
        distill(small_cache, [StudentSpec("s", ("z",))], tmp_path / "a", TrainConfig(**QUICK))
    with pytest.raises(TrainError, match=r"hidden: expected positive integers, got \[0\]"):
        TrainConfig(hidden=[0])
    with pytest.raises(TrainError, match="kind must be one of"):
        StudentSpec("s", ("y",), kind="regression")
    with pytest.raises(TrainError, match="loss for scalar targets"):
        StudentSpec("s", ("y",), loss="kl")
    with pytest.raises(Exception, match="not a soft-target cache"):
        distill(tmp_path / "nowhere", [StudentSpec("s", ("y",))], tmp_path / "b")

    nan_cache = tmp_path / "nan"
    shutil.copytree(small_cache.folder, nan_cache)
    table = datasets.load_from_disk(str(nan_cache / "dataset")).to_dict()
    table["y"][17] = float("nan")
    shutil.rmtree(nan_cache / "dataset")
    datasets.Dataset.from_dict(table).save_to_disk(str(nan_cache / "dataset"))
    with pytest.raises(TrainError, match="column 'y' has a non-finite value at row 17"):
        distill(nan_cache, [StudentSpec("s", ("y",))], tmp_path / "c", TrainConfig(**QUICK))

    tiny = generate_targets(MLPTeacher(MLP([2, 4, 1]), small_cache.schema, ["y"]),
                            sample_inputs(small_cache.schema, 5, seed=0), tmp_path / "tiny")  # fmt: skip
    with pytest.raises(TrainError, match="has 5 rows; students need at least 10"):
        distill(tiny, [StudentSpec("s", ("y",))], tmp_path / "d")

    config = TrainConfig(steps=20, refine_grid=None, **QUICK)
    distill(small_cache, [StudentSpec("s", ("y",))], tmp_path / "e", config)
    other = SoftTargetCache.load(tiny.folder)
    other_cache = generate_targets(MLPTeacher(MLP([2, 4, 1]), other.schema, ["y"]),
                                   sample_inputs(other.schema, 50, seed=1), tmp_path / "other")  # fmt: skip
    shutil.copytree(tmp_path / "e" / "checkpoints", tmp_path / "f" / "checkpoints")
    with pytest.raises(TrainError, match="made for another cache"):
        distill(other_cache, [StudentSpec("s", ("y",))], tmp_path / "f", config)
    assert np.isfinite(json.loads((tmp_path / "e" / "fidelity.json").read_text())["s"]["r2"])
