"""The engines of kandistill's stages, one sub-package each, importable alone:

- `kandistill.distill.targets`: sampling the teacher's inputs, the sharded, resumable soft-target cache
  (`SoftTargetCache`), folder locks;
- `kandistill.distill.train`: the training loop (`train_students`), the fitting inner loop and its schedule,
  losses, checkpoints, the fidelity metrics;
- `kandistill.distill.extract`: per-edge symbolic fits, formulas as data (allow-listed trees), canonical
  forms, the functional ANOVA and the components of a student;
- `kandistill.distill.discover`: formula search from data or a teacher (the plain search, separability
  tests, the recursion) and the AI Feynman equations.

Arrows point down the list only in the other direction: ``discover`` uses ``extract`` and ``train``;
``extract`` uses ``train``'s fitting; ``train`` uses ``targets``.
"""
