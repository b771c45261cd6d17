"""Regenerate docs/mlflow-runs.png and docs/mlflow-compare-evaluate.png, the README's MLflow screenshots.

    .venv/bin/python docs/mlflow_screenshots.py --build /tmp/shots-repo   # ~10 min on 2 CPUs
    .venv/bin/python docs/mlflow_screenshots.py /tmp/shots-repo           # the screenshots of a built store

(from the repository root, with ``PYTHONPATH=$PWD/src`` where the venv's roadwork is another checkout's).

``--build DIR`` makes the store first: a copy of this repository in DIR (tests/helpers/repo.py's
``copy_repository``: tiny backbone, short training), ``roadwork synth data --n 320 --seed 3``, ``dvc add
data``, a commit, ``dvc repro``, a commit, then ``dvc exp run -n lr-0.01 -S train.lr=0.01``: two pipelines
that differ in ``train.lr``, tracked in DIR/mlflow.db.

Then it starts ``mlflow ui`` on a free port and headless Chromium (Debian's ``chromium``) driven over the
DevTools protocol, because the runs table's columns are UI state, not URL parameters: the script stores the
view (filter on pipeline runs, the columns) as a shared view, MLflow's experiment tag
``mlflow.sharedViewState.<key>``, which ``?viewStateShareKey=<key>`` opens; it closes the assistant panel and
the shared-view banner, and on the compare page ticks *Show diff only*. Both servers stop at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
BIN = Path(sys.executable).parent
SHARE_KEY = "roadwork-pipelines"
# the runs table's extra columns and their widths (wide enough for the whole name)
RUNS_COLUMNS = {
    "metrics.`chosen_val_calib_validator_mcc`": 215,
    "metrics.`base.expected_reward`": 170,
    "params.`train.lr`": 100,
    "tags.`roadwork.changed_params`": 190,
    "tags.`roadwork.chosen_variant`": 180,
}


def build_store(dest: Path) -> None:
    """Two pipelines on synthetic data in ``dest``: ``dvc repro``, then ``dvc exp run -S train.lr=0.01``."""
    sys.path.insert(0, str(REPO))
    from tests.helpers.repo import copy_repository, run

    dest.mkdir(parents=True)
    copy_repository(dest)
    uri = f"sqlite:///{dest / 'mlflow.db'}"
    git = ["git", "-c", "user.name=roadwork", "-c", "user.email=roadwork@localhost"]
    run([*git, "checkout", "-qb", "main"], dest)
    run(["roadwork", "synth", "data", "--n", "320", "--seed", "3", "--quiet"], dest)
    run(["dvc", "add", "-q", "data"], dest)
    run([*git, "add", "-A"], dest)
    run([*git, "commit", "-qm", "demo data"], dest)
    run(["dvc", "repro"], dest, tracking_uri=uri)
    run([*git, "add", "-A"], dest)
    run([*git, "commit", "-qm", "pipeline outputs"], dest)
    run(["dvc", "exp", "run", "-n", "lr-0.01", "-S", "train.lr=0.01"], dest, tracking_uri=uri)


def pick_runs(uri: str) -> tuple[str, list[str], list[str]]:
    """The experiment id, the names of its two latest pipeline runs and their ``evaluate@base`` runs (older
    first); stores the runs-page view the screenshot opens."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("roadwork")
    if experiment is None:
        raise SystemExit(f"{uri}: no experiment 'roadwork'; build the store with --build")
    ids = [experiment.experiment_id]
    pipelines = client.search_runs(
        ids, "tags.`roadwork.run_kind` = 'pipeline'", order_by=["attributes.start_time DESC"], max_results=2
    )
    if len(pipelines) < 2:
        raise SystemExit(f"{uri}: {len(pipelines)} pipeline run(s); the screenshots need two")
    evaluate = []
    for pipeline in reversed(pipelines):
        pid = pipeline.data.tags["roadwork.pipeline_id"]
        found = client.search_runs(
            ids, f"tags.`roadwork.pipeline_id` = '{pid}' and tags.`roadwork.dvc_stage` = 'evaluate@base'"
        )
        if not found:
            raise SystemExit(f"{uri}: pipeline {pipeline.info.run_name} has no evaluate@base run")
        evaluate.append(found[0].info.run_id)
    view = {
        "searchFilter": "tags.`roadwork.run_kind` = 'pipeline'",
        "selectedColumns": ["attributes.`Duration`", *RUNS_COLUMNS],
        # MLflow applies saved widths only along a saved column order
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration", *RUNS_COLUMNS],
        "columnWidths": {
            "attributes.`Run Name`": 160,
            "runDateAndNestInfo": 140,
            "duration": 80,
            **RUNS_COLUMNS,
        },
    }
    client.set_experiment_tag(
        experiment.experiment_id, f"mlflow.sharedViewState.{SHARE_KEY}", json.dumps(view)
    )
    return experiment.experiment_id, [p.info.run_name for p in pipelines], evaluate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def started(cmd: list[str], ready: Callable[[], Any], what: str) -> Iterator[Any]:
    """``cmd`` running (its own process group, stopped on exit) once ``ready()`` returns a value."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited ({proc.returncode}): {' '.join(cmd)}")
            value = ready()
            if value:
                yield value
                return
            time.sleep(0.1)
        raise SystemExit(f"{what} did not start within 60 s")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()


def http_ok(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


class Page:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.sent = ws, 0

    async def send(self, method: str, **params: Any) -> dict:
        self.sent += 1
        await self.ws.send_json({"id": self.sent, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.sent:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def open(self, url: str, width: int, height: int, ready_text: list[str]) -> None:
        """Load ``url`` and wait until the page shows every string of ``ready_text``."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        await self.send("Page.navigate", url=url)
        check = " && ".join(f"document.body.innerText.includes({json.dumps(t)})" for t in ready_text)
        for _ in range(300):
            if await self.js(f"!!document.body && {check}"):
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit(f"{url} never showed {ready_text}")
        await asyncio.sleep(2)  # charts and column sizing settle after the text

    async def click(self, selector: str) -> None:
        await self.js(f"document.querySelectorAll({json.dumps(selector)}).forEach(e => e.click())")
        await asyncio.sleep(0.5)

    async def save(self, path: Path, height: int | None = None) -> None:
        """The viewport (its top ``height`` pixels when given) as a 256-colour PNG."""
        from PIL import Image

        shot = await self.send("Page.captureScreenshot", format="png")
        image = Image.open(io.BytesIO(base64.b64decode(shot["data"])))
        if height:
            image = image.crop((0, 0, image.width, height))
        image.convert("RGB").quantize(256).save(path, optimize=True)
        print(f"{path}: {image.width}x{image.height}, {path.stat().st_size // 1024} KiB")


async def shoot(
    base: str, devtools: str, experiment: str, pipelines: list[str], evaluate: list[str], out: Path
) -> None:
    import aiohttp

    targets = json.load(urllib.request.urlopen(f"{devtools}/json"))
    ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        page = Page(ws)
        await page.open(
            f"{base}/#/experiments/{experiment}/runs?viewStateShareKey={SHARE_KEY}",
            1600,
            560,
            pipelines,
        )
        await page.click('[data-component-id="mlflow.assistant.chat_panel.close"]')
        await page.click('[data-component-id="mlflow.experiment_page.shared_view.dismiss"]')
        rows_end = await page.js(
            "Math.max(...Array.from(document.querySelectorAll('[role=\"row\"]'))"
            ".map(e => e.getBoundingClientRect().bottom))"
        )
        await page.save(out / "mlflow-runs.png", int(rows_end) + 24)

        query = urllib.parse.urlencode(
            {"runs": json.dumps(evaluate), "experiments": json.dumps([experiment])}
        )
        await page.open(f"{base}/#/compare-runs?{query}", 1600, 2000, ["Show diff only", *evaluate])
        await page.click('[data-component-id="mlflow.assistant.chat_panel.close"]')
        await page.click('[aria-label="Parameters - Show diff only"]')
        await page.click('[aria-label="Metrics - Show diff only"]')
        # down to the Artifacts section's heading, whose previews are empty
        artifacts = await page.js(
            "Math.min(...Array.from(document.querySelectorAll('*'))"
            ".filter(e => e.textContent.trim() === 'Artifacts').map(e => e.getBoundingClientRect().top))"
        )
        await page.save(out / "mlflow-compare-evaluate.png", int(artifacts) - 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", type=Path, help="repository whose mlflow.db holds the two pipelines")
    parser.add_argument("--build", action="store_true", help="first make the store in REPO (must not exist)")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if args.build:
        build_store(args.repo)
    uri = f"sqlite:///{args.repo.resolve() / 'mlflow.db'}"
    experiment, pipelines, evaluate = pick_runs(uri)
    base = f"http://127.0.0.1:{free_port()}"
    mlflow_ui = [str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    mlflow_ui += ["--port", base.rsplit(":", 1)[1]]
    with tempfile.TemporaryDirectory(prefix="roadwork-chromium-") as profile:
        port_file = Path(profile) / "DevToolsActivePort"

        def devtools() -> str | None:
            """Chromium's DevTools address, once it has written its port."""
            port = port_file.read_text().split()[:1] if port_file.is_file() else []
            return f"http://127.0.0.1:{port[0]}" if port else None

        chromium = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        chromium += [f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        with (
            started(mlflow_ui, lambda: http_ok(base), "mlflow ui"),
            started(chromium, devtools, "chromium") as devtools_url,
        ):
            asyncio.run(shoot(base, devtools_url, experiment, pipelines, evaluate, args.out))


if __name__ == "__main__":
    main()
