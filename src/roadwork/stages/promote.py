"""``roadwork promote``: compare ``challenger`` with ``champion`` on the current hold-out; move ``champion``.

The first registered model becomes champion without being scored (there is nothing to compare it with).
Otherwise both registered models are run through their pyfuncs, as deployed, on exactly the bytes
``evaluate`` scores: today's val_test images rendered as the validator sends them
(:func:`roadwork.stages.embed.evaluation_renders`; the split may have changed since either was
registered). Each is scored with ``deploy.promote_metric`` (default ``expected_reward``) by
:func:`roadwork.stages.scoring.headline`, the function ``evaluate`` uses, so a model's figure here is its
figure there. ``champion`` moves only when the challenger is better by more than ``promote_min_delta`` and
the paired group-bootstrap interval of the difference (``deploy.promote_confidence``) lies above zero
(:func:`roadwork.deploy.registry.decide_promotion`). The decision, both scores and the interval are recorded
as tags on the challenger version (also with ``--dry-run``, marked as such).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd

from roadwork.config import RoadworkConfig
from roadwork.data.split import read_split
from roadwork.layout import SPLITS_CSV
from roadwork.stages.embed import evaluation_renders
from roadwork.stages.modelling import rendered_bytes
from roadwork.stages.scoring import headline, render_predictions


def registered_predictions(
    uri: str, frame: pd.DataFrame, renders: list[Any], inputs: dict[str, list[bytes]], desc: str
) -> pd.DataFrame:
    """The pyfunc at ``uri`` on ``inputs[render.key]`` of every render: one row per (image, render)."""
    import mlflow

    from roadwork.deploy.registry import predict_with
    from roadwork.progress import progress_bar

    model = mlflow.pyfunc.load_model(uri)
    with progress_bar(total=len(frame) * len(renders), desc=desc, unit="img") as bar:
        return render_predictions(frame, renders, lambda r: predict_with(model, inputs[r.key], bar.update))


def compare(challenger: pd.DataFrame, champion: pd.DataFrame, metric: str, cfg: RoadworkConfig) -> dict:
    """Both scores and the paired group-bootstrap interval of challenger - champion on the same renders
    (resampling dedupe groups; the statistic is the one ``evaluate`` reports)."""
    import functools

    from roadwork import metrics as M
    from roadwork.stages.scoring import scored_decisions, tolerant

    if metric == "expected_reward":
        point = functools.partial(
            M.expected_reward, n_streams=cfg.evaluate.reward_streams, seed=cfg.evaluate.seed
        )
        per_resample = functools.partial(M.expected_reward, n_streams=200, seed=cfg.evaluate.seed)
    else:

        def point(**kwargs: Any) -> float:
            return M.validator_metrics(**kwargs)[metric]

        per_resample = point
    _, low, high = M.paired_bootstrap_diff(
        tolerant(per_resample),
        scored_decisions(challenger),
        scored_decisions(champion),
        challenger["group"].to_numpy(),
        shared={"y_true": challenger["label"].to_numpy(), "level": challenger["level"].to_numpy()},
        stat_groups=challenger["sha256"].to_numpy(),
        point_fn=point,
        n_resamples=cfg.evaluate.bootstrap_resamples,
        level=cfg.deploy.promote_confidence,
        seed=cfg.evaluate.seed,
    )
    return {
        "challenger": headline(challenger, cfg)[metric],
        "champion": headline(champion, cfg)[metric],
        "difference_low": low,
        "difference_high": high,
    }


def main(cfg: RoadworkConfig, *, metric: str | None, min_delta: float | None, dry_run: bool) -> int:
    import mlflow

    from roadwork.deploy.registry import (
        CHALLENGER,
        CHAMPION,
        REGISTRATION_TAG,
        alias_version,
        decide_promotion,
        usable,
    )
    from roadwork.tracking import check_reachable, redact_uri, tracking_uri

    name = cfg.deploy.registered_model
    metric = metric or cfg.deploy.promote_metric
    min_delta = cfg.deploy.promote_min_delta if min_delta is None else min_delta
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise ValueError(
            f"model '{name}' has no '{CHALLENGER}' alias at {redact_uri(uri)}; run the bundle stage first."
        )
    if not usable(challenger):
        raise ValueError(
            f"'{CHALLENGER}' (version {challenger.version} of '{name}') never finished registering "
            f"({REGISTRATION_TAG} = {challenger.tags.get(REGISTRATION_TAG)!r}); run `roadwork relog bundle` "
            "(it completes the version holding outputs/bundle/model) or `dvc repro -f bundle`."
        )
    champion = alias_version(client, name, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        print(f"promote: '{CHAMPION}' already is version {champion.version}; nothing to do.")
        return 0

    if champion is None:  # nothing to compare: the first model becomes champion unscored
        decision = decide_promotion(float("nan"), None, min_delta)
        if not dry_run:
            client.set_registered_model_alias(name, CHAMPION, challenger.version)
        client.set_model_version_tag(
            name, challenger.version, "promote.decision", "promote" + (" (dry run)" if dry_run else "")
        )
        client.set_model_version_tag(name, challenger.version, "promote.reason", decision.reason)
        action = "would move" if dry_run else "moved"
        print(f"promote: {decision.reason}; '{CHAMPION}' {action} to v{challenger.version}.")
        return 0
    holdout = read_split(SPLITS_CSV, "promote", ["val_test"]).sort_values("path").reset_index(drop=True)
    renders = evaluation_renders(cfg)
    # rendered once, sent to both models
    inputs = {render.key: rendered_bytes(holdout, render) for render in renders}
    ours, theirs = (
        registered_predictions(
            f"models:/{name}/{v.version}", holdout, renders, inputs, f"promote: {role} v{v.version}"
        )
        for role, v in (("challenger", challenger), ("champion", champion))
    )
    scores = compare(ours, theirs, metric, cfg)
    decision = decide_promotion(
        scores["challenger"],
        scores["champion"],
        min_delta,
        scores["difference_low"],
        scores["difference_high"],
    )
    record(client, name, challenger, champion, scores, decision, metric, min_delta, dry_run, len(ours))
    if decision.promote and not dry_run:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    print(summary(challenger, champion, scores, decision, metric, dry_run, len(holdout), len(ours), cfg))
    return 0


def record(
    client: Any,
    name: str,
    challenger: Any,
    champion: Any,
    scores: dict,
    decision: Any,
    metric: str,
    min_delta: float,
    dry_run: bool,
    n_renders: int,
) -> None:
    """The decision as tags on the challenger version."""
    tags = {
        "promote.decision": ("promote" if decision.promote else "keep") + (" (dry run)" if dry_run else ""),
        "promote.reason": decision.reason,
        "promote.metric": metric,
        "promote.min_delta": str(min_delta),
        "promote.holdout_renders": str(n_renders),
        "promote.challenger_score": f"{scores['challenger']:.6f}",
        "promote.champion_version": str(champion.version),
        "promote.champion_score": f"{scores['champion']:.6f}",
        "promote.difference_interval": f"[{scores['difference_low']:.6f}, {scores['difference_high']:.6f}]",
        "promote.time": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger.version, key, value)


def summary(
    challenger: Any,
    champion: Any,
    scores: dict,
    decision: Any,
    metric: str,
    dry_run: bool,
    n_images: int,
    n_renders: int,
    cfg: RoadworkConfig,
) -> str:
    from roadwork.deploy.registry import CHAMPION

    before = f"v{champion.version} ({metric} {scores['champion']:.4f})"
    interval = f", {cfg.deploy.promote_confidence:.0%} paired group-bootstrap interval of the difference"
    action = "would move" if dry_run else "moved"
    return (
        f"promote: challenger v{challenger.version} ({metric} {scores['challenger']:.4f} on {n_renders} "
        f"validator renders of {n_images} val_test images), champion {before}{interval}: {decision.reason}. "
        + (f"'{CHAMPION}' {action} to v{challenger.version}." if decision.promote else f"'{CHAMPION}' stays.")
    )
