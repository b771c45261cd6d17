"""Guards: val_test leakage, safe loading, determinism of two clean runs."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
import yaml

from roadwork.data.split import SPLITS, STAGE_SPLITS, SplitAccessError, read_split

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "roadwork"


def read_split_calls() -> list[tuple[str, str, list[str]]]:
    """(module, stage argument, requested splits) of every ``read_split`` call in the stages layer."""
    found = []
    for path in sorted((SRC / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "read_split":
                stage = node.args[1]
                assert isinstance(stage, ast.Constant), f"{path.name}: read_split stage must be a literal"
                splits = ast.literal_eval(node.args[2]) if not isinstance(node.args[2], ast.Name) else SPLITS
                found.append((path.stem, stage.value, list(splits)))
    return found


def test_each_stage_reads_only_its_own_splits_and_only_evaluate_and_promote_read_val_test() -> None:
    calls = read_split_calls()
    assert {module for module, _, _ in calls} >= {
        "embed",
        "train",
        "calibrate",
        "evaluate",
        "bundle",
        "promote",
    }
    for module, stage, splits in calls:
        assert stage == module, f"stages/{module}.py reads splits as stage {stage!r}"
        assert set(splits) <= STAGE_SPLITS[stage]
        if "val_test" in splits:
            assert stage in {"evaluate", "promote", "embed"}
    assert {stage for stage, allowed in STAGE_SPLITS.items() if "val_test" in allowed} == {
        "evaluate",
        "promote",
        "embed",  # label-free features only: embed writes no labels (see stages/embed.py)
    }


def test_nothing_downstream_consumes_what_evaluate_learned_from_val_test() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
        assert not [d for d in deps if d.startswith("outputs/evaluate")], (
            f"{name} depends on val_test results"
        )
    bundle_deps = stages["bundle"]["deps"]
    assert all("val_test" not in d for d in bundle_deps)


def test_the_contract_raises_naming_stage_and_split(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("path,sha256,label,group,split\na,0,1,0,val_test\n")
    with pytest.raises(SplitAccessError, match="stage 'train' may not read split 'val_test'"):
        read_split(tmp_path / "s.csv", "train", ["val_test"])
    with pytest.raises(SplitAccessError, match="stage 'bundle' may not read split 'val_test'"):
        read_split(tmp_path / "s.csv", "bundle", ["val_calib", "val_test"])


def python_sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_unsafe_deserialisation_in_the_package() -> None:
    for path in python_sources():
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in match.group(1), f"{path}: torch.load without weights_only=True"
        assert not re.search(r"^\s*import pickle|^\s*from pickle|cloudpickle", text, re.M), f"{path}: pickle"
        for match in re.finditer(r"np\.load\(([^)]*)\)", text):
            assert "allow_pickle=False" in match.group(1), f"{path}: np.load without allow_pickle=False"
        assert "enable_checkpointing=True" not in text, f"{path}: Lightning checkpoints are pickles"


def test_checkpoints_and_models_are_safetensors() -> None:
    writers = {p.name for p in python_sources() if "torch.save(" in p.read_text()}
    # torch.save is only allowed for optimizer state read back with weights_only=True
    for name in writers:
        text = next(p for p in python_sources() if p.name == name).read_text()
        assert "weights_only=True" in text, f"{name}: torch.save without a weights_only load"


@pytest.mark.slow
def test_two_clean_runs_give_identical_splits_and_metrics(tmp_path: Path) -> None:
    import json

    from omegaconf import OmegaConf

    from roadwork.cli import main as cli
    from roadwork.data.synth import generate_dataset

    params = OmegaConf.load(REPO / "params.yaml")
    params.backbone.id = params.dedupe.backbone = "tiny"
    params.embed.train_copies = 1
    params.train.max_epochs = 3
    params.evaluate.bootstrap_resamples = 100
    params.evaluate.renders_per_level = 1
    params.evaluate.reward_streams = 50
    generate_dataset(tmp_path / "data", n=80, seed=9, show_progress=False)
    before = Path.cwd()
    results = []
    try:
        for run in ("a", "b"):
            root = tmp_path / run
            root.mkdir()
            (root / "data").symlink_to(tmp_path / "data")
            OmegaConf.save(params, root / "params.yaml")
            os.chdir(root)
            for stage in ("ingest", "dedupe", "split", "embed", "train", "calibrate", "evaluate"):
                assert cli([stage]) == 0, stage
            results.append(
                {
                    "splits": (root / "outputs/split/splits.csv").read_bytes(),
                    "metrics": {
                        str(p.relative_to(root)): json.loads(p.read_text())
                        for p in sorted((root / "outputs").rglob("*.json"))
                        if p.name in ("metrics.json", "report.json")
                    },
                    "policy": (root / "outputs/calibrate/base/policy.json").read_bytes(),
                    "head": (root / "outputs/train/base/model/head.safetensors").read_bytes(),
                }
            )
    finally:
        os.chdir(before)
    a, b = results
    assert a["splits"] == b["splits"]
    # every stage's metrics.json; ingest's, calibrate's and evaluate's report.json
    assert len(a["metrics"]) == 7 + 3 and a["metrics"] == b["metrics"]
    assert a["head"] == b["head"] and a["policy"] == b["policy"]


def test_source_time_is_the_last_input_commit_not_the_clock(tmp_path, monkeypatch) -> None:
    import os
    import subprocess
    from datetime import datetime, timezone

    from roadwork.tracking import source_time

    def git(*args: str, when: str) -> None:
        env = {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            env={**os.environ, **env},
        )

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    git("init", "-q", when="2020-01-01T00:00:00Z")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    git("add", "params.yaml", when="2020-01-01T00:00:00Z")
    git("commit", "-qm", "inputs", when="2021-02-03T04:05:06Z")
    (tmp_path / "dvc.lock").write_text("x\n")  # committed after a run: must not move the time
    git("add", "dvc.lock", when="2022-01-01T00:00:00Z")
    git("commit", "-qm", "lock", when="2022-01-01T00:00:00Z")
    assert source_time(tmp_path) == datetime(2021, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert source_time(tmp_path) == datetime(1970, 1, 2, tzinfo=timezone.utc)
