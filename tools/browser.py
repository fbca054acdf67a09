"""Drive the MLflow UI in headless Chromium: serve a tracking store, open its pages, take screenshots.

Shared by ``tests/e2e/test_mlflow_ui.py`` (what reviewers see is asserted) and ``tools/mlflow_screenshot.py``
(what reviewers see is kept under ``docs/``). The browser is Debian's ``chromium`` driven through Debian's
``chromedriver`` with selenium (``make browser`` installs both); nothing is downloaded at run time.

The MLflow UI is a React app that fetches runs after the page loads, so every helper here waits for the text
a person would read instead of sleeping.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from osteo_testing.processes import free_port

CHROMIUM = Path("/usr/bin/chromium")            # Debian package `chromium`
CHROMEDRIVER = Path("/usr/bin/chromedriver")    # Debian package `chromium-driver` (same version as the browser)
WINDOW = (1600, 1200)                           # px; wide enough for two runs' columns side by side
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BrowserUnavailableError(RuntimeError):
    """Chromium, chromedriver or selenium is missing on this machine."""


class ServerStartError(RuntimeError):
    """``mlflow server`` exited or did not answer in time."""


class PageTimeoutError(AssertionError):
    """A page did not show the expected text in time (an AssertionError so tests report it as a failure)."""


def missing_browser() -> str | None:
    """Why the browser cannot run here, or None when it can (tests skip with this message)."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if absent:
        return f"{', '.join(absent)} missing: run `make browser` (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: run `.venv/bin/pip install -r requirements.lock`"
    return None


@contextmanager
def mlflow_ui(backend_store_uri: str, log_path: Path, port: int | None = None,
              timeout: float = 120.0) -> Iterator[str]:
    """Serve ``mlflow server`` for ``backend_store_uri`` on 127.0.0.1; yield its base URL; stop it on exit.

    Args:
        backend_store_uri: the tracking store (``sqlite:///...``, ``postgresql://...``).
        log_path: file that receives the server's stdout and stderr (quoted when it fails to start).
        port: the port to listen on (default a free one).
        timeout: seconds to wait for ``/health`` to answer (the first start builds the DB schema).
    """
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log_path, "wb") as log:
        # own process group: the server forks a worker, and both must go when we are done
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(proc, base, log_path, timeout)
        yield base
    finally:
        _stop(proc)


def _wait_healthy(proc: subprocess.Popen, base: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"mlflow server exited with {proc.returncode}; its log "
                                   f"({log_path}) ends:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)                        # polling interval, not an assertion
    raise ServerStartError(f"mlflow server did not answer {base}/health in {timeout:.0f} s; its log "
                           f"({log_path}) ends:\n{_tail(log_path)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)     # the group we created for this server only
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _tail(path: Path, n: int = 2000) -> str:
    return path.read_bytes()[-n:].decode(errors="replace") if path.exists() else "(no log)"


@contextmanager
def chromium(window: tuple[int, int] = WINDOW) -> Iterator["WebDriver"]:  # noqa: F821
    """A headless Chromium driven by selenium; quit on exit.

    Raises:
        BrowserUnavailableError: chromium, chromedriver or selenium is missing (see :func:`missing_browser`).
    """
    why = missing_browser()
    if why:
        raise BrowserUnavailableError(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox",          # root in a container has no user namespace sandbox
                "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
                "--force-device-scale-factor=1", f"--window-size={window[0]},{window[1]}"):
        opts.add_argument(arg)
    # an explicit driver path: selenium-manager (which would download a driver) is never run
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def experiment_url(base: str, experiment_id: str) -> str:
    """The runs table of one experiment (``/runs``: MLflow 3 otherwise opens its GenAI overview)."""
    return f"{base}/#/experiments/{experiment_id}/runs"


def compare_url(base: str, run_ids: Sequence[str], experiment_ids: Sequence[str]) -> str:
    """MLflow's run comparison view (``/compare-runs?runs=[...]&experiments=[...]``, JSON lists, as the UI builds it)."""
    query = f"runs={quote(json.dumps(list(run_ids)))}&experiments={quote(json.dumps(list(experiment_ids)))}"
    return f"{base}/#/compare-runs?{query}"


def model_url(base: str, name: str, version: str | None = None) -> str:
    """The registered model's page, or one version's page (``/models/<name>[/versions/<v>]``)."""
    return f"{base}/#/models/{quote(name)}" + ("" if version is None else f"/versions/{quote(str(version))}")


def open_model_card(driver, base: str, name: str, version: str, texts: Iterable[str],
                    timeout: float = 60.0) -> str:
    """Open a model version's page and wait until its description shows ``texts``; return the page text."""
    driver.get(model_url(base, name, version))
    text = wait_for_text(driver, texts, timeout)
    hide_assistant(driver)
    return text


def wait_for_text(driver, texts: Iterable[str], timeout: float = 60.0) -> str:
    """Wait until every string in ``texts`` is in the page's visible text; return that text.

    Raises:
        PageTimeoutError: some strings never appeared (named in the message with the page's URL).
    """
    from selenium.webdriver.common.by import By

    wanted = list(texts)
    seen = {"text": ""}

    def shown(d) -> bool:
        seen["text"] = d.find_element(By.TAG_NAME, "body").text
        return all(t in seen["text"] for t in wanted)

    _wait(driver, shown, timeout, lambda: f"{driver.current_url} did not show "
                                          f"{[t for t in wanted if t not in seen['text']]} within {timeout:.0f} s")
    return seen["text"]


def _wait(driver, condition, timeout: float, message) -> object:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        raise PageTimeoutError(message()) from None


def hide_assistant(driver) -> None:
    """Close MLflow's "Assistant" side panel if it is open (it takes a third of the window in screenshots)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'):
        if button.is_displayed():
            button.click()


def collapse_section(driver, title: str) -> bool:
    """Fold an open section of the page (e.g. the comparison's "Visualizations"); False when there is none."""
    from selenium.webdriver.common.by import By

    for header in driver.find_elements(By.CSS_SELECTOR, '[role="button"][aria-expanded="true"]'):
        if header.text.strip() == title:
            header.click()
            _wait(driver, lambda d: header.get_attribute("aria-expanded") == "false", 10,
                  lambda: f"section {title!r} did not fold")
            return True
    return False


def open_runs_table(driver, base: str, experiment_id: str, run_names: Iterable[str], timeout: float = 60.0) -> str:
    """Open an experiment's runs table, wait until ``run_names`` are listed, return the page text."""
    driver.get(experiment_url(base, experiment_id))
    text = wait_for_text(driver, run_names, timeout)
    hide_assistant(driver)
    return text


def open_comparison(driver, base: str, run_ids: Sequence[str], experiment_ids: Sequence[str],
                    timeout: float = 60.0) -> str:
    """Open the comparison view of ``run_ids``; wait for its run-ID header and metric table; return the page text."""
    from selenium.webdriver.common.by import By

    driver.get(compare_url(base, run_ids, experiment_ids))
    text = wait_for_text(driver, [f"Comparing {len(run_ids)} Runs", *run_ids], timeout)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, _METRIC_LINK), timeout,
          lambda: f"{driver.current_url} shows no metric table within {timeout:.0f} s")
    hide_assistant(driver)
    return text


# The comparison view's metric table is two react-virtualized grids kept in scroll sync: metric names (links
# titled "Plot chart") and, beside them, one column per run. Only the rows in view exist in the DOM.
_METRIC_LINK = 'a[title="Plot chart"]'
_SCROLL_METRICS = """
const [index] = arguments;
const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
const names = grids.find(g => g.querySelector('a[title="Plot chart"]'));
const values = grids[grids.indexOf(names) + 1];
const rowHeight = parseFloat(names.querySelector('.ReactVirtualized__Grid__innerScrollContainer > div').style.height);
// Both grids scroll: MLflow syncs the names grid from the values grid's state of the previous scroll event, so
// one programmatic scroll would leave the names one step behind; each grid re-renders on its own scroll event.
values.scrollTop = index * rowHeight;
names.scrollTop = index * rowHeight;
names.scrollIntoView({block: 'center'});
"""
_READ_ROW = """
const [metric] = arguments;
const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
const names = grids.find(g => g.querySelector('a[title="Plot chart"]'));
const values = grids[grids.indexOf(names) + 1];
const link = [...names.querySelectorAll('a[title="Plot chart"]')].find(a => a.textContent.trim() === metric);
if (!link) return null;
const top = link.closest('.ReactVirtualized__Grid__innerScrollContainer > div').style.top;
return [...values.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div')]
  .filter(cell => cell.style.top === top)
  .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
  .map(cell => cell.textContent.trim());
"""


def metric_row(driver, metric: str, index: int, timeout: float = 30.0) -> list[str]:
    """Scroll the comparison view's metric table to row ``index`` and return ``metric``'s values, one per run column.

    Args:
        metric: the metric key, e.g. ``test.site_A.patient.f1``.
        index: its row in the table: the position of ``metric`` in the sorted union of the runs' metric keys.

    Raises:
        PageTimeoutError: the row never showed ``metric`` (wrong index, or the table did not render).
    """
    driver.execute_script(_SCROLL_METRICS, index)
    return _wait(driver, lambda d: d.execute_script(_READ_ROW, metric), timeout,
                 lambda: f"the metric table never showed a row {metric!r} at index {index} within {timeout:.0f} s")


def screenshot(driver, path: Path) -> Path:
    """Save the current viewport as a PNG at ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise OSError(f"chromium could not write a screenshot to {path}")
    return path
