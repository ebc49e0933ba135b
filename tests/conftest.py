"""Shared fixtures: data from ../shared, read in place (never copied into the project)."""

import csv
from pathlib import Path

import pytest

FEYNMAN_CSV = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "feynman" / "FeynmanEquations.csv"


@pytest.fixture(scope="session")
def feynman_rows() -> list[dict[str, str]]:
    if not FEYNMAN_CSV.is_file():
        pytest.skip(f"the Feynman equation table is missing: expected {FEYNMAN_CSV}")
    with FEYNMAN_CSV.open(encoding="utf-8-sig", newline="") as f:
        return [row for row in csv.DictReader(f) if row["Filename"]]
