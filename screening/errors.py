"""Typed errors of ``osteo screen``: each message names the item and what to do.

Data faults of one study are ingestion's typed errors (quarantined, the batch continues);
the errors here stop a batch (no usable model, train/serve skew) or a review action.
"""
from __future__ import annotations


class ScreeningError(Exception):
    """A screening batch or review action cannot proceed (the message says what to fix)."""


class ModelNotFoundError(ScreeningError):
    """The model URI does not resolve: no such registered model, version or alias."""


class TrainServeSkewError(ScreeningError):
    """The model was trained on pools made differently from what this screening run produces."""


class ReviewError(ScreeningError):
    """An approve/reject names an unknown batch, a batch without pending reports, or no reviewer."""
