"""What every stage shares: output locations, atomic JSON writes and the stage's MLflow run."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from roadwork.atomic import atomic_write, atomic_write_json
from roadwork.config import RoadworkConfig, flatten, to_dict
from roadwork.tracking import StageRun, repo_root, stage_run

OUTPUTS = Path("outputs")
# Resume checkpoints of long stages: outside every DVC `outs` (DVC deletes those before a stage runs), so a
# killed `dvc repro` resumes where it stopped. Each stage checks that a checkpoint matches its inputs.
CHECKPOINTS = Path(".cache/checkpoints")
# Rendered inputs (the JPEG bytes the validator would send), shared by every stage and backbone
RENDERS = Path(".cache/renders")
INGEST = OUTPUTS / "ingest"
SPLITS_CSV = OUTPUTS / "split" / "splits.csv"
# variant -> where its backbone comes from: the configured backbone, or the ExPLoRA-adapted copy of it
VARIANTS: dict[str, str | None] = {"base": None, "adapted": "outputs/adapt/backbone"}


def stage_dir(stage: str, variant: str | None = None) -> Path:
    """``outputs/<stage>[/<variant>]``, created if needed. Paths are relative to the repository root."""
    path = OUTPUTS / stage / variant if variant else OUTPUTS / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir(stage: str, variant: str | None = None) -> Path:
    """``.cache/checkpoints/<stage>[@<variant>]``: where a stage's resume checkpoints live."""
    return CHECKPOINTS / (f"{stage}@{variant}" if variant else stage)


def write_json(path: Path, payload: Mapping[str, Any], *, sort_keys: bool = True) -> None:
    """Write JSON (sorted keys unless told otherwise, indent 2) atomically: no reader sees half a file."""
    atomic_write_json(path, payload, sort_keys=sort_keys)


METRICS_JSON = "metrics.json"
REPORT_JSON = "report.json"


def write_metrics(directory: Path, figures: Mapping[str, float], headline: Sequence[str]) -> dict[str, float]:
    """Write a stage's figures as two files and return the headline ones.

    ``metrics.json`` (DVC's metrics: what ``dvc metrics show`` and ``dvc exp show`` compare) holds the
    ``headline`` names in that order; a name the figures lack is left out (e.g. the validator mix when no
    level renders were made). ``report.json`` (a stage output and an MLflow artifact) holds every figure,
    headline first, then by name. Readers of a figure outside the headline read ``report.json``.
    """
    head = {name: figures[name] for name in headline if name in figures}
    write_json(directory / METRICS_JSON, head, sort_keys=False)
    rest = {name: figures[name] for name in sorted(figures) if name not in head}
    write_json(directory / REPORT_JSON, head | rest, sort_keys=False)
    return head


def write_csv(frame: Any, path: Path) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))


_INTERPOLATION = re.compile(r"\$\{(key|item(?:\.\w+)?)\}")


def _expand(node: Any, key: str, item: Any) -> Any:
    """``node`` of a ``foreach`` stage's ``do`` with ``${key}``, ``${item}``, ``${item.field}`` filled in."""
    if isinstance(node, str):

        def value(match: re.Match[str]) -> str:
            ref = match.group(1)
            if ref == "key":
                return key
            return str(item if ref == "item" else item[ref.split(".", 1)[1]])

        return _INTERPOLATION.sub(value, node)
    if isinstance(node, list):
        return [_expand(x, key, item) for x in node]
    if isinstance(node, dict):
        return {_expand(k, key, item): _expand(v, key, item) for k, v in node.items()}
    return node


def _dvc_stages(dvc_yaml: Path) -> dict[str, dict[str, Any]]:
    """The stages of ``dvc_yaml``, ``foreach`` ones expanded to ``name@key`` as DVC names them."""
    spec = yaml.safe_load(dvc_yaml.read_text()) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("stages", {}), dict):
        raise ValueError(f"{dvc_yaml}: expected a mapping with a 'stages' mapping.")
    stages: dict[str, dict[str, Any]] = {}
    for name, body in (spec.get("stages") or {}).items():
        if "foreach" not in body:
            stages[name] = body
            continue
        items = body["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((str(x), x) for x in items)
        for key, item in pairs:
            stages[f"{name}@{key}"] = _expand(body["do"], str(key), item)
    return stages


def _entry_paths(entries: list[Any] | None) -> list[str]:
    """Paths of ``deps`` / ``outs`` / ``metrics`` / ``plots`` entries (a path, or a path with options)."""
    return [(e if isinstance(e, str) else next(iter(e))).rstrip("/") for e in entries or []]


def lineage_params(dvc_yaml: Path, dvc_stage: str) -> list[str]:
    """The ``params`` that ``dvc_yaml`` declares for ``dvc_stage`` and for every stage upstream of it (whose
    outputs it depends on, directly or through others): what its results depend on. Empty when the file or
    the stage does not exist. Entries naming another params file than ``params.yaml`` are not roadwork's.
    """
    if not dvc_yaml.is_file():
        return []
    stages = _dvc_stages(dvc_yaml)
    if dvc_stage not in stages:
        return []
    produced = {
        name: [p for field_ in ("outs", "metrics", "plots") for p in _entry_paths(body.get(field_))]
        for name, body in stages.items()
    }

    def feeds(out: str, dep: str) -> bool:
        return out == dep or out.startswith(dep + "/") or dep.startswith(out + "/")

    upstream, todo = {dvc_stage}, [dvc_stage]
    while todo:
        deps = _entry_paths(stages[todo.pop()].get("deps"))
        for name, outs in produced.items():
            if name not in upstream and any(feeds(o, d) for o in outs for d in deps):
                upstream.add(name)
                todo.append(name)
    keys: set[str] = set()
    for name in upstream:
        for entry in stages[name].get("params") or []:
            if isinstance(entry, str):
                keys.add(entry)
            elif isinstance(entry, dict):
                keys.update(k for file, names in entry.items() if file == "params.yaml" for k in names or [])
    return sorted(keys)


@contextmanager
def tracked(
    stage: str,
    cfg: RoadworkConfig,
    sections: tuple[str, ...],
    overrides: tuple[str, ...] = (),
    variant: str | None = None,
) -> Iterator[StageRun]:
    """The MLflow run of this stage execution, with the stage's param sections logged as ``section.key``,
    and with them the params ``dvc.yaml`` declares for the stage and every stage upstream of it
    (:func:`lineage_params`), so a run shows every setting its results depend on."""
    resolved = to_dict(cfg)
    dvc_stage = f"{stage}@{variant}" if variant else stage
    declared = (*sections, *lineage_params(repo_root() / "dvc.yaml", dvc_stage))
    params = {
        k: v for k, v in flatten(resolved).items() if any(k == p or k.startswith(p + ".") for p in declared)
    }
    with stage_run(
        stage,
        params=params,
        resolved_config=resolved,
        experiment=cfg.tracking.experiment,
        variant=variant,
        overrides=overrides,
    ) as run:
        yield run


def variant_backbone_id(cfg: RoadworkConfig, variant: str) -> str:
    """The ``load_backbone`` id of ``variant``: ``backbone.id`` for base, the adapted folder otherwise."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; the variants are {', '.join(VARIANTS)}.")
    return VARIANTS[variant] or cfg.backbone.id


def load_variant_backbone(cfg: RoadworkConfig, variant: str) -> Any:
    """The variant's backbone (:func:`configured_backbone`), on ``embed.device`` (compiled with
    ``embed.compile``)."""
    return place_backbone(cfg, configured_backbone(cfg, variant_backbone_id(cfg, variant)))


def configured_backbone(cfg: RoadworkConfig, backbone_id: str) -> Any:
    """``load_backbone(backbone_id)`` with ``backbone.input_size`` / ``backbone.pooling`` applied: the
    network every stage runs (adapt adapts it, embed and the exports use it)."""
    return build_backbone(
        backbone_id,
        seed=cfg.backbone.seed,
        attn_implementation=cfg.backbone.attn_implementation,
        input_size=cfg.backbone.input_size,
        pooling=cfg.backbone.pooling,
    )


def build_backbone(
    backbone_id: str, *, seed: int, attn_implementation: str, input_size: int | None, pooling: str
) -> Any:
    """``load_backbone(backbone_id)`` reconfigured to ``input_size`` and ``pooling`` (None, "avg": as is)."""
    from roadwork.models.backbone import load_backbone

    backbone = load_backbone(backbone_id, seed=seed, attn_implementation=attn_implementation)
    if input_size is not None or pooling != "avg":
        backbone = backbone.reconfigured(input_size=input_size, pooling=pooling)
    return backbone


def place_backbone(cfg: RoadworkConfig, backbone: Any) -> Any:
    """Move ``backbone`` to ``embed.device`` and, with ``embed.compile``, compile its network's forward.

    Compiling the bound ``forward`` (not wrapping the module) keeps the parameter names, so the fingerprint
    and saved files are those of the plain module.
    """
    import torch

    place_on_device(cfg, backbone)
    if cfg.embed.compile:
        backbone.model.forward = torch.compile(backbone.model.forward)
    return backbone


def place_on_device(cfg: RoadworkConfig, backbone: Any) -> Any:
    """Move ``backbone`` to ``embed.device`` ("auto": CUDA when there is one)."""
    import torch

    device = cfg.embed.device
    if device == "gpu" and not torch.cuda.is_available():
        raise ValueError("embed.device is 'gpu' but no CUDA device is available; use auto or cpu.")
    if device in ("auto", "gpu") and torch.cuda.is_available():
        backbone.to("cuda")
    return backbone


def feature_cache(
    cfg: RoadworkConfig, backbone: Any, fingerprint: str | None = None, *, precision: str | None = None
) -> Any:
    """The shared feature cache for ``backbone`` as this configuration runs it (device and precision:
    ``embed.precision`` unless given)."""
    from roadwork.models.inference import FeatureCache, numerics_key

    device_type = next(backbone.parameters()).device.type
    key = numerics_key(fingerprint or backbone.fingerprint(), device_type, precision or cfg.embed.precision)
    return FeatureCache(Path(cfg.embed.cache_dir), key)


def render_store() -> Any:
    from roadwork.train.embed import RenderStore

    return RenderStore(RENDERS)


def view_spec(cfg: RoadworkConfig) -> Any:
    from roadwork.models.inference import ViewSpec

    return ViewSpec(cfg.embed.views, cfg.embed.grid, cfg.embed.tile_overlap)


def train_augment(cfg: RoadworkConfig) -> Any:
    from roadwork.data.preprocess import TrainAugment

    aug = cfg.embed.augment
    return TrainAugment(
        tuple(aug.level_probs),
        color_jitter=aug.color_jitter,
        erase_p=aug.erase_p,
        flip_p=aug.flip_p,
        jpeg=aug.jpeg,
    )


# ------------------------------------------------------------------ the trained model of a variant


def model_dir(variant: str) -> Path:
    """``outputs/train/<variant>/model``: the head, ``backbone.json`` and, if finetuned, ``backbone/``."""
    return OUTPUTS / "train" / variant / "model"


def write_backbone_ref(directory: Path, backbone: Any, *, finetuned: bool) -> None:
    """Record which backbone the head in ``directory`` was trained on (the folder itself when finetuned)."""
    write_json(
        directory / "backbone.json",
        {"finetuned": finetuned, "source": backbone.backbone_id, "fingerprint": backbone.fingerprint()},
    )


def load_model(cfg: RoadworkConfig, variant: str) -> tuple[Any, Any]:
    """(backbone, head) of the variant's trained model; fails if the backbone no longer matches the head."""
    from roadwork.models.backbone import load_backbone
    from roadwork.models.head import load_head

    directory = model_dir(variant)
    ref_path = directory / "backbone.json"
    if not ref_path.is_file():
        raise FileNotFoundError(f"{ref_path}: missing; run `roadwork train --variant {variant}` first.")
    ref = json.loads(ref_path.read_text())
    if ref["finetuned"]:
        backbone = place_backbone(cfg, load_backbone(str(directory / "backbone")))
    else:
        backbone = load_variant_backbone(cfg, variant)
    if backbone.fingerprint() != ref["fingerprint"]:
        raise ValueError(
            f"{ref_path}: the head was trained on backbone {ref['fingerprint'][:12]} but "
            f"{backbone.backbone_id} is {backbone.fingerprint()[:12]}; re-run train."
        )
    return backbone, load_head(directory)


def rendered_bytes(frame: Any, render: Any = None) -> list[bytes]:
    """The bytes ``render`` (default: clean) makes of each image of ``frame`` (``working_path``,
    ``sha256``), from or into the shared render store."""
    from roadwork.train.embed import Render, rendered_inputs

    paths = [INGEST / p for p in frame["working_path"]]
    return rendered_inputs(paths, frame["sha256"].tolist(), render or Render(), render_store())


def model_margins(
    cfg: RoadworkConfig,
    backbone: Any,
    head: Any,
    inputs: list[bytes],
    *,
    desc: str = "margins",
    fingerprint: str | None = None,
) -> Any:
    """Margins ``z1 - z0`` ``[N]`` of the model on encoded ``inputs`` (e.g. :func:`rendered_bytes`).

    They go through the one inference path (:func:`roadwork.models.inference.infer_margins`, flip-averaged
    with ``embed.tta_flip``) with the shared feature cache, so inputs ``embed`` already ran are only read
    back. ``fingerprint``: the backbone's, when the caller has it (hashing every weight costs about a second
    per 100M parameters).
    """
    from roadwork.models.inference import infer_margins

    return infer_margins(
        backbone,
        head,
        inputs,
        spec=view_spec(cfg),
        tta_flip=cfg.embed.tta_flip,
        cache=feature_cache(cfg, backbone, fingerprint),
        batch_size=cfg.embed.batch_size,
        precision=cfg.embed.precision,
        desc=desc,
        show_progress=True,
    )


# ------------------------------------------------------------------ the Hugging Face export's agreement check

AGREEMENT_TOLERANCE = 1e-4
"""Largest |score difference| allowed between an export's pipeline and the model it holds."""


def check_export_agreement(predictor: Any, folder: Path, data: list[bytes], what: str) -> tuple[int, float]:
    """(images, max |dp|) of the Hugging Face export in ``folder`` against ``predictor`` on the encoded
    images ``data`` (``what`` names them in messages): the same bytes to both, the export through the real
    ``transformers.pipeline``. ValueError if a decision differs or a score moves more than
    :data:`AGREEMENT_TOLERANCE`."""
    import numpy as np

    from roadwork.deploy.hf_export import hf_probabilities
    from roadwork.train.embed import decode_render

    ours = predictor.predict(data)
    theirs = hf_probabilities(folder, [decode_render(item) for item in data])
    diff = np.abs(theirs - ours["probability"].to_numpy())
    differ = int(((theirs > 0.5) != (ours["decision"].to_numpy() == 1)).sum())
    if differ or diff.max() > AGREEMENT_TOLERANCE:
        raise ValueError(
            f"the Hugging Face export in {folder} disagrees with the model on {differ} of {len(data)} {what} "
            f"(max |dp| {diff.max():.2e}, tolerance {AGREEMENT_TOLERANCE})."
        )
    return len(data), float(diff.max())
