"""A train-stage run for the multi-process and kill-and-resume tests (run by torchrun or python).

    python tests/train_worker.py CACHE OUT [--checkpoint-every N] [--kill-in-checkpoint K] [--record-gradient]

``CACHE`` is made (once) by the test. Each process writes ``OUT/result-rank{R}.json``: the
fidelity, and how many training steps this run took (fewer when it resumed).
``--kill-in-checkpoint K`` kills the process (SIGKILL, which nothing can catch) while it writes its
K-th checkpoint, after the new files are written under their temporary name and before they are
swapped in: the worst moment, chosen by a count, not by a clock. ``--record-gradient`` writes the
first averaged gradient and loss of the run to ``OUT/gradient-rank{R}.safetensors``.
"""

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from safetensors.torch import save_file

import kandistill.distill.train.checkpoint
import kandistill.distill.train.loop
from kandistill.distill.train.config import StudentSpec, TrainConfig
from kandistill.distill.train.loop import train_students


def kill_in_checkpoint(k: int) -> None:
    """SIGKILL this process inside the ``k``-th checkpoint write, before the swap."""
    write_tensors, count = kandistill.distill.train.checkpoint.save_file, [0]

    def write_then_die(*args, **kwargs):
        write_tensors(*args, **kwargs)
        count[0] += 1
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    kandistill.distill.train.checkpoint.save_file = write_then_die


def record_gradient(out: Path, rank: int) -> None:
    """Save the gradient and loss of the first closure, after they are averaged over processes."""
    average = kandistill.distill.train.loop.GroupTrainer._average

    def average_and_record(self, model, loss):
        result = average(self, model, loss)
        path = out / f"gradient-rank{rank}.safetensors"
        if not path.exists():
            grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
            save_file({**grads, "loss": result.reshape(1).clone()}, str(path))
        return result

    kandistill.distill.train.loop.GroupTrainer._average = average_and_record


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("out")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--kill-in-checkpoint", type=int, default=0)
    parser.add_argument("--record-gradient", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank, out = int(os.environ.get("RANK", "0")), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.kill_in_checkpoint:
        kill_in_checkpoint(args.kill_in_checkpoint)
    if args.record_gradient:
        record_gradient(out, rank)
    steps, step_closure = [0], kandistill.distill.train.loop.GroupTrainer.closure

    def counted_step(*args, **kwargs):  # the loop asks for one closure per training step
        steps[0] += 1
        return step_closure(*args, **kwargs)

    kandistill.distill.train.loop.GroupTrainer.closure = counted_step
    config = TrainConfig(hidden=[3], steps=30, refine_grid=8, checkpoint_every=args.checkpoint_every, progress=False)
    result = train_students(args.cache, [StudentSpec("y", ("y",))], out, config)
    (out / f"result-rank{rank}.json").write_text(json.dumps({"fidelity": result.fidelity["y"], "steps": steps[0]}))
