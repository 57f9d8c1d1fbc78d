"""devtools.graphsim JSON batching (``POST /v1.0/$batch``) and the request log's byte counts, over
real HTTPS.

After every test each JSON body the stand-in emitted is checked: entity bodies (direct and inner
ones, which ``response_log`` lists with ``batch`` = the envelope's request-id) against the v1.0
CSDL, error bodies against Graph's error shape, and ``$batch`` envelopes with
``validate_batch_response``.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from test_graphsim import CLIENT, UPN, Graph, event_body, g, new_session, sim  # noqa: F401
from test_graphsim_recurrence import payload_problems

from devtools.graphsim import GraphSim
from devtools.graphsim import faults as gf
from devtools.graphsim.batch import validate_batch_response
from devtools.graphsim.schemas import validate_error_body

EVENTS = f"/users/{UPN}/events"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(autouse=True)
def csdl_checked(sim: GraphSim) -> Iterator[None]:  # noqa: F811
    """After each test: every body the stand-in emitted (inner ones included) is valid."""
    yield
    envelopes = [r for r in sim.response_log if r["path"] == "/v1.0/$batch" and r["batch"] is None]
    problems = payload_problems([r for r in sim.response_log if r not in envelopes])
    for rec in envelopes:
        issues = validate_batch_response(rec["body"]) if rec["status"] == 200 else validate_error_body(rec["body"])
        problems += [f"$batch -> {rec['status']}: {i}" for i in issues]
    assert problems == []


def batch(g: Graph, reqs: list[dict[str, Any]], **kw: Any) -> requests.Response:  # noqa: F811
    return g.post("/$batch", {"requests": reqs}, **kw)


def by_id(resp: requests.Response) -> dict[str, dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert validate_batch_response(body) == []
    return {item["id"]: item for item in body["responses"]}


def create_step(n: int | str, subject: str | None = None, **extra: Any) -> dict[str, Any]:
    body = event_body(subject or f"batch {n}")
    return {"id": str(n), "method": "POST", "url": EVENTS, "headers": dict(JSON), "body": body, **extra}


def inner_records(sim: GraphSim, envelope: requests.Response) -> list[dict[str, Any]]:  # noqa: F811
    return [r for r in sim.request_log if r.get("batch") == envelope.headers["request-id"]]


def create(g: Graph, subject: str) -> dict[str, Any]:  # noqa: F811
    resp = g.post(EVENTS, event_body(subject))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


# --- the envelope ------------------------------------------------------------------------------
def test_a_batch_of_20_creates(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    sim.reset_request_log()
    resp = batch(g, [create_step(n) for n in range(20)])
    answers = by_id(resp)
    assert list(answers) == [str(n) for n in range(20)]  # the order of the requests
    for n, item in answers.items():
        assert item["status"] == 201
        assert item["body"]["subject"] == f"batch {n}" and item["body"]["id"]
        assert item["headers"]["Content-Type"].startswith("application/json")
        assert item["headers"]["ETag"] == item["body"]["@odata.etag"]
    listed = g.get(EVENTS, params={"$top": "50"}).json()["value"]
    assert sorted(e["subject"] for e in listed) == sorted(f"batch {n}" for n in range(20))

    envelope = next(r for r in sim.request_log if r["batch"] is None)
    assert envelope["path"] == "/v1.0/$batch" and envelope["status"] == 200 and envelope["app"] == CLIENT
    assert envelope["request_id"] == resp.headers["request-id"]
    inner = inner_records(sim, resp)
    assert [r["batch_step"] for r in inner] == [str(n) for n in range(20)]
    assert {(r["method"], r["path"], r["status"], r["user"], r["app"]) for r in inner} == {
        ("POST", f"/v1.0{EVENTS}", 201, UPN, CLIENT)
    }
    assert len({r["request_id"] for r in inner}) == 20
    assert sim.request_log.index(envelope) == 20  # logged once answered: after its inner requests
    inner_bodies = [r for r in sim.response_log if r["batch"] == resp.headers["request-id"]]
    assert len(inner_bodies) == 20  # each inner body is CSDL-checked like a direct answer


@pytest.mark.parametrize(
    ("reqs", "message"),
    [
        ([create_step(n) for n in range(21)], "at most 20 requests"),
        ([], "at least one request"),
        ([create_step("a"), create_step("A")], "must be unique"),
        ([create_step(1), create_step(2, dependsOn=["3"])], "depends on '3'"),
        ([create_step(1, dependsOn=["2"]), create_step(2, dependsOn=["1"])], "form a cycle"),
        ([{"id": "1", "method": "POST", "url": EVENTS, "body": event_body("x")}], "Content-Type header or body"),
        ([{"id": "1", "method": "PATCH", "url": f"{EVENTS}/x", "headers": JSON}], "Content-Type header or body"),
        ([{"id": "1", "method": "GET", "url": "https://graph.microsoft.com/v1.0/users"}], "relative"),
        ([{"id": "1", "method": "GET", "url": EVENTS, "dependson": ["2"]}], "Unknown properties"),
        ([{"id": 1, "method": "GET", "url": EVENTS}], "'id'"),
    ],
    ids=[
        "21",
        "empty",
        "duplicate-id",
        "unknown-dependency",
        "cycle",
        "no-content-type",
        "no-body",
        "absolute",
        "typo",
        "numeric-id",
    ],
)
def test_a_malformed_batch_is_400_and_runs_nothing(
    sim: GraphSim,  # noqa: F811
    g: Graph,  # noqa: F811
    reqs: list[dict[str, Any]],
    message: str,
) -> None:
    sim.reset_request_log()
    resp = batch(g, reqs)
    assert resp.status_code == 400, resp.text
    assert validate_error_body(resp.json()) == []
    assert resp.json()["error"]["code"] == "BadRequest" and message in resp.json()["error"]["message"]
    assert [r["path"] for r in sim.request_log] == ["/v1.0/$batch"]  # nothing ran
    assert g.get(EVENTS).json()["value"] == []


def test_the_envelope_needs_a_token_a_post_and_json(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    anonymous = new_session(sim).post(f"{sim.graph_url}/$batch", json={"requests": []}, timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert g.get("/$batch").status_code == 405
    garbled = g.s.post(f"{sim.graph_url}/$batch", data=b"{nope", headers=JSON, timeout=10)
    assert garbled.status_code == 400 and "Unable to read JSON" in garbled.json()["error"]["message"]
    nested = by_id(batch(g, [{"id": "1", "method": "GET", "url": "/$batch"}]))
    assert nested["1"]["status"] == 400  # no batch inside a batch


# --- inner requests ----------------------------------------------------------------------------
def test_depends_on_orders_requests_and_a_failure_gives_424(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    ev = create(g, "target")
    url = f"{EVENTS}/{ev['id']}"
    sim.reset_request_log()
    stale = {
        "id": "patch",
        "method": "PATCH",
        "url": url,
        "headers": {**JSON, "If-Match": 'W/"stale"'},
        "body": {"subject": "never"},
    }
    resp = batch(
        g,
        [
            {"id": "after", "method": "GET", "url": url, "dependsOn": ["patch"]},  # listed first, runs second
            stale,
            {"id": "chain", "method": "DELETE", "url": url, "dependsOn": ["AFTER"]},  # ids: not case-sensitive
            {"id": "free", "method": "GET", "url": url},
        ],
    )
    answers = by_id(resp)
    assert answers["patch"]["status"] == 412
    assert answers["patch"]["body"]["error"]["code"] == "ErrorIrresolvableConflict"
    assert answers["after"]["status"] == 424 and answers["chain"]["status"] == 424  # transitively
    assert answers["after"]["body"]["error"]["code"] == "FailedDependency"
    assert answers["free"]["status"] == 200 and answers["free"]["body"]["subject"] == "target"
    assert g.get(url).status_code == 200  # the DELETE never ran
    inner = inner_records(sim, resp)
    assert [(r["batch_step"], r["status"]) for r in inner] == [
        ("patch", 412),
        ("after", 424),
        ("chain", 424),
        ("free", 200),
    ]

    ok = by_id(
        batch(g, [create_step("make", "made"), {"id": "list", "method": "GET", "url": EVENTS, "dependsOn": ["make"]}])
    )
    assert ok["make"]["status"] == 201
    assert "made" in [e["subject"] for e in ok["list"]["body"]["value"]]


def test_per_request_headers_if_match_and_prefer(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    ev = create(g, "etag test")
    url = f"{EVENTS}/{ev['id']}"
    etag = ev["@odata.etag"]
    answers = by_id(
        batch(
            g,
            [
                {
                    "id": "1",
                    "method": "PATCH",
                    "url": url,
                    "headers": {**JSON, "If-Match": etag},
                    "body": {"subject": "first"},
                },
                {
                    "id": "2",
                    "method": "PATCH",
                    "url": url,
                    "headers": {**JSON, "if-match": etag},
                    "body": {"subject": "second"},
                    "dependsOn": ["1"],
                },
                {
                    "id": "3",
                    "method": "GET",
                    "url": f"{url}?$select=subject,start",
                    "dependsOn": ["2"],
                    "headers": {"Prefer": 'outlook.timezone="Pacific Standard Time"'},
                },
            ],
        )
    )
    assert answers["1"]["status"] == 200 and answers["1"]["body"]["subject"] == "first"
    assert answers["2"]["status"] == 412  # the etag went stale with request 1
    assert answers["3"]["status"] == 424
    answers = by_id(
        batch(
            g,
            [
                {
                    "id": "tz",
                    "method": "GET",
                    "url": f"{url}?$select=subject,start",
                    "headers": {"Prefer": 'outlook.timezone="Pacific Standard Time"'},
                },
                {"id": "utc", "method": "GET", "url": f"{url}?$select=subject,start"},
            ],
        )
    )
    assert answers["tz"]["body"]["start"]["timeZone"] == "Pacific Standard Time"
    assert 'outlook.timezone="Pacific Standard Time"' in answers["tz"]["headers"]["Preference-Applied"]
    assert answers["utc"]["body"]["start"]["timeZone"] == "UTC"  # the preference is per request
    assert answers["utc"]["body"]["subject"] == "first"


def test_a_throttled_inner_request_gets_its_own_429(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    gets = [{"id": str(n), "method": "GET", "url": f"/users/{UPN}/calendar"} for n in range(3)]
    sim.inject_throttle(1, retry_after=2)
    resp = batch(g, gets)
    answers = by_id(resp)  # the batch itself is 200
    assert answers["0"]["status"] == 429 and answers["0"]["headers"]["Retry-After"] == "2"
    assert answers["0"]["body"]["error"]["code"] == "TooManyRequests"
    assert [answers[n]["status"] for n in ("1", "2")] == [200, 200]
    assert [r["status"] for r in inner_records(sim, resp)] == [429, 200, 200]

    sim.inject_faults(gf.throttle(1, retry_after=0.4, methods="PATCH"))
    ev = create(g, "x")
    resp = batch(
        g,
        [
            gets[0],
            {"id": "p", "method": "PATCH", "url": f"{EVENTS}/{ev['id']}", "headers": JSON, "body": {"subject": "y"}},
            {"id": "after", "method": "GET", "url": f"{EVENTS}/{ev['id']}", "dependsOn": ["p"]},
        ],
    )
    answers = by_id(resp)
    assert answers["p"]["status"] == 429 and answers["p"]["headers"]["Retry-After"] == "0.4"
    assert answers["0"]["status"] == 200 and answers["after"]["status"] == 424
    assert [r["fault"] for r in inner_records(sim, resp)] == [None, "status", None]
    assert sim.fault_log[-1]["path"] == f"/v1.0{EVENTS}/{ev['id']}"
    assert g.get(f"{EVENTS}/{ev['id']}").json()["subject"] == "x"


def test_an_inner_reset_loses_the_whole_answer(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    ev = create(g, "x")
    sim.reset_request_log()
    sim.inject_faults(gf.reset(after=True, methods="PATCH"))
    patch = {"id": "p", "method": "PATCH", "url": f"{EVENTS}/{ev['id']}", "headers": JSON, "body": {"subject": "y"}}
    with pytest.raises(requests.ConnectionError):
        batch(g, [create_step("c", "landed"), patch, {"id": "g", "method": "GET", "url": EVENTS}])
    log = sim.request_log
    assert [(r["batch_step"], r["status"], r["fault"]) for r in log[:2]] == [("c", 201, None), ("p", None, "reset")]
    assert log[2]["path"] == "/v1.0/$batch" and log[2]["status"] is None and log[2]["bytes_out"] == 0
    assert len(log) == 3  # the GET never ran
    subjects = {e["subject"] for e in g.get(EVENTS).json()["value"]}
    assert subjects == {"y", "landed"}  # both writes landed; the client cannot tell


# --- byte counts -------------------------------------------------------------------------------
def _raw_exchange(sim: GraphSim, request: bytes) -> bytes:  # noqa: F811
    """Send ``request`` over TLS and read the whole answer (headers, Content-Length body)."""
    ctx = ssl.create_default_context(cafile=sim.ca_path)
    raw = socket.create_connection(("127.0.0.1", sim.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += tls.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        while len(body) < int(lengths[0]):
            body += tls.recv(65536)
        return head + b"\r\n\r\n" + body


def test_byte_counts_are_what_travelled(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    token = g.s.headers["Authorization"]
    assert isinstance(token, str)
    request = (
        f"GET /v1.0{EVENTS}?$top=5 HTTP/1.1\r\nHost: 127.0.0.1:{sim.port}\r\nAuthorization: {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    answer = _raw_exchange(sim, request)
    record = sim.request_log[-1]
    assert record["path"] == f"/v1.0{EVENTS}" and record["status"] == 200
    assert record["bytes_in"] == len(request)
    assert record["bytes_out"] == len(answer)

    body = json.dumps({"requests": [create_step(1)]}).encode()
    post = (
        f"POST /v1.0/$batch HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    answer = _raw_exchange(sim, post)
    envelope = sim.request_log[-1]
    assert envelope["path"] == "/v1.0/$batch" and envelope["status"] == 200
    assert (envelope["bytes_in"], envelope["bytes_out"]) == (len(post), len(answer))
    assert [(r["bytes_in"], r["bytes_out"]) for r in sim.request_log if r["batch"]] == [(0, 0)]

    # through requests, twice on one kept-alive connection: the counts restart with each request
    counts = []
    for _ in range(2):
        resp = g.get(f"/users/{UPN}/calendar")
        record = sim.request_log[-1]
        head = f"HTTP/1.1 {resp.status_code} {resp.reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in resp.raw.headers.items()
        )
        assert record["bytes_out"] == len(head) + 2 + len(resp.content)  # what the client received
        sent = resp.request
        request_head = f"{sent.method} {sent.path_url} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in sent.headers.items()
        )
        assert record["bytes_in"] > len(request_head)  # plus the Host header http.client adds
        counts.append((record["bytes_in"], record["bytes_out"]))
    assert counts[0][0] == counts[1][0]
    token_records = [r for r in sim.request_log if r["path"].endswith("/oauth2/v2.0/token")]
    assert token_records and all(r["bytes_in"] > 0 and r["bytes_out"] > 0 for r in token_records)


def test_a_dropped_answer_sent_no_bytes(sim: GraphSim, g: Graph) -> None:  # noqa: F811
    sim.inject_faults(gf.reset(methods="GET"))
    with pytest.raises(requests.ConnectionError):
        g.get(f"/users/{UPN}/calendar")
    record = sim.request_log[-1]
    assert record["status"] is None and record["bytes_out"] == 0 and record["bytes_in"] > 0
