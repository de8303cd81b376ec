#!/usr/bin/env bash
# Install everything safehub and its test suite need on a fresh machine
# (Debian/Ubuntu, Python 3.10+) into ./.venv, a venv without system site-packages,
# so nothing the machine's own Python happens to have can hide a missing dependency.
# Safe to run again: each step is idempotent. SAFEHUB_VENV picks another folder.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SAFEHUB_VENV:-.venv}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# bubblewrap is the default sandbox backend; util-linux brings prlimit and setpriv,
# which set the limits and drop to an unprivileged uid inside it.
# libseccomp (through the pyseccomp bindings) compiles the sandbox's syscall filter.
if ! command -v bwrap >/dev/null 2>&1 || ! command -v prlimit >/dev/null 2>&1 \
        || ! command -v setpriv >/dev/null 2>&1 || ! ldconfig -p | grep -q 'libseccomp\.so\.2'; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap util-linux libseccomp2 >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
# Pin torch first so nothing below can pull a different (multi-GB CUDA) build.
"$py" -m pip install -q --disable-pip-version-check torch==2.13.0
"$py" -m pip install -q --disable-pip-version-check -e ".[test]"
# An editable install compiles no bytecode (a wheel install does): without it every
# fresh process, and every sandboxed runner (its folder is read-only in there),
# compiles safehub's modules from source again, about 0.1 s each time.
"$py" -m compileall -q safehub runners >/dev/null
