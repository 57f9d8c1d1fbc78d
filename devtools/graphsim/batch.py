"""JSON batching: ``POST /v1.0/$batch`` (Graph page "Combine multiple HTTP requests using JSON
batching", json-batching; throttling-limits "Outlook service limits for JSON batching").

The envelope ``{"requests": [{"id", "method", "url", "headers"?, "body"?, "dependsOn"?}]}`` is
checked as a whole first; a malformed one answers ``400`` with a Graph error body and runs
nothing ("If the batch request itself is malformed, the status code is 400"). A parseable one
answers ``200 {"responses": [{"id", "status", "headers", "body"?}]}`` whatever its requests
answered ("A 200 status code on the batch response ... doesn't indicate that the individual
requests inside the batch succeeded").

Each inner request runs through the server's own Graph path (``GraphSim._graph_call``: the
batch's bearer token, the per-mailbox concurrency limit, ``inject_throttle``, latency, routing)
after its own fault draw (faults.py), exactly as if it had been sent alone, and is logged in
``request_log``/``response_log`` with ``batch`` = the envelope's request-id ("Requests in a batch
are evaluated individually against the applicable throttling limits and if any request exceeds
the limits, it fails with a status of 429"). The envelope itself draws no fault and takes no
``inject_throttle`` entry. A ``timeout``/``reset`` fault drawn by an inner request loses the whole
answer (there is one connection): the requests before it ran, later ones do not.

Choices where the page is silent (see README.md): requests run one at a time, in an order that
respects ``dependsOn`` and is otherwise the order given (Graph runs up to 4 Outlook requests at
once, in any order); responses come back in the order of the requests; a request whose
``dependsOn`` names a failed request (status >= 400, including 424) is not run and answers 424
``FailedDependency``; unknown properties, cycles and the other malformations below answer 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from devtools.graphsim import faults as fault_hooks
from devtools.graphsim.odata import GraphError, bad_request, error_body
from devtools.graphsim.routes import JSON_CONTENT_TYPE, Response
from devtools.graphsim.schemas import validate_error_body

if TYPE_CHECKING:
    from devtools.graphsim.server import GraphSim, _Handler

#: "JSON batch requests are currently limited to 20 individual requests."
MAX_REQUESTS = 20
#: Methods whose inner requests need a body and a Content-Type header (else the batch is 400).
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT"})
_REQUEST_KEYS = frozenset({"id", "method", "url", "headers", "body", "dependsOn"})
#: Response headers of the outer HTTP answer that are not repeated inside each response.
_OUTER_ONLY_HEADERS = frozenset({"request-id", "client-request-id"})


def is_batch_path(segments: Sequence[str]) -> bool:
    """``/v1.0/$batch`` (segments after ``/v1.0``; literals are case-insensitive, as Graph's)."""
    return len(segments) == 1 and segments[0].lower() == "$batch"


@dataclass
class Step:
    """One inner request, parsed."""

    id: str  # as sent (echoed in the response)
    key: str  # the id compared case-insensitively ("Not case-sensitive")
    method: str
    segments: list[str]  # decoded path segments, relative to /v1.0
    query: dict[str, str]
    headers: Message
    body: bytes
    depends: list[str]  # keys

    @property
    def path(self) -> str:
        return "/" + "/".join(["v1.0", *self.segments])


# -- parsing ----------------------------------------------------------------------------------
def _bad(message: str) -> GraphError:
    return bad_request("BadRequest", message)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    low = name.lower()
    return next((v for k, v in headers.items() if k.lower() == low), None)


def _encode_body(step_id: str, body: Any, content_type: str | None) -> bytes:
    """The inner body as bytes: JSON for JSON media types (and when no type is given), the text for
    ``text/*``, else a base64url string (OData JSON batch format, "body")."""
    if body is None:
        return b""
    media = (content_type or "").split(";")[0].strip().lower()
    if not media or media == "application/json" or media.endswith("+json"):
        return json.dumps(body).encode()
    if not isinstance(body, str):
        raise _bad(f"The body of request '{step_id}' must be a string for Content-Type '{media}'.")
    if media.startswith("text/"):
        return body.encode()
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise _bad(f"The body of request '{step_id}' is not a base64url-encoded value.") from None


def _parse_step(item: Any) -> Step:
    if not isinstance(item, dict):
        raise _bad("Each entry of 'requests' must be a JSON object.")
    unknown = sorted(set(item) - _REQUEST_KEYS)
    if unknown:
        raise _bad(f"Unknown properties in a batch request: {', '.join(unknown)}.")
    step_id, method, url = item.get("id"), item.get("method"), item.get("url")
    if not isinstance(step_id, str) or not step_id.strip():
        raise _bad("Each request in a batch needs an 'id' (a non-empty string).")
    if not isinstance(method, str) or not method.strip():
        raise _bad(f"Request '{step_id}' needs a 'method'.")
    if not isinstance(url, str) or not url.strip():
        raise _bad(f"Request '{step_id}' needs a 'url'.")
    headers = item.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise _bad(f"The 'headers' of request '{step_id}' must be an object of strings.")
    depends = item.get("dependsOn") or []
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
        raise _bad(f"The 'dependsOn' of request '{step_id}' must be an array of request ids.")
    method = method.strip().upper()
    content_type = _header(headers, "Content-Type")
    if method in WRITE_METHODS and (item.get("body") is None or not content_type):
        # the message Graph answers (quoted in msgraph-sdk-dotnet #2628)
        raise _bad(f"Write request id : {step_id} does not contain Content-Type header or body.")
    parts = urlsplit(url.strip())
    if parts.scheme or parts.netloc:
        raise _bad(f"The url of request '{step_id}' must be relative to the version, e.g. '/users'.")
    message = Message()
    for name, value in headers.items():
        message[name] = value
    return Step(
        id=step_id,
        key=step_id.lower(),
        method=method,
        segments=[unquote(s) for s in parts.path.split("/") if s],
        query={k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
        headers=message,
        body=_encode_body(step_id, item.get("body"), content_type),
        depends=[d.lower() for d in depends],
    )


def parse(body: bytes) -> list[Step]:
    """The inner requests of a batch body, or GraphError 400 (nothing runs then)."""
    try:
        data = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        raise _bad(
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid "
            "JSON format."
        )
    if set(data) != {"requests"} or not isinstance(data["requests"], list):
        raise _bad("A batch request body is a JSON object with one property, 'requests' (an array).")
    items = data["requests"]
    if not items:
        raise _bad("A batch request must contain at least one request.")
    if len(items) > MAX_REQUESTS:
        raise _bad(f"A batch request may contain at most {MAX_REQUESTS} requests; this one has {len(items)}.")
    steps: list[Step] = []
    seen: dict[str, str] = {}
    for item in items:
        step = _parse_step(item)
        if step.key in seen:
            raise _bad(f"Batch request ids must be unique: '{step.id}' is used more than once.")
        seen[step.key] = step.id
        steps.append(step)
    for step in steps:
        for dep in step.depends:
            if dep not in seen:
                raise _bad(f"Request '{step.id}' depends on '{dep}', which is not a request of this batch.")
            if dep == step.key:
                raise _bad(f"Request '{step.id}' depends on itself.")
    return steps


def execution_order(steps: Sequence[Step]) -> list[Step]:
    """Each request after the ones it depends on, otherwise in the order given; 400 on a cycle."""
    done: set[str] = set()
    pending = list(steps)
    order: list[Step] = []
    while pending:
        ready = next((s for s in pending if all(d in done for d in s.depends)), None)
        if ready is None:
            raise _bad(f"The dependsOn of requests {', '.join(repr(s.id) for s in pending)} form a cycle.")
        pending.remove(ready)
        done.add(ready.key)
        order.append(ready)
    return order


# -- running -----------------------------------------------------------------------------------
def handle(
    sim: GraphSim,
    h: _Handler,
    body: bytes,
    request_id: str,
    client_request_id: str,
    record: dict[str, Any],
) -> tuple[Response, fault_hooks.Fault | None]:
    """Answer ``POST /v1.0/$batch``: (the answer, None), or (a dropped answer, the inner fault that
    dropped it) for the server to stall / reset the connection with."""
    authorization = h.headers.get("Authorization") or ""
    try:
        token = sim.auth.validate_bearer(authorization)
        record["app"] = token.client_id
        if h.command != "POST":
            raise GraphError(405, "BadRequest", f"The HTTP method '{h.command}' is not allowed for this resource.")
        order = execution_order(steps := parse(body))
    except GraphError as err:
        return Response(err.status, error_body(err.code, err.message, request_id, client_request_id), err.headers), None
    answers: dict[str, Response] = {}
    failed: set[str] = set()
    for step in order:
        del step.headers["Authorization"]  # "same Authorization as the batch": the envelope's wins
        step.headers["Authorization"] = authorization
        broken = next((d for d in step.depends if d in failed), None)
        if broken is not None:
            resp = _failed_dependency(sim, step, broken, request_id, client_request_id, token.client_id)
        else:
            resp, fault = _run(sim, h, step, request_id, client_request_id)
            if fault is not None:
                return resp, fault
        answers[step.key] = resp
        if resp.status >= 400:
            failed.add(step.key)
    return Response(200, {"responses": [_item(step, answers[step.key]) for step in steps]}), None


def _inner_record(step: Step, batch_request_id: str, request_id: str) -> dict[str, Any]:
    return {
        "method": step.method,
        "path": step.path,
        "query": step.query,
        "status": None,
        "user": None,
        "app": None,
        "time": time.time(),
        "fault": None,
        "client_request_id": step.headers.get("client-request-id"),
        "request_id": request_id,
        "batch": batch_request_id,
        "batch_step": step.id,
        "bytes_in": 0,  # the bytes travelled in the envelope; its record counts them all
        "bytes_out": 0,
    }


def _run(
    sim: GraphSim, h: _Handler, step: Step, batch_request_id: str, batch_client_request_id: str
) -> tuple[Response, fault_hooks.Fault | None]:
    """One inner request, as ``GraphSim._dispatch`` serves a direct Graph call: its own fault draw
    and request-id, ``_graph_call``, logging. Returns (answer, the fault if it dropped the answer)."""
    request_id = str(uuid.uuid4())
    client_request_id = step.headers.get("client-request-id") or batch_client_request_id
    record = _inner_record(step, batch_request_id, request_id)
    fault = sim.faults.draw(step.method, step.path, step.headers.get("Authorization"))
    record["fault"] = fault_hooks.label(fault)
    try:
        early = fault_hooks.answer_before(sim, fault, request_id, client_request_id) if fault else None
        if early is not None:
            resp = early
        else:
            resp = sim._graph_call(
                step.method, step.headers, step.segments, step.query, step.body, request_id, client_request_id, record,
                round_trip=False,
            )
    except Exception:  # a bug in the stand-in: answer like Graph does, keep serving
        traceback.print_exc()
        resp = Response(500, error_body("UnknownError", "graphsim internal error", request_id, client_request_id))
    if fault is not None:
        resp = fault_hooks.answer_after(sim, fault, h, resp, request_id, client_request_id)
    sim._log_exchange(record, resp)
    return resp, (fault if fault_hooks.dropped(resp) else None)


def _failed_dependency(
    sim: GraphSim, step: Step, broken: str, batch_request_id: str, batch_client_request_id: str, app: str
) -> Response:
    """424 for a request whose dependency failed: not run, logged (status 424, fault None)."""
    request_id = str(uuid.uuid4())
    client_request_id = step.headers.get("client-request-id") or batch_client_request_id
    record = _inner_record(step, batch_request_id, request_id)
    record["app"] = app
    message = f"Request '{step.id}' was not run because request '{broken}', which it depends on, failed."
    resp = Response(424, error_body("FailedDependency", message, request_id, client_request_id))
    sim._log_exchange(record, resp)
    return resp


def _item(step: Step, resp: Response) -> dict[str, Any]:
    """One entry of ``responses``: id, status, the headers the direct call would carry (without the
    outer request-id/client-request-id) and the body, omitted when there is none (204)."""
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in _OUTER_ONLY_HEADERS}
    item: dict[str, Any] = {"id": step.id, "status": resp.status, "headers": headers}
    if resp.body is not None:
        headers.setdefault("Content-Type", JSON_CONTENT_TYPE)
        headers.setdefault("OData-Version", "4.0")
        item["body"] = resp.body
    return item


# -- checking (tests) ----------------------------------------------------------------------------
def validate_batch_response(payload: Any) -> list[str]:
    """Shape issues of a ``$batch`` answer (the CSDL has no type for it): ``{"responses": [{"id",
    "status", "headers", "body"?}]}``; error bodies must be Graph's. Entity bodies are checked
    against the CSDL through their ``response_log`` records (``batch`` = the envelope's id)."""
    if not isinstance(payload, dict) or set(payload) != {"responses"} or not isinstance(payload["responses"], list):
        return ["$: must be {'responses': [...]}"]
    issues: list[str] = []
    for n, item in enumerate(payload["responses"]):
        where = f"$.responses[{n}]"
        if not isinstance(item, dict):
            issues.append(f"{where}: not an object")
            continue
        if not {"id", "status", "headers"} <= set(item) <= {"id", "status", "headers", "body"}:
            issues.append(f"{where}: keys {sorted(item)}")
        if not isinstance(item.get("id"), str) or not isinstance(item.get("status"), int):
            issues.append(f"{where}: id must be a string and status an integer")
        headers = item.get("headers")
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            issues.append(f"{where}.headers: must be an object of strings")
        if item.get("status") == 204 and "body" in item:
            issues.append(f"{where}: a 204 has no body")
        if isinstance(item.get("status"), int) and item["status"] >= 400:
            issues += [f"{where}.body: {i}" for i in validate_error_body(item.get("body"))]
    return issues
