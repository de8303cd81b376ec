"""Red team: the host's download broker as the repo's deputy.

Repo code in the (offline) sandbox may ask the host to download weight URLs.
The host sends the user's GitHub token to the configured GitHub host. A hostile
repo can therefore name a URL of *another*, private repository the user's token
can read (here ``victim/secret`` on a loopback GitHub), and read the archive in
the sandbox on the next round. Nothing leaves the machine directly (the sandbox
is offline), but the repo's code now holds private code it was never given and
can bake it into the weights it returns. Real loopback GitHub, real sandbox.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import safehub
from safehub import EntrypointFailedError, FetchError, SafehubError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from github_server import FakeGitHub  # noqa: E402

FORGE = Path(__file__).resolve().parent / "fixtures" / "redteam" / "forge"
TOKEN = "tok-redteam-deputy"


@pytest.fixture
def github(monkeypatch):
    with FakeGitHub(token=TOKEN) as gh:
        secret = gh.add_repo("victim", "secret", private=True)
        secret.commit({"README.md": b"PRIVATE-CONTENT-of-victim-secret\n"})
        for key, value in gh.env(SAFEHUB_GITHUB_TOKEN=TOKEN).items():
            monkeypatch.setenv(key, value)
        yield gh


def test_control_the_victim_archive_is_private(github):
    """Control: the victim repo really is private on this server."""
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{github.api_url}/repos/victim/secret/zipball/main", timeout=30)



@pytest.mark.slow
def test_repo_code_cannot_make_the_host_fetch_other_private_repos(github):
    url = f"{github.api_url}/repos/victim/secret/zipball/main"
    try:
        safehub.load(str(FORGE), "fetch_for_me", source="local", verbose=False, url=url)
    except EntrypointFailedError as exc:
        assert "PRIVATE-CONTENT" not in str(exc) + exc.remote_traceback, "the sandbox read a private repo via the host"
    except (FetchError, SafehubError):
        pass  # refused: the token was not lent to the repo's request
    else:
        pytest.fail("the load succeeded although the entrypoint only raises")


@pytest.mark.slow
def test_a_load_cannot_fill_the_host_disk_through_the_broker(github, tmp_path):
    """16 requested files under a small disk limit (the red team: 16 x 200 MiB under
    64 MiB put 3.2 GB on the host, and they stayed). Real sandbox, real loopback
    GitHub: the load fails on the disk limit and leaves no downloaded file behind."""
    import textwrap

    from safehub import Limits, SandboxLimitError

    bulk = github.add_repo("mallory", "bulk")
    bulk.commit({"hubconf.py": b""})
    urls = [f"{github.url}{bulk.release_asset('v1', f'w{i}.bin', bytes([i]) * 65536)}" for i in range(16)]
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(f"""
        import torch
        dependencies = ["torch"]
        def m():
            for url in {urls!r}:  # ask for all 16 in one round
                try:
                    torch.hub.load_state_dict_from_url(url)
                except BaseException:
                    pass
            return torch.nn.Linear(2, 2)
    """))
    by_url = Path(safehub.get_dir()) / "checkpoints" / "by-url"
    before = set(by_url.iterdir()) if by_url.exists() else set()
    with pytest.raises(SandboxLimitError, match="the download of .* disk limit") as info:
        safehub.load(str(repo), "m", source="local", verbose=False, limits=Limits(disk_bytes=200_000))
    assert info.value.limit == "disk"
    after = set(by_url.iterdir()) if by_url.exists() else set()
    assert after == before
