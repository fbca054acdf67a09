"""DVC stages as the unit of work of the Prefect flows: DVC decides what is stale, Prefect runs it.

A flow task runs ``dvc repro --single-item <stage>`` in the repository (the
venv's ``bin`` first on PATH, as ``make repro`` does): DVC re-runs the stage
when its code, params or inputs changed since ``dvc.lock`` and skips it
otherwise, so the flows and ``dvc repro`` share one invalidation rule and one
record. Nothing here imports Prefect (importing Prefect reads its settings).

The active profile is the top-level ``profile:`` key of ``params.yaml``, which
DVC tracks; :func:`check_profile` refuses a run whose requested profile
(``--profile`` / ``$OSTEO_PROFILE``) differs, because the stage commands would
then compute one profile while ``dvc.lock`` records another.

Which failures retry (:func:`is_transient`): a stage command that exits with
:data:`EXIT_TEMPFAIL` (75, sysexits ``EX_TEMPFAIL``: "try again later"), DVC's
"Unable to acquire lock" (another DVC process holds the repository), a stage
that ran past its time limit, and network errors / timeouts raised in the
task. Everything else (a data gate, a typed data error, a missing file, a
permission error, a full disk) fails at once: retrying cannot fix it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

EXIT_TEMPFAIL = 75          # documented contract: a stage command exits 75 for a failure that may pass on its own
DVC_LOCK_BUSY = "Unable to acquire lock"
TAIL_CHARS = 4000           # characters of a failed stage's output kept in the error message

DATA_STAGES = ("ingest", "texture", "validate", "splits", "materialize", "training_table")
MODEL_STAGES = ("pretrain", "finetune", "evaluate", "promote")


class ProfileMismatchError(ValueError):
    """The requested profile differs from ``params.yaml``'s ``profile:`` (what DVC tracks)."""


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; ``transient`` says whether a retry may succeed."""

    def __init__(self, stage: str, returncode: int, tail: str, transient: bool = False):
        self.stage, self.returncode, self.tail, self.transient = stage, returncode, tail, transient
        super().__init__(f"stage {stage} failed (exit {returncode}): {tail.strip()[-TAIL_CHARS:]}")


class StageTimeout(TimeoutError):
    """A DVC stage ran past ``flows.stage_timeout_s`` and was killed (with its process group)."""

    def __init__(self, stage: str, timeout_s: float):
        self.stage, self.timeout_s = stage, timeout_s
        super().__init__(f"stage {stage} ran past {timeout_s:g} s (flows.stage_timeout_s) and was killed")


class DataGateFailed(StageFailed):
    """The Great Expectations gate (validate stage) refused the data; the message lists the failures."""


@dataclass(frozen=True)
class StageRun:
    """What one ``dvc repro --single-item`` did."""

    stage: str
    ran: bool           # False: DVC found the stage up to date and skipped it
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "ran": self.ran, "seconds": round(self.seconds, 1)}


def is_transient(exc: BaseException | None) -> bool:
    """Whether a task failure may pass on its own (retry) or not (fail at once); see the module docstring."""
    if isinstance(exc, StageFailed):
        return exc.transient
    if isinstance(exc, subprocess.TimeoutExpired):
        return True
    # network errors and timeouts only: FileNotFoundError, PermissionError, ENOSPC ... are OSErrors that never pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def _transient_exit(returncode: int, output: str) -> bool:
    return returncode == EXIT_TEMPFAIL or DVC_LOCK_BUSY in output


def stage_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a stage: the running interpreter's ``bin`` first on PATH; no ``$OSTEO_PROFILE``
    (the stage commands read ``params.yaml``'s ``profile:``, as DVC does)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k != "OSTEO_PROFILE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_command(stage: str, cmd: list[str], cwd: Path, timeout_s: float, env: Mapping[str, str] | None = None
                ) -> tuple[int, str]:
    """Run ``cmd``; returns (exit code, combined output).

    The command stays in the flow's process group, so stopping the flow (Ctrl-C, a kill of the group)
    stops the stage too; past ``timeout_s`` the command and all its descendants are killed.

    Raises:
        StageTimeout: past ``timeout_s``.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env) if env is not None else stage_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.communicate()
        raise StageTimeout(stage, timeout_s) from None
    return proc.returncode, out or ""


def _kill_tree(pid: int) -> None:
    import psutil  # a DVC dependency

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def repro_stage(stage: str, repo: Path, timeout_s: float, env: Mapping[str, str] | None = None) -> StageRun:
    """``dvc repro --single-item <stage>`` in ``repo``: runs the stage only when DVC finds it stale.

    Raises:
        StageFailed: non-zero exit (``transient`` set for exit 75 or a busy DVC lock).
        StageTimeout: past ``timeout_s``.
    """
    dvc = Path(sys.executable).parent / "dvc"
    t0 = time.perf_counter()
    code, out = run_command(stage, [str(dvc) if dvc.exists() else "dvc", "repro", "--single-item", stage],
                            Path(repo), timeout_s, env)
    if code != 0:
        raise StageFailed(stage, code, out[-TAIL_CHARS:], transient=_transient_exit(code, out))
    ran = re.search(rf"Running stage '{re.escape(stage)}'", out) is not None
    return StageRun(stage=stage, ran=ran, seconds=time.perf_counter() - t0)


def tracked_profile(params_file: Path) -> str:
    """The top-level ``profile:`` of ``params_file`` (default ``demo``)."""
    return str((yaml.safe_load(Path(params_file).read_text()) or {}).get("profile") or "demo")


def check_profile(repo: Path, params_file: str | Path = "params.yaml", requested: str | None = None) -> str:
    """The profile the stages will run: ``params.yaml``'s ``profile:``; refuses anything else.

    Args:
        repo: the DVC repository (holds ``dvc.yaml`` and the ``params.yaml`` DVC reads).
        params_file: must be that ``params.yaml``: DVC tracks no other file.
        requested: ``--profile`` or ``$OSTEO_PROFILE`` (None: take params.yaml's).

    Raises:
        ProfileMismatchError: another params file, or a requested profile that params.yaml does not name.
    """
    repo = Path(repo).resolve()
    pfile = (repo / params_file) if not Path(params_file).is_absolute() else Path(params_file)
    if pfile.resolve() != repo / "params.yaml":
        raise ProfileMismatchError(f"the flows run DVC stages, which read {repo / 'params.yaml'}, not {pfile}: "
                                   "edit params.yaml itself (or run the stage commands by hand)")
    tracked = tracked_profile(pfile)
    if requested and requested != tracked:
        raise ProfileMismatchError(
            f"profile '{requested}' requested (--profile / $OSTEO_PROFILE) but params.yaml says 'profile: {tracked}', "
            f"which is what DVC records in dvc.lock: set 'profile: {requested}' in params.yaml "
            f"(`make demo PROFILE={requested}` writes it) and run again")
    return tracked
