"""``rollout-ledger train``: asynchronous RL through the reinforcement workflow.

torch and the workflow are imported when the command runs, not when its parser is
built, so ``rollout-ledger --help`` stays light."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.log import LogError
from engine.runtime.collector import MODES as GC_MODES
from engine.workflows.rl_config import RunConfig


def _staleness(text: str) -> int | None:
    if text.lower() in ("none", "inf", "null"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"--max-staleness must be at least 0 or 'none', got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = RunConfig()
    parser = subparsers.add_parser("train", help="train a policy with asynchronous rollouts driven by the ledger")
    parser.add_argument("--task", default=defaults.task, help="built-in task: copy, reverse or repeat")
    parser.add_argument("--max-staleness", type=_staleness, default=defaults.max_staleness, help="0 = synchronous; 'none' = unbounded")
    parser.add_argument("--policy", default=defaults.policy, choices=("admission", "strict", "segment_wise"))
    parser.add_argument("--on-stale", default=defaults.on_stale, choices=("drop", "requeue"))
    parser.add_argument("--objective", default=defaults.objective, choices=("decoupled", "ppo"))
    parser.add_argument("--proximal", default=None, choices=("recompute", "interpolate", "segment"))
    parser.add_argument("--device", default=None, choices=("cuda", "cpu"), help=f"default {defaults.device}")
    parser.add_argument("--model-size", default=defaults.model_size, help="tiny, small or base")
    parser.add_argument("--steps", type=int, default=None, help=f"policy versions (updates) to reach (default {defaults.steps})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rollouts (prompts) per update")
    parser.add_argument("--group-size", type=int, default=defaults.group_size, help="samples per prompt (GRPO group)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="rollouts in flight (default: batch size)")
    parser.add_argument("--minibatches", type=int, default=defaults.minibatches)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--sft-lr", type=float, default=defaults.sft_lr)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="supervised warm-up steps")
    parser.add_argument("--init", default=None, help="start from these weights instead of a warm-up")
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--timeout", type=float, default=None, help="seconds a rollout may take")
    parser.add_argument("--max-retries", type=int, default=defaults.max_retries)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/train"))
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its log and checkpoint")
    parser.add_argument("--requeue-lost", action="store_true", help="on resume, requeue rollouts that were running")
    parser.add_argument("--eval-size", type=int, default=0, help="held-out problems to evaluate before and after")
    parser.add_argument("--ppo-epochs", type=int, default=None,
                        help="passes over the batch per update (default 1; on resume, the run's own)")
    parser.add_argument("--gc", default=defaults.gc, choices=GC_MODES,
                        help="when Python's garbage collector runs: between updates (default) or whenever it would (auto)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch with --device cpu (small models run best on one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_command)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` of parsed ``train`` arguments."""
    defaults = RunConfig()
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be at least 1, got {args.checkpoint_every}")
    return RunConfig(
        task=args.task, model_size=args.model_size, steps=args.steps or defaults.steps, batch_size=args.batch_size, group_size=args.group_size,
        max_concurrent=args.max_concurrent, max_staleness=args.max_staleness, policy=args.policy, on_stale=args.on_stale,
        objective=args.objective, proximal=args.proximal, minibatches=args.minibatches, lr=args.lr, sft_lr=args.sft_lr,
        warmup_steps=args.warmup_steps, temperature=args.temperature, timeout_s=args.timeout, max_retries=args.max_retries,
        checkpoint_every=args.checkpoint_every, requeue_lost=args.requeue_lost, init=args.init, seed=args.seed,
        device=args.device or defaults.device, gc=args.gc,
    )


#: Errors of a bad command line or run directory (a log another process is writing, or
#: that is no log): the command exits 2 with their message.
SETUP_ERRORS = (ValueError, FileNotFoundError, FileExistsError, RuntimeError, LogError)


def run_command(args: argparse.Namespace) -> int:
    """Run the reinforcement workflow (``engine.workflows.reinforcement``) in ``--run-dir``;
    the last line on stdout is the run's JSON summary."""
    import torch

    from engine.workflow import StageFailed
    from engine.workflows import reinforcement

    if args.ppo_epochs is not None and args.ppo_epochs < 1:
        print(f"rollout-ledger train: --ppo-epochs must be at least 1, got {args.ppo_epochs}", file=sys.stderr)
        return 2
    try:
        if args.resume:
            config = RunConfig.saved(args.run_dir, steps=args.steps, device=args.device, requeue_lost=args.requeue_lost or None)
        else:
            config = config_from_args(args)
        if config.device == "cpu":
            torch.set_num_threads(max(1, args.threads))
        summary = reinforcement.train(config, args.run_dir, resume=args.resume, ppo_epochs=args.ppo_epochs,
                                      eval_size=args.eval_size, progress=not args.no_progress)
    except StageFailed as failure:
        if failure.path != f"{reinforcement.WORKFLOW.name}/setup" or not isinstance(failure.error, SETUP_ERRORS):
            raise
        print(f"rollout-ledger train: {failure.error}", file=sys.stderr)
        return 2
    except SETUP_ERRORS as error:
        print(f"rollout-ledger train: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
