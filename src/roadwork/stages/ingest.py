"""ingest stage: decode and verify every input once, quarantine bad files, write the manifest."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from roadwork.atomic import atomic_write_csv
from roadwork.config import RoadworkConfig
from roadwork.data.ingest import ingest
from roadwork.data.sources import INGESTED_ROLES, Source, sources_from
from roadwork.layout import METRICS_JSON, REPORT_JSON, stage_dir
from roadwork.stages.common import tracked, write_metrics

KNOWN_DUPLICATES_SIDECAR = "near_duplicates.csv"
# metrics.json; the count per quarantine reason (``quarantined_<reason>``) is in report.json
HEADLINE = ("n_inputs", "n_kept", "n_quarantined", "n_label_0", "n_label_1")


def known_duplicate_pairs(data_dir: Path, prefix: str = "") -> pd.DataFrame:
    """Pairs a data set declares as near-duplicates (``path_a``, ``path_b``), e.g. synth's planted ones;
    ``prefix`` (a source's ``<name>/``) is put before both paths, as ingest puts it before its inputs'.

    They are not used to build groups (dedupe must find them itself); they measure dedupe's recall.
    """
    sidecar = data_dir / KNOWN_DUPLICATES_SIDECAR
    if not sidecar.is_file():
        return pd.DataFrame({"path_a": pd.Series(dtype=str), "path_b": pd.Series(dtype=str)})
    frame = pd.read_csv(sidecar, dtype=str)
    missing = {"path_a", "path_b"} - set(frame.columns)
    if missing:
        raise ValueError(f"{sidecar}: missing column(s) {sorted(missing)}; expected path_a, path_b")
    frame = frame[["path_a", "path_b"]]
    if prefix:
        frame = prefix + frame
    return frame.sort_values(["path_a", "path_b"]).reset_index(drop=True)


def ingested_sources(cfg: RoadworkConfig) -> list[Source]:
    """``data.sources`` that ingest reads (labelled and hard-negative; unlabeled ones are adapt's)."""
    return [s for s in sources_from(cfg.data.sources) if s.role in INGESTED_ROLES]


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = ()) -> None:
    out = stage_dir("ingest")
    data_dir = Path(cfg.data.dir)
    sources = ingested_sources(cfg)
    with tracked("ingest", cfg, ("data", "ingest"), overrides) as run:
        result = ingest(
            data_dir,
            out,
            working_min_side=cfg.ingest.working_min_side,
            jpeg_quality=cfg.ingest.jpeg_quality,
            max_pixels=cfg.ingest.max_pixels,
            min_side=cfg.ingest.min_side,
            workers=cfg.ingest.workers,
            sources=sources,
        )
        pairs = [known_duplicate_pairs(data_dir / s.dir, f"{s.name}/") for s in sources]
        pairs = pairs or [known_duplicate_pairs(data_dir)]
        atomic_write_csv(out / "known_duplicates.csv", pd.concat(pairs, ignore_index=True))
        metrics = {
            "n_inputs": result.n_inputs,
            "n_kept": result.n_kept,
            "n_quarantined": result.n_quarantined,
            **{f"n_label_{label}": count for label, count in sorted(result.label_counts.items())},
            **{f"quarantined_{reason}": count for reason, count in sorted(result.reason_counts.items())},
            **{f"n_source_{name}": count for name, count in result.source_counts.items()},
        }
        write_metrics(out, metrics, HEADLINE)
        run.log_metrics(metrics)
        for name in ("manifest.csv", "quarantine.csv", METRICS_JSON, REPORT_JSON):
            run.log_artifact(out / name)
    print(
        f"ingest: {result.n_inputs} inputs = {result.n_kept} kept + {result.n_quarantined} quarantined "
        f"(see {out / 'quarantine.csv'})"
        + "".join(f"; {name} {count}" for name, count in result.source_counts.items())
    )
    if result.unread:
        more = f" and {len(result.unread) - 5} more" if len(result.unread) > 5 else ""
        unread = ", ".join(result.unread[:5]) + more
        print(f"ingest: not read (in {data_dir}, in no data.sources folder): {unread}")
