"""The extract stage: each edge fitted to a library function and composed into sympy (`extract_formula`,
`snap_constants`), formulas as allow-listed JSON trees evaluated without generating code (`to_tree`,
`evaluate`), canonical forms, and a student read as named components (`decompose_student`)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "components": ["ComponentConfig", "ComponentModel", "decompose_student"],
        "edges": ["Extraction", "auto_symbolic", "extract_formula", "snap_constants"],
        "formula": ["FormulaError", "evaluate", "parse_formula", "to_tree"],
    },
)
