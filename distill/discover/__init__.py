"""Formula discovery: the plain search from data (`discover_formula`), separability and symmetry tests on a
teacher, the recursion that splits a problem and solves its parts (`discover_with_teacher`), and the AI
Feynman equations (a few ship in ``data/``; the whole table is read from a path)."""

from kandistill.distill.discover.feynman import feynman_equation, feynman_teacher, is_recovered, read_feynman_csv
from kandistill.distill.discover.recursive import TeacherDiscoverConfig, discover_with_teacher
from kandistill.distill.discover.search import DiscoverConfig, Discovery, discover_formula

__all__ = ["DiscoverConfig", "Discovery", "TeacherDiscoverConfig", "discover_formula", "discover_with_teacher",
           "feynman_equation", "feynman_teacher", "is_recovered", "read_feynman_csv"]  # fmt: skip
