#!/usr/bin/env bash
# The built wheel works from anywhere (issue 23). Build it, install it into a fresh venv (torch first, then the
# wheel with the pinned constraints), run `kandistill demo` in an empty folder outside the checkout, check that
# it wrote nothing but its run folder and that every report it names exists, then run the README's Surrogate
# block there, as written, against the demo's run. Run by .ci/run; by hand: bash scripts/check_wheel.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m pip wheel "$root" --no-deps -q -w "$work/dist"
"$python" - "$work"/dist/kandistill-*.whl <<'PY'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
(top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
assert zipfile.ZipFile(sys.argv[1]).read(top_level).decode().split() == ["kandistill"], top_level
assert {n.split("/")[0] for n in names if not n.endswith(".dist-info/" + n.split("/")[-1])} == {"kandistill"}, names
assert "kandistill/pipelines/configs/demo_loan.yaml" in names and "kandistill/distill/discover/data/feynman_examples.csv" in names
print("check_wheel: the wheel holds one import name, kandistill, with its configs and data")
PY
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.13.0
"$work/venv/bin/pip" install -q "$work"/dist/kandistill-*.whl -c "$root/constraints.txt"

mkdir "$work/elsewhere"
cd "$work/elsewhere"
"$work/venv/bin/kandistill" -q demo | tee "$work/demo.txt"
grep -q "^Demo finished in" "$work/demo.txt"
for report in $(sed -n 's/^Report: //p' "$work/demo.txt"); do
  test -f "$report" || { echo "check_wheel: the demo names $report, which does not exist" >&2; exit 1; }
done
test "$(ls -A)" = "runs" || { echo "check_wheel: the demo wrote outside runs/: $(ls -A)" >&2; exit 1; }

"$work/venv/bin/python" - "$root/README.md" <<'PY'
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()
(code,) = [m[1] for m in re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S) if "Surrogate.from_run(" in m[1]]
namespace = {}
exec(compile(code, "README.md (the Surrogate block)", "exec"), namespace)
prediction = namespace["decision"].predict(namespace["applicant"])
assert prediction.shape == (1, 1), prediction
print(f"check_wheel: the Surrogate block ran from the installed wheel; formula {namespace['decision'].formula()}")
PY
echo "check_wheel: passed"
