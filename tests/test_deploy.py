"""The deployed model: Predictor, pyfunc (logged as code), promotion rule, promote, predict, serving."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers.repo import BIN
from helpers.serving import free_port, jpeg, make_predictor, register, save_model
from roadwork.data.preprocess import to_tensor_batch
from roadwork.deploy.predictor import Predictor, PredictorSpec
from roadwork.deploy.registry import decide_promotion
from roadwork.models.head import predict_logits


def level0_by_hand(image: Image.Image) -> Image.Image:
    """The validator's level-0 geometry written out with PIL alone: centre square (torchvision's rounded
    offsets), bilinear to 224."""
    side = min(image.size)
    left, top = round((image.width - side) / 2), round((image.height - side) / 2)
    return image.crop((left, top, left + side, top + side)).resize((224, 224), Image.Resampling.BILINEAR)


@pytest.mark.parametrize("size", [(96, 80), (224, 224)])
def test_predictor_matches_backbone_head_policy_composed_by_hand(size: tuple[int, int]) -> None:
    """decode -> the validator's level-0 geometry (the identity on its 224x224 images) -> backbone -> head
    -> policy, composed by hand, against the one inference path."""
    predictor = make_predictor()
    sources = [jpeg(i, size) for i in range(5)]
    out = predictor.predict(sources)
    images = [level0_by_hand(Image.open(io.BytesIO(s)).convert("RGB")) for s in sources]
    with torch.inference_mode():
        features = predictor.backbone(to_tensor_batch(images, predictor.backbone.preprocess)).numpy()
    logits = predict_logits(predictor.head, features[:, None, :])
    expected = predictor.policy.apply((logits[:, 1] - logits[:, 0]).astype(np.float64))
    np.testing.assert_allclose(out["probability"], expected["probability"], atol=1e-6)
    assert (out["decision"].to_numpy() == expected["decision"].astype(int)).all()
    assert ((out["probability"] > 0.5) == (out["decision"] == 1)).all()
    assert (out["error"] == "").all()


def test_bad_inputs_get_a_reason_and_do_not_disturb_the_others(tmp_path: Path) -> None:
    predictor = make_predictor(max_bytes=50_000, max_pixels=300 * 300)
    plain = io.BytesIO()
    Image.new("RGB", (320, 320), (40, 90, 200)).save(plain, format="JPEG")  # few bytes, many pixels
    sources = [
        jpeg(0),
        b"not an image",
        b"",
        plain.getvalue(),
        b"\xff" * 60_000,
    ]
    out = predictor.predict(sources)
    assert out["error"].iloc[0] == ""
    assert "not_an_image" in out["error"].iloc[1]
    assert "empty_file" in out["error"].iloc[2]
    assert "too_many_pixels" in out["error"].iloc[3]
    assert "max_bytes" in out["error"].iloc[4]
    assert out.loc[1:, "decision"].eq(-1).all() and out.loc[1:, "probability"].isna().all()
    alone = predictor.predict([jpeg(0)])
    assert alone["probability"].iloc[0] == pytest.approx(out["probability"].iloc[0], abs=1e-7)
    (tmp_path / "x.jpg").write_bytes(jpeg(0))
    with pytest.raises(TypeError, match="opens no file"):
        predictor.predict([tmp_path / "x.jpg"])


def test_model_folder_round_trip(tmp_path: Path) -> None:
    predictor = make_predictor(tta_flip=True)
    folder = save_model(predictor, tmp_path)
    loaded = Predictor.from_dir(folder)
    assert loaded.spec == predictor.spec
    sources = [jpeg(i) for i in range(3)]
    np.testing.assert_allclose(
        loaded.predict(sources)["probability"], predictor.predict(sources)["probability"]
    )
    (folder / "predictor.json").write_text('{"views": "global", "bogus": 1}')
    with pytest.raises(ValueError, match=r"predictor\.json"):
        Predictor.from_dir(folder)


SERVING_ONLY = """
import base64, sys
from types import SimpleNamespace
import pandas as pd
import roadwork.deploy.fallback, roadwork.deploy.hf_export, roadwork.deploy.onnx_export
import roadwork.deploy.submission, roadwork.stages.predict
from roadwork.deploy.pyfunc_model import RoadworkClassifier
model = RoadworkClassifier()
model.load_context(SimpleNamespace(artifacts={"model": sys.argv[1]}))
image = base64.b64encode(open(sys.argv[2], "rb").read()).decode()
answer = model.predict(None, pd.DataFrame({"image": [image]}))
assert not answer["error"].fillna("").astype(bool).any(), answer
loaded = {m.split(".")[0] for m in sys.modules}
print(sorted(loaded & {"lightning", "pytorch_lightning", "lightning_fabric", "dvc"}))
"""


@pytest.mark.slow  # ~25 s: a fresh interpreter importing torch, transformers and the exports
def test_serving_and_exports_import_neither_lightning_nor_dvc(tmp_path: Path) -> None:
    folder = save_model(make_predictor(), tmp_path)
    (tmp_path / "x.jpg").write_bytes(jpeg(0))
    done = subprocess.run(
        [sys.executable, "-c", SERVING_ONLY, str(folder), str(tmp_path / "x.jpg")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def solid_png(side: int) -> bytes:
    """A one-colour PNG: a few hundred bytes that decode to ``side * side`` pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_request_budgets_refuse_a_request_on_its_headers_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from roadwork.deploy.predictor import RequestTooLarge

    big = solid_png(300)  # 90 000 pixels, ~1 kB
    predictor = make_predictor(
        max_bytes=40_000, max_pixels=100_000, request_max_pixels=200_000, request_max_bytes=60_000
    )
    pixels = Image.open(io.BytesIO(big)).size
    assert pixels[0] * pixels[1] * 2 <= 200_000 < pixels[0] * pixels[1] * 3
    assert predictor.predict([big, big])["error"].eq("").all()

    def no_decoding(data: bytes) -> Image.Image:
        raise AssertionError("a refused request must not decode anything")

    monkeypatch.setattr(predictor, "decode", no_decoding)
    with pytest.raises(RequestTooLarge, match=r"270000 pixels.*request_max_pixels=200000"):
        predictor.predict([big, big, big])
    photos = [jpeg(i, size=(224, 224)) for i in range(3)]  # ~31 kB each
    assert sum(map(len, photos[:2])) > 60_000
    with pytest.raises(RequestTooLarge, match=r"request_max_bytes=60000"):
        predictor.predict(photos[:2])
    monkeypatch.undo()
    # inputs refused one by one (over max_pixels, not an image) are not decoded, so they cost nothing
    out = predictor.predict([solid_png(400)] * 5 + [b"text"] * 3 + [big, big])
    assert out["error"].iloc[:5].str.contains("too_many_pixels").all()
    assert out["error"].iloc[5:8].str.contains("not_an_image").all() and out["error"].iloc[8:].eq("").all()
    with pytest.raises(ValueError, match="request_max_pixels=1000 is below max_pixels"):
        PredictorSpec(max_pixels=2000, request_max_pixels=1000)


def test_requests_group_inputs_in_order_within_the_batch_size_and_budgets() -> None:
    predictor = make_predictor(batch_size=3, max_pixels=100_000, request_max_pixels=200_000)
    sources = [solid_png(300), jpeg(1), solid_png(300), solid_png(300), b"junk", solid_png(400)] * 3
    requests = list(predictor.requests(iter(sources)))
    assert [x for request in requests for x in request] == sources
    for request in requests:
        assert len(request) <= 3
        declared = [Image.open(io.BytesIO(x)).size for x in request if x != b"junk"]
        assert sum(w * h for w, h in declared if w * h <= 100_000) <= 200_000
        predictor.predict(request)  # accepted: never RequestTooLarge


def test_a_request_is_decoded_and_predicted_batch_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = make_predictor(batch_size=2)
    events: list[str] = []
    decode, margins = predictor.decode, predictor.margins
    monkeypatch.setattr(predictor, "decode", lambda data: events.append("decode") or decode(data))
    monkeypatch.setattr(predictor, "margins", lambda images: events.append(len(images)) or margins(images))
    out = predictor.predict([jpeg(i) for i in range(5)])
    assert events == ["decode", "decode", 2, "decode", "decode", 2, "decode", 1]
    whole = make_predictor(batch_size=8).predict([jpeg(i) for i in range(5)])
    np.testing.assert_allclose(out["probability"], whole["probability"], atol=1e-6)


def classifier(predictor: Predictor) -> object:
    """The pyfunc's Python model around ``predictor``, as MLflow's load_context would leave it."""
    from roadwork.deploy.pyfunc_model import RoadworkClassifier

    model = RoadworkClassifier()
    model.predictor = predictor
    return model


def error_within(call: Callable[[], object], seconds: float = 20) -> BaseException:
    """What ``call()`` raises, failing if it has not returned within ``seconds``: it runs in a daemon thread,
    so a call blocked on a FIFO fails the test instead of hanging the run."""
    import threading

    caught: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test thread
            caught.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=seconds)
    assert not worker.is_alive(), f"still blocked after {seconds} s"
    assert caught, "returned without an error"
    return caught[0]


def test_pyfunc_refuses_a_path_column_without_touching_the_file(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    model = classifier(make_predictor())
    error = error_within(lambda: model.predict(None, pd.DataFrame({"path": [str(fifo), "/etc/shadow"]})))
    assert isinstance(error, MlflowException) and error.get_http_status_code() == 400
    assert "column 'path' is refused" in error.message and "base64" in error.message


def test_pyfunc_names_the_expected_column_and_answers_strict_json(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import predictions_to_json

    model = classifier(make_predictor(max_pixels=100_000, request_max_pixels=100_000))
    with pytest.raises(MlflowException, match="needs a column 'image'") as caught:
        model.predict(None, pd.DataFrame({"picture": ["x"]}))
    assert caught.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match="request_max_pixels=100000") as caught:
        model.predict(None, pd.DataFrame({"image": [base64.b64encode(solid_png(300)).decode()] * 2}))
    assert caught.value.get_http_status_code() == 400

    frame = pd.DataFrame({"image": [base64.b64encode(jpeg(0)).decode(), "%%%", b"not an image", 7]})
    out = model.predict(None, frame)
    buffer = io.StringIO()
    predictions_to_json(out, buffer)  # what the scoring server writes

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} is not JSON")

    rows = json.loads(buffer.getvalue(), parse_constant=refuse)["predictions"]
    assert rows[0]["error"] == "" and 0 <= rows[0]["probability"] <= 1
    for row in rows[1:]:
        assert row["probability"] is None and row["calibrated_probability"] is None
        assert row["decision"] == -1 and row["error"]
    assert "base64" in rows[1]["error"] and "not_an_image" in rows[2]["error"] and "int" in rows[3]["error"]


def test_scoring_server_answers_json_nested_too_deeply_with_400() -> None:
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from roadwork.deploy.pyfunc_model import answer_deep_json_with_400

    body = '{"dataframe_split": {"columns": ["image"], "data": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    no_model = SimpleNamespace(metadata=None)  # the body is refused before the model is looked at
    answer_deep_json_with_400()
    answer_deep_json_with_400()  # idempotent: one wrapper
    with pytest.raises(MlflowException, match="nested too deeply") as caught:
        scoring_server.invocations(body.encode(), "application/json", no_model, None)
    assert caught.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match="valid JSON") as caught:  # what MLflow itself refuses
        scoring_server.invocations(b'{"dataframe_split": [', "application/json", no_model, None)
    assert caught.value.get_http_status_code() == 400


def hostile_folder(root: Path) -> list[tuple[str, str]]:
    """A folder of what `roadwork predict` must report rather than skip or hang on: (name, reason fragment)
    per entry, in sorted order ("" for a file that is read)."""
    import socket as sockets

    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg(1))
    (root / "b.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "c.jpg").write_bytes(jpeg(2))
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    (root / "loop").symlink_to(root / "loop")
    (root / "pair1").symlink_to(root / "pair2")
    (root / "pair2").symlink_to(root / "pair1")
    (root / "link_to_dir").symlink_to(root / "sub")
    (root / "link_to_file.jpg").symlink_to(root / "a.jpg")
    os.mkfifo(root / "pipe.jpg")
    sock = sockets.socket(sockets.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    (root / "sub").mkdir()
    (root / "sub" / "d.jpg").write_bytes(jpeg(3))
    return [
        (".DS_Store", "hidden"),
        (".thumbs", "hidden"),
        ("a.jpg", ""),
        ("b.txt", ""),
        ("dangling.jpg", "dangling symbolic link"),
        ("link_to_dir", "symbolic link to a folder"),
        ("link_to_file.jpg", ""),
        ("loop", "symbolic link loop"),
        ("pair1", "symbolic link loop"),
        ("pair2", "symbolic link loop"),
        ("pipe.jpg", "FIFO"),
        ("sock", "socket"),
        ("sub/d.jpg", ""),
    ]


def test_predict_collects_one_row_per_entry_in_order_and_opens_nothing_special(tmp_path: Path) -> None:
    from roadwork.stages.predict import collect

    expected = hostile_folder(tmp_path / "photos")
    (tmp_path / "one.jpg").write_bytes(jpeg(4))
    args = [tmp_path / "missing.jpg", tmp_path / "photos", tmp_path / "one.jpg", tmp_path / "photos" / "loop"]
    entries = collect(args)
    names = [str(e.path.relative_to(tmp_path)) for e in entries]
    assert names == ["missing.jpg", *[f"photos/{n}" for n, _ in expected], "one.jpg", "photos/loop"]
    reasons = [e.reason for e in entries]
    assert "no such file" in reasons[0] and reasons[-2] == "" and "loop" in reasons[-1]
    for (name, fragment), reason in zip(expected, reasons[1:-2], strict=True):
        assert (fragment in reason) if fragment else reason == "", (name, reason)


def test_predict_never_blocks_on_a_fifo_it_is_asked_to_read(tmp_path: Path) -> None:
    from roadwork.stages.predict import read_image_file

    os.mkfifo(tmp_path / "pipe.jpg")  # e.g. swapped in after the folder was listed
    predictor = make_predictor()
    error = error_within(lambda: read_image_file(tmp_path / "pipe.jpg", predictor))
    assert isinstance(error, ValueError) and "FIFO" in str(error)


class InProcessModel:
    """What ``mlflow.pyfunc.load_model`` returns for a roadwork model, without a registry: the pyfunc's
    Python model (its schema check aside) and the output schema the registered model declares."""

    def __init__(self, predictor: Predictor) -> None:
        from types import SimpleNamespace

        from mlflow.types import ColSpec, Schema

        from roadwork.deploy.predictor import OUTPUT_COLUMNS

        self.python_model = classifier(predictor)
        schema = Schema([ColSpec("string", name) for name in OUTPUT_COLUMNS])
        self.metadata = SimpleNamespace(get_output_schema=lambda: schema)

    def unwrap_python_model(self) -> object:
        return self.python_model

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.python_model.predict(None, frame)


def test_predict_gives_every_entry_a_row_in_input_order_with_the_model_columns(tmp_path: Path) -> None:
    from roadwork.deploy.predictor import OUTPUT_COLUMNS
    from roadwork.stages.predict import collect, predict_paths

    expected = hostile_folder(tmp_path / "photos")
    (tmp_path / "big.jpg").write_bytes(jpeg(5, size=(600, 600)))
    predictor = make_predictor(batch_size=2, max_bytes=64_000, request_max_bytes=64_000)
    args = [tmp_path / "big.jpg", tmp_path / "photos", tmp_path / "nope.jpg", tmp_path / "photos" / "a.jpg"]
    out = predict_paths(InProcessModel(predictor), collect(args))
    assert list(out.columns) == ["path", *OUTPUT_COLUMNS]
    names = [str(Path(p).relative_to(tmp_path)) for p in out["path"]]
    assert names == ["big.jpg", *[f"photos/{n}" for n, _ in expected], "nope.jpg", "photos/a.jpg"]
    scored = out["error"].eq("")
    assert [n for n, ok in zip(names, scored, strict=True) if ok] == [
        "photos/a.jpg",
        "photos/link_to_file.jpg",
        "photos/sub/d.jpg",
        "photos/a.jpg",
    ]
    failed = out[~scored]
    assert failed["decision"].eq(-1).all() and failed["probability"].isna().all()
    assert failed["calibrated_probability"].isna().all() and failed["error"].str.len().gt(0).all()
    assert (
        "max_bytes" in out["error"].iloc[0]
        and "not_an_image" in out["error"].iloc[names.index("photos/b.txt")]
    )
    assert "no such file" in out["error"].iloc[names.index("nope.jpg")]
    direct = predictor.predict([jpeg(1), jpeg(1), jpeg(3), jpeg(1)])
    np.testing.assert_allclose(out.loc[scored, "probability"], direct["probability"], atol=1e-6)
    np.testing.assert_array_equal(out.loc[scored, "decision"], direct["decision"])


def test_promotion_rule() -> None:
    assert decide_promotion(0.1, None, 0.0).promote
    assert decide_promotion(0.6, 0.5, 0.05).promote
    assert not decide_promotion(0.54, 0.5, 0.05).promote
    assert not decide_promotion(0.5, 0.5, 0.0).promote  # ties keep the incumbent
    assert decide_promotion(0.6, 0.5, 0.0, difference_low=0.01).promote
    refused = decide_promotion(0.6, 0.5, 0.0, difference_low=-0.01, difference_high=0.2)
    assert not refused.promote and refused.reason.startswith("no significant difference")
    assert decide_promotion(0.5, 0.5, 0.0, 0.0, 0.0).reason.startswith("no significant difference")
    worse = decide_promotion(0.4, 0.5, 0.0, -0.2, -0.01)
    assert not worse.promote and worse.reason.startswith("the champion is better")
    with pytest.raises(ValueError, match="min_delta"):
        decide_promotion(0.5, 0.4, -1)


def render_frame(decisions: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Predictions of one model on 4 renders (levels 0-3) of each image, as promote builds them."""
    n = len(labels)
    return pd.DataFrame(
        {
            "sha256": np.tile([f"{i:064x}" for i in range(n)], 4),
            "group": np.tile(np.arange(n), 4),
            "label": np.tile(labels, 4),
            "level": np.repeat(np.arange(4), n),
            "decision": decisions,
        }
    )


@pytest.mark.parametrize("metric", ["expected_reward", "validator_mcc"])
def test_promote_refuses_a_win_inside_the_noise_and_accepts_a_clear_one(metric: str) -> None:
    from roadwork.config import load_config
    from roadwork.stages.promote import compare

    cfg = load_config(Path(__file__).parents[1] / "params.yaml", ["evaluate.bootstrap_resamples=200"])
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 60)
    truth = np.tile(labels, 4)
    champion = np.where(rng.random(len(truth)) < 0.75, truth, 1 - truth)  # 75 % right
    # one more right answer than the champion: better on paper, inside the noise
    slightly = champion.copy()
    slightly[np.flatnonzero(slightly != truth)[0]] = truth[np.flatnonzero(slightly != truth)[0]]
    clearly = np.where(rng.random(len(truth)) < 0.97, truth, 1 - truth)  # 97 % right
    base = render_frame(champion, labels)
    close = compare(render_frame(slightly, labels), base, metric, cfg)
    assert (
        close["challenger"] >= close["champion"] and close["difference_low"] <= 0 <= close["difference_high"]
    )
    decision = decide_promotion(close["challenger"], close["champion"], 0.0, close["difference_low"])
    assert not decision.promote and "no significant difference" in decision.reason
    clear = compare(render_frame(clearly, labels), base, metric, cfg)
    assert clear["difference_low"] > 0
    assert decide_promotion(clear["challenger"], clear["champion"], 0.0, clear["difference_low"]).promote


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # artifacts beside the test database, never in the working directory
    mlflow.MlflowClient().create_experiment(
        "deploy-tests", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    return uri


@pytest.mark.slow
def test_pyfunc_from_code_takes_base64_refuses_paths_and_loads_without_pickles(
    tmp_path: Path, registry: str
) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    predictor = make_predictor()
    version = register(save_model(predictor, tmp_path))
    model = mlflow.pyfunc.load_model(f"models:/roadwork-classifier/{version}")
    images = [jpeg(i) for i in range(3)]
    by_bytes = model.predict(
        pd.DataFrame({"image": [base64.b64encode(x).decode() for x in images] + ["%%%"]})
    )
    probabilities = by_bytes["probability"][:3].astype(float)  # object: None where a row has none
    np.testing.assert_allclose(probabilities, predictor.predict(images)["probability"], atol=1e-7)
    assert "base64" in by_bytes["error"].iloc[3] and by_bytes["probability"].iloc[3] is None
    (tmp_path / "0.jpg").write_bytes(images[0])
    # through MLflow's own schema enforcement: 'path' reaches the model and is refused by name; an
    # undeclared column is dropped before it, and the answer names the column expected
    with pytest.raises(MlflowException, match="column 'path' is refused"):
        model.predict(pd.DataFrame({"path": [str(tmp_path / "0.jpg")]}))
    with pytest.raises(MlflowException, match="needs a column 'image'"):
        model.predict(pd.DataFrame({"picture": [base64.b64encode(images[0]).decode()]}))
    stored = Path(mlflow.artifacts.download_artifacts(f"models:/roadwork-classifier/{version}"))
    assert not list(stored.rglob("*.pkl")) and not list(stored.rglob("*.pickle"))
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (stored / "MLmodel").read_text()


@pytest.mark.slow
def test_served_model_answers_like_roadwork_predict(tmp_path: Path, registry: str) -> None:
    import mlflow

    from roadwork.cli import main as cli
    from roadwork.deploy.registry import CHAMPION

    folder = save_model(make_predictor(), tmp_path)
    version = register(folder)
    mlflow.MlflowClient().set_registered_model_alias("roadwork-classifier", CHAMPION, version)
    image = tmp_path / "photo.jpg"
    image.write_bytes(jpeg(7, size=(224, 224)))
    assert cli(["predict", str(image), "--out", str(tmp_path / "p.csv"), "--quiet"]) == 0
    expected = pd.read_csv(tmp_path / "p.csv")

    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/roadwork-classifier@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow models serve did not come up within 120 s") from None
                time.sleep(1)
        body = {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(image.read_bytes()).decode()]],
            }
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"][0]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert answer["decision"] == expected["decision"].iloc[0]
    assert answer["probability"] == pytest.approx(expected["probability"].iloc[0], abs=1e-6)


@pytest.mark.slow
def test_promote_first_becomes_champion_then_compares_and_records(
    tmp_path: Path, registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from roadwork.cli import main as cli

    project = tmp_path / "project"
    (project / "outputs/ingest/images").mkdir(parents=True)
    (project / "outputs/split").mkdir(parents=True)
    rows = []
    for i in range(12):
        name = f"images/{i}.jpg"
        (project / "outputs/ingest" / name).write_bytes(jpeg(100 + i))
        rows.append(
            {
                "path": f"x/{i}.jpg",
                "sha256": f"{i:064x}",
                "label": i % 2,
                "working_path": name,
                "group": i,
                "split": "val_test",
            }
        )
    pd.DataFrame(rows).to_csv(project / "outputs/split/splits.csv", index=False)
    (project / "params.yaml").write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    monkeypatch.chdir(project)

    first = register(save_model(make_predictor(seed=0), tmp_path / "m1"))
    assert cli(["promote"]) == 0
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("roadwork-classifier", "champion").version) == first
    second = register(save_model(make_predictor(seed=1), tmp_path / "m2"))
    assert cli(["promote", "--dry-run", "--min-delta", "0"]) == 0
    assert str(client.get_model_version_by_alias("roadwork-classifier", "champion").version) == first
    tags = client.get_model_version("roadwork-classifier", second).tags
    assert tags["promote.decision"].endswith("(dry run)") and tags["promote.champion_version"] == first
    assert 0 <= float(tags["promote.champion_score"]) <= 1 and tags["promote.metric"] == "expected_reward"
    low, high = json.loads(tags["promote.difference_interval"])
    assert -1 <= low <= high <= 1  # a percentile interval: on 12 images it need not contain the point
    assert cli(["promote", "--min-delta", "2"]) == 0  # impossible margin: champion stays
    assert str(client.get_model_version_by_alias("roadwork-classifier", "champion").version) == first
    assert client.get_model_version("roadwork-classifier", second).tags["promote.decision"] == "keep"


def test_export_onnx_command_checks_parity_and_refuses_flip_averaged_models(tmp_path: Path) -> None:
    from roadwork.cli import main as cli

    folder = save_model(make_predictor(), tmp_path / "plain")
    assert cli(["export-onnx", "--model", str(folder), "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 10_000
    flipped = save_model(make_predictor(tta_flip=True), tmp_path / "flip")
    assert cli(["export-onnx", "--model", str(flipped), "--out", str(tmp_path / "f.onnx")]) == 2
    assert not (tmp_path / "f.onnx").exists()


@pytest.mark.slow  # ~60 s: registrations against a live MLflow store, interrupted at each step
def test_registration_is_all_or_nothing_from_the_users_view(tmp_path: Path) -> None:
    """A version is created with all its tags and marked pending; killed before its alias (simulated by
    stopping there), a rerun completes the version holding the same outputs and abandons any other, and
    promote takes only finished versions."""
    import mlflow

    from roadwork.deploy.registry import (
        CHALLENGER,
        OUTPUTS_HASH_TAG,
        REGISTRATION_TAG,
        alias_version,
        log_pyfunc,
        outputs_hash,
        repair_registrations,
        usable,
    )

    name = "roadwork-registration-test"
    folder = save_model(make_predictor(), tmp_path)
    held = outputs_hash(folder)
    client = mlflow.MlflowClient()
    mlflow.set_experiment("deploy-tests")
    versions = []
    for outputs in ("0" * 64, held):  # a stale half-made version, then the one holding today's outputs
        with mlflow.start_run():
            tags = {"roadwork.variant": "base", OUTPUTS_HASH_TAG: outputs}
            info = log_pyfunc(folder, registered_model_name=name, tags=tags)
        versions.append(client.get_model_version(name, str(info.registered_model_version)))
    assert all(v.tags[REGISTRATION_TAG] == "pending" for v in versions)
    assert all(v.tags["roadwork.variant"] == "base" for v in versions)
    assert alias_version(client, name, CHALLENGER) is None and not any(usable(v) for v in versions)

    assert repair_registrations(client, name, held, CHALLENGER) == str(versions[1].version)
    stale, completed = (client.get_model_version(name, v.version) for v in versions)
    assert (stale.tags[REGISTRATION_TAG], completed.tags[REGISTRATION_TAG]) == ("abandoned", "complete")
    assert str(alias_version(client, name, CHALLENGER).version) == str(completed.version)
    assert usable(completed) and not usable(stale)
    assert repair_registrations(client, name, held, CHALLENGER) is None  # nothing left pending
    assert outputs_hash(folder) == held and outputs_hash(tmp_path / "head") != held
