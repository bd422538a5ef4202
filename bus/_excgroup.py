"""Turn what a TaskGroup raised back into the one error a caller can act on."""

from __future__ import annotations

import asyncio


def first_error(exc: BaseException) -> BaseException:
    """The first real error inside a (nested) exception group, skipping cancellations;
    ``exc`` itself when it is not a group, the group's first member when all were cancelled."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    for member in exc.exceptions:
        inner = first_error(member)
        if not isinstance(inner, asyncio.CancelledError):
            return inner
    return first_error(exc.exceptions[0])
