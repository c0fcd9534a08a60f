"""The one user-facing exception type.

Anything a user can cause (a bad flag, a malformed config, a missing or foreign file)
raises :class:`FaganError` with a message meant to be read as is. The command line
prints that message on one line and exits with status 2.
"""


class FaganError(Exception):
    """An error caused by user input, with a message written for the user."""
