"""One exception tree. str(error) is the one line a user sees: what happened and what to do next."""


class CislavesError(Exception):
    """Base of every error the tool raises on purpose; the fabfile prints it as one line."""


class ConfigError(CislavesError):
    """Bad configuration or argument: names the file/argument, the key and what was expected."""


class CloudError(CislavesError):
    """A cloud operation failed; the message names the cloud and the operation.

    The provider's own error code travels as data (`code`: EC2's "DependencyViolation", GCE's
    "rateLimitExceeded"; `status`: the HTTP status, e.g. 409 on OpenStack), so callers decide by it,
    never by matching message text.
    """

    def __init__(self, message: str = "", *, cloud: str | None = None, operation: str | None = None,
                 code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.cloud = cloud
        self.operation = operation
        self.code = code
        self.status = status


class NotSupported(CloudError):
    """The cloud does not implement this operation."""

    def __init__(self, cloud, operation, why: str = ""):
        super().__init__(f"{cloud}: '{operation}' is not supported by this cloud{why and f' ({why})'}",
                         cloud=cloud, operation=operation)


class WaitTimeout(CloudError):
    """A bounded wait ran out; the message says what it waited for and what it saw last."""


class SSHError(CislavesError):
    """SSH could not connect, authenticate or run a command."""


class ProvisionError(CislavesError):
    """The provisioning script (or an extra script) failed."""


class CheckFailed(CislavesError):
    """One or more distribution checks failed."""


class StateError(CislavesError):
    """No current instance, several without a choice, or a corrupt state file."""


class Interrupted(CislavesError):
    """SIGINT or SIGTERM arrived; cleanup has run."""


class Locked(CislavesError):
    """Another process holds the lock this command needs (exit code 75, like EX_TEMPFAIL)."""


class GerritError(CislavesError):
    """Talking to Gerrit failed (connection, host key, command)."""
