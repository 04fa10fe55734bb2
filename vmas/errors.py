"""One error family for everything a user can get wrong.

Each error carries a one-line message naming the thing (file, key, model) and the fix. The CLI prints
``str(err)`` and exits non-zero, never a stack trace; library users can catch :class:`VmasError`.
"""


class VmasError(Exception):
    """Base class: a problem with user input, config or environment, described in one line."""


class ConfigError(VmasError):
    """A config file or override is wrong (unknown key, wrong type, inconsistent sizes)."""


class MediaError(VmasError):
    """A video or audio file cannot be read or written (missing, corrupt, no stream, zero frames)."""


class CheckpointError(VmasError):
    """A checkpoint is missing, in an unknown format, or does not fit the model."""


class DataError(VmasError):
    """A dataset item is unusable (silent audio, too short, inconsistent shard)."""
