"""The errors hessfree raises for bad input, so callers can tell them from bugs.

Every check of a user's argument, setting, file or batch raises :class:`InputError` (a
``ValueError``) or :class:`InputTypeError` (a ``TypeError``) with one line naming what was wrong
and what was expected. The command line turns exactly these (and operating-system errors on
files, such as a full disk) into a one-line message and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "InputTypeError", "RunError"]


class InputError(ValueError):
    """A bad value given by the user (argument, setting, file content, batch)."""


class InputTypeError(TypeError):
    """An argument of the wrong kind given by the user."""


class RunError(RuntimeError):
    """A training run stopped on a fault it reports cleanly (e.g. a full disk).

    The message says what was kept (committed rows, the last checkpoint) and how to resume.
    """
