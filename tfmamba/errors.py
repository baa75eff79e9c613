"""Exceptions the library raises for bad input, so callers (the CLI, the sweep) can report them cleanly."""


class TFMambaError(Exception):
    """Base class: an error whose message is meant for the user, not a traceback."""


class ConfigError(TFMambaError, ValueError):
    """A configuration file or value is wrong (unknown key, value out of range)."""


class DataError(TFMambaError, ValueError):
    """A corpus, manifest, audio file or feature cache is missing, corrupt or inconsistent."""


class TrainingError(TFMambaError, RuntimeError):
    """Training could not go on (a NaN or Inf loss, for instance); carries where it stopped."""
