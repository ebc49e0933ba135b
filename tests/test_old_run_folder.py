"""A run folder written by an earlier release still loads and predicts the same numbers.

``fixtures/run_23248db`` holds what `Surrogate` reads from two runs written at commit 23248db (before
the layout moved to one ``kandistill`` namespace): the loan demo's student (components) and the
Feynman demo's (one expression), each with its config and formula record; ``expected.json`` holds
their predictions at that commit on fixed rows, for every source.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from kandistill import Surrogate

FIXTURE = Path(__file__).parent / "fixtures" / "run_23248db"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("run", sorted(EXPECTED))
def test_old_run_folder_predicts_the_same(run):
    expected = EXPECTED[run]
    surrogate = Surrogate.from_run(FIXTURE / run, expected["student"])
    for source, values in expected["predictions"].items():
        got = surrogate.predict(expected["rows"], source=source)
        np.testing.assert_allclose(got, np.asarray(values), rtol=1e-6, atol=1e-6, err_msg=f"{run}: {source}")
    assert str(surrogate.formula()) == expected["formula"]
