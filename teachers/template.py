"""Prompt templates: text with ``{feature}`` slots, filled from a columnar batch of inputs."""

from __future__ import annotations

import string
from dataclasses import dataclass

from teachers.base import TeacherError
from teachers.schema import Batch, FeatureSchema

MAX_TEMPLATE_CHARS = 20_000


@dataclass(frozen=True)
class Template:
    """A ``str.format``-style template; every slot must name a feature of the schema."""

    text: str

    @property
    def slots(self) -> list[str]:
        """The slot names, in order. Only plain ``{feature}`` slots are allowed: a format spec or a
        conversion (``{age:>999999999}``, ``{age!r}``) could fail or exhaust memory at render time."""
        if len(self.text) > MAX_TEMPLATE_CHARS:
            raise TeacherError(f"template: at most {MAX_TEMPLATE_CHARS} characters, got {len(self.text)}")
        try:
            parts = list(string.Formatter().parse(self.text))
        except ValueError as err:
            raise TeacherError(f"template {self.text[:80]!r}: {err}") from None
        fields = []
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise TeacherError(f"template slot {shown[:80]} is not a plain {{feature}} slot "
                                   "(no format specs, conversions, indexing or attributes)")  # fmt: skip
            fields.append(name)
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
