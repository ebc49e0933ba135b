"""The run configs that ship inside the package (``pipelines/configs/NAME.yaml``), read with `importlib.resources`
(an installed wheel has no ``pipelines/configs/`` folder beside the user). Light: the command line lists them in
its help without loading any model library."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path


def example_configs() -> list[str]:
    """The names of the shipped run configs: ``demo_loan``, ``demo_feynman``, ..."""
    folder = resources.files("kandistill.pipelines").joinpath("configs")
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


@contextlib.contextmanager
def example_path(name: str) -> Iterator[Path]:
    """A file path of the shipped config ``name`` for the ``with`` block."""
    with resources.as_file(resources.files("kandistill.pipelines").joinpath("configs", f"{name}.yaml")) as path:
        yield path
