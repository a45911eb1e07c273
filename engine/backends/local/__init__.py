"""Torch backend of the trainer: policy model, tasks, generation engine, objectives, checkpoints."""
