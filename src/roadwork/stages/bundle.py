"""bundle stage: pick the variant, build the deployable model, export it, register it as ``challenger``.

The variant is chosen by **val_calib validator-mix MCC at its policy** (``val_calib_validator_mcc`` in
``outputs/calibrate/<variant>/metrics.json``: the clean render and the L1-L3 renders, levels 25 % each,
labels 50/50; ties go to the earlier variant, base first) among the variants whose policy answers roadwork
for a share of that mix inside ``deploy.positive_rate_band`` (``val_calib_predicted_positive_rate``; when
none does, the nearest to the band); val_test never takes part. Outputs in
``outputs/bundle/``: ``model/`` (the :class:`~roadwork.deploy.predictor.Predictor` folder the pyfunc
serves), ``hf/`` (the Hugging Face export with the policy folded into its classifier), ``fallback/``,
``choice.json`` and ``metrics.json``. A chosen model whose head or views the miner's pipeline cannot run
(several views, flip averaging, an MLP or ``sqrt_l2`` head) is still registered, and ``hf/`` then holds its
variant's linear probe (:mod:`roadwork.deploy.fallback`), saved as a model folder in ``fallback/`` (otherwise
emptied), with its val_calib validator-mix MCC and the cost against the chosen model in ``metrics.json``; a
backbone the export cannot write leaves ``hf/NOT_EXPORTED.txt``. The export must agree with the model it holds
on the validator's level-0 JPEG of every val_calib image (the same bytes to both; images only: val_test stays
untouched for evaluate and promote); any disagreement fails the stage. The pyfunc is registered as a new
version of ``deploy.registered_model``, tagged with the variant, git commit, data version, val metrics and
what ``hf/`` holds, and the ``challenger`` alias moves to it.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from roadwork.atomic import atomic_write_text
from roadwork.config import RoadworkConfig
from roadwork.data.split import read_split
from roadwork.layout import (
    BUNDLE_FALLBACK,
    BUNDLE_HF,
    BUNDLE_MODEL,
    METRICS_JSON,
    SPLITS_CSV,
    VARIANTS,
    model_dir,
    output_dir,
    policy_path,
    stage_dir,
)
from roadwork.stages.agreement import check_export_agreement
from roadwork.stages.common import tracked, write_json
from roadwork.stages.modelling import load_model, load_variant_backbone, rendered_bytes

SELECTION_METRIC = "val_calib_validator_mcc"
POSITIVE_RATE = "val_calib_predicted_positive_rate"


def outside_band(rate: float | None, band: Sequence[float]) -> float:
    """How far ``rate`` lies outside ``band`` = [low, high] (0 inside it, or when there is no rate)."""
    return 0.0 if rate is None else max(band[0] - rate, rate - band[1], 0.0)


def choose_variant(candidates: dict[str, dict[str, float]], band: Sequence[float] = (0.0, 1.0)) -> str:
    """Of the variants whose val_calib validator-mix predicted-positive rate lies in ``band``, the one with
    the highest val_calib validator-mix MCC (first listed wins ties); when none lies in it, the nearest to
    it. Never looks at val_test. A calibrate output without level renders (``embed.val_renders_per_level=0``)
    is compared by its plain ``val_calib_mcc`` and has no rate to check."""
    if not candidates:
        raise FileNotFoundError(
            "no outputs/calibrate/<variant>/metrics.json found; run calibrate for at least one variant."
        )

    def key(variant: str) -> tuple[float, float, int]:
        metrics = candidates[variant]
        score = metrics.get(SELECTION_METRIC, metrics["val_calib_mcc"])
        return outside_band(metrics.get(POSITIVE_RATE), band), -score, list(candidates).index(variant)

    return min(candidates, key=key)


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = ()) -> None:
    from roadwork.deploy.registry import CHALLENGER

    out = stage_dir("bundle")
    candidates, band = _candidates(), cfg.deploy.positive_rate_band
    variant = choose_variant(candidates, band)
    for other, m in candidates.items():
        if outside_band(m.get(POSITIVE_RATE), band) > 0:
            print(
                f"bundle: {other}'s policy answers roadwork for {m[POSITIVE_RATE]:.3f} of val_calib's "
                f"validator mix, outside deploy.positive_rate_band {list(band)}"
                + ("; shipped as the nearest" if other == variant else "; not shipped")
            )
    predictor = _build_model(cfg, variant, out)
    val_metrics = _val_metrics(variant, candidates)
    write_json(out / "choice.json", _choice(variant, candidates, band))
    # the export check: val_calib level-0 renders (the validator's 224 x 224 JPEGs)
    images = read_split(SPLITS_CSV, "bundle", ["val_calib"]).sort_values("path")
    paths = rendered_bytes(images)
    with tracked("bundle", cfg, ("deploy",), overrides) as run:
        metrics: dict[str, float] = {f"chosen_{k}": v for k, v in val_metrics.items()}
        holds, export = _hf_export(cfg, variant, predictor, out, val_metrics, paths)
        metrics.update(export)
        write_json(out / METRICS_JSON, metrics)
        run.log_metrics(metrics)
        run.log_artifact(out / "choice.json")
        version = _register(cfg, run, variant, out, holds, val_metrics, export)
        run.set_tags({"roadwork.registered_version": version, "roadwork.hf_export_holds": holds})
        # the pipeline run shows what this pipeline shipped, beside the other pipelines
        run.log_parent_metrics({f"chosen_{k}": v for k, v in val_metrics.items()})
        run.set_parent_tags(
            {
                "roadwork.chosen_variant": variant,
                "roadwork.registered_version": version,
                "roadwork.hf_export_holds": holds,
            }
        )
    print(
        f"bundle: {variant} (val_calib validator-mix MCC {val_metrics['val_calib_validator_mcc']:.3f}) "
        f"registered as {cfg.deploy.registered_model} version {version}, alias '{CHALLENGER}'; "
        f"Hugging Face export: {holds}"
    )


def _candidates() -> dict[str, dict[str, float]]:
    """Each calibrated variant's ``outputs/calibrate/<variant>/metrics.json``, in :data:`VARIANTS` order."""
    candidates = {}
    for variant in VARIANTS:
        path = output_dir("calibrate", variant) / METRICS_JSON
        if path.is_file():
            candidates[variant] = json.loads(path.read_text())
    return candidates


def _build_model(cfg: RoadworkConfig, variant: str, out: Path) -> Any:
    """The variant's backbone, head and policy as a Predictor, saved to ``out/model`` (the pyfunc's folder);
    ``out/hf`` and ``out/fallback``, written from it later, are emptied."""
    from roadwork.deploy.predictor import Predictor, PredictorSpec
    from roadwork.policy import Policy

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
    policy = Policy.from_json(policy_path(variant))
    predictor = Predictor(backbone, head, policy, spec)
    for folder in (BUNDLE_MODEL, BUNDLE_HF, BUNDLE_FALLBACK):
        shutil.rmtree(folder, ignore_errors=True)
    predictor.save(BUNDLE_MODEL, head_dir=model_dir(variant))
    return predictor


def _val_metrics(variant: str, candidates: dict[str, dict[str, float]]) -> dict[str, float]:
    """The chosen variant's validation figures (val_select from train, val_calib from calibrate)."""
    train_metrics = json.loads((output_dir("train", variant) / METRICS_JSON).read_text())
    return {
        "val_select_mcc": train_metrics["val_select_mcc"],
        "val_calib_mcc": candidates[variant]["val_calib_mcc"],
        "val_calib_validator_mcc": candidates[variant].get(SELECTION_METRIC, float("nan")),
        "val_calib_ece_after": candidates[variant]["ece_after"],
    }


def _choice(variant: str, candidates: dict[str, dict[str, float]], band: Sequence[float]) -> dict[str, Any]:
    """``choice.json``: the chosen variant, the rule, and each candidate's figures the rule compared."""
    keys = ("val_calib_mcc", SELECTION_METRIC, POSITIVE_RATE)
    return {
        "chosen": variant,
        "rule": (
            "highest val_calib validator-mix MCC at the variant's policy among those whose "
            f"predicted-positive rate on that mix lies in {list(band)} (none: the nearest; ties: base first)"
        ),
        "candidates": {v: {k: m[k] for k in keys if k in m} for v, m in candidates.items()},
    }


def _register(
    cfg: RoadworkConfig, run: Any, variant: str, out: Path, holds: str, val_metrics: dict, export: dict
) -> str:
    """Register ``out/model`` as a new version of ``deploy.registered_model`` (every tag at creation, the
    alias last), or complete the pending version a killed bundle left for these very outputs; the version."""
    import mlflow

    from roadwork.deploy.registry import (
        CHALLENGER,
        OUTPUTS_HASH_TAG,
        finish_registration,
        log_pyfunc,
        outputs_hash,
        repair_registrations,
    )
    from roadwork.tracking import data_version, git_state, repo_root

    commit, _ = git_state(repo_root())
    data_ver = data_version(repo_root())
    held = outputs_hash(BUNDLE_MODEL)
    client = mlflow.MlflowClient()
    # a bundle killed between registering and setting the alias left its version pending: complete it
    version = repair_registrations(client, cfg.deploy.registered_model, held, CHALLENGER)
    if version is None:
        info = log_pyfunc(
            BUNDLE_MODEL,
            registered_model_name=cfg.deploy.registered_model,
            tags={
                "roadwork.variant": variant,
                "roadwork.git_commit": commit,
                "roadwork.data_version": data_ver,
                "roadwork.run_id": run.run_id,
                OUTPUTS_HASH_TAG: held,
                "roadwork.hf_export_holds": holds,
                **{f"roadwork.{k}": f"{v:.6f}" for k, v in val_metrics.items()},
                **{f"roadwork.{k}": f"{v:.6f}" for k, v in export.items() if k.startswith("hf_cost")},
            },
            description=f"{variant} variant; data {data_ver}; commit {commit}; "
            + ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()),
        )
        version = str(info.registered_model_version)
        finish_registration(client, cfg.deploy.registered_model, version, CHALLENGER)
    return version


def _hf_export(
    cfg: RoadworkConfig, variant: str, predictor: Any, out: Path, val_metrics: dict, data: list[bytes]
) -> tuple[str, dict[str, float]]:
    """Write ``out/hf`` (the chosen model, or its probe stand-in when the model has no Hugging Face form)
    and check it against the model it holds; (what it holds, metrics). ``NOT_EXPORTED.txt`` says why when
    the backbone itself cannot be exported."""
    from roadwork.deploy.hf_export import hf_refusal

    metrics = {"hf_exported": 0.0, "hf_holds_fallback": 0.0}
    refusal = hf_refusal(predictor)
    holds = variant
    if refusal is None:  # a declared output: say why it is empty
        BUNDLE_FALLBACK.mkdir(parents=True, exist_ok=True)
        note = f"{variant}'s head and views export as they are.\n"
        atomic_write_text(BUNDLE_FALLBACK / "UNUSED.txt", note)
    else:
        print(f"bundle: {variant} has no Hugging Face form ({refusal}); exporting its linear probe instead")
        predictor, fallback_mcc = _probe_fallback(cfg, variant, predictor, BUNDLE_FALLBACK)
        holds = f"{variant} linear probe ({out / 'fallback'}; the chosen model has no Hugging Face form)"
        chosen_mcc = val_metrics["val_calib_validator_mcc"]
        metrics.update(
            hf_holds_fallback=1.0,
            hf_fallback_val_calib_validator_mcc=fallback_mcc,
            hf_cost_val_calib_validator_mcc=chosen_mcc - fallback_mcc,
        )
    reason = _export_hf(cfg, predictor, BUNDLE_HF, val_metrics)
    if reason is not None:
        BUNDLE_HF.mkdir(parents=True, exist_ok=True)
        atomic_write_text(BUNDLE_HF / "NOT_EXPORTED.txt", f"No Hugging Face export: {reason}\n")
        print(f"bundle: no Hugging Face export: {reason}")
        return f"nothing: {reason}", metrics
    n_images, max_diff = check_export_agreement(predictor, BUNDLE_HF, data, "val_calib level-0 renders")
    metrics.update(hf_exported=1.0, hf_max_abs_diff=max_diff, hf_agreement_images=n_images)
    return holds, metrics


def _probe_fallback(cfg: RoadworkConfig, variant: str, chosen: Any, directory: Path) -> tuple[Any, float]:
    """The exportable stand-in (:mod:`roadwork.deploy.fallback`): the variant's probe (train + val_select
    clean global-view features) as a linear head, with a policy fitted on val_calib's renders like
    calibrate's (its threshold too: the probe has no cross-fitted margins); saved as a model folder in
    ``directory``. Returns (predictor, its val_calib validator-mix
    MCC), the MCC comparable with the chosen model's ``val_calib_validator_mcc``."""
    import tempfile
    from dataclasses import replace

    import torch

    from roadwork.config import head_train_config
    from roadwork.deploy.fallback import linear_head_from_probe, probe_head_config
    from roadwork.deploy.predictor import Predictor
    from roadwork.models.head import save_head
    from roadwork.stages.calibrate import fit_validator_policy, validator_mix
    from roadwork.stages.train import fit_variant_probe, load_features

    probe = fit_variant_probe(cfg, variant, read_split(SPLITS_CSV, "bundle", ["train", "val_select"]))
    config = probe_head_config(head_train_config(cfg.train))
    head = linear_head_from_probe(probe, config)
    arrays, rows = load_features(variant, "val_calib")
    labels = read_split(SPLITS_CSV, "bundle", ["val_calib"]).set_index("sha256")["label"]
    y = labels.loc[rows["sha256"]].to_numpy()
    with torch.inference_mode():
        logits = head(torch.from_numpy(arrays["features"][:, :1].astype(np.float32))).double().numpy()
    margin = logits[:, 1] - logits[:, 0]
    images, levels = rows["sha256"].to_numpy(), rows["level"].to_numpy()
    policy = fit_validator_policy(cfg, margin, y, images)
    mix = validator_mix(y, policy.apply(margin)["decision"].astype(int), levels, images)
    # the embed stage's backbone: the probe's features came from it (a finetuned variant's did not)
    spec = replace(chosen.spec, views="global", tta_flip=False)
    predictor = Predictor(load_variant_backbone(cfg, variant), head, policy, spec)
    shutil.rmtree(directory, ignore_errors=True)
    with tempfile.TemporaryDirectory() as head_dir:
        empty = pd.DataFrame({"epoch": []})
        save_head(
            Path(head_dir),
            head,
            config,
            history=empty,
            best_epoch=0,
            best_metric=probe.select_mcc,
            optimizer_steps=0,
        )
        predictor.save(directory, head_dir=Path(head_dir))
    return predictor, float(mix.get("validator_mcc", np.nan))


def _export_hf(cfg: RoadworkConfig, predictor: Any, directory: Path, val_metrics: dict) -> str | None:
    """Write the Hugging Face export; returns why not when the backbone cannot be expressed as one."""
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
    except (NotImplementedError, ValueError) as exc:  # the backbone family or its pooling
        return str(exc)
    return None
