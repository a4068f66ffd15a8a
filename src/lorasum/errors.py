"""Exception types.

Every error that a user can fix (a bad file, config, adapter, flag or missing
dependency) is a :class:`UserError`; the CLI prints its message on one line and
exits with status 2. Anything else is a bug and exits with status 1.
"""

from __future__ import annotations


class LorasumError(Exception):
    """Base class of all lorasum errors."""


class UserError(LorasumError):
    """An error the user can fix; the CLI prints the message and exits 2."""


class ConfigError(UserError):
    """An experiment config or a command-line value is invalid."""


class DataError(UserError):
    """A data file is missing, malformed or holds a bad record."""


class ModelError(UserError):
    """A base model cannot be found or loaded."""


class AdapterError(UserError):
    """A LoRA adapter folder is missing, malformed or incompatible."""


class OutputExistsError(UserError):
    """An output path exists and ``--overwrite`` was not given."""
