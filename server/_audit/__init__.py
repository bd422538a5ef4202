"""The audit log: a durable, hash-chained, searchable SQLite record of every event and notice.

``run_audit`` is the process (``taskbus audit run``); the rest are the read side used by
the CLI (search, tail, verify, export, prune).
"""

from ._alerts import CRITICAL_KINDS as CRITICAL_KINDS
from ._alerts import AlertRules as AlertRules
from ._chain import Problem as Problem
from ._chain import VerifyResult as VerifyResult
from ._chain import row_hash as row_hash
from ._chain import verify as verify
from ._db import default_db_path as default_db_path
from ._db import open_db as open_db
from ._errors import AuditError as AuditError
from ._errors import ChainBroken as ChainBroken
from ._subscriber import AuditOptions as AuditOptions
from ._subscriber import run_audit as run_audit
from ._writer import Writer as Writer

__all__ = [
    "CRITICAL_KINDS",
    "AlertRules",
    "AuditError",
    "AuditOptions",
    "ChainBroken",
    "Problem",
    "VerifyResult",
    "Writer",
    "default_db_path",
    "open_db",
    "row_hash",
    "run_audit",
    "verify",
]
