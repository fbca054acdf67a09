"""The registry's promotion lock: one promotion, registration, approval or rollback at a time per registry store.

The lock lives in the **registry store** (``RegistryConfig.store_uri``: ``registry.lock_uri``,
else the tracking database), never in the MLflow tracking server: an ``http(s)://``
server offers no lock, so a deployment behind one names a database of its own.

* PostgreSQL store: a session-level advisory lock (``pg_try_advisory_lock``)
  on a dedicated connection, polled until ``timeout_s``; PostgreSQL releases it
  if the holder dies. Every client of one PostgreSQL store excludes every other.
* SQLite store: an exclusive ``fcntl.flock`` on ``<database>.lock`` beside
  the database file; the kernel releases it if the holder dies (one machine only).

Everything that reads the aliases and then moves them runs inside this lock,
so the champion is always re-read after the lock is held.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from registry.errors import RegistryConfigError, RegistryLockError

# one 64-bit advisory-lock key for the whole registry (signed, as PostgreSQL's bigint)
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"osteo-registry-promotion").digest()[:8], "big", signed=True)
POLL_S = 0.05


def sqlite_path(tracking_uri: str) -> Path:
    """Database file of a ``sqlite:///<path>`` URI (relative paths against the working directory)."""
    if not tracking_uri.startswith("sqlite:///"):
        raise RegistryConfigError(f"{tracking_uri!r} is not a sqlite:/// URI")
    return Path(tracking_uri[len("sqlite:///"):]).expanduser()


@contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryLockError(f"registry lock {path} still held after {timeout_s} s: another "
                                            "promotion is running; retry, or raise registry.lock_timeout_s") from None
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _advisory_lock(tracking_uri: str, timeout_s: float) -> Iterator[None]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(tracking_uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + timeout_s
            while not conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar():
                conn.rollback()
                if time.monotonic() >= deadline:
                    raise RegistryLockError(f"PostgreSQL advisory lock {ADVISORY_KEY} still held after {timeout_s} s: "
                                            "another promotion is running; retry, or raise registry.lock_timeout_s")
                time.sleep(POLL_S)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                conn.commit()
    finally:
        engine.dispose()


@contextmanager
def registry_lock(store_uri: str, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold the registry lock of the registry store ``store_uri`` for the ``with`` body.

    Raises:
        RegistryLockError: not acquired within ``timeout_s``.
        RegistryConfigError: the URI is neither SQLite nor PostgreSQL.
    """
    if store_uri.startswith("postgresql"):
        with _advisory_lock(store_uri, timeout_s):
            yield
    elif store_uri.startswith("sqlite:///"):
        db = sqlite_path(store_uri)
        with _file_lock(db.with_name(db.name + ".lock"), timeout_s):
            yield
    else:
        raise RegistryConfigError(f"registry store {store_uri!r}: the registry lock needs sqlite:/// or postgresql:// "
                                  "(an MLflow server http(s):// URI holds no lock: set registry.lock_uri)")
