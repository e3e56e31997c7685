"""The exit codes of `cislaves` and `fab`, named once so tasks, tests and the docs agree.

0 success; 1 a failure (a cloud, SSH, provisioning or check failed); 2 usage or configuration (a
bad argument, an unknown task or key, a missing credential: fix the command line or the file, a
retry will not help); 75 locked (another run holds the lock: EX_TEMPFAIL, cron simply tries again);
130 interrupted (SIGINT or SIGTERM; what the run made has been removed), like a shell's 128 + SIGINT.
"""
from __future__ import annotations

from cislaves.errors import ConfigError, Interrupted, Locked

OK = 0
FAILURE = 1
USAGE = 2  # usage or configuration
LOCKED = 75  # EX_TEMPFAIL
INTERRUPTED = 130

DOCUMENTED = {OK: "success", FAILURE: "failure", USAGE: "usage or configuration error",
              LOCKED: "locked: another run holds the lock", INTERRUPTED: "interrupted (SIGINT/SIGTERM)"}


def for_error(error: BaseException) -> int:
    """The exit code of a command that ended with `error`."""
    if isinstance(error, (Interrupted, KeyboardInterrupt)):
        return INTERRUPTED
    if isinstance(error, Locked):
        return LOCKED
    if isinstance(error, ConfigError):
        return USAGE
    return FAILURE
