"""A train-stage run for the multi-process and kill-and-resume tests (run by torchrun or python).

    python tests/train_worker.py CACHE OUT [--checkpoint-every N] [--slow SECONDS]

``CACHE`` is made (once) by the test; ``--slow`` sleeps after every checkpoint so that a test can
kill the run between checkpoints.
"""

import argparse
import json
import time
from pathlib import Path

import torch

import distill.train
from distill.train import StudentSpec, TrainConfig
from distill.train import distill as run_distill

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("out")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.slow:
        save = distill.train.save_checkpoint

        def slow_save(*a, **k):
            save(*a, **k)
            time.sleep(args.slow)

        distill.train.save_checkpoint = slow_save
    config = TrainConfig(hidden=[3], steps=30, refine_grid=8, checkpoint_every=args.checkpoint_every, progress=False)
    result = run_distill(args.cache, [StudentSpec("y", ("y",))], args.out, config)
    Path(args.out, "worker_fidelity.json").write_text(json.dumps(result.fidelity))
