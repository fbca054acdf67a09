"""Resumable checkpoints: what is saved, how it is verified, how RNG state travels.

A checkpoint holds everything needed to continue a run bit-for-bit on CPU:
model, optimizer, LR scheduler and AMP scaler states; the RNG states of torch
(CPU and CUDA), numpy and python; the data-order position (epoch, batches
already consumed in that epoch) and the optimizer step; plus two signatures
that guard against resuming the wrong run: the **architecture signature**
(class + every parameter/buffer name, shape and dtype) and the **params
digest** chosen by the caller (a hash of the ``model:``/``train:`` sections).
A mismatch raises :class:`~osteo_model.errors.CheckpointMismatchError`.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from features.atomic import atomic_writer
from osteo_model.errors import CheckpointMismatchError

FORMAT_VERSION = 1


def architecture_signature(model: nn.Module) -> str:
    """SHA-256 (16 hex) of the model class and its state-dict layout (names, shapes, dtypes)."""
    layout = [type(model).__name__] + [
        f"{name}:{tuple(t.shape)}:{t.dtype}" for name, t in sorted(model.state_dict().items())
    ]
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU, and every CUDA device when available)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (unique temporary file, fsync, rename, :mod:`features.atomic`): a crash
    never leaves a half-written checkpoint and two runs never share a temporary file."""
    path = Path(path)
    with atomic_writer(path) as fh:
        torch.save({"format_version": FORMAT_VERSION, **state}, fh)
    return path


def load_checkpoint(path: Path, architecture: str, params_digest: str,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and verify its signatures.

    Args:
        path: checkpoint file.
        architecture: :func:`architecture_signature` of the model about to be restored.
        params_digest: the current run's params digest.
        map_location: where tensors are loaded.

    Raises:
        CheckpointMismatchError: another architecture or other params wrote it.
    """
    # Our own file (RNG states include numpy arrays/tuples), hence weights_only=False.
    state = torch.load(Path(path), map_location=map_location, weights_only=False)
    if state.get("architecture") != architecture:
        raise CheckpointMismatchError(str(path), "architecture", str(state.get("architecture")), architecture)
    if state.get("params_digest") != params_digest:
        raise CheckpointMismatchError(str(path), "params", str(state.get("params_digest")), params_digest)
    return state
