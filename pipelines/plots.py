"""The report's pictures (matplotlib, Agg): shape functions with the data's density, the formula
typeset by mathtext, feature importance. Text from a file or a config is escaped for mathtext
(`plain_text`), and file names never come from a name (`plot_slug`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from kandistill.teachers.schema import CategoricalFeature


def plain_text(value: Any) -> str:
    """Text for matplotlib, which reads text between two ``$`` as mathtext (and fails on a bad one)."""
    text = f"{value:.5g}" if isinstance(value, float) else str(value)
    return text.replace("$", r"\$")


def plot_slug(name: str) -> str:
    """The ASCII letters and digits of ``name`` (at most 40) for a plot's file name, which also holds indexes."""
    return re.sub(r"[^A-Za-z0-9]", "", name)[:40] or "feature"


def shape_plot(path: Path, feature, values: np.ndarray, dependence: np.ndarray, data: np.ndarray, ylabel: str,
               min_span: float = 0.0) -> None:  # fmt: skip
    """The partial dependence over the feature's range, with the data's density below it.

    The y axis spans at least ``min_span``, so that a feature with almost no effect looks flat
    instead of having its noise magnified to fill the plot.
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.2, 3.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if isinstance(feature, CategoricalFeature):
        top.bar(values, dependence, color="#3b6ea8")
        counts = np.bincount(data.astype(int), minlength=len(feature.values))
        bottom.bar(values, counts, color="#999999")
        bottom.set_xticks(values, [plain_text(v) for v in feature.values])
    else:
        top.plot(values, dependence, color="#3b6ea8", lw=2)
        bottom.hist(data, bins=30, color="#999999")
    middle, half = (dependence.max() + dependence.min()) / 2, max(np.ptp(dependence), min_span) / 2
    if not isinstance(feature, CategoricalFeature):
        top.set_ylim(middle - 1.1 * half, middle + 1.1 * half)
    top.set_ylabel(plain_text(ylabel), fontsize=8)
    top.set_title(f"{plain_text(feature.name)}: shape (partial dependence)", fontsize=9)
    bottom.set_ylabel("rows", fontsize=8)
    bottom.set_xlabel(plain_text(feature.name), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def formula_image(path: Path, latex: str, text: str) -> None:
    """The formula typeset by matplotlib's mathtext (plain text when mathtext cannot parse it).

    ``latex`` comes from a formula file: mathtext only lays it out (it runs nothing), and the worst it can do is fail.
    """
    fig = plt.figure(figsize=(0.1, 0.1))
    try:
        fig.text(0, 0, f"${latex}$", fontsize=15)
        fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    except ValueError:
        fig.clf()
        fig.text(0, 0, plain_text(text), fontsize=12, family="monospace")
        fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def importance_plot(path: Path, importance: dict[str, float]) -> None:
    names = sorted(importance, key=importance.get)
    fig, ax = plt.subplots(figsize=(4.2, 0.4 + 0.35 * len(names)))
    ax.barh(range(len(names)), [importance[n] for n in names], color="#3b6ea8")
    ax.set_yticks(range(len(names)), [plain_text(n) for n in names])
    ax.set_xlabel("spread of the partial dependence", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def component_plot(path: Path, component, ylabel: str) -> None:
    """One component of a student (`extract.components.Component`): a curve or formula as a line over its
    grid, a table as bars, a pairwise interaction as a heatmap; titled with its share of the variance."""
    title = f"{plain_text(component.name)}: {component.kind}, {component.variance_share:.1%} of the variance"
    axes = [np.arange(len(a)) if a and isinstance(a[0], str) else np.asarray(a, dtype=float) for a in component.grid]
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    if len(component.grid) == 1:
        if isinstance(component.grid[0][0], str):
            ax.bar(axes[0], component.values, color="#3b6ea8")
            ax.set_xticks(axes[0], [plain_text(v) for v in component.grid[0]], fontsize=8)
        else:
            ax.plot(axes[0], component.values, color="#3b6ea8", lw=2)
        ax.set_xlabel(plain_text(component.features[0]), fontsize=9)
        ax.set_ylabel(plain_text(ylabel), fontsize=8)
    else:
        image = ax.pcolormesh(*(_edges(a) for a in reversed(axes)), component.values, cmap="RdBu_r",
                              vmin=-np.abs(component.values).max(), vmax=np.abs(component.values).max())  # fmt: skip
        fig.colorbar(image, ax=ax).set_label(plain_text(ylabel), fontsize=8)
        for axis, grid, set_ticks in ((axes[1], component.grid[1], ax.set_xticks),
                                      (axes[0], component.grid[0], ax.set_yticks)):  # fmt: skip
            if isinstance(grid[0], str):
                set_ticks(axis, [plain_text(v) for v in grid], fontsize=8)
        ax.set_xlabel(plain_text(component.features[1]), fontsize=9)
        ax.set_ylabel(plain_text(component.features[0]), fontsize=9)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around grid points, for `pcolormesh`."""
    if len(centres) == 1:
        return np.asarray([centres[0] - 0.5, centres[0] + 0.5])
    middle = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - middle[0]], middle, [2 * centres[-1] - middle[-1]]])
