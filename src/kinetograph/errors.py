"""User-facing errors. Each carries a one-line message naming the problem and the fix.

The CLI prints `error: <message>` and exits with `exit_code`: 2 for bad input or arguments,
1 for failures at run time. Internal invariants use `assert`, not these.
"""

from __future__ import annotations


class KinetographError(Exception):
    """Base of every error meant for a user; never shown as a traceback."""

    exit_code = 1


class InputError(KinetographError):
    """A user-supplied value, path or file is unusable (bad image, bad size, bad option)."""

    exit_code = 2


class CheckpointError(KinetographError):
    """A checkpoint is missing, unsafe (pickle), of an unknown layout, or does not match the model."""

    exit_code = 2


class OutputError(KinetographError):
    """An output cannot be written (unsupported format, missing encoder, unwritable place)."""

    exit_code = 1
