"""Shared fixtures: data from ../shared, read in place (never copied into the project), and the slow
artefacts several test files read (the embedded loan Llama, the quick demo), built once per session."""

import contextlib
import csv
import io
from pathlib import Path

import pytest

FEYNMAN_CSV = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "feynman" / "FeynmanEquations.csv"


@pytest.fixture(scope="session")
def feynman_csv() -> Path:
    """The AI Feynman table (benchmark data): beside the project on its machines and in CI; elsewhere the
    tests that need it are skipped, naming the file."""
    if not FEYNMAN_CSV.is_file():
        pytest.skip(f"benchmark data missing: the AI Feynman table FeynmanEquations.csv, expected at {FEYNMAN_CSV}")
    return FEYNMAN_CSV


@pytest.fixture(scope="session")
def feynman_rows(feynman_csv) -> list[dict[str, str]]:
    with feynman_csv.open(encoding="utf-8-sig", newline="") as f:
        return [row for row in csv.DictReader(f) if row["Filename"]]


@pytest.fixture(scope="session")
def loan_llama(tmp_path_factory) -> Path:
    """The embedded loan Llama with a planted protected-attribute effect, trained once per session."""
    import torch

    from kandistill.teachers.embedded import build_loan_llama
    from kandistill.teachers.tasks import LoanRule

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_loan_llama(tmp_path_factory.mktemp("loan_llama"), LoanRule(protected_effect=-1.0), seed=0)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> tuple[str, Path, str]:
    """`kandistill demo --quick`, once per session: its printed summary, its folder (``loan/``, ``feynman/``)
    and what it wrote to stderr. Tests read it; a test that writes copies what it needs first."""
    from kandistill.pipelines.cli import main

    out = tmp_path_factory.mktemp("demo")
    printed, logged = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(logged):
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    return printed.getvalue(), out, logged.getvalue()


@pytest.fixture(scope="module")
def one_thread():
    """Small models on one thread: as fast, and not slowed by other processes' load (OpenMP contention)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
