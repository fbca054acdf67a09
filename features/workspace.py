"""One run per data folder: an exclusive ``flock`` on ``<interim>/.osteo-workspace.lock``.

Ingestion and the texture stage rewrite their folders (tables, manifests) and ingestion prunes ROI
files no row references; two runs on one data folder would interleave those writes or delete files
the other just wrote. Each stage therefore holds this lock for its whole run. The kernel releases a
``flock`` when its holder dies (``kill -9`` included), so a crashed run never leaves a stale lock;
the file's content (pid, host, start time, stage) only names the holder in the error a second run
gets. The lock file sits beside the stage folders, never inside a DVC output (its content changes
every run).
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import functools
import inspect
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

from features.errors import IngestSetupError

LOCK_NAME = ".osteo-workspace.lock"


class WorkspaceBusyError(IngestSetupError):
    """Another run holds the data folder's lock (any features stage raises it, not only ingestion)."""


def lock_path(stage_dir: str | Path) -> Path:
    """The lock of the data folder holding ``stage_dir`` (``<interim>/ingest`` -> ``<interim>/.osteo-workspace.lock``)."""
    return Path(stage_dir).resolve().parent / LOCK_NAME


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text() or "{}")
        return (f"pid {h.get('pid')} on host {h.get('host')}, stage {h.get('stage')}, "
                f"started {h.get('started')}")
    except (OSError, ValueError):
        return "a process that has not yet recorded itself"


@contextmanager
def workspace_lock(stage_dir: str | Path, stage: str) -> Iterator[Path]:
    """Hold the data folder's exclusive lock while the block runs.

    Args:
        stage_dir: the stage's output folder (the lock lives in its parent).
        stage: the stage's name, recorded for the error another run gets.

    Yields:
        The lock file's path.

    Raises:
        WorkspaceBusyError: another process holds the lock; the message names it (pid, host, stage,
            start time) and the fix.
    """
    path = lock_path(stage_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceBusyError(
                f"the data folder {path.parent} is in use by another run ({_holder(path)}; lock {path}): "
                f"wait for that run to finish, or give this run its own data folder (paths.interim); the lock "
                f"is released as soon as its holder exits, even when it is killed") from None
        # the holder's record, for the error above (rewritten in place: the lock is on the inode)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        yield path
    finally:
        os.close(fd)   # closing the descriptor releases the flock


def holds_workspace_lock(stage: str, folder_arg: str = "out_dir") -> Callable[[F], F]:
    """Decorate a stage's entry point so its whole run holds :func:`workspace_lock` on ``folder_arg``'s folder."""
    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            folder = sig.bind(*args, **kwargs).arguments[folder_arg]
            with workspace_lock(folder, stage):
                return fn(*args, **kwargs)
        return run  # type: ignore[return-value]
    return wrap
