"""What a wait is waiting for, while it waits: a log line at least every 30 s, and a live line on a
terminal ("waiting for ami-0abc: pending, 2m10s of 30m").

Waits of up to an hour used to print nothing. cislaves.waiting.wait_for reports through `track()`
by default, and provisioning (cislaves.distros.provision) through `Heartbeat`, which also names the
script's latest output line. Thread-aware: a worker thread (a rebake target, a CI build) logs with
its thread's name as the prefix, since several wait at once; the live line is drawn only for the
main thread, only when stderr is a terminal, and only at INFO verbosity (never with --quiet).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

LOG_EVERY = 30.0  # seconds between log lines of one wait
LIVE_EVERY = 1.0  # seconds between redraws of the live line
_live_lock = threading.Lock()
_live_shown = False


def duration(seconds: float) -> str:
    """2m10s, 30m, 1h05m, 1h, 4s: short enough for a live line."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def line(what: str, seen: Any, elapsed: float, timeout: float | None) -> str:
    """The one line that says what a wait waits for, what it saw last and how long it has waited."""
    state = f": {_short(seen)}" if seen is not None and str(seen) != "" else ""
    of = f" of {duration(timeout)}" if timeout else ""
    return f"waiting for {what}{state}, {duration(elapsed)}{of}"


class Tracker:
    """One wait's reporter: update() on every poll, done() at the end (clears the live line)."""

    def __init__(self, what: str, timeout: float | None, clock: Callable[[], float] = time.monotonic):
        self.what, self.timeout, self.clock = what, timeout, clock
        self.started = clock()
        self.next_log = self.started + LOG_EVERY
        self.next_live = self.started
        self.live = live_allowed()

    def update(self, seen: Any, elapsed: float | None = None, text: str | None = None) -> None:
        if elapsed is None:
            elapsed = self.clock() - self.started
        now = self.started + elapsed  # the caller's reading of the same clock
        text = text or line(self.what, seen, elapsed, self.timeout)
        if now >= self.next_log:
            self.next_log = now + LOG_EVERY
            clear_live()
            log.info("%s%s", prefix(), text)
        elif self.live and now >= self.next_live:
            self.next_live = now + LIVE_EVERY
            show_live(text)

    def done(self) -> None:
        if self.live:
            clear_live()


def track(what: str, timeout: float | None) -> Tracker:
    return Tracker(what, timeout)


class Heartbeat:
    """For a step that blocks (a remote script): a thread that, until stop(), says every LOG_EVERY
    seconds (and on the live line, every second) what runs, for how long, and `latest()`'s text
    (the script's latest output line). It waits on an event, so stop() ends it at once."""

    def __init__(self, what: str, latest: Callable[[], str | None], timeout: float | None = None):
        self.what, self.latest, self.timeout = what, latest, timeout
        self.live = live_allowed()
        self.label = prefix()  # the caller's thread, not this helper's
        self.stopped = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat {what}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        if self.live:
            clear_live()

    def text(self) -> str:
        latest = self.latest()
        tail = f", latest output: {_short(latest, 100)}" if latest else ""
        of = f" of {duration(self.timeout)}" if self.timeout else ""
        return f"running {self.what}, {duration(time.monotonic() - self.started)}{of}{tail}"

    def _run(self) -> None:
        next_log = self.started + LOG_EVERY
        while not self.stopped.wait(LIVE_EVERY if self.live else max(0.0, next_log - time.monotonic())):
            now = time.monotonic()
            if now >= next_log:
                next_log = now + LOG_EVERY
                clear_live()
                log.info("%s%s", self.label, self.text())
            elif self.live:
                show_live(self.text())


def prefix() -> str:
    """"[thread name] " in a worker thread, "" in the main thread."""
    thread = threading.current_thread()
    return "" if thread is threading.main_thread() else f"[{thread.name}] "


def live_allowed() -> bool:
    """A live line only for the main thread, on a terminal, when INFO lines are shown."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        if not sys.stderr.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    return logging.getLogger().isEnabledFor(logging.INFO)


class _ClearLive(logging.Filter):
    """On the handlers of the root logger: a log line first erases the live line, so the two never
    share a row on the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        clear_live()
        return True


def _hook_handlers() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _ClearLive) for f in handler.filters):
            handler.addFilter(_ClearLive())


def show_live(text: str) -> None:
    global _live_shown
    _hook_handlers()
    with _live_lock:
        sys.stderr.write("\r\x1b[K" + text[:_width()])
        sys.stderr.flush()
        _live_shown = True


def clear_live() -> None:
    """Erase the live line (before a log line, and when a wait ends)."""
    global _live_shown
    with _live_lock:
        if _live_shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            _live_shown = False


def _width() -> int:
    import shutil

    return max(20, shutil.get_terminal_size((100, 24)).columns - 1)


def _short(value: Any, limit: int = 80) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
