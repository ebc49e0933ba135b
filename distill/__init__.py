"""Distillation engines: fitting KAN students (and, later, soft targets and extraction)."""

from kandistill.distill.fit import FitConfig, FitHistory, fit_kan

__all__ = ["FitConfig", "FitHistory", "fit_kan"]
