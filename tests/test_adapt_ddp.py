"""ExPLoRA adaptation in several processes (``devices=2, strategy="ddp"``, CPU gloo) vs one process.

As in ``tests/test_head_ddp.py``: Lightning's ``ddp`` launcher starts the *calling script* again for rank 1,
so the two-process runs happen in a script (``python tests/test_adapt_ddp.py IMAGES OUT 2``) that Lightning
re-runs with ``LOCAL_RANK=1``; every rank writes a JSON summary of what it computed and what it wrote.
The script makes three calls of :func:`adapt_backbone` with the same processes: a fresh run, the same call
again (it finds the final checkpoint and only rewrites the outputs), and a run resuming mid-way from a
checkpoint that a one-process run, stopped after its first epoch, left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import roadwork.adapt.explora as explora_module
import roadwork.adapt.loop as loop_module
from roadwork.adapt import AdaptConfig, adapt_backbone
from roadwork.adapt.explora import CHECKPOINT_FILE
from roadwork.adapt.processes import GlobalBatchShare
from roadwork.adapt.ssl import ResumableEpochSampler, block_masks, seeded
from roadwork.adapt.step import _mask_share
from roadwork.models.backbone import Backbone, load_backbone
from roadwork.models.merge import backbone_features
from roadwork.train.checkpoint import read_checkpoint

# 8 images, global batch 4 (2 per process): 2 steps per epoch, 3 steps over 2 epochs (the image order is
# reshuffled at the epoch boundary). iBOT is on (the tiny ViT, patch 16: 7 x 7 grid on the 112-pixel global
# crops, 2 x 2 on the 32-pixel local crops); no KoLeo and no adapter dropout, so two processes compute the
# one-process objective, gradients and centres up to float32 summation order. With seed 10 the two processes'
# shares of the iBOT-masked patch tokens are unequal at every step (27/31, 0/54, 38/17), and rank 0 has
# none at step 2: the iBOT centre must be the mean over all masked tokens, and every rank must still join it.
CFG = AdaptConfig(
    batch_size=4,
    epochs=2,
    max_steps=3,
    out_dim=64,
    head_hidden_dim=32,
    head_bottleneck_dim=16,
    n_local_crops=1,
    local_crop_size=32,
    koleo_weight=0.0,
    lr=1e-3,
    seed=10,
)
N_IMAGES = 8
STEPS = 3
# Relative (and absolute, for values near 0) tolerance on losses and on the merged backbone's features:
# float32 sums over 2 x 2 instead of 4 images, averaged gradients, and the thread count Lightning sets per
# process change the rounding. Measured: losses within 5e-7, features within 1e-6. Deliberate errors are
# far outside: lightly's mean-of-per-process-means iBOT centre moves a loss by 4e-3 (with this seed it is
# NaN, rank 0 having no masked token), masks drawn per process by 7e-2, unaveraged gradients the features.
TOL = 1e-4
HISTORY_VALUES = ("loss", "loss_dino", "loss_ibot", "loss_koleo", "agreement")
HISTORY_EXACT = ("step", "epoch", "lr", "teacher_temp", "teacher_momentum")


def write_images(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        path = directory / f"img_{i}.png"
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def fixed_features(backbone: Backbone) -> list[list[float]]:
    batch = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    return backbone_features(backbone, batch).tolist()


class CountingLogger:
    """What adapt_backbone uses of a Lightning ``Logger`` (importing lightning costs seconds)."""

    def __init__(self) -> None:
        self.steps: list[int | None] = []
        self.saves = 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.steps.append(step)

    def save(self) -> None:
        self.saves += 1


def count_writes() -> dict[str, int]:
    """Count (in this process) checkpoint saves, atomic text writes and backbone saves from now on."""
    writes = {"save_checkpoint": 0, "atomic_write_json": 0, "Backbone.save": 0}
    for module, name in ((loop_module, "save_checkpoint"), (explora_module, "atomic_write_json")):
        original = getattr(module, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            writes[_name] += 1
            return _original(*args, **kwargs)

        setattr(module, name, counted)
    original_save = Backbone.save

    def counted_save(self: Backbone, *args: Any, **kwargs: Any) -> Any:
        writes["Backbone.save"] += 1
        return original_save(self, *args, **kwargs)

    Backbone.save = counted_save  # type: ignore[method-assign]
    return writes


def adapt(images: list[Path], out: Path, devices: int) -> dict[str, Any]:
    """One adapt_backbone call (out_dir ``out/model``, checkpoints ``out/ckpt``); its summary."""
    logger = CountingLogger()
    result = adapt_backbone(
        load_backbone("tiny", seed=0),
        images,
        CFG,
        out_dir=out / "model",
        checkpoint_dir=out / "ckpt",
        loggers=(logger,),  # type: ignore[arg-type]
        show_progress=False,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
    )
    return {
        "rank": result.global_rank,
        "history": result.history.to_dict("list"),
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "merge_max_abs_diff": result.merge_max_abs_diff,
        "features": fixed_features(result.backbone),
        "logged_steps": logger.steps,
        "logger_saves": logger.saves,
    }


def run_rank(images_dir: Path, out: Path, devices: int) -> None:
    """One process's part of the script: three adapt calls, then ``out/rank{r}.json``."""
    images = sorted(images_dir.glob("*.png"))
    writes = count_writes()
    summary: dict[str, Any] = {}
    for name, folder in (("fresh", "fresh"), ("again", "fresh"), ("resumed", "resumed")):
        before = dict(writes)
        summary[name] = adapt(images, out / folder, devices)
        summary[name]["writes"] = {k: writes[k] - before[k] for k in writes}
    (out / f"rank{summary['fresh']['rank']}.json").write_text(json.dumps(summary))


# ------------------------------------------------------------------------------------------- fast checks


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("adapt_ddp_images"))


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("tiny", seed=0)


@pytest.mark.parametrize(
    ("kwargs", "n_images", "match"),
    [
        ({"devices": 0}, 8, "devices must be an int"),
        ({"devices": True}, 8, "devices must be an int"),
        ({"devices": 2.0}, 8, "devices must be an int"),
        ({"devices": 3}, 8, r"batch_size=4 is the global batch .*devices=3"),
        ({"devices": 2}, 3, r"3 images make one global batch of 3 .*devices=2"),
        ({"devices": 2, "strategy": "ddp_spawn"}, 8, "strategy must be one of"),
        ({"devices": 2, "strategy": "ddp_fork"}, 8, "spawn/fork"),
    ],
)
def test_process_arguments_are_checked(
    tiny: Backbone, images: list[Path], tmp_path: Path, kwargs: dict[str, Any], n_images: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        adapt_backbone(
            tiny, images[:n_images], CFG, out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", **kwargs
        )
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("devices", "world"), [(1, "2"), (2, "4")])
def test_devices_must_match_the_launched_world(
    tiny: Backbone,
    images: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    devices: int,
    world: str,
) -> None:
    # e.g. torchrun --nproc-per-node 2 around a call with devices=1: each process would train and write alone
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ValueError, match=f"one of {world} .*pass devices={world}"):
        adapt_backbone(tiny, images, CFG, out_dir=tmp_path / "out", devices=devices)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("start", [0, 4, 5])
def test_process_shares_make_up_the_global_batches(start: int) -> None:
    n, batch, world = 13, 4, 2
    full = list(ResumableEpochSampler(n, seed=3, epoch=1, start=start))
    complete = (len(full) // batch) * batch
    samplers = [
        GlobalBatchShare(
            ResumableEpochSampler(n, seed=3, epoch=1, start=start), batch_size=batch, rank=r, world_size=world
        )
        for r in range(world)
    ]
    shares = [list(sampler) for sampler in samplers]
    for sampler, share in zip(samplers, shares, strict=True):
        assert len(sampler) == len(share) == complete // world
    for k in range(complete // batch):  # rank 0 holds the first half of each global batch, rank 1 the second
        assert (
            shares[0][2 * k : 2 * k + 2] + shares[1][2 * k : 2 * k + 2] == full[batch * k : batch * (k + 1)]
        )


def test_mask_shares_are_the_global_masks_of_each_process_images() -> None:
    cfg = AdaptConfig(mask_probability=0.5)
    with seeded(0):
        masks = block_masks(8, (7, 7), cfg)  # 4 images: first crops 0..3, then second crops 0..3
    assert masks.any()
    shares = [_mask_share(masks, r, 2) for r in (0, 1)]
    assert shares[0] is not None and shares[1] is not None
    assert torch.equal(torch.cat([shares[0][:2], shares[1][:2], shares[0][2:], shares[1][2:]]), masks)
    assert _mask_share(torch.zeros(8, 7, 7, dtype=torch.bool), 1, 2) is None


# ------------------------------------------------------------------------------------------ two processes


def assert_history_close(two: dict[str, list[Any]], one: dict[str, list[Any]]) -> None:
    for column in HISTORY_EXACT:
        assert two[column] == one[column], column
    for column in HISTORY_VALUES:
        np.testing.assert_allclose(two[column], one[column], rtol=TOL, atol=TOL, err_msg=column)


@pytest.mark.slow
def test_two_processes_match_one_write_once_and_resume(
    tiny: Backbone, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images_dir = images[0].parent
    # One process, uninterrupted: the reference.
    single = adapt(images, tmp_path / "single", 1)
    assert single["steps"] == STEPS and len(single["history"]["step"]) == STEPS
    # One process stopped after epoch 0 (2 steps): its checkpoint is where the two processes resume.
    real_step = loop_module.ssl_step

    class Stopped(Exception):
        pass

    def stop_after_epoch_0(*args: Any, **kwargs: Any) -> dict[str, float]:
        if kwargs["step"] == 2:
            raise Stopped
        return real_step(*args, **kwargs)

    ddp = tmp_path / "ddp"
    with monkeypatch.context() as patch:
        patch.setattr(loop_module, "ssl_step", stop_after_epoch_0)
        with pytest.raises(Stopped):
            adapt(images, ddp / "resumed", 1)
    assert read_checkpoint(ddp / "resumed" / "ckpt" / CHECKPOINT_FILE)["step"] == 2

    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, str(images_dir), str(ddp), "2"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    while not (ddp / "rank1.json").exists():  # rank 1 may finish after rank 0's script returned
        assert time.monotonic() - started < 260, "rank 1 wrote no summary"
        time.sleep(0.2)
    time.sleep(0.5)
    ranks = [json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1)]

    # Both processes computed the same (all-reduced) history and the same merged backbone.
    for name in ("fresh", "again", "resumed"):
        zero, one = ranks[0][name], ranks[1][name]
        assert (zero["rank"], one["rank"]) == (0, 1)
        assert zero["history"] == one["history"]
        assert zero["features"] == one["features"]
        assert zero["steps"] == one["steps"] == STEPS
        assert zero["merge_max_abs_diff"] <= 1e-4
        # only rank 0 wrote or logged
        assert one["writes"] == {"save_checkpoint": 0, "atomic_write_json": 0, "Backbone.save": 0}
        assert (one["logged_steps"], one["logger_saves"]) == ([], 0)
        assert zero["logger_saves"] == 1
    fresh, again, resumed = (ranks[0][name] for name in ("fresh", "again", "resumed"))
    # checkpoints at the epoch end (step 2) and after the last step; adapt.json
    assert fresh["writes"] == {"save_checkpoint": 2, "atomic_write_json": 1, "Backbone.save": 1}
    assert fresh["resumed_from_step"] == 0
    assert fresh["logged_steps"] == [0, 1, 2, 2, 3, 3, 3]  # counts, steps (+ epoch ends), merge check

    # The same call again resumes from the final checkpoint: no step, same results, outputs rewritten.
    assert again["resumed_from_step"] == STEPS
    assert again["writes"] == {"save_checkpoint": 0, "atomic_write_json": 1, "Backbone.save": 1}
    assert again["history"] == fresh["history"] and again["features"] == fresh["features"]

    # Resumed after epoch 0 of the one-process run: rows 1-2 are that run's, step 3 the two processes'.
    assert resumed["resumed_from_step"] == 2
    assert resumed["writes"] == {"save_checkpoint": 1, "atomic_write_json": 1, "Backbone.save": 1}

    # Two processes = one process, up to float rounding.
    for two in (fresh, resumed):
        assert_history_close(two["history"], single["history"])
        np.testing.assert_allclose(two["features"], single["features"], rtol=TOL, atol=TOL)
    assert resumed["history"]["loss"][:2] == single["history"]["loss"][:2]

    # What is on disk is rank 0's, written once, with no temporary files left.
    for folder in ("fresh", "resumed"):
        model = ddp / folder / "model"
        assert sorted(p.name for p in model.iterdir()) == ["adapt.json", "backbone", "history.csv"]
        assert [p.name for p in (ddp / folder / "ckpt").iterdir()] == [CHECKPOINT_FILE]
        assert read_checkpoint(ddp / folder / "ckpt" / CHECKPOINT_FILE)["step"] == STEPS
        meta = json.loads((model / "adapt.json").read_text())
        assert meta["steps"] == STEPS
        saved = fixed_features(load_backbone(str(model / "backbone")))
        assert saved == ranks[0][folder]["features"]
    differences = {
        column: float(np.max(np.abs(np.subtract(fresh["history"][column], single["history"][column]))))
        for column in HISTORY_VALUES
    }
    print("max |2 processes - 1 process| per history column:", differences)


if __name__ == "__main__":  # the launcher: Lightning runs this again as rank 1
    run_rank(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
