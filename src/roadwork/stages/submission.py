"""``roadwork export-submission``: the folder a miner publishes, built from the champion (or ``--model-uri``).

The Hugging Face export of the model (:func:`roadwork.deploy.hf_export.export_hf`), a ``model_card.json`` the
subnet's rules accept (:func:`roadwork.deploy.submission.submission_card`) and a README with the
validator-faithful evaluation of the model's variant (``outputs/evaluate/<variant>/metrics.json``). Before it
reports success the folder is loaded through ``transformers.pipeline`` in this process and must agree with the
model on validation images rendered as the validator sends them (val_calib, level 0): every decision equal,
scores within 1e-4. No network call is made; the command to publish the folder is printed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from roadwork.config import RoadworkConfig
from roadwork.data.split import read_split
from roadwork.layout import METRICS_JSON, REPORT_JSON, SPLITS_CSV, output_dir
from roadwork.stages.agreement import check_export_agreement
from roadwork.stages.modelling import rendered_bytes

HEADLINE = ("validator_mcc", "validator_accuracy", "predicted_positive_rate", "expected_reward")


def load_predictor(model_uri: str) -> tuple[Any, str | None]:
    """(Predictor, variant or None) of a local model folder or an MLflow ``models:/`` / ``runs:/`` URI."""
    from roadwork.deploy.predictor import Predictor

    if Path(model_uri).is_dir():
        return Predictor.from_dir(model_uri), None
    import mlflow

    from roadwork.tracking import check_reachable, tracking_uri

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    predictor = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().predictor
    return predictor, _registry_variant(model_uri)


def _registry_variant(model_uri: str) -> str | None:
    """The ``roadwork.variant`` tag of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` version."""
    import mlflow

    if not model_uri.startswith("models:/"):
        return None
    name_part = model_uri[len("models:/") :]
    client = mlflow.MlflowClient()
    if "@" in name_part:
        name, alias = name_part.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, number = name_part.rsplit("/", 1)
        version = client.get_model_version(name, number)
    return version.tags.get("roadwork.variant")


def evaluation_metrics(variant: str | None) -> dict[str, float]:
    """The validator-faithful headline of ``variant`` (with interval bounds), for the README; {} if none.

    Read from evaluate's ``report.json``: some of the interval bounds are not in its ``metrics.json``."""
    path = output_dir("evaluate", variant) / REPORT_JSON
    if variant is None or not path.is_file():
        return {}
    figures = json.loads(path.read_text())
    keys = [k for name in HEADLINE for k in (name, f"{name}_low", f"{name}_high") if k in figures]
    keys += [k for k in ("probe_validator_mcc", "lift_over_probe") if k in figures]
    return {f"val_test_{k}": float(figures[k]) for k in keys}


def check_agreement(predictor: Any, folder: Path) -> tuple[int, float]:
    """(images, max |dp|) of the export against the model on val_calib's level-0 renders
    (:func:`~roadwork.stages.agreement.check_export_agreement`)."""
    images = read_split(SPLITS_CSV, "submission", ["val_calib"]).sort_values("path")
    return check_export_agreement(predictor, folder, rendered_bytes(images), "val_calib images")


def main(
    cfg: RoadworkConfig, *, hotkey: str, model_name: str, version: str | None, out: Path, model_uri: str
) -> int:
    from roadwork.deploy.hf_export import export_hf, hf_refusal
    from roadwork.deploy.submission import submission_card

    card = submission_card(
        hotkey=hotkey,
        model_name=model_name,
        version=version or cfg.deploy.version,
        description=cfg.deploy.description,
    )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not empty; pass a new --out folder (nothing was written).")
    predictor, variant = load_predictor(model_uri)
    refusal = hf_refusal(predictor)
    if refusal is not None:
        raise ValueError(
            f"{model_uri} cannot be submitted: {refusal}. bundle exported its linear probe instead: submit "
            f"that with --model-uri {output_dir('bundle') / 'fallback'} (its cost on val_calib is "
            f"hf_cost_val_calib_validator_mcc in {output_dir('bundle') / METRICS_JSON}), or train with "
            "embed.views=global, embed.tta_flip=false, train.head=linear, train.feature_transform=none."
        )
    metrics = evaluation_metrics(variant)
    export_hf(
        predictor.backbone, predictor.head, predictor.policy, out, model_card={**card, "metrics": metrics}
    )
    try:
        n_images, max_diff = check_agreement(predictor, out)
    except ValueError as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise ValueError(f"{exc} {out} was removed.") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    print(
        f"export-submission: {out} holds {model_uri} ({variant or 'variant unknown'}) as "
        f"{card['model_name']} {card['version']}, submitted_by {card['submitted_by']} at "
        f"{card['submission_time']}; the transformers pipeline agrees with the model on {n_images} "
        f"val_calib images (max |dp| {max_diff:.1e})."
    )
    print("Publish it (needs `huggingface-cli login` first):")
    print(f"  huggingface-cli upload <your-hf-user>/{card['model_name']} {out} .")
    return 0
