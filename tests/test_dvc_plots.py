"""`dvc plots` pages render offline: the Vega scripts come from the local template (scripts/fetch-vega.sh,
pinned npm packages), not a CDN, and every interactive plot the pipeline declares draws, the two revisions
of a `dvc plots diff` overlaid."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.dvc_plots import REPO, chromium_offline, drawn_plots, dvc_plots, plot_project

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="headless Chromium is not installed (Debian: apt-get install chromium)",
    ),
]

# adapt's SSL loss; per variant train's history, calibrate's sweep and evaluate's ROC, PR and reliability
INTERACTIVE = {"outputs_adapt_history_csv"} | {
    f"outputs_{stage}_{variant}_{name}_csv"
    for variant in ("base", "adapted")
    for stage, name in (
        ("train", "history"),
        ("calibrate", "threshold_sweep"),
        ("evaluate", "plots_roc"),
        ("evaluate", "plots_pr"),
        ("evaluate", "plots_reliability"),
    )
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    subprocess.run([str(REPO / "scripts/fetch-vega.sh")], check=True)  # the bootstrap's step; a no-op then
    return plot_project(tmp_path_factory.mktemp("plots"))


def rendered(project: Path, *args: str) -> dict[str, tuple[tuple[int, int] | None, list[str]]]:
    page, log = dvc_plots(project, *args)
    assert "failed to load" not in log, log  # every declared plot file was found (in every revision)
    html = page.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html), "a script is loaded from elsewhere, not inlined"
    assert "cdn.jsdelivr" not in html
    plots = drawn_plots(chromium_offline(page))
    assert set(plots) == INTERACTIVE
    for name, (size, lines) in plots.items():
        assert size is not None and min(size) > 100, f"{name} did not draw: {size}"
        assert lines, f"{name} drew no line"
    return plots


def test_plots_diff_overlays_two_revisions_offline(project: Path) -> None:
    for name, (_, lines) in rendered(project, "diff", "HEAD").items():
        assert len(set(lines)) >= 2, f"{name}: one line for two different revisions"


def test_plots_show_draws_the_workspace_offline(project: Path) -> None:
    for name, (_, lines) in rendered(project, "show").items():
        # simple: one line; linear: the smoothed line over the faint raw one
        assert 1 <= len(lines) <= 2, (name, len(lines))
