"""Formula discovery: the plain search from data (`discover_formula`), separability and symmetry tests on a
teacher, the recursion that splits a problem and solves its parts (`discover_with_teacher`), and the AI
Feynman equations (a few ship in ``data/``; the whole table is read from a path)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "feynman": ["feynman_equation", "feynman_teacher", "is_recovered", "read_feynman_csv"],
        "recursive": ["TeacherDiscoverConfig", "discover_with_teacher"],
        "search": ["DiscoverConfig", "Discovery", "discover_formula"],
    },
)
