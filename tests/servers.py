"""The embedded PostgreSQL and Redis of a test run that configures none.

Reading the settings starts no server (console/servers.py), and pytest-django
reads them before any conftest.py: so this plugin, which pyproject.toml
loads first (``-p tests.servers``), starts the embedded servers the run uses
before that, and stops them at its end. Configured servers are not ours.
"""

from __future__ import annotations

import sys

import pytest
from django.db import connections

from console import servers


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    servers.start_embedded(servers.instance_home())
    return (yield)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """After the session's fixtures are torn down, the test database dropped with them."""
    connections.close_all()
    for failure in servers.stop_embedded(servers.instance_home()):
        print(failure, file=sys.stderr)
