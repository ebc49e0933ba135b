"""The targets stage: samplers, the sharded cache, resume, multi-process runs, and bad input."""

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

from distill.targets import CacheError, SoftTargetCache, generate_targets, read_inputs, sample_inputs
from teachers.causal_lm import CausalLMTeacher
from teachers.embedded import LOAN_LABELS, LOAN_SCHEMA, LOAN_TEMPLATE
from teachers.mlp import MLP, MLPTeacher
from teachers.schema import SchemaError

sys.path.insert(0, str(Path(__file__).parent))
from targets_worker import ROWS, SCHEMA, SHARD_SIZE, teacher

WORKER = Path(__file__).parent / "targets_worker.py"
ROOT = Path(__file__).resolve().parents[1]


def run_worker(out: Path, processes: int = 1, slow: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, str(WORKER), str(out), "--slow", str(slow)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", "29533", str(WORKER), str(out), "--slow", str(slow)]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output


def columns(cache: SoftTargetCache) -> dict[str, list]:
    return {name: cache.dataset[name] for name in cache.dataset.column_names}


@pytest.mark.parametrize("method", ["uniform", "lhs", "grid"])
def test_samplers_cover_the_schema_reproducibly(method):
    batch = sample_inputs(SCHEMA, 300, method, seed=3)
    assert batch == sample_inputs(SCHEMA, 300, method, seed=3)
    x = SCHEMA.encode(batch)
    assert x[:, 0].min() >= -1 and x[:, 0].max() <= 1 and set(batch["c"]) == {"a", "b"}
    assert all(isinstance(v, int) for v in batch["n"]) and set(batch["n"]) == set(range(11))
    if method == "lhs":  # one sample in each of the 300 strata of every continuous feature
        assert len(np.unique(np.floor((x[:, 0] + 1) / 2 * 300))) == 300
    if method == "grid":
        assert len(batch["x"]) == len({tuple(row) for row in x}) and abs(len(batch["x"]) - 300) < 100


def test_cache_holds_the_teachers_answers_and_resumes(tmp_path):
    inputs = sample_inputs(SCHEMA, ROWS, "lhs", seed=1)
    mlp = teacher()
    cache = generate_targets(mlp, inputs, tmp_path / "cache", shard_size=SHARD_SIZE)
    direct = mlp(inputs)
    np.testing.assert_array_equal(cache.target("y"), direct["y"].numpy())
    np.testing.assert_array_equal(cache.features(), SCHEMA.encode(inputs))
    assert len(cache.manifest["shards"]) == 8 and cache.manifest["libraries"]["torch"] == torch.__version__

    shards = sorted((tmp_path / "cache" / "shards").iterdir())
    stamps = {p.name: (p / "shard.json").stat().st_mtime_ns for p in shards}
    arrow = next(shards[3].glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-100])  # a corrupt shard is recomputed, never used
    again = generate_targets(mlp, inputs, tmp_path / "cache", shard_size=SHARD_SIZE)
    changed = [p.name for p in shards if (p / "shard.json").stat().st_mtime_ns != stamps[p.name]]
    assert changed == [shards[3].name]
    assert columns(again) == columns(cache)

    with pytest.raises(CacheError, match="different teacher_fingerprint"):
        torch.manual_seed(1)
        generate_targets(MLPTeacher(MLP([3, 32, 2]), SCHEMA, ["y", "z"]), inputs, tmp_path / "cache",
                         shard_size=SHARD_SIZE)  # fmt: skip
    with pytest.raises(CacheError, match="different inputs_hash"):
        generate_targets(mlp, sample_inputs(SCHEMA, ROWS, "lhs", seed=2), tmp_path / "cache", shard_size=SHARD_SIZE)
    with pytest.raises(CacheError, match="different shard_size"):
        generate_targets(mlp, inputs, tmp_path / "cache", shard_size=100)


def test_two_processes_write_the_same_cache_as_one(tmp_path):
    finish(run_worker(tmp_path / "one"))
    finish(run_worker(tmp_path / "two", processes=2))
    one, two = SoftTargetCache.load(tmp_path / "one"), SoftTargetCache.load(tmp_path / "two")
    assert columns(one) == columns(two)
    assert one.manifest["shards"] == two.manifest["shards"]
    assert one.fingerprint == two.fingerprint
    writers = {json.loads(p.read_text())["process"] for p in (tmp_path / "two").glob("shards/*/shard.json")}
    assert writers == {0, 1}, "each process computed its own shards"


def test_a_killed_run_resumes_to_the_same_cache(tmp_path):
    finish(run_worker(tmp_path / "whole"))
    process = run_worker(tmp_path / "killed", slow=0.5)
    shards = tmp_path / "killed" / "shards"
    deadline = time.monotonic() + 120
    while len(list(shards.glob("shard-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(shards.glob("shard-*")))
    assert 2 <= finished < 8, "the run was killed between shards"
    assert not (tmp_path / "killed" / "dataset").exists()
    with pytest.raises(CacheError, match="incomplete"):
        SoftTargetCache.load(tmp_path / "killed")
    finish(run_worker(tmp_path / "killed"))
    whole, resumed = SoftTargetCache.load(tmp_path / "whole"), SoftTargetCache.load(tmp_path / "killed")
    assert columns(whole) == columns(resumed)
    assert whole.manifest["shards"] == resumed.manifest["shards"]


def test_inputs_from_csv_and_datasets(tmp_path):
    inputs = sample_inputs(SCHEMA, 20, "uniform", seed=0)
    path = tmp_path / "inputs.csv"
    path.write_text("x,n,c,unused\n" + "".join(f"{x!r},{n},{c},0\n" for x, n, c in zip(*inputs.values(), strict=True)))
    assert read_inputs(path, SCHEMA) == inputs
    assert read_inputs(datasets.Dataset.from_dict(inputs), SCHEMA) == inputs
    path.write_text("x,n,c\n0.5,3,z\n")
    with pytest.raises(SchemaError, match=r"'c': value 'z'"):
        read_inputs(path, SCHEMA)
    path.write_text("x,c\n0.5,a\n")
    with pytest.raises(SchemaError, match=r"inputs.csv: the header lacks features \['n'\]"):
        read_inputs(path, SCHEMA)


def test_a_nan_from_the_teacher_is_named_and_leaves_no_shard(tmp_path):
    class NaNAt(torch.nn.Module):
        def forward(self, x):
            y = x[:, :1].clone()
            y[x[:, 1] == 7] = float("nan")
            return y

    inputs = {"x": [0.1] * 10, "n": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "c": ["a"] * 10}
    with pytest.raises(CacheError, match=r"non-finite 'y' for input row 6 .*'n': 7"):
        generate_targets(MLPTeacher(NaNAt(), SCHEMA, ["y"]), inputs, tmp_path / "cache", shard_size=5)
    shards = sorted(p.name for p in (tmp_path / "cache" / "shards").iterdir())
    assert shards == ["shard-00000"], "the first shard is kept; no partial shard is left"
    with pytest.raises(CacheError, match="no rows"):
        generate_targets(teacher(), {"x": [], "n": [], "c": []}, tmp_path / "empty")
    with pytest.raises(SchemaError, match="outside its range"):
        generate_targets(teacher(), {"x": [3.0], "n": [1], "c": ["a"]}, tmp_path / "bad")
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_the_embedded_llama_through_the_stage(loan_llama, tmp_path):
    llama = CausalLMTeacher.from_pretrained(loan_llama, LOAN_SCHEMA, LOAN_TEMPLATE, LOAN_LABELS,
                                            taps=["layers.*.attn.heads.*.dla[yes-no]"], batch_size=64)  # fmt: skip
    inputs = sample_inputs(LOAN_SCHEMA, 300, "uniform", seed=0)
    cache = generate_targets(llama, inputs, tmp_path / "cache", shard_size=100)
    assert cache.outputs == llama.outputs and len(cache.outputs) == 4 + 8
    direct = llama(inputs)
    for name in cache.outputs:
        np.testing.assert_allclose(cache.target(name), direct[name].numpy(), atol=1e-6)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["teacher"]["template"] == LOAN_TEMPLATE and manifest["teacher"]["labels"] == LOAN_LABELS
    shutil.rmtree(tmp_path / "cache" / "dataset")  # a lost merge is rebuilt from the shards
    assert columns(generate_targets(llama, inputs, tmp_path / "cache", shard_size=100)) == columns(cache)
