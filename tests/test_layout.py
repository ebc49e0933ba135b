"""One import name: the four packages live under ``kandistill``, whose public names load on first use."""

from __future__ import annotations

import json
import subprocess
import sys

import kandistill


def test_the_public_names_are_reexported_from_kandistill():
    from kandistill.pipelines.surrogate import Surrogate
    from kandistill.students import KAN

    assert kandistill.KAN is KAN and kandistill.Surrogate is Surrogate
    assert set(kandistill.__all__) <= set(dir(kandistill))
    for name in kandistill.__all__:
        assert getattr(kandistill, name).__name__ == name


def test_importing_kandistill_imports_no_heavy_library():
    heavy = "{'torch', 'transformers', 'datasets', 'accelerate'}"
    code = f"import json, sys, kandistill; print(json.dumps(sorted({heavy} & set(sys.modules))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(loaded) == []
