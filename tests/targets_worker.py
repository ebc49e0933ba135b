"""A targets-stage run for the multi-process and kill-and-resume tests (run by torchrun or python).

    python tests/targets_worker.py OUT_FOLDER [--slow SECONDS]

The teacher is a seeded MLP over a three-feature schema; ``--slow`` sleeps per call so that a test
can kill the run between shards.
"""

import argparse
import time

import torch

from kandistill.distill.targets.cache import generate_targets, sample_inputs
from kandistill.teachers.mlp import MLP, MLPTeacher
from kandistill.teachers.schema import CategoricalFeature, FeatureSchema, NumericFeature

SCHEMA = FeatureSchema((NumericFeature("x", -1, 1), NumericFeature("n", 0, 10, integer=True),
                        CategoricalFeature("c", ("a", "b"))))  # fmt: skip
ROWS, SHARD_SIZE = 1000, 128


class SlowTeacher(MLPTeacher):
    delay = 0.0

    def __call__(self, batch, progress=None):
        time.sleep(self.delay)
        return super().__call__(batch, progress)


def teacher(delay: float = 0.0) -> MLPTeacher:
    torch.manual_seed(0)
    made = SlowTeacher(MLP([3, 32, 2]), SCHEMA, ["y", "z"])
    made.delay = delay
    return made


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generate_targets(teacher(args.slow), sample_inputs(SCHEMA, ROWS, "lhs", seed=1), args.out, shard_size=SHARD_SIZE)
