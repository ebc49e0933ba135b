"""KAN students: the config, the layer, the network, the symbol library, their files and atomic writes.

This package imports none of kandistill's other packages.
"""

from kandistill.students.config import KANConfig
from kandistill.students.kan import KAN, EdgeValues, smoothness_penalty, sparsity_penalty
from kandistill.students.layer import KANLayer
from kandistill.students.symbols import DEFAULT_SYMBOLS, Symbol, SymbolLibrary

__all__ = [
    "DEFAULT_SYMBOLS",
    "KAN",
    "EdgeValues",
    "KANConfig",
    "KANLayer",
    "Symbol",
    "SymbolLibrary",
    "smoothness_penalty",
    "sparsity_penalty",
]
