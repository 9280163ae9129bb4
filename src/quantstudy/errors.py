"""User-facing errors: the CLI prints these as one line, never a traceback."""


class QuantstudyError(Exception):
    """A problem with the user's input or environment, explained in one line."""
