"""The logged pyfunc is portable: ``mlflow models serve`` runs it in an environment without this repository.

The "fresh environment" is a new virtual environment whose only link to the project's
is a ``.pth`` line naming the third-party site-packages folder: the dependencies import,
but the project's editable install (a ``.pth`` *import hook* in that folder, which a plain
path line does not run) is absent, PYTHONPATH is unset and the working directory is an
empty temporary folder. So ``osteo_model``, ``osteo_config`` and ``features`` can only come
from the model's own ``code/`` folder (``code_paths``). ``--env-manager local`` serves in
that environment as it is: the other managers (virtualenv, conda, uv) would build one from
``requirements.txt`` from the package index, which a test machine without network cannot
reach; what they would install is what ``pyfunc_requirements`` pins, already present here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

import numpy as np
import pytest

from osteo_config import Config
from osteo_model.experiment import run_training
from osteo_testing.mlflow_server import free_port

pytestmark = pytest.mark.slow            # a tiny training (~15 s) + a model server start (~30-90 s on 2 cores)

_spec = importlib.util.spec_from_file_location("_fixture", Path(__file__).with_name("test_experiment.py"))
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)


def fresh_environment(where: Path) -> Path:
    """A venv that sees the installed dependencies but not the project (returns its python)."""
    venv.create(where, with_pip=False, symlinks=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "osteo_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # `mlflow models serve` starts `uvicorn` from PATH: this environment's own
    (where / "bin" / "uvicorn").write_text(f"#!{python}\nfrom uvicorn.main import main\nmain()\n")
    (where / "bin" / "uvicorn").chmod(0o755)
    return python


def test_logged_pyfunc_serves_in_a_fresh_environment(tmp_path):
    params = _fixture.write_inputs(tmp_path / "train")
    result = run_training(Config.from_params(params).experiment(), "tp_swav", tracking=True,
                          out_dir=tmp_path / "train" / "out")
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=str(tmp_path / "model"),
                                                     tracking_uri=params["tracking"]["uri"]))
    code = local / "code"
    assert {p.name for p in code.iterdir()} == {"osteo_model", "osteo_config", "features"}
    assert (code / "osteo_model" / "serving.py").is_file() and not list(code.rglob("__pycache__"))
    example = mlflow.models.Model.load(local).load_input_example(str(local))         # pools (1, 5, X, Y, Z) + descriptors
    expected = mlflow.pyfunc.load_model(str(local)).predict(example, params={"device_vendor": "GE Lunar"})

    python = fresh_environment(tmp_path / "fresh")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MLFLOW_")}
    env["PATH"] = f"{python.parent}{os.pathsep}/usr/bin:/bin"
    probe = subprocess.run([str(python), "-c", "import osteo_model"], cwd=cwd, env=env, capture_output=True,
                           text=True)
    assert probe.returncode != 0 and "No module named 'osteo_model'" in probe.stderr      # the repo is not here
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(python), "-m", "mlflow", "models", "serve", "-m", str(local), "--env-manager",
                                 "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(1.0)
        inputs = ({k: np.asarray(v).tolist() for k, v in example.items()} if isinstance(example, dict)
                  else np.asarray(example).tolist())                       # pools (+ descriptors) of the example
        body = json.dumps({"inputs": inputs, "params": {"device_vendor": "GE Lunar"}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as resp:
            predictions = json.loads(resp.read())["predictions"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
    assert len(predictions) == 1 and set(predictions[0]) == {"score", "bmd_g_cm2", "level", "screen_positive"}
    assert predictions[0]["score"] == pytest.approx(float(expected["score"].iloc[0]), abs=1e-6)
    assert predictions[0]["screen_positive"] == int(expected["screen_positive"].iloc[0])
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]
