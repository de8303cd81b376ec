"""What the CLI shows of an error: the library's hints name Python keyword arguments
(``trust_repo=True``); on the command line they become the matching flags."""

from __future__ import annotations

import logging
import re

__all__ = ["cli_spelling", "CliFormatter"]

# (pattern, replacement), applied in order. Only exact library spellings are rewritten.
_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"\b(?:load|list|help)\(\.\.\., ([^()]*?)\)", r"\1"),  # load(..., trust_repo=True) -> trust_repo=True
        (r"extra_dependencies=\['([^'\]]*)'\]", r"-d '\1'"),
        (r" \(or \{'[\w.]+': '<package>'\} when the import name differs\)", ""),  # no dict form in the CLI
        (r"extra_dependencies=", "-d REQUIREMENT"),
        (r"dependencies_mode='(\w+)' / '(\w+)'", r"--dependencies \1 / \2"),
        (r"dependencies_mode='(\w+)'", r"--dependencies \1"),
        (r"trust_repo=True", "--trust-repo true"),
        (r"trust_repo=False", "--trust-repo false"),
        (r"trust_repo='check'", "--trust-repo check"),
        (r"force_reload=True", "--force-reload"),
        (r"skip_validation=True", "--skip-validation"),
        (r"source='(\w+)'", r"--source \1"),
        (r"sandbox='(\w+)'", r"--sandbox \1"),
        (r"device='([\w:]+)'", r"--device \1"),
        (r"revision=<", "--revision <"),
        (r"revision=", "--revision "),
        (r"safehub\.list\(\)", "`safehub list REPO`"),
        (r"\bto load\(\)", ""),
        (r"the sandbox traceback is in \.remote_traceback", "run again with -v to see the sandbox traceback"),
    )
)


def cli_spelling(text: str) -> str:
    """``text`` with the library's keyword spellings turned into CLI flags."""
    for pattern, repl in _REWRITES:
        text = pattern.sub(repl, text)
    return re.sub(r" +([,.;)])", r"\1", text)


class CliFormatter(logging.Formatter):
    """``safehub: <message>``, once: messages that already carry the prefix keep one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        while text.startswith("safehub: safehub: "):
            text = text[len("safehub: "):]
        return text
