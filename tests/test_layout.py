"""dvc.yaml declares exactly the paths and variants of roadwork.layout, the one home of both."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from roadwork.layout import ADAPTED_BACKBONE, OUTPUTS, PER_VARIANT, STAGE_OUTPUTS, VARIANTS, output_dir
from roadwork.stages.common import dvc_stages, entry_paths

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"
STAGES = dvc_stages(DVC_YAML)
FIELDS = ("outs", "metrics", "plots")


def declared(stage: str, variant: str | None) -> dict[str, set[str]]:
    """What roadwork.layout says ``stage`` writes, as repository paths per dvc.yaml field."""
    folder = output_dir(stage, variant)
    return {f: {str(folder / name) for name in STAGE_OUTPUTS[stage].get(f, ())} for f in FIELDS}


@pytest.mark.parametrize("dvc_stage", sorted(STAGES))
def test_each_stage_writes_what_the_layout_declares(dvc_stage: str) -> None:
    stage, _, variant = dvc_stage.partition("@")
    body = STAGES[dvc_stage]
    found = {f: set(entry_paths(body.get(f))) for f in FIELDS}
    assert found == declared(stage, variant or None), f"dvc.yaml {dvc_stage} vs roadwork.layout.STAGE_OUTPUTS"


def test_per_variant_stages_run_once_per_layout_variant_on_its_backbone() -> None:
    raw = yaml.safe_load(DVC_YAML.read_text())["stages"]
    assert set(STAGE_OUTPUTS) == set(raw), "a stage missing from roadwork.layout.STAGE_OUTPUTS or dvc.yaml"
    for stage in PER_VARIANT:
        assert list(raw[stage]["foreach"]) == list(VARIANTS), stage
        assert raw[stage]["foreach"]["adapted"]["backbone"] == str(ADAPTED_BACKBONE)
    assert VARIANTS["adapted"] == ADAPTED_BACKBONE and VARIANTS["base"] is None
    assert {s for s in raw if "foreach" in raw[s]} == set(PER_VARIANT)


def test_every_outputs_dep_is_some_stages_output() -> None:
    produced = {p for body in STAGES.values() for f in FIELDS for p in entry_paths(body.get(f))}
    for name, body in STAGES.items():
        for dep in entry_paths(body.get("deps")):
            if dep.startswith(f"{OUTPUTS}/"):
                assert any(dep == p or dep.startswith(p + "/") for p in produced), f"{name}: {dep}"
