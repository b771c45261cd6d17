"""``roadwork predict PATH…``: a registered (or local) model on image files and folders, batched.

Folders are searched recursively; every regular file found is tried, so a stray non-image is reported with
its reason instead of being skipped silently, and never stops the others. Writes a CSV with ``path,
probability, decision, abstain, error`` (``--out``, or standard output).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

OUTPUT = ["path", "probability", "decision", "abstain", "error"]


def collect(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to predict (folders expanded, sorted) and arguments that name nothing usable."""
    files, missing = [], []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            missing.append((path, "no such file or folder"))
    return files, missing


def main(model_uri: str, paths: list[Path], out: Path | None, show_progress: bool = True) -> int:
    import mlflow
    from tqdm.auto import tqdm

    from roadwork.deploy.registry import predict_with
    from roadwork.tracking import check_reachable, tracking_uri

    files, missing = collect(paths)
    if model_uri.startswith("models:/"):
        uri = tracking_uri()
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
    with tqdm(total=len(files), desc="predict", unit="img", disable=not show_progress) as bar:
        predictions = predict_with(model_uri, files, bar.update)
    frame = pd.concat(
        [
            predictions.assign(path=[str(f) for f in files]),
            pd.DataFrame({"path": [str(p) for p, _ in missing], "error": [reason for _, reason in missing]}),
        ],
        ignore_index=True,
    )[OUTPUT]
    frame["decision"] = frame["decision"].astype("Int64")  # missing for files that never reached the model
    if out is None:
        frame.to_csv(sys.stdout, index=False, lineterminator="\n")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False, lineterminator="\n")
    failed = frame["error"].fillna("").astype(bool)
    print(
        f"predict: {int((~failed).sum())} images scored, {int(failed.sum())} unusable"
        + (f" (see the error column of {out})" if out and failed.any() else ""),
        file=sys.stderr,
    )
    return 0
