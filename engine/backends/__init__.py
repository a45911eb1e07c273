"""Model backends behind the runtime's ports: ``local`` is the tiny torch policy, its
continuous-batching generation engine, trainer, objectives, tasks and checkpoints."""
