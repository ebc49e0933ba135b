"""The train stage: KAN students fitted to a soft-target cache, one or many at once, on one process or many.

`train_students(cache, students, out)` trains one student per `StudentSpec` and returns them with a
fidelity table measured on held-out rows that training never sees.

* Students of the same kind and output size train as **one ensemble** (the KAN's leading
  dimension): one batched forward for all, a loss per member (`kandistill.distill.train.losses`), early stopping per
  member on its held-out loss. A member that has stopped leaves the ensemble, so it costs nothing
  more. With Adam every parameter's update depends only on its own gradient, so a member trained in
  an ensemble follows the same path as when trained alone with the same seed.
* **The KAN schedule**: fit (the grid following the data for its first steps, `GridUpdates`); if
  ``sparse_steps``: sparsify with the L1 + entropy penalty, then prune weak edges and nodes; if
  ``refine_grid``: refine the grid; then refit. **Optimiser**: ``auto`` takes full-batch L-BFGS
  (what small KANs train best with) for a single student on up to ``lbfgs_max_rows`` rows, and Adam
  otherwise (ensembles, large caches), where members must stay independent.
* **Processes** (``accelerate launch``/torchrun): each process computes the loss on its shard of the
  training rows (weighted by the shard's share of the rows, as shards may differ by one) and the
  gradients (and, for L-BFGS, the loss) are averaged across processes with accelerate's collectives
  before every step, which is what DDP does; the grid updates and the held-out evaluation use all
  rows on every process, so every process takes the same decisions. The result is the one-process
  loss and gradient summed in another order: equal to float rounding, not bit for bit, and L-BFGS
  can carry such differences to a different (about as good) student.
* **Checkpoints** (`kandistill.distill.train.checkpoint`) every ``checkpoint_every`` steps and between phases, with
  the optimiser's state and the cache's fingerprint: a killed run resumes where it stopped, and a
  checkpoint made on another cache or config is refused.

Inputs are scaled to [-1, 1] by the schema's ranges and each target standardised; both scalings
are saved beside each student (``student.json``) so that predictions and formulas come back in the
features' and targets' own units.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from kandistill.distill.targets.cache import SoftTargetCache
from kandistill.distill.train.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    load_snapshot,
    recover_checkpoint,
    save_checkpoint,
)
from kandistill.distill.train.config import StudentSpec, TrainConfig, TrainError
from kandistill.distill.train.fit import GridUpdates, make_optimizer, train_steps
from kandistill.distill.train.losses import distillation_loss
from kandistill.distill.train.metrics import label_fidelity, scalar_fidelity
from kandistill.students import KAN, smoothness_penalty
from kandistill.students.files import atomic_write_json
from kandistill.students.scaling import scale_inputs
from kandistill.teachers.hashing import hash_json
from kandistill.teachers.schema import FeatureSchema

logger = logging.getLogger(__name__)


def learning_rate(step: int, steps: int, lr: float, schedule: str, warmup: float) -> float:
    """Adam's learning rate at ``step`` of ``steps`` (a function of the count alone, so a resumed run
    follows the same schedule): constant, or a linear warm-up then a cosine decay to zero."""
    if schedule == "constant":
        return lr
    ramp = max(1, round(warmup * steps))
    if step < ramp:
        return lr * (step + 1) / ramp
    return lr * 0.5 * (1 + math.cos(math.pi * (step - ramp) / max(1, steps - ramp)))


@dataclass
class DistillResult:
    """The trained students, their held-out fidelity (one dict per student) and where they are saved."""

    students: dict[str, KAN]
    fidelity: dict[str, dict[str, float]]
    folder: Path


@dataclass
class GroupData:
    """One ensemble's tensors: ``x_*`` ``(rows, in)`` scaled; ``y_*`` ``(E, rows, out)`` standardised."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor


def target_matrix(cache: SoftTargetCache, spec: StudentSpec) -> np.ndarray:
    """The spec's targets ``(rows, out)``: the columns, or a label set's log-odds against its last label."""
    missing = [t for t in spec.targets if t not in cache.outputs]
    if missing:
        raise TrainError(f"student {spec.name!r}: the cache has no target {missing[0]!r}; it has {cache.outputs}")
    columns = []
    for name in spec.targets:
        column = cache.target(name)
        if column.ndim != 1:
            raise TrainError(f"student {spec.name!r}: target {name!r} is a vector {column.shape[1:]}; "
                             "students learn scalar columns")  # fmt: skip
        bad = ~np.isfinite(column)
        if bad.any():
            raise TrainError(f"cache column {name!r} has a non-finite value at row {int(np.argmax(bad))}")
        columns.append(column.astype(np.float64))
    y = np.stack(columns, 1)
    return y[:, :-1] - y[:, -1:] if spec.kind == "labels" else y


def split_rows(rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split into training and held-out rows."""
    order = np.random.default_rng(seed).permutation(rows)
    n_val = max(1, round(rows * fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _slice_optimizer_state(state: dict, keep: list[int]) -> dict:
    """Keep members ``keep`` of every per-parameter tensor whose leading dimension is the ensemble."""
    index = torch.as_tensor(keep)
    sliced = {}
    for key, value in state["state"].items():
        sliced[key] = {k: (v.index_select(0, index) if isinstance(v, torch.Tensor) and v.ndim > 0 else v)
                       for k, v in value.items()}  # fmt: skip
    return {"state": sliced, "param_groups": state["param_groups"]}


class GroupTrainer:
    """Trains one ensemble of students through the KAN schedule; see the module docstring.

    With ``members`` M > 1 the ensemble holds M members per student (student ``i``'s are ``i * M``
    to ``i * M + M - 1``, seeded ``seed_i + m * MEMBER_SEED_STRIDE``) until the ``select`` phase
    keeps each student's best; ``rows[e]`` says which row of the group's targets member ``e`` learns.
    """

    def __init__(self, names: list[str], specs: list[StudentSpec], data: GroupData, config: TrainConfig,
                 accelerator: Accelerator, folder: Path, cache_fingerprint: str) -> None:  # fmt: skip
        self.names, self.specs, self.data, self.config = names, specs, data, config
        self.accelerator, self.folder = accelerator, folder
        rows = len(data.x_train)
        self.rows = list(range(len(specs) * config.members))
        self.optimizer_name = config.optimizer_for(len(self.rows), rows)
        self.steps = config.steps_for(self.optimizer_name)
        self.phases = ["fit"]
        if config.sparse_steps:
            self.phases += ["sparsify", "prune"]
        if config.refine_grid and config.refine_grid != config.grid:
            self.phases += ["refine"]
        if len(self.phases) > 1:
            self.phases += ["refit"]
        if config.members > 1:
            self.phases += ["select"]
        if config.polish_steps:
            self.phases += [f"polish{i}" for i in range(len(specs))]
        self.selection: list[dict] | None = None
        self.key = {"cache": cache_fingerprint, "config": asdict(config), "students": [asdict(s) for s in specs]}
        rank, world = accelerator.process_index, accelerator.num_processes
        if rows < world:
            raise TrainError(f"students {names}: {rows} training rows cannot be shared by {world} processes")
        self.local_rows = torch.arange(rank, rows, world)
        # Shards differ by a row when ``world`` does not divide ``rows``: each shard's mean loss is
        # weighted by its share, so that the average over processes is the mean over all rows.
        self.shard_weight = len(self.local_rows) * world / rows
        self.batch: torch.Tensor | None = None  # the current Adam minibatch's rows (None: all rows)

    def phase_steps(self, phase: str) -> int:
        if phase in ("prune", "refine", "select"):
            return 0
        return self.config.polish_steps if phase.startswith("polish") else self.steps

    # -- the loss, per member, in the units the loss is defined in --
    def target_rows(self, members: list[int]) -> list[int]:
        return [self.rows[e] for e in members]

    def member_loss(self, prediction: torch.Tensor, target: torch.Tensor, members: list[int]) -> torch.Tensor:
        spec = self.specs[0]
        if spec.loss_name in ("mse", "mse_logodds"):
            return distillation_loss(spec.loss_name, prediction, target)
        rows = self.target_rows(members)
        mean, std = self.data.y_mean[rows][:, None], self.data.y_std[rows][:, None]
        return distillation_loss(spec.loss_name, prediction * std + mean, target * std + mean, spec.temperature)

    def validation_loss(self, model: KAN, members: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return self.member_loss(model(self.data.x_val), self.standardised_val(members), members)

    def standardised_val(self, members: list[int]) -> torch.Tensor:
        rows = self.target_rows(members)
        return (self.data.y_val[rows] - self.data.y_mean[rows][:, None]) / self.data.y_std[rows][:, None]

    def make_optimizer(self, model: KAN, name: str) -> torch.optim.Optimizer:
        lr = 1.0 if name == "lbfgs" and name != self.optimizer_name else self.config.lr_for(name)  # the polish
        return make_optimizer(model.parameters(), name, lr)

    def _average(self, model: KAN, loss: torch.Tensor) -> torch.Tensor:
        """Average the gradients (and the loss) over processes: data parallelism, as DDP does it."""
        if self.accelerator.num_processes == 1:
            return loss.detach()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return self.accelerator.reduce(loss.detach(), reduction="mean")

    def minibatch(self, phase: int, step: int) -> torch.Tensor:
        """The training rows of Adam step ``step`` in phase ``phase``: the next ``batch_size`` rows of
        this epoch's seeded permutation, a function of the counts alone (so resuming draws the same)."""
        rows, size = len(self.data.x_train), self.config.batch_size
        per_epoch = -(-rows // size)
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([self.config.seed, phase, epoch]).permutation(rows)
        return torch.as_tensor(np.sort(order[index * size : (index + 1) * size]))

    def closure(self, model: KAN, optimizer: torch.optim.Optimizer, members: list[int],
                penalty: bool) -> Callable[[], torch.Tensor]:  # fmt: skip
        """One step's loss on this process's rows (of the minibatch, if any), averaged over processes."""
        local, weight = self.local_rows, self.shard_weight
        if self.batch is not None:
            rank, world = self.accelerator.process_index, self.accelerator.num_processes
            local = self.batch[rank::world]
            weight = len(local) * world / len(self.batch)
        x = self.data.x_train[local]
        y = self.data.y_train[self.target_rows(members)][:, local]

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            with self.accelerator.autocast():
                if penalty:
                    prediction, penalties = model.forward_with_penalty(x, self.config.l1, self.config.entropy)
                    reg = penalties.sum()
                else:
                    prediction, reg = model(x), 0.0
                loss = self.member_loss(prediction.float(), y, members).sum() + reg
                if self.config.smoothness:
                    loss = loss + self.config.smoothness * smoothness_penalty(model).sum()
                if self.accelerator.num_processes > 1:
                    loss = loss * weight
            loss.backward()
            return self._average(model, loss)

        return closure

    # -- checkpoints --
    def save(self, full: KAN, optimizer: torch.optim.Optimizer | None, state: dict,
             snapshot: KAN | None = None) -> None:  # fmt: skip
        if self.accelerator.is_main_process:
            save_checkpoint(self.folder, full, optimizer, {**state, "key": hash_json(self.key)}, snapshot)
        self.accelerator.wait_for_everyone()

    def resume(self) -> tuple[KAN, dict | None, dict, KAN | None] | None:
        if self.accelerator.is_main_process:
            recover_checkpoint(self.folder)
        self.accelerator.wait_for_everyone()
        found = load_checkpoint(self.folder)
        if found is None:
            return None
        full, optimizer, state = found
        if state.pop("key") != hash_json(self.key):
            raise TrainError(f"{self.folder}: this checkpoint was made for another cache, config or set of "
                             "students; use another output folder or delete it")  # fmt: skip
        return full, optimizer, state, load_snapshot(self.folder)

    # -- the schedule --
    def initial_members(self) -> list[KAN]:
        config = self.config
        seeds = [config.seed + i if s.seed is None else s.seed for i, s in enumerate(self.specs)]
        return [KAN(self.config_width(), grid=config.grid, k=config.k, seed=seed + m * MEMBER_SEED_STRIDE)
                for seed in seeds for m in range(config.members)]  # fmt: skip

    def run(self) -> KAN:
        resumed = self.resume()
        if resumed is None:
            full = KAN.stack(self.initial_members())
            state = self.phase_start(0, {})
            optimizer_state, snapshot = None, None
        else:
            full, optimizer_state, state, snapshot = resumed
            logger.info("resuming %s at phase %s step %d", self.folder.name, self.phases[min(state["phase"],
                        len(self.phases) - 1)], state["step"])  # fmt: skip
        self.rows = state.get("rows", self.rows)
        self.selection = state.get("selection")
        total = sum(max(self.phase_steps(p), 1) for p in self.phases)
        progress = tqdm(total=total, desc=f"train: students {', '.join(self.names)[:40]}", unit="step",
                        disable=not (self.accelerator.is_main_process and self.config.progress))  # fmt: skip
        progress.update(sum(max(self.phase_steps(p), 1) for p in self.phases[: state["phase"]]) + state["step"])
        while state["phase"] < len(self.phases):
            phase = self.phases[state["phase"]]
            if phase in ("prune", "refine", "select"):
                full = self.reshape(full, phase)
                state = self.phase_start(state["phase"] + 1, state)
                progress.update(1)
                self.save(full, None, state)
                continue
            full, state = self.train_phase(full, state, optimizer_state, snapshot, phase, progress)
            optimizer_state, snapshot = None, None
        progress.close()
        return full

    def phase_start(self, phase: int, previous: dict) -> dict:
        """The loop's state at the start of phase ``phase``: who trains (one student in a polish phase)."""
        name = self.phases[phase] if phase < len(self.phases) else ""
        active = [int(name.removeprefix("polish"))] if name.startswith("polish") else list(range(len(self.rows)))
        state = {"phase": phase, "step": 0, "active": active, "best": {}, "stale": {}, "rows": self.rows}
        return state | ({"selection": self.selection} if self.selection is not None else {})

    def reshape(self, full: KAN, phase: str) -> KAN:
        """The phases that change the ensemble without training: prune, refine, select."""
        if phase == "prune":
            return full.prune(self.data.x_train, edge_threshold=self.config.prune_threshold)
        if phase == "refine":
            return full.refine(self.config.refine_grid)
        losses = self.validation_loss(full, list(range(full.ensemble))).tolist()
        m = self.config.members
        chosen = [min(range(i * m, i * m + m), key=lambda e: (losses[e], e)) for i in range(len(self.specs))]
        self.selection = [{"member": e - i * m, "members": m, "validation_losses": losses[i * m : i * m + m]}
                          for i, e in enumerate(chosen)]  # fmt: skip
        logger.info("chose members %s of %d by held-out loss", [s["member"] for s in self.selection], m)
        self.rows = self.target_rows(chosen)
        return KAN.stack([full.member(e) for e in chosen])

    def config_width(self) -> list[int]:
        return [self.data.x_train.shape[1], *self.config.hidden, self.specs[0].n_outputs]

    def train_phase(self, full: KAN, state: dict, optimizer_state: dict | None, snapshot: KAN | None, phase: str,
                    progress: tqdm) -> tuple[KAN, dict]:  # fmt: skip
        """One training phase; the best weights of each member by held-out loss (``snapshot``) end it."""
        config, steps = self.config, self.phase_steps(phase)
        kind = "lbfgs" if phase.startswith("polish") else self.optimizer_name
        members = list(state["active"])
        model = KAN.stack([full.member(e) for e in members]) if len(members) < full.ensemble else full
        optimizer = self.make_optimizer(model, kind)
        if optimizer_state is not None:
            load_optimizer_state(optimizer, optimizer_state)
        best = {int(k): v for k, v in state["best"].items()}
        stale = {int(k): v for k, v in state["stale"].items()}
        step = state["step"]
        grid = GridUpdates(config.grid_update_every, config.grid_update_until, config.grid_uniform_fraction,
                           config.grid_margin)  # fmt: skip
        evaluate = phase != "sparsify"
        if snapshot is None:
            snapshot = full._copy()
        if evaluate and step == 0:  # the starting point counts: a phase never ends worse than it began
            best.update(zip(members, self.validation_loss(model, members).tolist(), strict=True))

        def write_back() -> KAN:
            if model is full:
                return full
            rows = {e: model.member(i) for i, e in enumerate(members)}
            return KAN.stack([rows[e] if e in rows else full.member(e) for e in range(full.ensemble)])

        use_batches = kind == "adam" and config.batch_size and config.batch_size < len(self.data.x_train)

        def closure_at(at: int) -> Callable[[], torch.Tensor]:
            self.batch = self.minibatch(state["phase"], at) if use_batches else None
            return self.closure(model, optimizer, members, penalty=phase == "sparsify")

        def lr_at(at: int) -> float:
            return learning_rate(at, steps, config.lr_for(kind), config.schedule, config.warmup)

        while step < steps and members:
            # train up to the next evaluation or checkpoint, through the one step loop
            stop = min(steps, _next_multiple(step, config.checkpoint_every),
                       _next_multiple(step, config.eval_every) if evaluate else steps)  # fmt: skip
            train_steps(model, optimizer, closure_at, range(step, stop), grid if phase == "fit" else None,
                        self.data.x_train, lr_at if kind == "adam" else None, progress,
                        f"students {self.names} in phase {phase}")  # fmt: skip
            step = stop
            if evaluate and (step % config.eval_every == 0 or step == steps):
                val = self.validation_loss(model, members).tolist()
                self.accelerator.log({f"{self.names[min(self.rows[e] // config.members, len(self.names) - 1)]}/"
                                      f"{phase}_val_loss": v for e, v in zip(members, val, strict=True)},
                                     step=step)  # fmt: skip
                stopped, improved = [], []
                for i, (e, v) in enumerate(zip(members, val, strict=True)):
                    if v < best.get(e, math.inf) * (1 - 1e-4):
                        best[e], stale[e] = v, 0
                        improved.append((i, e))
                    else:
                        stale[e] = stale.get(e, 0) + 1
                        if stale[e] >= config.patience:
                            stopped.append(e)
                copy_members(model, snapshot, improved)
                if stopped:
                    full = write_back()
                    keep = [i for i, e in enumerate(members) if e not in stopped]
                    members = [members[i] for i in keep]
                    logger.info("early stop in %s at step %d: members %s", phase, step, stopped)
                    if members:
                        old = optimizer.state_dict()
                        model = KAN.stack([full.member(e) for e in members])
                        optimizer = self.make_optimizer(model, kind)
                        if kind == "adam":
                            load_optimizer_state(optimizer, _slice_optimizer_state(old, keep))
            if members and step % config.checkpoint_every == 0 and step < steps:
                full = write_back()
                self.save(full, optimizer, {**state, "step": step, "active": members, "best": best, "stale": stale},
                          snapshot if evaluate else None)  # fmt: skip
        full = snapshot if evaluate else write_back()
        progress.update(steps - step)
        state = self.phase_start(state["phase"] + 1, state)
        self.save(full, None, state)
        return full, state


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


MEMBER_SEED_STRIDE = 7919  # member m of a student seeded s starts from seed s + m * 7919


@torch.no_grad()
def copy_members(source: KAN, target: KAN, pairs: list[tuple[int, int]]) -> None:
    """Copy member ``i`` of ``source`` into member ``e`` of ``target`` for each ``(i, e)`` (same shapes)."""
    if not pairs:
        return
    weights = source.state_dict()
    for name, tensor in target.state_dict().items():
        for i, e in pairs:
            tensor[e].copy_(weights[name][i])
    for layer in target.layers:
        layer.refresh()


def group_specs(specs: Sequence[StudentSpec]) -> list[list[int]]:
    """Indices of specs that can share an ensemble: same kind, loss, temperature and output size."""
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault((spec.kind, spec.loss_name, spec.temperature, spec.n_outputs), []).append(i)
    return list(groups.values())


def train_students(
    cache: SoftTargetCache | str | Path,
    students: Sequence[StudentSpec],
    out: str | Path,
    config: TrainConfig | None = None,
) -> DistillResult:
    """Train the students on ``cache`` into ``out`` (``students/NAME/``, ``fidelity.json``, checkpoints).

    Resumes from ``out/checkpoints`` when a previous run was interrupted. Returns the students and
    their held-out fidelity against the teacher.
    """
    config = config or TrainConfig()
    cache = cache if isinstance(cache, SoftTargetCache) else SoftTargetCache.load(cache)
    out = Path(out)
    names = [s.name for s in students]
    if not students or len(set(names)) != len(names):
        raise TrainError(f"students: expected distinct names, got {names}")
    if len(cache) < 10:
        raise TrainError(f"the cache {cache.folder} has {len(cache)} rows; students need at least 10")
    targets = {spec.name: target_matrix(cache, spec) for spec in students}
    schema = cache.schema
    low, high = schema.encoded_ranges()
    x = torch.as_tensor(scale_inputs(cache.features(), low, high), dtype=torch.float32)
    train_rows, val_rows = split_rows(len(cache), config.validation_fraction, config.seed)
    fit_rows, select_rows = train_rows, val_rows
    if config.selection_fraction > 0:
        if len(train_rows) < 2:
            raise TrainError(f"selection_fraction: {len(train_rows)} training rows cannot be split further")
        fit, select = split_rows(len(train_rows), config.selection_fraction, config.seed + 1)
        fit_rows, select_rows = train_rows[fit], train_rows[select]
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision,
                              log_with=config.log_with, project_dir=str(out))  # fmt: skip
    if config.log_with:
        accelerator.init_trackers("distill", config={k: str(v) for k, v in asdict(config).items()})

    trained: dict[str, KAN] = {}
    fidelity: dict[str, dict[str, float]] = {}
    for group in group_specs(students):
        specs = [students[i] for i in group]
        y = torch.as_tensor(np.stack([targets[s.name] for s in specs]), dtype=torch.float32)  # (n, rows, out)
        mean, std = y[:, train_rows].mean(1), y[:, train_rows].std(1).clamp_min(1e-8)
        # one row of targets per member: student i's members are i * M ... i * M + M - 1
        each = config.members
        data = GroupData(x[fit_rows], ((y[:, fit_rows] - mean[:, None]) / std[:, None]).repeat_interleave(each, 0),
                         x[select_rows], y[:, select_rows].repeat_interleave(each, 0),
                         mean.repeat_interleave(each, 0), std.repeat_interleave(each, 0))  # fmt: skip
        label = "+".join(s.name for s in specs)
        folder = out / "checkpoints" / (label if len(label) < 100 else hash_json(label)[:16])
        trainer = GroupTrainer([s.name for s in specs], specs, data, config, accelerator, folder, cache.fingerprint)
        ensemble = trainer.run()
        with torch.no_grad():
            prediction = ensemble(x[val_rows]) * std[:, None] + mean[:, None]
        for e, spec in enumerate(specs):
            measure = label_fidelity if spec.kind == "labels" else scalar_fidelity
            fidelity[spec.name] = measure(prediction[e], y[e, val_rows])
            trained[spec.name] = ensemble.member(e)
            if accelerator.is_main_process:
                save_student(out / "students" / spec.name, trained[spec.name], spec, schema, low, high,
                             mean[e], std[e], fidelity[spec.name], cache,
                             trainer.selection[e] if trainer.selection else None)  # fmt: skip
    if accelerator.is_main_process:
        atomic_write_json(out / "fidelity.json", fidelity)
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:  # not end_training(): it tears down the process group the caller may need
        tracker.finish()
    return DistillResult(trained, fidelity, out)


def save_student(folder: Path, model: KAN, spec: StudentSpec, schema: FeatureSchema, low: np.ndarray,
                 high: np.ndarray, mean: torch.Tensor, std: torch.Tensor, fidelity: dict[str, float],
                 cache: SoftTargetCache, selection: dict | None = None) -> None:  # fmt: skip
    """The KAN (``save_pretrained``) and ``student.json``: what it learned and how to scale in and out
    (and, when it was chosen among several members, which one and every member's held-out loss)."""
    model.save_pretrained(folder, provenance={"cache": cache.fingerprint, "student": spec.name})
    record = {
        "name": spec.name,
        "kind": spec.kind,
        "targets": list(spec.targets),
        "loss": spec.loss_name,
        "temperature": spec.temperature,
        "features": schema.to_dict(),
        "input_low": low.tolist(),
        "input_high": high.tolist(),
        "output_mean": mean.tolist(),
        "output_std": std.tolist(),
        "fidelity": fidelity,
        "cache_fingerprint": cache.fingerprint,
        "teacher_fingerprint": cache.manifest["teacher_fingerprint"],
    } | ({"selection": selection} if selection is not None else {})
    atomic_write_json(folder / "student.json", record)
