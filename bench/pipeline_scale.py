"""Benchmark: how each pipeline stage's time grows with the data, on ``--n-small`` and ``--n-large`` images.

For each size: a temporary project folder (this repository's ``params.yaml`` and ``dvc.yaml``, the code from
this checkout) gets ``roadwork synth`` data (``--n``, seed ``--seed``), and every stage of ``dvc.yaml`` runs
in order, in one fresh Python process per size, each stage timed alone (wall clock, in-process through the
CLI's ``main``, heavy imports done before the first timer, so no stage is charged for importing torch or
Lightning): ingest, dedupe, split, adapt, embed / train / calibrate / evaluate for both variants, bundle.
MLflow logs to a SQLite store in the temporary folder. Not timed: drawing the data.

The same settings serve both sizes, so a growth factor compares the same work on more images:

* ``--backbone tiny`` (default; ``efficientnet_lite0`` is the pipeline's own, far slower on a CPU) for
  ``backbone.id``: the stages' own work (decoding, rendering, hashing, bootstrap, bookkeeping) then
  dominates, which is where a superlinear step would hide. ``dedupe.backbone`` stays the pinned
  ``efficientnet_lite0``: the tiny network's random features are so alike that its cosine check would join
  most images into one group, and the split would fail.
* fixed epochs: ``train.max_epochs = --epochs`` (5) with early stopping off (patience = epochs), ExPLoRA for
  one epoch with no step cap (its steps grow with the train split, as they do in a real run) and small
  crops / prototypes; ``embed.train_copies = 1``; ``evaluate.renders_per_level = 2``,
  ``bootstrap_resamples = 200``, ``reward_streams = 200``.

Prints each stage's seconds at both sizes and its growth factor, plus the load average; exits 1 when a
stage grows by more than ``--max-growth`` (4.5) for 4x the data (the bound scales as ``4.5 / 4`` times
the size ratio when other sizes are given).

Usage: python bench/pipeline_scale.py [--n-small 600] [--n-large 2400] [--backbone tiny] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = (
    ("ingest", None),
    ("dedupe", None),
    ("split", None),
    ("adapt", None),
    *(
        (stage, variant)
        for variant in ("base", "adapted")
        for stage in ("embed", "train", "calibrate", "evaluate")
    ),
    ("bundle", None),
)


def write_params(project: Path, backbone: str, epochs: int) -> None:
    """This repository's params.yaml with the benchmark's settings (the same at every size)."""
    from omegaconf import OmegaConf

    params = OmegaConf.load(REPO / "params.yaml")
    params.backbone.id = backbone
    params.embed.train_copies = 1
    params.train.update({"max_epochs": epochs, "early_stopping_patience": epochs})
    params.adapt.update(
        {"epochs": 1, "max_steps": 0, "local_crop_size": 48, "out_dim": 64, "head_hidden_dim": 32}
    )
    params.evaluate.update({"renders_per_level": 2, "bootstrap_resamples": 200, "reward_streams": 200})
    OmegaConf.save(params, project / "params.yaml")


def run_stages(project: Path) -> dict[str, float]:
    """Every stage in order inside ``project`` (the current process); seconds per stage."""
    import lightning  # noqa: F401  (imported before the timers: no stage pays for it)
    import mlflow  # noqa: F401

    from roadwork.cli import main as cli

    for module in ("ingest", "dedupe", "split", "adapt", "embed", "train", "calibrate", "evaluate", "bundle"):
        __import__(f"roadwork.stages.{module}")
    os.chdir(project)
    times: dict[str, float] = {}
    for stage, variant in STAGES:
        argv = [stage, *(["--variant", variant] if variant else [])]
        start = time.perf_counter()
        if cli(argv) != 0:
            raise SystemExit(f"roadwork {' '.join(argv)} failed in {project}")
        times[stage if variant is None else f"{stage}@{variant}"] = time.perf_counter() - start
    return times


def measure(n: int, seed: int, backbone: str, epochs: int, work: Path) -> dict[str, float]:
    """A fresh project of ``n`` synthetic images under ``work``; the stage times of a child process."""
    project = work / f"n{n}"
    project.mkdir()
    write_params(project, backbone, epochs)
    shutil.copy2(REPO / "dvc.yaml", project / "dvc.yaml")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
    }
    synth = [
        sys.executable,
        "-m",
        "roadwork.cli",
        "synth",
        "data",
        "--n",
        str(n),
        "--seed",
        str(seed),
        "--quiet",
    ]
    subprocess.run(synth, cwd=project, env=env, check=True)
    child = [sys.executable, __file__, "--run-stages", str(project)]
    done = subprocess.run(child, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the stages of {n} images failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-small", type=int, default=600)
    parser.add_argument("--n-large", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="tiny", choices=("tiny", "efficientnet_lite0"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-growth", type=float, default=4.5, help="allowed growth for 4x the data")
    parser.add_argument("--run-stages", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_stages is not None:  # the child: time the stages of one prepared project
        print(json.dumps(run_stages(args.run_stages)))
        return 0

    ratio = args.n_large / args.n_small
    bound = args.max_growth / 4 * ratio
    with tempfile.TemporaryDirectory(prefix="pipeline-scale-") as tmp:
        small = measure(args.n_small, args.seed, args.backbone, args.epochs, Path(tmp))
        large = measure(args.n_large, args.seed, args.backbone, args.epochs, Path(tmp))
    print(
        f"pipeline_scale: {args.n_small} vs {args.n_large} images ({ratio:g}x), backbone {args.backbone}, "
        f"{args.epochs} epochs; load average {os.getloadavg()[0]:.1f}; bound {bound:.2f}x"
    )
    print(f"{'stage':<20} {'small s':>9} {'large s':>9} {'growth':>8}")
    failed = []
    for stage in small:
        growth = large[stage] / small[stage]
        flag = "" if growth <= bound else "  > bound"
        failed += [stage] if flag else []
        print(f"{stage:<20} {small[stage]:9.2f} {large[stage]:9.2f} {growth:7.2f}x{flag}")
    total_small, total_large = sum(small.values()), sum(large.values())
    print(f"{'total':<20} {total_small:9.2f} {total_large:9.2f} {total_large / total_small:7.2f}x")
    if failed:
        print(f"grew by more than {bound:.2f}x: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
