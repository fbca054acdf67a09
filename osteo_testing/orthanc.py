"""A real Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``) for tests and benchmarks.

:func:`running_orthanc` starts ``Orthanc <config.json>`` bound to 127.0.0.1 on a free HTTP port (and a
free DICOM port), with a temporary storage folder and the DICOMweb plugin loaded; it waits for
``/system`` and then for the plugin's ``/dicom-web/studies``, yields the DICOMweb root URL and stops the
server afterwards. :func:`orthanc_missing` says why it cannot run (the caller skips with that message).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import requests

from osteo_testing.processes import free_port, stop

DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
START_TIMEOUT_S = 120.0       # the machine is shared: Orthanc may take a while to open its database


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def dicomweb_plugin() -> str | None:
    return next((p for p in DICOMWEB_PLUGINS if Path(p).exists()), None)


def orthanc_missing() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else the reason (a skip message)."""
    if orthanc_binary() is None or dicomweb_plugin() is None:
        return ("Orthanc or its DICOMweb plugin is not installed: `make orthanc` (part of `make test`) installs "
                "them (apt-get install orthanc orthanc-dicomweb); the PACS tests are skipped")
    return None


@contextlib.contextmanager
def running_orthanc(workdir: Path, start_timeout_s: float = START_TIMEOUT_S,
                    http_port: int | None = None) -> Iterator[str]:
    """Run a private Orthanc under ``workdir``; yields its DICOMweb root (``http://127.0.0.1:PORT/dicom-web``).

    A second call with the same ``workdir`` and ``http_port`` restarts the same PACS (same storage, same URL).

    Raises:
        RuntimeError: Orthanc is absent, exited, or did not answer within ``start_timeout_s`` (log tail included).
    """
    missing = orthanc_missing()
    if missing:
        raise RuntimeError(missing)
    workdir = Path(workdir)
    storage = workdir / "orthanc-db"
    storage.mkdir(parents=True, exist_ok=True)
    http, dicom = http_port or free_port(), free_port()
    config = {"Name": "osteo-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
              "HttpPort": http, "DicomPort": dicom, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "HttpBindAddress": "127.0.0.1", "DicomServerEnabled": False, "Plugins": [dicomweb_plugin()],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}, "StableAge": 1}
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log_path = workdir / "orthanc.log"
    base = f"http://127.0.0.1:{http}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([orthanc_binary(), str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout_s
            for probe in ("/system", "/dicom-web/studies"):           # the core, then the plugin
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"Orthanc exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                    try:
                        if requests.get(base + probe, timeout=2).status_code == 200:
                            break
                    except requests.RequestException:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Orthanc did not answer {base}{probe} within {start_timeout_s:.0f} s: "
                                           f"{log_path.read_text()[-2000:]}")
                    time.sleep(0.3)
            yield f"{base}/dicom-web"
        finally:
            stop(proc)
