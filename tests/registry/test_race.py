"""Two processes promoting at once: one champion, one refusal, one linear log (SQLite and PostgreSQL)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from registry import audit
from registry.errors import RegistryLockError
from registry.gates import evaluate_gates
from registry.lock import registry_lock
from registry.registry import CHAMPION, PREVIOUS, aliases, champion_metrics, promote, register_candidate

from .conftest import LINEAGE, Tracking, fake_metrics, with_paired

NAME = "osteo-race"
WORKER = Path(__file__).with_name("race_worker.py")
PG_ADMIN = os.environ.get("OSTEO_TEST_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _gates_params(cfg) -> dict:
    """A params-like dict that GatesConfig.from_params turns back into ``cfg``."""
    from dataclasses import asdict

    g = asdict(cfg)
    return {"evaluate": {"sites": [*cfg.internal_sites, *cfg.external_sites],
                         "external_sites": list(cfg.external_sites)},
            "registry": {"gates": {"rules": g["rules"], "max_drop": g["max_drop"],
                                   "subgroup_sensitivity": g["subgroup_sensitivity"],
                                   "calibration": g["calibration"]}}}


AUDIT_KEY = bytes(range(32))            # a test key: the demo key is refused on PostgreSQL


def race(tracking: Tracking, gates_cfg, tmp_path: Path) -> None:
    from registry.gates import GatesConfig

    assert GatesConfig.from_params(_gates_params(gates_cfg)) == gates_cfg
    report = evaluate_gates(fake_metrics(), None, gates_cfg)
    v1 = register_candidate(tracking.log_model(), NAME, LINEAGE, fake_metrics(), report, tracking_uri=tracking.uri,
                            audit_key=AUDIT_KEY)
    assert promote(NAME, v1, report, "setup", "first", gates=gates_cfg, tracking_uri=tracking.uri,
                   audit_key=AUDIT_KEY).promoted
    cv, cm = champion_metrics(NAME, tracking.uri)
    contenders = []
    for offset in (1.0, 2.0):
        rep = evaluate_gates(with_paired(fake_metrics(f1=72.0), cm, cv), cm, gates_cfg, cv)
        contenders.append((register_candidate(tracking.log_model(offset), NAME, LINEAGE, fake_metrics(f1=72.0), rep,
                                              tracking_uri=tracking.uri, audit_key=AUDIT_KEY), rep))
    start = tmp_path / "start"
    procs, outs = [], []
    for version, rep in contenders:
        job = {"tracking_uri": tracking.uri, "audit_key": AUDIT_KEY.hex(), "name": NAME, "version": version, "report": rep.to_dict(),
               "gates_params": _gates_params(gates_cfg), "start_file": str(start),
               "ready_file": str(tmp_path / f"ready{version}"), "out_file": str(tmp_path / f"out{version}.json")}
        (tmp_path / f"job{version}.json").write_text(json.dumps(job))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / f"job{version}.json")],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outs.append(Path(job["out_file"]))
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{v}").exists() for v, _ in contenders):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[0][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.02)
    start.touch()                                                     # go
    for p in procs:
        output = p.communicate(timeout=120)[0]
        assert p.returncode == 0, output[-3000:]
    results = {v: json.loads(o.read_text()) for (v, _), o in zip(contenders, outs)}
    winners = [v for v, r in results.items() if r["promoted"]]
    assert len(winners) == 1, results                                  # exactly one promotion
    (winner,) = winners
    (loser,) = [v for v in results if v != winner]
    assert any("stale gate report" in r for r in results[loser]["reasons"])   # champion re-read inside the lock
    assert aliases(NAME, tracking.uri) == {CHAMPION: winner, PREVIOUS: v1}
    tags = {v: tracking.client.get_model_version(NAME, v).tags["osteo.status"] for v in (v1, winner, loser)}
    assert tags == {v1: "previous-champion", winner: "champion", loser: "refused"}
    log = [e for e in audit.read_log(tracking.uri, NAME) if e.event != "intent"][-2:]   # intents: bookkeeping
    assert [(e.event, e.version, e.champion_before, e.champion_after) for e in log] == [
        ("promote", winner, v1, winner), ("refuse", loser, winner, winner)]
    assert audit.verify_chain(tracking.uri, key=AUDIT_KEY) == len(audit.read_log(tracking.uri))


@pytest.mark.slow                                                    # two MLflow subprocesses: ~15 s on 2 cores
def test_two_processes_race_on_sqlite_with_file_lock(tracking, gates_cfg, tmp_path):
    race(tracking, gates_cfg, tmp_path)


def test_file_lock_times_out_while_held(tracking):
    with registry_lock(tracking.uri, 5):
        t0 = time.monotonic()
        with pytest.raises(RegistryLockError, match="still held"):
            with registry_lock(tracking.uri, 0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
    with registry_lock(tracking.uri, 0.3):                            # released: acquired at once
        pass


def _postgres_admin():
    try:
        import psycopg2

        conn = psycopg2.connect(PG_ADMIN, connect_timeout=2)
    except Exception as exc:                                           # no server, no driver, no auth
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN} ({type(exc).__name__}: {str(exc).strip()}); start it "
                    "(trust auth, user postgres) or set OSTEO_TEST_POSTGRES_ADMIN")
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_tracking(tmp_path):
    admin = _postgres_admin()
    db = f"osteo_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    try:
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
        yield Tracking(f"{base}/{db}", tmp_path / "artifacts")
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)


@pytest.mark.services
@pytest.mark.slow
def test_two_processes_race_on_postgres_with_advisory_lock(pg_tracking, gates_cfg, tmp_path):
    race(pg_tracking, gates_cfg, tmp_path)
    with registry_lock(pg_tracking.uri, 5):                           # the advisory lock excludes a second session
        with pytest.raises(RegistryLockError, match="advisory lock"):
            with registry_lock(pg_tracking.uri, 0.3):
                pass
    engine = audit.engine_for(pg_tracking.uri)
    import sqlalchemy as sa
    for stmt in (f"UPDATE {audit.TABLE} SET actor = 'x'", f"DELETE FROM {audit.TABLE}", f"TRUNCATE {audit.TABLE}"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with engine.begin() as conn:
                conn.exec_driver_sql(stmt)
    engine.dispose()
