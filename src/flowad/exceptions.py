"""Errors and warnings raised by flowad.

Every error derives from :class:`FlowadError` and every warning from
:class:`FlowadWarning`, so callers can catch the whole family at once.
"""

from __future__ import annotations


class FlowadError(Exception):
    """Base class of all flowad errors."""


class FlowadWarning(UserWarning):
    """Base class of all flowad warnings."""


class DataError(FlowadError, ValueError):
    """A job record file is unreadable or violates the Flow-Bench schema.

    Parameters
    ----------
    message
        What is wrong and how to fix it.
    path
        File (or ``archive.zip::member``) that contains the bad input.
    row
        1-based line number in that file, counting the header as line 1, or
        ``None`` when the problem concerns the whole file.
    field
        Column name involved, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = path
        self.row = row
        self.field = field
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"line {row}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class BadRunsWarning(FlowadWarning):
    """Some run files were skipped because they failed validation."""


class ModelFormatError(FlowadError):
    """A model folder is missing files or stores weights in an unsafe format."""


class NotFittedError(FlowadError, AttributeError):
    """A detector was used before ``fit`` was called."""


class UnmappedReplyError(FlowadError):
    """An LLM reply could not be mapped to a label."""


class BackendError(FlowadError):
    """An LLM backend failed to return a reply for a job."""
