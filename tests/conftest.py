"""Suite-wide pytest fixtures: real CalDAV servers and Azurite on 127.0.0.1.

Fixtures
  * ``caldav_server`` (session) -- a started ``devtools.servers.CalDAVServer``;
    every test using it runs once per selected kind (test ids ``[radicale]``,
    ``[xandikos]``, ``[cyrus]``).
  * ``caldav_kind`` (session) -- the kind string of that parametrization.
  * ``fresh_calendar`` (function) -- URL of a new, empty calendar on
    ``caldav_server`` (so tests never see each other's data).  NB: on Cyrus a UID
    is unique across all calendars of the user -- always use fresh UIDs too.
  * ``azurite`` (session) -- a started ``devtools.servers.AzuriteServer``.
  * ``servers_dir`` (session) -- the session directory holding the servers'
    workdirs and logs (``<pytest tmp>/servers/<kind>/``).

Choosing CalDAV servers: ``pytest --servers=radicale,xandikos`` or
``DAVBRIDGE_TEST_SERVERS=radicale,xandikos`` (the option wins; default / ``all``:
all three).  A selected server that can't start makes its tests ERROR with the
reason and the server's log tail -- nothing is skipped silently.  A server is
started at most once per session (lazily, on first use) and a failed start is
remembered, so it is not retried for every test.  All servers are stopped at
session end, also on failures/Ctrl-C (plus an ``atexit`` and parent-death
safety net inside devtools.servers).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # make `devtools` / `sync_core` importable without installing
    sys.path.insert(0, str(ROOT))

from devtools import servers  # noqa: E402

SERVERS_ENV = "DAVBRIDGE_TEST_SERVERS"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--servers",
        action="store",
        default=None,
        help=(
            "comma-separated CalDAV server kinds to test against "
            f"({', '.join(servers.CALDAV_KINDS)} or 'all'; default: env {SERVERS_ENV} or all)"
        ),
    )


def selected_caldav_kinds(config: pytest.Config) -> list[str]:
    """Kinds chosen by --servers / DAVBRIDGE_TEST_SERVERS (default: all), in canonical order."""
    raw = config.getoption("--servers") or os.environ.get(SERVERS_ENV) or "all"
    wanted = {k.strip().lower() for k in raw.split(",") if k.strip()}
    if not wanted or "all" in wanted:
        return list(servers.CALDAV_KINDS)
    unknown = wanted - set(servers.CALDAV_KINDS)
    if unknown:
        raise pytest.UsageError(
            f"unknown CalDAV server kind(s) {sorted(unknown)} in --servers/{SERVERS_ENV}; "
            f"choose from {', '.join(servers.CALDAV_KINDS)}"
        )
    return [k for k in servers.CALDAV_KINDS if k in wanted]


def pytest_configure(config: pytest.Config) -> None:
    selected_caldav_kinds(config)  # fail early on a typo


def pytest_report_header(config: pytest.Config) -> str:
    return f"davbridge CalDAV servers: {', '.join(selected_caldav_kinds(config))}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "caldav_kind" in metafunc.fixturenames:
        kinds = selected_caldav_kinds(metafunc.config)
        metafunc.parametrize("caldav_kind", kinds, ids=kinds, scope="session")


class ServerPool:
    """Starts each server once per session, remembers failures, stops everything at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._started: dict[str, servers.CalDAVServer | servers.AzuriteServer] = {}
        self._failed: dict[str, BaseException] = {}

    def _get(
        self, name: str, start: Callable[[], servers.CalDAVServer | servers.AzuriteServer]
    ) -> servers.CalDAVServer | servers.AzuriteServer:
        if name in self._failed:
            raise servers.ServerStartError(
                f"{name} failed to start earlier in this session: {self._failed[name]}"
            )
        if name not in self._started:
            try:
                self._started[name] = start()
            except BaseException as exc:
                self._failed[name] = exc
                raise
        return self._started[name]

    def caldav(self, kind: str) -> servers.CalDAVServer:
        srv = self._get(kind, lambda: servers.start_caldav(kind, self.base / kind))
        assert isinstance(srv, servers.CalDAVServer)
        return srv

    def azurite(self) -> servers.AzuriteServer:
        srv = self._get("azurite", lambda: servers.start_azurite(self.base / "azurite"))
        assert isinstance(srv, servers.AzuriteServer)
        return srv

    def stop_all(self) -> None:
        errors = []
        for name, srv in reversed(list(self._started.items())):
            try:
                srv.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{name}: {exc!r}")
        self._started.clear()
        if errors:
            raise RuntimeError("stopping test servers failed: " + "; ".join(errors))


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers", numbered=False)


@pytest.fixture(scope="session")
def _server_pool(servers_dir: Path) -> Iterator[ServerPool]:
    pool = ServerPool(servers_dir)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="session")
def caldav_kind(request: pytest.FixtureRequest) -> str:
    # Normally replaced by the parametrization in pytest_generate_tests.
    return str(getattr(request, "param", servers.CALDAV_KINDS[0]))


@pytest.fixture(scope="session")
def caldav_server(caldav_kind: str, _server_pool: ServerPool) -> servers.CalDAVServer:
    return _server_pool.caldav(caldav_kind)


@pytest.fixture
def fresh_calendar(caldav_server: servers.CalDAVServer, request: pytest.FixtureRequest) -> str:
    """URL of a new, empty calendar on ``caldav_server`` (display name = test name)."""
    return caldav_server.new_calendar(request.node.name[:60])


@pytest.fixture(scope="session")
def azurite(_server_pool: ServerPool) -> servers.AzuriteServer:
    return _server_pool.azurite()


# The scenario world (Graph stand-in + real CalDAV server + CLI) for every scenario module.
from scenario_world import graphsim, world  # noqa: E402, F401

# No secret and no event content in any log record of the session (tests/log_secrecy.py).
pytest_plugins = ["log_secrecy"]
