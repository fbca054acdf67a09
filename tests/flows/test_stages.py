"""The flows' stage runner without Prefect: which failures retry, the profile rule, Prefect's start-up settings."""
from __future__ import annotations

import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows.runtime import configure_prefect
from flows.stages import (EXIT_TEMPFAIL, ProfileMismatchError, StageFailed, StageTimeout, check_profile, is_transient,
                          run_command, stage_env)


@pytest.mark.parametrize("exc, retry", [
    (ConnectionResetError("peer reset"), True),
    (ConnectionRefusedError("MLflow server down"), True),
    (TimeoutError("read timed out"), True),
    (socket.timeout("timed out"), True),
    (subprocess.TimeoutExpired(["dvc"], 1.0), True),
    (StageTimeout("ingest", 5), True),
    (StageFailed("ingest", EXIT_TEMPFAIL, "", transient=True), True),
    # never passes on its own: fail at once
    (FileNotFoundError(errno.ENOENT, "no such file", "data/raw/ct_studies.csv"), False),
    (PermissionError(errno.EACCES, "permission denied"), False),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (StageFailed("validate", 1, "expect_column_values_to_be_between(bmd_g_cm2)"), False),
    (ValueError("bad params"), False),
    (None, False),
])
def test_only_network_errors_timeouts_and_transient_stage_exits_retry(exc, retry):
    assert is_transient(exc) is retry


@pytest.mark.parametrize("code, output, transient", [
    (EXIT_TEMPFAIL, "", True),
    (1, "ERROR: Unable to acquire lock. Most likely another DVC process is running", True),
    (1, "ValidationFailedError: 3 expectations failed", False),
    (2, "", False),
])
def test_a_stage_exit_is_transient_only_for_the_documented_code_or_a_busy_dvc_lock(tmp_path, code, output, transient):
    from flows.stages import _transient_exit

    cmd = [sys.executable, "-c", f"import sys; print({output!r}); sys.exit({code})"]
    got_code, got_out = run_command("s", cmd, tmp_path, timeout_s=60)
    assert got_code == code and output in got_out
    assert _transient_exit(got_code, got_out) is transient


def test_a_stage_past_its_time_limit_is_killed_with_its_children(tmp_path):
    marker = tmp_path / "child_alive"
    # the child spawns a grandchild that would write the marker after 3 s: killing the group stops both
    (tmp_path / "grandchild.py").write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w').write('x')\n")
    (tmp_path / "child.py").write_text("import subprocess, sys, time\n"
                                       "subprocess.Popen([sys.executable, 'grandchild.py'])\ntime.sleep(60)\n")
    with pytest.raises(StageTimeout) as err:
        run_command("texture", [sys.executable, "child.py"], tmp_path, timeout_s=1.0)
    assert is_transient(err.value) and "flows.stage_timeout_s" in str(err.value)
    import time
    time.sleep(4)
    assert not marker.exists(), "the grandchild outlived the timeout"


def test_stage_env_puts_this_venv_first_and_drops_osteo_profile():
    env = stage_env({"PATH": "/usr/bin", "OSTEO_PROFILE": "tiny", "HOME": "/h"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert "OSTEO_PROFILE" not in env and env["HOME"] == "/h"


def _repo(tmp_path: Path, profile: str) -> Path:
    (tmp_path / "params.yaml").write_text(f"profile: {profile}   # active profile\npaths: {{data: data}}\n")
    return tmp_path


def test_profile_is_params_yaml_s_and_a_different_request_is_refused(tmp_path):
    repo = _repo(tmp_path, "tiny")
    assert check_profile(repo) == "tiny"
    assert check_profile(repo, "params.yaml", "tiny") == "tiny"
    with pytest.raises(ProfileMismatchError, match="set 'profile: demo' in params.yaml"):
        check_profile(repo, "params.yaml", "demo")
    (repo / "other.yaml").write_text("profile: tiny\n")
    with pytest.raises(ProfileMismatchError, match="edit params.yaml itself"):
        check_profile(repo, "other.yaml")


def test_configure_prefect_sets_the_ephemeral_startup_timeout_from_params(monkeypatch, tmp_path):
    for key in ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH",
                "PREFECT_LOGGING_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_RESULTS_PERSIST_BY_DEFAULT"):
        monkeypatch.delenv(key, raising=False)
    applied = configure_prefect({"flows": {"prefect_home": str(tmp_path / ".prefect"),
                                           "ephemeral_startup_timeout_s": 240}})
    assert applied["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "240"
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    assert configure_prefect({"flows": {}})["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "120"
    # a value already in the environment wins (an operator's setting), and Prefect itself reads it
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in configure_prefect({"flows": {}})
    code = ("from prefect.settings import get_current_settings as s; "
            "print(s().server.ephemeral.startup_timeout_seconds)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin", "PREFECT_HOME": str(tmp_path / ".prefect"),
                              "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"})
    assert out.stdout.strip().splitlines()[-1] == "300", out.stderr[-2000:]
