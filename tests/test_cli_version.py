"""``davbridge --version``: prints the package version and exits 0 without touching any state."""

from __future__ import annotations

from importlib import metadata

import pytest

from sync_core import cli


def test_version_prints_the_package_version_and_exits(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DAVBRIDGE_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"davbridge {metadata.version('davbridge')}"
    assert not (tmp_path / "home").exists()  # parsed before any state is opened
