"""A stand-in runner for the reaper test: creates sandboxes, prints their ids, then
waits to be SIGKILLed. Usage: reaper_child.py DATA_DIR RUNNER_ID BACKEND [COUNT]"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from bus import Settings
from sandbox._sandboxes import SandboxSpec, get_backend


async def main(data_dir: str, runner_id: str, backend_name: str, count: int) -> None:
    backend = get_backend(backend_name, Settings.load({}, data_dir=data_dir))
    ids = []
    for i in range(count):
        spec = SandboxSpec(task_id=f"orphan-{i}", runner_id=runner_id, workspace=tempfile.mkdtemp(), timeout_s=300)
        sandbox = await backend.create(spec)
        ids.append(sandbox.id)
    print("ready", " ".join(ids), flush=True)
    await asyncio.sleep(600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 2))
