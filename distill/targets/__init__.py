"""The targets stage: the teacher's inputs (sampled or read), its answers cached as sharded, resumable Arrow
files (`SoftTargetCache`), and the per-rank folder locks that keep two runs of one folder apart."""

from kandistill.distill.targets.cache import (
    CacheError,
    SoftTargetCache,
    generate_targets,
    read_inputs,
    sample_inputs,
)
from kandistill.distill.targets.lock import FolderBusyError, folder_lock

__all__ = ["CacheError", "FolderBusyError", "SoftTargetCache", "folder_lock", "generate_targets", "read_inputs",
           "sample_inputs"]  # fmt: skip
