"""The one exception type that reaches the user as a single clear line."""


class CollapseError(Exception):
    """Bad input or an unrecoverable run condition.

    The message names the key or file at fault and the fix; the CLI prints it
    as one line and exits with code 2, without a traceback.
    """
