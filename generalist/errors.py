"""User-facing error types: each message says what is wrong and how to fix it."""


class GeneralistError(Exception):
    """Base of every error the CLI reports as one line and a non-zero exit (no traceback)."""

    exit_code = 2


class ConfigError(GeneralistError, ValueError):
    """A config field, recipe name or override is invalid."""


class DataError(GeneralistError):
    """A dataset is missing, unreadable or fails its checksum."""


class CheckpointError(GeneralistError):
    """A checkpoint is missing, corrupt, truncated or from a different config."""


class RunFolderError(GeneralistError):
    """The run folder cannot be used as asked (already holds a run, nothing to resume)."""


class TrainingDiverged(GeneralistError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class BackendError(GeneralistError):
    """A learner or the coordinator failed, hung, or the cluster cannot hold the run."""

    exit_code = 4
