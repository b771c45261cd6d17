"""What every stage shares: atomic JSON/CSV writes, metrics files, dvc.yaml lineage and the stage's MLflow run
(paths: :mod:`roadwork.layout`)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from roadwork.atomic import atomic_write_json
from roadwork.config import RoadworkConfig, flatten, to_dict
from roadwork.layout import METRICS_JSON, REPORT_JSON
from roadwork.tracking import StageRun, repo_root, stage_run


def write_json(path: Path, payload: Mapping[str, Any], *, sort_keys: bool = True) -> None:
    """Write JSON (sorted keys unless told otherwise, indent 2) atomically: no reader sees half a file."""
    atomic_write_json(path, payload, sort_keys=sort_keys)


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


def dvc_stages(dvc_yaml: Path) -> dict[str, dict[str, Any]]:
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


def entry_paths(entries: list[Any] | None) -> list[str]:
    """Paths of ``deps`` / ``outs`` / ``metrics`` / ``plots`` entries (a path, or a path with options)."""
    return [(e if isinstance(e, str) else next(iter(e))).rstrip("/") for e in entries or []]


def lineage_params(dvc_yaml: Path, dvc_stage: str) -> list[str]:
    """The ``params`` that ``dvc_yaml`` declares for ``dvc_stage`` and for every stage upstream of it (whose
    outputs it depends on, directly or through others): what its results depend on. Empty when the file or
    the stage does not exist. Entries naming another params file than ``params.yaml`` are not roadwork's.
    """
    if not dvc_yaml.is_file():
        return []
    stages = dvc_stages(dvc_yaml)
    if dvc_stage not in stages:
        return []
    produced = {
        name: [p for field_ in ("outs", "metrics", "plots") for p in entry_paths(body.get(field_))]
        for name, body in stages.items()
    }

    def feeds(out: str, dep: str) -> bool:
        return out == dep or out.startswith(dep + "/") or dep.startswith(out + "/")

    upstream, todo = {dvc_stage}, [dvc_stage]
    while todo:
        deps = entry_paths(stages[todo.pop()].get("deps"))
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
