"""The one exception type for mistakes a user can fix (bad paths, sizes, text).

The CLI prints its message on one line and exits with status 2; library callers can
catch it like any ``ValueError``.
"""


class UserError(ValueError):
    """A problem with what the user asked for, explained in one line."""
