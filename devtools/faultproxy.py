"""A fault-injecting HTTP reverse proxy for CalDAV servers (development and test tool).

``FaultProxy(target_url, seed=...)`` listens on ``127.0.0.1`` (a free port) and forwards every
request to the CalDAV server at ``target_url``: method, path, query, headers (``Authorization``
kept, ``Host`` rewritten to the target) and body (streamed both ways). Absolute URLs the server
emits that point at itself are rewritten to the proxy: ``Location`` / ``Content-Location``
headers and ``DAV:href`` (any text) in XML bodies, so a client never leaves the proxy. A
``Destination`` header (COPY/MOVE) pointing at the proxy is rewritten to the target.

Faults (:meth:`FaultProxy.set_faults`), each bounded in count, chosen per method, path regular
expression and probability with one seeded ``random.Random`` (the same seed and the same request
sequence give the same faults):

* :func:`error`: answer 500 / 503 / 507 (or any status) with an optional ``Retry-After``, without
  asking the server (or, ``after=True``, once the server carried the request out);
* :func:`delay`: wait ``seconds`` before forwarding (``after=True``: once the server answered,
  before passing the answer on), to be slower than the client's timeout or just slow; a request
  delayed past its client's timeout still reaches the server afterwards, as over a slow network
  (:meth:`FaultProxy.wait_idle` waits for such stragglers);
* :func:`reset`: close the client connection with a TCP reset, without an answer, before the
  request reaches the server (``after=True``: once the server carried it out, e.g. a PUT that
  landed while the client saw its connection die).

A request suffers at most one fault (the first rule that matches and wins its draw).
``log`` lists the faults injected, ``requests`` every request seen (method, path, status, fault).

>>> with FaultProxy(server.url, seed=1) as proxy:                           # doctest: +SKIP
...     proxy.set_faults(reset(methods="PUT", after=True), error(503, retry_after=0.1, count=2))
...     client_url = proxy.url                                               # use instead of server.url
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from devtools.faultrules import RuleMatching, drop_connection, methods_of

KINDS = ("error", "delay", "reset")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_CHUNK = 64 * 1024
_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}


@dataclass
class ProxyFault(RuleMatching):
    """One fault rule (see the module docstring); build it with :func:`error`, :func:`delay`,
    :func:`reset`."""

    kind: str
    status: int = 503
    retry_after: float | None = None
    seconds: float = 0.0
    after: bool = False
    methods: str | Iterable[str] = "*"
    path: str = ""
    probability: float = 1.0
    count: int = 1
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
        if float(self.seconds) < 0 or (self.retry_after is not None and float(self.retry_after) < 0):
            raise ValueError("seconds and retry_after must not be negative")
        self.status = int(self.status)
        self.count = int(self.count)
        self.probability = float(self.probability)
        self.methods = methods_of(self.methods)
        self._pattern = re.compile(self.path)

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data["methods"] = sorted(self.methods)  # type: ignore[arg-type]
        return data


def error(
    status: int = 503,
    count: int = 1,
    *,
    retry_after: float | None = None,
    after: bool = False,
    methods: str | Iterable[str] = "*",
    path: str = "",
    probability: float = 1.0,
) -> ProxyFault:
    """Answer ``status`` (500 / 503 / 507 ...) with ``Retry-After`` when given."""
    return ProxyFault(
        "error",
        status=status,
        retry_after=retry_after,
        after=after,
        methods=methods,
        path=path,
        probability=probability,
        count=count,
    )


def delay(
    seconds: float,
    count: int = 1,
    *,
    after: bool = False,
    methods: str | Iterable[str] = "*",
    path: str = "",
    probability: float = 1.0,
) -> ProxyFault:
    """Wait ``seconds`` before forwarding (``after``: before answering)."""
    return ProxyFault(
        "delay", seconds=seconds, after=after, methods=methods, path=path, probability=probability, count=count
    )


def reset(
    count: int = 1, *, after: bool = False, methods: str | Iterable[str] = "*", path: str = "", probability: float = 1.0
) -> ProxyFault:
    """TCP reset instead of an answer (``after``: once the server carried the request out)."""
    return ProxyFault("reset", after=after, methods=methods, path=path, probability=probability, count=count)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    proxy: FaultProxy

    def __init__(self, addr: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.conn_lock:
                self.connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError | socket.timeout):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faultproxy/1"
    timeout = 120
    server: _Server

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.server.proxy._handle(self)
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests / .log
        pass


class FaultProxy:
    """A threaded reverse proxy on 127.0.0.1 in front of ``target_url`` (plain http)."""

    def __init__(
        self,
        target_url: str,
        *,
        seed: int | None = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout: float = 60.0,
    ) -> None:
        parts = urlsplit(target_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the target must be a plain http URL: {target_url!r}")
        self.target_url = target_url
        self._target_host = parts.hostname
        self._target_port = parts.port or 80
        self._target_netloc = parts.netloc
        self._target_origin = f"http://{parts.netloc}"
        self._target_path = parts.path or "/"
        self.host = host
        self._requested_port = port
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._faults: list[ProxyFault] = []
        self._log: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The target URL as seen through the proxy (same path)."""
        return self.proxied(self.target_url)

    def proxied(self, url: str) -> str:
        """Any URL on the target (absolute, or a path) as a URL on the proxy."""
        parts = urlsplit(url)
        if parts.scheme and parts.netloc.lower() != self._target_netloc.lower():
            raise ValueError(f"{url!r} is not on the proxied server {self._target_origin}")
        path = parts.path or "/"
        return self.origin + path + (f"?{parts.query}" if parts.query else "")

    # -- faults ----------------------------------------------------------------------------------
    def set_faults(self, *faults: ProxyFault, seed: int | None = None) -> None:
        """Replace the fault rules (``seed``, when given, restarts the random draws)."""
        with self._lock:
            if seed is not None:
                self._rng = random.Random(seed)
            self._faults = list(faults)

    def add_faults(self, *faults: ProxyFault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        """No more faults (the logs stay)."""
        with self._lock:
            self._faults = []

    @property
    def faults(self) -> list[ProxyFault]:
        """Rules still able to fire."""
        with self._lock:
            return [f for f in self._faults if f.left > 0]

    @property
    def log(self) -> list[dict[str, Any]]:
        """``{time, kind, status, seconds, after, method, path, rule}`` per injected fault."""
        with self._lock:
            return list(self._log)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """``{time, method, path, status (None: no answer, or not answered yet), fault, seconds}``
        per request, in arrival order."""
        with self._lock:
            return [dict(r) for r in self._requests]

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()
            self._requests.clear()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled (a delayed one may still reach the server
        after its client gave up); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def _draw(self, method: str, path: str) -> ProxyFault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.left <= 0 or not fault.matches(method, path):
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                fault.fired += 1
                self._log.append(
                    {
                        "time": time.time(),
                        "kind": fault.kind,
                        "status": fault.status if fault.kind == "error" else None,
                        "seconds": fault.seconds,
                        "after": fault.after,
                        "method": method,
                        "path": path,
                        "rule": index,
                    }
                )
                return fault
        return None

    # -- request handling ------------------------------------------------------------------------
    def _handle(self, h: _Handler) -> None:
        started = time.monotonic()
        path = urlsplit(h.path).path or "/"
        fault = self._draw(h.command, path)
        record: dict[str, Any] = {
            "time": time.time(),
            "method": h.command,
            "path": path,
            "status": None,
            "fault": fault.kind if fault else None,
            "seconds": 0.0,
        }
        with self._lock:
            self._requests.append(record)  # in arrival order; status and seconds filled in below
        with self._idle:
            self._in_flight += 1
        status: int | None = None
        try:
            status = self._serve(h, fault)
        finally:
            with self._lock:
                record["status"] = status
                record["seconds"] = round(time.monotonic() - started, 4)
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _serve(self, h: _Handler, fault: ProxyFault | None) -> int | None:
        if fault is not None and not fault.after:
            if fault.kind == "delay":
                self._stopping.wait(fault.seconds)
            else:
                self._discard_body(h)
                if fault.kind == "reset":
                    self._reset(h)
                    return None
                return self._send_error(h, fault)
        upstream = http.client.HTTPConnection(self._target_host, self._target_port, timeout=self.upstream_timeout)
        try:
            try:
                upstream.request(h.command, h.path, body=self._body(h), headers=self._request_headers(h))
                resp = upstream.getresponse()
            except (OSError, http.client.HTTPException):
                h.close_connection = True  # the request body may be half read
                return self._send_plain(h, 502, b"faultproxy: the server did not answer\n")
            if fault is not None and fault.after:
                resp.read()  # the server carried the request out; its answer is lost
                if fault.kind == "reset":
                    self._reset(h)
                    return None
                if fault.kind == "error":
                    return self._send_error(h, fault)
                self._stopping.wait(fault.seconds)
            return self._relay(h, resp)
        finally:
            upstream.close()

    # request side
    @staticmethod
    def _chunked(h: _Handler) -> bool:
        return "chunked" in (h.headers.get("Transfer-Encoding") or "").lower()

    def _body(self, h: _Handler) -> Iterator[bytes] | None:
        if self._chunked(h):
            return self._read_chunked(h)
        length = int(h.headers.get("Content-Length") or 0)
        if not length:
            return None
        return self._read_exactly(h, length)

    @staticmethod
    def _read_exactly(h: _Handler, length: int) -> Iterator[bytes]:
        left = length
        while left > 0:
            data = h.rfile.read(min(_CHUNK, left))
            if not data:
                raise ConnectionError("the client closed the connection mid-body")
            left -= len(data)
            yield data

    @staticmethod
    def _read_chunked(h: _Handler) -> Iterator[bytes]:
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return
            left = size
            while left > 0:
                data = h.rfile.read(min(_CHUNK, left))
                if not data:
                    raise ConnectionError("the client closed the connection mid-body")
                left -= len(data)
                yield data
            h.rfile.readline()

    def _discard_body(self, h: _Handler) -> None:
        body = self._body(h)
        if body is not None:
            for _ in body:
                pass

    def _request_headers(self, h: _Handler) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in h.headers.items():
            low = name.lower()
            if low in _HOP_BY_HOP or low in ("host", "accept-encoding"):
                continue
            if low == "destination":
                value = self._to_target(value)
            out[name] = value
        out["Host"] = self._target_netloc
        # identity: absolute URLs in XML answers are rewritten, which needs a plain body
        out["Accept-Encoding"] = "identity"
        return out

    def _to_target(self, value: str) -> str:
        if self._server is not None and value.startswith(self.origin):
            return self._target_origin + value[len(self.origin) :]
        return value

    # response side
    def _to_proxy(self, value: str) -> str:
        low = value.lower()
        for origin in self._target_origins():
            if low.startswith(origin.lower()):
                return self.origin + value[len(origin) :]
        return value

    def _target_origins(self) -> list[str]:
        names = {self._target_netloc}
        if self._target_host in ("127.0.0.1", "localhost"):
            names |= {f"127.0.0.1:{self._target_port}", f"localhost:{self._target_port}"}
        return [f"http://{n}" for n in sorted(names, key=len, reverse=True)]

    def _relay(self, h: _Handler, resp: http.client.HTTPResponse) -> int:
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        no_body = h.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        ctype = (resp.getheader("Content-Type") or "").lower()
        h.send_response_only(resp.status, resp.reason)
        if "xml" in ctype and not no_body:
            data = self._rewrite_hrefs(resp.read())
            for name, value in headers:
                if name.lower() != "content-length":
                    h.send_header(name, self._maybe_rewrite(name, value))
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return resp.status
        length = resp.getheader("Content-Length")
        for name, value in headers:
            h.send_header(name, self._maybe_rewrite(name, value))
        if no_body:
            h.end_headers()
            return resp.status
        if length is None:
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            while chunk := resp.read1(_CHUNK):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            h.wfile.write(b"0\r\n\r\n")
            return resp.status
        h.end_headers()
        while chunk := resp.read(_CHUNK):
            h.wfile.write(chunk)
        return resp.status

    def _rewrite_hrefs(self, data: bytes) -> bytes:
        """``<D:href>http://target/...`` -> ``<D:href>http://proxy/...`` (any namespace prefix)."""
        for origin in self._target_origins():
            pattern = rb"(<(?:[\w.-]+:)?href(?:\s[^>]*)?>\s*)" + re.escape(origin.encode())
            data = re.sub(pattern, lambda m: m.group(1) + self.origin.encode(), data, flags=re.IGNORECASE)
        return data

    def _maybe_rewrite(self, name: str, value: str) -> str:
        return self._to_proxy(value) if name.lower() in ("location", "content-location") else value

    def _send_error(self, h: _Handler, fault: ProxyFault) -> int:
        extra = {}
        if fault.retry_after is not None:
            value = float(fault.retry_after)
            extra["Retry-After"] = str(int(value)) if value.is_integer() else f"{value:g}"
        body = f"faultproxy: injected HTTP {fault.status}\n".encode()
        return self._send_plain(h, fault.status, body, extra)

    @staticmethod
    def _send_plain(h: _Handler, status: int, body: bytes, extra: dict[str, str] | None = None) -> int:
        h.send_response_only(status, _REASONS.get(status))
        h.send_header("Content-Type", "text/plain; charset=utf-8")
        h.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            h.send_header(name, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
        return status

    @staticmethod
    def _reset(h: _Handler) -> None:
        """TCP reset (SO_LINGER 0): the client sees its connection die without an answer."""
        h.close_connection = True
        drop_connection(h.connection, rst=True)
