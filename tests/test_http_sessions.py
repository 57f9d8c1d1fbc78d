"""sync_core/http_sessions.py: requests' per-request environment lookups are turned off only
when the environment has nothing for them, and an admin's proxy still applies."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sync_core import http_sessions
from sync_core.sides.caldav_side import open_caldav
from sync_core.sides.graph_http import GraphClient, StaticToken

_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
          "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC")


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in _NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    http_sessions.environment_lookups_needed.cache_clear()
    yield monkeypatch
    http_sessions.environment_lookups_needed.cache_clear()


def test_nothing_in_the_environment_turns_the_lookups_off(clean_env: pytest.MonkeyPatch) -> None:
    assert http_sessions.environment_lookups_needed() is False
    assert http_sessions.new_session().trust_env is False
    assert GraphClient(StaticToken("t"), base_url="http://127.0.0.1:9/v1.0").session.trust_env is False
    assert open_caldav("http://127.0.0.1:9/", "u", "p").session.trust_env is False
    transport = http_sessions.azure_transport()
    transport.open()
    assert transport.session is not None and transport.session.trust_env is False
    adapter = transport.session.get_adapter("https://account.table.core.windows.net/")
    assert adapter._pool_maxsize == http_sessions.POOL_SIZE  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "NETRC"])
def test_any_variable_requests_would_read_keeps_the_lookups(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv(name, "x")
    assert http_sessions.environment_lookups_needed() is True
    assert http_sessions.new_session().trust_env is True
    assert open_caldav("http://127.0.0.1:9/", "u", "p").session.trust_env is True
    transport = http_sessions.azure_transport()
    transport.open()
    assert transport.session is not None and transport.session.trust_env is True


def test_a_netrc_file_keeps_the_lookups(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".netrc").write_text("machine example.org login a password b\n")
    assert http_sessions.environment_lookups_needed() is True


class _Proxy(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        _Proxy.seen.append(self.path)
        body = b'{"value": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_admins_proxy_still_carries_graph_requests(clean_env: pytest.MonkeyPatch) -> None:
    """A proxy named in the environment is used (requests looks it up per request as before)."""
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        _Proxy.seen.clear()
        client = GraphClient(StaticToken("t"), base_url="http://graph.invalid/v1.0")
        client.get_json("/me/calendars")
        assert _Proxy.seen == ["http://graph.invalid/v1.0/me/calendars"]
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_requests_itself_reads_the_environment_only_with_trust_env(clean_env: pytest.MonkeyPatch) -> None:
    """What the switch saves: with ``trust_env`` off, requests does not consult the proxy
    variables (so it must stay on whenever one is set)."""
    clean_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    session = requests.Session()
    settings = session.merge_environment_settings("http://example.org/", {}, None, None, None)
    assert settings["proxies"].get("http") == "http://127.0.0.1:9"
    session.trust_env = False
    settings = session.merge_environment_settings("http://example.org/", {}, None, None, None)
    assert "http" not in settings["proxies"]
