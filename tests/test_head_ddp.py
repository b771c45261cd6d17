"""Head training in several processes (``devices=2, strategy="ddp"``, CPU gloo) vs one process.

Lightning's ``ddp`` launcher starts the *calling script* again for rank 1, so the two-process run cannot
happen inside pytest itself: the test runs this file as a script (``python tests/test_head_ddp.py OUT``),
Lightning re-runs it with ``LOCAL_RANK=1``, and every rank writes a JSON summary of what it computed and
what it wrote. (``ddp_spawn``/``ddp_fork`` would train in child processes whose results never reach the
caller, so :func:`fit_head` refuses them.)
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
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

import roadwork.train.head as head_module
import roadwork.train.trainer as trainer_module
from roadwork.models.head import HeadModel, load_head, predict_margins
from roadwork.train.checkpoint import read_checkpoint
from roadwork.train.head import CHECKPOINT_FILE, fit_head
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_data import FeatureSet, ShardSampler
from roadwork.train.head_module import HeadLightningModule

# 96 train rows = 6 global batches of 16 (8 per process); 41 val rows, so validation shards need padding.
# No dropout and no class weights: then the two-process gradient (mean over processes of each process's
# batch mean, both halves the same size) is the single-process gradient up to float summation order.
CFG = HeadTrainConfig(
    lr=0.05, max_epochs=4, batch_size=16, warmup_epochs=0.5, dropout=0.0, class_weights="none", ema_decay=0.5
)
METRIC_TOL = (
    1e-5  # val_loss / train_loss / weights: float32 summation order differs between 1 and 2 processes
)


def make_split(seed: int, n: int, *, positive_rate: float = 0.7, prefix: str = "img") -> FeatureSet:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < positive_rate).astype(np.int64)
    labels[:2] = [0, 1]
    features = rng.normal(size=(n, 3, 6)).astype(np.float32)
    features[:, :, 0] += 1.0 * (2 * labels[:, None] - 1)  # overlapping classes: MCC moves between epochs
    return FeatureSet(features, labels, np.array([f"{prefix}{i:04d}" for i in range(n)]))


TRAIN = make_split(1, 96)
VAL = make_split(2, 41, prefix="val", positive_rate=0.5)


class CountingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int | None] = []
        self.saves = 0

    @property
    def name(self) -> str:
        return "count"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.steps.append(step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def save(self) -> None:
        self.saves += 1


def run_rank(out: Path, devices: int) -> None:
    """One process's part: train, then write ``out/rank{r}.json`` (what it computed and wrote)."""
    writes = {"save_head": 0, "write_checkpoint": 0}
    for module, name in ((head_module, "save_head"), (trainer_module, "write_checkpoint")):
        original = getattr(module, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            writes[_name] += 1
            return _original(*args, **kwargs)

        setattr(module, name, counted)
    logger = CountingLogger()
    result = fit_head(
        TRAIN,
        VAL,
        CFG,
        out_dir=out / "model",
        checkpoint_dir=out / "ckpt",
        loggers=(logger,),
        show_progress=False,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
    )
    summary = {
        "rank": result.global_rank,
        "history": result.history.to_dict("list"),
        "best_epoch": result.best_epoch,
        "best_metric": result.best_metric,
        "optimizer_steps": result.optimizer_steps,
        "resumed_epochs": result.resumed_epochs,
        "margins": predict_margins(result.model, VAL.features).tolist(),
        "writes": writes,
        "logged_steps": logger.steps,
        "logger_saves": logger.saves,
    }
    (out / f"rank{result.global_rank}.json").write_text(json.dumps(summary))


# ------------------------------------------------------------------------------------------- fast checks


def test_shard_sampler_single_process_equals_random_sampler() -> None:
    data = TensorDataset(torch.arange(23))
    generator = torch.Generator().manual_seed(3)
    # the loader draws its (unused) base seed from the generator too, as with shuffle=True
    ours = DataLoader(data, batch_size=5, sampler=ShardSampler(23, generator=generator), generator=generator)
    theirs = DataLoader(data, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3))
    for _ in range(3):  # the generator's stream carries over between epochs identically
        assert [b[0].tolist() for b in ours] == [b[0].tolist() for b in theirs]


@pytest.mark.parametrize("n", [96, 41, 1])
def test_shard_batches_together_are_the_single_process_batches(n: int) -> None:
    single = list(ShardSampler(n, generator=torch.Generator().manual_seed(0)))
    shards = [
        list(ShardSampler(n, rank=r, world_size=2, generator=torch.Generator().manual_seed(0)))
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == -(-n // 2)
    padded = single + single[: 2 * len(shards[0]) - n]
    for k in range(0, len(shards[0]), 8):  # per-process batch 8 = global batch 16
        assert sorted(shards[0][k : k + 8] + shards[1][k : k + 8]) == sorted(padded[2 * k : 2 * k + 16])
    assert set(shards[0]) | set(shards[1]) == set(range(n))


def test_validation_logits_are_gathered_in_row_order_without_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 41
    model = HeadModel.from_config(CFG, feature_dim=6, num_views=3)
    module = HeadLightningModule(model, CFG, class_weight=None, steps_per_epoch=6, val_labels=VAL.labels)
    full = torch.randn(n, 2)
    shards = [torch.tensor(list(ShardSampler(n, rank=r, world_size=2))) for r in (0, 1)]
    module._val_logits = [full[shards[0][:15]], full[shards[0][15:]]]  # rank 0's batches
    module._val_index = [shards[0][:15], shards[0][15:]]

    def all_gather(tensor: torch.Tensor) -> torch.Tensor:  # what the two ranks would contribute
        return torch.stack([full[s] if tensor.is_floating_point() else s for s in shards])

    monkeypatch.setattr(module, "_world_size", lambda: 2)
    monkeypatch.setattr(module, "all_gather", all_gather)
    assert torch.equal(module.validation_logits(), full)
    shards[1] = shards[1].flip(0)  # a rank that evaluated other rows is caught
    with pytest.raises(RuntimeError, match="once each"):
        module.validation_logits()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"devices": 0}, "devices"),
        ({"devices": True}, "devices"),
        ({"devices": 3}, r"batch_size=16 .*divisible"),
        ({"devices": 2, "strategy": "ddp_spawn"}, "strategy"),
        ({"accelerator": "tpu"}, "accelerator"),
    ],
)
def test_hardware_arguments_are_checked(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_head(TRAIN, VAL, CFG, out_dir=tmp_path, show_progress=False, **kwargs)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ two processes


@pytest.mark.slow
def test_two_processes_match_one_and_write_once(tmp_path: Path) -> None:
    ddp = tmp_path / "ddp"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, str(ddp), "2"], capture_output=True, text=True, timeout=540, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    while not (ddp / "rank1.json").exists():  # rank 1 may finish after rank 0's script returned
        assert time.monotonic() - started < 560, "rank 1 wrote no summary"
        time.sleep(0.2)
    time.sleep(0.5)
    ranks = [json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1)]

    # Every rank computed the same (gathered) history and selection; only rank 0 wrote or logged.
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["history"] == ranks[1]["history"]
    assert ranks[0]["writes"] == {"save_head": 1, "write_checkpoint": CFG.max_epochs}
    assert ranks[1]["writes"] == {"save_head": 0, "write_checkpoint": 0}
    assert (ranks[0]["logged_steps"], ranks[0]["logger_saves"]) == (list(range(CFG.max_epochs)), 1)
    assert (ranks[1]["logged_steps"], ranks[1]["logger_saves"]) == ([], 0)
    assert sorted(p.name for p in (ddp / "model").iterdir()) == [
        "head.json",
        "head.safetensors",
        "history.csv",
    ]
    assert sorted(p.name for p in (ddp / "ckpt").iterdir()) == [CHECKPOINT_FILE]
    np.testing.assert_array_equal(
        predict_margins(load_head(ddp / "model"), VAL.features), ranks[0]["margins"]
    )
    meta = json.loads((ddp / "model" / "head.json").read_text())
    assert (meta["best_epoch"], meta["optimizer_steps"]) == (ranks[0]["best_epoch"], 6 * CFG.max_epochs)

    # One process on the same data and config (a fresh start: the checkpoint is tied to world size 2).
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    (single_dir / "ckpt").mkdir()
    (single_dir / "ckpt" / CHECKPOINT_FILE).write_bytes((ddp / "ckpt" / CHECKPOINT_FILE).read_bytes())
    run_rank(single_dir, 1)
    single = json.loads((single_dir / "rank0.json").read_text())
    assert single["resumed_epochs"] == 0
    assert read_checkpoint(single_dir / "ckpt" / CHECKPOINT_FILE)["epochs_done"] == CFG.max_epochs
    two = ranks[0]
    # MCCs are counts over the whole split: equal as long as no margin sits within rounding of 0.
    assert two["history"]["val_mcc"] == single["history"]["val_mcc"]
    assert two["history"]["val_best_mcc"] == single["history"]["val_best_mcc"]
    assert (two["best_epoch"], two["best_metric"]) == (single["best_epoch"], single["best_metric"])
    assert two["optimizer_steps"] == single["optimizer_steps"]
    for column in ("val_loss", "train_loss", "lr"):
        np.testing.assert_allclose(two["history"][column], single["history"][column], rtol=METRIC_TOL)
    np.testing.assert_allclose(two["margins"], single["margins"], rtol=METRIC_TOL, atol=METRIC_TOL)


if __name__ == "__main__":  # the launcher: Lightning runs this again as rank 1
    run_rank(Path(sys.argv[1]), int(sys.argv[2]))
