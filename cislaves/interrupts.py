"""The signal policy, installed once at the command boundary (the fabfile), never by library code.

SIGTERM is an interrupt like Ctrl-C (KeyboardInterrupt), so every command cleans up for both. Cleanup
runs inside `shielded()`: a signal that arrives then is held and raised when the outermost shielded
block ends, so the cleanup finishes. Library code (the bake pipeline, the CI runner) only marks its
shielded blocks; it installs no handler, so it runs the same from worker threads, where Python allows
no signal handlers. Signals are delivered to the main thread only, so a worker thread's shield is a
no-op for signals and stops nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_state = threading.local()
_pending: list[int] = []  # signals held while the main thread was shielded
_installed = False


def install() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt in the main thread, unless shielded (then later)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("interrupts.install() belongs to the main thread (the command boundary)")
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    _installed = True


def installed() -> bool:
    return _installed


def _depth() -> int:
    return getattr(_state, "depth", 0)


def is_shielded() -> bool:
    """Whether the calling thread is inside a shielded block (a worker that stops on request asks this
    before raising, so it never cuts a cleanup short)."""
    return _depth() > 0


def _on_signal(signum, frame):
    if _depth() > 0:
        _pending.append(signum)
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Cleanup must finish: a SIGINT/SIGTERM arriving inside waits until the outermost block ends."""
    _state.depth = _depth() + 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _pending and threading.current_thread() is threading.main_thread():
            _pending.clear()
            raise KeyboardInterrupt
