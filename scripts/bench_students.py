"""KAN students against MLP students of equal size (and an EBM surrogate) on the same teachers.

Teachers (all built in-process): an MLP on a Feynman equation (I.6.2, the Gaussian density with
mean 0 and scale sigma), an MLP on scikit-learn's diabetes data (10 features), and the embedded
loan Llama's label log-odds. Each teacher labels ``--rows`` Latin-hypercube inputs through the
targets stage; every surrogate trains on the same 80% and is scored against the teacher on the
same held-out 20%:

* **KAN**: ``distill.train.distill`` with its defaults ([n, 5, out], grid 5 then 10, L-BFGS);
* **MLP**: SiLU MLP with one hidden layer sized to the KAN's parameter count, full-batch Adam
  (3000 steps, cosine schedule) on the same standardised targets;
* **EBM** (diabetes only): ``interpret``'s ``ExplainableBoostingRegressor()`` with its default
  settings, fitted to the teacher's outputs (``interpret-core`` is a benchmark-only requirement).

Then the ensemble: 16 scalar students trained as one ensemble against 1, the same Adam steps each.

    .venv/bin/pip install --no-deps -r scripts/requirements-bench.txt
    .venv/bin/python scripts/bench_students.py [--rows 4000] [--skip-llama]

Last line: one JSON object with ``kan_r2``, ``mlp_r2``, ``ebm_r2``, ``kan_fit_s``, ``ebm_fit_s``
(the diabetes teacher), every teacher's row, and ``ensemble16_over_one``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

try:
    import distill  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.feynman import feynman_teacher
from distill.fidelity import r2_score
from distill.targets import generate_targets, sample_inputs
from distill.train import StudentSpec, TrainConfig, scale_inputs, split_rows, target_matrix
from distill.train import distill as run_distill
from teachers.causal_lm import CausalLMTeacher
from teachers.embedded import LOAN_LABELS, LOAN_SCHEMA, LOAN_TEMPLATE, LoanRule, build_loan_llama, diabetes_teacher
from teachers.mlp import MLP, MLPTeacher


def kan_parameters(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "sym_affine" not in name)


def fit_mlp(x: torch.Tensor, y: torch.Tensor, parameters: int, steps: int = 3000, seed: int = 0) -> nn.Module:
    """A one-hidden-layer SiLU MLP with about ``parameters`` weights, fitted by full-batch Adam."""
    n_in, n_out = x.shape[1], y.shape[1]
    hidden = max(1, round((parameters - n_out) / (n_in + 1 + n_out)))
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(mlp(x), y).backward()
        optimizer.step()
        schedule.step()
    return mlp


def compare(name: str, cache, spec: StudentSpec, work: Path, with_ebm: bool = False) -> dict:
    start = time.perf_counter()
    result = run_distill(cache, [spec], work / name, TrainConfig(progress=False))
    kan_s = time.perf_counter() - start
    student = result.students[spec.name]
    low, high = cache.schema.encoded_ranges()
    x = scale_inputs(cache.features(), low, high)
    y = torch.as_tensor(target_matrix(cache, spec), dtype=torch.float32)
    train, val = split_rows(len(cache), 0.2, 0)
    mean, std = y[train].mean(0), y[train].std(0)
    with torch.no_grad():
        kan_prediction = student(x[val]) * std + mean
    start = time.perf_counter()
    mlp = fit_mlp(x[train], (y[train] - mean) / std, kan_parameters(student))
    mlp_s = time.perf_counter() - start
    with torch.no_grad():
        mlp_prediction = mlp(x[val]) * std + mean
    row = {"teacher": name, "parameters": kan_parameters(student),
           "kan_r2": r2_score(kan_prediction, y[val]), "mlp_r2": r2_score(mlp_prediction, y[val]),
           "kan_fit_s": kan_s, "mlp_fit_s": mlp_s}  # fmt: skip
    if with_ebm:
        from interpret.glassbox import ExplainableBoostingRegressor

        raw = cache.features()
        start = time.perf_counter()
        ebm = ExplainableBoostingRegressor(random_state=0).fit(raw[train], y[train, 0].numpy())
        row["ebm_fit_s"] = time.perf_counter() - start
        row["ebm_r2"] = r2_score(torch.as_tensor(ebm.predict(raw[val]))[:, None], y[val])
    return row


def ensemble_ratio(schema, work: Path, rows: int) -> dict:
    """Wall time of 16 students trained as one ensemble over that of one, the same Adam steps each."""
    torch.manual_seed(1)
    names = [f"out{i}" for i in range(16)]
    teacher = MLPTeacher(MLP([len(schema), 32, 16], "tanh"), schema, names)
    cache = generate_targets(teacher, sample_inputs(schema, rows, "lhs", seed=1), work / "ensemble_targets")
    config = TrainConfig(optimizer="adam", steps=300, refine_grid=None, patience=10**6, progress=False)
    times = {}
    for count in (1, 16):
        start = time.perf_counter()
        run_distill(cache, [StudentSpec(n, (n,)) for n in names[:count]], work / f"ensemble{count}", config)
        times[count] = time.perf_counter() - start
    return {"one_s": times[1], "sixteen_s": times[16], "ensemble16_over_one": times[16] / times[1]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--skip-llama", action="store_true", help="skip the embedded Llama (trains ~40 s)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_students_"))
    rows = []
    try:
        feynman = feynman_teacher("I.6.2")
        cache = generate_targets(feynman, sample_inputs(feynman.schema, args.rows, "lhs", 0), work / "feynman")
        rows.append(compare("feynman I.6.2 MLP", cache, StudentSpec("f", ("I.6.2",)), work))
        diabetes = diabetes_teacher()
        cache = generate_targets(diabetes, sample_inputs(diabetes.schema, args.rows, "lhs", 0), work / "diabetes")
        rows.append(compare("diabetes MLP", cache, StudentSpec("d", ("progression",)), work, with_ebm=True))
        if not args.skip_llama:
            folder = build_loan_llama(work / "llama", LoanRule(protected_effect=-1.0))
            llama = CausalLMTeacher.from_pretrained(folder, LOAN_SCHEMA, LOAN_TEMPLATE, LOAN_LABELS, batch_size=256)
            cache = generate_targets(llama, sample_inputs(LOAN_SCHEMA, args.rows, "lhs", 0), work / "llama_t")
            rows.append(compare("loan Llama log-odds", cache, StudentSpec.for_labels("l", ["yes", "no"]), work))
        ensemble = ensemble_ratio(diabetes.schema, work, args.rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'teacher':<22}{'params':>8}{'KAN R2':>10}{'MLP R2':>10}{'EBM R2':>10}{'KAN s':>8}{'MLP s':>8}{'EBM s':>8}")
    for row in rows:
        ebm_r2, ebm_s = row.get("ebm_r2", math.nan), row.get("ebm_fit_s", math.nan)
        print(f"{row['teacher']:<22}{row['parameters']:>8}{row['kan_r2']:>10.5f}{row['mlp_r2']:>10.5f}"
              f"{ebm_r2:>10.5f}{row['kan_fit_s']:>8.1f}{row['mlp_fit_s']:>8.1f}{ebm_s:>8.1f}")  # fmt: skip
    print(f"ensemble: 16 students {ensemble['sixteen_s']:.1f} s, one {ensemble['one_s']:.1f} s, "
          f"ratio {ensemble['ensemble16_over_one']:.2f} (target <= 4)")  # fmt: skip
    diabetes_row = next(r for r in rows if r["teacher"] == "diabetes MLP")
    summary = {key: diabetes_row[key] for key in ("kan_r2", "mlp_r2", "ebm_r2", "kan_fit_s", "ebm_fit_s")}
    summary |= {"teachers": rows, **ensemble, "rows": args.rows}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
