"""Prompt templates: text with ``{feature}`` slots, filled from a columnar batch of inputs; `Templates`: several
paraphrases of one question, each row asked in the one its ``template`` feature names."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from kandistill.teachers.base import TeacherError
from kandistill.teachers.schema import Batch, CategoricalFeature, FeatureSchema

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
        return [self.fill(schema, batch, i) for i in range(len(batch[schema.names[0]]))]

    def fill(self, schema: FeatureSchema, batch: Batch, row: int) -> str:
        """Row ``row`` of a checked batch, as a prompt."""
        slots = self._slot_set
        return self.text.format(**{f.name: f.format(batch[f.name][row]) for f in schema.features if f.name in slots})

    @cached_property
    def _slot_set(self) -> frozenset[str]:
        return frozenset(self.slots)


TEMPLATE_FEATURE = "template"
MAX_TEMPLATES = 100


@dataclass(frozen=True)
class Templates:
    """Paraphrases of one question, by name. Each row of inputs names the paraphrase it is asked in, in the
    categorical feature ``template`` (`TEMPLATE_FEATURE`): the cache records it, students see it as an input,
    and the audit reports every check per paraphrase, so that a finding never rests on one wording."""

    named: tuple[tuple[str, Template], ...]

    def __post_init__(self) -> None:
        names = [name for name, _ in self.named]
        if not 2 <= len(names) <= MAX_TEMPLATES:
            raise TeacherError(f"templates: expected 2 to {MAX_TEMPLATES} paraphrases, got {len(names)} "
                               "(one wording is a template, not templates)")  # fmt: skip
        if len(set(names)) != len(names):
            raise TeacherError(f"templates: names must be distinct, got {names}")
        if len({template.text for _, template in self.named}) != len(names):
            raise TeacherError("templates: two paraphrases have the same text")

    @classmethod
    def of(cls, templates: Mapping[str, str] | Sequence[str]) -> Templates:
        """From ``{name: text}``, or a list of texts named ``t1``, ``t2``, ... in order."""
        if isinstance(templates, str):
            raise TeacherError("templates: expected a list or a mapping of paraphrases, got one string")
        items = templates.items() if isinstance(templates, Mapping) else ((f"t{i + 1}", t) for i, t in
                                                                           enumerate(templates))  # fmt: skip
        return cls(tuple((str(name), Template(text)) for name, text in items))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.named]

    @property
    def texts(self) -> dict[str, str]:
        return {name: template.text for name, template in self.named}

    def feature(self) -> CategoricalFeature:
        """The categorical input that names each row's paraphrase."""
        return CategoricalFeature(TEMPLATE_FEATURE, tuple(self.names))

    def extend(self, schema: FeatureSchema) -> FeatureSchema:
        """``schema`` with the ``template`` feature appended, or ``schema`` itself when it has that feature
        already with these names (a schema read back from a cache or a config); anything else is an error."""
        if TEMPLATE_FEATURE not in schema.names:
            return FeatureSchema((*schema.features, self.feature()))
        if schema[TEMPLATE_FEATURE] != self.feature():
            raise TeacherError(f"feature {TEMPLATE_FEATURE!r} is reserved for the paraphrase of each row; expected "
                               f"values {self.names}, got {schema[TEMPLATE_FEATURE]}")  # fmt: skip
        return schema

    def check(self, schema: FeatureSchema) -> None:
        """Raise `TeacherError` naming a paraphrase with a slot that has no feature, or a slot ``{template}``."""
        for name, template in self.named:
            try:
                template.check(schema)
            except TeacherError as err:
                raise TeacherError(f"templates.{name}: {err}") from None
            if TEMPLATE_FEATURE in template.slots:
                raise TeacherError(f"templates.{name}: the slot {{{TEMPLATE_FEATURE}}} names the paraphrase itself")
        self.extend(schema)

    def render(self, schema: FeatureSchema, batch: Batch) -> list[str]:
        """One prompt per row, each in the paraphrase its ``template`` value names."""
        self.check(schema)
        schema.encode(batch)
        by_name = dict(self.named)
        return [by_name[name].fill(schema, batch, i) for i, name in enumerate(batch[TEMPLATE_FEATURE])]


def as_template(template: str | Template | Templates | Mapping[str, str] | Sequence[str]) -> Template | Templates:
    """One template (a string), or paraphrases (a list of texts, or ``{name: text}``)."""
    if isinstance(template, Template | Templates):
        return template
    return Template(template) if isinstance(template, str) else Templates.of(template)
