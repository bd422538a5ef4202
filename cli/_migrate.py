"""``taskbus migrate``: import the SQLite ``taskbus.db`` of an older taskbus into the
control plane on NATS, once, with a report (``profiles.import_database``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from profiles import DB_NAME, Store, import_database

from ._common import ConfigOpt, JsonOpt, err, fail, load_settings, out, print_json, run

if TYPE_CHECKING:
    from profiles import ImportReport


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)


def migrate(
    database: Annotated[
        Path | None, typer.Option("--database", help="The file to import (default: <data dir>/taskbus.db).", show_default=False)
    ] = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Import keys, profiles, budgets, open reservations and tasks of an old taskbus.db (once)."""
    settings = load_settings(config)
    path = database or settings.data_path / DB_NAME
    if not path.is_file():
        fail(f"{path} does not exist: nothing to import (give another file with --database)")

    async def go() -> ImportReport:
        async with Store.for_settings(settings, actor="cli:migrate") as store:
            return await import_database(store, path)

    report = run(go())
    if json_output:
        print_json(report)
        return
    if report.already:
        err.print(
            f"{report.source} was already imported into this control plane; nothing done. What that import did:",
            highlight=False,
            markup=False,
        )
    else:
        out.print(f"imported {report.source}:", highlight=False, markup=False)
    for kind, count in report.imported.items():
        out.print(f"  {kind}: {count}", highlight=False, markup=False)
    for kind, count in report.skipped.items():
        out.print(f"  skipped {kind}: {count} ({report.reasons.get(kind, '')})", highlight=False, markup=False)
    for kind, why in report.reasons.items():
        if kind not in report.skipped:
            out.print(f"  not imported: {kind} ({why})", highlight=False, markup=False)
    out.print(f"the file is left as it was: {report.source}", highlight=False, markup=False)
