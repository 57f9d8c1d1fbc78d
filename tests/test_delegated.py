"""Delegated Graph access (sync_core.delegated) against the identity platform stand-in.

The sign-in is driven the way a browser drives it: GET the authorize URL that
``DelegatedAuth.start`` returns (redirects not followed), follow the 302 to the callback URL (a
tiny local HTTP server standing in for davbridge's ``auth/callback`` function, which records the
query), and hand that query to ``DelegatedAuth.finish``. Tokens then come from the user's msal
cache in a real ``LocalFileSecretStore``.

One stand-in per module (its token lifetime is changed by some tests), one fresh user per test.
Every request has a timeout; GraphClient never sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest
import requests
import trustme

from devtools.graphsim import GraphSim
from sync_core.delegated import (
    DelegatedAuth,
    DelegatedAuthError,
    flow_secret_name,
    token_cache_secret_name,
)
from sync_core.errors import AuthenticationFailed
from sync_core.secrets.localfile import LocalFileSecretStore
from sync_core.sides.graph_http import GraphClient

# sync_core.delegated silences msal's form_post advice (it explains why); pytest resets warning
# filters per test, so repeat that here.
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")

TENANT = "22222222-3333-4444-5555-666666666666"
CLIENT_ID = "dddddddd-1111-2222-3333-444444444444"
SECRET = "deleg-s3cret~Value.with_odd-chars"
SIGN_IN = "https://davbridge.example/api/auth/start?upn={upn}"
TIMEOUT = 10
_USERS = itertools.count(1)


# --- a stand-in for davbridge's callback endpoint ---------------------------------------------
class CallbackServer:
    """``http://127.0.0.1:PORT/api/auth/callback``: answers 200 and records each query."""

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                split = urlsplit(self.path)
                outer.queries.append(dict(parse_qsl(split.query, keep_blank_values=True)))
                body = b"signed in; you can close this window"
                self.send_response(200 if split.path == "/api/auth/callback" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/auth/callback"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def callback() -> Iterator[CallbackServer]:
    server = CallbackServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, callback: CallbackServer) -> Iterator[GraphSim]:
    with GraphSim(state_dir=tmp_path_factory.mktemp("graphsim-delegated")) as server:
        server.register_app(TENANT, CLIENT_ID, client_secret=SECRET, redirect_uris=(callback.url,))
        yield server


@pytest.fixture(autouse=True)
def _restore_sim(sim: GraphSim) -> Iterator[None]:
    lifetime = sim.token_lifetime
    yield
    sim.token_lifetime = lifetime


@pytest.fixture
def upn(sim: GraphSim) -> str:
    address = f"deleg{next(_USERS)}@contoso.test"
    sim.add_user(address, "Delegated User")
    return address


@pytest.fixture
def store(tmp_path: Path) -> LocalFileSecretStore:
    return LocalFileSecretStore(tmp_path / "secrets.json")


def make_auth(sim: GraphSim, store: LocalFileSecretStore, callback: CallbackServer, **kw: Any) -> DelegatedAuth:
    options: dict[str, Any] = {
        "client_secret": SECRET,
        "authority_host": sim.authority_host,
        "redirect_uri": callback.url,
        "secrets": store,
        "verify": sim.ca_path,
        "sign_in_url": SIGN_IN,
        **kw,
    }
    return DelegatedAuth(TENANT, options.pop("client_id", CLIENT_ID), **options)


@pytest.fixture
def auth(sim: GraphSim, store: LocalFileSecretStore, callback: CallbackServer) -> DelegatedAuth:
    return make_auth(sim, store, callback)


@pytest.fixture
def browser(sim: GraphSim) -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify (psf/requests#3829)
    session.verify = sim.ca_path
    yield session
    session.close()


def browse(
    auth: DelegatedAuth,
    browser: requests.Session,
    callback: CallbackServer,
    upn: str,
    *,
    edit: Callable[[str], str] = lambda url: url,
) -> tuple[dict[str, str], str]:
    """Start a sign-in and play the browser: (the callback's query, state)."""
    url, state = auth.start(upn)
    first = browser.get(edit(url), allow_redirects=False, timeout=TIMEOUT)
    assert first.status_code == 302, first.text
    location = first.headers["Location"]
    assert location.startswith(callback.url + "?")
    seen = len(callback.queries)
    landing = browser.get(location, allow_redirects=False, timeout=TIMEOUT)
    assert landing.status_code == 200
    assert len(callback.queries) == seen + 1
    return callback.queries[-1], state


def sign_in(auth: DelegatedAuth, browser: requests.Session, callback: CallbackServer, upn: str) -> str:
    query, _ = browse(auth, browser, callback, upn)
    return auth.finish(query)


def graph(sim: GraphSim, auth: DelegatedAuth, upn: str) -> GraphClient:
    return GraphClient(
        auth.token_provider(upn), base_url=sim.graph_url, verify=sim.ca_path, max_attempts=2, sleep=lambda s: None
    )


def with_login_hint(url: str, upn: str) -> str:
    """The user picks another account on the sign-in page."""
    parts = urlsplit(url)
    query = [(k, upn if k == "login_hint" else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def token_requests(sim: GraphSim) -> list[dict[str, Any]]:
    return [r for r in sim.request_log if r["method"] == "POST" and r["path"].endswith("/oauth2/v2.0/token")]


def stored_cache(store: LocalFileSecretStore, upn: str) -> dict[str, Any]:
    raw = store.get(token_cache_secret_name(upn))
    assert raw is not None
    return dict(json.loads(raw))


def cache_secrets(store: LocalFileSecretStore, upn: str, kind: str) -> list[str]:
    return [str(e["secret"]) for e in stored_cache(store, upn).get(kind, {}).values()]


# --- the happy path -----------------------------------------------------------------------------
def test_sign_in_stores_cache_and_graph_reads_own_calendar(
    sim: GraphSim,
    auth: DelegatedAuth,
    store: LocalFileSecretStore,
    browser: requests.Session,
    callback: CallbackServer,
    upn: str,
) -> None:
    sim.reset_response_log()
    url, state = auth.start(upn)
    query = dict(parse_qsl(urlsplit(url).query))
    assert query["login_hint"] == upn and query["state"] == state
    assert query["code_challenge_method"] == "S256" and query["response_type"] == "code"
    assert store.get(flow_secret_name(state)) is not None  # pending flow, holds the PKCE verifier
    assert not auth.is_signed_in(upn)

    first = browser.get(url, allow_redirects=False, timeout=TIMEOUT)
    assert first.status_code == 302
    landing = browser.get(first.headers["Location"], timeout=TIMEOUT)
    assert landing.status_code == 200
    answer = callback.queries[-1]
    assert answer["state"] == state and answer["code"]

    assert auth.finish(answer) == upn
    assert store.get(flow_secret_name(state)) is None  # one use
    assert auth.is_signed_in(upn)
    cache = stored_cache(store, upn)
    assert {"AccessToken", "RefreshToken", "IdToken", "Account"} <= cache.keys()
    assert [a["username"] for a in cache["Account"].values()] == [upn]
    raw_file = store.path.read_text()
    assert SECRET not in raw_file
    assert store.path.stat().st_mode & 0o777 == 0o600

    client = graph(sim, auth, upn)
    calendar = client.get_json(f"/users/{upn}/calendar")
    assert calendar["isDefaultCalendar"] is True
    assert client.get_json("/me/calendar")["id"] == calendar["id"]
    created = client.request_json(
        "POST",
        f"/users/{upn}/calendar/events",
        json={
            "subject": "written with a delegated token",
            "start": {"dateTime": "2031-03-04T10:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2031-03-04T11:00:00", "timeZone": "UTC"},
        },
    )
    assert client.get_json(f"/users/{upn}/events/{created['id']}")["subject"] == "written with a delegated token"
    assert [r["user"] for r in sim.request_log if r["path"].startswith("/v1.0/")][-1] == upn

    bodies = [r["body"] for r in sim.response_log if r["path"].endswith("/token") and r["status"] == 200]
    assert bodies
    for body in bodies:
        for name in ("access_token", "refresh_token", "id_token"):
            assert body[name] == "<redacted>"


def test_sign_in_with_certificate_credential(
    sim: GraphSim, store: LocalFileSecretStore, browser: requests.Session, callback: CallbackServer, upn: str
) -> None:
    leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("davbridge", key_type=trustme.KeyType.RSA)
    key_pem = leaf.private_key_pem.bytes().decode()
    cert_pem = leaf.cert_chain_pems[0].bytes().decode()
    cert_client = "dddddddd-0000-0000-0000-00000000cert"
    sim.register_app(TENANT, cert_client, certificate_pem=cert_pem, redirect_uris=(callback.url,))
    credential = {"client_secret": None, "certificate_pem": key_pem + cert_pem}
    auth = make_auth(sim, store, callback, client_id=cert_client, **credential)
    assert sign_in(auth, browser, callback, upn) == upn
    assert graph(sim, auth, upn).get_json("/me/calendar")["name"] == "Calendar"
    assert "PRIVATE KEY" not in store.path.read_text()


# --- refresh ---------------------------------------------------------------------------------------
def test_access_token_from_cache_then_refreshed_when_it_expires(
    sim: GraphSim,
    auth: DelegatedAuth,
    store: LocalFileSecretStore,
    browser: requests.Session,
    callback: CallbackServer,
    upn: str,
) -> None:
    # msal treats an access token with less than 300 s left as expired: 302 s leaves 2 s of use.
    sim.token_lifetime = 302
    sign_in(auth, browser, callback, upn)
    signed_in_at = time.monotonic()
    sim.reset_request_log()
    provider = auth.token_provider(upn)
    first = provider.token()
    assert provider.token() == first
    assert token_requests(sim) == []  # served from the stored cache
    assert cache_secrets(store, upn, "AccessToken") == [first]

    time.sleep(max(0.0, 2.2 - (time.monotonic() - signed_in_at)))
    refreshed = provider.token()
    assert refreshed != first
    assert len(token_requests(sim)) == 1
    assert cache_secrets(store, upn, "AccessToken") == [refreshed]  # written back
    assert len(cache_secrets(store, upn, "RefreshToken")) == 1  # rotated, not accumulated

    sim.token_lifetime = 3599
    client = graph(sim, auth, upn)
    assert client.get_json(f"/users/{upn}/calendar")["name"] == "Calendar"
    # another process (a fresh DelegatedAuth on the same store) starts from the refreshed cache
    other = make_auth(sim, store, callback)
    sim.reset_request_log()
    assert other.token_provider(upn).token() in (refreshed, cache_secrets(store, upn, "AccessToken")[0])


def test_graph_401_invalidates_and_refreshes_once(
    sim: GraphSim,
    auth: DelegatedAuth,
    store: LocalFileSecretStore,
    browser: requests.Session,
    callback: CallbackServer,
    upn: str,
) -> None:
    sign_in(auth, browser, callback, upn)
    client = graph(sim, auth, upn)
    before = client.auth.token()
    sim.expire_access_tokens(upn)  # Graph now refuses it; msal still thinks it is good
    sim.reset_request_log()
    assert client.get_json("/me/calendar")["name"] == "Calendar"
    assert len(token_requests(sim)) == 1
    statuses = [r["status"] for r in sim.request_log if r["path"] == "/v1.0/me/calendar"]
    assert statuses == [401, 200]
    assert client.auth.token() != before
    assert cache_secrets(store, upn, "AccessToken") == [client.auth.token()]


def test_concurrent_callers_share_one_refresh(
    sim: GraphSim, auth: DelegatedAuth, browser: requests.Session, callback: CallbackServer, upn: str
) -> None:
    sign_in(auth, browser, callback, upn)
    provider = auth.token_provider(upn)
    provider.token()
    provider.invalidate()
    sim.reset_request_log()
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(provider.token())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert not errors and len(results) == 8
    assert len(set(results)) == 1
    assert len(token_requests(sim)) == 1


# --- a grant that is gone ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("break_grant", "code"),
    [("revoke_refresh_tokens", "AADSTS50173"), ("expire_refresh_tokens", "AADSTS700082")],
)
def test_revoked_or_expired_refresh_token_asks_for_a_new_sign_in(
    sim: GraphSim,
    auth: DelegatedAuth,
    store: LocalFileSecretStore,
    browser: requests.Session,
    callback: CallbackServer,
    upn: str,
    break_grant: str,
    code: str,
) -> None:
    sign_in(auth, browser, callback, upn)
    client = graph(sim, auth, upn)
    assert client.get_json("/me/calendar")
    getattr(sim, break_grant)(upn)
    sim.expire_access_tokens(upn)
    with pytest.raises(AuthenticationFailed) as info:
        client.get_json("/me/calendar")
    message = str(info.value)
    assert "delegated sign-in expired or was revoked" in message
    assert f"sign in again at {SIGN_IN.format(upn=quote(upn, safe='@'))}" in message
    assert code in message and "invalid_grant" in message
    # signing in again repairs it
    sign_in(auth, browser, callback, upn)
    assert graph(sim, auth, upn).get_json("/me/calendar")["name"] == "Calendar"


def test_forget_deletes_the_cache(
    sim: GraphSim,
    auth: DelegatedAuth,
    store: LocalFileSecretStore,
    browser: requests.Session,
    callback: CallbackServer,
    upn: str,
) -> None:
    sign_in(auth, browser, callback, upn)
    provider = auth.token_provider(upn)
    assert provider.token()
    auth.forget(upn)
    assert not auth.is_signed_in(upn)
    assert store.get(token_cache_secret_name(upn)) is None
    with pytest.raises(
        AuthenticationFailed, match=re.escape("must sign in at https://davbridge.example/api/auth/start")
    ):
        auth.token_provider(upn).token()


def test_user_who_never_signed_in(auth: DelegatedAuth, upn: str) -> None:
    with pytest.raises(AuthenticationFailed, match="no delegated sign-in for this user"):
        auth.token_provider(upn).token()


# --- what a delegated token may reach ----------------------------------------------------------------
def test_delegated_token_reaches_only_the_users_own_mailbox(
    sim: GraphSim, auth: DelegatedAuth, browser: requests.Session, callback: CallbackServer, upn: str
) -> None:
    other = f"deleg{next(_USERS)}@contoso.test"
    sim.add_user(other)
    sign_in(auth, browser, callback, upn)
    client = graph(sim, auth, upn)
    with pytest.raises(AuthenticationFailed, match="HTTP 403 ErrorAccessDenied"):
        client.get_json(f"/users/{other}/calendar")
    with pytest.raises(AuthenticationFailed, match="HTTP 403 ErrorAccessDenied"):
        client.get_json(f"/users/{other}/events")

    headers = {"Authorization": f"Bearer {client.auth.token()}"}
    resp = browser.get(f"{sim.graph_url}/users/{other}", headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "Authorization_RequestDenied"
    resp = browser.post(
        f"{sim.graph_url}/subscriptions",
        headers=headers,
        json={
            "changeType": "created,updated,deleted",
            "notificationUrl": "https://davbridge.example/api/graph/notify",
            "resource": f"/users/{other}/events",
            "expirationDateTime": "2031-01-01T00:00:00Z",
            "clientState": "x",
        },
        timeout=TIMEOUT,
    )
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "ExtensionError"
    resp = browser.get(f"{sim.graph_url}/users/{upn}", headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 200 and resp.json()["userPrincipalName"] == upn


# --- failed sign-ins ------------------------------------------------------------------------------------
def test_unknown_missing_and_replayed_state(
    auth: DelegatedAuth, store: LocalFileSecretStore, browser: requests.Session, callback: CallbackServer, upn: str
) -> None:
    with pytest.raises(DelegatedAuthError, match="no valid state"):
        auth.finish({"code": "abc"})
    with pytest.raises(DelegatedAuthError, match="unknown, superseded or already used sign-in"):
        auth.finish({"code": "abc", "state": "not-a-state-davbridge-issued"})
    older, older_state = browse(auth, browser, callback, upn)
    newer, state = browse(auth, browser, callback, upn)
    assert flow_secret_name(older_state) == flow_secret_name(state)  # one pending sign-in per user
    forged = {**newer, "state": state.split(".")[0] + ".forged"}
    for stale in (older, forged):  # neither consumes the newest pending sign-in
        with pytest.raises(DelegatedAuthError, match="unknown, superseded or already used sign-in"):
            auth.finish(stale)
    assert store.get(flow_secret_name(state)) is not None
    assert auth.finish(newer) == upn
    with pytest.raises(DelegatedAuthError, match="unknown, superseded or already used sign-in"):
        auth.finish(newer)


def test_expired_state(
    sim: GraphSim, store: LocalFileSecretStore, browser: requests.Session, callback: CallbackServer, upn: str
) -> None:
    now = [1_900_000_000.0]
    auth = make_auth(sim, store, callback, clock=lambda: now[0])
    query, state = browse(auth, browser, callback, upn)
    now[0] += 15 * 60 + 1
    with pytest.raises(DelegatedAuthError, match=r"sign-in link expired \(links are valid for 15 minutes\)"):
        auth.finish(query)
    assert store.get(flow_secret_name(state)) is None
    assert not auth.is_signed_in(upn)


def test_consent_denied_tells_the_admin_what_to_grant(
    sim: GraphSim,
    auth: DelegatedAuth,
    store: LocalFileSecretStore,
    browser: requests.Session,
    callback: CallbackServer,
    upn: str,
) -> None:
    sim.deny_consent(upn)
    try:
        query, state = browse(auth, browser, callback, upn)
    finally:
        sim.deny_consent(upn, False)
    assert query["error"] == "access_denied" and query["state"] == state and "code" not in query
    with pytest.raises(DelegatedAuthError) as info:
        auth.finish(query)
    message = str(info.value)
    assert "consent was not given" in message and "AADSTS65004" in message
    assert "Grant admin consent" in message and CLIENT_ID in message
    assert "Calendars.ReadWrite" in message and "offline_access" in message
    assert SIGN_IN.format(upn=quote(upn, safe="@")) in message
    assert not auth.is_signed_in(upn)
    assert store.get(flow_secret_name(state)) is None


def test_signed_in_as_someone_else(
    sim: GraphSim,
    auth: DelegatedAuth,
    store: LocalFileSecretStore,
    browser: requests.Session,
    callback: CallbackServer,
    upn: str,
) -> None:
    intruder = f"deleg{next(_USERS)}@contoso.test"
    sim.add_user(intruder)
    query, _ = browse(auth, browser, callback, upn, edit=lambda url: with_login_hint(url, intruder))
    with pytest.raises(DelegatedAuthError) as info:
        auth.finish(query)
    message = str(info.value)
    assert f"the sign-in link was for {upn}, but {intruder} signed in" in message
    assert "nothing was stored" in message
    assert not auth.is_signed_in(upn) and not auth.is_signed_in(intruder)


def test_unknown_user_is_refused(auth: DelegatedAuth, browser: requests.Session, callback: CallbackServer) -> None:
    query, _ = browse(auth, browser, callback, "nobody@contoso.test")
    assert query["error"] == "invalid_request"
    with pytest.raises(DelegatedAuthError, match="AADSTS50034"):
        auth.finish(query)


def test_constructor_checks() -> None:
    store = LocalFileSecretStore("/nonexistent/never-written.json")
    with pytest.raises(ValueError, match="redirect_uri"):
        DelegatedAuth(
            TENANT, CLIENT_ID, client_secret=SECRET, redirect_uri="http://davbridge.example/cb", secrets=store
        )
    with pytest.raises(ValueError, match="either a client secret or a certificate"):
        DelegatedAuth(TENANT, CLIENT_ID, redirect_uri="https://davbridge.example/cb", secrets=store)
    with pytest.raises(ValueError, match="at least one Graph permission"):
        DelegatedAuth(
            TENANT,
            CLIENT_ID,
            client_secret=SECRET,
            redirect_uri="https://davbridge.example/cb",
            secrets=store,
            scopes=("offline_access",),
        )
    name = token_cache_secret_name("  Ada@Contoso.TEST ")
    assert name == token_cache_secret_name("ada@contoso.test")
    assert name.startswith("delegated-token-cache-") and len(name) <= 127


# --- secrets stay out of logs -------------------------------------------------------------------------
def test_tokens_codes_and_secrets_never_logged(
    sim: GraphSim,
    store: LocalFileSecretStore,
    browser: requests.Session,
    callback: CallbackServer,
    upn: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, msal's included
    auth = make_auth(sim, store, callback)
    query, state = browse(auth, browser, callback, upn)
    pending = json.loads(store.get(flow_secret_name(state)) or "{}")
    verifier = pending["flow"]["code_verifier"]
    auth.finish(query)
    provider = auth.token_provider(upn)
    access = provider.token()
    provider.invalidate()
    refreshed = provider.token()
    refresh_tokens = cache_secrets(store, upn, "RefreshToken")
    id_tokens = cache_secrets(store, upn, "IdToken")
    sim.revoke_refresh_tokens(upn)
    provider.invalidate()
    with pytest.raises(AuthenticationFailed) as info:
        provider.token()

    assert "msal.token_cache" in {r.name for r in caplog.records}  # msal's DEBUG lines were captured

    def from_the_browser(record: logging.LogRecord) -> bool:
        # urllib3 logging the test's own browser requests (authorize URL, callback URL with the
        # code) is the browser's business, not davbridge's.
        message = record.getMessage()
        return record.name.startswith("urllib3") and ("/oauth2/v2.0/authorize?" in message or "/callback?" in message)

    lines = [caplog.handler.format(r) for r in caplog.records if not from_the_browser(r)]
    assert len(lines) < len(caplog.records)  # the filter above is not vacuous ...
    text = "\n".join(lines) + "\n" + str(info.value)
    assert "oauth2/v2.0/token" in text  # ... and the token requests were logged
    forbidden = [SECRET, query["code"], verifier, access, refreshed, *refresh_tokens, *id_tokens]
    for value in forbidden:
        assert value and value not in text
    assert upn not in "\n".join(lines)


# --- the stand-in's protocol checks ----------------------------------------------------------------------
def _pkce() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(b"v" * 40).decode().rstrip("=")
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def _authorize(sim: GraphSim, browser: requests.Session, **params: str) -> requests.Response:
    return browser.get(
        f"{sim.authority_host}/{TENANT}/oauth2/v2.0/authorize", params=params, allow_redirects=False, timeout=TIMEOUT
    )


def test_stand_in_refuses_unregistered_redirect_uri_without_redirecting(
    sim: GraphSim, browser: requests.Session, upn: str
) -> None:
    resp = _authorize(
        sim,
        browser,
        client_id=CLIENT_ID,
        response_type="code",
        scope="openid Calendars.ReadWrite",
        redirect_uri="https://evil.example/cb",
        login_hint=upn,
        state="s",
    )
    assert resp.status_code == 400 and "Location" not in resp.headers
    assert resp.json()["error_codes"] == [50011]


def test_stand_in_checks_pkce_and_single_use_codes(
    sim: GraphSim, browser: requests.Session, callback: CallbackServer, upn: str
) -> None:
    verifier, challenge = _pkce()
    scope = "https://graph.microsoft.com/Calendars.ReadWrite offline_access openid"

    def code() -> str:
        resp = _authorize(
            sim,
            browser,
            client_id=CLIENT_ID,
            response_type="code",
            scope=scope,
            redirect_uri=callback.url,
            login_hint=upn,
            state="s",
            code_challenge=challenge,
            code_challenge_method="S256",
        )
        assert resp.status_code == 302
        return dict(parse_qsl(urlsplit(resp.headers["Location"]).query))["code"]

    def redeem(value: str, **extra: str) -> requests.Response:
        form = {
            "grant_type": "authorization_code",
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "code": value,
            "redirect_uri": callback.url,
            "scope": scope,
            "code_verifier": verifier,
            **extra,
        }
        return browser.post(f"{sim.authority_host}/{TENANT}/oauth2/v2.0/token", data=form, timeout=TIMEOUT)

    first = code()
    bad = redeem(first, code_verifier="x" * 43)
    assert bad.status_code == 400 and bad.json()["error_codes"] == [501481]
    assert redeem(first, client_secret="wrong").json()["error"] == "invalid_client"
    assert redeem(first, redirect_uri=callback.url + "x").json()["error_codes"] == [50011]
    ok = redeem(first)
    assert ok.status_code == 200
    body = ok.json()
    assert {"access_token", "refresh_token", "id_token", "expires_in", "scope"} <= body.keys()
    claims = json.loads(base64.urlsafe_b64decode(body["id_token"].split(".")[1] + "=="))
    assert claims["preferred_username"] == upn and claims["tid"] == TENANT and claims["aud"] == CLIENT_ID
    assert redeem(first).json()["error_codes"] == [54005]  # replay
    keys = browser.get(f"{sim.authority_host}/{TENANT}/discovery/v2.0/keys", timeout=TIMEOUT).json()["keys"]
    assert keys and keys[0]["kty"] == "RSA"

    refresh = {
        "grant_type": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "refresh_token": body["refresh_token"],
        "scope": scope,
    }
    again = browser.post(f"{sim.authority_host}/{TENANT}/oauth2/v2.0/token", data=refresh, timeout=TIMEOUT)
    assert again.status_code == 200 and again.json()["refresh_token"] != body["refresh_token"]
    sim.revoke_refresh_tokens(upn)
    gone = browser.post(f"{sim.authority_host}/{TENANT}/oauth2/v2.0/token", data=refresh, timeout=TIMEOUT)
    assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"
    assert gone.json()["error_description"].startswith("AADSTS50173:")


def test_stand_in_admin_endpoints_for_delegated_access(
    sim: GraphSim, auth: DelegatedAuth, browser: requests.Session, callback: CallbackServer, upn: str
) -> None:
    admin = f"{sim.authority_host}/_sim"
    other_client = "dddddddd-0000-0000-0000-0000000admin"
    resp = browser.post(
        f"{admin}/apps",
        timeout=TIMEOUT,
        json={"tenant_id": TENANT, "client_id": other_client, "client_secret": "x", "redirect_uris": [callback.url]},
    )
    assert resp.status_code == 201
    assert (
        browser.post(
            f"{admin}/apps",
            timeout=TIMEOUT,
            json={"tenant_id": TENANT, "client_id": other_client, "client_secret": "x", "redirect_uris": "nope"},
        ).status_code
        == 400
    )
    ok = _authorize(
        sim,
        browser,
        client_id=other_client,
        response_type="code",
        scope="openid",
        redirect_uri=callback.url,
        login_hint=upn,
    )
    assert ok.status_code == 302 and "code=" in ok.headers["Location"]

    assert browser.post(f"{admin}/users/{upn}/deny-consent", json={}, timeout=TIMEOUT).status_code == 204
    denied, _ = browse(auth, browser, callback, upn)
    assert denied["error"] == "access_denied"
    assert browser.post(f"{admin}/users/{upn}/deny-consent", json={"denied": False}, timeout=TIMEOUT).status_code == 204
    assert sign_in(auth, browser, callback, upn) == upn

    client = graph(sim, auth, upn)
    assert client.get_json("/me/calendar")
    assert browser.post(f"{admin}/users/{upn}/revoke-refresh-tokens", timeout=TIMEOUT).status_code == 204
    assert browser.post(f"{admin}/expire-access-tokens", json={"upn": upn}, timeout=TIMEOUT).status_code == 204
    with pytest.raises(AuthenticationFailed, match="AADSTS50173"):
        client.get_json("/me/calendar")
    missing = browser.post(f"{admin}/users/nobody@contoso.test/expire-refresh-tokens", timeout=TIMEOUT)
    assert missing.status_code == 404
