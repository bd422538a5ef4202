"""HTML for the console: every value goes through ``esc`` (event text, results, file names
and key names are hostile), pages are one layout, and the only script is a static file
(the Content-Security-Policy forbids inline script and style)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

NAV = (("tasks", "Tasks"), ("runners", "Runners"), ("spend", "Spend"), ("audit", "Audit"), ("keys", "Keys"), ("profiles", "Profiles"))
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chromium send `Origin: null` on POST
    "Cache-Control": "no-store",
}


def esc(value: Any) -> str:
    """Text as HTML text or attribute value (quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def url(path: str, **query: Any) -> str:
    q = {k: v for k, v in query.items() if v not in (None, "")}
    return quote(path) + ("?" + urlencode(q) if q else "")


class Raw(str):
    """Markup built by this module (already escaped)."""


def cell(value: Any) -> str:
    return value if isinstance(value, Raw) else esc(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, body_id: str = "", empty: str = "nothing yet") -> Raw:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr class="empty"><td colspan="{len(headers)}">{esc(empty)}</td></tr>'
    ident = f' id="{esc(body_id)}"' if body_id else ""
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody{ident}>{body}</tbody></table>")


def link(href: str, text: Any) -> Raw:
    return Raw(f'<a href="{esc(href)}">{esc(text)}</a>')


def badge(status: str) -> Raw:
    return Raw(f'<span class="badge s-{esc(status)}">{esc(status)}</span>')


def post_button(action: str, label: str, csrf: str, *, danger: bool = False, ident: str = "") -> Raw:
    cls = "danger" if danger else ""
    idattr = f' id="{esc(ident)}"' if ident else ""
    return Raw(
        f'<form method="post" action="{esc(action)}" class="inline"{idattr}>'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<button type="submit" class="{cls}">{esc(label)}</button></form>'
    )


def page(title: str, body: str, *, active: str = "", who: str = "", csrf: str = "", script: bool = False) -> str:
    nav = ""
    if who:
        items = "".join(f'<a href="/console/{k}" class="{"on" if k == active else ""}">{esc(label)}</a>' for k, label in NAV)
        nav = (
            f'<nav><span class="brand">taskbus</span>{items}<span class="who">{esc(who)}</span>'
            f"{post_button('/console/logout', 'Log out', csrf, ident='logout')}</nav>"
        )
    js = '<script src="/console/static/console.js" defer></script>' if script else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · taskbus</title>"
        f'<link rel="stylesheet" href="/console/static/console.css">{js}</head>'
        f"<body>{nav}<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )


def bar_chart(series: Sequence[tuple[str, float]], *, unit: str = "", width: int = 640, height: int = 180) -> Raw:
    """A server-rendered SVG bar chart (labels escaped)."""
    if not series:
        return Raw('<p class="muted">no data yet</p>')
    top = max(v for _, v in series) or 1.0
    n = len(series)
    slot = (width - 40) / n
    bars = []
    for i, (label, value) in enumerate(series):
        h = (height - 40) * value / top
        x = 30 + i * slot
        y = height - 20 - h
        bars.append(
            f'<rect x="{x + slot * 0.15:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" class="bar">'
            f"<title>{esc(label)}: {esc(f'{value:.4g}')}{esc(unit)}</title></rect>"
            f'<text x="{x + slot / 2:.1f}" y="{height - 5}" class="axis">{esc(label)}</text>'
        )
    return Raw(
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img">'
        f'<text x="4" y="12" class="ylabel">max {esc(f"{top:.4g}")}{esc(unit)}</text>{"".join(bars)}</svg>'
    )


CSS = """
:root { --bg:#0f1419; --panel:#171d24; --fg:#d8dee6; --muted:#8a96a3; --accent:#5cb3ff; --bad:#ff6b6b; --ok:#5fd38d; --warn:#f5c04a; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, sans-serif; background:var(--bg); color:var(--fg); }
nav { display:flex; gap:14px; align-items:center; padding:8px 16px; background:var(--panel); border-bottom:1px solid #26303a; }
nav a { color:var(--muted); text-decoration:none; } nav a.on, nav a:hover { color:var(--fg); }
nav .brand { font-weight:700; color:var(--accent); margin-right:8px; } nav .who { margin-left:auto; color:var(--muted); }
main { padding:12px 20px; max-width:1400px; }
h1 { font-size:20px; margin:6px 0 12px; } h2 { font-size:16px; margin:18px 0 8px; }
table { border-collapse:collapse; width:100%; background:var(--panel); }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid #26303a; vertical-align:top; }
th { color:var(--muted); font-weight:600; } td { word-break:break-word; }
td pre, pre { margin:0; white-space:pre-wrap; font:12px/1.4 ui-monospace, monospace; max-height:24em; overflow:auto; }
a { color:var(--accent); }
.badge { padding:1px 6px; border-radius:8px; background:#26303a; font-size:12px; }
.s-succeeded { color:var(--ok); } .s-failed, .s-timeout, .s-denied, .s-budget_exceeded, .s-broken { color:var(--bad); }
.s-running, .s-accepted, .s-cancelling { color:var(--warn); } .s-cancelled { color:var(--muted); } .s-ok { color:var(--ok); }
form.inline { display:inline; } form.filters { display:flex; gap:8px; flex-wrap:wrap; margin-bottom:10px; }
input, select, button { background:#0b0f13; color:var(--fg); border:1px solid #33404d; border-radius:4px; padding:4px 8px; font:inherit; }
button { cursor:pointer; } button.danger { border-color:var(--bad); color:var(--bad); }
.muted { color:var(--muted); } .error { color:var(--bad); } .card { background:var(--panel); padding:10px 14px; margin-bottom:12px; }
.kv { display:grid; grid-template-columns: max-content 1fr; gap:2px 16px; }
.chart { width:100%; max-width:760px; background:var(--panel); } .bar { fill:var(--accent); }
.axis { fill:var(--muted); font-size:10px; text-anchor:middle; } .ylabel { fill:var(--muted); font-size:10px; } .login { max-width:420px; }
.t-security td { color:var(--bad); } .t-finished td { font-weight:600; }
"""

JS = r"""
"use strict";
// Everything from the server is put into the page with textContent: event text is hostile.
function cellRow(values, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const v of values) {
    const td = document.createElement("td");
    if (v && typeof v === "object" && v.href) {
      const a = document.createElement("a"); a.href = v.href; a.textContent = v.text;
      if (v.download) a.setAttribute("download", "");
      td.appendChild(a);
    } else if (v && typeof v === "object" && v.pre !== undefined) {
      const pre = document.createElement("pre"); pre.textContent = v.pre; td.appendChild(pre);
    } else if (v && typeof v === "object" && v.badge !== undefined) {
      const s = document.createElement("span"); s.className = "badge s-" + v.badge; s.textContent = v.badge; td.appendChild(s);
    } else {
      td.textContent = v === null || v === undefined ? "" : String(v);
    }
    tr.appendChild(td);
  }
  return tr;
}

function followTask(box) {
  const body = document.getElementById("events");
  const status = document.getElementById("task-status");
  const after = Number(box.dataset.after || "0");
  const src = new EventSource(box.dataset.stream + "?after=" + after);
  src.addEventListener("event", (msg) => {
    const e = JSON.parse(msg.data);
    const empty = body.querySelector("tr.empty"); if (empty) empty.remove();
    body.appendChild(cellRow(e.cells, "t-" + e.type));
    if (e.artifact) {
      const list = document.getElementById("artifacts");
      const e2 = list.querySelector("tr.empty"); if (e2) e2.remove();
      list.appendChild(cellRow([{href: e.artifact.href, text: e.artifact.path, download: true}, e.artifact.size, e.artifact.sha256]));
    }
    if (e.type === "finished") {
      status.replaceChildren(cellRow([{badge: e.status}]).firstChild.firstChild);
      const result = document.getElementById("result"); result.textContent = e.result;
      const cancel = document.getElementById("cancel"); if (cancel) cancel.remove();
      src.close();
    }
  });
  src.addEventListener("end", () => src.close());
}

function pollTasks(box) {
  const body = document.getElementById("tasks");
  async function tick() {
    try {
      const r = await fetch(box.dataset.poll, {credentials: "same-origin", headers: {"Accept": "application/json"}});
      if (r.ok) {
        const data = await r.json();
        const rows = data.tasks.map((t) => cellRow([{href: t.href, text: t.task_id}, {badge: t.status}, t.kind, t.key_id,
          t.profile, t.model, t.runner, t.duration, t.cost, t.created]));
        if (rows.length) body.replaceChildren(...rows);
      }
    } catch (err) { /* server restarting: try again */ }
    setTimeout(tick, 2000);
  }
  setTimeout(tick, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  const task = document.getElementById("live-task"); if (task) followTask(task);
  const list = document.getElementById("live-tasks"); if (list) pollTasks(list);
});
"""
