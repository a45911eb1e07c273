"""Data-parallel training and disaggregated generation on ``torch.distributed``.

- :mod:`.group`: the ranks' roles (trainer ranks ``0..N-1``, generator ranks after
  them), the process groups (NCCL on GPUs, gloo on the CPU and for control
  messages) and their messages;
- :mod:`.trainer`: :class:`~.trainer.DataParallelTrainer`, the trainer whose steps
  run on every trainer rank in lockstep with gradients all-reduced, and the loop of
  the ranks other than 0;
- :mod:`.generation`: :class:`~.generation.RemoteEngine`, the generation port on
  rank 0 that drives the generator ranks, and their serving loop;
- :mod:`.launch`: ``rollout-ledger train --nproc N`` starting the ranks through
  torch's elastic launcher (``torchrun``) and naming a rank that died.

Only rank 0 opens the ledger and writes the log; the other ranks report through it
(their statistics and generated tokens travel to rank 0, which appends the events).
"""
