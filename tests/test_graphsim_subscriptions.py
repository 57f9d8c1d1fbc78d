"""devtools.graphsim change notifications: /subscriptions, the validation handshake, webhook
delivery and lifecycle notifications, over real HTTPS in both directions.

Each test runs a small threaded HTTPS webhook receiver (``Receiver``) whose certificate comes from
the stand-in's CA (``sim.issue_server_certificate``), so the stand-in verifies it as Graph would a
public endpoint. Timeouts and retry delays are shortened with ``sim.configure_notifications`` so the
tests stay fast. After every test, each JSON body the stand-in answered on ``/v1.0/subscriptions``
and each notification it POSTed is validated against the v1.0 CSDL (``csdl_checked``).
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import trustme
from test_graphsim import (  # noqa: F401
    CLIENT,
    SCOPE,
    TENANT,
    UPN,
    Graph,
    event_body,
    g,
    new_session,
    sim,
)

from devtools.graphsim import GraphSim
from devtools.graphsim.csdl import load_schema
from devtools.graphsim.schemas import validate_error_body

EVENTS = f"/users/{UPN}/events"
TOKEN_PREFIX = "Validation: Testing client application reachability for subscription Request-Id: "
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: Graph's documented Outlook payloads carry resourceData "@odata.type": "#Microsoft.Graph.Event",
#: which is not a type name of the CSDL (names are case-sensitive, and resourceData's @odata.type
#: would have to name resourceData or a type derived from it). The stand-in sends what Graph
#: documents; the CSDL check accepts exactly that one deviation and nothing else.
DOCUMENTED_RESOURCE_TYPE = "#Microsoft.Graph.Event"


# --- a threaded HTTPS webhook receiver ------------------------------------------------------------------
class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # a burst of 16 concurrent connections must not overflow the listen backlog


class Receiver:
    """Records every POST; answers validation requests and notifications as configured.

    ``validation``: "echo" (correct), "wrong-token", "json" (right token, wrong content type),
    "forbidden" (403) or "slow" (echo after ``validation_delay`` s). Notifications: 202, or 500
    for the next ``fail_next`` ones, after ``delay`` s.
    """

    def __init__(self, cert: str, key: str) -> None:
        self.validation = "echo"
        self.validation_delay = 0.0
        self.fail_next = 0
        self.fail_status = 500
        self.delay = 0.0
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _ReceiverServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        parts = urlsplit(h.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.requests.append(
                {
                    "path": parts.path,
                    "raw_query": parts.query,
                    "query": {k: v[0] for k, v in query.items()},
                    "content_type": h.headers.get("Content-Type"),
                    "body": body,
                }
            )
        try:
            if "validationToken" in query:
                self._answer_validation(h, query["validationToken"][0])
            else:
                self._answer_notification(h)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer_validation(self, h: BaseHTTPRequestHandler, token: str) -> None:
        mode = self.validation
        if mode == "slow":
            time.sleep(self.validation_delay)
        status, ctype, text = 200, "text/plain; charset=utf-8", token
        if mode == "wrong-token":
            text = token + "x"
        elif mode == "json":
            ctype, text = "application/json", json.dumps(token)
        elif mode == "forbidden":
            status, text = 403, "no"
        self._send(h, status, ctype, text.encode())

    def _answer_notification(self, h: BaseHTTPRequestHandler) -> None:
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            fail = self.fail_next > 0
            self.fail_next -= 1 if fail else 0
        self._send(h, self.fail_status if fail else 202, "text/plain", b"")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, ctype: str, body: bytes) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:  # the stand-in gave up waiting (timeout tests)
            pass

    # -- what arrived --
    def validations(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if "validationToken" in r["query"] and path in (None, r["path"])]

    def notifications(self, path: str = "/notify") -> list[dict[str, Any]]:
        """The changeNotification items POSTed to ``path`` (each POST's ``value``), in arrival order."""
        with self.lock:
            posts = [r for r in self.requests if "validationToken" not in r["query"] and r["path"] == path]
        return [item for r in posts for item in json.loads(r["body"])["value"]]

    def posts(self, path: str = "/notify") -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if "validationToken" not in r["query"] and r["path"] == path]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


@pytest.fixture
def receiver(sim: GraphSim) -> Iterator[Receiver]:  # noqa: F811
    cert, key = sim.issue_server_certificate(("127.0.0.1",))
    r = Receiver(cert, key)
    yield r
    r.close()


@pytest.fixture(autouse=True)
def fast(sim: GraphSim) -> None:  # noqa: F811
    sim.configure_notifications(validation_timeout=1.0, delivery_timeout=1.0, retry_backoff=0.05, max_attempts=3)


# --- CSDL checks ----------------------------------------------------------------------------------------------
def notification_problems(payload: Any) -> list[str]:
    issues = load_schema().validate(payload, "changeNotificationCollection")
    problems = []
    for i in issues:
        path = i.path
        if path.endswith(".resourceData.@odata.type"):
            idx = int(path.split("[")[1].split("]")[0])
            if payload["value"][idx]["resourceData"]["@odata.type"] == DOCUMENTED_RESOURCE_TYPE:
                continue
        problems.append(str(i))
    for n, item in enumerate(payload.get("value", [])):
        # changeType and lifecycleEvent are mutually exclusive (changeNotification resource)
        if ("changeType" in item) == ("lifecycleEvent" in item):
            problems.append(f"$.value[{n}]: exactly one of changeType / lifecycleEvent")
        for key in ("subscriptionId", "subscriptionExpirationDateTime", "tenantId", "resource"):
            if key not in item:
                problems.append(f"$.value[{n}]: missing {key}")
    return problems


def subscription_response_problems(records: list[dict[str, Any]]) -> list[str]:
    schema = load_schema()
    problems: list[str] = []
    for rec in records:
        if not rec["path"].startswith("/v1.0/subscriptions"):
            continue
        body = rec["body"]
        if rec["status"] >= 400:
            issues = validate_error_body(body)
        elif "value" in body:
            issues = [str(i) for i in schema.validate_collection(body, "subscription")]
        else:
            issues = [str(i) for i in schema.validate(body, "subscription")]
        problems += [f"{rec['method']} {rec['path']} -> {rec['status']}: {i}" for i in issues]
    return problems


@pytest.fixture(autouse=True)
def csdl_checked(sim: GraphSim) -> Iterator[None]:  # noqa: F811
    """After each test: every subscription answer and every notification sent matches the CSDL."""
    yield
    assert sim.wait_for_notifications(5)
    assert subscription_response_problems(sim.response_log) == []
    problems = [p for rec in sim.notification_log for p in notification_problems(rec["payload"])]
    assert problems == []


# --- helpers ---------------------------------------------------------------------------------------------------
def in_minutes(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sub_body(receiver: Receiver, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "changeType": "created,updated,deleted",
        "notificationUrl": receiver.url("/notify?code=abc&x=1"),
        "resource": f"/users/{UPN}/events",
        "expirationDateTime": in_minutes(60),
        "clientState": "s3cret-state",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def subscribe(g: Graph, receiver: Receiver, **overrides: Any) -> dict[str, Any]:  # noqa: F811
    resp = g.post("/subscriptions", sub_body(receiver, **overrides))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def user_id(sim: GraphSim) -> str:  # noqa: F811
    user = sim.store.find_user(UPN)
    assert user is not None
    return user.id


def settle(sim: GraphSim) -> None:  # noqa: F811
    assert sim.wait_for_notifications(5)


def error_of(resp: requests.Response) -> tuple[int, str, str]:
    err = resp.json()["error"]
    return resp.status_code, err["code"], err["message"]


# --- the validation handshake ------------------------------------------------------------------------------------
def test_creation_validates_both_urls_then_answers_a_subscription(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    resp = g.post(
        "/subscriptions",
        sub_body(receiver, lifecycleNotificationUrl=receiver.url("/lifecycle")),
        headers={"Prefer": 'IdType="ImmutableId"'},
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["Preference-Applied"] == 'IdType="ImmutableId"'
    sub = resp.json()
    assert GUID.match(sub["id"]) and GUID.match(sub["creatorId"])
    assert sub["@odata.context"] == f"{sim.graph_url}/$metadata#subscriptions/$entity"
    assert sub["applicationId"] == CLIENT and sub["changeType"] == "created,updated,deleted"
    assert sub["resource"] == f"/users/{UPN}/events" and sub["clientState"] == "s3cret-state"
    assert sub["notificationUrl"] == receiver.url("/notify?code=abc&x=1")
    assert sub["lifecycleNotificationUrl"] == receiver.url("/lifecycle")
    assert sub["includeResourceData"] is False and sub["latestSupportedTlsVersion"] == "v1_2"
    assert sub["expirationDateTime"].endswith("Z")

    notify, lifecycle = receiver.validations("/notify"), receiver.validations("/lifecycle")
    assert len(notify) == 1 and len(lifecycle) == 1
    v = notify[0]
    token = v["query"]["validationToken"]  # decoded by parse_qs
    assert token.startswith(TOKEN_PREFIX) and GUID.match(token.removeprefix(TOKEN_PREFIX))
    assert " " not in v["raw_query"] and "validationToken=Validation%3A%20Testing" in v["raw_query"]
    assert v["query"]["code"] == "abc" and v["query"]["x"] == "1"  # the URL's own parameters are kept
    assert v["content_type"] == "text/plain; charset=utf-8" and v["body"] == b""
    assert lifecycle[0]["query"]["validationToken"] != token  # a new token per request
    assert [x["ok"] for x in sim.validation_log] == [True, True]
    assert sim.subscriptions() == [{k: v for k, v in sub.items() if not k.startswith("@")}]


@pytest.mark.parametrize(
    ("mode", "code", "message"),
    [
        ("wrong-token", "ValidationError", "Response must exactly match validationToken query parameter."),
        ("json", "ValidationError", "Notification endpoint must respond with 200 OK to validation request."),
        ("forbidden", "ValidationError", "HTTP status code is 'Forbidden'. Notification endpoint must respond"),
        ("slow", "InvalidRequest", "Subscription validation request timed out."),
    ],
)
def test_a_wrong_validation_answer_refuses_the_subscription(
    sim: GraphSim,  # noqa: F811
    g: Graph,  # noqa: F811
    receiver: Receiver,
    mode: str,
    code: str,
    message: str,
) -> None:
    sim.configure_notifications(validation_timeout=0.3)
    receiver.validation, receiver.validation_delay = mode, 0.6
    started = time.monotonic()
    status, got_code, got_message = error_of(g.post("/subscriptions", sub_body(receiver)))
    assert (status, got_code) == (400, code)
    assert message in got_message
    assert got_message.startswith("Subscription validation request")
    assert time.monotonic() - started < 2
    assert sim.subscriptions() == [] and g.get("/subscriptions").json()["value"] == []
    assert sim.validation_log[-1]["ok"] is False


def test_lifecycle_url_is_validated_too_and_unreachable_or_untrusted_endpoints_fail(
    sim: GraphSim,  # noqa: F811
    g: Graph,  # noqa: F811
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    # the lifecycle endpoint refuses: no subscription although notificationUrl answered correctly
    bad = sub_body(receiver, lifecycleNotificationUrl=receiver.url("/lifecycle"))
    receiver_ok = receiver.validation
    receiver.validation = "forbidden"
    assert error_of(g.post("/subscriptions", bad))[:2] == (400, "ValidationError")
    receiver.validation = receiver_ok

    # nobody listens on that port
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]
    status, code, message = error_of(
        g.post("/subscriptions", sub_body(receiver, notificationUrl=f"https://127.0.0.1:{port}/n"))
    )
    assert (status, code) == (400, "ValidationError")
    assert message == (
        "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
    )

    # a receiver whose certificate the stand-in does not trust (another CA)
    other_ca = trustme.CA()
    leaf = other_ca.issue_cert("127.0.0.1")
    cert, key, ca = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "other-ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    other_ca.cert_pem.write_to_path(str(ca))
    stranger = Receiver(str(cert), str(key))
    try:
        assert error_of(g.post("/subscriptions", sub_body(stranger)))[:2] == (400, "ValidationError")
        assert stranger.validations() == [] and (sim.validation_log[-1]["error"] or "").startswith("tls")
        sim.configure_notifications(ca_bundle=str(ca))  # trusting that CA makes it work
        assert g.post("/subscriptions", sub_body(stranger)).status_code == 201
    finally:
        stranger.close()
    assert len(sim.subscriptions()) == 1


# --- field limits ------------------------------------------------------------------------------------------------
LIMITS = [
    ({"changeType": "created,moved"}, 400, "InvalidRequest", "Invalid 'changeType' attribute: 'moved'."),
    ({"changeType": None}, 400, "InvalidRequest", "changeType is a required property"),
    ({"notificationUrl": "http://127.0.0.1:9/n"}, 400, "InvalidRequest", "NotificationUrl scheme='http' is not"),
    ({"notificationUrl": "https:///n"}, 400, "InvalidRequest", "Invalid notification url='https:///n'."),
    ({"lifecycleNotificationUrl": "http://127.0.0.1:9/l"}, 400, "InvalidRequest", "LifecycleNotificationUrl scheme"),
    ({"resource": f"/users/{UPN}/messages"}, 400, "InvalidRequest", "is not supported for change notifications"),
    ({"resource": f"/users/{UPN}/events?$filter=subject eq 'x'"}, 400, "InvalidRequest", "is not supported"),
    ({"resource": "/me/events"}, 400, "BadRequest", "only valid with delegated authentication"),
    ({"resource": "/users/nobody@contoso.test/events"}, 404, "ExtensionError", "Status Code: NotFound"),
    ({"resource": f"/users/{UPN}/calendars/AAMkADnone/events"}, 404, "ExtensionError", "Status Code: NotFound"),
    ({"expirationDateTime": None}, 400, "InvalidRequest", "expirationDateTime is a required property"),
    ({"expirationDateTime": "2020-01-01T00:00:00Z"}, 400, "InvalidRequest", "must be in the future"),
    ({"expirationDateTime": "soon"}, 400, "InvalidRequest", "Could not process subscription creation payload"),
    ("too-far", 400, "ExtensionError", "Subscription expiration can only be 10080 minutes in the future."),
    ({"clientState": "x" * 129}, 400, "InvalidRequest", "maximum length of 128"),
    ({"colour": "blue"}, 400, "InvalidRequest", "Could not process subscription creation payload"),
    ({"includeResourceData": True}, 501, "NotImplemented", "resource data"),
]


@pytest.mark.parametrize(("change", "status", "code", "message"), LIMITS)
def test_field_limits(
    sim: GraphSim,  # noqa: F811
    g: Graph,  # noqa: F811
    receiver: Receiver,
    change: Any,
    status: int,
    code: str,
    message: str,
) -> None:
    body = sub_body(receiver)
    if change == "too-far":
        body["expirationDateTime"] = in_minutes(10_080 + 1)
    else:
        body.update(change)
        body = {k: v for k, v in body.items() if v is not None}
    got = error_of(g.post("/subscriptions", body))
    assert got[:2] == (status, code) and message in got[2], got
    assert receiver.validations() == []  # a bad request is refused before any handshake
    assert sim.subscriptions() == []


def test_accepted_resource_forms_and_limits_at_the_edge(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    uid = user_id(sim)
    cal = sim.default_calendar_id(UPN)
    for resource in (f"users/{uid}/events", f"/Users/{UPN}/Events", f"/users/{uid}/calendars/{cal}/events"):
        sub = subscribe(g, receiver, resource=resource, expirationDateTime=in_minutes(10_079), clientState="c" * 128)
        assert sub["resource"] == resource and len(sub["clientState"]) == 128
    no_state = subscribe(g, receiver, clientState=None, changeType="deleted")
    assert no_state["clientState"] is None
    assert len(sim.subscriptions()) == 4


# --- GET / LIST / PATCH / DELETE ---------------------------------------------------------------------------------
def test_patch_renews_within_the_limit_and_revalidates_a_new_url(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    sub = subscribe(g, receiver, lifecycleNotificationUrl=receiver.url("/lifecycle"))
    url = f"/subscriptions/{sub['id']}"
    renewed = g.patch(url, {"expirationDateTime": in_minutes(3 * 24 * 60)})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["expirationDateTime"] > sub["expirationDateTime"]
    assert g.get(url).json()["expirationDateTime"] == renewed.json()["expirationDateTime"]

    too_far = error_of(g.patch(url, {"expirationDateTime": in_minutes(10_081)}))
    assert too_far[:2] == (400, "ExtensionError") and "10080 minutes" in too_far[2]
    assert error_of(g.patch(url, {"expirationDateTime": in_minutes(-1)}))[:2] == (400, "InvalidRequest")
    moved = error_of(g.patch(url, {"lifecycleNotificationUrl": receiver.url("/elsewhere")}))
    assert moved[:2] == (400, "InvalidRequest") and "lifecycleNotificationUrl cannot be updated" in moved[2]
    assert error_of(g.patch(url, {"clientState": "other"}))[:2] == (400, "InvalidRequest")
    assert error_of(g.patch(url, {"notificationUrl": "http://127.0.0.1/x"}))[:2] == (400, "InvalidRequest")
    assert g.get(url).json()["expirationDateTime"] == renewed.json()["expirationDateTime"]  # nothing changed

    receiver.clear()
    new_url = receiver.url("/notify2?k=v")
    changed = g.patch(url, {"notificationUrl": new_url})
    assert changed.status_code == 200 and changed.json()["notificationUrl"] == new_url
    assert [v["path"] for v in receiver.validations()] == ["/notify2"]
    receiver.validation = "wrong-token"
    assert error_of(g.patch(url, {"notificationUrl": receiver.url("/notify3")}))[:2] == (400, "ValidationError")
    assert g.get(url).json()["notificationUrl"] == new_url
    # the whole object sent back unchanged is accepted (read-only values equal)
    receiver.validation = "echo"
    whole = {k: v for k, v in g.get(url).json().items() if not k.startswith("@")}
    assert g.patch(url, whole).status_code == 200


def test_list_get_delete_reauthorize_and_other_apps(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    first, second = subscribe(g, receiver), subscribe(g, receiver, changeType="updated")
    listed = g.get("/subscriptions").json()
    assert listed["@odata.context"] == f"{sim.graph_url}/$metadata#subscriptions"
    assert [s["id"] for s in listed["value"]] == [first["id"], second["id"]]
    assert g.get(f"/subscriptions/{first['id']}").json()["id"] == first["id"]
    assert g.post(f"/subscriptions/{first['id']}/reauthorize", {}).status_code == 204

    sim.register_app(TENANT, "other-app", client_secret="other-secret")
    token = new_session(sim).post(
        f"{sim.authority_host}/{TENANT}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": "other-app", "client_secret": "other-secret",
              "scope": SCOPE[0]},
    ).json()["access_token"]  # fmt: skip
    other = Graph(sim, token)
    assert other.get("/subscriptions").json()["value"] == []
    assert error_of(other.get(f"/subscriptions/{first['id']}"))[:2] == (404, "ResourceNotFound")
    assert other.delete(f"/subscriptions/{first['id']}").status_code == 404

    assert g.delete(f"/subscriptions/{first['id']}").status_code == 204
    gone = error_of(g.get(f"/subscriptions/{first['id']}"))
    assert gone == (404, "ResourceNotFound", "The object was not found.")
    assert g.delete(f"/subscriptions/{first['id']}").status_code == 404
    assert [s["id"] for s in g.get("/subscriptions").json()["value"]] == [second["id"]]
    assert new_session(sim).get(f"{sim.graph_url}/subscriptions").status_code == 401  # needs a token


def test_an_expired_subscription_is_gone_and_silent(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    sub = subscribe(g, receiver)
    sim.expire_subscription(sub["id"])
    assert error_of(g.get(f"/subscriptions/{sub['id']}"))[:2] == (404, "ResourceNotFound")
    assert g.get("/subscriptions").json()["value"] == [] and sim.subscriptions() == []
    assert error_of(g.patch(f"/subscriptions/{sub['id']}", {"expirationDateTime": in_minutes(60)}))[0] == 404
    assert g.post(EVENTS, event_body("after expiry")).status_code == 201
    settle(sim)
    assert receiver.posts() == [] and sim.notification_log == []
    with pytest.raises(KeyError):
        sim.expire_subscription(sub["id"])


# --- change notifications -----------------------------------------------------------------------------------------
def test_create_update_delete_are_notified(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    sub = subscribe(g, receiver)
    only_deletes = subscribe(g, receiver, changeType="deleted", notificationUrl=receiver.url("/deletes"))
    uid = user_id(sim)
    created = g.post(EVENTS, event_body("Notified")).json()
    settle(sim)
    items = receiver.notifications()
    assert sorted(i["changeType"] for i in items) == ["created", "updated"]  # a create is also an update
    for item in items:
        assert item["subscriptionId"] == sub["id"] and item["clientState"] == "s3cret-state"
        assert item["tenantId"] == TENANT and item["resource"] == f"Users/{uid}/Events/{created['id']}"
        assert item["subscriptionExpirationDateTime"] == sub["expirationDateTime"]
        assert item["resourceData"] == {
            "@odata.type": "#Microsoft.Graph.Event",
            "@odata.id": f"Users/{uid}/Events/{created['id']}",
            "@odata.etag": created["@odata.etag"],
            "id": created["id"],
        }
    posts = receiver.posts()
    assert all(p["query"] == {"code": "abc", "x": "1"} for p in posts)  # notificationUrl's parameters echoed
    assert all(p["content_type"].startswith("application/json") for p in posts)

    receiver.clear()
    patched = g.patch(f"{EVENTS}/{created['id']}", {"subject": "Renamed"}).json()
    settle(sim)
    assert [(i["changeType"], i["resourceData"]["@odata.etag"]) for i in receiver.notifications()] == [
        ("updated", patched["@odata.etag"])
    ]
    receiver.clear()
    assert g.delete(f"{EVENTS}/{created['id']}").status_code == 204
    settle(sim)
    assert [i["changeType"] for i in receiver.notifications()] == ["deleted"]
    deletes = receiver.notifications("/deletes")
    assert [(i["changeType"], i["subscriptionId"]) for i in deletes] == [("deleted", only_deletes["id"])]

    log = sim.notification_log
    assert {r["url"] for r in log} == {receiver.url("/notify"), receiver.url("/deletes")}  # no query in the log
    assert all(r["status"] == 202 and r["attempt"] == 1 and r["kind"] == "change" and not r["slow"] for r in log)
    assert sorted(r["change_type"] for r in log) == ["created", "deleted", "deleted", "updated", "updated"]
    assert all(isinstance(r["seconds"], float) for r in log)


def test_series_instance_changes_are_updates_of_the_master(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    series = {
        **event_body("Standup"),
        "recurrence": {
            "pattern": {"type": "daily", "interval": 1},
            "range": {"type": "numbered", "startDate": "2026-11-24", "numberOfOccurrences": 3},
        },
    }
    master = g.post(EVENTS, series).json()
    window = "startDateTime=2026-11-01T00:00:00Z&endDateTime=2026-12-31T00:00:00Z"
    occurrences = g.get(f"{EVENTS}/{master['id']}/instances?{window}").json()["value"]
    subscribe(g, receiver)
    assert g.delete(f"{EVENTS}/{occurrences[1]['id']}").status_code == 204  # cancels one occurrence
    settle(sim)
    after_delete = g.get(f"{EVENTS}/{master['id']}").json()
    items = receiver.notifications()
    assert [(i["changeType"], i["resourceData"]["id"]) for i in items] == [("updated", master["id"])]
    assert items[0]["resourceData"]["@odata.etag"] == after_delete["@odata.etag"]

    receiver.clear()
    assert g.patch(f"{EVENTS}/{occurrences[2]['id']}", {"subject": "Moved standup"}).status_code == 200
    settle(sim)
    assert [(i["changeType"], i["resourceData"]["id"]) for i in receiver.notifications()] == [("updated", master["id"])]
    receiver.clear()
    assert g.delete(f"{EVENTS}/{master['id']}").status_code == 204
    settle(sim)
    assert [(i["changeType"], i["resourceData"]["id"]) for i in receiver.notifications()] == [("deleted", master["id"])]


def test_a_calendar_subscription_only_sees_its_calendar(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    side = sim.add_calendar(UPN, "Side")
    uid = user_id(sim)
    subscribe(g, receiver, resource=f"/users/{uid}/calendars/{side}/events", notificationUrl=receiver.url("/side"))
    subscribe(g, receiver, changeType="created", notificationUrl=receiver.url("/all"))
    in_side = g.post(f"/users/{UPN}/calendars/{side}/events", event_body("side")).json()
    in_primary = g.post(EVENTS, event_body("primary")).json()
    settle(sim)
    assert sorted(i["changeType"] for i in receiver.notifications("/side")) == ["created", "updated"]
    assert {i["resourceData"]["id"] for i in receiver.notifications("/side")} == {in_side["id"]}
    mailbox = receiver.notifications("/all")
    assert [i["changeType"] for i in mailbox] == ["created", "created"]  # changeType filter: no "updated"
    assert {i["resourceData"]["id"] for i in mailbox} == {in_side["id"], in_primary["id"]}


def test_in_process_store_changes_are_notified(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    ev = g.post(EVENTS, event_body("white box")).json()
    subscribe(g, receiver, changeType="updated")
    stored = sim.store.get_event(ev["id"])
    user = sim.store.find_user(UPN)
    assert stored is not None and user is not None
    with sim.store.lock:
        sim.store.update_event(user.calendars[stored.calendar_id], stored, stored.fields, stored.extended)
    settle(sim)
    assert [(i["changeType"], i["resourceData"]["id"]) for i in receiver.notifications()] == [("updated", ev["id"])]


# --- delivery: retries, slow answers, bursts ---------------------------------------------------------------------
def test_failed_deliveries_are_retried_a_bounded_number_of_times(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    subscribe(g, receiver, changeType="deleted")
    ev = g.post(EVENTS, event_body("x")).json()
    receiver.fail_next = 2
    g.delete(f"{EVENTS}/{ev['id']}")
    settle(sim)
    assert [(r["status"], r["attempt"]) for r in sim.notification_log] == [(500, 1), (500, 2), (202, 3)]
    assert len(receiver.notifications()) == 3  # the same notification three times
    assert len({json.dumps(i, sort_keys=True) for i in receiver.notifications()}) == 1

    sim.reset_notification_log()
    ev = g.post(EVENTS, event_body("y")).json()
    receiver.fail_next, receiver.fail_status = 10, 503
    g.delete(f"{EVENTS}/{ev['id']}")
    settle(sim)  # gives up after max_attempts (3 here)
    assert [(r["status"], r["attempt"]) for r in sim.notification_log] == [(503, 1), (503, 2), (503, 3)]


def test_slow_answers_are_flagged_and_timeouts_retried(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    sim.configure_notifications(slow_threshold=0.2, delivery_timeout=0.6, max_attempts=2)
    subscribe(g, receiver, changeType="deleted")
    ev = g.post(EVENTS, event_body("x")).json()
    receiver.delay = 0.3
    g.delete(f"{EVENTS}/{ev['id']}")
    settle(sim)
    (slow,) = sim.notification_log
    assert slow["status"] == 202 and slow["slow"] is True and slow["seconds"] >= 0.3

    sim.reset_notification_log()
    ev = g.post(EVENTS, event_body("y")).json()
    receiver.delay = 0.8  # longer than the client timeout: no answer, retried
    g.delete(f"{EVENTS}/{ev['id']}")
    settle(sim)
    log = sim.notification_log
    assert [(r["status"], r["error"], r["attempt"], r["slow"]) for r in log] == [
        (None, "timeout", 1, True),
        (None, "timeout", 2, True),
    ]


def test_a_burst_is_delivered_concurrently(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    subscribe(g, receiver)
    receiver.delay = 0.25
    started = time.monotonic()
    for n in range(8):
        assert g.post(EVENTS, event_body(f"burst {n}")).status_code == 201
    settle(sim)
    elapsed = time.monotonic() - started
    assert len(receiver.notifications()) == 16  # created + updated each
    assert receiver.max_in_flight > 4  # many POSTs at once (pool of 16)
    assert elapsed < 1.5  # one receiver delay or two, not sixteen


# --- lifecycle notifications ----------------------------------------------------------------------------------------
def test_lifecycle_notifications(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    sub = subscribe(g, receiver, lifecycleNotificationUrl=receiver.url("/lifecycle?tag=l"))
    plain = subscribe(g, receiver)
    assert sim.send_lifecycle(sub["id"], "reauthorizationRequired") is True
    assert sim.send_lifecycle(sub["id"], "missed") is True
    assert sim.send_lifecycle(plain["id"], "missed") is False  # no lifecycleNotificationUrl: nothing sent
    settle(sim)
    items = receiver.notifications("/lifecycle")
    assert sorted(i["lifecycleEvent"] for i in items) == ["missed", "reauthorizationRequired"]
    for item in items:
        assert "changeType" not in item and "resourceData" not in item
        assert item["subscriptionId"] == sub["id"] and item["clientState"] == "s3cret-state"
        assert item["tenantId"] == TENANT and item["resource"] == sub["resource"]
        assert item["subscriptionExpirationDateTime"] == sub["expirationDateTime"]
    assert all(p["query"] == {"tag": "l"} for p in receiver.posts("/lifecycle"))
    assert g.get(f"/subscriptions/{sub['id']}").status_code == 200

    assert sim.send_lifecycle(sub["id"], "subscriptionRemoved") is True
    assert error_of(g.get(f"/subscriptions/{sub['id']}"))[0] == 404  # removed
    settle(sim)
    assert receiver.notifications("/lifecycle")[-1]["lifecycleEvent"] == "subscriptionRemoved"
    lifecycle_log = [r for r in sim.notification_log if r["kind"] == "lifecycle"]
    assert sorted(r["lifecycle_event"] for r in lifecycle_log) == ["missed", "reauthorizationRequired",
                                                                  "subscriptionRemoved"]  # fmt: skip
    assert all(r["url"] == receiver.url("/lifecycle") and r["status"] == 202 for r in lifecycle_log)
    with pytest.raises(KeyError):
        sim.send_lifecycle(sub["id"], "missed")
    with pytest.raises(ValueError):
        sim.send_lifecycle(plain["id"], "somethingElse")


def test_admin_endpoints(sim: GraphSim, g: Graph, receiver: Receiver) -> None:  # noqa: F811
    s = new_session(sim)
    admin = f"{sim.authority_host}/_sim"
    sub = subscribe(g, receiver, lifecycleNotificationUrl=receiver.url("/lifecycle"))
    assert [x["id"] for x in s.get(f"{admin}/subscriptions").json()["value"]] == [sub["id"]]
    resp = s.post(f"{admin}/subscriptions/{sub['id']}/lifecycle", json={"event": "missed"})
    assert resp.status_code == 202 and resp.json() == {"queued": True}
    assert s.post(f"{admin}/notifications/wait", json={"timeout": 5}).json() == {"idle": True}
    log = s.get(f"{admin}/notifications").json()["value"]
    assert [(r["kind"], r["lifecycle_event"], r["status"]) for r in log] == [("lifecycle", "missed", 202)]
    assert [v["ok"] for v in s.get(f"{admin}/validations").json()["value"]] == [True, True]
    assert s.post(f"{admin}/subscriptions/{sub['id']}/lifecycle", json={"event": "nope"}).status_code == 400
    assert s.post(f"{admin}/subscriptions/nope/lifecycle", json={"event": "missed"}).status_code == 404
    settings = s.post(f"{admin}/notification-settings", json={"max_attempts": 2}).json()
    assert settings["max_attempts"] == 2 and sim.notification_settings.max_attempts == 2
    assert s.post(f"{admin}/notification-settings", json={"bogus": 1}).status_code == 400
    cert = s.post(f"{admin}/server-certificates", json={"hosts": ["localhost"]}).json()
    assert Path(cert["cert"]).read_text().startswith("-----BEGIN CERTIFICATE") and Path(cert["key"]).exists()
    assert s.delete(f"{admin}/notifications").status_code == 204 and sim.notification_log == []
    assert s.post(f"{admin}/subscriptions/{sub['id']}/expire").status_code == 204
    assert s.get(f"{admin}/subscriptions").json()["value"] == []


def test_the_csdl_check_catches_bad_notifications() -> None:
    good = {
        "value": [
            {
                "subscriptionId": str(uuid.uuid4()),
                "subscriptionExpirationDateTime": "2026-11-24T09:00:00.0000000Z",
                "changeType": "created",
                "resource": "Users/u/Events/e",
                "resourceData": {"@odata.type": DOCUMENTED_RESOURCE_TYPE, "@odata.id": "Users/u/Events/e", "id": "e"},
                "tenantId": TENANT,
            }
        ]
    }
    assert notification_problems(good) == []
    bad = json.loads(json.dumps(good))
    bad["value"][0]["changeType"] = "moved"
    bad["value"][0]["tenantId"] = "contoso"
    bad["value"][0]["lifecycleEvent"] = "missed"
    bad["value"][0]["resourceData"]["@odata.type"] = "#microsoft.graph.message"
    problems = notification_problems(bad)
    assert len(problems) == 4, problems
