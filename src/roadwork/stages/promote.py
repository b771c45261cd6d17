"""``roadwork promote``: compare ``challenger`` with ``champion`` on the current hold-out; move ``champion``.

Both registered models are run (through their pyfuncs, as deployed) on today's val_test images — the split
may have changed since either was registered — and scored with one metric. The rule lives in
:func:`roadwork.deploy.registry.decide_promotion`. The decision, the metric, both scores and both versions
are recorded as tags on the challenger version (also with ``--dry-run``, marked as such).
"""

from __future__ import annotations

from datetime import datetime, timezone

from roadwork.config import RoadworkConfig
from roadwork.data.split import read_split
from roadwork.stages.common import INGEST, SPLITS_CSV


def main(cfg: RoadworkConfig, *, metric: str | None, min_delta: float | None, dry_run: bool) -> int:
    import mlflow
    from tqdm.auto import tqdm

    from roadwork.deploy.registry import (
        CHALLENGER,
        CHAMPION,
        alias_version,
        decide_promotion,
        predict_with,
        score_predictions,
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
    champion = alias_version(client, name, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        print(f"promote: '{CHAMPION}' already is version {champion.version}; nothing to do.")
        return 0

    holdout = read_split(SPLITS_CSV, "promote", ["val_test"]).sort_values("path")
    paths = [INGEST / p for p in holdout["working_path"]]
    y = holdout["label"].to_numpy()
    scores: dict[str, float] = {}
    for role, version in (("challenger", challenger), ("champion", champion)):
        if version is None:
            continue
        with tqdm(total=len(paths), desc=f"promote: {role} v{version.version}", unit="img") as bar:
            predictions = predict_with(f"models:/{name}/{version.version}", paths, bar.update)
        scores[role] = score_predictions(metric, y, predictions)
    decision = decide_promotion(scores["challenger"], scores.get("champion"), min_delta)
    tags = {
        "promote.decision": ("promote" if decision.promote else "keep") + (" (dry run)" if dry_run else ""),
        "promote.reason": decision.reason,
        "promote.metric": metric,
        "promote.min_delta": str(min_delta),
        "promote.holdout_n": str(len(paths)),
        "promote.challenger_score": f"{scores['challenger']:.6f}",
        "promote.champion_version": str(champion.version) if champion is not None else "",
        "promote.champion_score": f"{scores['champion']:.6f}" if "champion" in scores else "",
        "promote.time": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger.version, key, value)
    if decision.promote and not dry_run:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    before = f"v{champion.version} ({metric} {scores['champion']:.4f})" if champion is not None else "none"
    action = "would move" if dry_run else "moved"
    print(
        f"promote: challenger v{challenger.version} ({metric} {scores['challenger']:.4f} on {len(paths)} "
        f"val_test images), champion {before}: {decision.reason}. "
        + (f"'{CHAMPION}' {action} to v{challenger.version}." if decision.promote else f"'{CHAMPION}' stays.")
    )
    return 0
