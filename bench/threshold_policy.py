"""Benchmark: how a threshold policy fitted on a small val_calib transfers to the validator's 50/50 draws.

Five rules, each fitted on a calibration split and scored on a disjoint test split of the same pool:

- ``fixed 0.5``: roadwork iff sigmoid(margin) > 0.5, i.e. margin > 0 (no fitting);
- ``argmax``: ``fit_policy(target_prior=None, threshold_rule="argmax")``, the exact best-MCC cut on the
  temperature-calibrated probability (the behaviour before prior reweighting);
- ``shrink``: ``fit_policy(target_prior=0.5, threshold_rule="shrink", groups=...)`` on the calibration
  split alone (``calibrate.threshold_data=val_calib``);
- ``bagged``: ``fit_policy(target_prior=0.5, threshold_rule="bagged", groups=...)``, the same way;
- ``shrink, cross-fit``: the default (``calibrate.threshold_rule: shrink``, ``calibrate.threshold_data:
  train_crossfit``): the temperature is fitted on the calibration split and the shrink rule runs on the
  pool's cross-fitted train margins (``fit_policy(threshold_on=ThresholdData(...))``).

Score: the test MCC of the policy's decision (margin > decision_margin) over the test renders, with the test
rows reweighted to prior 0.5 (the validator draws labels 50/50; for a 50/50 test split the weights are 1).
Reported over the re-splits: mean, 10th percentile, and the standard deviation of the decision margin.

Pools:

(a) ``--outputs outputs``: the demo's own validation scores (val_select + val_calib logits of every render,
    joined with the labels), one pool per variant (``--variant V`` for one), with that variant's
    cross-fitted train margins (``logits/train_crossfit.csv``: one draw, the same for every re-split); or
    ``--scores CSV`` with columns ``margin,label[,group]`` and ``--crossfit CSV`` with the same columns
    (``group`` = image id shared by its renders; without it every row is its own image). Each
    re-split draws ``--cal-images`` calibration and ``--test-images`` test images at random: disjoint
    subsets by default (scaled down to 60 % / 40 % of the images when the pool has fewer), or with
    ``--resample bootstrap`` two independent with-replacement draws. Disjoint parts of one fixed pool are
    anti-correlated (they share it), which favours the fixed cut whenever the pool's own best cut sits near
    margin 0; the script prints where that cut lies, and the bootstrap re-splits remove the effect.
    Without a file (or if it is missing) a built-in synthetic pool mimicking the demo is used: 240 images
    x 4 validator-style renders, 50 % roadwork;
    margin = 1.5 (a + e) + 1.5 c with an image effect a ~ N(+-0.555, 1), a render effect e ~ N(0, 0.6^2)
    (render-level AUROC ~ 0.75) and a lean towards roadwork c = ``--shift`` (default 0.6: the raw 0.5 cut
    calls ~68 % of a 50/50 set roadwork, as a head trained with class weights on 80 % roadwork data still
    tends to). A fresh pool is drawn (seeded) for every re-split, so the result is not one pool's luck;
    so is its cross-fitted train pool (960 images, 50 % roadwork, the same generator).
(b) Synthetic prior shift: the same generator with c = log(4) * 1.36 / 1.11 = 1.70, i.e. a head fitted
    without class weights to 80 % roadwork data (its margin is 0 where the posterior at prior 0.8, log-LR +
    log 4, is 0.5); the calibration split is 80 % roadwork
    (72 + 18 images) and the test split 50/50 (30 + 30 images), drawn from a fresh 120 + 120 image pool,
    and the cross-fitted train pool 80 % roadwork (768 + 192 images), drawn fresh for every re-split.

Verdict (for the default rule, :data:`DEFAULT`): a mean test MCC >= both ``fixed 0.5`` and ``argmax`` and a
10th percentile > ``argmax``'s, in every pool (each variant's (a) and (b)).

Usage: python bench/threshold_policy.py [--outputs DIR [--variant V|all] | --scores CSV --crossfit CSV]
       [--resample disjoint|bootstrap] [--splits 200] [--seed 0] [--shift 0.6]
       [--cal-images 90] [--test-images 60] [--n-boot 200]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from roadwork.metrics import mcc_from_counts
from roadwork.policy import ThresholdData, fit_policy, prior_weights, weighted_mcc_sweep

CROSSFIT = "shrink, cross-fit"
RULES = ("fixed 0.5", "argmax", "shrink", "bagged", CROSSFIT)
DEFAULT = CROSSFIT
TRAIN_IMAGES = 960  # the demo's train split: the synthetic pools' cross-fitted train margins
RENDERS = 4
IMAGE_GAP = 1.11  # distance between the class means of the image effect (render AUROC ~ 0.75)
RENDER_SD = 0.6
SCALE = 1.5
PRIOR_SHIFT_80 = float(np.log(4.0) * (1.0 + RENDER_SD**2) / IMAGE_GAP)  # c for a head calibrated at 80 %


@dataclass(frozen=True)
class Split:
    """One calibration / test draw: margins, labels and (calibration) image ids, and the cross-fitted
    train margins the default rule chooses its cut on."""

    z_cal: np.ndarray
    y_cal: np.ndarray
    g_cal: np.ndarray
    z_test: np.ndarray
    y_test: np.ndarray
    crossfit: ThresholdData


def synthetic_pool(
    n_pos: int, n_neg: int, shift: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(margin, label, image id) for n_pos + n_neg images x RENDERS renders (see the module docstring)."""
    y_img = np.r_[np.ones(n_pos, dtype=np.int64), np.zeros(n_neg, dtype=np.int64)]
    a = np.where(y_img == 1, IMAGE_GAP / 2, -IMAGE_GAP / 2) + rng.normal(0.0, 1.0, len(y_img))
    img = np.repeat(np.arange(len(y_img)), RENDERS)
    z = SCALE * (a[img] + rng.normal(0.0, RENDER_SD, len(img)) + shift)
    return z, y_img[img], img


def _take(
    z: np.ndarray, y: np.ndarray, g: np.ndarray, cal: np.ndarray, test: np.ndarray, crossfit: ThresholdData
) -> Split:
    in_cal, in_test = np.isin(g, cal), np.isin(g, test)
    return Split(z[in_cal], y[in_cal], g[in_cal], z[in_test], y[in_test], crossfit)


def synthetic_crossfit(n_pos: int, shift: float, rng: np.random.Generator) -> ThresholdData:
    """A synthetic train split's cross-fitted margins: :data:`TRAIN_IMAGES` images, ``n_pos`` roadwork."""
    return ThresholdData(*synthetic_pool(n_pos, TRAIN_IMAGES - n_pos, shift, rng))


def demo_splits(n: int, seed: int, shift: float, cal_images: int, test_images: int) -> Iterator[Split]:
    """Pool (a) without a CSV: a fresh 240-image demo-like pool per re-split, random image split."""
    for i in range(n):
        rng = np.random.default_rng([seed, 1, i])
        z, y, g = synthetic_pool(120, 120, shift, rng)
        crossfit = synthetic_crossfit(TRAIN_IMAGES // 2, shift, rng)
        while True:
            perm = rng.permutation(240)
            split = _take(z, y, g, perm[:cal_images], perm[cal_images : cal_images + test_images], crossfit)
            if 0 < split.y_cal.sum() < len(split.y_cal) and 0 < split.y_test.sum() < len(split.y_test):
                yield split
                break


def prior_shift_splits(n: int, seed: int) -> Iterator[Split]:
    """Pool (b): head calibrated for 80 % roadwork; calibration 72 + 18 images, test 30 + 30 images."""
    for i in range(n):
        rng = np.random.default_rng([seed, 2, i])
        z, y, g = synthetic_pool(120, 120, PRIOR_SHIFT_80, rng)
        crossfit = synthetic_crossfit(int(0.8 * TRAIN_IMAGES), PRIOR_SHIFT_80, rng)
        pos, neg = rng.permutation(120), 120 + rng.permutation(120)
        yield _take(z, y, g, np.r_[pos[:72], neg[:18]], np.r_[pos[72:102], neg[18:48]], crossfit)


def csv_splits(
    frame: pd.DataFrame,
    crossfit: pd.DataFrame,
    n: int,
    seed: int,
    cal_images: int,
    test_images: int,
    resample: str = "disjoint",
) -> Iterator[Split]:
    """Pool (a) from a CSV: ``n`` image-level re-splits of the fixed pool, each with the one ``crossfit``
    pool (columns ``margin,label[,group]``).

    ``disjoint``: calibration and test are disjoint random subsets (scaled down to 60 % / 40 % of the images
    when the pool has fewer); being one finite pool, the two parts are anti-correlated. ``bootstrap``: each
    part is an independent draw of whole images with replacement (a drawn-twice image is two groups), the
    usual way to emulate fresh data from one pool without that anti-correlation.
    """
    z, y, g = _columns(frame)
    fit = ThresholdData(*_columns(crossfit))
    n_img = int(g.max()) + 1
    rows = [np.flatnonzero(g == k) for k in range(n_img)]
    if resample == "disjoint" and cal_images + test_images > n_img:
        cal_images, test_images = int(0.6 * n_img), int(0.4 * n_img)
    rng = np.random.default_rng([seed, 3])

    def part(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.concatenate([rows[i] for i in images])
        group = np.concatenate([np.full(len(rows[i]), j) for j, i in enumerate(images)])
        return z[idx], y[idx], group

    made = 0
    for _ in range(100 * n):
        if resample == "bootstrap":
            cal, test = rng.integers(0, n_img, cal_images), rng.integers(0, n_img, test_images)
        else:
            perm = rng.permutation(n_img)
            cal, test = perm[:cal_images], perm[cal_images : cal_images + test_images]
        (z_cal, y_cal, g_cal), (z_test, y_test, _) = part(cal), part(test)
        if 0 < y_cal.sum() < len(y_cal) and 0 < y_test.sum() < len(y_test):
            yield Split(z_cal, y_cal, g_cal, z_test, y_test, fit)
            made += 1
            if made == n:
                return
    raise SystemExit("the --scores pool rarely yields both classes in both splits; use a larger pool.")


def _columns(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(margin, label, group codes) of a score CSV; without ``group`` every row is its own image."""
    g = pd.factorize(frame["group"])[0] if "group" in frame else np.arange(len(frame))
    return frame["margin"].to_numpy(np.float64), frame["label"].to_numpy(np.int64), g


def pipeline_scores(
    outputs: Path, variant: str, parts: tuple[str, ...] = ("val_select", "val_calib")
) -> pd.DataFrame:
    """The pool a ``make demo`` leaves: ``variant``'s val_select + val_calib logits (every render) + labels
    (``parts=("train_crossfit",)``: its cross-fitted train margins).

    Columns ``margin,label,group`` (group = the image's sha256, shared by its renders). Raises SystemExit
    naming the missing file when ``outputs`` is not a finished pipeline's output folder.
    """
    logits = [outputs / "train" / variant / "logits" / f"{part}.csv" for part in parts]
    splits = outputs / "split" / "splits.csv"
    for path in (*logits, splits):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run `make demo` (or `dvc repro`) first, or pass --scores.")
    labels = pd.read_csv(splits, usecols=["sha256", "label"]).drop_duplicates("sha256")
    margins = pd.concat([pd.read_csv(p, usecols=["sha256", "margin"]) for p in logits])
    frame = margins.merge(labels, on="sha256")
    return frame.rename(columns={"sha256": "group"})[["margin", "label", "group"]]


def pipeline_variants(outputs: Path) -> list[str]:
    """The variants whose validation logits a finished pipeline left under ``outputs/train``, sorted."""
    found = sorted(
        d.name for d in (outputs / "train").glob("*") if (d / "logits" / "val_calib.csv").is_file()
    )
    if not found:
        raise SystemExit(f"{outputs / 'train'} has no <variant>/logits/val_calib.csv: run `make demo` first.")
    return found


def balanced_test_mcc(z: np.ndarray, y: np.ndarray, decision_margin: float) -> float:
    """MCC of margin > decision_margin on the test rows, reweighted to a 50/50 label prior."""
    w = prior_weights(y, 0.5)
    pred = z > decision_margin
    tp, fp = np.sum(w * (pred & (y == 1))), np.sum(w * (pred & (y == 0)))
    fn, tn = np.sum(w * (~pred & (y == 1))), np.sum(w * (~pred & (y == 0)))
    return float(mcc_from_counts(tp, fp, tn, fn))


def pool_diagnostic(frame: pd.DataFrame) -> str:
    """Where the whole pool's own best cut lies (balanced MCC), against the fixed margin-0 cut.

    A fixed pool re-split into calibration and test parts favours the fixed cut when the pool's own best
    cut happens to sit near 0, and the parts are anti-correlated (they share one finite pool): read a CSV
    verdict together with this line.
    """
    z = frame["margin"].to_numpy(np.float64)
    y = frame["label"].to_numpy(np.int64)
    t, m = weighted_mcc_sweep(y, z, prior_weights(y, 0.5)).best()
    return (
        f"whole-pool best cut: margin {t:+.2f}, MCC {m:.3f}; margin 0: MCC {balanced_test_mcc(z, y, 0.0):.3f}"
    )


def fit_rules(split: Split, seed: int, n_boot: int) -> dict[str, float]:
    """Decision margin of each rule fitted on the calibration part of ``split``."""
    argmax = fit_policy(
        split.z_cal, split.y_cal, split_hash="bench", target_prior=None, threshold_rule="argmax"
    )
    margins = {"fixed 0.5": 0.0, "argmax": argmax.decision_margin}
    for name, rule, threshold_on in (
        ("shrink", "shrink", None),
        ("bagged", "bagged", None),
        (CROSSFIT, "shrink", split.crossfit),
    ):
        policy = fit_policy(
            split.z_cal,
            split.y_cal,
            split_hash="bench",
            target_prior=0.5,
            threshold_rule=rule,
            groups=split.g_cal,
            n_boot=n_boot,
            seed=seed,
            threshold_on=threshold_on,
        )
        margins[name] = policy.decision_margin
    return margins


def evaluate(splits: Iterator[Split], n_boot: int) -> dict[str, dict[str, np.ndarray]]:
    """Per rule: test MCC and decision margin over all re-splits."""
    mcc: dict[str, list[float]] = {r: [] for r in RULES}
    margin: dict[str, list[float]] = {r: [] for r in RULES}
    for i, split in enumerate(splits):
        for rule, dm in fit_rules(split, seed=i, n_boot=n_boot).items():
            mcc[rule].append(balanced_test_mcc(split.z_test, split.y_test, dm))
            margin[rule].append(dm)
    return {r: {"mcc": np.array(mcc[r]), "margin": np.array(margin[r])} for r in RULES}


def report(name: str, res: dict[str, dict[str, np.ndarray]]) -> bool:
    """Print one pool's table; return whether :data:`DEFAULT` meets the verdict's conditions."""
    print(f"\n{name}")
    print(f"| rule | mean test MCC | 10th pct | median | sd of decision margin | {DEFAULT} − rule (±2 SE) |")
    print("|---|---|---|---|---|---|")
    stats = {}
    for rule in RULES:
        m = res[rule]["mcc"]
        diff = res[DEFAULT]["mcc"] - m
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        delta = "—" if rule == DEFAULT else f"{diff.mean():+.3f} ± {2 * se:.3f}"
        stats[rule] = (m.mean(), np.percentile(m, 10))
        print(
            f"| {rule} | {m.mean():.3f} | {np.percentile(m, 10):.3f} | {np.median(m):.3f} | "
            f"{res[rule]['margin'].std():.3f} | {delta} |"
        )
    ok = (
        stats[DEFAULT][0] >= max(stats["fixed 0.5"][0], stats["argmax"][0])
        and stats[DEFAULT][1] > stats["argmax"][1]
    )
    print(f"verdict: {'PASS' if ok else 'FAIL'} ({DEFAULT} mean >= fixed and argmax, 10th pct > argmax)")
    return ok


def pools_a(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> list[tuple[str, Callable[[], Iterator[Split]]]]:
    """Pool (a) as (title, re-split factory): one per variant of --outputs, the CSV, or the synthetic one."""
    frames: list[tuple[str, pd.DataFrame, pd.DataFrame]] = []
    if args.outputs is not None:
        variants = pipeline_variants(args.outputs) if args.variant == "all" else [args.variant]
        frames = [
            (
                f"{args.outputs} {v}",
                pipeline_scores(args.outputs, v),
                pipeline_scores(args.outputs, v, ("train_crossfit",)),
            )
            for v in variants
        ]
    elif args.scores is not None and args.scores.is_file():
        if args.crossfit is None or not args.crossfit.is_file():
            parser.error(f"--scores needs --crossfit CSV (cross-fitted train margins); got {args.crossfit}")
        frames = [(str(args.scores), _score_csv(args.scores, parser), _score_csv(args.crossfit, parser))]
    if frames:
        return [
            (
                f"(a) {source} ({len(frame)} rows, {len(crossfit)} cross-fitted train rows; "
                f"{pool_diagnostic(frame)}; {args.resample} re-splits)",
                lambda frame=frame, crossfit=crossfit: csv_splits(
                    frame, crossfit, args.splits, args.seed, args.cal_images, args.test_images, args.resample
                ),
            )
            for source, frame, crossfit in frames
        ]
    if args.scores is not None:
        print(f"NOTE: {args.scores} not found; using the built-in synthetic demo-like pool for (a).")
    name = f"(a) synthetic demo-like pool, 240 images x {RENDERS} renders, 50 % roadwork, shift {args.shift}"
    sizes = (args.cal_images, args.test_images)
    return [(name, lambda: demo_splits(args.splits, args.seed, args.shift, *sizes))]


def _score_csv(path: Path, parser: argparse.ArgumentParser) -> pd.DataFrame:
    """A score CSV with columns margin,label[,group]; a parser error names the file otherwise."""
    frame = pd.read_csv(path)
    if not {"margin", "label"} <= set(frame.columns):
        parser.error(f"{path} needs columns margin,label[,group]; has {list(frame.columns)}")
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scores", type=Path, default=None, help="CSV with margin,label[,group] (pool a)")
    parser.add_argument(
        "--crossfit",
        type=Path,
        default=None,
        help="with --scores: cross-fitted train margins, margin,label[,group] (the default rule's data)",
    )
    parser.add_argument(
        "--outputs",
        type=Path,
        default=None,
        help="pool (a) from a finished pipeline's outputs/ folder: --variant's val_select + val_calib logits",
    )
    parser.add_argument(
        "--variant",
        default="all",
        help="variant read by --outputs, or all: one pool (a) per variant, each judged (default all)",
    )
    parser.add_argument(
        "--resample",
        choices=("disjoint", "bootstrap"),
        default="disjoint",
        help="how pool (a) from --scores/--outputs is re-split: disjoint subsets, or independent "
        "with-replacement draws of images (default disjoint)",
    )
    parser.add_argument("--splits", type=int, default=200, help="random re-splits per pool (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of pools and splits (default 0)")
    parser.add_argument("--shift", type=float, default=0.6, help="synthetic pool (a) lean to roadwork")
    parser.add_argument("--cal-images", type=int, default=90, help="calibration images per split")
    parser.add_argument("--test-images", type=int, default=60, help="test images per split")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates of the fitted rules")
    args = parser.parse_args(argv)
    if args.splits < 1 or args.cal_images < 2 or args.test_images < 2 or args.n_boot < 1:
        parser.error("need --splits >= 1, --cal-images >= 2, --test-images >= 2, --n-boot >= 1")
    if args.cal_images + args.test_images > 240 and args.scores is None and args.outputs is None:
        parser.error("the synthetic pool has 240 images: --cal-images + --test-images must be <= 240")
    python = os.path.relpath(sys.executable)
    python = python if not python.startswith("..") else "python"
    print("reproduce: " + shlex.join([python, "bench/threshold_policy.py", *(argv or sys.argv[1:])]))
    start, sizes = time.perf_counter(), (args.cal_images, args.test_images)
    ok = [
        report(f"{name}; cal {sizes[0]} / test {sizes[1]} images", evaluate(splits(), args.n_boot))
        for name, splits in pools_a(args, parser)
    ]
    name_b = (
        "(b) synthetic prior shift: head calibrated at 80 % roadwork; cal 72+18 images, test 30+30 images"
    )
    ok.append(report(name_b, evaluate(prior_shift_splits(args.splits, args.seed), args.n_boot)))
    print(f"\n{args.splits} re-splits per pool in {time.perf_counter() - start:.1f} s")
    print(f"overall verdict: {'PASS' if all(ok) else 'FAIL'} ({sum(ok)} of {len(ok)} pools pass)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
