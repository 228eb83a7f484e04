"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class JailkitError(Exception):
    """A problem with the input or the environment, not a bug in jailkit."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
