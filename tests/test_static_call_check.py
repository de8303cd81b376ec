"""Arguments that cannot bind to an entrypoint's signature fail before any env build
or sandbox run, with a "did you mean"; only when the syntax alone fixes the signature
(anything dynamic is left to the real call: never refuse what torch.hub accepts).
The sandbox is the FakeBackend: these tests assert it saw no job."""

from __future__ import annotations

from pathlib import Path

import pytest

import safehub
from safehub._env import host_env
from safehub._errors import EntrypointArgumentsError, EntrypointNotFoundError
from safehub._hubconf import parse_hubconf
from safehub._sandbox import FakeBackend, FakeJob

HUBCONF = '''
dependencies = []


def tiny(width=4, *, depth=2):
    """A tiny model."""
    raise AssertionError("the host never imports this")


def posonly(a, /, b, *rest, c):
    pass
'''


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    (d / "hubconf.py").write_text(HUBCONF)
    monkeypatch.setattr("safehub._env.ensure_env", lambda *a, **k: host_env())
    return d


def never(job: FakeJob) -> None:
    raise AssertionError("no sandbox run was expected")


@pytest.mark.parametrize(
    "args, kwargs, hint",
    [
        ((), {"widht": 5}, "did you mean width="),
        ((), {"dpeth": 5}, "did you mean depth="),
        ((1, 2), {}, "see the signature of tiny"),
        ((1,), {"width": 2}, "see the signature of tiny"),
    ],
)
def test_unbindable_arguments_fail_before_any_sandbox(repo: Path, args, kwargs, hint) -> None:
    backend = FakeBackend(never)
    with pytest.raises(EntrypointArgumentsError) as info:
        safehub.load(str(repo), "tiny", *args, source="local", sandbox=backend, verbose=False, **kwargs)
    assert hint in str(info.value)
    assert isinstance(info.value, TypeError), "torch.hub raises TypeError for the same call"
    assert backend.jobs == []


def test_a_misspelt_entrypoint_gets_a_suggestion_and_runs_nothing(repo: Path) -> None:
    backend = FakeBackend(never)
    with pytest.raises(EntrypointNotFoundError, match="did you mean 'tiny'"):
        safehub.load(str(repo), "tinny", source="local", sandbox=backend, verbose=False)
    assert backend.jobs == []


@pytest.mark.parametrize(
    "args, kwargs, ok",
    [
        ((1, 2, 3, 4), {"c": 5}, True),
        ((1, 2), {"c": 5}, True),
        ((1,), {"b": 2, "c": 3}, True),
        ((), {"a": 1, "b": 2, "c": 3}, False),  # a is positional-only
        ((1, 2), {}, False),  # c is required
    ],
)
def test_binding_follows_python_rules(args, kwargs, ok: bool) -> None:
    hub = parse_hubconf(HUBCONF)
    if ok:
        hub.check_call("posonly", args, kwargs)
    else:
        with pytest.raises(EntrypointArgumentsError):
            hub.check_call("posonly", args, kwargs)


# Each hubconf below can make `tiny(bogus=1)` bind at run time: the check must stay out.
DYNAMIC = {
    "kwargs": "def tiny(width=4, **kw):\n    pass\n",
    "decorated": "import functools\n@functools.lru_cache\ndef tiny(width=4):\n    pass\n",
    "class": "class tiny:\n    def __init__(self, width=4):\n        pass\n",
    "imported": "from models import tiny\n",
    "rebound": "def tiny(width=4):\n    pass\ntiny = wrap(tiny)\n",
    "conditional": "try:\n    def tiny(width=4):\n        pass\nexcept Exception:\n    pass\n",
    "code_swap": "def tiny(width=4):\n    pass\ndef _any(**kw):\n    pass\ntiny.__code__ = _any.__code__\n",
    "defaults": "def tiny(width=4):\n    pass\ntiny.__kwdefaults__ = {}\n",
    "star_import": "from models import *\ndef tiny(width=4):\n    pass\n",
    "globals": "def tiny(width=4):\n    pass\nglobals()['tiny'] = lambda **kw: None\n",
    "sys_modules": "import sys\ndef tiny(width=4):\n    pass\nsys.modules[__name__].tiny = lambda **kw: None\n",
    "self_import": "import hubconf\ndef tiny(width=4):\n    pass\nhubconf.tiny = lambda **kw: None\n",
    "global_stmt": "def tiny(width=4):\n    pass\ndef _f():\n    global tiny\n    tiny = None\n",
    "lambda_rebind": "def tiny(width=4):\n    pass\ntiny = lambda **kw: None\n",
    "walrus": "def tiny(width=4):\n    pass\nif (tiny := make()):\n    pass\n",
    "for_target": "def tiny(width=4):\n    pass\nfor tiny in [make()]:\n    pass\n",
    "except_as": "def tiny(width=4):\n    pass\ntry:\n    raise make()\nexcept Exception as tiny:\n    pass\n",
    "redefined_kwargs": "def tiny(width=4):\n    pass\ndef tiny(**kw):\n    pass\n",
    "module_getattr": "def tiny(width=4):\n    pass\ndef __getattr__(name):\n    pass\n",
}


@pytest.mark.parametrize("name", sorted(DYNAMIC))
def test_signatures_that_may_change_at_run_time_are_never_checked(name: str) -> None:
    hub = parse_hubconf(DYNAMIC[name])
    hub.check_call("tiny", (), {"bogus": 1})  # no error: left to the real call


def test_a_plain_function_beside_ordinary_code_is_still_checked() -> None:
    hub = parse_hubconf("import os\nimport sys\nsys.path.insert(0, os.path.dirname(__file__))\n"
                        "def tiny(width=4):\n    pass\nif __name__ == '__main__':\n    tiny()\n")
    with pytest.raises(EntrypointArgumentsError, match="did you mean width="):
        hub.check_call("tiny", (), {"wdith": 1})


def test_a_name_no_statement_binds_is_absent_even_beside_imported_names() -> None:
    # `from x import Y` makes the list inexact, but nothing anywhere binds "tinnynet".
    hub = parse_hubconf("import os\nfrom tinynet import TinyNet\ndef tinynet(pretrained=True):\n    pass\n")
    assert not hub.static_list_is_exact
    with pytest.raises(EntrypointNotFoundError, match="did you mean 'tinynet'"):
        hub.require("tinynett")
    hub.require("TinyNet")  # imported: may be callable, left to the sandbox


@pytest.mark.parametrize("source", [
    "from m import *\n",  # may bind anything
    "globals()['tinynett'] = f\n",
    "for tinynett in [f]:\n    pass\n",
    "with f() as tinynett:\n    pass\n",
    "(tinynett := f())\n",
    "try:\n    pass\nexcept E as tinynett:\n    pass\n",
    "import tinynett\n",
    "def g():\n    global tinynett\n    tinynett = f\n",
])
def test_a_name_that_may_be_bound_is_left_to_the_sandbox(source: str) -> None:
    hub = parse_hubconf("from tinynet import TinyNet\ndef tinynet():\n    pass\n" + source)
    hub.require("tinynett")  # no early failure
