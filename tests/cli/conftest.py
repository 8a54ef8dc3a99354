"""Every CLI test runs in its own folder with its own weight store."""

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RESDET_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Long paths in messages stay whole: without a terminal rich folds lines at 80 columns."""
    from resdet.cli_common import console, err_console

    for each in (console, err_console):
        monkeypatch.setattr(each, "width", 1000)
