"""bundle stage: pick the variant, build the deployable model, export it, register it as ``challenger``.

The variant is chosen by **val_calib validator-mix MCC at its policy** (``val_calib_validator_mcc`` in
``outputs/calibrate/<variant>/metrics.json``: the clean render and the L1-L3 renders, levels 25 % each,
labels 50/50; ties go to the earlier variant, base first); val_test never takes part. Outputs in
``outputs/bundle/``: ``model/`` (the :class:`~roadwork.deploy.predictor.Predictor` folder the pyfunc
serves), ``hf/`` (the Hugging Face export with the policy folded into its classifier; absent only for heads
it cannot express), ``choice.json`` and ``metrics.json``. The export must agree with the pyfunc on the
validator's level-0 JPEG of every val_select and val_calib image (the same bytes to both; images only, no
labels: val_test stays untouched for evaluate and promote); any disagreement fails the stage. The pyfunc is
registered as a new version of ``deploy.registered_model``, tagged with the variant, git commit, data
version and val metrics, and the ``challenger`` alias moves to it.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from roadwork.config import RoadworkConfig
from roadwork.data.split import read_split
from roadwork.stages.common import (
    OUTPUTS,
    SPLITS_CSV,
    VARIANTS,
    load_model,
    model_dir,
    rendered_bytes,
    stage_dir,
    tracked,
    write_json,
)

AGREEMENT_TOLERANCE = 1e-4


SELECTION_METRIC = "val_calib_validator_mcc"


def choose_variant(candidates: dict[str, dict[str, float]]) -> str:
    """The variant with the highest val_calib validator-mix MCC (first listed wins ties); never looks at
    val_test. A calibrate output without level renders (``embed.val_renders_per_level=0``) is compared by
    its plain ``val_calib_mcc``."""
    if not candidates:
        raise FileNotFoundError(
            "no outputs/calibrate/<variant>/metrics.json found; run calibrate for at least one variant."
        )

    def score(variant: str) -> float:
        return candidates[variant].get(SELECTION_METRIC, candidates[variant]["val_calib_mcc"])

    return max(candidates, key=lambda v: (score(v), -list(candidates).index(v)))


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = ()) -> None:
    import mlflow

    from roadwork.deploy.predictor import Predictor, PredictorSpec
    from roadwork.deploy.registry import CHALLENGER, log_pyfunc
    from roadwork.policy import Policy
    from roadwork.tracking import data_version, git_state, repo_root
    from roadwork.train.embed import decode_render

    out = stage_dir("bundle")
    candidates = {}
    for variant in VARIANTS:
        path = OUTPUTS / "calibrate" / variant / "metrics.json"
        if path.is_file():
            candidates[variant] = json.loads(path.read_text())
    variant = choose_variant(candidates)
    spec = PredictorSpec(
        views=cfg.embed.views,
        grid=cfg.embed.grid,
        overlap=cfg.embed.tile_overlap,
        tta_flip=cfg.embed.tta_flip,
        max_bytes=cfg.deploy.max_bytes,
        max_pixels=cfg.deploy.max_pixels,
        request_max_bytes=cfg.deploy.request_max_bytes,
        request_max_pixels=cfg.deploy.request_max_pixels,
        batch_size=cfg.deploy.batch_size,
    )
    backbone, head = load_model(cfg, variant)
    policy = Policy.from_json(OUTPUTS / "calibrate" / variant / "policy.json")
    predictor = Predictor(backbone, head, policy, spec)
    for folder in (out / "model", out / "hf"):
        shutil.rmtree(folder, ignore_errors=True)
    predictor.save(out / "model", head_dir=model_dir(variant))
    train_metrics = json.loads((OUTPUTS / "train" / variant / "metrics.json").read_text())
    val_metrics = {
        "val_select_mcc": train_metrics["val_select_mcc"],
        "val_calib_mcc": candidates[variant]["val_calib_mcc"],
        "val_calib_validator_mcc": candidates[variant].get(SELECTION_METRIC, float("nan")),
        "val_calib_ece_after": candidates[variant]["ece_after"],
    }
    write_json(
        out / "choice.json",
        {
            "chosen": variant,
            "rule": "highest val_calib validator-mix MCC at the variant's policy (ties: base first)",
            "candidates": {
                v: {k: m[k] for k in ("val_calib_mcc", SELECTION_METRIC) if k in m}
                for v, m in candidates.items()
            },
        },
    )
    # the export check: val_calib level-0 renders (the validator's 224 x 224 JPEGs)
    images = read_split(SPLITS_CSV, "bundle", ["val_calib"]).sort_values("path")
    paths = rendered_bytes(images)
    with tracked("bundle", cfg, ("deploy",), overrides) as run:
        ours = predictor.predict(paths)
        metrics: dict[str, float] = {f"chosen_{k}": v for k, v in val_metrics.items()}
        metrics["hf_exported"] = 0.0
        hf_reason = _export_hf(cfg, predictor, out / "hf", val_metrics)
        if hf_reason is None:
            from roadwork.deploy.hf_export import hf_probabilities

            theirs = hf_probabilities(out / "hf", [decode_render(data) for data in paths])
            diff = np.abs(theirs - ours["probability"].to_numpy())
            same_decision = (theirs > 0.5) == (ours["decision"].to_numpy() == 1)
            metrics.update(
                hf_exported=1.0,
                hf_max_abs_diff=float(diff.max()),
                hf_decision_agreement=float(same_decision.mean()),
                hf_agreement_images=len(paths),
            )
            if not same_decision.all() or diff.max() > AGREEMENT_TOLERANCE:
                raise RuntimeError(
                    f"the Hugging Face export disagrees with the pyfunc on {int((~same_decision).sum())} of "
                    f"{len(paths)} val images (max |dp| {diff.max():.2e} > {AGREEMENT_TOLERANCE}); "
                    f"not registering. Compare {out / 'hf'} with {out / 'model'}."
                )
        else:
            (out / "hf").mkdir(parents=True, exist_ok=True)
            (out / "hf" / "NOT_EXPORTED.txt").write_text(f"No Hugging Face export: {hf_reason}\n")
            print(f"bundle: no Hugging Face export: {hf_reason}")
        write_json(out / "metrics.json", metrics)
        run.log_metrics(metrics)
        run.log_artifact(out / "choice.json")
        commit, _ = git_state(repo_root())
        info = log_pyfunc(
            out / "model",
            registered_model_name=cfg.deploy.registered_model,
            tags={
                "roadwork.variant": variant,
                "roadwork.git_commit": commit,
                "roadwork.data_version": data_version(repo_root()),
                **{f"roadwork.{k}": f"{v:.6f}" for k, v in val_metrics.items()},
            },
        )
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(cfg.deploy.registered_model, CHALLENGER, version)
        run.set_tags({"roadwork.registered_version": version})
    print(
        f"bundle: {variant} (val_calib validator-mix MCC {val_metrics['val_calib_validator_mcc']:.3f}) "
        "registered as "
        f"{cfg.deploy.registered_model} version {version}, alias '{CHALLENGER}'"
        + (f"; HF export agrees on {len(paths)} images" if hf_reason is None else "")
    )


def _export_hf(cfg: RoadworkConfig, predictor: Any, directory: Path, val_metrics: dict) -> str | None:
    """Write the Hugging Face export; returns why not when the model cannot be expressed as one."""
    if predictor.spec.views != "global" or predictor.spec.tta_flip:
        return "multi-view and flip-averaged models have no standard image-classification form"
    from roadwork.deploy.hf_export import export_hf, validate_model_card
    from roadwork.tracking import repo_root, source_time

    card = {
        "model_name": cfg.deploy.model_name,
        "description": cfg.deploy.description,
        "version": cfg.deploy.version,
        "submitted_by": os.environ.get("ROADWORK_SUBMITTED_BY")
        or cfg.deploy.submitted_by
        or getpass.getuser(),
        # the build's source time, not the clock: the same commit and data build the same export bytes
        "submission_time": source_time(repo_root()).isoformat(),
        "metrics": val_metrics,
    }
    card = validate_model_card(card)  # a bad card is an error, never a silently skipped export
    try:
        export_hf(predictor.backbone, predictor.head, predictor.policy, directory, model_card=card)
    except (NotImplementedError, ValueError) as exc:
        return str(exc)
    return None
