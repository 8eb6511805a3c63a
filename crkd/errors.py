"""Exceptions with one-line messages that say what is wrong and how to fix it."""


class CrkdError(Exception):
    """Base class: a user-facing problem, reported as one line."""


class ConfigError(CrkdError, ValueError):
    """An invalid configuration value, key or override."""


class DataError(CrkdError):
    """Missing or inconsistent data files."""


class CheckpointError(CrkdError):
    """A checkpoint that does not fit the model or cannot be read."""


class NonFiniteLoss(CrkdError, FloatingPointError):
    """A loss term became NaN or inf; training stops rather than continue on garbage."""

    def __init__(self, stage: str, epoch: int, step: int, term: str, value: float):
        self.stage, self.epoch, self.step, self.term, self.value = stage, epoch, step, term, value
        super().__init__(
            f"{stage}: loss term '{term}' is {value} at epoch {epoch}, step {step}; "
            f"lower the learning rate or check the term's settings"
        )

    def __reduce__(self):  # picklable, so Ray can carry it from a worker to the driver
        return type(self), (self.stage, self.epoch, self.step, self.term, self.value)
