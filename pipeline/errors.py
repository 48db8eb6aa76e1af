"""Errors that end a run before anything is written, each with one line naming the fix."""


class InputError(Exception):
    """Bad input or an unusable target, found before any write. Exit code 2.

    The message is folded onto one line: it is the only line the run prints on stderr, and text
    quoted from a server or a file may carry newlines.
    """

    exit_code = 2

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))
