"""A small DVC project whose plots are the pipeline's (this repository's dvc.yaml and .dvc/config) and whose
plot files are fake pipeline outputs with the real schema, plus rendering of a page offline in headless
Chromium.

``plot_project`` commits one set of outputs and leaves a second, different one in the workspace, so
``dvc plots diff HEAD`` overlays two revisions. Image plots are small placeholders; the CSVs come from the
writers the stages use (:mod:`roadwork.plots`, :func:`roadwork.policy.mcc_sweep`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from roadwork import plots
from roadwork.atomic import atomic_write_csv
from roadwork.policy import mcc_sweep

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("base", "adapted")
EVALUATE_PNGS = ("roc", "pr", "reliability", "threshold_sweep", "confusion", "risk_coverage", "worst_errors")


def write_plot_outputs(root: Path, separation: float) -> None:
    """Every plot file dvc.yaml declares, from labels and scores whose class ``separation`` sets how good
    the fake model is (a larger one moves every curve)."""
    rng = np.random.default_rng(0)
    steps = np.arange(1, 11)
    atomic_write_csv(
        root / "outputs/adapt/history.csv",
        pd.DataFrame({"step": steps, "loss": 3.0 / (separation * steps), "agreement": 1 - 1 / (1 + steps)}),
    )
    for k, variant in enumerate(VARIANTS):
        sep = separation + 0.3 * k
        y = (rng.random(300) < 0.5).astype(np.int64)
        margin = rng.normal(0.0, 1.0, len(y)) + sep * (2 * y - 1)
        p = 1.0 / (1.0 + np.exp(-margin))
        epochs = np.arange(8)
        history = pd.DataFrame(
            {
                "epoch": epochs,
                "train_loss": 0.7 / (1 + sep * epochs / 4),
                "val_loss": 0.7 / (1 + sep * epochs / 5),
                "val_mcc": np.tanh(sep * (epochs + 1) / 8),
            }
        )
        atomic_write_csv(root / f"outputs/train/{variant}/history.csv", history)
        atomic_write_csv(
            root / f"outputs/calibrate/{variant}/threshold_sweep.csv", mcc_sweep(y, p).to_frame()
        )
        folder = root / f"outputs/evaluate/{variant}/plots"
        atomic_write_csv(folder / "roc.csv", plots.roc_table(y, margin))
        atomic_write_csv(folder / "pr.csv", plots.pr_table(y, margin))
        atomic_write_csv(folder / "reliability.csv", plots.reliability_table(y, p, n_bins=15))
        for name in EVALUATE_PNGS:
            Image.new("RGB", (120, 90), (int(80 * sep) % 256, 120, 200)).save(folder / f"{name}.png")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=True)


def plot_project(dest: Path) -> Path:
    """A git + DVC repository at ``dest`` with this repository's dvc.yaml, .dvc/config and Vega scripts
    (``.cache/vega``, linked): one set of plot outputs committed, a better one in the workspace."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["git", "init", "-q"], dest)
    _run([str(REPO / ".venv/bin/dvc"), "init", "-q"], dest)
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    shutil.copy(REPO / ".dvc/config", dest / ".dvc/config")
    (dest / ".cache").mkdir()
    (dest / ".cache/vega").symlink_to(REPO / ".cache/vega")
    write_plot_outputs(dest, separation=0.7)
    _run(["git", "add", "-A"], dest)
    _run(["git", "add", "-f", "outputs"], dest)  # as git files: no stage has run, so no dvc.lock
    _run(["git", "commit", "-q", "-m", "first"], dest)
    write_plot_outputs(dest, separation=1.1)
    return dest


def dvc_plots(project: Path, *args: str) -> tuple[Path, str]:
    """Run ``dvc plots <args> -o <project>/page``; (the page, DVC's output)."""
    done = _run([str(REPO / ".venv/bin/dvc"), "plots", *args, "-o", "page"], project)
    return project / "page/index.html", done.stdout + done.stderr


def chromium_offline(
    page: Path, *, screenshot: Path | None = None, width: int = 1300, height: int = 1800
) -> str:
    """The DOM of ``page`` after its scripts ran in headless Chromium with every host name unresolvable (so
    nothing can come from the network); with ``screenshot``, also a PNG of the window there."""
    args = [
        shutil.which("chromium") or "chromium",
        "--headless",
        "--no-sandbox",  # tests may run as root, which Chromium's sandbox refuses
        "--disable-gpu",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--hide-scrollbars",
        "--virtual-time-budget=15000",
        f"--window-size={width},{height}",
    ]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    done = subprocess.run(
        [*args, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


def drawn_plots(dom: str) -> dict[str, tuple[tuple[int, int] | None, list[str]]]:
    """Per Vega plot in ``dom``, by its element id (DVC derives it from the file): the size of its SVG
    (None when nothing was drawn) and the path data of each line it drew."""
    plots: dict[str, tuple[tuple[int, int] | None, list[str]]] = {}
    for part in re.split(r'<div id="', dom)[1:]:
        name, attributes = part.split('"', 1)
        if not attributes.startswith(' class="vega-embed'):  # an image plot
            continue
        size = re.search(r'<svg [^>]*class="marks" width="(\d+)" height="(\d+)"', part)
        lines = re.findall(r'aria-roledescription="line mark" d="(M[^"]+)"', part)
        plots[name] = ((int(size[1]), int(size[2])) if size else None, lines)
    return plots


def main(argv: list[str]) -> int:
    """``python tests/helpers/dvc_plots.py OUT.png``: the screenshot in docs/ (run after
    scripts/fetch-vega.sh): evaluate's curves of two revisions, ``dvc plots diff HEAD``, rendered offline."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        project = plot_project(Path(tmp) / "project")
        targets = [
            f"outputs/evaluate/{v}/plots/{n}.csv" for v in VARIANTS for n in ("roc", "pr", "reliability")
        ]
        page, _ = dvc_plots(project, "diff", "HEAD", "--targets", *targets)
        drawn = drawn_plots(
            chromium_offline(page, screenshot=Path(argv[0]).resolve(), width=1560, height=790)
        )
    print(f"{argv[0]}: {len(drawn)} plots drawn")
    return 0 if len(drawn) == len(targets) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
