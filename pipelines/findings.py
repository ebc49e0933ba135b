"""`StudentAudit`: what the report says about one student, shared by the audit (`report`) and its renderings."""

from __future__ import annotations

from dataclasses import dataclass, field

from kandistill.distill.extract.components import ComponentModel
from kandistill.pipelines.surrogate import FormulaRecord


@dataclass
class StudentAudit:
    """What the report says about one student.

    ``plots`` holds the ``formula`` and ``importance`` plots, ``shapes`` one plot per feature (apart, so
    that a feature named ``formula`` cannot take the formula's place); each a path inside the report folder.
    """

    name: str
    output: str
    formula: FormulaRecord | None
    fidelity: dict[str, float]
    importance: dict[str, float]
    plots: dict[str, str] = field(default_factory=dict)
    monotonic: list[dict] = field(default_factory=list)
    protected: list[dict] = field(default_factory=list)
    shapes: dict[str, str] = field(default_factory=dict)
    components: ComponentModel | None = None  # of the first output
    component_plots: list[str] = field(default_factory=list)  # one per component, in its order
    wordings: dict[str, str] = field(default_factory=dict)  # with paraphrases: the checks are also per wording
