"""Progress bars only on a terminal, ``ROADWORK_PROGRESS`` to force them on or off."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from roadwork.cli import main as cli
from roadwork.progress import progress_enabled, quiet_library_progress

LIBRARY_SWITCHES = ("HF_HUB_DISABLE_PROGRESS_BARS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def synth_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stderr: io.StringIO, name: str) -> str:
    """What ``roadwork synth`` (20 images) writes to ``stderr``."""
    for variable in LIBRARY_SWITCHES:  # the CLI may set them; they are restored after the test
        monkeypatch.delenv(variable, raising=False)
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", stderr)
        assert cli(["synth", str(tmp_path / name), "--n", "20", "--params", str(tmp_path / "none.yaml")]) == 0
    return stderr.getvalue()


@pytest.mark.parametrize(
    ("setting", "terminal", "shown"),
    [(None, False, False), (None, True, True), ("1", False, True), ("0", True, False)],
)
def test_bars_only_on_a_terminal_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, terminal: bool, shown: bool
) -> None:
    if setting is None:
        monkeypatch.delenv("ROADWORK_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("ROADWORK_PROGRESS", setting)
    err = synth_stderr(tmp_path, monkeypatch, Terminal() if terminal else io.StringIO(), "data")
    # a bar redraws itself with carriage returns, the last time at 20 of 20
    assert ("\r" in err) is shown
    assert ("20/20" in err) is shown


def test_an_unknown_setting_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("ROADWORK_PROGRESS", "yes")
    with pytest.raises(ValueError, match="ROADWORK_PROGRESS='yes'"):
        progress_enabled()
    assert cli(["synth", str(tmp_path / "data"), "--n", "20"]) == 2
    assert "ROADWORK_PROGRESS='yes': expected 1" in capsys.readouterr().err


def test_library_bars_are_switched_off_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in LIBRARY_SWITCHES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ROADWORK_PROGRESS", "1")
    quiet_library_progress()
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    monkeypatch.setenv("ROADWORK_PROGRESS", "0")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # the user's own choice stays
    quiet_library_progress()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
