"""Typed errors of the model package: each message says what to do next."""
from __future__ import annotations

from osteo_config.model import ModelConfigError  # noqa: F401  (raised by the config package)


class ModelError(Exception):
    """Base class of every error raised by :mod:`osteo_model`."""


class CheckpointMismatchError(ModelError):
    """A checkpoint was written by another architecture or another set of params.

    Args:
        path: the checkpoint file.
        field: which signature differs (``architecture`` or ``params``).
        found: the value stored in the checkpoint.
        expected: the value of the current run.
    """

    def __init__(self, path: str, field: str, found: str, expected: str) -> None:
        self.path, self.field, self.found, self.expected = path, field, found, expected
        super().__init__(
            f"{path}: checkpoint {field} signature {found!r} differs from this run's {expected!r}; "
            "resume only with the same model and params, or start a fresh run directory "
            "(or pass resume=False)"
        )


class NonFiniteLossError(ModelError, FloatingPointError):
    """The training loss became NaN or infinite; the run stops before the optimizer step.

    Args:
        step: optimizer steps completed before the failing batch.
        epoch: epoch of the failing batch.
        batch_index: index of the failing batch within its epoch.
        value: the loss value seen.
    """

    def __init__(self, step: int, epoch: int, batch_index: int, value: float) -> None:
        self.step, self.epoch, self.batch_index, self.value = step, epoch, batch_index, value
        super().__init__(
            f"loss is {value} at step {step} (epoch {epoch}, batch {batch_index}); "
            "lower the learning rate, check the channel normalisation and the inputs of this batch, "
            "then resume from the last checkpoint"
        )


class PoolIntegrityError(ModelError):
    """A texture-pool file is missing, has the wrong shape or fails its SHA-256 check."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}; re-run `osteo texture` to rebuild the texture pool")


class NotFittedError(ModelError):
    """A normaliser or baseline was used before ``fit``."""


class DescriptorInputError(ModelError, ValueError):
    """A vertebra lacks a descriptor the model was trained with (``model.moe.descriptors``), or it is not finite."""


class AugmentationError(ModelError, ValueError):
    """Fine-tuning augmentation (``model.augment``) cannot run as configured (the message says what is missing)."""


class AmbiguousFillValueError(AugmentationError):
    """``texture.fill_value`` >= 1 (or NaN): an in-mask Autocorrelation can equal it, so a pool's mask is ambiguous."""
