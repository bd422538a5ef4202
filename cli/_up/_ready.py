"""Readiness of ``taskbus up``'s runner from its heartbeat, not from its log wording.

A runner heartbeats ``ready`` only after its backend self-check passed (Claude Code,
the sandbox tool, the image). The probe listens on the runner's heartbeat subject and
counts only heartbeats of the process the supervisor started (same pid), so a
previous life of the runner cannot make a restarted one look ready.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from bus import Bus, Settings, Subjects, TaskbusError, decode_heartbeat

from ._supervisor import ChildState, UpError

logger = logging.getLogger(__name__)


class RunnerReadyProbe:
    """A supervisor probe: True once the runner's own heartbeat says ready.

    Raises UpError when the heartbeat says what keeps it from running tasks (the
    supervisor stops a starting runner with that message)."""

    def __init__(self, settings: Settings, runner_id: str) -> None:
        """``settings``: how the supervisor connects to this stack (URL and its credentials)."""
        self.settings = settings
        self.subjects = Subjects(settings.subject_prefix)
        self.runner_id = runner_id
        self._bus: Bus | None = None
        self._beats: dict[int, Any] = {}  # pid -> its latest Heartbeat

    async def __call__(self, child: ChildState) -> bool:
        if self._bus is None:
            try:
                self._bus = await Bus.for_settings(self.settings, name="up-ready-probe", connect_timeout=1.0, open_timeout=2.0)
                await self._bus.nc.subscribe(self.subjects.runner(self.runner_id), cb=self._on_beat)
            except TaskbusError as exc:
                logger.debug("runner probe cannot reach NATS yet: %s", exc)
                await self.aclose()
                return False
        beat = self._beats.get(child.pid or -1)
        if beat is None:
            return False
        if beat.ready:
            await self.aclose()
            return True
        if beat.problem:
            raise UpError(f"runner {self.runner_id} cannot run tasks: {beat.problem}")
        return False

    async def _on_beat(self, msg: Any) -> None:
        try:
            beat = decode_heartbeat(msg.data)
        except TaskbusError:
            return
        if beat.runner_id == self.runner_id:
            self._beats[beat.pid] = beat

    async def aclose(self) -> None:
        bus, self._bus = self._bus, None
        self._beats.clear()
        if bus is not None:
            with contextlib.suppress(Exception):
                await bus.close()
