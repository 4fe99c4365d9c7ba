"""Errors a user of nmip-agent can see, each with its message and exit code.

    AgentError                      exit 2 unless a subclass says otherwise
    ├── UsageError                  a wrong argument, a missing file
    ├── KeyFileError                a key file that cannot be created or read
    ├── ProfileError                a profile manifest or recipe that cannot be used
    └── UnreadableInput             a file that is not DICOM or cannot be parsed

Messages name paths, tags and opaque references only, never a value read from a dataset:
pydicom's own messages can quote values, so they are never passed on (see `UnreadableInput`).
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error nmip-agent reports to its user."""

    exit_code = 2


class UsageError(AgentError):
    """A command-line argument or input path that cannot be used."""


class KeyFileError(AgentError):
    """The pseudonymisation key file cannot be created or read."""


class ProfileError(AgentError):
    """A profile manifest or one of its recipes cannot be used."""


class UnreadableInput(AgentError):
    """A file that is not DICOM, or that pydicom cannot parse.

    The message carries the exception's class name only: pydicom's text can quote element values.
    """

    def __init__(self, path: object, cause: BaseException | str) -> None:
        kind = cause if isinstance(cause, str) else type(cause).__name__
        super().__init__(f"{path}: not a readable DICOM file ({kind})")
        self.kind = kind
