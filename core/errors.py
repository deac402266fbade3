"""Errors of the core that several layers raise (kept apart so that nothing imports in a circle)."""


class ConfigError(ValueError):
    """A trial configuration value is invalid; the message names the field."""


class TeacherError(ValueError):
    """Teacher scores or imported candidates are missing or malformed; the message names the file (and line)."""
