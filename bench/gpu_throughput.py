"""Benchmark: embed throughput of a ViT-B/14-sized DINOv2 in float32 vs bfloat16, with and without
``torch.compile``, and head-training steps/s: the GPU path of the embed and train stages.

Backbone: a randomly initialised ``Dinov2Model`` of ViT-B/14's shape (hidden 768, 12 layers, 12 heads,
patch 14; ``--size small`` gives ViT-S/14 for a quick run), saved with ``save_pretrained`` and loaded
through roadwork's real ``load_backbone(folder)`` path (SDPA attention), then moved to ``--device``.
Throughput (images/s at 224 px, batch ``--batch``): :func:`roadwork.models.inference.forward_views`' own
forward, i.e. a pinned host batch copied to the device, ``inference_mode``, autocast for bf16, features copied
back as float32. Each configuration gets ``--warmup`` untimed batches (compilation happens there) and then
``--batches`` timed ones, synchronising the device before reading the clock.

Side by side in one run, with ratios against the float32 eager baseline: fp32, bf16, fp32 + compile,
bf16 + compile. Also max |feature difference| of each configuration against fp32 eager (bf16 rounds to
8 significant bits: ~1e-2 relative is expected; compile: ~1e-5).

Head training: :func:`roadwork.train.head.fit_head` on random features ``[N, 1, 1536]`` (ViT-B's
CLS + mean-patch width) for ``--head-epochs`` epochs; steps/s on the device vs on the CPU.

On a machine without CUDA the default run says it is skipped and exits 0 (``make bench`` runs every
benchmark); ``--device cpu`` runs it on the CPU as a smoke test. The figures that matter are taken on a GPU
and recorded in BENCHMARKS.md with the device named.

Usage: python bench/gpu_throughput.py [--device cuda|cpu] [--size base|small] [--batch 64] [--batches 20]
       [--warmup 3] [--no-compile] [--head-epochs 5] [--head-rows 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from roadwork.models.backbone import Backbone, load_backbone

SIZES = {"base": (768, 12, 12), "small": (384, 12, 6)}


def build_vit(folder: Path, size: str) -> Backbone:
    """A random DINOv2 of the given size, saved and loaded back through ``from_pretrained``."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    hidden, layers, heads = SIZES[size]
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, patch_size=14
    )
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return load_backbone(str(folder))


def throughput(
    backbone: Backbone, batch: torch.Tensor, *, bf16: bool, warmup: int, batches: int
) -> tuple[float, np.ndarray]:
    """Images/s of forward passes on ``batch`` and the features of the last pass (float32, CPU)."""
    device = next(backbone.parameters()).device
    host = batch.pin_memory() if device.type == "cuda" else batch

    def once() -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return backbone(host.to(device, non_blocking=True)).float().cpu().numpy()

    for _ in range(warmup):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        features = once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches * len(batch) / (time.perf_counter() - start), features


def head_steps_per_second(device: str, rows: int, epochs: int) -> float:
    from roadwork.train.head import fit_head
    from roadwork.train.head_config import HeadTrainConfig
    from roadwork.train.head_data import FeatureSet

    rng = np.random.default_rng(0)
    features = rng.normal(size=(rows, 1, 1536)).astype(np.float32)
    labels = (rng.random(rows) < 0.5).astype(np.int64)
    ids = np.array([f"{i:064x}" for i in range(rows)])
    n_val = rows // 5
    train = FeatureSet(features[n_val:], labels[n_val:], ids[n_val:])
    val = FeatureSet(features[:n_val], labels[:n_val], ids[:n_val])
    cfg = HeadTrainConfig(max_epochs=epochs, early_stopping_patience=epochs, batch_size=256)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = fit_head(
            train,
            val,
            cfg,
            out_dir=Path(tmp),
            show_progress=False,
            accelerator="gpu" if device == "cuda" else "cpu",
        )
        return result.optimizer_steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--size", default="base", choices=tuple(SIZES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile configurations")
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--head-rows", type=int, default=20_000)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        # `make bench` runs every benchmark: on a CPU-only machine this one has nothing to measure
        print("gpu_throughput: skipped, no CUDA device here (--device cpu: a smoke run on the CPU).")
        return 0
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 baseline is real float32
    print(
        f"device: {name}; DINOv2 ViT-{args.size[0].upper()}/14 (random weights), 224 px, batch {args.batch}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        backbone = build_vit(Path(tmp) / "vit", args.size).to(args.device)
    batch = torch.randn(args.batch, 3, 224, 224)
    configs = [("fp32", False, False), ("bf16", True, False)]
    if not args.no_compile:
        configs += [("fp32+compile", False, True), ("bf16+compile", True, True)]
    eager_forward = backbone.model.forward
    results = {}
    for label, bf16, compiled in configs:
        backbone.model.forward = torch.compile(eager_forward) if compiled else eager_forward
        rate, features = throughput(backbone, batch, bf16=bf16, warmup=args.warmup, batches=args.batches)
        results[label] = (rate, features)
    base_rate, base_features = results["fp32"]
    print(f"{'config':<14} {'images/s':>10} {'vs fp32':>8} {'max|dfeat|':>11}")
    for label, (rate, features) in results.items():
        diff = float(np.abs(features - base_features).max())
        print(f"{label:<14} {rate:>10.1f} {rate / base_rate:>7.2f}x {diff:>11.2e}")

    device_steps = head_steps_per_second(args.device, args.head_rows, args.head_epochs)
    line = f"head training ({args.head_rows} rows x 1536, batch 256): {device_steps:.1f} steps/s on {name}"
    if args.device == "cuda":
        cpu_steps = head_steps_per_second("cpu", args.head_rows, args.head_epochs)
        line += f" vs {cpu_steps:.1f} on the CPU ({device_steps / cpu_steps:.2f}x)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
