"""The run config: one YAML file describes the teacher, its inputs, the students and the checks.

Validated by pydantic models that map one-to-one onto the stages' arguments. Unknown keys are
errors, and every error names the field, the value and what was expected::

    students[1].hidden[0]: expected a positive integer, got -3

Cross-field checks (a template slot with no feature, a check on an unknown feature, a missing model
folder) run here too, so a bad config fails before any work.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from kandistill.distill.discover.feynman import FeynmanTableError, feynman_equation
from kandistill.distill.train.config import StudentSpec, TrainConfig
from kandistill.pipelines.examples import example_configs, example_path
from kandistill.teachers.names import InvalidNameError, check_slug
from kandistill.teachers.schema import (
    MAX_FEATURES,
    MAX_VALUE_CHARS,
    MAX_VALUES,
    CategoricalFeature,
    FeatureSchema,
    SchemaError,
)
from kandistill.teachers.tasks import LOAN_LABELS, LOAN_SCHEMA, LOAN_TEMPLATE, diabetes_schema
from kandistill.teachers.template import MAX_TEMPLATE_CHARS, MAX_TEMPLATES, TEMPLATE_FEATURE, Template, Templates

MAX_CONFIG_BYTES = 1_000_000


def _slug(value: str) -> str:
    try:
        return check_slug(value, "name")
    except InvalidNameError as err:
        raise ValueError(str(err).removeprefix("name: ")) from None


Slug = Annotated[str, AfterValidator(_slug)]
Text = Annotated[str, Field(max_length=4096)]
Count = Annotated[int, Field(gt=0, le=1_000_000)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
Word = Annotated[str, Field(max_length=200)]  # a label's verbalizer (one surface form)


class ConfigError(ValueError):
    """A config that cannot run; the message names each bad field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureConfig(Strict):
    """A numeric feature (``low``, ``high``, ``integer``) or a categorical one (``values``)."""

    name: str = Field(max_length=64)
    low: float | None = None
    high: float | None = None
    integer: bool = False
    values: list[Annotated[str, Field(max_length=MAX_VALUE_CHARS)]] | None = Field(default=None, max_length=MAX_VALUES)

    @model_validator(mode="after")
    def _kind(self) -> FeatureConfig:
        numeric = self.low is not None or self.high is not None
        if numeric == (self.values is not None):
            raise ValueError("expected either low and high (numeric) or values (categorical)")
        if numeric and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError(f"expected low < high, got low={self.low}, high={self.high}")
        return self


class LoanRuleConfig(Strict):
    income_coef: float = 0.08
    debt_coef: float = -0.15
    bias: float = -2.0
    protected_effect: float = 0.0


class _Teacher(Strict):
    """Every teacher config: ``kind`` (first, so that a dumped config reads kind first) names its class."""

    kind: str


class _ModelTeacher(_Teacher):
    """A teacher read from a model: ``path`` is a folder, a Hub id, a ``.gguf`` file or ``package:NAME``."""

    path: Text

    @model_validator(mode="after")
    def _path_exists(self) -> _ModelTeacher:
        if self.path.startswith(("/", ".", "~")) and not Path(self.path).expanduser().exists():
            raise ValueError(f"path: model folder {self.path} does not exist")
        return self


class _TransformerTeacher(_ModelTeacher):
    """Options of a Hugging Face transformer (`kandistill.teachers.loading`)."""

    template: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    trust_remote_code: bool = False
    revision: Annotated[str, Field(max_length=200)] | None = None
    batch_size: Annotated[int, Field(gt=0, le=4096)] = 16


class CausalLMConfig(_TransformerTeacher):
    """`kandistill.teachers.causal_lm.CausalLMTeacher`: the log-probabilities of a label set after a prompt.

    ``templates``: paraphrases of one question, a list (named t1, t2, ...) or ``{name: text}``; each row is
    asked in one of them, named by the categorical feature ``template``. ``labels``: a word per label, or a list
    of its surface forms. ``chat``: wrap each prompt in the tokenizer's chat template.
    """

    kind: Literal["causal_lm"]
    templates: (
        list[Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS)]]
        | dict[Slug, Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS)]]
        | None
    ) = Field(default=None, max_length=MAX_TEMPLATES)
    chat: bool = False
    labels: dict[Slug, Word | list[Word]] = Field(max_length=100)
    taps: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=100)
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | None = None

    @model_validator(mode="after")
    def _one_wording(self) -> CausalLMConfig:
        if self.template is None and self.templates is None:
            raise ValueError("a causal_lm teacher needs template (or templates)")
        if self.template is not None and self.templates is not None:
            raise ValueError("expected template (one wording) or templates (paraphrases), not both")
        for label, forms in self.labels.items():
            if isinstance(forms, list) and not 0 < len(forms) <= 50:
                raise ValueError(f"labels.{label}: expected 1 to 50 surface forms, got {len(forms)}")
        return self


class EncoderConfig(_TransformerTeacher):
    """`kandistill.teachers.encoder.EncoderTeacher`: a sentence's cosine similarity to each reference."""

    kind: Literal["encoder"]
    template: str = Field(max_length=MAX_TEMPLATE_CHARS)
    references: dict[Slug, Text] = Field(max_length=100)


class MLPConfig(_ModelTeacher):
    """`kandistill.teachers.mlp.MLPTeacher` from a folder that `MLPTeacher.save_pretrained` wrote."""

    kind: Literal["mlp"]


class EmbeddedLlamaConfig(_Teacher):
    """The embedded loan Llama (`kandistill.teachers.embedded`), trained in-process on a planted ``rule``."""

    kind: Literal["embedded_llama"]
    rule: LoanRuleConfig = Field(default_factory=LoanRuleConfig)
    train_steps: Annotated[int, Field(gt=0, le=100_000)] = 800
    taps: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=100)
    batch_size: Annotated[int, Field(gt=0, le=4096)] = 16


class FeynmanMLPConfig(_Teacher):
    """An MLP fitted to a Feynman ``equation`` (built in, or from the table ``csv``)."""

    kind: Literal["feynman_mlp"]
    equation: Annotated[str, Field(max_length=32)] = "I.12.1"
    csv: Text | None = None


class DiabetesMLPConfig(_Teacher):
    """An MLP fitted to scikit-learn's bundled diabetes data (no options)."""

    kind: Literal["diabetes_mlp"]


# The one place that says which fields each teacher kind takes: the runner builds from it, the report shows it.
TeacherConfig = Annotated[
    CausalLMConfig | EncoderConfig | MLPConfig | EmbeddedLlamaConfig | FeynmanMLPConfig | DiabetesMLPConfig,
    Field(discriminator="kind"),
]
TEACHER_KINDS = {"causal_lm": CausalLMConfig, "encoder": EncoderConfig, "mlp": MLPConfig,
                 "embedded_llama": EmbeddedLlamaConfig, "feynman_mlp": FeynmanMLPConfig,
                 "diabetes_mlp": DiabetesMLPConfig}  # fmt: skip


class InputsConfig(Strict):
    """Where the teacher's inputs come from: a sampler over the features, or a CSV file."""

    sampler: Literal["uniform", "lhs", "grid"] = "lhs"
    rows: Annotated[int, Field(gt=0, le=10_000_000)] = 4000
    seed: Seed = 0
    csv: Text | None = None
    shard_size: Count = 1024


class StudentConfig(Strict):
    """A student of cache columns (``targets``) or of a label set's log-odds (``labels``)."""

    name: Slug
    targets: list[Annotated[str, Field(max_length=200)]] | None = Field(default=None, max_length=1000)
    labels: list[Slug] | None = Field(default=None, max_length=100)
    loss: Literal["mse", "mse_logodds", "kl", "soft_ce"] | None = None
    temperature: PositiveFloat = 1.0
    extract: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> StudentConfig:
        if (self.targets is None) == (self.labels is None):
            raise ValueError("expected exactly one of targets (cache columns) or labels (a label set)")
        if self.labels is not None and len(self.labels) < 2:
            raise ValueError("labels: expected at least two labels")
        return self


class TrainSection(Strict):
    """Maps onto `kandistill.distill.train.loop.TrainConfig`."""

    hidden: list[Annotated[int, Field(gt=0, le=1024)]] = Field(default_factory=lambda: [5], max_length=8)
    grid: Annotated[int, Field(gt=0, le=200)] = 5
    refine_grid: Annotated[int, Field(gt=0, le=1000)] | None = 10
    optimizer: Literal["auto", "lbfgs", "adam"] = "auto"
    steps: Count | None = None
    sparse_steps: int = Field(default=0, ge=0, le=1_000_000)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: Seed = 0
    members: Annotated[int, Field(gt=0, le=64)] = 1
    schedule: Literal["constant", "cosine"] = "constant"
    warmup: float = Field(default=0.05, ge=0, le=1)
    polish_steps: int = Field(default=0, ge=0, le=100_000)
    smoothness: float = Field(default=0.0, ge=0, le=1e6)
    grid_update_every: int = Field(default=10, ge=0, le=1_000_000)
    grid_update_until: int = Field(default=50, ge=0, le=1_000_000)
    grid_uniform_fraction: float = Field(default=0.02, ge=0, le=1)
    grid_margin: float = Field(default=0.0, ge=0, le=10)
    selection_fraction: float = Field(default=0.0, ge=0, le=0.9)
    batch_size: Annotated[int, Field(gt=0, le=10_000_000)] | None = None


class ExtractSection(Strict):
    """Maps onto `kandistill.distill.extract.components.ComponentConfig` and, with ``mode: formula``,
    `kandistill.distill.discover.search.DiscoverConfig`, for each student with ``extract: true``.

    ``mode: components`` (the default) reads a student as named parts (main effects, the
    ``interactions`` strongest pairwise interactions), each a formula, an indicator table, a curve or a
    surface, whose formula is their sum. ``mode: formula`` also searches one expression for the whole
    student (for exact laws); it is kept only if it is finite on every row and reaches ``min_r2`` on
    held-out rows. ``seconds`` bounds the whole stage per student.
    """

    mode: Literal["components", "formula"] = "components"
    seconds: float = Field(default=600.0, gt=0, le=86_400)
    rows: Annotated[int, Field(gt=0, le=100_000)] = 1500
    interactions: Annotated[int, Field(ge=0, le=16)] = 3
    min_share: float = Field(default=0.005, ge=0, le=1)
    tolerance: float = Field(default=0.002, ge=0, le=1)
    min_r2: float = Field(default=0.5, le=1)
    hidden: Annotated[int, Field(gt=0, le=64)] | None = 5
    simplicity_margin: float = Field(default=0.01, ge=0)
    complexity_weight: float = Field(default=2.0, ge=0)
    snap_growth: float = Field(default=1.0, ge=1)


class ChecksConfig(Strict):
    """Declared checks: monotonic features, and protected attributes tested by counterfactual flips."""

    monotonic: dict[str, Literal["increasing", "decreasing"]] = Field(default_factory=dict, max_length=MAX_FEATURES)
    protected: list[str] = Field(default_factory=list, max_length=MAX_FEATURES)
    protected_threshold: PositiveFloat = 0.1
    rows: Annotated[int, Field(gt=0, le=100_000)] = 1000
    reference: dict[str, Annotated[str, Field(max_length=MAX_VALUE_CHARS)]] = Field(
        default_factory=dict, max_length=MAX_FEATURES
    )  # the value each protected attribute's effects are measured against (default: its first value)


class AuditSection(Strict):
    """The audit stage's output: ``pdf: true`` also prints ``report/report.pdf`` (headless Chromium)."""

    pdf: bool = False


class RunConfig(Strict):
    name: Slug = "run"
    teacher: TeacherConfig
    features: list[FeatureConfig] | None = Field(default=None, max_length=MAX_FEATURES)
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    students: list[StudentConfig] = Field(max_length=1000)
    train: TrainSection = Field(default_factory=TrainSection)
    extract: ExtractSection = Field(default_factory=ExtractSection)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    audit: AuditSection = Field(default_factory=AuditSection)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if not self.students:
            raise ValueError("students: expected at least one student")
        names = [s.name for s in self.students]
        if len(set(names)) != len(names):
            raise ValueError(f"students: names must be distinct, got {names}")
        if self.features is None and self.teacher.kind in ("causal_lm", "encoder"):
            raise ValueError(f"features: a {self.teacher.kind} teacher needs its features declared")
        schema = self.schema()
        if schema is not None:
            template = self.template()
            if template is not None:
                try:
                    Template(template).check(schema)
                except ValueError as err:
                    raise ValueError(f"teacher.template: {err}") from None
            if getattr(self.teacher, "templates", None) is not None:
                try:
                    Templates.of(self.teacher.templates).check(schema)
                except ValueError as err:
                    raise ValueError(f"teacher.{err}") from None
            labels = self.labels()
            for student in self.students:
                unknown = [label for label in student.labels or [] if labels is not None and label not in labels]
                if unknown:
                    raise ValueError(f"students: {student.name!r} names label {unknown[0]!r}; the teacher's labels "
                                     f"are {list(labels)}")  # fmt: skip
            for field, names_ in (("checks.monotonic", list(self.checks.monotonic)),
                                  ("checks.protected", self.checks.protected)):  # fmt: skip
                unknown = [n for n in names_ if n not in schema.names]
                if unknown:
                    raise ValueError(f"{field}: unknown feature {unknown[0]!r}; the features are {schema.names}")
            numeric = [n for n in self.checks.protected if not isinstance(schema[n], CategoricalFeature)]
            if numeric:
                raise ValueError(f"checks.protected: {numeric[0]!r} is numeric; protected attributes are categorical")
            for name, value in self.checks.reference.items():
                if name not in self.checks.protected:
                    raise ValueError(f"checks.reference: {name!r} is not in checks.protected {self.checks.protected}")
                if value not in schema[name].values:
                    raise ValueError(f"checks.reference.{name}: unknown value {value!r}; the values are "
                                     f"{list(schema[name].values)}")  # fmt: skip
        return self

    def schema(self) -> FeatureSchema | None:
        """The declared features, or those the teacher brings (None only for an MLP folder not yet read)."""
        if self.teacher.kind == "feynman_mlp":
            try:
                return feynman_equation(self.teacher.equation, self.teacher.csv).schema()
            except FeynmanTableError as err:
                raise ValueError(f"teacher.equation: {err}") from None
        if self.teacher.kind == "diabetes_mlp":
            return diabetes_schema()
        if self.features is not None:
            try:
                schema = FeatureSchema.from_dict(
                    [{k: v for k, v in f.model_dump().items() if v is not None and (k != "integer" or f.values is None)}
                     for f in self.features])  # fmt: skip
            except SchemaError as err:
                raise ValueError(f"features: {err}") from None
            if getattr(self.teacher, "templates", None) is None:
                return schema
            if TEMPLATE_FEATURE in schema.names:
                raise ValueError(f"features: the name {TEMPLATE_FEATURE!r} is taken by teacher.templates (each row's "
                                 "paraphrase); rename that feature")  # fmt: skip
            try:
                return Templates.of(self.teacher.templates).extend(schema)
            except ValueError as err:
                raise ValueError(f"teacher.{err}") from None
        return LOAN_SCHEMA if self.teacher.kind == "embedded_llama" else None

    def template(self) -> str | None:
        """The one prompt template (None for paraphrases and for teachers without prompts)."""
        return LOAN_TEMPLATE if self.teacher.kind == "embedded_llama" else getattr(self.teacher, "template", None)

    def templates(self) -> dict[str, str] | None:
        """The paraphrases by name (``teacher.templates``), or None for one template."""
        templates = getattr(self.teacher, "templates", None)
        return Templates.of(templates).texts if templates is not None else None

    def labels(self) -> dict[str, str | list[str]] | None:
        return LOAN_LABELS if self.teacher.kind == "embedded_llama" else getattr(self.teacher, "labels", None)

    def student_specs(self) -> list[StudentSpec]:
        """The students as the train stage takes them."""
        return [StudentSpec.for_labels(s.name, s.labels, loss=s.loss, temperature=s.temperature) if s.labels
                else StudentSpec(s.name, tuple(s.targets), loss=s.loss, temperature=s.temperature)
                for s in self.students]  # fmt: skip

    def train_config(self, progress: bool = True) -> TrainConfig:
        return TrainConfig(**self.train.model_dump(), progress=progress)


def describe_error(error: ValidationError) -> str:
    """One line per problem: ``train.hidden[1]: expected a positive number, got -3``."""
    lines = []
    for item in error.errors():
        loc, kind, context = item["loc"], item["type"], item.get("ctx", {})
        teacher = loc[1] if loc[:1] == ("teacher",) and len(loc) > 1 and loc[1] in TEACHER_KINDS else None
        if teacher is not None:  # the union's tag: teacher.causal_lm.labels reads teacher.labels
            loc = (loc[0], *loc[2:])
        path = ""
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = {
            "greater_than": f"expected a {'positive ' if context.get('gt') == 0 else ''}number"
            + ("" if context.get("gt") == 0 else f" greater than {context.get('gt')}"),
            "int_parsing": "expected an integer",
            "int_type": "expected an integer",
            "extra_forbidden": "unknown key (not part of the config schema)",
            "missing": "required, but missing",
            "less_than_equal": f"expected at most {context.get('le')}",
            "too_long": f"expected at most {context.get('max_length')} items",
            "string_too_long": f"expected at most {context.get('max_length')} characters",
            "union_tag_not_found": f"kind: required, one of {sorted(TEACHER_KINDS)}",
            "union_tag_invalid": f"kind: expected one of {sorted(TEACHER_KINDS)}",
        }.get(kind) or re.sub(r"^Value error, ", "", item["msg"])
        if teacher is not None and kind == "extra_forbidden":
            fields = sorted(set(TEACHER_KINDS[teacher].model_fields) - {"kind"})
            message = f"the {teacher} teacher takes no such key; it takes {', '.join(fields) or 'no other key'}"
        message = message[0].lower() + message[1:]
        value = item.get("input")
        hidden = kind in ("missing", "value_error", "too_long") or isinstance(value, dict)
        shown = "" if hidden else f", got {_short(value)}"
        lines.append(f"{path}: {message}{shown}" if path else f"{message}{shown}")
    return "\n".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_config(data: Any, source: str = "config") -> RunConfig:
    """Validate plain data (a YAML document) into a `RunConfig`, or raise `ConfigError` naming the fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}:\n{describe_error(err)}") from None


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases: ``*name`` can make a few bytes expand into billions of nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed "
                              "in run configs; write the value out")  # fmt: skip
        return super().compose_node(parent, index)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config: data only (safe loading, no tags that build objects, no
    aliases), at most ``MAX_CONFIG_BYTES``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes; a run config is at most {MAX_CONFIG_BYTES}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err)[:300]}") from None
    return parse_config(data, str(path))


def read_config(ref: str | Path) -> RunConfig:
    """A run config from a file, or, where ``ref`` is no file but an example's name (`example_configs`: ``demo_loan``,
    ...), the example that ships inside the package, read with `importlib.resources` (an installed wheel has no
    ``pipelines/configs/`` folder beside the user)."""
    if not Path(ref).exists() and str(ref) in example_configs():
        with example_path(str(ref)) as path:
            return load_config(path)
    return load_config(ref)
