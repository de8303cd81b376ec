"""What the CLI shows (issue 16): hints in CLI spelling, a missing folder named as
such, the trust prompt's line ending, one ``safehub:`` prefix. In process, no
sandbox: these are the CLI's own paths."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from safehub._cli import main
from safehub._cli_text import CliFormatter, cli_spelling
from safehub._errors import UntrustedRepoError
from safehub._fetch._trust import check_trust


def test_hints_use_cli_flags() -> None:
    assert cli_spelling("pass trust_repo=True to trust it, or trust_repo='check' after trusting it once") == \
        "pass --trust-repo true to trust it, or --trust-repo check after trusting it once"
    assert cli_spelling("run safehub.list() on the repo to see its entrypoints") == \
        "run `safehub list REPO` on the repo to see its entrypoints"
    assert cli_spelling("refetch with force_reload=True or remove it") == "refetch with --force-reload or remove it"
    assert cli_spelling("pass extra_dependencies=['timm'] to load(), or use the default dependencies_mode='scan'") == \
        "pass -d 'timm', or use the default --dependencies scan"
    assert cli_spelling("name it: load(..., extra_dependencies=['<package>']) (or {'cv2': '<package>'} when the "
                        "import name differs), or use dependencies_mode='declared' / 'requirements'") == \
        "name it: -d '<package>', or use --dependencies declared / requirements"
    assert cli_spelling("if you trust this commit anyway, pass skip_validation=True") == \
        "if you trust this commit anyway, pass --skip-validation"
    assert cli_spelling("use source='local' for a folder; or use sandbox='landlock'") == \
        "use --source local for a folder; or use --sandbox landlock"
    assert cli_spelling("the sandbox traceback is in .remote_traceback") == "run again with -v to see the sandbox traceback"


def test_missing_folder_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for arg in (str(tmp_path / "nope"), "./models/nope", "a/b/c"):
        assert main(["list", arg]) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err and "not of the form owner/name" not in err.split("and it is")[0], err
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["list", str(f)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["list", "--source", "local", str(tmp_path / "gone")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_error_hint_is_in_cli_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # The trust check comes before any network access; with no answer it fails with a hint.
    monkeypatch.setenv("SAFEHUB_HOME", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["list", "alice/model", "--trust-repo", "false"]) == UntrustedRepoError.exit_code
    captured = capsys.readouterr()
    assert captured.out.endswith("(y/N)? \n")  # the error starts on its own line
    assert "hint: pass --trust-repo true to trust it, or --trust-repo check" in captured.err
    assert "trust_repo=" not in captured.err


def test_trust_prompt_ends_its_line_when_no_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(UntrustedRepoError, match="no answer could be read"):
        check_trust(tmp_path, host="github.com", is_github_com=True, owner="a", name="b", trust_repo=False)
    out = capsys.readouterr().out
    assert out.endswith("(y/N)? \n")


def test_log_lines_carry_one_prefix() -> None:
    fmt = CliFormatter("safehub: %(message)s")
    for msg in ("safehub: building env", "building env"):
        record = logging.LogRecord("safehub", logging.INFO, __file__, 1, msg, None, None)
        assert fmt.format(record) == "safehub: building env"
