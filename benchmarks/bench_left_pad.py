"""Building the Hugging Face engine's rebuilt batch: one conversion against row by row.

After new weights the engine prefills every sequence in flight again as one left-padded
batch (``engine.backends.hf.generation.left_padded``). An H200 profile of an
asynchronous run (584 rows of about 126 tokens a rebuild, one rebuild an update) found
the row-by-row build, a tensor per row written into a padded one, at several per cent of
the update. This times both on the host, where that work runs, for batches of
``--rows`` contexts of 90 to 160 tokens, and prints a table::

    python3 benchmarks/bench_left_pad.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from engine.backends.hf.generation import left_padded


def row_by_row(contexts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: the batch filled one row at a time."""
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, context in enumerate(contexts):
        ids[row, width - len(context):] = torch.tensor(context)
        mask[row, width - len(context):] = 1
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="64,256,584,1024")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = random.Random(0)
    print("| rows | row by row ms | one conversion ms | speed-up |\n|---:|---:|---:|---:|")
    for rows in (int(r) for r in args.rows.split(",")):
        contexts = [[rng.randrange(1, 500) for _ in range(rng.randint(90, 160))] for _ in range(rows)]
        expected = row_by_row(contexts, 0)
        got = left_padded(contexts, 0)
        assert all(torch.equal(a, b) for a, b in zip(expected, got)), "the two builds disagree"
        times = {}
        for name, build in (("row", row_by_row), ("one", left_padded)):
            seconds = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                build(contexts, 0)
                seconds.append(time.perf_counter() - began)
            times[name] = statistics.median(seconds) * 1000
        print(f"| {rows} | {times['row']:.2f} | {times['one']:.2f} | {times['row'] / times['one']:.1f}x |")


if __name__ == "__main__":
    main()
