"""The command line: MLproject entry points as MLflow renders them, and each stage's ``--help``."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from roadwork.cli import STAGES, build_parser
from roadwork.config import load_config, split_overrides

REPO = Path(__file__).resolve().parents[1]


def test_every_stage_entry_point_runs_with_its_defaults_and_with_overrides() -> None:
    """MLflow renders each stage entry point's command (quoting the empty default ``overrides`` as ''); the
    CLI must read no override from the default and exactly the given ones from ``-P overrides=...``."""
    from mlflow.projects._project_spec import load_project

    entry_points = load_project(str(REPO))._entry_points
    assert set(STAGES) <= set(entry_points)
    given = "split.seed=3 train.lr=0.01"
    for stage in STAGES:
        entry = entry_points[stage]
        for parameters, expected in (({}, ()), ({"overrides": given}, ("split.seed=3", "train.lr=0.01"))):
            argv = shlex.split(entry.compute_command(parameters, None))
            assert argv[:2] == ["roadwork", stage]
            args = build_parser().parse_args(argv[1:])
            overrides = split_overrides(args.overrides)
            assert overrides == expected, (stage, parameters)
            load_config(REPO / "params.yaml", overrides)


def _help(stage: str, cwd: Path, *args: str) -> tuple[str, list[str]]:
    """``roadwork <stage> [args] --help`` in a new interpreter: its output and the heavy modules it loaded."""
    code = (
        "import sys\nfrom roadwork.cli import main\n"
        f"try:\n    main({[stage, *args, '--help']!r})\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'lightning', 'mlflow') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    *text, loaded = done.stdout.rstrip("\n").split("\n")
    return "\n".join(text), yaml.safe_load(loaded)


def _rows(text: str) -> dict[str, str]:
    """key -> the rest of its row, from the parameter section of a stage's help."""
    section = text.split("\nparameters (", 1)[1].split("\n")[1:]
    return {row.split("=", 1)[0].strip(): row.split("=", 1)[1] for row in section if row.startswith("  ")}


def test_stage_help_lists_the_parameters_it_reads_with_values_and_descriptions(tmp_path: Path) -> None:
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["lr"] = 0.025
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    text, loaded = _help("train", tmp_path)
    assert loaded == []  # --help stays fast
    rows = _rows(text)
    assert rows["train.lr"].split() == ["0.025", "peak", "learning", "rate", "(>", "0)."]
    assert rows["train.precision"].startswith('"32" ')  # a string that would read as a number is quoted
    assert rows["embed.augment.level_probs"].startswith("[0.25, 0.25, 0.25, 0.25] ")
    # dvc.yaml's params for train: the train, trainer, embed and backbone sections and data.sources
    assert {key.split(".")[0] for key in rows} == {"train", "trainer", "embed", "backbone", "data"}
    assert [key for key in rows if key.startswith("data.")] == ["data.sources"]
    nested = [name for name in ("finetune", "hard_negatives") if isinstance(params["train"].get(name), dict)]
    train_keys = len(params["train"]) - len(nested) + sum(len(params["train"][name]) for name in nested)
    assert len(rows) == train_keys + 3 + 17 + 5 + 1

    rows = _rows(_help("evaluate", tmp_path, "evaluate.seed=7")[0])
    assert rows["evaluate.seed"].startswith("7 ")  # overrides given before --help count
    assert "calibrate.ece_bins" in rows and "calibrate.method" not in rows
    ingest = set(_rows(_help("ingest", tmp_path)[0]))
    assert ingest == {"data.dir", "data.sources", *(f"ingest.{key}" for key in params["ingest"])}


def test_stage_help_without_dvc_yaml_or_with_bad_params_says_so(tmp_path: Path) -> None:
    assert "not listed: no dvc.yaml" in _help("split", tmp_path)[0]
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text("split:\n  seed: many\n")
    text = _help("split", tmp_path)[0]
    assert "values from the schema's defaults" in text and "'split.seed'" in text
    assert _rows(text)["split.seed"].startswith("0 ")


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_help_lists_every_key_of_its_dvc_params(stage: str) -> None:
    from roadwork.stage_help import stage_parameters

    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    declared = declared.get("do", declared)["params"]
    rows = _rows("\n" + stage_parameters(stage, REPO / "params.yaml", width=500))
    assert all(any(key == d or key.startswith(d + ".") for d in declared) for key in rows)
    assert all(any(key == d or key.startswith(d + ".") for key in rows) for d in declared)
    assert all(not row.endswith("…") for row in rows.values())
