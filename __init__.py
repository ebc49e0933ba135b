"""kandistill: distil black-box models into small, inspectable KAN students, and audit them.

The repository's root is this package (``pyproject.toml`` maps it), and its four top-level folders are the
sub-packages, each depending only on those below it: ``kandistill.pipelines`` (config, runner, CLI, audit,
`Surrogate`) -> ``kandistill.distill`` (the engines of each stage) -> ``kandistill.teachers`` (models that
answer inputs) and ``kandistill.students`` (the KAN). The public names below are imported on first use,
so ``import kandistill`` imports no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "KAN": "kandistill.students",
    "CausalLMTeacher": "kandistill.teachers.causal_lm",
    "EncoderTeacher": "kandistill.teachers.encoder",
    "MLPTeacher": "kandistill.teachers.mlp",
    "Surrogate": "kandistill.pipelines.surrogate",
    "read_config": "kandistill.pipelines.config",
    "run": "kandistill.pipelines.runner",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kandistill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
