"""Abuse of the two anonymous Graph webhook functions (``graph_notifications``,
``graph_lifecycle``): forged, replayed, oversized, malformed and hostile requests, driven
through ``function_app`` with constructed ``HttpRequest``s against the embedded defaults
(SQLite state, secrets file, in-memory queue) with a real subscription row and the real
clientState key.

What an anonymous caller must never get: a queued sync (or a deleted subscription) without
the clientState of that subscription's user, more than one queued message however often a
valid notification is replayed, a parsed oversized body, a slow or crashing answer to a
malformed body, an HTML answer to a validation token, or a flood of warnings in the logs.
A handler that raises is counted as the Functions host would answer it: 500, with the
exception's traceback in the host's log.
"""

from __future__ import annotations

import json
import logging
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage

import function_app
from sync_core import handlers, webhooks
from sync_core.queue import MemorySyncQueue, SyncMessage
from sync_core.services import Services
from sync_core.state.base import Pairing, Subscription, UserRecord
from sync_core.webhooks import MAX_NOTIFICATION_BYTES, client_state

ADA, BOB = "ada@contoso.test", "bob@contoso.test"
ADA_SUB, BOB_SUB = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07", "0b9b5e2a-51c4-4b39-8a47-3f0a5c3e9d11"
UNKNOWN_SUB = "00000000-0000-0000-0000-000000000000"
ENDPOINTS = ("graph_notifications", "graph_lifecycle")
FAST = 1.0  # seconds: a bound for one answer, not a benchmark
host_log = logging.getLogger("test.functions_host")


@dataclass
class Site:
    services: Services
    ada_state: str
    bob_state: str

    @property
    def queue(self) -> MemorySyncQueue:
        assert isinstance(self.services.queue, MemorySyncQueue)
        return self.services.queue

    def nothing_requested(self) -> bool:
        """No queue message and no pending sync request, for either user."""
        return (len(self.queue) == 0 and self.services.store.take_sync_request(ADA) is None
                and self.services.store.take_sync_request(BOB) is None)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setenv("DAVBRIDGE_HOME", str(tmp_path))
    monkeypatch.setenv("DAVBRIDGE_WEBHOOK_URL", "https://davbridge.example/api/graph/notifications")
    monkeypatch.setenv("DAVBRIDGE_LIFECYCLE_URL", "https://davbridge.example/api/graph/lifecycle")
    for name in ("DAVBRIDGE_QUEUE_URL", "DAVBRIDGE_STATE_URL", "DAVBRIDGE_SECRETS_URL", "GRAPH_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    function_app.services.cache_clear()
    services = function_app.services()
    key = services.client_state_key(create=True)
    assert key
    expires = datetime.now(UTC) + timedelta(days=3)
    for upn, sub_id in ((ADA, ADA_SUB), (BOB, BOB_SUB)):
        services.store.save_user(UserRecord(upn, "http://127.0.0.1:9/", upn.split("@")[0]))
        services.secrets.set(UserRecord(upn, "", "").caldav_secret_name(), "pw")
        services.store.save_pairing(Pairing(f"p-{upn}", upn, None, "http://127.0.0.1:9/cal/"))
        services.store.save_subscription(Subscription(sub_id, upn, f"/users/{upn}/events", expires))
    yield Site(services, client_state(key, ADA), client_state(key, BOB))
    function_app.services.cache_clear()


@dataclass
class Answer:
    status: int
    body: bytes
    mimetype: str | None
    headers: dict[str, str]
    seconds: float
    error: BaseException | None = None


def _send(endpoint: str, body: bytes, params: dict[str, str] | None = None) -> Answer:
    """One POST through the function, as the host runs it: an exception becomes a 500 and a
    traceback in the host's log."""
    handler = getattr(function_app, endpoint).build().get_user_function()
    request = func.HttpRequest("POST", f"https://davbridge.example/api/graph/{endpoint}", body=body,
                               params=params or {})
    started = time.perf_counter()
    try:
        resp = handler(request)
    except Exception as exc:
        host_log.exception("Executed 'Functions.%s' (Failed)", endpoint)
        return Answer(500, b"", None, {}, time.perf_counter() - started, exc)
    return Answer(resp.status_code, resp.get_body(), resp.mimetype, dict(resp.headers),
                  time.perf_counter() - started)


def _item(sub_id: Any, state: Any, **extra: Any) -> dict[str, Any]:
    item = {"subscriptionId": sub_id, "clientState": state, "changeType": "updated",
            "resource": f"Users/{ADA}/Events/AAMkAGI2", "tenantId": "contoso-tenant",
            "lifecycleEvent": "subscriptionRemoved", **extra}
    return {k: v for k, v in item.items() if v is not None}


def _bare(sub_id: str, state: str) -> dict[str, Any]:
    """A minimal item: 10,000 of them stay under the 1 MiB limit."""
    return {"subscriptionId": sub_id, "clientState": state}


def _body(*items: dict[str, Any]) -> bytes:
    return json.dumps({"value": list(items)}).encode()


# -- clientState and subscription ---------------------------------------------------------------
def _forged_states(site: Site) -> dict[str, Any]:
    good = site.ada_state
    return {
        "one character changed": good[:-1] + ("B" if good.endswith("A") else "A"),
        "truncated": good[:-1],
        "extended": good + "A",
        "case flipped": good.swapcase(),
        "bob's clientState": site.bob_state,
        "empty": "",
        "10,000 characters": good + "x" * 10_000,
        "a number": 12345,
        "missing": None,
        "an object": {"clientState": good},
        "padded": f" {good} ",
    }


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_wrong_client_state_queues_nothing_and_deletes_nothing(site: Site, endpoint: str) -> None:
    for label, state in _forged_states(site).items():
        answer = _send(endpoint, _body(_item(ADA_SUB, state)))
        assert (answer.status, answer.error) == (202, None), label
        assert site.nothing_requested(), f"{endpoint} acted on a notification with a {label} clientState"
        assert site.services.store.get_subscription(ADA_SUB) is not None, label
    # Ada's (valid) clientState on Bob's subscription: the state proves the user, not the caller's choice.
    assert _send(endpoint, _body(_item(BOB_SUB, site.ada_state))).status == 202
    assert site.nothing_requested() and site.services.store.get_subscription(BOB_SUB) is not None
    # The real one works (so the rejections above are not vacuous).
    assert _send(endpoint, _body(_item(ADA_SUB, site.ada_state))).status == 202
    assert site.queue.drain() == [SyncMessage(ADA, "webhook" if endpoint == "graph_notifications" else "lifecycle")]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_unknown_subscription_id_queues_nothing(site: Site, endpoint: str) -> None:
    for sub_id in (UNKNOWN_SUB, ADA_SUB.upper(), ADA_SUB + " ", "", "x" * 64, "../" + ADA_SUB, "' OR 1=1 --"):
        answer = _send(endpoint, _body(_item(sub_id, site.ada_state)))
        assert (answer.status, answer.error) == (202, None), sub_id
        assert site.nothing_requested(), f"{endpoint} acted on subscription {sub_id!r}"
    # A subscription that Graph removed (the row is gone) no longer opens the door.
    site.services.store.delete_subscription(ADA_SUB)
    site.services.forget_subscription(ADA_SUB)
    assert _send(endpoint, _body(_item(ADA_SUB, site.ada_state))).status == 202
    assert site.nothing_requested()


def test_ten_thousand_unknown_subscriptions_cost_a_bounded_number_of_lookups(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    real = site.services.store.get_subscription

    def counting(sub_id: str) -> Subscription | None:
        lookups.append(sub_id)
        return real(sub_id)

    monkeypatch.setattr(site.services.store, "get_subscription", counting)
    items = [_bare(f"unknown-{i}", "x") for i in range(10_000)]
    answer = _send("graph_notifications", _body(*items, _item(ADA_SUB, site.ada_state)))
    assert (answer.status, answer.error) == (202, None) and answer.seconds < FAST
    assert len(lookups) <= handlers.MAX_SUBSCRIPTIONS_PER_POST
    assert site.nothing_requested()  # the genuine item came after the budget was spent


# -- replay ---------------------------------------------------------------------------------------
def test_a_replayed_notification_queues_at_most_one_more_message(site: Site) -> None:
    body = _body(_item(ADA_SUB, site.ada_state))
    assert _send("graph_notifications", body).status == 202
    (first,) = site.queue.drain()
    assert first == SyncMessage(ADA, "webhook")
    worker = function_app.sync_worker.build().get_user_function()
    worker(QueueMessage(id="m1", body=first.encode().encode(), dequeue_count=1))  # takes the request and syncs
    assert site.services.store.get_status(f"p-{ADA}") is not None  # the worker did run

    # The same valid body again (an attacker replaying a captured POST): at most one new
    # request, however often -- 1,000 replays are merged into it.
    assert _send("graph_notifications", body).status == 202
    for _ in range(1_000):
        assert _send("graph_notifications", body).status == 202
    sent = site.queue.drain()
    assert len(sent) <= 1 and all(m == SyncMessage(ADA, "webhook") for m in sent)
    request = site.services.store.take_sync_request(ADA)
    assert (request is not None) == (len(sent) == 1)
    assert site.services.store.take_sync_request(BOB) is None


# -- oversized ------------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_oversized_body_is_refused_413_without_being_parsed(site: Site, endpoint: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[int] = []

    def spying_loads(text: Any, *args: Any, **kwargs: Any) -> Any:
        parsed.append(len(text))
        return json.loads(text, *args, **kwargs)

    monkeypatch.setattr(webhooks, "json", types.SimpleNamespace(loads=spying_loads))
    valid = _body(_item(ADA_SUB, site.ada_state))
    # A perfectly valid notification, padded with JSON whitespace past 1 MiB: acted on if it were read.
    oversized = valid[:-1] + b" " * (MAX_NOTIFICATION_BYTES + 1 - len(valid)) + b"}"
    assert len(oversized) == MAX_NOTIFICATION_BYTES + 1
    for body in (oversized, oversized + b" " * (8 * MAX_NOTIFICATION_BYTES), b"\xff" * (MAX_NOTIFICATION_BYTES + 1)):
        answer = _send(endpoint, body)
        assert (answer.status, answer.error) == (413, None) and answer.seconds < FAST
        assert b"\xff" not in answer.body and len(answer.body) < 100
    assert parsed == [], "an oversized body was handed to the JSON parser"
    assert site.nothing_requested() and site.services.store.get_subscription(ADA_SUB) is not None

    # The limit is exactly 1 MiB: the same notification padded to 1 MiB is read and acted on.
    at_limit = valid[:-1] + b" " * (MAX_NOTIFICATION_BYTES - len(valid)) + b"}"
    assert len(at_limit) == MAX_NOTIFICATION_BYTES
    assert _send(endpoint, at_limit).status == 202 and parsed == [MAX_NOTIFICATION_BYTES]
    assert len(site.queue.drain()) == 1


# -- garbage --------------------------------------------------------------------------------------
DEPTH = 100_000  # far past Python's recursion limit, far below 1 MiB


def _garbage() -> dict[str, bytes]:
    junk: list[Any] = [None, True, 1, -1.5, "x", [], {}, {"subscriptionId": 7}, {"clientState": "x"},
                       {"subscriptionId": None, "clientState": None}, [{"subscriptionId": ADA_SUB}]]
    return {
        "not JSON": b"<xml>not json</xml>",
        "empty": b"",
        "truncated JSON": b'{"value": [{"subscriptionId": "',
        "a JSON array": json.dumps([_item(ADA_SUB, "x")]).encode(),
        "a JSON string": b'"value"',
        "JSON null": b"null",
        "value is an object": b'{"value": {"subscriptionId": "x", "clientState": "y"}}',
        "nested arrays 100,000 deep": b"[" * DEPTH + b"]" * DEPTH,
        "value nested 100,000 deep": b'{"value": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
        "an item nested 100,000 deep": (b'{"value": [{"subscriptionId": "x", "clientState": "y", "resourceData": '
                                        + b'{"a":' * DEPTH + b"1" + b"}" * DEPTH + b"}]}"),
        "value with 10,000 items of junk": json.dumps({"value": [junk[i % len(junk)] for i in range(10_000)]}).encode(),
        "10,000 items with wrong clientStates": _body(*(_bare(ADA_SUB, f"forged-{i}") for i in range(10_000))),
        "invalid UTF-8": b'{"value": [{"subscriptionId": "\xc3\x28", "clientState": "\xff\xfe"}]}',
        "UTF-16": json.dumps({"value": [_item(ADA_SUB, "x")]}).encode("utf-16"),
        "a 100,000-character subscription id": _body(_item("7" * 100_000, "x")),
        "a number with 100,000 digits": b'{"value": [], "n": ' + b"9" * 100_000 + b"}",
        "a lone surrogate as subscription id": b'{"value": [{"subscriptionId": "\\ud800", "clientState": "x"}]}',
        "a NUL in the subscription id": b'{"value": [{"subscriptionId": "a\\u0000b", "clientState": "x"}]}',
    }


GARBAGE = _garbage()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_is_answered_fast_and_queues_nothing(site: Site, endpoint: str, kind: str) -> None:
    answer = _send(endpoint, GARBAGE[kind])
    assert answer.error is None, (
        f"{endpoint} raised {type(answer.error).__name__}: {answer.error} -- the host answers 500 and logs "
        "a traceback for every such anonymous POST")
    assert answer.status in (400, 202), answer.status
    assert answer.seconds < FAST, f"{answer.seconds:.2f} s"
    assert site.nothing_requested() and site.services.store.get_subscription(ADA_SUB) is not None


# -- validation handshake -----------------------------------------------------------------------
MARKUP = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '"><svg/onload=alert(1)>',
          "<!DOCTYPE html><html><body>hi</body></html>", "&lt;b&gt; &#60;script&#62;")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_validation_token_with_markup_is_echoed_only_as_plain_text(site: Site, endpoint: str) -> None:
    for token in MARKUP:
        answer = _send(endpoint, b"", {"validationToken": token})
        assert (answer.status, answer.error) == (200, None), token
        assert answer.body == token.encode("utf-8"), "the token is echoed verbatim, not escaped nor wrapped"
        assert answer.mimetype == "text/plain" and "html" not in (answer.mimetype or "")
        assert answer.headers.get("X-Content-Type-Options") == "nosniff"
        assert not any("html" in v.lower() for k, v in answer.headers.items() if k.lower() == "content-type")
    assert site.nothing_requested()


CONTROL_TOKENS = {
    "CRLF header injection": "abc\r\nContent-Type: text/html\r\n\r\n<script>alert(1)</script>",
    "Set-Cookie injection": "a\r\nSet-Cookie: session=stolen",
    "LF": "a\nb",
    "CR": "a\rb",
    "NUL": "a\x00b",
    "TAB": "a\tb",
    "ESC (terminal escape)": "a\x1b[31mred",
    "DEL": "a\x7fb",
    "C1 NEL (U+0085)": "a\x85b",
    "C1 CSI (U+009B, terminal escape)": "a\x9b31mred",
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("kind", list(CONTROL_TOKENS))
def test_a_validation_token_with_control_characters_is_refused(site: Site, endpoint: str, kind: str) -> None:
    token = CONTROL_TOKENS[kind]
    answer = _send(endpoint, b"", {"validationToken": token})
    assert (answer.status, answer.error) == (400, None), f"{kind}: answered {answer.status} {answer.body!r}"
    assert token.encode() not in answer.body and b"<" not in answer.body
    assert site.nothing_requested()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_validation_token_on_a_request_with_a_body_never_acts_on_the_body(site: Site, endpoint: str) -> None:
    """Graph's handshake has no body; a token next to a (valid!) notification is answered as a
    handshake at most: the notification is not acted on."""
    body = _body(_item(ADA_SUB, site.ada_state))
    for token in ("Validation: Testing client application reachability", "<script>alert(1)</script>", ""):
        answer = _send(endpoint, body, {"validationToken": token})
        assert answer.error is None and answer.status in (200, 400), token
        if answer.status == 200:
            assert answer.body == token.encode() and answer.mimetype == "text/plain"
            assert answer.headers.get("X-Content-Type-Options") == "nosniff"
        assert site.nothing_requested(), f"the body next to validationToken={token!r} was acted on"
        assert site.services.store.get_subscription(ADA_SUB) is not None


# -- no error storm -------------------------------------------------------------------------------
def test_a_thousand_bad_notifications_raise_no_error_storm(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad: list[tuple[str, bytes]] = [(f"wrong clientState ({label})", _body(_item(ADA_SUB, state)))
                                    for label, state in _forged_states(site).items()]
    bad += [("unknown subscription", _body(_item(UNKNOWN_SUB, site.ada_state))),
            ("oversized", b" " * (MAX_NOTIFICATION_BYTES + 1))]
    bad += [(kind, body) for kind, body in GARBAGE.items() if len(body) < 300_000]  # the 10,000-item ones: above
    statuses: dict[int, int] = {}
    crashed: dict[str, str] = {}
    for i in range(1_000):
        kind, body = bad[i % len(bad)]
        answer = _send(ENDPOINTS[i % 2], body)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        if answer.error is not None:
            crashed[kind] = type(answer.error).__name__
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    tracebacks = [r for r in caplog.records if r.exc_info or r.exc_text]
    assert not crashed and not tracebacks, (
        f"{len(tracebacks)} traceback(s) logged for 1,000 bad POSTs (statuses {statuses}); crashing kinds: {crashed}")
    assert len(loud) <= 5, f"{len(loud)} records at WARNING or above: {[r.getMessage() for r in loud[:5]]}"
    assert set(statuses) <= {202, 400, 413}
    assert site.nothing_requested()
