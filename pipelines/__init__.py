"""Pipelines: the CLI, the end-to-end runner and the demo."""
