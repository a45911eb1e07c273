"""``serve-trainer``: a trainer behind the TrainingClient port, over HTTP on loopback
(needs the ``[remote]`` extra: starlette, uvicorn, httpx).  It prints one line, ``serving
the trainer at URL``, then serves until interrupted; a workflow's ``trainer = "remote"``
adapter (or :class:`engine.backends.remote.client.RemoteTrainingClient`) drives it."""

from __future__ import annotations

import argparse
import importlib.util
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve-trainer", help="serve a trainer over HTTP on loopback (needs [remote])")
    serve.add_argument("--port", type=int, default=0, help="loopback port (default 0: any free one, printed)")
    serve.add_argument("--model", default=None, help="a Hugging Face model directory (default: the local torch policy)")
    serve.add_argument("--size", default="tiny", help="the local policy's size (default tiny)")
    serve.add_argument("--seq-len", type=int, default=64, help="the local policy's longest sequence (default 64)")
    serve.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    serve.add_argument("--seed", type=int, default=0, help="the local policy's initialisation seed")
    serve.set_defaults(run=run_serve, inputs=("model",))


def run_serve(args: argparse.Namespace) -> int:
    from engine.cli import fail

    missing = [name for name in ("starlette", "uvicorn", "httpx") if importlib.util.find_spec(name) is None]
    if missing:
        return fail(f"serve-trainer needs {', '.join(missing)}: pip install 'rollout-ledger[remote]'")
    if not 0 <= args.port < 65536:
        return fail(f"--port: {args.port} is not a port (0 to 65535)")
    import torch

    from engine.backends.local.trainer import TrainerConfig
    from engine.backends.remote.server import bind, serve, url_of

    config = TrainerConfig(lr=args.lr)
    if args.model is not None:
        from engine.backends.hf.client import hf_training_client
        from engine.backends.hf.model import check_model_dir

        client = hf_training_client(check_model_dir(args.model), config)
    else:
        from engine.backends.local.client import LocalTrainingClient
        from engine.backends.local.model import Policy, preset
        from engine.backends.local.tasks import Tokenizer
        from engine.backends.local.trainer import Trainer

        torch.manual_seed(args.seed)
        tokenizer = Tokenizer()
        policy = Policy(preset(args.size, tokenizer.vocab_size, args.seq_len))
        client = LocalTrainingClient(Trainer(policy, config, pad_id=tokenizer.pad_id, device="cpu"))
    try:
        sock = bind(args.port)
    except OSError as err:
        return fail(f"--port {args.port}: {err.strerror or err}")
    print(f"serving the trainer at {url_of(sock)}", flush=True)
    try:
        serve(client, sock)
    except KeyboardInterrupt:  # Ctrl-C (SIGINT) is how a served trainer is stopped
        pass
    finally:
        client.close()
    return 0
