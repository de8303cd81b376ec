"""Status lines for long steps (issue 16): with verbose=True they reach the user
even when logging was never configured, as torch.hub's "Using cache found in ..."
does; verbose=False keeps them quiet; a configured logger gets them as records."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from github_server import FakeGitHub

from safehub._fetch import get_repo
from safehub._status import status


@pytest.fixture
def quiet_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in an application that never configured logging: no handlers anywhere.
    logger = logging.getLogger("safehub")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)


def test_status_goes_to_stderr_when_logging_is_not_configured(quiet_root, capsys) -> None:
    status("building environment %s", "abc", verbose=True, env={})
    assert capsys.readouterr().err == "safehub: building environment abc\n"
    status("building environment %s", "abc", verbose=False, env={})
    status("x", verbose=True, env={"SAFEHUB_DISABLE_PROGRESS_BARS": "1"})
    assert capsys.readouterr().err == ""


def test_status_uses_logging_when_it_shows_info(caplog, capsys) -> None:
    with caplog.at_level(logging.INFO, logger="safehub"):
        status("Using cache found in %s", "/x", verbose=True, env={})
    assert [r.getMessage() for r in caplog.records] == ["Using cache found in /x"]
    assert capsys.readouterr().err == ""  # not twice


def test_repo_fetch_and_cache_hit_print_status(quiet_root, capsys, tmp_path: Path) -> None:
    with FakeGitHub() as gh:
        gh.add_repo("alice", "model").commit({"hubconf.py": b"dependencies = []\n"})
        kw = dict(trust_repo=True, hub_dir=tmp_path, env=gh.env())
        get_repo("alice/model", verbose=True, **kw)
        assert "safehub: Downloading alice/model@" in capsys.readouterr().err
        co = get_repo("alice/model", verbose=True, **kw)
        assert f"safehub: Using cache found in {co.path}\n" in capsys.readouterr().err
        get_repo("alice/model", verbose=False, **kw)
        assert "Using cache" not in capsys.readouterr().err
