"""``rollout-ledger train``: asynchronous RL through the reinforcement workflow.

torch and the workflow are imported when the command runs, not when its parser is
built, so ``rollout-ledger --help`` stays light.  Every number is checked as it is
parsed (a count of at least 1 or 0, a finite positive rate), ``--init`` must be a
file and ``--run-dir`` a folder that can be written, so a bad value is refused
before torch is loaded."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Callable

from engine.log import LogError
from engine.log.files import OutputError, check_directory
from engine.runtime.collector import MODES as GC_MODES
from engine.backends.local.sizes import SIZES
from engine.backends.local.schedule import LR_SCHEDULES
from engine.workflows.rl_config import ENGINES, MAX_SEED, METRIC_SINKS, RunConfig


def _staleness(text: str) -> int | None:
    if text.lower() in ("none", "inf", "null"):
        return None
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0 or 'none', got {value}")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _at_least(least: int) -> Callable[[str], int]:
    """An argument type: a whole number of at least ``least``."""

    def parse(text: str) -> int:
        value = _whole(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    parse.__name__ = f"whole number >= {least}"
    return parse


def _seed(text: str) -> int:
    value = _whole(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_SEED}, got {value}")
    return value


def _finite_number(text: str, *, zero: bool) -> float:
    """``text`` as a finite number above 0 (or, with ``zero``, of at least 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not ((value >= 0 if zero else value > 0) and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number {'of at least 0' if zero else 'above 0'}, got {text}")
    return value


def _positive_number(text: str) -> float:
    return _finite_number(text, zero=False)


def _non_negative_number(text: str) -> float:
    return _finite_number(text, zero=True)


def _sinks(text: str) -> tuple[str, ...]:
    """``--metrics``: a comma-separated list of sinks, each known and given once."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METRIC_SINKS + ("jsonl",)]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown sink {unknown[0]!r}; known are jsonl, {', '.join(METRIC_SINKS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a sink is named twice in {text!r}")
    return tuple(name for name in names if name != "jsonl")  # metrics.jsonl is always written


def _weights_file(text: str) -> str:
    """``--init``: an existing file (what it holds is checked when the run loads it)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a file of model weights")
    return text


#: ``--model`` values that name the built-in policy's sizes (anything else is a model directory).
BUILT_IN_MODELS = tuple(SIZES)


def _model(text: str) -> str:
    """``--model``: a built-in size, or a Hugging Face model directory (``config.json``
    inside), made absolute so that a resume from elsewhere finds it."""
    if text in BUILT_IN_MODELS:
        return text
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not {', '.join(BUILT_IN_MODELS)} nor a model directory")
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a Hugging Face model directory (no config.json)")
    return str(path.resolve())


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = RunConfig()
    parser = subparsers.add_parser("train", help="train a policy with asynchronous rollouts driven by the ledger")
    parser.add_argument("--task", default=defaults.task,
                        help="built-in task (copy, reverse, repeat), rg:NAME[:key=value,...] (reasoning-gym, with dataset options) or jsonl:FILE (prompt/answer lines)")
    parser.add_argument("--model", type=_model, default=None,
                        help="the built-in policy (tiny, small, base, large, xl; default tiny) or a local Hugging Face model directory (needs [hf])")
    parser.add_argument("--reward", default=None, metavar="MODULE:FUNCTION",
                        help="a reward(prompt, completion, answer) -> float to score completions instead of the task's verifier")
    parser.add_argument("--max-new-tokens", type=_at_least(1), default=None,
                        help="tokens a completion may take (rg: and jsonl: tasks; default 32)")
    parser.add_argument("--max-staleness", type=_staleness, default=defaults.max_staleness, help="0 = synchronous; 'none' = unbounded")
    parser.add_argument("--policy", default=defaults.policy, choices=("admission", "strict", "segment_wise"))
    parser.add_argument("--on-stale", default=defaults.on_stale, choices=("drop", "requeue"))
    parser.add_argument("--in-order", action="store_true",
                        help="batches wait for rollouts started under older versions: no long rollout is overtaken by "
                             "newer, shorter ones (each batch the synchronous run's mix, about equally stale)")
    parser.add_argument("--objective", default=defaults.objective, choices=("decoupled", "ppo"))
    parser.add_argument("--proximal", default=None, choices=("recompute", "interpolate", "segment"))
    parser.add_argument("--device", default=None, choices=("cuda", "cpu"), help=f"default {defaults.device}")
    parser.add_argument("--model-size", default=None, help="tiny, small, base, large or xl (the same as --model SIZE)")
    parser.add_argument("--steps", type=_at_least(1), default=None, help=f"policy versions (updates) to reach (default {defaults.steps})")
    parser.add_argument("--batch-size", type=_at_least(1), default=defaults.batch_size, help="rollouts (prompts) per update")
    parser.add_argument("--group-size", type=_at_least(1), default=defaults.group_size, help="samples per prompt (GRPO group)")
    parser.add_argument("--max-concurrent", type=_at_least(1), default=None, help="rollouts in flight (default: batch size)")
    parser.add_argument("--minibatches", type=_at_least(1), default=defaults.minibatches)
    parser.add_argument("--lr", type=_positive_number, default=defaults.lr)
    parser.add_argument("--sft-lr", type=_positive_number, default=defaults.sft_lr)
    parser.add_argument("--lr-warmup", type=_at_least(0), default=defaults.lr_warmup, help="RL updates of linear learning-rate warm-up")
    parser.add_argument("--lr-schedule", default=defaults.lr_schedule, choices=LR_SCHEDULES,
                        help="after warm-up: constant, or cosine down to a tenth of --lr by the last update")
    parser.add_argument("--kl-target", type=_non_negative_number, default=defaults.kl_target, metavar="KL",
                        help="scale the rate down (by 1.5 per update, back up to --lr's schedule) while an update's mean "
                             "kl_behaviour exceeds twice KL, the distance stale samples tolerate (0: off)")
    parser.add_argument("--kl-coef", type=_non_negative_number, default=defaults.kl_coef,
                        help="weight of the KL penalty to the policy RL starts from (0: none)")
    parser.add_argument("--entropy-coef", type=_non_negative_number, default=defaults.entropy_coef,
                        help="weight of the entropy bonus (0: entropy only measured)")
    parser.add_argument("--behaviour-m2", type=_non_negative_number, default=defaults.behaviour_m2, metavar="BOUND",
                        help="drop the tokens furthest from the policy that sampled them until the mean squared "
                             "log-ratio of a minibatch's tokens is at most BOUND (0: keep every token)")
    parser.add_argument("--engine", default=defaults.engine, choices=ENGINES,
                        help="generation engine: auto (in process), or vllm for a --model DIR ([vllm] extra)")
    parser.add_argument("--overlap", action="store_true",
                        help="generate while the trainer trains: the in-process engine runs in a thread of its own on "
                             "its own copy of the weights (a CUDA stream of its own on a GPU), paused only to load each version's weights")
    parser.add_argument("--keep-cache", action="store_true",
                        help="after each version's weights, decode on over the keys and values the earlier weights cached "
                             "instead of prefilling the rollouts in flight again (no re-prefill pass; each token still "
                             "records the log-probability that sampled it)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="on a GPU, capture the built-in engine's decode step once as a CUDA graph and replay it: "
                             "a step then costs the GPU's time, not the host's launches of a few hundred kernels")
    parser.add_argument("--vllm-memory", type=_positive_number, default=None, metavar="FRACTION",
                        help="vLLM's share of GPU memory (host memory on a CPU); default 0.3 on a GPU, 0.05 on a CPU")
    parser.add_argument("--metrics", type=_sinks, default=defaults.metrics, metavar="SINK[,SINK]",
                        help="where metrics go besides RUN_DIR/metrics.jsonl: tensorboard, wandb (offline) ([metrics] extra)")
    parser.add_argument("--warmup-steps", type=_at_least(0), default=defaults.warmup_steps, help="supervised warm-up steps")
    parser.add_argument("--init", type=_weights_file, default=None, help="start from these weights instead of a warm-up")
    parser.add_argument("--temperature", type=_positive_number, default=defaults.temperature)
    parser.add_argument("--eval-temperature", type=_non_negative_number, default=None, metavar="T",
                        help="sampling temperature of the held-out evaluations (0: greedy, the most likely token; "
                             "default: --temperature)")
    parser.add_argument("--timeout", type=_positive_number, default=None, help="seconds a rollout may take")
    parser.add_argument("--max-retries", type=_at_least(0), default=defaults.max_retries)
    parser.add_argument("--checkpoint-every", type=_at_least(0), default=defaults.checkpoint_every, metavar="N",
                        help="write the trainer's checkpoint every N updates and after the last (default %(default)s); "
                             "0: none after version 0's, for a timing study (final.safetensors is still written; "
                             "a resume goes on from version 0's weights)")
    parser.add_argument("--seed", type=_seed, default=defaults.seed)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/train"))
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its log and checkpoint")
    parser.add_argument("--requeue-lost", action="store_true", help="on resume, requeue rollouts that were running")
    parser.add_argument("--eval-size", type=_at_least(0), default=0, help="held-out problems to evaluate before and after")
    parser.add_argument("--eval-every", type=_at_least(0), default=0, metavar="K",
                        help="also evaluate every K updates (metrics' eval_reward; needs --eval-size)")
    parser.add_argument("--ppo-epochs", type=_at_least(1), default=None,
                        help="passes over the batch per update (default 1; on resume, the run's own)")
    parser.add_argument("--gc", default=defaults.gc, choices=GC_MODES,
                        help="when Python's garbage collector runs: between updates (default) or whenever it would (auto)")
    parser.add_argument("--threads", type=_at_least(1), default=1, help="CPU threads for torch with --device cpu (small models run best on one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--nproc", type=_at_least(1), default=None, metavar="N",
                        help="data-parallel trainer ranks on this machine (torchrun; gloo on the CPU, NCCL on GPUs)")
    parser.add_argument("--generators", type=_at_least(0), default=0, metavar="K",
                        help="generator ranks apart from the trainers (with --nproc, or under torchrun)")
    parser.add_argument("--dist-timeout", type=_positive_number, default=60.0, metavar="SECONDS",
                        help="how long a collective of a distributed run waits for a rank before the run stops (default 60)")
    parser.set_defaults(run=run_command, inputs=("run_dir",))
    profile = subparsers.add_parser(
        "profile-step", help="time a run's training update alone at several batch sizes, for calibrate --step-profile",
        description="Build RUN's model and trainer again (its run.json), take batches of its stored groups (samples.sqlite) "
                    "of each --rows count and time the whole update; write a CSV of rows, padded width, padded tokens and "
                    "seconds (median, p10, p90) that `calibrate --step-profile` fits. RUN is only read.",
    )
    profile.add_argument("run_dir", type=Path, metavar="RUN", help="a train run directory")
    profile.add_argument("-o", "--out", required=True, type=Path, metavar="CSV", help="the profile to write")
    profile.add_argument("--rows", default="32,64,128,256,512", metavar="N,N,...",
                         help="samples per batch, each a multiple of the run's group size (default %(default)s)")
    profile.add_argument("--iterations", type=_at_least(1), default=10, help="timed updates per batch size (default %(default)s)")
    profile.add_argument("--warmup", type=_at_least(0), default=3, help="untimed updates before them (default %(default)s)")
    profile.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the run's")
    profile.add_argument("--threads", type=_at_least(1), default=1, help="CPU threads for torch on a CPU, as train's --threads (default 1)")
    profile.set_defaults(run=run_profile, inputs=("run_dir",))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` of parsed ``train`` arguments."""
    defaults = RunConfig()
    model = args.model or args.model_size or defaults.model_size
    if args.model and args.model_size:
        raise ValueError("--model and --model-size: give one of them")
    built_in = model in BUILT_IN_MODELS or args.model is None
    return RunConfig(
        task=args.task, model_size=model if built_in else defaults.model_size, model_dir=None if built_in else model,
        reward_fn=args.reward, max_new_tokens=args.max_new_tokens, steps=args.steps or defaults.steps, batch_size=args.batch_size, group_size=args.group_size,
        max_concurrent=args.max_concurrent, max_staleness=args.max_staleness, policy=args.policy, on_stale=args.on_stale,
        in_order=args.in_order, objective=args.objective, proximal=args.proximal, minibatches=args.minibatches, lr=args.lr, sft_lr=args.sft_lr,
        warmup_steps=args.warmup_steps, temperature=args.temperature, eval_temperature=args.eval_temperature, timeout_s=args.timeout, max_retries=args.max_retries,
        checkpoint_every=args.checkpoint_every, requeue_lost=args.requeue_lost, init=args.init, seed=args.seed,
        device=args.device or defaults.device, gc=args.gc, kl_coef=args.kl_coef, entropy_coef=args.entropy_coef, behaviour_m2=args.behaviour_m2,
        lr_warmup=args.lr_warmup, lr_schedule=args.lr_schedule, metrics=args.metrics, engine=args.engine,
        vllm_memory=args.vllm_memory, overlap=args.overlap, keep_cache=args.keep_cache, cuda_graphs=args.cuda_graphs, kl_target=args.kl_target,
    )


#: Errors of a bad command line or run directory (a log another process is writing, or
#: that is no log): the command exits 2 with their message.
SETUP_ERRORS = (ValueError, FileNotFoundError, FileExistsError, RuntimeError, LogError)


def _fail(message: object) -> int:
    print(f"rollout-ledger: {message}", file=sys.stderr)
    return 2


def run_command(args: argparse.Namespace) -> int:
    """Run the reinforcement workflow (``engine.workflows.reinforcement``) in ``--run-dir``;
    the last line on stdout is the run's JSON summary."""
    try:
        check_directory(args.run_dir)
        if args.eval_every and not args.eval_size:
            raise ValueError("--eval-every needs --eval-size: how many held-out problems to evaluate")
        config = None if args.resume else config_from_args(args)  # refused here, before torch loads
    except (OutputError, ValueError) as error:
        return _fail(error)
    from engine.backends.distributed.group import under_launcher

    distributed = under_launcher()
    launching = not distributed and (args.nproc is not None or args.generators)

    import torch

    from engine.workflow import StageFailed
    from engine.workflows import reinforcement
    from engine.backends.local.checkpoint import check_checkpoint, checkpoint_file, checkpoints, read_weights
    from engine.backends.task_sources import resolve_task
    from engine.log.lock import check_unlocked
    from engine.workflows.sinks import check_sinks

    try:
        if args.init is not None:  # what the file holds, before the run starts
            read_weights(args.init)
        if config is None:
            check_unlocked(args.run_dir / "events.sqlite")  # a run still writing here is named before its files are read
            config = RunConfig.saved(args.run_dir, steps=args.steps, device=args.device, requeue_lost=args.requeue_lost or None)
            for version in checkpoints(args.run_dir / "checkpoints"):  # what a resume may load, before it starts
                path = checkpoint_file(args.run_dir / "checkpoints", version)
                check_checkpoint(path or "")
        # the task, the user's reward and the model's tokenizer, before the run starts
        resolve_task(config.task, reward=config.reward_fn, max_new_tokens=config.max_new_tokens)
        check_sinks(config.metrics)
        if config.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise RuntimeError("--engine vllm needs vLLM: pip install 'rollout-ledger[vllm]'")
        if config.model_dir is not None:
            from engine.backends.hf.model import load_tokenizer

            load_tokenizer(config.model_dir)
        if config.device == "cpu":
            torch.set_num_threads(max(1, args.threads))
        if launching:  # checked here; the ranks run this command line again
            from engine.workflows.rl_dist import check_split

            check_split(config, args.nproc or 1, args.generators)
            return _launch(args)
        if distributed:  # this process is one rank of a distributed run (torchrun started it)
            from engine.workflows.rl_dist import run_worker

            result = run_worker(config, args.run_dir, generators=args.generators, timeout_s=args.dist_timeout, resume=args.resume,
                                ppo_epochs=args.ppo_epochs, eval_size=args.eval_size, eval_every=args.eval_every,
                                progress=not args.no_progress)
            if result is None:  # not rank 0: rank 0 prints the summary
                return 0
            summary = result
        else:
            summary = reinforcement.train(config, args.run_dir, resume=args.resume, ppo_epochs=args.ppo_epochs,
                                          eval_size=args.eval_size, eval_every=args.eval_every, progress=not args.no_progress)
    except StageFailed as failure:
        lost = _rank_failed(failure.error) if distributed else None
        if lost is not None:  # another rank of a distributed run stopped taking part: one line naming it
            print(f"rollout-ledger: {lost}", file=sys.stderr)
            return 1
        if failure.path != f"{reinforcement.WORKFLOW.name}/init_session" or not isinstance(failure.error, SETUP_ERRORS):
            raise
        return _fail(failure.error)
    except SETUP_ERRORS as error:
        return _fail(error)
    print(json.dumps(summary))
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N [--generators K]``: the same command line on ``N + K`` ranks of this
    machine (:mod:`engine.backends.distributed.launch`); 1 with one line naming the rank that
    failed first when one does."""
    from engine.backends.distributed.launch import launch

    failure = launch(args.command_line, args.nproc or 1, args.generators)
    if failure is not None:
        print(f"rollout-ledger: {failure}", file=sys.stderr)
        return 1
    return 0


def _rank_failed(error: BaseException | None) -> BaseException | None:
    """The :class:`~engine.backends.distributed.group.RankFailed` behind ``error``, if any."""
    from engine.backends.distributed.group import RankFailed

    while error is not None and not isinstance(error, RankFailed):
        error = error.__cause__
    return error


def run_profile(args: argparse.Namespace) -> int:
    """``profile-step``: time the run's update at each row count and write the CSV."""
    from engine.log.files import check_output, write_atomic

    try:
        rows = [int(n) for n in args.rows.split(",")]
    except ValueError:
        return _fail(f"--rows {args.rows!r}: not a list of whole numbers")
    run_dir = args.run_dir
    if not (run_dir / "run.json").is_file():
        return _fail(f"{run_dir}: not a train run directory (no run.json)")
    out = check_output(args.out, run_dir / "run.json", run_dir / "samples.sqlite")
    import torch

    from engine.workflows.step_profile import ProfileRow, profile_step, to_csv

    torch.set_num_threads(args.threads)  # on a CPU, the threads the run's own step had (train --threads)

    headed = False  # the table's header comes with its first row, once the inputs are known good

    def show(row: ProfileRow) -> None:
        nonlocal headed
        if not headed:
            print("| rows | width | padded tokens | update ms (median) | p10 | p90 |\n|---:|---:|---:|---:|---:|---:|", flush=True)
            headed = True
        print(f"| {row.rows} | {row.width} | {row.padded_tokens} | {row.seconds * 1e3:.2f} | {row.p10_s * 1e3:.2f} | "
              f"{row.p90_s * 1e3:.2f} |", flush=True)

    try:
        found = profile_step(run_dir, rows, iterations=args.iterations, warmup=args.warmup, device=args.device, progress=show)
    except SETUP_ERRORS as error:
        return _fail(error)
    write_atomic(out, to_csv(found))
    print(f"wrote {out}")
    return 0
