"""One exception tree. str(error) is the one line a user sees: what happened and what to do next."""


class CislavesError(Exception):
    """Base of every error the tool raises on purpose; the fabfile prints it as one line."""


class ConfigError(CislavesError):
    """Bad configuration or argument: names the file/argument, the key and what was expected."""


class CloudError(CislavesError):
    """A cloud operation failed; the message names the cloud and the operation."""


class NotSupported(CloudError):
    """The cloud does not implement this operation."""

    def __init__(self, cloud, operation):
        super().__init__(f"{cloud}: '{operation}' is not supported by this cloud")
        self.cloud = cloud
        self.operation = operation


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


class GerritError(CislavesError):
    """Talking to Gerrit failed (connection, host key, command)."""
