"""Errors that reach the user as one clear line and exit status 2."""


class UsageError(Exception):
    """Bad input: not a git repository, a missing file, a malformed config, a second
    engine on the same tag, an unknown tag. Raised before anything is written."""
