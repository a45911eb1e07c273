"""The built-in policy's named sizes, apart from the model so that the command line can
name them without importing torch."""

#: Named sizes (the vocabulary size is the task tokenizer's, filled in by :func:`preset`).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=32, n_layers=2, n_heads=2, d_ff=96),
    "small": dict(d_model=128, n_layers=4, n_heads=4, d_ff=352),
    "base": dict(d_model=256, n_layers=6, n_heads=8, d_ff=704),
    # GPU sizes: big enough that a decode step captured as a CUDA graph is the GPU's work
    "large": dict(d_model=1024, n_layers=16, n_heads=16, d_ff=2816),
    "xl": dict(d_model=2048, n_layers=16, n_heads=16, d_ff=5632),
}
