"""The project's expected failures: one base, so that every command handles them in one place.

A ``RanksweepError`` is bad input or an unusable environment (a malformed file, an unknown trial, a
cache that cannot be written): the command line prints its message as one line and exits with its
``exit_code`` (2), without a traceback and after keeping whatever finished. Anything else is a bug and
keeps its traceback. Each layer's errors subclass it where they are raised (``SpecError`` in
``sweeps/spec.py``, ``NotPrepared`` in ``core/preparation.py``, …); the ones several core modules
raise live here, so that nothing imports in a circle.
"""


class RanksweepError(Exception):
    """Base of every expected failure; its message names the field, file or run at fault."""

    exit_code = 2


class ConfigError(RanksweepError, ValueError):
    """A trial configuration value is invalid; the message names the field."""


class TeacherError(RanksweepError, ValueError):
    """Teacher scores or imported candidates are missing or malformed; the message names the file (and line)."""
