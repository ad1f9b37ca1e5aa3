"""Errors raised for user mistakes: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, unknown harness, too few resources).

    The message is one line naming what is wrong and what to do. The CLI prints it without a
    traceback and exits with :data:`EXIT_USAGE`.
    """


class ConfigError(UserError):
    """The configuration is invalid."""


EXIT_OK = 0
"""The run completed and every update that trained either went live or was rejected by the gate."""

EXIT_FAILED = 1
"""The run failed (a failure inside the run: an actor that could not be replaced, a bug)."""

EXIT_USAGE = 2
"""A user mistake (config, harness, files, cluster size): one line on stderr, nothing was started."""

EXIT_UPDATES_FAILED = 3
"""The run completed, but at least one update failed with an exception (not a gate rejection): the
model it should have adapted stayed as it was. ``ray job submit``, CI and cron see a non-zero code."""

EXIT_SIGNAL_BASE = 128
"""A run stopped by a signal exits with ``128 + signal``: 130 for SIGINT (Ctrl-C), 143 for SIGTERM
(``ray job stop``, ``timeout``, Kubernetes)."""
