"""Submit a taskbus task over NATS and follow its events, using nothing but nats-py.

    pip install nats-py
    TASKBUS_API_KEY=tb_... python publish_task.py --url nats://127.0.0.1:4222 "Write hello.txt saying hi"

The request body follows the ``TaskRequest`` JSON Schema (``taskbus schema --out schemas/``);
the reply is ``SubmitAccepted`` or ``SubmitRejected``; each event follows ``Event``.
Exit status: 0 when the task succeeded, 1 when it ended otherwise, 2 when it was rejected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid

import nats
from nats.js.api import DeliverPolicy


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("description", help="What the agent should do.")
    parser.add_argument("--url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--prefix", default="taskbus", help="The deployment's subject prefix.")
    parser.add_argument("--key", default=os.environ.get("TASKBUS_API_KEY"), help="API key (or TASKBUS_API_KEY).")
    parser.add_argument("--timeout", type=int, help="Wall-clock limit of the task in seconds.")
    parser.add_argument("--max-cost", type=float, help="Cost cap in USD.")
    parser.add_argument("--file", action="append", default=[], help="Put this text file in the workspace.")
    args = parser.parse_args()
    if not args.key:
        parser.error("no API key: pass --key or set TASKBUS_API_KEY")

    request = {"description": args.description}  # a TaskRequest
    if args.timeout:
        request["timeout_s"] = args.timeout
    if args.max_cost is not None:
        request["max_cost_usd"] = args.max_cost
    for path in args.file:
        with open(path, encoding="utf-8") as f:
            request["files"] = [*request.get("files", []), {"path": os.path.basename(path), "content": f.read()}]

    nc = await nats.connect(args.url)
    request_id = uuid.uuid4().hex  # the idempotency id: a retry with it never makes a second task
    try:
        for attempt in range(3):
            try:
                msg = await nc.request(
                    f"{args.prefix}.submit.task",
                    json.dumps(request).encode(),
                    headers={"Authorization": f"Bearer {args.key}", "Nats-Msg-Id": request_id},
                    timeout=60,
                )
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if attempt == 2:
                    raise
        reply = json.loads(msg.data)
        if reply["type"] == "rejected":
            print(f"rejected: {reply['code']}: {reply['message']}", file=sys.stderr)
            return 2
        task_id, subject = reply["task_id"], reply["events_subject"]
        print(f"accepted {task_id}", flush=True)

        # Replay from the task's first event, so nothing is missed even if it is already done.
        js = nc.jetstream()
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        expected = 1
        try:
            while True:
                event = json.loads((await sub.next_msg(timeout=3600)).data)
                if event["seq"] != expected:
                    print(f"warning: expected event {expected}, got {event['seq']}", file=sys.stderr)
                expected = event["seq"] + 1
                detail = event.get("text") or event.get("name") or event.get("path") or event.get("status") or ""
                print(f"{event['seq']:>4} {event['type']:<12} {str(detail)[:100]}", flush=True)
                if event["type"] == "finished":
                    print(f"result: {event['status']} ${event['cost_usd']:.4f}: {event['result']}", flush=True)
                    return 0 if event["status"] == "succeeded" else 1
        finally:
            await sub.unsubscribe()
    finally:
        await nc.drain()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
