"""A KAN's files, the Hugging Face way: ``config.json`` + ``model.safetensors`` (`KAN.save_pretrained` and
`KAN.from_pretrained` build on these).

Writes are atomic (a temporary name, then a rename), so an interrupted save never leaves a
half-written file. A saved student is data, checked in full before a model is built from it:
the config's field types and sizes (bounded by the ``MAX_*`` limits below), every tensor's name,
shape and dtype against what the config implies (from the safetensors header, before any tensor
is read), then the values (finite, bounded, 0/1 masks, increasing knots, known symbols). Errors
name the file, the field or tensor and the value. No pickle is ever read.
"""

from __future__ import annotations

import itertools
import json
import math
import reprlib
from importlib import metadata
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from kandistill.students.config import KANConfig
from kandistill.students.files import atomic_write_bytes, atomic_write_json
from kandistill.students.symbols import SymbolLibrary


class StudentFileError(ValueError):
    """A student folder that cannot be loaded (or a model that could not be loaded back once saved);
    the message names the file, the field or tensor, and the value."""


CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Limits on what a saved student may describe. A config is data from a file: without them a
# two-line config.json (width [30000, 30000]) allocates tens of gigabytes before any tensor is
# read. KANs are small, interpretable models; these bounds are far above any the library trains.
MAX_CONFIG_BYTES = 1 << 20
MAX_LAYERS = 32
MAX_WIDTH = 4096  # nodes per layer
MAX_GRID = 1024  # intervals per edge
MAX_K = 16  # spline order
MAX_ENSEMBLE = 4096
MAX_VALUES = 50_000_000  # numbers in all tensors together: 200 MB in float32
# No weight or knot of a trained student comes near this (inputs are standardised, coefficients fit
# O(1) spline values); a larger one is tampering or corruption, and would overflow downstream.
MAX_ABS_VALUE = 1e8
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_DTYPE_NAMES = {  # safetensors' dtype codes
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32", "U32": "uint32",
    "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
}  # fmt: skip


def _library_version() -> str:
    try:
        return metadata.version("kandistill")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_kan_files(directory: Path, config: KANConfig, tensors: dict[str, torch.Tensor],
                    provenance: dict[str, str]) -> Path:  # fmt: skip
    """Write a KAN's config and tensors into ``directory``; ``provenance`` strings go into the safetensors
    metadata. A config beyond the load limits (see ``MAX_*`` above) is refused, so nothing unreadable is written.
    """
    metadata_ = {"format": "pt", "kandistill_version": _library_version(), "torch_version": torch.__version__,
                 **provenance}  # fmt: skip
    bad = {k: type(v).__name__ for k, v in metadata_.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"provenance values must be strings; got {bad}")
    try:
        _check_limits(config)
    except ValueError as err:
        raise StudentFileError(f"{directory}: cannot save a KAN that from_pretrained would refuse: {err}") from None
    atomic_write_bytes(directory / WEIGHTS_NAME, safetensors.torch.save(tensors, metadata=metadata_))
    atomic_write_json(directory / CONFIG_NAME, {"model_type": "kan", **config.to_dict()})
    return directory


def implied_shapes(config: KANConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape in a KAN built from ``config``, computed without building it.

    Mirrors the buffers and parameters of :class:`kandistill.students.layer.KANLayer`; a test holds the two equal.
    """
    e, g, k = config.ensemble, config.grid, config.k
    shapes = {}
    for n, (i, o) in enumerate(itertools.pairwise(config.width)):
        layer = {
            "coef": (e, i, g + k, o), "scale_base": (e, i, o), "scale_spline": (e, i, o), "bias": (e, o),
            "sym_affine": (e, i, o, 4), "grid": (e, i, g + 2 * k + 1), "mask": (e, i, o), "sym_mask": (e, i, o),
            "sym_index": (e, i, o),
        }  # fmt: skip
        shapes |= {f"layers.{n}.{name}": shape for name, shape in layer.items()}
    return shapes


def _check_limits(config: KANConfig) -> None:
    """Refuse a config whose model would exceed the documented limits (before anything is allocated)."""
    if len(config.width) > MAX_LAYERS + 1:
        raise StudentFileError(f"KAN width: {len(config.width)} entries; at most {MAX_LAYERS + 1} "
                               f"({MAX_LAYERS} layers)")  # fmt: skip
    if max(config.width) > MAX_WIDTH:
        raise StudentFileError(f"KAN width: {reprlib.repr(config.width)} has a layer of {max(config.width)} nodes; "
                         f"at most {MAX_WIDTH}")  # fmt: skip
    for name, limit in (("grid", MAX_GRID), ("k", MAX_K), ("ensemble", MAX_ENSEMBLE)):
        if getattr(config, name) > limit:
            raise StudentFileError(f"KAN {name}: {getattr(config, name)}; at most {limit}")
    n_values = sum(math.prod(shape) for shape in implied_shapes(config).values())
    if n_values > MAX_VALUES:
        raise StudentFileError(
            f"KAN of width {config.width}, grid {config.grid}, k {config.k}, ensemble {config.ensemble} holds "
            f"{n_values} values; at most {MAX_VALUES} values"
        )


def _read_config(path: Path) -> KANConfig:
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise StudentFileError(f"{path}: {size} bytes; a KAN config is at most {MAX_CONFIG_BYTES} bytes")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # bad JSON, bad UTF-8, nesting too deep, a 5000-digit number
        raise StudentFileError(f"{path}: not valid JSON ({type(err).__name__}: {reprlib.repr(str(err))})") from None
    if not isinstance(raw, dict) or raw.get("model_type") != "kan":
        raise StudentFileError(f'{path}: not a KAN config (expected "model_type": "kan")')
    raw.pop("model_type")
    known = set(KANConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise StudentFileError(f"{path}: unknown config keys {reprlib.repr(unknown)}")
    try:
        config = KANConfig(**raw)
        _check_limits(config)
    except (TypeError, ValueError) as err:
        raise StudentFileError(f"{path}: {err}") from None
    return config


def _check_header(
    header: dict[str, tuple[tuple[int, ...], str]], config: KANConfig, config_path: Path, weights_path: Path
) -> None:
    """Compare the tensors' names, shapes and dtypes (read from the header alone) with ``config``: every tensor
    but ``sym_index`` must have the model's one floating dtype."""
    expected = implied_shapes(config)
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        raise StudentFileError(
            f"{weights_path} does not match {config_path}: missing tensors {reprlib.repr(missing)}, "
            f"unexpected {reprlib.repr(unexpected)}"
        )
    for name, (shape, _) in header.items():
        if shape != expected[name]:
            raise StudentFileError(
                f"{weights_path}: tensor {name!r} has shape {shape}, but {config_path} (width={config.width}, "
                f"grid={config.grid}, k={config.k}, ensemble={config.ensemble}) implies {expected[name]}"
            )

    def dtype_of(name: str) -> str:
        return _DTYPE_NAMES.get(header[name][1], header[name][1])

    model_dtype = dtype_of("layers.0.coef")
    if model_dtype not in _FLOAT_DTYPES:
        raise StudentFileError(
            f"{weights_path}: tensor 'layers.0.coef' has dtype {model_dtype}; expected one of {_FLOAT_DTYPES}"
        )
    for name in header:
        expected_dtype = "int64" if name.endswith(".sym_index") else model_dtype
        if dtype_of(name) != expected_dtype:
            raise StudentFileError(f"{weights_path}: tensor {name!r} has dtype {dtype_of(name)}; "
                                   f"expected {expected_dtype}")  # fmt: skip


def _check_values(tensors: dict[str, torch.Tensor], n_symbols: int, path: Path) -> None:
    """Refuse values that no training produces: they would load and predict wrong numbers silently."""
    for name, t in tensors.items():
        kind = name.rsplit(".", 1)[-1]
        if kind == "sym_index":
            if t.numel() and not 0 <= t.min() <= t.max() < n_symbols:
                raise StudentFileError(f"{path}: tensor {name!r} names symbols outside the {n_symbols} in the config")
            continue
        if not torch.isfinite(t).all():
            raise StudentFileError(f"{path}: tensor {name!r} holds NaN or infinite values")
        if kind in ("mask", "sym_mask") and not ((t == 0) | (t == 1)).all():
            raise StudentFileError(f"{path}: tensor {name!r} holds values other than 0 and 1")
        if kind == "grid" and not (t.diff(dim=-1) > 0).all():
            raise StudentFileError(f"{path}: tensor {name!r} is not strictly increasing along its knots")
        if t.numel() and t.abs().max() > MAX_ABS_VALUE:
            raise StudentFileError(
                f"{path}: tensor {name!r} holds values beyond +-{MAX_ABS_VALUE:g} (largest {t.abs().max():g})"
            )


def read_kan_files(
    directory: Path, symbols: SymbolLibrary
) -> tuple[KANConfig, dict[str, torch.Tensor], dict[str, str]]:
    """A KAN's checked config, tensors (in the model's dtype) and provenance from ``directory``.

    Everything is checked before a model can be built: the config's types and sizes (see the
    limits above), then the tensors' names, shapes and dtypes from the safetensors header, then
    their values, so a tampered or corrupt folder fails with an error naming the file.
    """
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"KAN.from_pretrained: missing {path}")
    config = _read_config(config_path)
    unknown = [name for name in config.symbols if name not in symbols]
    if unknown:
        raise StudentFileError(f"{config_path}: names symbols {reprlib.repr(unknown)} that the symbol library lacks")
    try:
        with safetensors.safe_open(weights_path, framework="pt") as f:  # one open: one consistent view of the file
            provenance = f.metadata() or {}
            header = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
            _check_header(header, config, config_path, weights_path)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (safetensors.SafetensorError, OSError) as err:
        raise StudentFileError(f"{weights_path}: not a readable safetensors file ({err})") from None
    _check_values(tensors, len(config.symbols), weights_path)
    return config, tensors, {k: v for k, v in provenance.items() if k != "format"}
