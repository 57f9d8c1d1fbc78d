"""Fault injection for the Graph stand-in: bounded, seeded, per method / path / probability.

A :class:`Fault` is one rule: *what* goes wrong (``kind``), *where* (``methods``, a ``path``
regular expression searched in the request path, ``/v1.0/...`` or the identity endpoints) and
*how often* (``probability`` per matching request, at most ``count`` times in all). Rules are
tried in the order they were added; the first one that matches and wins its draw fires, so a
request suffers at most one fault. Draws come from one ``random.Random(seed)``: the same seed and
the same request sequence give the same faults.

Kinds (what the client sees):

``status``
    An error answer with a Graph error body: 429 ``TooManyRequests`` / 503
    ``ServiceNotAvailable`` (with ``Retry-After`` when ``retry_after`` is given: seconds,
    fractions allowed), 500 ``UnknownError``, 504 ``GatewayTimeout``, 412
    ``ErrorIrresolvableConflict`` (Exchange's answer to a stale change key), 401
    ``InvalidAuthenticationToken``, or any other status/code given.
``timeout``
    The server stalls ``seconds`` (set it past the client's read timeout) and then closes the
    connection without an answer.
``reset``
    The connection is closed at once with a TCP reset, without an answer.
``expire-token``
    The bearer token of this request expires now: this request and every later one carrying
    it answer 401 ``InvalidAuthenticationToken`` "Lifetime validation failed, the token is
    expired." (as the stand-in does for a token past its lifetime); the client must get a new
    token. Other tokens (the test's own clients) stay valid.
``expire-delta``
    Every delta/skip token issued so far expires (``GraphSim.expire_delta_tokens``), then the
    request goes on: a delta request answers 410 ``SyncStateNotFound``.

``after=True`` (``status``, ``timeout``, ``reset``): the request is carried out first (a write
lands) and only then is its answer replaced by the error, or lost. That is the dangerous case
for a client: it cannot tell whether its write happened.

Every fault that fires is recorded in :attr:`FaultInjector.log`; the stand-in's request log
marks the request with ``fault`` (the kind).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from devtools.faultrules import RuleMatching, drop_connection, methods_of
from devtools.graphsim.odata import error_body
from devtools.graphsim.routes import Response

if TYPE_CHECKING:
    from devtools.graphsim.server import GraphSim, _Handler

#: The default ``path`` pattern: Graph requests only (not the identity endpoints).
GRAPH_PATHS = r"^/v1\.0/"
#: Matches any delta request (a round's first URL and its next/delta links).
DELTA_PATHS = r"/delta$"
KINDS = ("status", "timeout", "reset", "expire-token", "expire-delta")

_DEFAULT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad request."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
    409: ("ErrorIrresolvableConflict", "The send or update operation could not be performed."),
    412: (
        "ErrorIrresolvableConflict",
        "The send or update operation could not be performed because the change key passed in the "
        "request does not match the current change key for the item.",
    ),
    429: ("TooManyRequests", "Please retry again later."),
    500: ("UnknownError", "An internal server error occurred. The operation failed."),
    502: ("BadGateway", "The server received an invalid response from an upstream server."),
    503: ("ServiceNotAvailable", "The service is temporarily unavailable. Please retry later."),
    504: ("GatewayTimeout", "The server did not receive a timely response from an upstream server."),
}
EXPIRED_TOKEN_MESSAGE = "Lifetime validation failed, the token is expired."


@dataclass
class Fault(RuleMatching):
    """One fault rule; see the module docstring. Build it with the helpers below or directly."""

    kind: str = "status"
    status: int = 503
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None
    methods: str | Iterable[str] = "*"
    path: str = GRAPH_PATHS
    probability: float = 1.0
    count: int = 1
    seconds: float = 0.0
    after: bool = False
    with_location: bool = False
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(KINDS)}")
        if not 100 <= int(self.status) <= 599:
            raise ValueError("status must be an HTTP status code")
        if not 0.0 <= float(self.probability) <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if int(self.count) < 1:
            raise ValueError("count must be at least 1 (faults are always bounded)")
        if self.retry_after is not None and float(self.retry_after) < 0:
            raise ValueError("retry_after must not be negative")
        if float(self.seconds) < 0:
            raise ValueError("seconds must not be negative")
        if self.after and self.kind not in ("status", "timeout", "reset"):
            raise ValueError("after=True applies to status, timeout and reset faults only")
        self.status = int(self.status)
        self.count = int(self.count)
        self.probability = float(self.probability)
        self.methods = methods_of(self.methods)
        self._pattern = re.compile(self.path)

    def error(self) -> tuple[int, str, str, dict[str, str]]:
        """(status, code, message, headers) of a ``status`` fault."""
        code, message = _DEFAULT_ERRORS.get(self.status, ("UnknownError", f"Injected HTTP {self.status}."))
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            value = float(self.retry_after)
            headers["Retry-After"] = str(int(value)) if value.is_integer() else f"{value:g}"
        return self.status, self.code or code, self.message or message, headers

    def describe(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "fired"}
        data["methods"] = sorted(self.methods)  # type: ignore[arg-type]
        data["fired"] = self.fired
        return data


# -- helpers ------------------------------------------------------------------------------------
def throttle(count: int = 1, retry_after: float | None = 1.0, *, status: int = 429, **match: Any) -> Fault:
    """429 ``TooManyRequests`` (or 503) with ``Retry-After`` (None: without the header)."""
    return Fault("status", status=status, retry_after=retry_after, count=count, **match)


def server_error(status: int = 500, count: int = 1, *, retry_after: float | None = None, **match: Any) -> Fault:
    """500 / 502 / 503 / 504, with ``Retry-After`` only when given."""
    return Fault("status", status=status, retry_after=retry_after, count=count, **match)


def irresolvable_conflict(count: int = 1, *, methods: str | Iterable[str] = "PATCH", **match: Any) -> Fault:
    """412 ``ErrorIrresolvableConflict`` (a stale change key), on PATCH by default."""
    return Fault("status", status=412, count=count, methods=methods, **match)


def timeout(seconds: float, count: int = 1, *, after: bool = False, **match: Any) -> Fault:
    """Stall ``seconds`` then close without an answer (``after``: once the request was carried out)."""
    return Fault("timeout", seconds=seconds, count=count, after=after, **match)


def reset(count: int = 1, *, after: bool = False, **match: Any) -> Fault:
    """Close the connection with a TCP reset, no answer (``after``: once the request was carried out)."""
    return Fault("reset", count=count, after=after, **match)


def expired_token(count: int = 1, **match: Any) -> Fault:
    """The request's bearer token expires now: 401 until the client gets a new token."""
    return Fault("expire-token", count=count, **match)


def expired_delta(count: int = 1, *, with_location: bool = False, path: str = DELTA_PATHS, **match: Any) -> Fault:
    """Delta/skip tokens issued so far expire as this delta request arrives: 410 ``SyncStateNotFound``."""
    return Fault("expire-delta", count=count, with_location=with_location, path=path, **match)


def fault_from_dict(data: Mapping[str, Any]) -> Fault:
    """A :class:`Fault` from JSON (the admin endpoint ``POST /_sim/faults``)."""
    allowed = {
        "kind",
        "status",
        "code",
        "message",
        "retry_after",
        "methods",
        "path",
        "probability",
        "count",
        "seconds",
        "after",
        "with_location",
    }
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    return Fault(**dict(data))


# -- the injector -------------------------------------------------------------------------------
class FaultInjector:
    """The rules in force, the seeded draws, the log, and the tokens expired by faults."""

    def __init__(self, seed: int | None = 0) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._faults: list[Fault] = []
        self._log: list[dict[str, Any]] = []
        self._expired_tokens: set[str] = set()
        self._stopping = threading.Event()

    def seed(self, seed: int | None) -> None:
        with self._lock:
            self._rng = random.Random(seed)

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        """Remove every rule (the log and tokens already expired stay)."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """Rules still able to fire."""
        with self._lock:
            return [f for f in self._faults if f.left > 0]

    @property
    def log(self) -> list[dict[str, Any]]:
        """``{time, kind, status, method, path, after, rule}`` per fault that fired (``rule``: index
        in the order added)."""
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    def draw(self, method: str, path: str, authorization: str | None) -> Fault | None:
        """The fault for this request, if any (one draw per matching rule still able to fire)."""
        with self._lock:
            token = _bearer(authorization)
            if token is not None and token in self._expired_tokens:
                return _STILL_EXPIRED
            for index, fault in enumerate(self._faults):
                if fault.left <= 0 or not fault.matches(method, path):
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                fault.fired += 1
                if fault.kind == "expire-token" and token is not None:
                    self._expired_tokens.add(token)
                self._log.append(
                    {
                        "time": time.time(),
                        "kind": fault.kind,
                        "status": _visible_status(fault),
                        "method": method,
                        "path": path,
                        "after": fault.after,
                        "rule": index,
                    }
                )
                return fault
        return None

    def stall(self, seconds: float) -> None:
        """Sleep ``seconds``, cut short when the server stops."""
        self._stopping.wait(seconds)

    def stop(self) -> None:
        self._stopping.set()

    def restart(self) -> None:
        self._stopping.clear()


#: Returned by :meth:`FaultInjector.draw` for a request carrying a token a fault expired.
_STILL_EXPIRED = Fault("status", status=401, code="InvalidAuthenticationToken", message=EXPIRED_TOKEN_MESSAGE, count=1)


def is_expired_token(fault: Fault) -> bool:
    return fault is _STILL_EXPIRED or fault.kind == "expire-token"


def _visible_status(fault: Fault) -> int | None:
    if fault.kind == "status":
        return fault.status
    if fault.kind == "expire-token":
        return 401
    if fault.kind == "expire-delta":
        return 410
    return None


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return None


# -- the server's hooks (server.py calls these around its own request handling) ------------------
def label(fault: Fault | None) -> str | None:
    """The request log's ``fault`` value."""
    if fault is None:
        return None
    return "token-expired" if fault is _STILL_EXPIRED else fault.kind


def _dropped() -> Response:
    return Response(0)


def dropped(resp: Response) -> bool:
    """The fault left this request without an answer (the connection is gone)."""
    return resp.status == 0


def answer_before(sim: GraphSim, fault: Fault, request_id: str, client_request_id: str) -> Response | None:
    """Before the request is handled: an error answer, a dropped request, or None (go on)."""
    if is_expired_token(fault):
        challenge = {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'}
        body = error_body("InvalidAuthenticationToken", EXPIRED_TOKEN_MESSAGE, request_id, client_request_id)
        return Response(401, body, challenge)
    if fault.kind == "expire-delta":
        sim.expire_delta_tokens(fault.with_location)
        return None
    if fault.after:
        return None
    if fault.kind == "status":
        status, code, message, headers = fault.error()
        return Response(status, error_body(code, message, request_id, client_request_id), headers)
    return _dropped()  # timeout / reset: the request is never carried out


def answer_after(
    sim: GraphSim, fault: Fault, h: _Handler, resp: Response, request_id: str, client_request_id: str
) -> Response:
    """After the request was handled (or refused by :func:`answer_before`): the answer to send,
    or a dropped one (:func:`dropped`; the server logs the request, then calls :func:`drop`)."""
    if fault.kind == "status" and fault.after:
        status, code, message, headers = fault.error()
        return Response(status, error_body(code, message, request_id, client_request_id), headers)
    if fault.kind in ("timeout", "reset"):
        return _dropped()
    return resp


def drop(sim: GraphSim, fault: Fault, h: _Handler) -> None:
    """Leave the client without an answer: stall then close (timeout), or reset at once."""
    h.close_connection = True
    if fault.kind == "timeout":
        sim.faults.stall(fault.seconds)
    drop_connection(h.connection, rst=fault.kind == "reset")


def admin(sim: GraphSim, method: str, segments: list[str], data: Mapping[str, Any]) -> Response:
    """``/_sim/faults``: POST ``{"faults": [...], "seed"?}`` adds rules, GET lists the rules still
    able to fire and the log, DELETE removes every rule."""
    if segments == ["faults"] and method == "POST":
        rules = data.get("faults", [])
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            raise ValueError("faults must be a list of fault objects")
        sim.inject_faults(*(fault_from_dict(r) for r in rules), seed=data.get("seed"))
        return Response(204)
    if segments == ["faults"] and method == "GET":
        return Response(200, {"value": sim.fault_log, "active": [f.describe() for f in sim.faults.faults]})
    if segments == ["faults"] and method == "DELETE":
        sim.clear_faults()
        return Response(204)
    message = f"no admin endpoint {method} /_sim/{'/'.join(segments)}"
    return Response(404, {"error": {"code": "NotFound", "message": message}})
