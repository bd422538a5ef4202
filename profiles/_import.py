"""Import the SQLite ``taskbus.db`` of taskbus before the control plane moved to JetStream.

Once per control plane: the report is stored under ``meta.imported``, and a second run
answers with it instead of importing again. The old file is opened read-only and left
as it is (nothing renamed or deleted). What is imported:

- profiles (the file's version replaces a seeded default of the same name);
- keys with their hashes (a prefix already in the control plane is skipped);
- per-account budget overrides;
- the ledger: open reservations stay open (they are settled when their task finishes)
  and the current UTC day's and month's use of each account carries over; closed
  reservations of earlier periods are not needed for any budget and are skipped;
- tasks (a task id already registered is skipped).

Rate-limit windows (a minute long) are not imported.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from bus import ConfigError

from . import _ledger
from ._budgets import day_of, month_of
from ._keys import record_from_row
from ._kv import Doc, dumps, read
from ._profiles import decode_profile
from ._tasks import LIVE_STATUSES
from ._tasks import record_from_row as task_from_row
from ._view import BUDGET, KEY, encode_key

if TYPE_CHECKING:
    from ._store import Store

IMPORTED = "meta.imported"
SEEDED = "meta.seeded"


class ImportReport(msgspec.Struct, kw_only=True):
    source: str
    already: bool = False
    """True: this control plane had imported a file before; the counts are from then."""
    imported: dict[str, int] = {}
    skipped: dict[str, int] = {}
    reasons: dict[str, str] = {}
    """Kind -> why its skipped rows were skipped."""


def _open(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise ConfigError("database", f"{path} does not exist; give the taskbus.db of the data dir to import")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        db.execute("SELECT 1 FROM profiles LIMIT 1")
    except sqlite3.Error as exc:
        raise ConfigError("database", f"{path} is not a taskbus database ({exc})") from None
    return db


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _rows(db: sqlite3.Connection, sql: str) -> list[dict[str, Any]]:
    return [dict(row) for row in db.execute(sql)]


def read_database(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row the import uses, read in one go (the file is small next to a task's life)."""
    db = _open(path)
    try:
        keys = _rows(db, "SELECT * FROM api_keys ORDER BY created_at")
        for row in keys:  # a version-1 file has no rotation columns
            row.setdefault("account", row["prefix"])
            row.setdefault("replaced_by", None)
            row.setdefault("grace_until", None)
        return {
            "profiles": _rows(db, "SELECT name, data FROM profiles ORDER BY name"),
            "keys": keys,
            "budgets": _rows(db, "SELECT * FROM key_budgets") if "account" in _columns(db, "key_budgets") else [],
            "ledger": _rows(db, "SELECT * FROM ledger ORDER BY created_at"),
            "tasks": _rows(db, "SELECT * FROM tasks ORDER BY created_at"),
        }
    finally:
        db.close()


async def import_database(store: Store, path: Path) -> ImportReport:
    """Import ``path`` into ``store``'s control plane once; see the module docstring."""
    path = Path(path)
    control = store.control.kv
    done, _ = await read(control, IMPORTED)
    if done is not None:
        return msgspec.convert({**done, "already": True}, ImportReport)
    rows = await asyncio.to_thread(read_database, path)
    imported: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    reasons: dict[str, str] = {}

    for row in rows["profiles"]:
        profile = decode_profile(row["data"])
        await control.put(f"profile.{profile.name}", msgspec.json.encode(profile))
        imported["profiles"] += 1
    accounts: dict[str, str] = {}
    for row in rows["keys"]:
        record = record_from_row(row)
        accounts[record.prefix] = record.account
        try:
            await control.create(KEY + record.prefix, encode_key(record, row["hash"]))
            imported["keys"] += 1
        except KeyWrongLastSequenceError:
            skipped["keys"] += 1
            reasons["keys"] = "a key with the same prefix is already in the control plane"
    for row in rows["budgets"]:
        doc = {"day_usd": row["day_usd"], "month_usd": row["month_usd"], "updated_at": row["updated_at"]}
        await control.put(BUDGET + row["account"], dumps(doc))
        imported["budget overrides"] += 1
    await _import_ledger(store, rows["ledger"], accounts, imported, skipped, reasons)
    for row in rows["tasks"]:
        task = task_from_row(row)
        _, created = await store.registry.record(
            task_id=task.task_id,
            key_id=task.key_id,
            profile=task.profile,
            kind=task.kind,
            reserved=task.reserved_usd,
            now=task.created_at,
            model=task.model,
            status=task.status,
        )
        if not created:
            skipped["tasks"] += 1
            reasons["tasks"] = "a task with the same id is already registered"
            continue
        if task.status not in LIVE_STATUSES or task.cost_usd is not None:
            await store.registry.kv.put(f"t.{task.task_id}", msgspec.json.encode(task))
        imported["tasks"] += 1
    if rows["ledger"] or rows["keys"]:
        reasons.setdefault("rate windows", "a one-minute window is not worth carrying over")
    report = ImportReport(source=str(path), imported=dict(imported), skipped=dict(skipped), reasons=reasons)
    try:
        await control.create(IMPORTED, msgspec.json.encode(report))
        await control.put(SEEDED, dumps({"by": "import", "source": str(path)}))
    except KeyWrongLastSequenceError:  # another import finished first: its report stands
        done, _ = await read(control, IMPORTED)
        return msgspec.convert({**(done or {}), "already": True}, ImportReport)
    return report


async def _import_ledger(
    store: Store,
    ledger: list[dict[str, Any]],
    accounts: dict[str, str],
    imported: Counter[str],
    skipped: Counter[str],
    reasons: dict[str, str],
) -> None:
    now = store.now()
    day, month = day_of(now), month_of(now)
    entries: dict[str, Doc] = {}
    for row in ledger:
        account = accounts.get(row["key_id"])
        if account is None:
            skipped["reservations"] += 1
            reasons["reservations"] = "their key is not in the file"
            continue
        entry = entries.setdefault(account, _ledger.current(None, now))
        used = {"reserved": row["amount"], "settled": row["actual"] or 0}.get(row["state"], 0)
        if row["day"] == day:
            entry["day_used"] += used
        if row["month"] == month:
            entry["month_used"] += used
        if row["state"] == "reserved":
            entry["open"][row["task_id"]] = [row["key_id"], row["amount"], row["day"], row["month"], row["created_at"]]
            record = {
                "task_id": row["task_id"],
                "key_id": row["key_id"],
                "account": account,
                "amount": row["amount"],
                "actual": None,
                "state": "reserved",
                "day": row["day"],
                "month": row["month"],
                "created": row["created_at"],
            }
            await store.ledger.kv.put(_ledger.reservation_key(row["task_id"]), dumps(record))
            imported["open reservations"] += 1
        elif row["day"] == day or row["month"] == month:
            imported["closed reservations this month"] += 1
        else:
            skipped["closed reservations"] += 1
            reasons["closed reservations"] = "of an earlier month: no budget counts them any more"
    for account, entry in entries.items():

        def merge(doc: Doc | None, entry: Doc = entry) -> tuple[Doc, None]:
            out = _ledger.current(doc, now)
            out["day_used"] += entry["day_used"]
            out["month_used"] += entry["month_used"]
            out["open"].update(entry["open"])
            return out, None

        await store.ledger.change(_ledger.account_key(account), merge, fresh=True)
