"""Append-only, keyed promotion log: table ``osteo_registry_log`` in the registry store.

Where it lives: the **registry store** (``RegistryConfig.store_uri``): ``registry.lock_uri``
when set, else the tracking database. With an MLflow tracking server (``http(s)://``)
the clients have no database of MLflow's to write to, so the store is a database of
the registry's own, the same one that holds the promotion lock (:mod:`registry.lock`):
one place, one backup, one sequence. The older unkeyed table ``osteo_registry_audit`` of
earlier versions is neither read nor changed.

Why a table (and not an artifact per event): it orders events by one sequence and the
database itself makes it append-only:

* triggers reject every ``UPDATE`` and ``DELETE`` (and ``TRUNCATE`` on PostgreSQL);
* each row stores ``hash = HMAC-SHA256(key, prev_hash + canonical row)``, a keyed hash
  chain: a row edited, inserted or removed behind the triggers' back, or written by
  someone holding the database but not the key, is found by :func:`verify_chain`. Each
  row carries ``key_id`` (HMAC of a fixed label, never the key), so a row written with
  another key is named as such. Removing the *newest* rows leaves a valid shorter chain:
  the ``osteo.event.<seq>`` version tags in MLflow are the second witness.

The key (>= 32 bytes) comes from ``registry.audit_key_env`` / ``registry.audit_key_file``
(:func:`load_audit_key`); the public :data:`DEMO_AUDIT_KEY` only where
``registry.allow_demo_audit_key`` is true *and* the store is a local SQLite file.

Rows are written only while the registry lock is held, so the chain is linear. Events:
``register`` | ``intent`` | ``promote`` | ``refuse`` | ``await_approval`` | ``approve`` |
``reject`` | ``rollback`` | ``abort``. An ``intent`` row (payload: the alias/tag operations
and their undo) is written before any alias moves; the event that completes it carries
``payload.intent_seq``; an intent nobody completed is what ``osteo registry repair`` finishes.

Columns: ``seq`` (int, order), ``ts`` (ISO 8601 UTC), ``event``, ``model_name``, ``version``,
``actor``, ``reason``, ``champion_before``, ``champion_after``, ``data_version``, ``payload``
(JSON: metrics, gate report, tags, digest...), ``key_id``, ``prev_hash``, ``hash``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import sqlalchemy as sa

from registry.errors import AuditKeyError, AuditLogError

TABLE = "osteo_registry_log"
GENESIS = "0" * 64
MIN_KEY_BYTES = 32
# public, documented demo key: only for a local SQLite store (the demo); never for a PostgreSQL store
DEMO_AUDIT_KEY = b"osteo-demo-registry-audit-key-public-not-secret-v1"
_FIELDS = ("ts", "event", "model_name", "version", "actor", "reason", "champion_before", "champion_after",
           "data_version", "payload", "key_id")

_meta = sa.MetaData()
_table = sa.Table(
    TABLE, _meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    *(sa.Column(f, sa.Text, nullable=f in ("version", "champion_before", "champion_after", "data_version"))
      for f in _FIELDS),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
)

_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE} "
    f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE} "
    f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END",
]
_PG_TRIGGERS = [
    f"CREATE OR REPLACE FUNCTION {TABLE}_append_only() RETURNS trigger AS $$ BEGIN "
    f"RAISE EXCEPTION '{TABLE} is append-only'; END; $$ LANGUAGE plpgsql",
    f"CREATE OR REPLACE TRIGGER {TABLE}_no_change BEFORE UPDATE OR DELETE ON {TABLE} "
    f"FOR EACH ROW EXECUTE FUNCTION {TABLE}_append_only()",
    f"CREATE OR REPLACE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
    f"FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_append_only()",
]


# --------------------------------------------------------------------------- the key

def key_id(key: bytes) -> str:
    """Fingerprint of an audit key (16 hex of an HMAC of a fixed label): names a key, reveals nothing of it."""
    return hmac.new(key, b"osteo-registry-audit-key-id", hashlib.sha256).hexdigest()[:16]


def is_local_store(store_uri: str) -> bool:
    """A SQLite store on this machine (the only place the demo key is accepted)."""
    return store_uri.startswith("sqlite:///")


def check_key(key: bytes, store_uri: str, source: str = "key") -> bytes:
    """``key`` if it may sign the log of ``store_uri``.

    Raises:
        AuditKeyError: shorter than 32 bytes, or the demo key on a store other than local SQLite.
    """
    if len(key) < MIN_KEY_BYTES:
        raise AuditKeyError(f"audit key from {source} has {len(key)} bytes, needs >= {MIN_KEY_BYTES}: generate one "
                            "with `python -c 'import secrets; print(secrets.token_hex(32))'`")
    if hmac.compare_digest(key, DEMO_AUDIT_KEY) and not is_local_store(store_uri):
        raise AuditKeyError(f"the public demo audit key may only sign a local SQLite store, not {_safe(store_uri)}: "
                            "set registry.audit_key_env / registry.audit_key_file to a secret key")
    return key


def _safe(uri: str) -> str:
    """A URI without its password (for messages)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:                                  # not a SQLAlchemy URL
        return uri.split("@")[-1]


def load_audit_key(key_env: str, key_file: str | Path, allow_demo_key: bool, store_uri: str) -> tuple[bytes, str]:
    """The HMAC key of the audit chain: ``$key_env``, else ``key_file`` (mode 0600), else the demo key.

    Returns:
        (key, source) with source ``env``, ``file`` or ``demo``.

    Raises:
        AuditKeyError: no key, a short key, a key file others can read, or the demo key off a local SQLite store.
    """
    value = os.environ.get(key_env, "").strip() if key_env else ""
    if value:
        return check_key(value.encode("utf-8"), store_uri, f"${key_env}"), "env"
    path = Path(str(key_file)).expanduser() if key_file else None
    if path is not None and path.is_file():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise AuditKeyError(f"the audit key file {path} is readable by others (mode {mode:04o}): `chmod 600 {path}`")
        return check_key(path.read_bytes().strip(), store_uri, str(path)), "file"
    if allow_demo_key and is_local_store(store_uri):
        return DEMO_AUDIT_KEY, "demo"
    why = ("the demo key is only for a local SQLite store" if allow_demo_key
           else "registry.allow_demo_audit_key is false")
    raise AuditKeyError(f"no registry audit key: ${key_env} is unset and {key_file} does not exist ({why}); "
                        f"export {key_env}=<64 hex chars> or write the key to {key_file} (chmod 600)")


def default_key(store_uri: str, key: bytes | None) -> bytes:
    """``key``, or the demo key where the store is local SQLite (library callers and tests); else an error."""
    if key is not None:
        return check_key(key, store_uri)
    if is_local_store(store_uri):
        return DEMO_AUDIT_KEY
    raise AuditKeyError(f"no audit key given for the store {_safe(store_uri)}: pass the key of "
                        "registry.audit_key_env / audit_key_file (registry.audit.load_audit_key)")


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class AuditEvent:
    """One row of the promotion log."""

    seq: int
    ts: str
    event: str
    model_name: str
    version: str | None
    actor: str
    reason: str
    champion_before: str | None
    champion_after: str | None
    data_version: str | None
    payload: dict[str, Any]
    key_id: str
    prev_hash: str
    hash: str

    def summary(self) -> dict[str, Any]:
        """Who/what/when/why without the payload (what goes into the version tag)."""
        return {k: getattr(self, k) for k in ("seq", "ts", "event", "model_name", "version", "actor", "reason",
                                               "champion_before", "champion_after", "data_version")}


def engine_for(store_uri: str) -> sa.engine.Engine:
    """A short-lived engine on the registry store (no pool kept between calls)."""
    args = {"timeout": 30} if store_uri.startswith("sqlite") else {"connect_timeout": 10}
    return sa.create_engine(store_uri, poolclass=sa.pool.NullPool, connect_args=args)


def ensure_table(engine: sa.engine.Engine) -> None:
    """Create the table and its append-only triggers when absent (idempotent)."""
    _meta.create_all(engine, checkfirst=True)
    statements = _PG_TRIGGERS if engine.dialect.name == "postgresql" else _SQLITE_TRIGGERS
    with engine.begin() as conn:
        for stmt in statements:
            conn.exec_driver_sql(stmt)


def _strict(value: Any) -> Any:
    """NaN/inf -> None recursively, so every payload is strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _row_hash(key: bytes, prev_hash: str, values: Mapping[str, Any]) -> str:
    blob = json.dumps([prev_hash] + [values[f] for f in _FIELDS], separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, blob.encode(), hashlib.sha256).hexdigest()


def append(store_uri: str, event: str, model_name: str, version: str | None, actor: str, reason: str,
           champion_before: str | None, champion_after: str | None, data_version: str | None,
           payload: Mapping[str, Any], *, key: bytes | None = None) -> AuditEvent:
    """Append one event, signed with ``key`` (see :func:`default_key`).

    The caller must hold :func:`registry.lock.registry_lock` (linear chain). The row is
    committed (durable) before this returns.
    """
    key = default_key(store_uri, key)
    engine = engine_for(store_uri)
    try:
        ensure_table(engine)
        values: dict[str, Any] = {"ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "event": event,
                  "model_name": model_name, "version": version, "actor": actor, "reason": reason,
                  "champion_before": champion_before, "champion_after": champion_after,
                  "data_version": data_version,
                  "payload": json.dumps(_strict(payload), sort_keys=True, default=str, allow_nan=False),
                  "key_id": key_id(key)}
        with engine.begin() as conn:
            last = conn.execute(sa.select(_table.c.hash).order_by(_table.c.seq.desc()).limit(1)).scalar()
            prev = last or GENESIS
            digest = _row_hash(key, prev, values)
            inserted = conn.execute(_table.insert().values(**values, prev_hash=prev, hash=digest)).inserted_primary_key
            assert inserted is not None                                # an INSERT into a table with a serial key
            seq = inserted[0]
    finally:
        engine.dispose()
    return AuditEvent(seq=int(seq), prev_hash=prev, hash=digest,
                      **{**values, "payload": json.loads(values["payload"])})


def read_log(store_uri: str, model_name: str | None = None) -> list[AuditEvent]:
    """Every event in order (optionally of one model); [] when nothing was logged yet."""
    engine = engine_for(store_uri)
    try:
        if not sa.inspect(engine).has_table(TABLE):
            return []
        query = sa.select(_table).order_by(_table.c.seq)
        if model_name is not None:
            query = query.where(_table.c.model_name == model_name)
        with engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
    finally:
        engine.dispose()
    try:
        return [AuditEvent(**{**dict(r), "payload": json.loads(r["payload"])}) for r in rows]
    except (TypeError, ValueError) as exc:
        raise AuditLogError(f"{TABLE} has an unreadable row ({exc}); restore the registry store from backup") from exc


def verify_chain(store_uri: str, *, key: bytes | None = None) -> int:
    """Recompute the keyed hash chain over the whole table; returns the number of rows checked.

    Raises:
        AuditLogError: a row was written with another key, its MAC does not match (edited),
            or its link does not (a row removed or inserted).
    """
    key = default_key(store_uri, key)
    mine, prev = key_id(key), GENESIS
    events = read_log(store_uri)
    for e in events:
        values = {f: getattr(e, f) for f in _FIELDS}
        values["payload"] = json.dumps(e.payload, sort_keys=True, default=str, allow_nan=False)
        if e.key_id != mine:
            raise AuditLogError(f"{TABLE} row seq={e.seq} was signed with another key (key id {e.key_id}, "
                                f"this key is {mine}): written by someone without the registry's audit key, "
                                "or the key was swapped; investigate")
        if e.prev_hash != prev:
            raise AuditLogError(f"{TABLE} row seq={e.seq} does not link to the row before it: a row was removed or "
                                "inserted; investigate and restore the registry store from backup")
        if not hmac.compare_digest(_row_hash(key, prev, values), e.hash):
            raise AuditLogError(f"{TABLE} row seq={e.seq} breaks the hash chain: the log was altered; "
                                "investigate and restore the registry store from backup")
        prev = e.hash
    return len(events)


def pending_intents(events: list[AuditEvent]) -> list[AuditEvent]:
    """``intent`` rows no later event completes (``payload.intent_seq``): promotions cut short by a crash."""
    done = {e.payload.get("intent_seq") for e in events if e.event != "intent"}
    return [e for e in events if e.event == "intent" and e.seq not in done]


def format_log(events: list[AuditEvent]) -> str:
    """One line per event for ``osteo registry log``: seq, time, event, model/version, actor, champion move, why."""
    lines = [f"{'seq':>5}  {'time (UTC)':<26}  {'event':<14}  {'model:version':<24}  {'actor':<12}  "
             f"{'champion':<11}  {'data':<14}  reason"]
    for e in events:
        move = f"{e.champion_before or '-'}->{e.champion_after or '-'}"
        lines.append(f"{e.seq:>5}  {e.ts:<26}  {e.event:<14}  {e.model_name + ':' + (e.version or '-'):<24}  "
                     f"{e.actor:<12}  {move:<11}  {(e.data_version or '-'):<14}  {e.reason}")
    return "\n".join(lines)
