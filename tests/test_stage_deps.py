"""dvc.yaml lists every source file each stage's command reaches, so `dvc repro` never keeps stale results."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.imports import DVC_YAML, closure, missing_deps, stage_files
from roadwork.stages.common import dvc_stages

STAGES = dvc_stages(DVC_YAML)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_yaml_lists_every_file_the_stage_imports(stage: str) -> None:
    missing = missing_deps(stage, STAGES[stage])
    assert not missing, (
        f"dvc.yaml stage {stage!r} does not depend on {missing}, which its command imports; run "
        "`.venv/bin/python -m tests.helpers.imports --write` to update the deps."
    )


def test_a_dep_taken_out_is_reported_and_lazy_imports_count() -> None:
    body = dict(STAGES["evaluate@base"])
    body["deps"] = [d for d in body["deps"] if not str(d).startswith("src/roadwork/policy")]
    assert "src/roadwork/policy/policy.py" in missing_deps("evaluate@base", body)
    # stages/modelling.py imports roadwork.models.head only inside load_model
    assert "roadwork.models.head" in closure({"roadwork.stages.modelling"})
    assert Path("src/roadwork/stages/split.py") in stage_files("split")
    assert not any(str(p).startswith("src/roadwork/models") for p in stage_files("split"))


def test_bytecode_beside_the_sources_does_not_change_a_stage() -> None:
    """Directory deps (``src/roadwork/config``) are hashed whole: the ``__pycache__`` Python writes there (or
    `make venv` compiles) must be invisible to DVC, else a clone that ran anything looks changed."""
    from dvc.repo import Repo

    repo = Repo(str(DVC_YAML.parent))
    folders = sorted({d for body in STAGES.values() for d in body["deps"] if (DVC_YAML.parent / d).is_dir()})
    assert "src/roadwork/config" in folders
    for folder in folders:
        root = f"{repo.root_dir}/{folder}"
        assert repo.dvcignore.is_ignored(repo.fs, f"{root}/__pycache__/rules.cpython-311.pyc"), folder
        assert repo.dvcignore.is_ignored(repo.fs, f"{root}/stray.pyc"), folder
        assert not repo.dvcignore.is_ignored(repo.fs, f"{root}/rules.py"), folder
