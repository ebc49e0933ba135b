"""Prompt templates: text with ``{feature}`` slots, filled from a columnar batch of inputs."""

from __future__ import annotations

import string
from dataclasses import dataclass

from teachers.base import TeacherError
from teachers.schema import Batch, FeatureSchema


@dataclass(frozen=True)
class Template:
    """A ``str.format``-style template; every slot must name a feature of the schema."""

    text: str

    @property
    def slots(self) -> list[str]:
        try:
            fields = [name for _, name, spec, conv in string.Formatter().parse(self.text) if name is not None]
        except ValueError as err:
            raise TeacherError(f"template {self.text!r}: {err}") from err
        for name in fields:
            if not name.isidentifier():
                raise TeacherError(f"template {self.text!r}: slot {{{name}}} is not a plain feature name")
        return fields

    def check(self, schema: FeatureSchema) -> None:
        """Raise `TeacherError` naming any slot without a feature."""
        missing = [s for s in self.slots if s not in schema.names]
        if missing:
            raise TeacherError(f"template slot {{{missing[0]}}} has no feature; the schema has {schema.names}")

    def render(self, schema: FeatureSchema, batch: Batch) -> list[str]:
        """One prompt per row; values are checked against the schema first."""
        self.check(schema)
        schema.encode(batch)
        n = len(batch[schema.names[0]])
        slots = set(self.slots)
        return [
            self.text.format(**{f.name: f.format(batch[f.name][i]) for f in schema.features if f.name in slots})
            for i in range(n)
        ]
