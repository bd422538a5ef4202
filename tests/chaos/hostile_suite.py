"""The hostile-agent and hostile-local-user attacks of ``tests/hostile/`` as one row of the
chaos table (``scripts/chaos --only hostile-suite``).

Each attack there is a pytest test on the real stack (bwrap and Docker, the real Claude
Code, scripted model turns): a symlink race during artifact collection, FIFO/socket/sparse
file swaps, workspace fill, hook code injection, stdout takeover and event floods, gateway
passthrough of ``mcp_servers`` and beta headers, a project root leading out through a link,
a pre-created ``/tmp`` folder, bus access without credentials and a replayed job; plus the
project-root link (``tests/server/test_project_root.py``) and the flood of bad keys
(``tests/server/test_auth_audit_throttle.py``), which use the server suite's fixtures. Every
test asserts containment (and, where the system can see the attempt, its ``security``
event); one that fails counts as an escape here. In pytest the suite runs directly, so
``tests/chaos/test_chaos.py`` does not run this row.
"""

from __future__ import annotations

import asyncio
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from report import Row

ROOT = Path(__file__).resolve().parents[2]
ATTACKS = ("tests/hostile", "tests/server/test_project_root.py", "tests/server/test_auth_audit_throttle.py")


async def hostile_suite_scenario(work: Path, scale: object) -> Row:
    work.mkdir(parents=True, exist_ok=True)
    junit = work / "hostile.xml"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *(str(ROOT / p) for p in ATTACKS),
        cwd=ROOT,
        env={**os.environ, "CI": "true"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    row = Row("hostile-suite")
    if not junit.exists():
        row.crashed.append("pytest")
        row.notes.append(output.decode(errors="replace")[-2000:])
        return row
    for case in ET.parse(junit).getroot().iter("testcase"):
        row.submitted += 1
        name = f"{Path(case.get('file') or case.get('classname', '')).stem}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            row.escapes += 1
            row.notes.append(f"FAILED {name}: {(bad.get('message') or '')[:300]}")
        elif case.find("skipped") is not None:
            row.escapes += 1  # run with CI=true: a skip means a component was missing
            row.notes.append(f"SKIPPED {name}")
        else:
            row.notes.append(f"contained {name}")
    row.finished = {"contained": row.submitted - row.escapes}
    return row
