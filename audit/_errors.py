"""Audit errors: a subtree of the one TaskbusError tree.

TaskbusError
+-- AuditError            the audit database is missing, locked, newer, or unusable
    +-- ChainBroken       verify found a row altered, deleted or inserted
"""

from __future__ import annotations

from bus import TaskbusError


class AuditError(TaskbusError):
    code = "audit_error"


class ChainBroken(AuditError):
    code = "audit_chain_broken"

    def __init__(self, row: int, problem: str, message: str) -> None:
        super().__init__(message, row=row, problem=problem)
