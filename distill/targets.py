"""The targets stage: run a teacher over inputs, sharded across processes, into a soft-target cache.

A cache is a folder::

    manifest.json        what made it (teacher fingerprint, inputs hash, schema, teacher description,
                         library versions) and each shard with its row range and hash
    shards/shard-00003/  one `datasets` Arrow folder per ``shard_size`` rows, plus shard.json
    dataset/             all shards merged, memory-mapped on load

Each process of an `accelerate` run (or a plain single process) computes the shards ``rank,
rank + world, ...``. A shard is written under a temporary name and renamed once complete, so a
killed run leaves whole shards or none; a rerun recomputes only the shards that are missing or
whose hash does not match, and refuses a cache made by another teacher or other inputs, naming the
field that differs.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from accelerate import PartialState
from scipy.stats import qmc
from tqdm.auto import tqdm

from students.persistence import atomic_write_bytes
from teachers.base import Teacher, hash_files, hash_json, process_state
from teachers.schema import Batch, CategoricalFeature, FeatureSchema, SchemaError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SAMPLERS = ("uniform", "grid", "lhs")
KEY_FIELDS = ("teacher_fingerprint", "inputs_hash", "schema", "teacher", "outputs", "shard_size", "rows")


class CacheError(ValueError):
    """A cache that cannot be made, resumed or read as asked; the message names the field or file."""


def sample_inputs(schema: FeatureSchema, n: int, method: str = "uniform", seed: int = 0) -> dict[str, list]:
    """``n`` rows over the schema: ``uniform`` random, Latin hypercube (``lhs``), or a full ``grid``.

    A grid takes about ``n ** (1 / n_numeric)`` points per numeric feature (every value of a
    categorical one), so its size is the product, close to ``n``. Integer features are rounded.
    """
    if method not in SAMPLERS:
        raise CacheError(f"sampler: expected one of {SAMPLERS}, got {method!r}")
    if n < 1:
        raise CacheError(f"rows: expected a positive integer, got {n}")
    if method == "grid":
        numeric = [f for f in schema.features if not isinstance(f, CategoricalFeature)]
        n_categories = math.prod(len(f.values) for f in schema.features if isinstance(f, CategoricalFeature))
        per_axis = max(2, round((n / n_categories) ** (1 / max(len(numeric), 1))))
        axes = [np.arange(len(f.values), dtype=np.float64) if isinstance(f, CategoricalFeature)
                else np.unique(np.round(np.linspace(f.low, f.high, per_axis))) if f.integer
                else np.linspace(f.low, f.high, per_axis) for f in schema.features]  # fmt: skip
        x = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
    else:
        rng = np.random.default_rng(seed)
        unit = (
            qmc.LatinHypercube(d=len(schema), seed=rng).random(n) if method == "lhs" else rng.random((n, len(schema)))
        )
        x = np.empty_like(unit)
        for j, feature in enumerate(schema.features):
            if isinstance(feature, CategoricalFeature):
                x[:, j] = np.minimum(np.floor(unit[:, j] * len(feature.values)), len(feature.values) - 1)
            else:
                x[:, j] = feature.low + unit[:, j] * (feature.high - feature.low)
    for j, feature in enumerate(schema.features):
        if not isinstance(feature, CategoricalFeature) and feature.integer:
            x[:, j] = np.clip(np.round(x[:, j]), math.ceil(feature.low), math.floor(feature.high))
    return schema.decode(x)


def read_inputs(source: str | Path | datasets.Dataset, schema: FeatureSchema) -> dict[str, list]:
    """Inputs from a CSV file (a header naming the features) or a `datasets.Dataset`, checked by the schema."""
    if isinstance(source, datasets.Dataset):
        missing = [n for n in schema.names if n not in source.column_names]
        if missing:
            raise SchemaError(f"dataset lacks features {missing}; it has columns {source.column_names}")
        batch = {n: list(source[n]) for n in schema.names}
    else:
        path = Path(source)
        if not path.is_file():
            raise CacheError(f"inputs file {path} does not exist")
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [n for n in schema.names if n not in (reader.fieldnames or [])]
            if missing:
                raise SchemaError(f"{path}: the header lacks features {missing}; it has {reader.fieldnames}")
            rows = list(reader)
        batch = {}
        for feature in schema.features:
            column = [row[feature.name] for row in rows]
            if not isinstance(feature, CategoricalFeature):
                try:
                    column = [float(v) for v in column]
                except ValueError as err:
                    raise SchemaError(f"{path}: column {feature.name!r}: {err}") from err
                column = [int(v) if feature.integer and v == int(v) else v for v in column]
            batch[feature.name] = column
    schema.encode(batch)
    return batch


def hash_inputs(schema: FeatureSchema, batch: Batch) -> str:
    """A hex digest of the encoded inputs ``(rows, n_features)`` float64, with their schema."""
    digest = hashlib.blake2b(digest_size=32)
    digest.update(hash_json(schema.to_dict()).encode())
    digest.update(np.ascontiguousarray(schema.encode(batch)).tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("kandistill", "torch", "transformers", "accelerate", "datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence `datasets`' per-save progress bars (this stage shows its own), then restore them."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"{path}: unreadable: {err}") from err


def _check_key(folder: Path, key: Mapping[str, Any]) -> None:
    """Refuse a cache made by another teacher, other inputs or another configuration."""
    path = folder / MANIFEST
    if not path.exists():
        return
    existing = _read_json(path)
    for field in KEY_FIELDS:
        if existing.get(field) != key[field]:
            raise CacheError(f"{path} was made with a different {field} (cache: {str(existing.get(field))[:200]}, "
                             f"now: {str(key[field])[:200]}); use another folder or delete this cache")  # fmt: skip


def _shard_hash(folder: Path) -> str:
    return hash_files(sorted(folder.glob("*.arrow")))


def _valid_shard(folder: Path, rows: tuple[int, int], key_hash: str) -> bool:
    """A shard folder whose record matches this run and whose Arrow files match their recorded hash."""
    record_path = folder / "shard.json"
    if not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
        return (record.get("key") == key_hash and tuple(record.get("rows", ())) == rows
                and record.get("hash") == _shard_hash(folder))  # fmt: skip
    except (OSError, json.JSONDecodeError):
        return False


def _answer(teacher: Teacher, batch: dict[str, list], start: int) -> dict[str, np.ndarray]:
    """The teacher's outputs as numpy columns; a non-finite value is an error naming output and row."""
    outputs = teacher(batch)
    columns = {}
    for name in teacher.outputs:
        value = outputs[name]
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = (~torch.isfinite(value)).reshape(len(value), -1).any(1).nonzero()[0, 0].item()
            raise CacheError(f"the teacher returned a non-finite {name!r} for input row {start + bad} "
                             f"({ {k: v[bad] for k, v in batch.items()} })")  # fmt: skip
        columns[name] = value.numpy()
    return columns


def _write_shard(folder: Path, columns: Mapping[str, Any], rows: tuple[int, int], key_hash: str, process: int) -> None:
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_datasets():
        datasets.Dataset.from_dict(dict(columns)).save_to_disk(str(tmp))
    _write_json(tmp / "shard.json", {"rows": list(rows), "hash": _shard_hash(tmp), "key": key_hash, "process": process})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def generate_targets(
    teacher: Teacher,
    inputs: Batch,
    folder: str | Path,
    *,
    shard_size: int = 1024,
    state: PartialState | None = None,
) -> SoftTargetCache:
    """Run ``teacher`` over ``inputs`` into the cache ``folder``, resuming whatever is already done.

    Under ``accelerate launch`` (or torchrun) every process computes its share of shards; the main
    process merges them. Returns the merged cache on every process.
    """
    state = state or process_state()
    folder = Path(folder)
    if shard_size < 1:
        raise CacheError(f"shard_size: expected a positive integer, got {shard_size}")
    inputs_hash = hash_inputs(teacher.schema, inputs)
    inputs = {name: list(inputs[name]) for name in teacher.schema.names}
    rows = len(inputs[teacher.schema.names[0]])
    if rows == 0:
        raise CacheError("inputs: no rows to run the teacher on")
    key = {
        "teacher_fingerprint": teacher.fingerprint(),
        "inputs_hash": inputs_hash,
        "schema": teacher.schema.to_dict(),
        "teacher": teacher.describe(),
        "outputs": teacher.outputs,
        "shard_size": shard_size,
        "rows": rows,
    }
    key_hash = hash_json(key)
    _check_key(folder, key)
    state.wait_for_everyone()
    if state.is_main_process and not (folder / MANIFEST).exists():
        _write_json(folder / MANIFEST, {**key, "libraries": library_versions(), "shards": [], "complete": False})
    state.wait_for_everyone()

    spans = [(start, min(start + shard_size, rows)) for start in range(0, rows, shard_size)]
    mine = list(range(state.process_index, len(spans), state.num_processes))
    shard_dir = folder / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    done = 0
    for index in tqdm(mine, desc="soft targets (shards)", disable=not state.is_local_main_process or None):
        path, span = shard_dir / f"shard-{index:05d}", spans[index]
        if _valid_shard(path, span, key_hash):
            continue
        batch = {name: column[span[0] : span[1]] for name, column in inputs.items()}
        columns = {**batch, **_answer(teacher, batch, span[0])}
        _write_shard(path, columns, span, key_hash, state.process_index)
        done += 1
    logger.info("process %d: computed %d of its %d shards", state.process_index, done, len(mine))
    state.wait_for_everyone()
    if state.is_main_process:
        _merge(folder, key, spans, key_hash)
    state.wait_for_everyone()
    return SoftTargetCache.load(folder)


def _merge(folder: Path, key: Mapping[str, Any], spans: list[tuple[int, int]], key_hash: str) -> None:
    """Check every shard, concatenate them into ``dataset/`` and complete the manifest."""
    records = []
    parts = []
    for index, span in enumerate(spans):
        path = folder / "shards" / f"shard-{index:05d}"
        if not _valid_shard(path, span, key_hash):
            raise CacheError(f"{path}: missing or corrupt after every process finished; rerun to recompute it")
        records.append({"index": index, "rows": list(span), "hash": _read_json(path / "shard.json")["hash"]})
        parts.append(datasets.load_from_disk(str(path)))
    manifest = _read_json(folder / MANIFEST)
    if manifest.get("complete") and manifest.get("shards") == records and (folder / "dataset").is_dir():
        return
    tmp = folder / f".dataset.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_datasets():
        datasets.concatenate_datasets(parts).save_to_disk(str(tmp))
    shutil.rmtree(folder / "dataset", ignore_errors=True)
    os.replace(tmp, folder / "dataset")
    _write_json(folder / MANIFEST, {**key, "libraries": library_versions(), "shards": records, "complete": True})


@dataclass
class SoftTargetCache:
    """A finished cache: the manifest and the merged, memory-mapped `datasets.Dataset`."""

    folder: Path
    manifest: dict[str, Any]
    dataset: datasets.Dataset

    @classmethod
    def load(cls, folder: str | Path) -> SoftTargetCache:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise CacheError(f"{folder} is not a soft-target cache: no {MANIFEST}")
        manifest = _read_json(path)
        if not manifest.get("complete"):
            raise CacheError(f"{path}: the cache is incomplete; rerun the targets stage to finish it")
        try:
            dataset = datasets.load_from_disk(str(folder / "dataset"))
        except (FileNotFoundError, ValueError) as err:
            raise CacheError(f"{folder / 'dataset'}: unreadable: {err}") from err
        if len(dataset) != manifest["rows"]:
            raise CacheError(f"{folder / 'dataset'} has {len(dataset)} rows; the manifest says {manifest['rows']}")
        return cls(folder, manifest, dataset)

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema.from_dict(self.manifest["schema"])

    @property
    def outputs(self) -> list[str]:
        return list(self.manifest["outputs"])

    @property
    def fingerprint(self) -> str:
        """A hash of what made the cache and of its shards' contents."""
        return hash_json({k: self.manifest[k] for k in (*KEY_FIELDS, "shards")})

    def __len__(self) -> int:
        return len(self.dataset)

    def features(self) -> np.ndarray:
        """The inputs as numbers, ``(rows, n_features)`` float64 (categories as their index)."""
        return self.schema.encode({name: self.dataset[name] for name in self.schema.names})

    def target(self, name: str) -> np.ndarray:
        """One output column: ``(rows,)`` or ``(rows, d)``."""
        if name not in self.outputs:
            raise CacheError(f"the cache has no target {name!r}; it has {self.outputs}")
        column = self.dataset.data.column(name)
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            flat = np.concatenate([chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks])
            return flat.reshape(len(self), -1)
        return column.to_numpy()
