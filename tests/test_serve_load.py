"""The served model under load: ``mlflow models serve`` of a registered ``tiny`` model on loopback.

200 sequential requests and 20 threads x 10 concurrent requests all answer 200 with the same answer for the
same image (and the answer of the in-process Predictor); malformed requests in between get a clear error
(HTTP 400 for a request the server cannot turn into the model's input, HTTP 200 with a non-empty ``error``
in the row for an input the model reads but cannot use) and never disturb the requests around them. Every
answer is strict JSON (no ``NaN`` token). A hostile mix (server file paths and a FIFO, a 49-megapixel PNG
alone and 16 times in one request, JSON nested past the parser's depth) gets no 5xx, and the server gives
its memory back.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
from PIL import Image

from helpers.repo import BIN
from helpers.serving import free_port, jpeg, make_predictor, register, save_model
from roadwork.deploy.predictor import Predictor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MAX_BYTES = 400_000  # the 224x224 test JPEGs are ~31 kB; the oversize one is a valid ~1.3 MB JPEG
IMAGES = [jpeg(seed, size=(224, 224)) for seed in range(8)]
OVERSIZE = jpeg(99, size=(1200, 1200))
START_TIMEOUT_S = 180
DEEP_JSON = (
    '{"dataframe_split": {"columns": ["image"], "data": ' + "[" * 50_000 + "]" * 50_000 + "}}"
).encode()


def solid_png(side: int) -> bytes:
    """A one-colour PNG: ~160 kB for side 7000, which decodes to 49 megapixels (147 MB as RGB)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Served:
    port: int
    server: subprocess.Popen
    expected: list[dict]  # the in-process Predictor's answer row for each of IMAGES


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def split_body(values: list[str], column: str = "image") -> bytes:
    return json.dumps({"dataframe_split": {"columns": [column], "data": [[v] for v in values]}}).encode()


def no_constant(token: str) -> None:
    raise AssertionError(
        f"the server wrote {token}, which is not JSON (strict parsers such as JSON.parse fail)"
    )


def post(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, dict | str]:
    """POST to ``/invocations`` on a new connection: (HTTP status, parsed JSON answer or raw text).
    A ``NaN`` or ``Infinity`` token in the answer fails the test."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": content_type})
        response = connection.getresponse()
        raw = response.read().decode("utf-8", errors="replace")
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw, parse_constant=no_constant)
    except json.JSONDecodeError:
        return response.status, raw


def rows(port: int, values: list[str]) -> list[dict]:
    status, answer = post(port, split_body(values))
    assert status == 200, answer
    return answer["predictions"]


def assert_same(row: dict, expected: dict) -> None:
    """Same answer up to float summation order (threads may split a matmul differently)."""
    assert row["error"] == expected["error"] == ""
    assert row["decision"] == expected["decision"] and row["abstain"] == expected["abstain"]
    assert row["probability"] == pytest.approx(expected["probability"], abs=1e-6)
    assert row["calibrated_probability"] == pytest.approx(expected["calibrated_probability"], abs=1e-6)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import mlflow

    from roadwork.deploy.registry import CHAMPION, MODEL_NAME

    tmp = tmp_path_factory.mktemp("serve-load")
    uri = f"sqlite:///{tmp / 'registry.db'}"
    folder = save_model(make_predictor(max_bytes=MAX_BYTES), tmp)
    expected = Predictor.from_dir(folder).predict(IMAGES).to_dict("records")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            client = mlflow.MlflowClient()
            client.create_experiment("deploy-tests", artifact_location=(tmp / "artifacts").as_uri())
            client.set_registered_model_alias(MODEL_NAME, CHAMPION, register(folder, MODEL_NAME))
        finally:
            mlflow.set_tracking_uri(None)  # drops the pinned URI; the context then restores the env

    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@{CHAMPION}"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                connection.request("GET", "/ping")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                connection.close()
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow models serve did not come up within {START_TIMEOUT_S} s:\n{tail}")
            time.sleep(0.5)
        yield Served(port, server, expected)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def test_200_sequential_requests_all_answer_and_identically_per_image(served: Served) -> None:
    answers: dict[int, list[dict]] = {}
    for i in range(200):
        (row,) = rows(served.port, [b64(IMAGES[i % len(IMAGES)])])
        answers.setdefault(i % len(IMAGES), []).append(row)
    for k, seen in answers.items():
        assert all(row == seen[0] for row in seen), f"image {k}: answers differ between requests"
        assert_same(seen[0], served.expected[k])
    assert served.server.poll() is None


def test_20_threads_x_10_concurrent_requests_answer_like_sequential(served: Served) -> None:
    sequential = [rows(served.port, [b64(image)])[0] for image in IMAGES]

    def client(thread: int) -> list[tuple[int, int, dict | str]]:
        out = []
        for j in range(10):
            k = (thread + j) % len(IMAGES)
            out.append((k, *post(served.port, split_body([b64(IMAGES[k])]))))
        return out

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = [r for batch in pool.map(client, range(20)) for r in batch]
    assert len(results) == 200
    for k, status, answer in results:
        assert status == 200, answer
        (row,) = answer["predictions"]
        assert_same(row, sequential[k])
    assert served.server.poll() is None


def test_malformed_requests_get_a_clear_error_and_do_not_disturb_the_others(served: Served) -> None:
    port, expected = served.port, served.expected
    good = split_body([b64(IMAGES[0])])
    # Requests the server cannot turn into the model's input: HTTP 400, MLflow's JSON error with
    # error_code BAD_REQUEST and the reason in its message (for a wrong column, RoadworkClassifier's own
    # MlflowException).
    rejected = {
        "invalid JSON": (
            b'{"dataframe_split": {"columns": ["image"], "data": [["',
            "message",
            "valid JSON formatted string",
        ),
        "wrong column name": (
            split_body([b64(IMAGES[0])], column="picture"),
            "message",
            "input needs a column 'image' holding each image's bytes, base64-encoded",
        ),
        "a path on the server": (split_body(["/etc/shadow"], column="path"), "message", "'path' is refused"),
        "JSON nested past the parser's depth": (DEEP_JSON, "message", "nested too deeply"),
        "no input format key": (
            json.dumps({"rows": [[b64(IMAGES[0])]]}).encode(),
            "message",
            "exactly one of the input fields",
        ),
    }
    # Inputs the model reads but cannot use: HTTP 200, the row carries the reason, decision -1, null.
    per_row = {
        "non-image base64": (b64(b"this is plain text, not a JPEG"), "not_an_image"),
        "not base64 at all": ("%%% not base64 %%%", "base64"),
        "oversize image": (b64(OVERSIZE), "max_bytes"),
    }

    def check_good() -> None:
        status, answer = post(port, good)
        assert status == 200, answer
        assert_same(answer["predictions"][0], expected[0])

    check_good()
    for name, (body, field, needle) in rejected.items():
        status, answer = post(port, body)
        assert status == 400, (name, status, answer)
        assert answer["error_code"] == "BAD_REQUEST" and needle in answer[field], (name, answer)
        check_good()
    status, answer = post(port, good, content_type="text/plain")
    assert status == 415 and "content types" in answer, answer
    check_good()
    # raw bytes: a parquet body whose 'image' column holds the encoded images themselves
    raw = io.BytesIO()
    pd.DataFrame({"image": [IMAGES[0], IMAGES[1]]}).to_parquet(raw)
    status, answer = post(port, raw.getvalue(), content_type="application/vnd.apache.parquet")
    assert status == 200, answer
    for row, k in zip(answer["predictions"], (0, 1), strict=True):
        assert_same(row, expected[k])
    for name, (value, needle) in per_row.items():
        (row,) = rows(port, [value])
        assert needle in row["error"], (name, row)
        assert row["decision"] == -1 and row["probability"] is None, (name, row)
        assert row["calibrated_probability"] is None, (name, row)
        check_good()
    # One request mixing good and bad rows: the good rows answer as they do alone.
    mixed = rows(port, [b64(IMAGES[1]), per_row["non-image base64"][0], b64(IMAGES[2]), b64(OVERSIZE)])
    assert_same(mixed[0], expected[1])
    assert_same(mixed[2], expected[2])
    assert "not_an_image" in mixed[1]["error"] and "max_bytes" in mixed[3]["error"]

    # Concurrently: every fifth request is malformed, the others still answer correctly.
    bad_bodies = [body for body, _, _ in rejected.values()] + [split_body([v]) for v, _ in per_row.values()]

    def client(thread: int) -> list[tuple[int | None, int, dict | str]]:
        out = []
        for j in range(10):
            if j % 5 == 4:
                out.append((None, *post(port, bad_bodies[(thread + j) % len(bad_bodies)])))
            else:
                k = (thread + j) % len(IMAGES)
                out.append((k, *post(port, split_body([b64(IMAGES[k])]))))
        return out

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = [r for batch in pool.map(client, range(20)) for r in batch]
    for k, status, answer in results:
        if k is None:
            assert status == 400 or (status == 200 and answer["predictions"][0]["error"]), answer
        else:
            assert status == 200, answer
            assert_same(answer["predictions"][0], expected[k])
    assert served.server.poll() is None


def server_rss(server: subprocess.Popen) -> int:
    """Resident bytes of ``mlflow models serve`` and the uvicorn process it starts."""
    process = psutil.Process(server.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


HOSTILE_REQUESTS, HOSTILE_PARALLEL, HOSTILE_BUDGET_S = 200, 50, 240


def test_hostile_mix_gets_no_5xx_and_the_server_gives_its_memory_back(served: Served, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a served model that opened it would block a worker thread for good
    huge = b64(solid_png(7000))
    nested = json.dumps(
        {"dataframe_split": {"columns": ["image"], "data": [[json.loads("[" * 900 + "]" * 900)]]}}
    )
    # (body, expected status, what the answer must say); 8 of the 200 decode 49 megapixels
    kinds = {
        "server paths": (
            split_body(["/etc/shadow", str(fifo), "/root"], column="path"),
            400,
            "'path' is refused",
        ),
        "49 MP x 16": (split_body([huge] * 16), 400, "request_max_pixels"),
        "deep JSON": (DEEP_JSON, 400, "nested too deeply"),
        # parseable, so not refused whole: that cell is no image, and its row says so
        "nested cell": (nested.encode(), 200, "must hold base64 text or bytes, got list"),
        "49 MP": (split_body([huge]), 200, ""),
    }
    plan = ["49 MP"] * 8 + ["server paths", "49 MP x 16", "deep JSON", "nested cell"] * 36 + ["good"] * 48
    plan = [plan[(i * 37) % len(plan)] for i in range(len(plan))]  # 37 is prime to 200: a permutation
    assert len(plan) == HOSTILE_REQUESTS and sorted(set(plan)) == sorted([*kinds, "good"])

    def send(i: int) -> tuple[str, int, dict | str, float]:
        kind = plan[i]
        body = split_body([b64(IMAGES[i % len(IMAGES)])]) if kind == "good" else kinds[kind][0]
        start = time.monotonic()
        return (kind, *post(served.port, body), time.monotonic() - start)

    before = server_rss(served.server)
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak.append(server_rss(served.server))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=HOSTILE_PARALLEL) as pool:
        results = list(pool.map(send, range(HOSTILE_REQUESTS)))
    elapsed = time.monotonic() - start
    done.set()
    sampler.join()
    assert elapsed < HOSTILE_BUDGET_S
    for i, (kind, status, answer, _) in enumerate(results):
        if kind == "good":
            assert status == 200, (kind, status, answer)
            assert_same(answer["predictions"][0], served.expected[i % len(IMAGES)])
            continue
        expected_status, needle = kinds[kind][1:]
        assert status == expected_status, (kind, status, str(answer)[:500])
        if status == 400:
            assert (
                answer["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE")
                and needle in answer["message"]
            )
        else:
            (row,) = answer["predictions"]
            if needle:
                assert needle in row["error"] and row["decision"] == -1 and row["probability"] is None, row
            else:
                assert row["error"] == "" and 0 <= row["probability"] <= 1, row
    after = server_rss(served.server)
    slowest = max(seconds for *_, seconds in results)
    print(
        f"hostile mix: {elapsed:.1f} s, slowest request {slowest:.1f} s, server RSS {before / 2**30:.2f} GiB "
        f"before, {max(peak) / 2**30:.2f} peak, {after / 2**30:.2f} after"
    )
    assert after - before < 1.5 * 2**30
    status, answer = post(served.port, split_body([b64(IMAGES[0])]))
    assert status == 200 and served.server.poll() is None
    assert_same(answer["predictions"][0], served.expected[0])
