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
from ._follow import LiveFilter as LiveFilter
from ._follow import follow as follow
from ._prune import PruneResult as PruneResult
from ._prune import prune as prune
from ._query import export_jsonl as export_jsonl
from ._query import parse_time as parse_time
from ._query import search as search
from ._query import summarize as summarize
from ._query import tail as tail
from ._subscriber import AuditOptions as AuditOptions
from ._subscriber import run_audit as run_audit
from ._writer import Writer as Writer

__all__ = [
    "CRITICAL_KINDS",
    "AlertRules",
    "AuditError",
    "AuditOptions",
    "ChainBroken",
    "LiveFilter",
    "Problem",
    "PruneResult",
    "VerifyResult",
    "Writer",
    "default_db_path",
    "export_jsonl",
    "follow",
    "open_db",
    "parse_time",
    "prune",
    "row_hash",
    "run_audit",
    "search",
    "summarize",
    "tail",
    "verify",
]
