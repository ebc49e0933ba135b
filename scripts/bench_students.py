"""KAN students against MLP students of equal size and an EBM surrogate, on the same teachers and rows.

Teachers (all built in-process, no downloads): an MLP on a Feynman equation (I.6.2, the Gaussian
density with mean 0 and scale sigma); MLPs fitted to scikit-learn's bundled data: diabetes
(regression, 10 features), breast cancer (a classifier, 30 features; the students learn its
log-odds) and wine (a 3-class classifier, 13 features; the students learn the log-odds of two
classes against the third); and the embedded loan Llama's label log-odds. Each teacher labels
``--rows`` Latin-hypercube inputs (the diabetes teacher ``--diabetes-rows``, 20,000: the teacher is
cheap to query, and the KAN overfits its 3,200 training rows out of 4,000) through the targets
stage; every surrogate of a teacher trains on the same
rows (the train stage's 80%) and is scored against the teacher on the same held-out 20%, which no
surrogate sees while it trains (the KAN chooses its member and snapshot on a part of its own
training rows, ``selection_fraction``, as the EBM does with its own ``validation_size``):

* **KAN**: ``kandistill.distill.train.loop.distill`` with ``RECIPE`` below: [n, 16, 16, out], grid 3, four seeds as
  members of one ensemble trained by Adam (warm-up, cosine decay), the best by its held-out loss
  polished by L-BFGS; fit seconds count every phase; on the diabetes teacher's 20,000 rows ``LARGE``:
  the same with Adam on minibatches of 256 rows (6,000 steps, lr 0.02) and 60 L-BFGS steps;
* **MLP** (defaults of a plain regression MLP): SiLU, one hidden layer sized to the KAN's parameter
  count, full-batch Adam (lr 1e-2, 3000 steps, cosine schedule) on the same standardised targets;
* **EBM**: ``interpret``'s ``ExplainableBoostingRegressor(random_state=0)`` with its default
  settings (bagging, interactions, its own validation split), one per output, fitted to the
  teacher's outputs (``interpret-core`` is a benchmark-only requirement).

Then the train stage alone on 4,000 rows x 10 features (the diabetes teacher's cache, each recipe
above), and 16 scalar students trained as one ensemble against 16 separate runs (300 Adam steps each).

    .venv/bin/pip install --no-deps -r scripts/requirements-bench.txt
    .venv/bin/python scripts/bench_students.py [--rows 4000] [--diabetes-rows 20000] [--skip-llama] [--skip-ebm]

Last line: one JSON object with every teacher's row, the train stage's seconds and the ensemble ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from classifier_teachers import breast_cancer_teacher, wine_teacher  # scripts/, beside this file
from torch import nn

from kandistill.distill.discover.feynman import feynman_teacher
from kandistill.distill.targets.cache import generate_targets, sample_inputs
from kandistill.distill.train.config import StudentSpec, TrainConfig
from kandistill.distill.train.loop import split_rows, target_matrix, train_students
from kandistill.distill.train.metrics import r2_score
from kandistill.students.scaling import scale_inputs
from kandistill.teachers.causal_lm import CausalLMTeacher
from kandistill.teachers.embedded import build_loan_llama, diabetes_teacher
from kandistill.teachers.mlp import MLP, MLPTeacher
from kandistill.teachers.tasks import LOAN_LABELS, LOAN_SCHEMA, LOAN_TEMPLATE, LoanRule

RECIPE = TrainConfig(hidden=[16, 16], grid=3, refine_grid=None, optimizer="adam", steps=600, members=4,
                     schedule="cosine", polish_steps=20, grid_uniform_fraction=1.0, grid_margin=0.1,
                     selection_fraction=0.15, patience=20, progress=False)  # fmt: skip
# Many rows (the teacher is cheap to query): Adam on minibatches, many more updates for the same work.
LARGE = dataclasses.replace(RECIPE, batch_size=256, steps=6000, lr=0.02, polish_steps=60, eval_every=50)


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


def compare(name: str, cache, spec: StudentSpec, work: Path, with_ebm: bool, recipe: TrainConfig = RECIPE) -> dict:
    start = time.perf_counter()
    result = train_students(cache, [spec], work / name, recipe)
    kan_s = time.perf_counter() - start
    student = result.students[spec.name]
    low, high = cache.schema.encoded_ranges()
    x = torch.as_tensor(scale_inputs(cache.features(), low, high), dtype=torch.float32)
    y = torch.as_tensor(target_matrix(cache, spec), dtype=torch.float32)
    train, val = split_rows(len(cache), RECIPE.validation_fraction, RECIPE.seed)
    mean, std = y[train].mean(0), y[train].std(0)
    with torch.no_grad():
        kan_prediction = student(x[val]) * std + mean
    start = time.perf_counter()
    mlp = fit_mlp(x[train], (y[train] - mean) / std, kan_parameters(student))
    mlp_s = time.perf_counter() - start
    with torch.no_grad():
        mlp_prediction = mlp(x[val]) * std + mean
    row = {"teacher": name, "rows": len(cache), "parameters": kan_parameters(student), "width": student.width,
           "kan_r2": r2_score(kan_prediction, y[val]), "mlp_r2": r2_score(mlp_prediction, y[val]),
           "kan_fit_s": kan_s, "mlp_fit_s": mlp_s}  # fmt: skip
    selection = json.loads((work / name / "students" / spec.name / "student.json").read_text()).get("selection")
    if selection:
        row["member_losses"] = selection["validation_losses"]
    if with_ebm:
        from interpret.glassbox import ExplainableBoostingRegressor

        raw = cache.features()
        start = time.perf_counter()
        columns = []
        for j in range(y.shape[1]):
            ebm = ExplainableBoostingRegressor(random_state=0).fit(raw[train], y[train, j].numpy())
            columns.append(torch.as_tensor(ebm.predict(raw[val]), dtype=torch.float64))
        row["ebm_fit_s"] = time.perf_counter() - start
        row["ebm_r2"] = r2_score(torch.stack(columns, 1), y[val])
    return row


def ensemble_ratio(schema, work: Path, rows: int) -> dict:
    """Wall time of 16 students trained as one ensemble against 16 separate runs, 300 Adam steps each."""
    torch.manual_seed(1)
    names = [f"out{i}" for i in range(16)]
    teacher = MLPTeacher(MLP([len(schema), 32, 16], "tanh"), schema, names)
    cache = generate_targets(teacher, sample_inputs(schema, rows, "lhs", seed=1), work / "ensemble_targets")
    config = TrainConfig(optimizer="adam", steps=300, refine_grid=None, patience=10**6, progress=False)
    start = time.perf_counter()
    train_students(cache, [StudentSpec(n, (n,)) for n in names], work / "ensemble16", config)
    together = time.perf_counter() - start
    start = time.perf_counter()
    for i, n in enumerate(names):
        train_students(cache, [StudentSpec(n, (n,), seed=i)], work / f"alone{i}", config)
    separate = time.perf_counter() - start
    return {"sixteen_s": together, "separate_s": separate, "ensemble16_over_separate": together / separate}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--diabetes-rows", type=int, default=20000,
                        help="rows the diabetes teacher labels (it is cheap to query); the recipe LARGE")  # fmt: skip
    parser.add_argument("--skip-llama", action="store_true", help="skip the embedded Llama (trains ~40 s)")
    parser.add_argument("--skip-ebm", action="store_true", help="skip the EBMs (minutes on 30 features)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_students_"))
    rows = []
    ebm = not args.skip_ebm
    try:
        wine_classes = ["class_0", "class_1", "class_2"]
        teachers = [("feynman I.6.2 MLP", feynman_teacher("I.6.2"), StudentSpec("f", ("I.6.2",))),
                    ("diabetes MLP", diabetes_teacher(), StudentSpec("d", ("progression",))),
                    ("breast_cancer MLP", breast_cancer_teacher(),
                     StudentSpec.for_labels("c", ["malignant", "benign"])),
                    ("wine MLP", wine_teacher(), StudentSpec.for_labels("w", wine_classes))]  # fmt: skip
        if not args.skip_llama:
            folder = build_loan_llama(work / "llama", LoanRule(protected_effect=-1.0))
            llama = CausalLMTeacher.from_pretrained(folder, LOAN_SCHEMA, LOAN_TEMPLATE, LOAN_LABELS, batch_size=256)
            teachers.append(("loan Llama log-odds", llama, StudentSpec.for_labels("l", ["yes", "no"])))
        for name, teacher, spec in teachers:
            slug = name.split()[0].replace(".", "")
            n, recipe = (args.diabetes_rows, LARGE) if slug == "diabetes" else (args.rows, RECIPE)
            cache = generate_targets(teacher, sample_inputs(teacher.schema, n, "lhs", 0), work / f"{slug}_t")
            rows.append(compare(slug, cache, spec, work, ebm, recipe) | {"teacher": name})
            print(json.dumps(rows[-1]), flush=True)
        teacher = teachers[1][1]  # the train stage alone on 4,000 rows x 10 features, each recipe
        cache = generate_targets(teacher, sample_inputs(teacher.schema, 4000, "lhs", 0), work / "stage_t")
        stage = {}
        for label, recipe in (("recipe", RECIPE), ("large", LARGE)):
            start = time.perf_counter()
            train_students(cache, [StudentSpec("d", ("progression",))], work / f"stage_{label}", recipe)
            stage[label] = time.perf_counter() - start
        ensemble = ensemble_ratio(teachers[1][1].schema, work, args.rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'teacher':<22}{'rows':>7}{'params':>8}{'KAN R2':>10}{'MLP R2':>10}{'EBM R2':>10}"
          f"{'KAN s':>8}{'MLP s':>8}{'EBM s':>8}")  # fmt: skip
    for row in rows:
        ebm_r2, ebm_s = row.get("ebm_r2", math.nan), row.get("ebm_fit_s", math.nan)
        print(f"{row['teacher']:<22}{row['rows']:>7}{row['parameters']:>8}{row['kan_r2']:>10.5f}{row['mlp_r2']:>10.5f}"
              f"{ebm_r2:>10.5f}{row['kan_fit_s']:>8.1f}{row['mlp_fit_s']:>8.1f}{ebm_s:>8.1f}")  # fmt: skip
    print(f"train stage, 4000 rows x 10 features (diabetes, all phases): {stage['recipe']:.1f} s with RECIPE, "
          f"{stage['large']:.1f} s with LARGE (goal <= 60 s)")  # fmt: skip
    print(f"ensemble: 16 students as one ensemble {ensemble['sixteen_s']:.1f} s, as 16 separate runs "
          f"{ensemble['separate_s']:.1f} s, ratio {ensemble['ensemble16_over_separate']:.2f} (goal < 1)")  # fmt: skip
    summary = {"teachers": rows, "train_stage_s": stage, **ensemble, "rows": args.rows}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
