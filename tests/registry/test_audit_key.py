"""The keyed (HMAC-SHA256) audit chain: where its key comes from, and what ``log --verify`` catches.

Attacks tried on a real log (SQLite registry store), each on a fresh copy of the database:
a row edited behind the triggers' back, a row deleted, a row appended by someone holding the
database but not the key (with its own key id, and with the real key id forged), and the whole
chain re-signed with another key; and the newest row removed (a valid shorter chain, caught by the
``osteo.event.<seq>`` version tags in MLflow). Each is reported by :func:`registry.audit.verify_chain` with
its own message and makes ``osteo registry log --verify`` exit 2.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from registry import audit
from registry.errors import AuditKeyError, AuditLogError
from registry.gates import evaluate_gates
from registry.registry import promote, register_candidate

from .conftest import LINEAGE, fake_metrics

NAME = "osteo-screening"
KEY = b"test-audit-key-0123456789abcdef-0123"           # text: the CLI reads it from an environment variable
OTHER = b"someone-elses-key-fedcba9876543210-xyz"
REPO = Path(__file__).resolve().parents[2]


def test_key_sources_and_their_refusals(tmp_path, monkeypatch):
    sqlite, pg = f"sqlite:///{tmp_path / 'r.db'}", "postgresql+psycopg2://u:pw-s3cr3t@db.example/registry"
    monkeypatch.delenv("OSTEO_TEST_AUDIT_KEY", raising=False)
    keyfile = tmp_path / "audit.key"
    # nothing configured: a typed error naming both places
    with pytest.raises(AuditKeyError, match="OSTEO_TEST_AUDIT_KEY is unset"):
        audit.load_audit_key("OSTEO_TEST_AUDIT_KEY", keyfile, False, sqlite)
    # the demo key: local SQLite only, never PostgreSQL (and never given for it by default)
    assert audit.load_audit_key("OSTEO_TEST_AUDIT_KEY", keyfile, True, sqlite) == (audit.DEMO_AUDIT_KEY, "demo")
    with pytest.raises(AuditKeyError, match="only for a local SQLite store"):
        audit.load_audit_key("OSTEO_TEST_AUDIT_KEY", keyfile, True, pg)
    with pytest.raises(AuditKeyError, match="demo audit key may only sign a local SQLite") as err:
        audit.check_key(audit.DEMO_AUDIT_KEY, pg)
    assert "pw-s3cr3t" not in str(err.value)                                # no password in the message
    with pytest.raises(AuditKeyError, match="no audit key given"):
        audit.default_key(pg, None)
    # a key file: 0600 only, >= 32 bytes
    keyfile.write_bytes(KEY + b"\n")
    keyfile.chmod(0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        audit.load_audit_key("OSTEO_TEST_AUDIT_KEY", keyfile, False, pg)
    keyfile.chmod(0o600)
    assert audit.load_audit_key("OSTEO_TEST_AUDIT_KEY", keyfile, False, pg) == (KEY, "file")
    # the environment wins over the file; a short key is refused
    monkeypatch.setenv("OSTEO_TEST_AUDIT_KEY", "too-short")
    with pytest.raises(AuditKeyError, match="9 bytes, needs >= 32"):
        audit.load_audit_key("OSTEO_TEST_AUDIT_KEY", keyfile, False, pg)
    monkeypatch.setenv("OSTEO_TEST_AUDIT_KEY", "k" * 40)
    assert audit.load_audit_key("OSTEO_TEST_AUDIT_KEY", keyfile, False, pg) == (b"k" * 40, "env")
    assert audit.key_id(KEY) != audit.key_id(OTHER) and KEY.hex()[:16] != audit.key_id(KEY)


@pytest.fixture
def signed_log(tracking, gates_cfg) -> Path:
    """A registry DB whose log holds register + promote, signed with KEY (4 rows with the intents)."""
    report = evaluate_gates(fake_metrics(), None, gates_cfg)
    v1 = register_candidate(tracking.log_model(), NAME, LINEAGE, fake_metrics(), report, tracking_uri=tracking.uri,
                            audit_key=KEY)
    assert promote(NAME, v1, report, "alice", "first", gates=gates_cfg, tracking_uri=tracking.uri,
                   audit_key=KEY).promoted
    db = Path(tracking.uri[len("sqlite:///"):])
    assert audit.verify_chain(tracking.uri, key=KEY) == 4
    return db


def _attacked(db: Path, tmp_path: Path, attack: str) -> str:
    copy = tmp_path / f"{attack}.db"
    shutil.copy(db, copy)
    uri = f"sqlite:///{copy}"
    engine = audit.engine_for(uri)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TRIGGER {audit.TABLE}_no_update")
        conn.exec_driver_sql(f"DROP TRIGGER {audit.TABLE}_no_delete")
        if attack == "edit":
            conn.exec_driver_sql(f"UPDATE {audit.TABLE} SET actor = 'mallory' WHERE seq = 2")
        elif attack == "delete":
            conn.exec_driver_sql(f"DELETE FROM {audit.TABLE} WHERE seq = 2")
        elif attack == "truncate":                        # the newest row (promote's completion) removed
            conn.exec_driver_sql(f"DELETE FROM {audit.TABLE} WHERE seq = (SELECT MAX(seq) FROM {audit.TABLE})")
        elif attack == "resign":                          # the whole chain rebuilt with another key
            rows = conn.execute(sa.text(f"SELECT * FROM {audit.TABLE} ORDER BY seq")).mappings().all()
            conn.exec_driver_sql(f"DELETE FROM {audit.TABLE}")
            prev = audit.GENESIS
            for r in rows:
                values = {**{f: r[f] for f in audit._FIELDS}, "key_id": audit.key_id(OTHER)}
                digest = audit._row_hash(OTHER, prev, values)
                conn.execute(audit._table.insert().values(seq=r["seq"], **values, prev_hash=prev, hash=digest))
                prev = digest
    engine.dispose()
    if attack in ("forge", "forge_id"):                   # appended by someone without the key
        audit.append(uri, "promote", NAME, "1", "mallory", "sneak", "1", "1", None, {}, key=OTHER)
        if attack == "forge_id":                          # ... and the key id copied from a genuine row
            engine = audit.engine_for(uri)
            with engine.begin() as conn:
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {audit.TABLE}_no_update")
                conn.execute(sa.text(f"UPDATE {audit.TABLE} SET key_id = :k WHERE actor = 'mallory'"),
                             {"k": audit.key_id(KEY)})
            engine.dispose()
    return uri


@pytest.mark.parametrize("attack, message", [
    ("edit", "seq=2 breaks the hash chain"),
    ("delete", "seq=3 does not link"),
    ("forge", "seq=5 was signed with another key"),
    ("forge_id", "seq=5 breaks the hash chain"),
    ("resign", "seq=1 was signed with another key"),
])
def test_verify_names_each_attack(signed_log, tmp_path, attack, message):
    uri = _attacked(signed_log, tmp_path, attack)
    with pytest.raises(AuditLogError, match=message):
        audit.verify_chain(uri, key=KEY)
    if attack == "resign":                                # consistent under the attacker's key, not ours
        assert audit.verify_chain(uri, key=OTHER) == 4


def _params(tmp_path: Path, uri: str) -> Path:
    from osteo_config import load_params

    params = load_params(REPO / "params.yaml", "demo")
    params["tracking"] = {**params["tracking"], "profile": "local", "uri": uri}
    params["registry"] = {**params["registry"], "model_name": NAME, "allow_demo_audit_key": False,
                          "audit_key_env": "OSTEO_TEST_AUDIT_KEY", "audit_key_file": str(tmp_path / "none.key")}
    path = tmp_path / f"params-{abs(hash(uri))}.yaml"
    path.write_text(yaml.safe_dump({**params, "profile": "demo"}))
    return path


def test_cli_log_verify_exits_2_on_an_attacked_log(signed_log, tmp_path, monkeypatch):
    from osteo.cli import EXIT_CHAIN_BROKEN, EXIT_ERROR, app

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)

    def log(uri: str):
        return runner.invoke(app, ["--params", str(_params(tmp_path, uri)), "registry", "log", "--verify"])

    genuine = tmp_path / "genuine.db"
    shutil.copy(signed_log, genuine)
    monkeypatch.setenv("OSTEO_TEST_AUDIT_KEY", KEY.decode())
    ok = log(f"sqlite:///{genuine}")
    assert ok.exit_code == 0 and "keyed hash chain verified: 4 rows" in ok.output, ok.output
    for attack in ("edit", "delete", "forge", "truncate"):
        uri = _attacked(signed_log, tmp_path, attack)
        if attack == "truncate":                          # a valid shorter chain: only the MLflow tags tell
            assert audit.verify_chain(uri, key=KEY) == 3
        broken = log(uri)
        assert broken.exit_code == EXIT_CHAIN_BROKEN and "HASH CHAIN BROKEN" in broken.output, (attack, broken.output)
        if attack == "truncate":
            assert "newest rows were removed" in broken.output
    monkeypatch.setenv("OSTEO_TEST_AUDIT_KEY", OTHER.decode())            # the verifier holds another key
    wrong = log(f"sqlite:///{genuine}")
    assert wrong.exit_code == EXIT_CHAIN_BROKEN and "another key" in wrong.output
    monkeypatch.delenv("OSTEO_TEST_AUDIT_KEY")                             # no key, demo key not allowed
    nokey = log(f"sqlite:///{genuine}")
    assert nokey.exit_code == EXIT_ERROR and "no registry audit key" in nokey.output
