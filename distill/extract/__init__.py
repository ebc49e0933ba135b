"""The extract stage: each edge fitted to a library function and composed into sympy (`extract_formula`,
`snap_constants`), formulas as allow-listed JSON trees evaluated without generating code (`to_tree`,
`evaluate`), canonical forms, and a student read as named components (`decompose_student`)."""

from kandistill.distill.extract.components import ComponentConfig, ComponentModel, decompose_student
from kandistill.distill.extract.edges import Extraction, auto_symbolic, extract_formula, snap_constants
from kandistill.distill.extract.formula import FormulaError, evaluate, parse_formula, to_tree

__all__ = ["ComponentConfig", "ComponentModel", "Extraction", "FormulaError", "auto_symbolic", "decompose_student",
           "evaluate", "extract_formula", "parse_formula", "snap_constants", "to_tree"]  # fmt: skip
