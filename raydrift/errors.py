"""Errors raised for user mistakes: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, unknown harness, too few resources).

    The message is one line naming what is wrong and what to do. The CLI prints it without a
    traceback and exits with :data:`EXIT_USAGE`.
    """


class ConfigError(UserError):
    """The configuration is invalid."""


EXIT_USAGE = 2
