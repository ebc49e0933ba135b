"""kandistill: distil black-box models into small, inspectable KAN students, and audit them.

The repository's root is this package (``pyproject.toml`` maps it), and its four top-level folders are the
sub-packages, each depending only on those below it: ``kandistill.pipelines`` (config, runner, CLI, audit,
`Surrogate`) -> ``kandistill.distill`` (the engines of each stage) -> ``kandistill.teachers`` (models that
answer inputs) and ``kandistill.students`` (the KAN). The public names below are imported on first use
(`lazy_loader`), so ``import kandistill`` imports no torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "students": ["KAN"],
        "teachers.causal_lm": ["CausalLMTeacher"],
        "teachers.encoder": ["EncoderTeacher"],
        "teachers.mlp": ["MLPTeacher"],
        "pipelines.surrogate": ["Surrogate"],
        "pipelines.config": ["read_config"],
        "pipelines.runner": ["run"],
    },
)
