"""The errors a user's own input causes (a path, a config value, a data file, a checkpoint). The command line
prints them as one message with a hint, without a traceback (``DENSECNN_DEBUG=1`` shows it); everything else is
a bug and keeps its traceback."""


class UserError(ValueError):
    """Bad input from the user: the message names the file or key and what is wrong with it."""


class ConfigError(UserError):
    """A config value or command-line argument that cannot work."""
