"""KAN students: the layer, the network, the symbol library and their persistence.

This package imports none of kandistill's other packages.
"""

from kandistill.students.kan import KAN, EdgeValues, KANConfig, smoothness_penalty, sparsity_penalty
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
