"""The train stage: KAN students fitted to a soft-target cache (`distill`, `StudentSpec`, `TrainConfig`), the
fitting inner loop and the sparse schedule (`fit_kan`, `sparse_fit`), losses, checkpoints, and the fidelity
metrics (R², KL, agreement) that every stage reports."""

from kandistill.distill.train.fit import FitConfig, FitHistory, fit_kan
from kandistill.distill.train.loop import DistillResult, StudentSpec, TrainConfig, TrainError, distill
from kandistill.distill.train.metrics import label_fidelity, r2_score, scalar_fidelity
from kandistill.distill.train.schedule import ScheduleConfig, sparse_fit

__all__ = ["DistillResult", "FitConfig", "FitHistory", "ScheduleConfig", "StudentSpec", "TrainConfig", "TrainError",
           "distill", "fit_kan", "label_fidelity", "r2_score", "scalar_fidelity", "sparse_fit"]  # fmt: skip
