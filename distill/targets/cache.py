"""The targets stage: run a teacher over inputs, sharded across processes, into a soft-target cache.

A cache is a folder::

    manifest.json        what made it (teacher fingerprint, inputs hash, schema, teacher description,
                         library versions), each shard with its row range and hash, and the hash of
                         each merged Arrow file (``dataset_files``)
    shards/shard-00003/  one `datasets` Arrow folder per ``shard_size`` rows, plus shard.json
    dataset/             all shards merged, memory-mapped on load once its bytes match the manifest
    .lock-rank0, ...     each process's lock (`targets.lock`): a second run into the folder is refused

Each process of an `accelerate` run (or a plain single process) computes the shards ``rank,
rank + world, ...``. A shard is written under a temporary name and renamed once complete, so a
killed run leaves whole shards or none; a rerun recomputes only the shards that are missing or
whose hash does not match, and refuses a cache made by another teacher or other inputs, naming the
field that differs. A damaged merged dataset is rebuilt from intact shards, never read.
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

from kandistill.distill.targets.lock import file_lock, folder_lock, remove_dead_temporaries
from kandistill.students.files import atomic_write_json
from kandistill.teachers.base import Teacher, process_state
from kandistill.teachers.hashing import hash_files, hash_json
from kandistill.teachers.names import InvalidNameError, check_slug
from kandistill.teachers.schema import Batch, CategoricalFeature, FeatureSchema, SchemaError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MERGE_LOCK = ".lock-merge"
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, pa.ArrowException)  # what reading a damaged dataset raises
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
        unit = qmc.LatinHypercube(d=len(schema), rng=rng).random(n) if method == "lhs" else rng.random((n, len(schema)))
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
    """Inputs from a CSV file (UTF-8, a header naming the features) or a `datasets.Dataset`, checked by the schema.

    Every error names the file (or ``dataset``), and the column and line (or row) where it can.
    """
    if isinstance(source, datasets.Dataset):
        where = "dataset"
        missing = [n for n in schema.names if n not in source.column_names]
        if missing:
            raise SchemaError(f"dataset lacks features {missing}; it has columns {source.column_names}")
        batch = {n: list(source[n]) for n in schema.names}
    else:
        where, batch = str(source), _read_csv(Path(source), schema)
    for feature in schema.features:
        if isinstance(feature, CategoricalFeature):
            bad = next((i for i, v in enumerate(batch[feature.name]) if not isinstance(v, str)), None)
            if bad is not None:
                raise SchemaError(f"{where}: column {feature.name!r}: row {bad}: expected a string, "
                                  f"got {type(batch[feature.name][bad]).__name__}")  # fmt: skip
    try:
        schema.encode(batch)
    except SchemaError as err:
        raise SchemaError(f"{where}: {err}") from None
    return batch


def _read_csv(path: Path, schema: FeatureSchema) -> dict[str, list]:
    """The schema's columns of a CSV file: numbers parsed, every row as long as the header."""
    if not path.is_file():
        raise CacheError(f"inputs file {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            rows = [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError as err:
        raise CacheError(f"{path}: not UTF-8 text ({err})") from None
    except csv.Error as err:
        raise CacheError(f"{path}: line {reader.line_num}: {err}") from None
    except OSError as err:
        raise CacheError(f"{path}: unreadable: {err}") from None
    missing = [n for n in schema.names if n not in header]
    if missing:
        raise SchemaError(f"{path}: the header lacks features {missing}; it has {header[:50]}")
    twice = next((n for n in schema.names if header.count(n) > 1), None)
    if twice is not None:
        raise SchemaError(f"{path}: the header names column {twice!r} twice")
    for line, row in rows:
        if len(row) != len(header):
            raise SchemaError(f"{path}: line {line}: expected {len(header)} fields ({', '.join(header)[:200]}), "
                              f"got {len(row)}")  # fmt: skip
    batch: dict[str, list] = {}
    for feature in schema.features:
        j = header.index(feature.name)
        batch[feature.name] = [row[j] for _, row in rows]
        if isinstance(feature, CategoricalFeature):
            continue
        for i, (line, row) in enumerate(rows):
            try:
                value = float(row[j])
            except ValueError as err:
                raise SchemaError(f"{path}: line {line}: column {feature.name!r}: {err}") from None
            batch[feature.name][i] = int(value) if feature.integer and value.is_integer() else value
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"{path}: unreadable: {err}") from err


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_outputs(outputs: Any, features: list[str], where: str) -> list[str]:
    """Output names: distinct strings, none the name of a feature (it would overwrite that input column)."""
    if not (isinstance(outputs, list) and outputs and all(isinstance(o, str) and o for o in outputs)):
        raise CacheError(f"{where}: expected a list of output names, got {str(outputs)[:80]!r}")
    for i, name in enumerate(outputs):
        if name in features:
            raise CacheError(f"{where}: output {name!r} has the name of a feature; rename one of them")
        if name in outputs[:i]:
            raise CacheError(f"{where}: output {name!r} is named twice")
    return outputs


def _spans(rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, rows)) for start in range(0, rows, shard_size)]


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, checked field by field: a `CacheError` names the first bad field and its value."""
    manifest = _read_json(path)
    if not isinstance(manifest, dict):
        raise CacheError(f"{path}: expected a JSON object, got {type(manifest).__name__}")

    def check(field: str, ok: bool, expected: str) -> None:
        if field not in manifest:
            raise CacheError(f"{path}: {field!r}: missing; rerun the targets stage into a new folder")
        if not ok:
            raise CacheError(f"{path}: {field!r}: expected {expected}, got {str(manifest[field])[:80]!r}")

    get = manifest.get
    for field in ("teacher_fingerprint", "inputs_hash"):
        check(field, isinstance(get(field), str), "a hash (a string)")
    check("teacher", isinstance(get("teacher"), dict), "an object")
    check("schema", True, "")
    try:
        features = FeatureSchema.from_dict(manifest["schema"]).names
    except SchemaError as err:
        raise CacheError(f"{path}: 'schema': {err}") from None
    check("outputs", True, "")
    _check_outputs(manifest["outputs"], features, f"{path}: 'outputs'")
    for field in ("shard_size", "rows"):
        check(field, _positive_int(get(field)), "a positive integer")
    check("complete", isinstance(get("complete"), bool), "true or false")
    check("shards", isinstance(get("shards"), list), "a list")
    if not manifest["complete"]:
        return manifest
    spans = _spans(manifest["rows"], manifest["shard_size"])
    check("shards", len(manifest["shards"]) == len(spans), f"{len(spans)} shards")
    for i, (record, span) in enumerate(zip(manifest["shards"], spans, strict=True)):
        where = f"{path}: 'shards'[{i}]"
        if not isinstance(record, dict):
            raise CacheError(f"{where}: expected an object, got {str(record)[:80]!r}")
        for name, ok, expected in (("index", record.get("index") == i, str(i)),
                                   ("rows", record.get("rows") == list(span), str(list(span))),
                                   ("hash", isinstance(record.get("hash"), str), "a hash (a string)")):  # fmt: skip
            if not ok:
                raise CacheError(f"{where}.{name}: expected {expected}, got {str(record.get(name))[:80]!r}")
    files = get("dataset_files")
    if files is not None and not (isinstance(files, dict) and files and
                                  all(_arrow_name(n) and isinstance(h, str) for n, h in files.items())):  # fmt: skip
        raise CacheError(f"{path}: 'dataset_files': expected {{Arrow file name: hash}}, got {str(files)[:80]!r}")
    return manifest


def _arrow_name(name: str) -> bool:
    """Whether ``name`` (read from a manifest) is a plain ``*.arrow`` file name, safe to join to a folder."""
    try:
        check_slug(name, "file name")
    except InvalidNameError:
        return False
    return name.endswith(".arrow")


def _check_key(folder: Path, key: Mapping[str, Any]) -> None:
    """Refuse a cache made by another teacher, other inputs or another configuration."""
    path = folder / MANIFEST
    if not path.exists():
        return
    existing = _read_manifest(path)
    for field in KEY_FIELDS:
        if existing[field] != key[field]:
            raise CacheError(f"{path} was made with a different {field} (cache: {str(existing[field])[:200]}, "
                             f"now: {str(key[field])[:200]}); use another folder or delete this cache")  # fmt: skip


def _shard_hash(folder: Path) -> str:
    return hash_files(sorted(folder.glob("*.arrow")))


def _load(folder: Path) -> datasets.Dataset:
    """A saved dataset, memory-mapped; raises one of `LOAD_ERRORS` if it is unreadable."""
    with quiet_datasets():
        return datasets.load_from_disk(str(folder), keep_in_memory=False)


def _open_shard(
    folder: Path, rows: tuple[int, int], key_hash: str, recorded: str | None = None
) -> tuple[datasets.Dataset, str] | None:
    """``(shard, its hash)`` if its record matches this run and its Arrow files match their recorded hash (and
    ``recorded``, the manifest's record of it, if given); None if it is missing, damaged or another run's."""
    try:
        record = json.loads((folder / "shard.json").read_text())
        if not (isinstance(record, dict) and record.get("key") == key_hash and record.get("rows") == list(rows)
                and record.get("hash") == _shard_hash(folder) and recorded in (None, record["hash"])):  # fmt: skip
            return None
        shard = _load(folder)
    except LOAD_ERRORS:
        return None
    return (shard, record["hash"]) if len(shard) == rows[1] - rows[0] else None


def _answer(teacher: Teacher, batch: dict[str, list], start: int, progress: tqdm) -> dict[str, np.ndarray]:
    """The teacher's outputs as numpy columns; a non-finite value is an error naming output and row."""
    outputs = teacher(batch, progress=progress.update)
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
    shard = {"rows": list(rows), "hash": _shard_hash(tmp), "key": key_hash, "process": process}
    atomic_write_json(tmp / "shard.json", shard, sort_keys=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def generate_targets(
    teacher: Teacher,
    inputs: Batch,
    folder: str | Path,
    *,
    shard_size: int = 1024,
    state: PartialState | None = None,
    progress: bool = True,
) -> SoftTargetCache:
    """Run ``teacher`` over ``inputs`` into the cache ``folder``, resuming whatever is already done.

    Under ``accelerate launch`` (or torchrun) every process computes its share of shards; the main
    process merges them. Returns the merged cache on every process. Each process holds its rank's
    lock on the folder throughout (`kandistill.distill.targets.lock.folder_lock`), so a second run into the same
    folder is refused with `FolderBusyError` before it writes anything. ``progress``: a bar of the rows
    answered (on the main process of each machine, on stderr).
    """
    state = state or process_state()
    folder = Path(folder)
    if shard_size < 1:
        raise CacheError(f"shard_size: expected a positive integer, got {shard_size}")
    _check_outputs(list(teacher.outputs), teacher.schema.names, "the teacher's outputs")
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
        "outputs": list(teacher.outputs),
        "shard_size": shard_size,
        "rows": rows,
    }
    key_hash = hash_json(key)
    with folder_lock(folder, "targets", rank=state.process_index):
        state.wait_for_everyone()  # every process of this run holds its lock before any of them writes
        _check_key(folder, key)
        if state.is_main_process:
            for place in (folder, folder / "shards"):
                remove_dead_temporaries(place)
            if not (folder / MANIFEST).exists():
                manifest = {**key, "libraries": library_versions(), "shards": [], "complete": False}
                atomic_write_json(folder / MANIFEST, manifest, sort_keys=True)
        state.wait_for_everyone()

        spans = _spans(rows, shard_size)
        mine = list(range(state.process_index, len(spans), state.num_processes))
        shard_dir = folder / "shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        done = 0
        bar = tqdm(total=sum(spans[i][1] - spans[i][0] for i in mine), desc="targets: teacher", unit="row",
                   disable=not (progress and state.is_local_main_process))  # fmt: skip
        for index in mine:
            path, span = shard_dir / f"shard-{index:05d}", spans[index]
            if _open_shard(path, span, key_hash) is not None:
                bar.update(span[1] - span[0])
                continue
            batch = {name: column[span[0] : span[1]] for name, column in inputs.items()}
            columns = {**batch, **_answer(teacher, batch, span[0], bar)}
            _write_shard(path, columns, span, key_hash, state.process_index)
            done += 1
        bar.close()
        logger.info("process %d: computed %d of its %d shards", state.process_index, done, len(mine))
        state.wait_for_everyone()
        if state.is_main_process:
            _merge(folder, key, spans, key_hash)
        state.wait_for_everyone()
        return SoftTargetCache.load(folder)


def _merge(folder: Path, key: Mapping[str, Any], spans: list[tuple[int, int]], key_hash: str) -> None:
    """Check every shard, concatenate them into ``dataset/`` (unless it is already there, intact) and complete the
    manifest."""
    records = []
    parts = []
    for index, span in enumerate(spans):
        path = folder / "shards" / f"shard-{index:05d}"
        opened = _open_shard(path, span, key_hash)
        if opened is None:
            raise CacheError(f"{path}: missing or corrupt after every process finished; rerun to recompute it")
        parts.append(opened[0])
        records.append({"index": index, "rows": list(span), "hash": opened[1]})
    with file_lock(folder / MERGE_LOCK, "targets", wait=True):
        manifest = _read_manifest(folder / MANIFEST)
        if manifest["complete"] and manifest["shards"] == records:
            dataset, problem = _open_merged(folder, manifest)
            if dataset is not None:
                return
            logger.warning("%s; rebuilding the merged dataset from the shards", problem)
        files = _write_merged(folder, parts)
        manifest = {**key, "libraries": library_versions(), "shards": records, "complete": True, "dataset_files": files}
        atomic_write_json(folder / MANIFEST, manifest, sort_keys=True)


def _write_merged(folder: Path, parts: list[datasets.Dataset]) -> dict[str, str]:
    """Concatenate ``parts`` into ``dataset/`` (written aside, then swapped in); returns each Arrow file's hash."""
    tmp, old = folder / f".dataset.tmp-{os.getpid()}", folder / f".dataset.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    with quiet_datasets():
        datasets.concatenate_datasets(parts).save_to_disk(str(tmp))
    files = {path.name: hash_files([path]) for path in sorted(tmp.glob("*.arrow"))}
    if (folder / "dataset").exists() or (folder / "dataset").is_symlink():
        os.replace(folder / "dataset", old)
    os.replace(tmp, folder / "dataset")
    shutil.rmtree(old, ignore_errors=True)
    return files


def _open_merged(folder: Path, manifest: Mapping[str, Any]) -> tuple[datasets.Dataset | None, str]:
    """``(the merged dataset, "")`` if its Arrow files match the manifest's hashes, else ``(None, what is wrong)``.

    Every Arrow byte is hashed (streamed, never all in memory) on every call. Caches here are MBs,
    so that costs little; a multi-GB cache would want the result kept, keyed by size and mtime.
    """
    target = folder / "dataset"
    recorded = manifest.get("dataset_files")
    if recorded is None:
        return None, f"{target}: no hashes of its Arrow files in {MANIFEST} (an older version made it)"
    found = {p.name for p in target.glob("*.arrow")} if target.is_dir() else set()
    for name in sorted(set(recorded) | found):
        path = target / name  # a name on disk, or one of the manifest's, checked as a plain file name
        if name not in found:
            return None, f"{path} is missing"
        if name not in recorded:
            return None, f"{path} is not one of the Arrow files {MANIFEST} records"
        try:
            if hash_files([path]) != recorded[name]:
                return None, f"{path} does not match its hash in {MANIFEST} (damaged)"
        except OSError as err:
            return None, f"{path} is unreadable ({err})"
    try:
        dataset = _load(target)
    except LOAD_ERRORS as err:
        return None, f"{target} is unreadable ({type(err).__name__}: {str(err)[:200]})"
    columns = [*FeatureSchema.from_dict(manifest["schema"]).names, *manifest["outputs"]]
    files = sorted(Path(f["filename"]).name for f in dataset.cache_files)
    if files != sorted(recorded) or len(dataset) != manifest["rows"] or dataset.column_names != columns:
        return None, (f"{target / 'state.json'} does not describe the {MANIFEST}'s Arrow files, {manifest['rows']} "
                      f"rows and columns {columns}")  # fmt: skip
    return dataset, ""


def _rebuild(folder: Path) -> dict[str, Any]:
    """Rebuild ``dataset/`` from the shards the manifest records, each checked against its hash; returns the
    manifest. A damaged shard is a `CacheError` naming it: only a rerun of the targets stage can recompute it."""
    path = folder / MANIFEST
    with file_lock(folder / MERGE_LOCK, "targets", wait=True):
        manifest = _read_manifest(path)
        dataset, problem = _open_merged(folder, manifest)  # another process may have rebuilt it meanwhile
        if dataset is not None:
            return manifest
        logger.warning("%s; rebuilding the merged dataset from the shards", problem)
        key_hash = hash_json({field: manifest[field] for field in KEY_FIELDS})
        parts = []
        for record in manifest["shards"]:
            shard = folder / "shards" / f"shard-{record['index']:05d}"
            opened = _open_shard(shard, tuple(record["rows"]), key_hash, record["hash"])
            if opened is None:
                raise CacheError(f"{shard}: missing or damaged (it does not match its hash in {path}), and so is the "
                                 f"merged dataset ({problem}); rerun the targets stage to recompute it")  # fmt: skip
            parts.append(opened[0])
        manifest = {**manifest, "dataset_files": _write_merged(folder, parts)}
        atomic_write_json(path, manifest, sort_keys=True)
    return manifest


@dataclass
class SoftTargetCache:
    """A finished cache: the manifest and the merged, memory-mapped `datasets.Dataset`."""

    folder: Path
    manifest: dict[str, Any]
    dataset: datasets.Dataset

    @classmethod
    def load(cls, folder: str | Path) -> SoftTargetCache:
        """Open a finished cache, memory-mapped, after checking every Arrow byte against the manifest's hashes.

        A damaged, missing or unreadable merged dataset is rebuilt from the shards (each checked
        against its own hash), with a warning naming the file; if a shard is damaged too, a
        `CacheError` names it. Hashing on every load is sound and cheap at this library's sizes (MBs).
        """
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise CacheError(f"{folder} is not a soft-target cache: no {MANIFEST}")
        manifest = _read_manifest(path)
        if not manifest["complete"]:
            raise CacheError(f"{path}: the cache is incomplete; rerun the targets stage to finish it")
        dataset, problem = _open_merged(folder, manifest)
        if dataset is None:
            try:
                manifest = _rebuild(folder)
            except OSError as err:
                raise CacheError(f"{problem}; rebuilding it from the shards failed: {err}") from err
            dataset, problem = _open_merged(folder, manifest)
            if dataset is None:
                raise CacheError(f"{problem}, even after rebuilding it from the shards")
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
        columns = {name: self.dataset.data.column(name) for name in self.schema.names}
        return self.schema.encode({name: c.to_numpy() if pa.types.is_floating(c.type) or pa.types.is_integer(c.type)
                                   else c.to_pylist() for name, c in columns.items()})  # fmt: skip

    def target(self, name: str) -> np.ndarray:
        """One output column: ``(rows,)`` or ``(rows, d)``."""
        if name not in self.outputs:
            raise CacheError(f"the cache has no target {name!r}; it has {self.outputs}")
        column = self.dataset.data.column(name)
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            flat = np.concatenate([chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks])
            return flat.reshape(len(self), -1)
        return column.to_numpy()
