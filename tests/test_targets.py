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

from kandistill.distill.targets.cache import CacheError, SoftTargetCache, generate_targets, read_inputs, sample_inputs
from kandistill.distill.targets.lock import FolderBusyError, folder_lock, remove_dead_temporaries
from kandistill.teachers.causal_lm import CausalLMTeacher
from kandistill.teachers.mlp import MLP, MLPTeacher
from kandistill.teachers.schema import SchemaError
from kandistill.teachers.tasks import LOAN_LABELS, LOAN_SCHEMA, LOAN_TEMPLATE

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
                   "--standalone", str(WORKER), str(out), "--slow", str(slow)]  # fmt: skip
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


# --- data integrity (issue 15): the merged cache is verified, writers are locked out, names are data ---


@pytest.fixture(scope="module")
def made_cache(tmp_path_factory, one_thread) -> tuple[Path, dict[str, list]]:
    """One finished cache (8 shards) and its columns; each test damages a copy of it."""
    folder = tmp_path_factory.mktemp("made") / "cache"
    cache = generate_targets(teacher(), sample_inputs(SCHEMA, ROWS, "lhs", seed=1), folder, shard_size=SHARD_SIZE)
    return folder, columns(cache)


@pytest.fixture
def cache_copy(made_cache, tmp_path) -> Path:
    folder = tmp_path / "cache"
    shutil.copytree(made_cache[0], folder)
    return folder


def merged_arrow(folder: Path) -> Path:
    (arrow,) = (folder / "dataset").glob("*.arrow")
    return arrow


def flip_bytes(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = bytes(b ^ 0xFF for b in data[offset : offset + 4])
    path.write_bytes(bytes(data))


DAMAGE = {
    "flip": lambda path: flip_bytes(path, path.stat().st_size - 2000),  # inside the last column's numbers
    "truncate": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "delete": lambda path: path.unlink(),
}


@pytest.mark.parametrize("via", ["load", "generate"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_merged_dataset_is_rebuilt_from_the_shards(made_cache, cache_copy, damage, via, caplog):
    arrow = merged_arrow(cache_copy)
    stamps = {p: p.stat().st_mtime_ns for p in cache_copy.glob("shards/*/shard.json")}
    DAMAGE[damage](arrow)
    with caplog.at_level("WARNING", logger="kandistill.distill.targets.cache"):
        if via == "load":
            cache = SoftTargetCache.load(cache_copy)
        else:
            inputs = sample_inputs(SCHEMA, ROWS, "lhs", seed=1)
            cache = generate_targets(teacher(), inputs, cache_copy, shard_size=SHARD_SIZE)
    assert columns(cache) == made_cache[1]
    assert arrow.name in caplog.text and "rebuil" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "the intact shards were reused"
    caplog.clear()
    assert columns(SoftTargetCache.load(cache_copy)) == made_cache[1] and not caplog.text, "rebuilt once, for good"


def test_a_damaged_shard_under_a_damaged_merge_is_named_or_recomputed(made_cache, cache_copy):
    shard = cache_copy / "shards" / "shard-00003"
    arrow = next(shard.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-100])
    DAMAGE["flip"](merged_arrow(cache_copy))
    with pytest.raises(CacheError, match=r"shards/shard-00003"):
        SoftTargetCache.load(cache_copy)
    inputs = sample_inputs(SCHEMA, ROWS, "lhs", seed=1)
    assert columns(generate_targets(teacher(), inputs, cache_copy, shard_size=SHARD_SIZE)) == made_cache[1]
    assert columns(SoftTargetCache.load(cache_copy)) == made_cache[1]


def test_a_damaged_merge_state_is_rebuilt(made_cache, cache_copy):
    (cache_copy / "dataset" / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}], '
                                                        '"_format_columns": ["x"]')  # fmt: skip
    assert columns(SoftTargetCache.load(cache_copy)) == made_cache[1]


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(edit(manifest)))


def first_shard(manifest: dict, **changes) -> dict:
    return {**manifest, "shards": [{**manifest["shards"][0], **changes}, *manifest["shards"][1:]]}


MALFORMED = {
    "not an object": (lambda m: [m], r"manifest.json: expected a JSON object"),
    "no outputs": (lambda m: {k: v for k, v in m.items() if k != "outputs"}, r"manifest.json: 'outputs'"),
    "rows a string": (lambda m: {**m, "rows": "1000"}, r"'rows': expected a positive integer"),
    "shard_size a bool": (lambda m: {**m, "shard_size": True}, r"'shard_size': expected a positive integer"),
    "complete a string": (lambda m: {**m, "complete": "yes"}, r"'complete': expected true or false"),
    "bad schema": (lambda m: {**m, "schema": [{"name": "../x", "low": 0, "high": 1}]}, r"'schema'.*not a plain name"),
    "output clashes": (lambda m: {**m, "outputs": ["x", "z"]}, r"'outputs'.*'x'.*feature"),
    "shard index a path": (lambda m: first_shard(m, index="../../x"), r"'shards'\[0\]\.index"),
    "shard rows wrong": (lambda m: first_shard(m, rows=[0, 5]), r"'shards'\[0\]\.rows: expected \[0, 128\]"),
    "a shard missing": (lambda m: {**m, "shards": m["shards"][1:]}, r"'shards': expected 8 shards"),
    "dataset file a path": (lambda m: {**m, "dataset_files": {"../../x.arrow": "0" * 64}}, r"'dataset_files'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_named(cache_copy, case):
    edit, message = MALFORMED[case]
    edit_manifest(cache_copy, edit)
    with pytest.raises(CacheError, match=message):
        SoftTargetCache.load(cache_copy)


def test_a_malformed_manifest_stops_a_rerun(cache_copy):
    edit_manifest(cache_copy, lambda m: [m])
    inputs = sample_inputs(SCHEMA, ROWS, "lhs", seed=1)
    with pytest.raises(CacheError, match=r"manifest.json: expected a JSON object"):
        generate_targets(teacher(), inputs, cache_copy, shard_size=SHARD_SIZE)


def test_an_output_named_like_a_feature_is_refused(tmp_path, one_thread):
    torch.manual_seed(0)
    clash = MLPTeacher(MLP([3, 4, 2]), SCHEMA, ["y", "x"])
    with pytest.raises(CacheError, match=r"output 'x'.*feature"):
        generate_targets(clash, sample_inputs(SCHEMA, 10, "uniform"), tmp_path / "cache", shard_size=5)


HOLD_LOCK = """
import sys
from kandistill.distill.targets.lock import folder_lock
with folder_lock(sys.argv[1], "targets"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_naming_the_folder_and_holder(tmp_path, one_thread):
    folder = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        inputs = sample_inputs(SCHEMA, 50, "uniform")
        with pytest.raises(FolderBusyError, match=rf"{folder}: the targets folder is in use by process {holder.pid}"):
            generate_targets(teacher(), inputs, folder, shard_size=10)
        assert not (folder / "shards").exists(), "the refused run wrote nothing"
    finally:
        holder.communicate("", timeout=60)
    assert len(generate_targets(teacher(), inputs, folder, shard_size=10)) == 50, "the lock went with its holder"


def test_folder_locks_nest_across_folders_and_ranks_but_not_twice(tmp_path):
    with folder_lock(tmp_path / "run"), folder_lock(tmp_path / "run" / "targets", "targets"):
        with folder_lock(tmp_path / "run" / "targets", "targets", rank=1):  # another process of the same run
            pass
        with pytest.raises(FolderBusyError, match=rf"{tmp_path / 'run'}: the run folder .*{os.getpid()} \(this"):
            with folder_lock(tmp_path / "run"):
                pass
    with folder_lock(tmp_path / "run"):  # released on exit
        pass


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_leftover_temporaries_of_dead_writers_are_removed(tmp_path, one_thread):
    folder, dead = tmp_path / "cache", dead_pid()
    alive = subprocess.Popen(["sleep", "300"])
    try:
        (folder / "shards").mkdir(parents=True)
        leftovers = [folder / "shards" / f".shard-00001.tmp-{dead}", folder / f".dataset.tmp-{dead}",
                     folder / f".dataset.old-{dead}"]  # fmt: skip
        kept = [folder / "shards" / f".shard-00002.tmp-{alive.pid}", folder / f".notes.tmp-{dead}x"]
        for path in leftovers + kept:
            path.mkdir()
            (path / "data.arrow").write_bytes(b"partial")
        generate_targets(teacher(), sample_inputs(SCHEMA, 50, "uniform"), folder, shard_size=10)
        assert [p for p in leftovers if p.exists()] == [] and all(p.exists() for p in kept)
        (tmp_path / f".model.tmp-{dead}").write_bytes(b"a file")
        assert remove_dead_temporaries(tmp_path) == [tmp_path / f".model.tmp-{dead}"]
        assert remove_dead_temporaries(folder / "shards") == []
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"x,n,c\n0.5\n", r"inputs.csv: line 2: expected 3 fields \(x, n, c\), got 1"),
        (b"x,n,c,n\n0.5,3,a,4\n", r"inputs.csv: the header names column 'n' twice"),
        (b"x,n,c\n0.5,3,a\n5.0,3,a\n", r"inputs.csv: feature 'x': value 5.0 is outside"),
        (b"x,n,c\n0.5,three,a\n", r"inputs.csv: line 2: column 'n': could not convert"),
        (b"x,n,c\n0.5,inf,a\n", r"inputs.csv: feature 'n': value inf is outside"),
        (b"x,n,c\n\xff\xfe0.5,3,a\n", r"inputs.csv: not UTF-8 text"),
        (b"x,n,c\n" + b"1" * 200_000 + b",3,a\n", r"inputs.csv: line 2: field larger than"),
    ],
)
def test_bad_csv_inputs_name_the_file_and_column(tmp_path, text, message):
    path = tmp_path / "inputs.csv"
    path.write_bytes(text)
    with pytest.raises((SchemaError, CacheError), match=message):
        read_inputs(path, SCHEMA)


def test_bad_dataset_inputs_name_the_column():
    bad = datasets.Dataset.from_dict({"x": [0.5], "n": [3], "c": [["a"]]})
    with pytest.raises(SchemaError, match=r"dataset: column 'c': row 0: expected a string, got list"):
        read_inputs(bad, SCHEMA)
    with pytest.raises(SchemaError, match=r"dataset: feature 'x': value 5.0 is outside"):
        read_inputs(datasets.Dataset.from_dict({"x": [5.0], "n": [3], "c": ["a"]}), SCHEMA)


def test_the_runner_imports_where_fcntl_does_not_exist():
    """The locks are filelock's (flock on Unix, msvcrt on Windows): nothing imports fcntl itself."""
    code = "import sys; sys.modules['fcntl'] = None\nimport kandistill.pipelines.runner, kandistill.teachers.gguf"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
