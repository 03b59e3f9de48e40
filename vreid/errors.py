"""The one base class of the errors a user fixes in their input (DESIGN.md: bad input gets a clear
error naming the file / line / field). Jobs print such an error as one ``error:`` block and exit
with status 2 instead of a traceback (:func:`vreid.cli.run_job`)."""

from __future__ import annotations


class InputError(ValueError):
    """A config, dataset, feature store or model directory that does not match what was expected;
    the message names the input (file, line, column, field) and what was expected."""


def root_cause(exc: BaseException) -> BaseException:
    """``exc``, or the exception a Ray task or actor method raised when ``exc`` is Ray's wrapper
    of it (``RayTaskError``, whose text adds the remote traceback)."""
    from ray.exceptions import RayTaskError

    while isinstance(exc, RayTaskError):  # checked first: it also subclasses the cause's type
        exc = exc.cause
    return exc


def input_error_of(exc: BaseException) -> InputError | None:
    """The :class:`InputError` behind ``exc`` (see :func:`root_cause`); None for any other error."""
    cause = root_cause(exc)
    return cause if isinstance(cause, InputError) else None
