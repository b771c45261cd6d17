"""Benchmark: latency of the served model's ``/invocations``, and ``roadwork predict`` batched vs per image.

Model: the chosen backbone (``--backbone``, default ``efficientnet_lite0``, the embedded real default;
``tiny`` for a quick run) with an untrained linear head and a policy fitted on seeded synthetic margins,
saved as a model folder, logged as the pyfunc (:func:`roadwork.deploy.registry.log_pyfunc`) into a
temporary sqlite registry and aliased ``champion``. The numbers are about serving, not accuracy. Images:
seeded random-noise 224x224 JPEGs (the validator always sends 224x224), written to a temporary folder.

1. Latency. ``mlflow models serve -m models:/roadwork-classifier@champion --env-manager local -h 127.0.0.1
   -p <free port> -w <--workers>`` (uvicorn; default 1 worker, MLflow's default request timeout of 60 s).
   After ``--warmup`` requests, ``--requests`` sequential POSTs of ONE JPEG each as
   ``{"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}``, a new loopback connection per
   request; the client-side wall time of each (connect, send, model, answer read) gives p50 / p99 / mean.
   Every answer must be HTTP 200 with an empty ``error``; all answers must be identical.
2. Throughput on ``--images`` JPEGs, two pairs, each "batched" vs "one image per call":
   * CLI: ONE ``roadwork predict FOLDER`` process (the pyfunc predicts in chunks of 64, the backbone in
     batches of 32) vs one ``roadwork predict FILE`` process per image. Every process pays Python + torch
     import and model loading, so the per-image way is timed on the first ``--per-process`` images only
     (0 = all) and its rate is images / total wall time.
   * In-process (model loaded once with ``mlflow.pyfunc.load_model``, not timed): ``model.predict`` of one
     DataFrame of all the images vs a loop of ``model.predict`` on one-row DataFrames; best of ``--repeats``,
     the two ways alternating, after one warm-up call of each. This isolates the pyfunc's batching from
     process start-up.
   Probabilities of all four ways must agree to 1e-5 (batching only changes float summation order).

OpenMP threads: ``--omp-wait-policy`` (default ``PASSIVE``) is exported as ``OMP_WAIT_POLICY`` before torch
is first imported here and in every child process (server, ``roadwork predict``), unless already set; ``""``
keeps the library default (active spinning). On a shared, oversubscribed 2-core machine the spinning
threads of torch's OpenMP pool starve the thread that calls the model, and calls made from the main thread
(``roadwork predict``, the in-process loop; the server predicts in a worker thread) became 10-80x slower
per image (``tiny``) in a side test; PASSIVE removes that artefact. Set ``--omp-wait-policy ""`` to measure
the default.

Prints the latency line, a table of the four ways (wall s, images/s) and both ratios; exits 1 on any failed
request or disagreement. Torch uses its default thread count (all cores) everywhere.

Usage: python bench/serve_latency.py [--backbone efficientnet_lite0|tiny] [--requests 200] [--warmup 10]
       [--images 64] [--per-process 3] [--repeats 2] [--workers 1] [--seed 0]
       [--omp-wait-policy PASSIVE]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

BIN = Path(sys.executable).parent
MODEL_URI = "models:/roadwork-classifier@champion"
SERVE_TIMEOUT_S = 300


def jpeg(seed: int, size: int = 224) -> bytes:
    """A seeded random-noise ``size`` x ``size`` JPEG (quality 75)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def build_model(backbone_id: str, work: Path, seed: int) -> Path:
    """Backbone + untrained linear head + a policy on synthetic margins, saved as a model folder."""
    import torch

    from roadwork.deploy.predictor import Predictor, PredictorSpec
    from roadwork.models.backbone import load_backbone
    from roadwork.models.head import HeadModel, save_head
    from roadwork.policy import fit_policy
    from roadwork.train.head_config import HeadTrainConfig
    from roadwork.train.head_module import HISTORY_COLUMNS

    cfg = HeadTrainConfig(dropout=0.0, topk=1)
    backbone = load_backbone(backbone_id)
    torch.manual_seed(seed)
    head = HeadModel.from_config(cfg, feature_dim=backbone.feature_dim, num_views=1).eval()
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    policy = fit_policy(rng.normal(size=200) + y, y, split_hash="0" * 64)
    save_head(
        work / "head",
        head,
        cfg,
        history=pd.DataFrame(columns=list(HISTORY_COLUMNS)),
        best_epoch=0,
        best_metric=0.0,
        optimizer_steps=0,
    )
    Predictor(backbone, head, policy, PredictorSpec()).save(work / "model", head_dir=work / "head")
    return work / "model"


def register_champion(folder: Path, work: Path) -> str:
    """Log ``folder`` as the pyfunc in the registry at MLFLOW_TRACKING_URI and alias it ``champion``."""
    import mlflow

    from roadwork.deploy.registry import CHAMPION, MODEL_NAME, log_pyfunc

    client = mlflow.MlflowClient()
    client.create_experiment("serve-bench", artifact_location=(work / "artifacts").as_uri())
    mlflow.set_experiment("serve-bench")
    with mlflow.start_run():
        info = log_pyfunc(folder, registered_model_name=MODEL_NAME)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    return version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    """POST ``body`` to ``/invocations`` on a new loopback connection: (HTTP status, answer bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def start_server(port: int, workers: int, log: Path) -> subprocess.Popen:
    """``mlflow models serve`` of the champion on 127.0.0.1:``port``; returns once ``/ping`` answers."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(BIN / "mlflow"), "models", "serve", "-m", MODEL_URI, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            pass
        finally:
            connection.close()
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"mlflow models serve did not come up within {SERVE_TIMEOUT_S} s:\n{tail}")
        time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)


def measure_latency(port: int, image: bytes, requests: int, warmup: int) -> tuple[np.ndarray, dict]:
    """Per-request wall times (s) of ``requests`` sequential POSTs of ``image``, and the one answer row."""
    body = json.dumps(
        {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode("ascii")]]}}
    ).encode()
    answers = set()
    times = []
    for i in range(warmup + requests):
        start = time.perf_counter()
        status, raw = post(port, body)
        elapsed = time.perf_counter() - start
        if status != 200:
            raise SystemExit(f"request {i}: HTTP {status}: {raw[:500]!r}")
        if i >= warmup:
            times.append(elapsed)
            answers.add(raw)
    if len(answers) != 1:
        raise SystemExit(f"FAIL: {len(answers)} different answers to the same image")
    row = json.loads(answers.pop())["predictions"][0]
    if row["error"]:
        raise SystemExit(f"FAIL: the served model rejected the image: {row['error']}")
    return np.array(times), row


def run_cli(paths: list[Path], out: Path) -> tuple[float, pd.DataFrame]:
    """Wall time of one ``roadwork predict PATH… --out out --quiet`` process, and its CSV."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "roadwork"), "predict", *map(str, paths), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"roadwork predict failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed, pd.read_csv(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone", default="efficientnet_lite0", help="efficientnet_lite0 (default) or tiny (quick)"
    )
    parser.add_argument("--requests", type=int, default=200, help="timed sequential requests (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first (default 10)")
    parser.add_argument("--images", type=int, default=64, help="JPEGs for the throughput part (default 64)")
    parser.add_argument(
        "--per-process",
        type=int,
        default=3,
        help="images timed one `roadwork predict FILE` process each (default 3; 0 = all --images)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="in-process timed repeats, best kept (2)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="model and image seed (default 0)")
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help='OMP_WAIT_POLICY for torch here and in the children (default PASSIVE; "" = library default)',
    )
    args = parser.parse_args(argv)
    if (
        args.requests < 1
        or args.warmup < 0
        or args.images < 1
        or not 0 <= args.per_process <= args.images
        or args.repeats < 1
        or args.workers < 1
    ):
        parser.error(
            "need --requests >= 1, --warmup >= 0, --images >= 1, 0 <= --per-process <= --images, "
            "--repeats >= 1, --workers >= 1"
        )
    per_process = args.per_process or args.images
    # quiet progress bars and INFO logs (here and in the child processes), so the table stands out
    for name, value in (
        ("TQDM_DISABLE", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
        ("MLFLOW_LOGGING_LEVEL", "WARNING"),
    ):
        os.environ.setdefault(name, value)
    if args.omp_wait_policy:
        os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)
    if "torch" in sys.modules:
        raise RuntimeError("torch was imported before OMP_WAIT_POLICY was set")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: library default)')}")
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'registry.db'}"
        start = time.perf_counter()
        folder = build_model(args.backbone, work, args.seed)
        version = register_champion(folder, work)
        print(
            f"model: backbone {args.backbone} + linear head + policy, registered as version {version} "
            f"@champion in a temporary sqlite registry ({time.perf_counter() - start:.1f} s)"
        )

        # --- 1. latency of the served model
        image = jpeg(args.seed)
        port = free_port()
        start = time.perf_counter()
        server = start_server(port, args.workers, work / "serve.log")
        try:
            up_s = time.perf_counter() - start
            times, row = measure_latency(port, image, args.requests, args.warmup)
        finally:
            stop(server)
        ms = times * 1e3
        print(
            f"server: mlflow models serve -m {MODEL_URI} --env-manager local -w {args.workers} "
            f"(uvicorn, 127.0.0.1:{port}); /ping answered after {up_s:.1f} s"
        )
        print(
            f"/invocations, {args.requests} sequential requests of one 224x224 JPEG ({len(image)} bytes), "
            f"after {args.warmup} warm-up:"
        )
        print(
            f"  p50 {np.percentile(ms, 50):7.1f} ms   p99 {np.percentile(ms, 99):7.1f} ms   "
            f"mean {ms.mean():7.1f} ms   min {ms.min():7.1f} ms   max {ms.max():7.1f} ms   "
            f"(probability {row['probability']:.6f}, every answer identical)"
        )

        # --- 2. throughput, batched vs one image per call
        images = work / "images"
        images.mkdir()
        paths = []
        for i in range(args.images):
            paths.append(images / f"{i:04d}.jpg")
            paths[-1].write_bytes(jpeg(args.seed + 1 + i))

        batched_s, batched = run_cli([images], work / "batched.csv")
        single_s, singles = 0.0, []
        for i, path in enumerate(paths[:per_process]):
            elapsed, frame = run_cli([path], work / f"single-{i}.csv")
            single_s += elapsed
            singles.append(frame)
        single = pd.concat(singles, ignore_index=True)

        import mlflow

        model = mlflow.pyfunc.load_model(MODEL_URI)
        frame = pd.DataFrame({"image": [p.read_bytes() for p in paths]})  # the served model reads no files
        model.predict(frame.iloc[:1])
        model.predict(frame)
        in_batch_s, in_loop_s = float("inf"), float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            in_batch = model.predict(frame)
            in_batch_s = min(in_batch_s, time.perf_counter() - start)
            start = time.perf_counter()
            in_loop = pd.concat(
                [model.predict(frame.iloc[i : i + 1]) for i in range(len(frame))], ignore_index=True
            )
            in_loop_s = min(in_loop_s, time.perf_counter() - start)

        reference = in_batch["probability"].to_numpy(dtype=float)
        checks = {
            "roadwork predict FOLDER": batched.set_index("path").loc[[str(p) for p in paths], "probability"],
            "roadwork predict FILE": single["probability"],
            "in-process one-row loop": in_loop["probability"],
        }
        worst = 0.0
        for name, probability in checks.items():
            p = probability.to_numpy(dtype=float)
            worst = max(worst, float(np.abs(p - reference[: len(p)]).max()))
            if not np.allclose(p, reference[: len(p)], atol=1e-5, rtol=0):
                raise SystemExit(f"FAIL: {name} disagrees with the in-process batch (max |dp| {worst:.2e})")

        rows = [
            ("roadwork predict FOLDER (1 process, batched)", args.images, batched_s),
            ("roadwork predict FILE (1 process per image)", per_process, single_s),
            ("in-process model.predict(all rows)", args.images, in_batch_s),
            ("in-process model.predict(1 row) loop", args.images, in_loop_s),
        ]
        print(f"\nthroughput, 224x224 JPEGs (in-process: best of {args.repeats}):")
        print(f"  {'way':<46} {'images':>6} {'wall s':>8} {'images/s':>9}")
        for name, n, seconds in rows:
            print(f"  {name:<46} {n:>6} {seconds:>8.2f} {n / seconds:>9.2f}")
        cli_ratio = (args.images / batched_s) / (per_process / single_s)
        in_ratio = in_loop_s / in_batch_s
        print(f"ratio CLI batched / one process per image : {cli_ratio:7.1f}x")
        print(f"ratio in-process batched / one-row loop    : {in_ratio:7.2f}x")
        print(f"all four ways agree: max |dp| {worst:.1e}")
    print(f"(whole run {time.perf_counter() - began:.0f} s, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
