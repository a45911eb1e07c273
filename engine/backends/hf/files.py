"""Model directories written offline: a randomly initialised model with a tokenizer
trained here (``init-model``), and a GGUF file turned into safetensors (``import-model``).

Both write into a temporary folder beside ``OUT_DIR`` and rename it into place once
complete, so a failure leaves nothing behind (and an existing ``OUT_DIR`` is refused
before any work).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from engine.backends.hf.model import _offline

ARCHITECTURES = ("qwen2", "llama")

#: Text the byte-level BPE of ``init-model`` is trained on: the built-in tasks' and the
#: reasoning-gym arithmetic tasks' vocabulary (digits, operators, English words).
CORPUS = [
    "Calculate 444 + -825 - 662. State the final answer to the following arithmetic problem: 6 - 7 - 9 + 0 + 3 - 7 =",
    "What is 12 * 7 + 3 / 1? Answer with a number. Solve the following problem and give only the final answer.",
    "rev:abcdefgh= cp:abcd= rep:ab*3= the quick brown fox jumps over the lazy dog 0123456789",
    "Question: How many apples are left? Add, subtract, multiply and divide. The sum of the numbers is",
    "Please reason step by step, and put your final answer at the end. Compute the result of the expression.",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


@contextmanager
def _directory_into_place(out_dir: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``out_dir``, renamed to ``out_dir`` once the block ends."""
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: exists; the command writes a new folder")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(2, "No such directory", str(parent))
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
    try:
        yield partial
        for written in partial.iterdir():  # on disk before the folder takes its name
            with open(written, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(partial, out_dir)
        directory = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


def build_tokenizer(vocab_size: int = 512):  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer trained on :data:`CORPUS`, with the specials and a chat
    template: a ``transformers`` fast tokenizer, built without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|end|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def init_model(arch: str, layers: int, hidden: int, out_dir: str | Path, *, seed: int = 0, max_positions: int = 2048) -> Path:
    """Write a randomly initialised ``arch`` model (``layers`` blocks of width ``hidden``)
    with a tokenizer trained offline into the new folder ``out_dir``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    if layers < 1 or hidden < 8:
        raise ValueError(f"a model needs at least 1 layer and a width of 8, got {layers} and {hidden}")
    heads = max(1, hidden // 32)
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"--hidden {hidden} does not split into {heads} heads of even width")
    _offline()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    with _directory_into_place(out_dir) as partial:
        tokenizer = build_tokenizer()
        sizes = dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        if arch == "qwen2":
            model = Qwen2ForCausalLM(Qwen2Config(**sizes))
        else:
            model = LlamaForCausalLM(LlamaConfig(**sizes))
        model.save_pretrained(str(partial), safe_serialization=True)
        tokenizer.save_pretrained(str(partial))
    return out_dir


def import_gguf(gguf: str | Path, out_dir: str | Path) -> Path:
    """Turn the GGUF file ``gguf`` (weights de-quantised to float32, and its tokenizer) into
    the new safetensors model folder ``out_dir``."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(2, "No such file", str(gguf))
    with open(gguf, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{gguf}: not a GGUF file (it does not start with 'GGUF')")
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    with _directory_into_place(out_dir) as partial:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32)
        except ImportError as err:  # gguf (and accelerate) are needed to read the file
            raise ValueError(f"{gguf}: reading GGUF needs {err.name or 'gguf and accelerate'}: pip install 'rollout-ledger[hf]'") from None
        except (ValueError, KeyError, RuntimeError) as err:
            text = str(err).strip()
            raise ValueError(f"{gguf}: cannot import ({text.splitlines()[0] if text else type(err).__name__})") from None
        # The weights are de-quantised already: the GGUF "quantizer" transformers attaches
        # is a marker only, and save_pretrained refuses a model that carries one.
        model.hf_quantizer = None
        for holder in (model, model.config):
            if hasattr(holder, "quantization_config"):
                delattr(holder, "quantization_config")
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        model.save_pretrained(str(partial), safe_serialization=True)
        tokenizer.save_pretrained(str(partial))
    return out_dir
