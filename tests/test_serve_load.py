"""The served model under load: ``mlflow models serve`` of a registered ``tiny`` model on loopback.

200 sequential requests and 20 threads x 10 concurrent requests all answer 200 with the same answer for the
same image (and the answer of the in-process Predictor); malformed requests in between get a clear error
(HTTP 400 for a request the server cannot turn into the model's input, HTTP 200 with a non-empty ``error``
in the row for an input the model reads but cannot use) and never disturb the requests around them.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from roadwork.deploy.predictor import Predictor
from test_deploy import BIN, free_port, jpeg, make_predictor, register, save_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MAX_BYTES = 64_000  # the 224x224 test JPEGs are ~31 kB; the oversize one is a valid ~218 kB JPEG
IMAGES = [jpeg(seed, size=(224, 224)) for seed in range(8)]
OVERSIZE = jpeg(99, size=(600, 600))
START_TIMEOUT_S = 180


@dataclass(frozen=True)
class Served:
    port: int
    server: subprocess.Popen
    expected: list[dict]  # the in-process Predictor's answer row for each of IMAGES


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def split_body(values: list[str], column: str = "image") -> bytes:
    return json.dumps({"dataframe_split": {"columns": [column], "data": [[v] for v in values]}}).encode()


def post(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, dict | str]:
    """POST to ``/invocations`` on a new connection: (HTTP status, parsed JSON answer or raw text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": content_type})
        response = connection.getresponse()
        raw = response.read().decode("utf-8", errors="replace")
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw)
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
            "input needs a column 'image' (base64 image bytes) or 'path'",
        ),
        "no input format key": (
            json.dumps({"rows": [[b64(IMAGES[0])]]}).encode(),
            "message",
            "exactly one of the input fields",
        ),
    }
    # Inputs the model reads but cannot use: HTTP 200, the row carries the reason, decision -1, NaN.
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
    for name, (value, needle) in per_row.items():
        (row,) = rows(port, [value])
        assert needle in row["error"], (name, row)
        # MLflow writes the NaN probability as a bare `NaN` token (Python's json reads it back as nan)
        assert row["decision"] == -1 and math.isnan(row["probability"]), (name, row)
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
