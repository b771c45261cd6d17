"""params.yaml is laid out the way DVC writes it back, so ``dvc exp run -S key=value`` changes one line.

``dvc exp run -S`` applies its overrides with ``dvc.utils.hydra.apply_overrides``: DVC's round-trip YAML
loader and dumper (ruamel) around Hydra's override grammar. That function is the oracle here.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def set_params(tmp_path: Path, overrides: list[str]) -> tuple[list[str], list[str]]:
    """params.yaml's lines before and after DVC applies ``overrides`` to a copy."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    before = path.read_text().splitlines()
    apply_overrides(path, overrides)
    return before, path.read_text().splitlines()


def test_dvc_writes_params_yaml_back_unchanged(tmp_path: Path) -> None:
    before, after = set_params(tmp_path, [])
    assert after == before, "\n".join(difflib.unified_diff(before, after, lineterm=""))


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("split.seed=3", "split.seed", 3),
        ("train.lr=0.01", "train.lr", 0.01),
        ("split.fractions.train=0.7", "split.fractions.train", 0.7),
        ("calibrate.max_fnr=0.1", "calibrate.max_fnr", 0.1),  # from null
        ("adapt.precision=bf16-mixed", "adapt.precision", "bf16-mixed"),
        ("deploy.description='A roadwork model'", "deploy.description", "A roadwork model"),
        ("deploy.submitted_by=someone", "deploy.submitted_by", "someone"),
    ],
)
def test_setting_one_value_changes_only_its_line(
    tmp_path: Path, override: str, key: str, value: object
) -> None:
    before, after = set_params(tmp_path, [override])
    changed = [line for line, was in zip(after, before, strict=False) if line != was]
    assert len(after) == len(before) and len(changed) == 1, "\n".join(
        difflib.unified_diff(before, after, lineterm="")
    )
    section, _, name = key.rpartition(".")
    loaded = yaml.safe_load("\n".join(after))
    for part in section.split("."):
        loaded = loaded[part]
    assert loaded[name] == value
