"""The targets stage: the teacher's inputs (sampled or read), its answers cached as sharded, resumable Arrow
files (`SoftTargetCache`), and the per-rank folder locks that keep two runs of one folder apart."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "cache": ["CacheError", "SoftTargetCache", "generate_targets", "read_inputs", "sample_inputs"],
        "lock": ["FolderBusyError", "folder_lock"],
    },
)
