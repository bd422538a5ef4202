"""Running one ``complete`` job: a metered model call, streamed as ``message`` deltas."""

from __future__ import annotations

import logging

from bus import BudgetExceeded, CompleteRequest, Job, Message, Usage

from .._gateway import CallRecord
from .._providers import ModelProvider
from ._events import TaskEvents, emit_model_call
from ._task import TaskOutcome

logger = logging.getLogger(__name__)


async def run_complete(job: Job, events: TaskEvents, provider: ModelProvider) -> TaskOutcome:
    request = job.request
    if not isinstance(request, CompleteRequest):
        raise TypeError(f"a complete job carries a CompleteRequest, not {type(request).__name__}")
    policy = job.policy

    async def on_delta(text: str) -> None:
        await events.emit(Message, text=text, delta=True)

    async def on_call(record: CallRecord) -> None:
        await emit_model_call(events, record)

    try:
        result = await provider.complete(request, policy, on_delta=on_delta, on_call=on_call)
    except BudgetExceeded as exc:
        return TaskOutcome(status="budget_exceeded", reason="cost_cap", result=exc.describe(), model=policy.model)
    return TaskOutcome(
        status="succeeded",
        result=result.text,
        reason=result.stop_reason if result.stop_reason not in (None, "end_turn") else None,
        usage=result.usage or Usage(),
        cost_usd=result.cost_usd,
        turns=1,
        model=result.model,
    )
