"""Session-wide test services shared by the tests that can share them."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_server_url(tmp_path_factory):
    """One real Prefect API server for the session, started on first use (osteo_testing/prefect_server.py)."""
    from osteo_testing.prefect_server import prefect_server
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


@pytest.fixture
def prefect_api(prefect_server_url, tmp_path):
    """This test's in-process flows talk to the session's Prefect server (results under its own tmp folder)."""
    from osteo_testing.prefect_server import use_prefect_server
    with use_prefect_server(prefect_server_url, tmp_path / ".prefect"):
        yield prefect_server_url
