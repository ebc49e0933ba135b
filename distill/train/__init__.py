"""The train stage: KAN students fitted to a soft-target cache (`train_students`, `StudentSpec`, `TrainConfig`), the
fitting inner loop and the sparse schedule (`fit_kan`, `sparse_fit`), losses, checkpoints, and the fidelity
metrics (R², KL, agreement) that every stage reports."""

import lazy_loader

# Imported on first use: reading a saved student needs `config` alone, never the loop's accelerate.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["StudentSpec", "TrainConfig", "TrainError"],
        "fit": ["FitConfig", "FitHistory", "fit_kan"],
        "loop": ["DistillResult", "train_students"],
        "metrics": ["label_fidelity", "r2_score", "scalar_fidelity"],
        "schedule": ["ScheduleConfig", "sparse_fit"],
    },
)
