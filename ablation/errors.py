"""The errors a user can fix: bad input, a missing file or run, an unusable store.

`python -m ablation` prints a `UserError` as one line (``error: ...``) and exits 2; any other
exception is a defect of the platform and keeps its traceback (see `ablation.__main__.main`).
Raise a `UserError` where input is refused, never a bare ValueError: that one is a bug.
"""
from __future__ import annotations

REPORT_TO = "the project's issue tracker"  # where the CLI asks for a defect's traceback


class UserError(Exception):
    """Input the platform refuses; the message names the file, key or value and what is allowed."""


class BadInput(UserError, ValueError):
    """A value, file or option given by the user cannot be used."""


class NotFound(UserError, LookupError):
    """A named run, study, experiment or file does not exist."""


class StoreError(BadInput):
    """The tracking store, the trial queue or a stored artifact cannot be used; the message names it
    and how to recover."""
