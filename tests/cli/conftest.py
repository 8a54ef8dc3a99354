"""Every CLI test runs in its own folder with its own weight store."""

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RESDET_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
