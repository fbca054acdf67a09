"""Append-only promotion log: a table ``osteo_registry_audit`` inside the MLflow tracking database.

Why a table in the tracking database (and not an artifact per event): it lives
in the same SQLite/PostgreSQL database as the registry it describes, shares its
backups, orders events by one sequence, and can be made append-only by the
database itself:

* triggers reject every ``UPDATE`` and ``DELETE`` (and ``TRUNCATE`` on PostgreSQL);
* each row stores ``hash = sha256(prev_hash + canonical row)``, a hash chain, so
  a row edited or removed behind the triggers' back is found by :func:`verify_chain`.

Rows are written only by :mod:`registry.registry` while it holds the registry
lock (:mod:`registry.lock`), so the chain is linear. Each event is also written
as a model-version tag ``osteo.event.<seq>`` (who/what/when/why). ``osteo
registry log`` reads the table with :func:`read_log`.

Columns: ``seq`` (int, order), ``ts`` (ISO 8601 UTC), ``event`` (``register`` |
``promote`` | ``refuse`` | ``rollback``), ``model_name``, ``version``, ``actor``,
``reason``, ``champion_before``, ``champion_after``, ``data_version``,
``payload`` (JSON: metrics, gate report, tags, digest...), ``prev_hash``, ``hash``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import sqlalchemy as sa

from registry.errors import AuditLogError

TABLE = "osteo_registry_audit"
GENESIS = "0" * 64
_FIELDS = ("ts", "event", "model_name", "version", "actor", "reason", "champion_before", "champion_after",
           "data_version", "payload")

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
    prev_hash: str
    hash: str

    def summary(self) -> dict[str, Any]:
        """Who/what/when/why without the payload (what goes into the version tag)."""
        return {k: getattr(self, k) for k in ("seq", "ts", "event", "model_name", "version", "actor", "reason",
                                               "champion_before", "champion_after", "data_version")}


def engine_for(tracking_uri: str) -> sa.engine.Engine:
    """A short-lived engine on the tracking database (no pool kept between calls)."""
    args = {"timeout": 30} if tracking_uri.startswith("sqlite") else {"connect_timeout": 10}
    return sa.create_engine(tracking_uri, poolclass=sa.pool.NullPool, connect_args=args)


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


def _row_hash(prev_hash: str, values: Mapping[str, Any]) -> str:
    blob = json.dumps([prev_hash] + [values[f] for f in _FIELDS], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def append(tracking_uri: str, event: str, model_name: str, version: str | None, actor: str, reason: str,
           champion_before: str | None, champion_after: str | None, data_version: str | None,
           payload: Mapping[str, Any]) -> AuditEvent:
    """Append one event. The caller must hold :func:`registry.lock.registry_lock` (linear hash chain)."""
    engine = engine_for(tracking_uri)
    try:
        ensure_table(engine)
        values: dict[str, Any] = {"ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "event": event,
                  "model_name": model_name, "version": version, "actor": actor, "reason": reason,
                  "champion_before": champion_before, "champion_after": champion_after,
                  "data_version": data_version,
                  "payload": json.dumps(_strict(payload), sort_keys=True, default=str, allow_nan=False)}
        with engine.begin() as conn:
            last = conn.execute(sa.select(_table.c.hash).order_by(_table.c.seq.desc()).limit(1)).scalar()
            prev = last or GENESIS
            digest = _row_hash(prev, values)
            inserted = conn.execute(_table.insert().values(**values, prev_hash=prev, hash=digest)).inserted_primary_key
            assert inserted is not None                                # an INSERT into a table with a serial key
            seq = inserted[0]
    finally:
        engine.dispose()
    return AuditEvent(seq=int(seq), prev_hash=prev, hash=digest,
                      **{**values, "payload": json.loads(values["payload"])})


def read_log(tracking_uri: str, model_name: str | None = None) -> list[AuditEvent]:
    """Every event in order (optionally of one model); [] when nothing was logged yet."""
    engine = engine_for(tracking_uri)
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
        raise AuditLogError(f"{TABLE} has an unreadable row ({exc}); restore the tracking DB from backup") from exc


def verify_chain(tracking_uri: str) -> int:
    """Recompute the hash chain over the whole table; returns the number of rows checked.

    Raises:
        AuditLogError: a row's hash or link does not match (the log was edited or rows removed).
    """
    prev = GENESIS
    events = read_log(tracking_uri)
    for e in events:
        values = {f: getattr(e, f) for f in _FIELDS}
        values["payload"] = json.dumps(e.payload, sort_keys=True, default=str, allow_nan=False)
        if e.prev_hash != prev or _row_hash(prev, values) != e.hash:
            raise AuditLogError(f"{TABLE} row seq={e.seq} breaks the hash chain: the log was altered; "
                                "investigate and restore the tracking DB from backup")
        prev = e.hash
    return len(events)


def format_log(events: list[AuditEvent]) -> str:
    """One line per event for ``osteo registry log``: seq, time, event, model/version, actor, champion move, why."""
    lines = [f"{'seq':>5}  {'time (UTC)':<26}  {'event':<8}  {'model:version':<24}  {'actor':<12}  "
             f"{'champion':<11}  {'data':<14}  reason"]
    for e in events:
        move = f"{e.champion_before or '-'}->{e.champion_after or '-'}"
        lines.append(f"{e.seq:>5}  {e.ts:<26}  {e.event:<8}  {e.model_name + ':' + (e.version or '-'):<24}  "
                     f"{e.actor:<12}  {move:<11}  {(e.data_version or '-'):<14}  {e.reason}")
    return "\n".join(lines)
