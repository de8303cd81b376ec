"""``safehub audit``: what a third-party repo declares and what it does when run.

Public to the rest of safehub: :func:`audit_repo` (one repo), :func:`audit_batch`
(many, on a local process pool or on Ray), :func:`add_audit_commands` (the CLI).
The report's schema is docs/audit-report.md.
"""

from __future__ import annotations

from ._run import SCHEMA, SCHEMA_VERSION, audit_repo

__all__ = ["audit_repo", "SCHEMA", "SCHEMA_VERSION"]
