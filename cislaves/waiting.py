"""The one bounded wait loop (bottom floor): poll real state with a deadline and backoff.

A probe returns the result when the wait is over, or `Pending(seen)` (or None) while it is not; the
loop remembers the last state seen, and the timeout names it. No driver keeps its own copy of it.
"""
from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from cislaves import progress as progress_mod
from cislaves.errors import WaitTimeout

T = TypeVar("T")


class Pending:
    """A probe's "not yet", carrying what it saw (a state, an error): the timeout message names it."""

    __slots__ = ("seen",)

    def __init__(self, seen: Any):
        self.seen = seen

    def __repr__(self) -> str:
        return f"Pending({self.seen!r})"


def wait_for(probe: Callable[[], Any], what: str, timeout: float, *, first_delay: float = 0.05,
             max_delay: float = 2.0, factor: float = 1.6, describe: Callable[[], str] | None = None,
             clock: Callable[[], float] = time.monotonic, progress: Callable[[str, Any, float], None] | None = None,
             ) -> Any:
    """Poll `probe` until it returns something other than None/False/Pending, with backoff, until `timeout`.

    Returns what the probe returned. On timeout raises WaitTimeout naming `what`, the time waited and
    the last state seen (the last Pending's `seen`, else `describe()` if given); the exception's
    `last` attribute holds that state. Exceptions from `probe` propagate (a probe decides which errors
    are final). `progress(what, seen, elapsed)`, if given, is told of every state seen; by default
    cislaves.progress reports the wait (a log line every 30 s, a live line on a terminal), so a
    `what` should name the thing waited for and a probe's Pending(seen) its current state.
    """
    started = clock()
    deadline = started + timeout
    delay = first_delay
    seen: Any = None
    tracker = progress_mod.Tracker(what, timeout, clock=clock) if progress is None else None
    try:
        while True:
            result = probe()
            if isinstance(result, Pending):
                seen = result.seen
            elif result is not None and result is not False:
                return result
            now = clock()
            if tracker is not None:
                tracker.update(seen, now - started)
            else:
                progress(what, seen, now - started)
            if now >= deadline:
                last = seen
                if last is None and describe is not None:
                    try:
                        last = describe()
                    except Exception as exc:  # describing must not hide the timeout
                        last = f"could not read state: {exc}"
                tail = f" (last seen: {last})" if last is not None else ""
                error = WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{tail}")
                error.last = last
                raise error
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * factor, max_delay)
    finally:
        if tracker is not None:
            tracker.done()
