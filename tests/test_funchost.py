"""devtools/funchost.py: the local Functions host stand-in, driven over real HTTP(S) and real Azurite queues.

The FunctionApp under test is defined here (not the project's function_app) so that every trigger
kind and failure path is exercised: an HTTP function with a route parameter and function-key auth,
an anonymous one (plus an async one), a queue trigger on ``%TEST_QUEUE%`` that records the bodies
and fails for ``boom``, and a timer on ``%TEST_SCHEDULE%``.  Every test uses its own queue name.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import azure.functions as func
import pytest
import requests
import trustme
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from devtools.funchost import FunctionHost, FunctionHostError, Invocation, QueueOptions, RouteTemplate
from devtools.servers import AzuriteServer

KEY = "test-function-key"
TIMEOUT = 5  # seconds, for every HTTP request and barrier
FAST_RETRIES = {"version": "2.0", "extensions": {"queues": {"visibilityTimeout": "00:00:01", "maxDequeueCount": 3}}}

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


class Recorder:
    """What the test app's functions saw (module-level, reset before every test)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[func.QueueMessage] = []
        self.context_names: list[str] = []
        self.timer_calls: list[bool] = []
        self.timer_fails = False
        self.running = 0
        self.max_running = 0
        self.barrier: threading.Barrier | None = None
        self.hold = 0.0

    def busy(self) -> None:
        """Count concurrent callers; wait at the barrier (all parties must be inside at once) or sleep."""
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.barrier is not None:
                self.barrier.wait(TIMEOUT)
            time.sleep(self.hold)
        finally:
            with self.lock:
                self.running -= 1

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [m.get_body() for m in self.messages]


STATE = Recorder()


@app.route(route="items/{item_id}/{label?}", methods=["GET", "POST"])
def item(req: func.HttpRequest) -> func.HttpResponse:
    payload = {
        "method": req.method,
        "url": req.url,
        "route": dict(req.route_params),
        "params": dict(req.params),
        "body": req.get_body().decode("utf-8"),
        "x_test": req.headers.get("x-test"),
    }
    return func.HttpResponse(
        json.dumps(payload),
        status_code=201 if req.method == "POST" else 200,
        mimetype="application/json",
        headers={"X-Item": req.route_params["item_id"]},
    )


@app.route(route="open", auth_level=func.AuthLevel.ANONYMOUS)
def open_endpoint(req: func.HttpRequest) -> Any:
    mode = req.params.get("mode", "")
    if mode == "fail":
        raise RuntimeError("handler exploded")
    if mode == "none":
        return None
    if mode == "busy":
        STATE.busy()
    return func.HttpResponse("héllo wörld", headers={"Cache-Control": "no-store"})


@app.route(route="echo", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
async def async_echo(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    return func.HttpResponse(req.get_body()[::-1], mimetype="application/octet-stream", status_code=202)


@app.queue_trigger(arg_name="msg", queue_name="%TEST_QUEUE%", connection="AzureWebJobsStorage")
def on_message(msg: func.QueueMessage, context: func.Context) -> None:
    with STATE.lock:
        STATE.messages.append(msg)
        STATE.context_names.append(context.function_name)
    body = msg.get_body()
    if body == b"boom":
        raise RuntimeError("boom")
    if body.startswith(b"busy"):
        STATE.busy()


@app.timer_trigger(schedule="%TEST_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def on_timer(timer: func.TimerRequest) -> None:
    STATE.timer_calls.append(timer.past_due)
    STATE.busy()
    if STATE.timer_fails:
        raise ValueError("timer broke")


# --------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(autouse=True)
def _fresh_state() -> None:
    STATE.reset()


@pytest.fixture
def settings(azurite: AzuriteServer) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "TEST_QUEUE": f"fh-{uuid.uuid4().hex[:20]}",
        "TEST_SCHEDULE": "0 */5 * * * *",
    }


@pytest.fixture
def host(settings: dict[str, str]) -> Iterator[FunctionHost]:
    with FunctionHost(app, settings=settings, host_json=FAST_RETRIES, function_key=KEY) as h:
        yield h


def queue(settings: dict[str, str], name: str | None = None, *, base64_encode: bool = True) -> QueueClient:
    """A client on the test queue (or ``name``); base64-encoding like an app feeding the trigger must."""
    kwargs: dict[str, Any] = {}
    if base64_encode:
        kwargs = {"message_encode_policy": TextBase64EncodePolicy(), "message_decode_policy": TextBase64DecodePolicy()}
    return QueueClient.from_connection_string(settings["AzureWebJobsStorage"], name or settings["TEST_QUEUE"], **kwargs)


def poison_contents(settings: dict[str, str]) -> list[str]:
    """Raw (still encoded) message texts in ``<queue>-poison``."""
    client = queue(settings, settings["TEST_QUEUE"] + "-poison", base64_encode=False)
    return [m.content for m in client.peek_messages(max_messages=32)]


def queue_exists(settings: dict[str, str], name: str) -> bool:
    try:
        queue(settings, name).get_queue_properties()
    except ResourceNotFoundError:
        return False
    return True


def calls(host: FunctionHost, name: str) -> list[Invocation]:
    return [i for i in host.invocations if i.function == name]


# --------------------------------------------------------------------------- indexing and settings


def test_bindings_are_resolved_from_settings(settings: dict[str, str]) -> None:
    settings = {**settings, "TEST_QUEUE": settings["TEST_QUEUE"].upper()}
    h = FunctionHost(app, settings=settings)
    kinds = {name: fn.kind for name, fn in h.functions.items()}
    assert kinds == {"item": "http", "open_endpoint": "http", "async_echo": "http",
                     "on_message": "queue", "on_timer": "timer"}
    assert h.functions["on_message"].queue_name == settings["TEST_QUEUE"].lower()  # the host lower-cases
    assert h.functions["on_message"].connection_string == settings["AzureWebJobsStorage"]
    assert h.functions["on_timer"].trigger["schedule"] == "0 */5 * * * *"
    assert h.queue_options == QueueOptions()  # no host.json: the host's defaults
    assert QueueOptions().new_batch_threshold == 8 and QueueOptions().max_dequeue_count == 5
    assert len(h.function_key) >= 32  # random by default


def test_bad_schedule_and_missing_settings_are_refused(settings: dict[str, str]) -> None:
    for bad in ("*/5 * * * *", "00:05:00", "0 */5 * * * * *", "0 */5 * * ? *x"):
        with pytest.raises(FunctionHostError, match="6-field NCRONTAB"):
            FunctionHost(app, settings={**settings, "TEST_SCHEDULE": bad})
    missing = dict(settings)
    del missing["TEST_SCHEDULE"]
    with pytest.raises(FunctionHostError, match="'%TEST_SCHEDULE%' does not resolve"):
        FunctionHost(app, settings=missing)
    no_storage = dict(settings)
    del no_storage["AzureWebJobsStorage"]
    with pytest.raises(FunctionHostError, match="no connection string setting 'AzureWebJobsStorage'"):
        FunctionHost(app, settings=no_storage)
    with pytest.raises(FunctionHostError, match=r"batchSize must be 1\.\.32"):
        FunctionHost(app, settings=settings, host_json={"version": "2.0", "extensions": {"queues": {"batchSize": 64}}})


def test_unsupported_bindings_are_refused_not_ignored() -> None:
    other = func.FunctionApp()

    @other.route(route="x")
    @other.queue_output(arg_name="out", queue_name="outq", connection="AzureWebJobsStorage")
    def with_output(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
        return func.HttpResponse("x")

    with pytest.raises(FunctionHostError, match="'out' of type 'queue' is not emulated"):
        FunctionHost(other, settings={"AzureWebJobsStorage": "UseDevelopmentStorage=true"})


def test_route_templates() -> None:
    t = RouteTemplate.parse("Files/{id:int}/{*rest}", "t")
    assert t.match("files/12/a/b.txt") == {"id": "12", "rest": "a/b.txt"}  # literals are case-insensitive
    assert t.match("files/12") == {"id": "12"}
    assert t.match("files/x/a") is None  # :int constraint
    assert t.build({"id": 3, "rest": "a b/c"}) == "Files/3/a%20b/c"
    opt = RouteTemplate.parse("items/{item_id}/{label?}", "t")
    assert opt.match("items/1/") == {"item_id": "1"} and opt.match("items/1/2/3") is None
    with pytest.raises(ValueError, match="missing"):
        opt.build({})
    with pytest.raises(FunctionHostError, match="not supported"):
        RouteTemplate.parse("x/{id:regex(^a$)}", "t")


# --------------------------------------------------------------------------- HTTP


def test_route_params_and_function_key(host: FunctionHost) -> None:
    url = host.function_url("item", item_id="42")
    assert url == f"{host.base_url}/api/items/42?code={KEY}" and url.startswith("http://127.0.0.1:")
    r = requests.get(url, headers={"X-Test": "yes"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["route"] == {"item_id": "42"} and body["method"] == "GET" and body["x_test"] == "yes"
    assert body["url"] == url  # the function sees the absolute URL, query included
    assert r.headers["X-Item"] == "42"

    # the optional parameter, percent-decoded route values, the key as a header, a POST body
    r = requests.post(host.url("items/a%20b/x%40y"), data="payload ✓".encode(),
                      headers={"x-functions-key": KEY}, timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    assert r.json()["route"] == {"item_id": "a b", "label": "x@y"} and r.json()["body"] == "payload ✓"
    assert requests.get(host.function_url("item", item_id="a/b", label="c"), timeout=TIMEOUT).json()["route"] == {
        "item_id": "a%2Fb", "label": "c"}  # %2F stays encoded, as in ASP.NET Core
    assert [i.ok for i in calls(host, "item")] == [True, True, True]


def test_missing_or_wrong_key_is_401(host: FunctionHost) -> None:
    plain = host.url("items/42")
    assert requests.get(plain, timeout=TIMEOUT).status_code == 401
    assert requests.get(plain, params={"code": "wrong"}, timeout=TIMEOUT).status_code == 401
    assert requests.get(plain, headers={"x-functions-key": KEY + "x"}, timeout=TIMEOUT).status_code == 401
    assert requests.get(plain, params={"code": ""}, timeout=TIMEOUT).status_code == 401
    assert calls(host, "item") == []  # never invoked
    # anonymous needs no key
    assert requests.get(host.url("open"), timeout=TIMEOUT).status_code == 200


def test_wrong_method_is_405_unknown_route_404(host: FunctionHost, settings: dict[str, str]) -> None:
    r = requests.delete(host.function_url("item", item_id="1"), timeout=TIMEOUT)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, POST"
    assert requests.get(host.url("echo"), timeout=TIMEOUT).status_code == 405  # PUT only
    assert requests.get(host.url("nope"), timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{host.base_url}/open", timeout=TIMEOUT).status_code == 404  # no /api prefix
    assert calls(host, "item") == [] and calls(host, "async_echo") == []
    # the real host answers 404 here (azure-functions-host#10098); the stand-in can be told to
    with FunctionHost(app, settings=settings, function_key=KEY, wrong_method_status=404) as strict:
        assert requests.delete(strict.function_url("item", item_id="1"), timeout=TIMEOUT).status_code == 404


def test_query_is_decoded(host: FunctionHost) -> None:
    r = requests.get(host.url("items/7") + f"?code={KEY}&q=a%20b&plus=1+2&multi=x&multi=y&empty=&u=%C3%BC",
                     timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["params"] == {"code": KEY, "q": "a b", "plus": "1 2", "multi": "x,y", "empty": "", "u": "ü"}


def test_response_headers_mimetype_and_failures(host: FunctionHost) -> None:
    r = requests.get(host.url("open"), timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"  # as the Python worker sets it
    assert r.headers["Cache-Control"] == "no-store"
    assert r.content == "héllo wörld".encode()
    assert requests.get(host.function_url("item", item_id="1"), timeout=TIMEOUT).headers["Content-Type"] == (
        "application/json")
    r = requests.put(host.url("echo"), data=b"\x00\x01abc", timeout=TIMEOUT)  # an async def function
    assert (r.status_code, r.content, r.headers["Content-Type"]) == (202, b"cba\x01\x00", "application/octet-stream")
    head = requests.head(host.url("open"), timeout=TIMEOUT)
    assert head.status_code == 200 and head.content == b"" and head.headers["Content-Length"] == str(
        len("héllo wörld".encode()))

    r = requests.get(host.url("open"), params={"mode": "fail"}, timeout=TIMEOUT)
    assert (r.status_code, r.content) == (500, b"")
    r = requests.get(host.url("open"), params={"mode": "none"}, timeout=TIMEOUT)
    assert (r.status_code, r.content) == (500, b"")
    failed = [i for i in calls(host, "open_endpoint") if not i.ok]
    assert [i.error for i in failed] == [
        "RuntimeError: handler exploded",
        "TypeError: unable to encode outgoing TypedData: unsupported type NoneType",
    ]
    assert all(i.trigger == "http" and i.finished >= i.started for i in failed)


def test_a_burst_of_requests_is_served_concurrently(settings: dict[str, str]) -> None:
    parties = 10
    STATE.barrier = threading.Barrier(parties)  # passes only if all requests run at the same time
    with FunctionHost(app, settings=settings, max_workers=parties) as h, ThreadPoolExecutor(parties) as pool:
        t0 = time.monotonic()
        statuses = list(pool.map(lambda _: requests.get(h.url("open"), params={"mode": "busy"},
                                                        timeout=TIMEOUT).status_code, range(parties)))
        assert statuses == [200] * parties
        assert STATE.max_running == parties and time.monotonic() - t0 < TIMEOUT


def test_https_with_a_trusted_certificate(settings: dict[str, str]) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    with FunctionHost(app, settings=settings, function_key=KEY, ssl_context=server_ctx) as h, \
            ca.cert_pem.tempfile() as ca_file:
        url = h.function_url("item", item_id="tls")
        assert url.startswith("https://127.0.0.1:")
        r = requests.get(url, verify=ca_file, timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["route"] == {"item_id": "tls"}
        assert r.json()["url"].startswith("https://")
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=TIMEOUT)  # not trusted by the default store
        with requests.Session() as session:  # keep-alive connections work over TLS too
            assert [session.get(h.url("open"), verify=ca_file, timeout=TIMEOUT).status_code
                    for _ in range(3)] == [200] * 3


# --------------------------------------------------------------------------- queues


def test_base64_messages_are_delivered_decoded(host: FunctionHost, settings: dict[str, str]) -> None:
    q = queue(settings)
    sent = ["hello", "ünïcödé ✓", json.dumps({"upn": "ada@contoso.test"})]
    ids = {q.send_message(text).id for text in sent}
    assert host.wait_idle(10)
    assert sorted(STATE.bodies()) == sorted(t.encode("utf-8") for t in sent)
    assert {m.id for m in STATE.messages} == ids
    for m in STATE.messages:
        assert m.dequeue_count == 1 and m.pop_receipt and m.insertion_time and m.expiration_time
        assert m.time_next_visible and m.time_next_visible > m.insertion_time  # received invisible
    assert STATE.context_names == ["on_message"] * 3
    records = calls(host, "on_message")
    assert [(i.trigger, i.ok, i.dequeue_count) for i in records] == [("queue", True, 1)] * 3
    assert q.get_queue_properties().approximate_message_count == 0  # deleted after success
    assert not queue_exists(settings, settings["TEST_QUEUE"] + "-poison")  # created only when needed


def test_a_message_that_is_not_base64_goes_to_the_poison_queue(host: FunctionHost, settings: dict[str, str]) -> None:
    raw = queue(settings, base64_encode=False)  # the SDK's default: no encoding (the classic mistake)
    raw.send_message("not base64!")
    raw.send_message('{"id": 42}')  # a lenient decoder would turn this into garbage bytes
    queue(settings).send_message("fine")
    assert host.wait_idle(10)
    assert STATE.bodies() == [b"fine"]  # the undecodable ones never reached the function
    assert [i.ok for i in calls(host, "on_message")] == [True]
    poisoned = poison_contents(settings)
    # moved as they were, base64-encoded as the host writes poison messages
    assert sorted(poisoned) == sorted(base64.b64encode(t).decode() for t in (b"not base64!", b'{"id": 42}'))
    assert raw.get_queue_properties().approximate_message_count == 0


def test_a_failing_message_is_retried_then_poisoned(host: FunctionHost, settings: dict[str, str]) -> None:
    q = queue(settings)
    q.send_message("boom")
    q.send_message("ok")
    assert host.wait_idle(15)
    idle_at = time.monotonic()
    records = calls(host, "on_message")
    booms = [i for i in records if not i.ok]
    assert [(i.dequeue_count, i.error) for i in booms] == [(n, "RuntimeError: boom") for n in (1, 2, 3)]
    gaps = [b.started - a.finished for a, b in itertools.pairwise(booms)]
    assert all(gap >= 0.5 for gap in gaps), gaps  # visibilityTimeout 00:00:01 between attempts
    assert idle_at - booms[-1].finished < 0.8  # poisoned right after the 3rd failure, not after a 4th receive
    assert [(i.ok, i.dequeue_count) for i in records if i.ok] == [(True, 1)]
    assert sorted(STATE.bodies()) == [b"boom"] * 3 + [b"ok"]
    poisoned = poison_contents(settings)
    assert poisoned == [base64.b64encode(b"boom").decode()]
    decoded = [m.content for m in queue(settings, settings["TEST_QUEUE"] + "-poison").receive_messages()]
    assert decoded == ["boom"]
    assert q.get_queue_properties().approximate_message_count == 0


def test_a_message_dequeued_too_often_is_poisoned_without_an_invocation(settings: dict[str, str]) -> None:
    q = queue(settings)
    q.create_queue()
    q.send_message("stale")
    for _ in range(3):  # e.g. a crashed instance: dequeued 3 times, never completed
        (m,) = q.receive_messages(max_messages=1, visibility_timeout=30)
        q.update_message(m, pop_receipt=m.pop_receipt, visibility_timeout=0)
    with FunctionHost(app, settings=settings, host_json=FAST_RETRIES) as h:  # maxDequeueCount 3
        assert h.wait_idle(10)
        assert calls(h, "on_message") == []
    assert poison_contents(settings) == [base64.b64encode(b"stale").decode()]


def test_wait_idle_counts_running_and_invisible_messages(host: FunctionHost, settings: dict[str, str]) -> None:
    STATE.hold = 1.0
    with ThreadPoolExecutor(1) as pool:  # an HTTP request in progress counts as running
        pending = pool.submit(requests.get, host.url("open"), params={"mode": "busy"}, timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while STATE.running == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert STATE.running == 1
        assert host.wait_idle(0.3) is False
        assert pending.result().status_code == 200
    assert host.wait_idle(5) is True
    queue(settings).send_message("busy-slow")
    deadline = time.monotonic() + TIMEOUT
    while not STATE.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert STATE.messages, "the poller never delivered the message"
    assert host.wait_idle(0.3) is False  # running (and the message is still in the queue, invisible)
    assert host.wait_idle(10) is True
    assert [i.ok for i in calls(host, "on_message")] == [True]


def test_a_batch_runs_concurrently(settings: dict[str, str]) -> None:
    n = 8
    STATE.barrier = threading.Barrier(n)  # every message of the batch must be running at once
    q = queue(settings)
    with FunctionHost(app, settings=settings, max_workers=16) as h:
        for i in range(n):
            q.send_message(f"busy-{i}")
        assert h.wait_idle(10)
        records = calls(h, "on_message")
    assert [(i.ok, i.dequeue_count) for i in records] == [(True, 1)] * n
    assert STATE.max_running == n


def test_batch_size_and_new_batch_threshold_bound_the_concurrency(settings: dict[str, str]) -> None:
    STATE.barrier = threading.Barrier(4)  # each batch of 4 must run at once ...
    STATE.hold = 0.3  # ... and is still running when the poller looks again
    q = queue(settings)
    q.create_queue()
    for i in range(8):
        q.send_message(f"busy-{i}")
    batches_of_4 = {"version": "2.0", "extensions": {"queues": {"batchSize": 4, "newBatchThreshold": 0}}}
    with FunctionHost(app, settings=settings, host_json=batches_of_4, max_workers=16) as h:
        assert h.wait_idle(10)
        records = calls(h, "on_message")
    assert [(i.ok, i.dequeue_count) for i in records] == [(True, 1)] * 8
    assert STATE.max_running == 4  # ... and the next batch is fetched only when none is left running
    first, second = sorted(records, key=lambda i: i.started)[:4], sorted(records, key=lambda i: i.started)[4:]
    assert min(i.started for i in second) >= max(i.finished for i in first)


# --------------------------------------------------------------------------- timers


def test_timer_tick(host: FunctionHost) -> None:
    first = host.tick("on_timer")
    second = host.tick("on_timer", past_due=True)
    assert (first.function, first.trigger, first.ok) == ("on_timer", "timer", True) and second.ok
    assert STATE.timer_calls == [False, True]
    STATE.timer_fails = True
    failed = host.tick("on_timer")  # recorded, not raised (as the host logs a failed timer run)
    assert not failed.ok and failed.error == "ValueError: timer broke"
    assert calls(host, "on_timer") == [first, second, failed]
    with pytest.raises(ValueError, match="not a timer"):
        host.tick("item")
    with pytest.raises(KeyError):
        host.tick("no_such_function")


def test_timer_ticks_never_overlap(host: FunctionHost) -> None:
    STATE.hold = 0.05
    with ThreadPoolExecutor(4) as pool:
        records = list(pool.map(lambda _: host.tick("on_timer"), range(4)))
    assert STATE.max_running == 1 and all(i.ok for i in records)
    ordered = sorted(records, key=lambda i: i.started)
    assert all(b.started >= a.finished for a, b in itertools.pairwise(ordered))


def test_tick_needs_a_started_host(settings: dict[str, str]) -> None:
    h = FunctionHost(app, settings=settings)
    with pytest.raises(FunctionHostError, match="not started"):
        h.tick("on_timer")
