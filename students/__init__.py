"""KAN students: the config, the layer, the network, the symbol library, their files and atomic writes.

This package imports none of kandistill's other packages.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["KANConfig"],
        "kan": ["KAN", "EdgeValues", "smoothness_penalty", "sparsity_penalty"],
        "layer": ["KANLayer"],
        "symbols": ["DEFAULT_SYMBOLS", "Symbol", "SymbolLibrary"],
    },
)
