"""The Hugging Face backend: any local causal LM directory (config, safetensors weights,
tokenizer) as the policy, a batched KV-cached generation engine for it, and the
commands' helpers that write such directories offline (``init-model``, ``import-model``).
Needs the ``[hf]`` extra (transformers, tokenizers, safetensors)."""
