"""Benchmark: the frozen EfficientNet-Lite0 forward with batch norm folded (ours) vs as saved (the naive way).

Both run in one process on the same seeded batches: the saved network (outside ``torch.inference_mode`` the
backbone runs it as it is) at the old batch of 32, and the batch-norm-folded copy the inference path uses
(``torch.inference_mode``) at the pipeline's ``embed.batch_size`` 16. Each is timed best-of ``--repeats`` over
``--images`` images; prints images/s of both, the ratio, and the largest feature difference.

Usage: python bench/backbone_forward.py [--images 128] [--repeats 3] [--size 224]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from roadwork.models.backbone import load_backbone


def rate(forward: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor], repeats: int) -> float:
    """Best images/s of ``forward`` over ``batches`` (one warm-up pass first)."""
    forward(batches[0])
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            forward(batch)
        best = max(best, sum(len(b) for b in batches) / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=128, help="images per timed pass (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts (default 3)")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    args = parser.parse_args(argv)
    backbone = load_backbone("efficientnet_lite0")
    pixels = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def saved(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return backbone(x)

    def folded(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return backbone(x)

    naive = rate(saved, list(pixels.split(32)), args.repeats)
    ours = rate(folded, list(pixels.split(16)), args.repeats)
    diff = float((saved(pixels[:16]) - folded(pixels[:16])).abs().max())
    threads, images = torch.get_num_threads(), f"{args.images} images of {args.size} px"
    print(f"torch threads {threads}, {images}, best of {args.repeats}")
    print(f"saved network, batch 32 (naive): {naive:7.1f} images/s")
    print(f"folded batch norm, batch 16 (ours): {ours:7.1f} images/s")
    print(f"ratio ours / naive: {ours / naive:.2f}x; max |feature difference| {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
