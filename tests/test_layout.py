"""One import name: the four packages live under ``kandistill``, whose public names load on first use."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

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


ROOT = Path(kandistill.__file__).parent
LIBRARY = ("students", "teachers", "distill", "pipelines")
ALLOWED = {  # which sub-packages each may import: arrows only point down
    "students": {"students"},
    "teachers": {"teachers", "students"},
    "distill": {"distill", "teachers", "students"},
    "pipelines": {"pipelines", "distill", "teachers", "students"},
}


def _module_name(path: Path) -> str:
    parts = ["kandistill", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every library module that ``path`` imports anywhere (in functions too, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(node) for top in ast.walk(tree) if isinstance(top, ast.If)
                   and ast.unparse(top.test).endswith("TYPE_CHECKING") for node in ast.walk(top)}  # fmt: skip
    name = _module_name(path)
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: the library imports by absolute names only"
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for sub in LIBRARY for p in (ROOT / sub).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def test_the_library_has_no_import_cycle():
    graph = import_graph()
    done, path = set(), []

    def visit(module):
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_imports_only_point_down():
    upward = [f"{m} imports {t}" for m, targets in import_graph().items() for t in targets
              if t.split(".")[1] not in ALLOWED[m.split(".")[1]]]  # fmt: skip
    assert upward == []


def test_loading_a_surrogate_and_predicting_imports_no_accelerate_datasets_or_pyarrow():
    run = Path(__file__).parent / "fixtures" / "run_23248db" / "loan"
    code = (
        "import json, sys\n"
        "from kandistill import Surrogate\n"
        f"surrogate = Surrogate.from_run({str(run)!r}, 'decision')\n"
        "rows = {'age': [30], 'income': [50], 'debt': [10], 'gender': ['female']}\n"
        "for source in ('student', 'formula', 'components'):\n"
        "    assert surrogate.predict(rows, source=source).shape == (1, 1)\n"
        "print(json.dumps(sorted({'accelerate', 'datasets', 'pyarrow', 'transformers'} & set(sys.modules))))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(loaded) == []


def test_the_readme_architecture_table_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| package | holds | status |") :].split("\n\n", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines()[2:]}
    missing = [str(path.relative_to(ROOT)) for folder in (*LIBRARY, "scripts")
               for path in sorted((ROOT / folder).rglob("*")) if path.suffix in (".py", ".sh")
               and path.name != "__init__.py" and f"`{path.name}`" not in rows[f"{folder}/"]]  # fmt: skip
    assert missing == []


def test_every_third_party_import_of_the_library_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    declared = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    imported = set()
    for folder in LIBRARY:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"kandistill", "__future__"}
    distributions = packages_distributions()
    undeclared = {name: distributions.get(name) for name in third_party
                  if not {d.lower().replace("_", "-") for d in distributions.get(name, [name])} & declared}  # fmt: skip
    assert undeclared == {}
