"""The HTML a browser sees of the CI's logs: a build's index.html and the status page at the logs' root.

Plain HTML and one small inline stylesheet, no JavaScript, so the pages read the same in a browser, a
text browser or a mail client. Every piece of text is escaped (Gerrit's subjects, branches and topics
are written by anyone who can push a change), and every href is built from URL-quoted path segments or
from an http(s) URL checked here: a `javascript:` URL from Gerrit never becomes a link.
Links are relative (a build's files from its index, builds from the status page), so the pages work the
same from the local directory, a log host or a bucket.
"""
from __future__ import annotations

import datetime as dt
import html
import os
import threading
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import quote, urlsplit

INDEX = "index.html"
RECENT = 50  # finished builds shown on the status page
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse}th,td{padding:.25em .8em;text-align:left;border-bottom:1px solid #ddd}
th{background:#f3f3f3}td.size{text-align:right;font-variant-numeric:tabular-nums}
.SUCCESS{color:#176f2c;font-weight:bold}.FAILURE,.TIMED_OUT,.ERROR{color:#b3261e;font-weight:bold}
.NODE_FAILURE{color:#8a5300;font-weight:bold}.ABORTED{color:#666}
.meta{color:#555}code{font-size:.95em}
"""


def build_index(build_dir: Path, title: str, facts: dict | None = None) -> str:
    """The index of one build's directory: every file below it (artifacts included) with its size and a
    relative link, job-output.txt and build.json first; a few facts from build.json on top."""
    files = sorted(_files(build_dir), key=_order)
    rows = "".join(
        f'<tr><td><a href="{_href(rel)}">{_e(rel)}</a></td><td class="size">{_size(size)}</td></tr>\n'
        for rel, size in files)
    facts = facts or {}
    meta = "".join(
        f"<tr><th>{_e(label)}</th><td{_cls(facts[key]) if key == 'result' else ''}>{_e(_fact(facts[key]))}</td></tr>\n"
        for key, label in (("job", "job"), ("project", "project"), ("branch", "branch"), ("change", "change"),
                           ("patchset", "patch set"), ("trigger", "trigger"), ("result", "result"),
                           ("detail", "detail"), ("start", "start (UTC)"), ("duration", "duration"))
        if facts.get(key) not in (None, ""))
    return _page(title, f"""<p><a href="../../../../../../">status page</a></p>
<table class="meta">{meta}</table>
<h2>Files</h2>
<table><tr><th>name</th><th>size</th></tr>
{rows}</table>""")


def write_build_index(build_dir: Path, title: str, facts: dict | None = None) -> Path:
    """Write index.html into the build's directory (atomically: a reader never sees half a page)."""
    path = build_dir / INDEX
    write_atomic(path, build_index(build_dir, title, facts))
    return path


def status_page(rows: Iterable, title: str, log_href: Callable[[object], str | None],
                change_href: Callable[[object], str | None], now: float | None = None) -> str:
    """Running, queued and recent builds. A row is a cislaves.ci.builds.Build (or anything with its
    attributes); `log_href(row)` is the relative link to its logs (None: none yet), `change_href(row)`
    its change in Gerrit (checked here to be http(s))."""
    rows = list(rows)
    now = dt.datetime.now(dt.timezone.utc).timestamp() if now is None else now
    running = sorted((r for r in rows if r.state == "running"), key=lambda r: r.started or 0)
    queued = sorted((r for r in rows if r.state == "queued"), key=lambda r: r.created or 0)
    recent = sorted((r for r in rows if r.state == "finished"), key=lambda r: r.finished or 0, reverse=True)
    sections = []
    for name, group, empty in (("Running", running, "nothing running"), ("Queued", queued, "nothing queued"),
                               ("Recent", recent[:RECENT], "no finished builds yet")):
        body = "".join(_status_row(r, log_href, change_href, now) for r in group)
        sections.append(f"""<h2>{_e(name)} ({len(group)})</h2>
<table><tr><th>change</th><th>patch set</th><th>subject</th><th>trigger</th><th>job</th><th>result</th>
<th>started (UTC)</th><th>duration</th><th>logs</th></tr>
{body or f'<tr><td colspan="9" class="meta">{_e(empty)}</td></tr>'}</table>""")
    stamp = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return _page(title, f'<p class="meta">updated {stamp}</p>\n' + "\n".join(sections))


def write_atomic(path: Path, text: str) -> None:
    """Write a page so that a web server serves the old one or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def duration(seconds: float | None) -> str:
    """5m 03s, 1h 02m 03s, 12s: the form of OpenStack CI comments."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def safe_url(url: object) -> str | None:
    """`url` if it is an http(s) URL with a host, else None (never a javascript: or data: link)."""
    if not isinstance(url, str) or any(c in url for c in "\"'<>\\ \t\r\n\0"):
        return None
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.netloc else None


# -- helpers
def _status_row(row, log_href, change_href, now: float) -> str:
    change = safe_url(change_href(row))
    number = _e(str(row.change))
    change_cell = f'<a href="{_e(change)}">{number}</a>' if change else number
    event = row.event if isinstance(getattr(row, "event", None), dict) else {}
    subject = event.get("change", {}).get("subject") if isinstance(event.get("change"), dict) else None
    logs = log_href(row)
    logs_cell = f'<a href="{_e(logs)}">logs</a>' if logs else ""
    result = row.result if row.state == "finished" else row.state
    started = (dt.datetime.fromtimestamp(row.started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
               if row.started else "")
    took = duration(((row.finished or now) - row.started) if row.started else None)
    voting = "" if getattr(row, "voting", True) else ' <span class="meta">(non-voting)</span>'
    return (f"<tr><td>{change_cell}</td><td>{_e(str(row.patchset))}</td><td>{_e(str(subject or ''))}</td>"
            f"<td>{_e(row.trigger)}</td><td>{_e(row.name)}{voting}</td><td{_cls(result)}>{_e(str(result or ''))}</td>"
            f"<td>{started}</td><td>{took}</td><td>{logs_cell}</td></tr>\n")


def _page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{_e(title)}</title><style>{STYLE}</style></head>
<body><h1>{_e(title)}</h1>
{body}
</body></html>
"""


def _files(build_dir: Path) -> list[tuple[str, int]]:
    out = []
    for path in build_dir.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.name.startswith(f".{INDEX}."):
            rel = path.relative_to(build_dir).as_posix()
            if rel != INDEX:
                out.append((rel, path.stat().st_size))
    return out


def _order(item: tuple[str, int]) -> tuple[int, str]:
    first = {"job-output.txt": 0, "build.json": 1}
    return first.get(item[0], 2), item[0]


def _href(rel: str) -> str:
    return html.escape("/".join(quote(part, safe="") for part in rel.split("/")), quote=True)


def _cls(result: object) -> str:
    return f' class="{result}"' if result in ("SUCCESS", "FAILURE", "TIMED_OUT", "ERROR", "NODE_FAILURE",
                                              "ABORTED") else ""


def _fact(value: object) -> str:
    return duration(value) if isinstance(value, float) else str(value)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _e(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)
