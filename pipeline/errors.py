"""Errors that end a run before anything is written, each with one line naming the fix."""


class InputError(Exception):
    """Bad input or an unusable target, found before any write. Exit code 2."""

    exit_code = 2
