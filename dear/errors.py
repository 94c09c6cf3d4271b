"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""


class DearError(Exception):
    """A problem with the user's configuration, inputs or environment, not a bug in dear."""
