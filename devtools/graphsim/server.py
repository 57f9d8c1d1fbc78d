"""The HTTPS server, the admin API and the cross-cutting Graph behaviour.

Cross-cutting behaviour implemented here (sources in README.md):

* Every ``/v1.0`` call needs a bearer token from the token endpoint, else
  ``401 InvalidAuthenticationToken``.
* A delegated token (auth-code flow, ``auth.py``) reaches only the signed-in user's own mailbox:
  ``/me/...`` is ``/users/{that user}/...``; another user's mailbox answers ``403
  ErrorAccessDenied`` "Access is denied. Check credentials and try again." (``GET /users/{other}``:
  ``403 Authorization_RequestDenied``, as without User.ReadBasic.All), and so does a subscription
  to another user's events. Its Graph permissions are its ``scp`` (Calendars.Read /
  Calendars.ReadWrite).
* Throttling: injected faults answer ``429`` (or ``503``) with ``Retry-After`` and a Graph error
  body; more than 4 concurrent requests of one app to one mailbox answer
  ``429 ApplicationThrottled`` "Application is over its MailboxConcurrency limit." (Outlook
  service limits: 4 concurrent requests per app per mailbox).
* Every response carries ``request-id`` and ``client-request-id`` (echoed when the client sent one).
* Change notifications (``/subscriptions``, webhook delivery, lifecycle notifications) live in
  ``subscriptions.py``; the server owns the delivery pool and stops it with the server.
* JSON batching (``POST /v1.0/$batch``) lives in ``batch.py``, which runs each inner request through
  ``_graph_call`` after its own fault draw and logs it with ``_log_exchange``.
* The request log counts ``bytes_in`` (request line, headers, body as read) and ``bytes_out`` (the
  answer as sent) of every request.

The server listens on loopback only, with a certificate from a throw-away ``trustme`` CA whose
PEM is written to ``<state_dir>/ca.pem``.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from ipaddress import ip_address
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import trustme

from devtools.graphsim import batch as batching
from devtools.graphsim import faults as fault_hooks
from devtools.graphsim.auth import DEFAULT_ROLES, AccessToken, AuthService
from devtools.graphsim.odata import GraphError, error_body, parse_prefer
from devtools.graphsim.routes import JSON_CONTENT_TYPE, GraphService, Request, Response
from devtools.graphsim.store import Store
from devtools.graphsim.subscriptions import NotificationSettings, SubscriptionService

MAILBOX_CONCURRENCY_LIMIT = 4
_USER_AUTH_ACTIONS = frozenset({"deny-consent", "revoke-refresh-tokens", "expire-refresh-tokens"})


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        if ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"graphsim only listens on loopback addresses, not {host!r}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops SYNs under concurrent clients
    sim: GraphSim
    ssl_context: ssl.SSLContext

    def __init__(self, addr: tuple[str, int], sim: GraphSim, ctx: ssl.SSLContext):
        self.sim = sim
        self.ssl_context = ctx
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.address_family = family
        super().__init__(addr, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the worker thread, so a slow client cannot stall the accept loop.
        # TCP_NODELAY: headers and body go out as separate writes; without it Nagle's algorithm
        # and delayed ACKs add ~40 ms to every response.
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.conn_lock:
            self.connections.add(tls)
        try:
            super().finish_request(tls, client_address)
        finally:
            with self.conn_lock:
                self.connections.discard(tls)
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | ssl.SSLError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _CountingReader:
    """The request stream, counting the bytes the handler consumed (request line, headers, body):
    ``take()`` returns the count of the request being handled and starts the next one at 0."""

    def __init__(self, raw: BufferedIOBase) -> None:
        self._raw = raw
        self._count = 0

    def readline(self, size: int = -1) -> bytes:
        line = self._raw.readline(size)
        self._count += len(line)
        return line

    def read(self, size: int | None = -1) -> bytes:
        data = self._raw.read(size)
        self._count += len(data)
        return data

    def take(self) -> int:
        count, self._count = self._count, 0
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "graphsim/1"
    timeout = 60
    server: _Server
    counted: _CountingReader

    def setup(self) -> None:
        super().setup()
        self.counted = _CountingReader(self.rfile)
        self.rfile = cast(BufferedIOBase, self.counted)  # bytes_in of the request log

    def do_GET(self) -> None:
        self.server.sim._dispatch(self)

    do_POST = do_PATCH = do_DELETE = do_PUT = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.sim.verbose:  # method, path and status only: no headers, no bodies
            sys.stderr.write("graphsim: " + (format % args) + "\n")


class GraphSim:
    """A local Microsoft Graph (calendar subset) and Microsoft identity platform stand-in.

    >>> with GraphSim(port=0, state_dir=tmp) as sim:            # doctest: +SKIP
    ...     sim.register_app("tenant", "client", client_secret="s3cret")
    ...     sim.add_user("ada@contoso.test")
    ...     requests.get(f"{sim.graph_url}/users/ada@contoso.test", verify=sim.ca_path, ...)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: str | Path | None = None,
        *,
        verbose: bool = False,
    ) -> None:
        _require_loopback(host)
        self.host = host
        self._requested_port = port
        self.verbose = verbose
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="graphsim-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA(organization_name="graphsim throw-away test CA")
        self.ca_path = str(self.state_dir / "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_path)
        self.store = Store()
        self.auth = AuthService(find_user=self.store.find_user)
        self.graph = GraphService(self.store)
        self._subscriptions = SubscriptionService(self.store, self.graph.schema, self.ca_path)
        self.graph.subscriptions = self._subscriptions
        self._cert_serial = 0
        self.mailbox_concurrency_limit = MAILBOX_CONCURRENCY_LIMIT
        self._log_lock = threading.Lock()
        self._request_log: list[dict[str, Any]] = []
        self._response_log: list[dict[str, Any]] = []
        self._faults: list[tuple[int, float, str, str]] = []
        self._fault_lock = threading.Lock()
        self.faults = fault_hooks.FaultInjector(seed=0)  # inject_faults(); see faults.py
        self._inflight: dict[tuple[str, str], int] = {}
        self._latency = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> GraphSim:
        if self._server is not None:
            return self
        self.faults.restart()
        names = ["127.0.0.1", "localhost", "::1"]
        if self.host not in names:
            names.insert(0, self.host)
        cert = self._ca.issue_cert(*names)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self._server = _Server((self.host, self._requested_port), self, ctx)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="graphsim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.faults.stop()  # ends stalled (timeout) answers
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._subscriptions.stop()

    def __enter__(self) -> GraphSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("GraphSim is not started")
        return int(self._server.server_address[1])

    @property
    def authority_host(self) -> str:
        """``https://127.0.0.1:PORT``: msal authority is ``f"{authority_host}/{tenant_id}"``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def graph_url(self) -> str:
        """``https://127.0.0.1:PORT/v1.0``: stands for ``https://graph.microsoft.com/v1.0``."""
        return f"{self.authority_host}/v1.0"

    # -- admin API ---------------------------------------------------------------------------
    def register_app(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: str | None = None,
        certificate_pem: str | bytes | None = None,
        roles: Iterable[str] = DEFAULT_ROLES,
        redirect_uris: Iterable[str] = (),
    ) -> None:
        """A confidential client; ``roles`` are its application permissions (admin consent
        given). ``roles=()``: tokens are issued, but calendar requests answer 403
        ``ErrorAccessDenied``; ``("Calendars.Read",)``: reads only. ``redirect_uris``: where the
        auth-code flow (``/authorize``) may send its answer (exact match)."""
        self.auth.register_app(tenant_id, client_id, client_secret, certificate_pem, roles, redirect_uris)

    def add_user(self, upn: str, display_name: str | None = None) -> str:
        """Create a mailbox with its primary calendar "Calendar"; returns the user id."""
        return self.store.add_user(upn, display_name).id

    def add_calendar(self, upn: str, name: str, can_edit: bool = True) -> str:
        user = self.store.find_user(upn)
        if user is None:
            raise KeyError(upn)
        return self.store.add_calendar(user, name, can_edit=can_edit).id

    def default_calendar_id(self, upn: str) -> str:
        user = self.store.find_user(upn)
        if user is None:
            raise KeyError(upn)
        return user.default_calendar_id

    @property
    def request_log(self) -> list[dict[str, Any]]:
        """Graph and identity requests: ``{method, path, query, status, user, app, time, fault,
        client_request_id, request_id, batch, bytes_in, bytes_out}`` (inner ``$batch`` requests also
        ``batch_step``; see README.md)."""
        with self._log_lock:
            return list(self._request_log)

    def reset_request_log(self) -> None:
        with self._log_lock:
            self._request_log.clear()

    @property
    def response_log(self) -> list[dict[str, Any]]:
        """Every JSON body emitted on ``/v1.0`` and the identity endpoints (access tokens redacted):
        ``{method, path, query, status, body}``."""
        with self._log_lock:
            return list(self._response_log)

    def reset_response_log(self) -> None:
        with self._log_lock:
            self._response_log.clear()

    @property
    def sent_invitations(self) -> list[dict[str, Any]]:
        """Meeting mail Exchange would have sent: ``{user, event_id, action, subject, attendees, time}``
        for every create/update/delete of an event that has attendees."""
        with self._log_lock:
            return list(self.graph.sent_invitations)

    def reset_sent_invitations(self) -> None:
        with self._log_lock:
            self.graph.sent_invitations.clear()

    def inject_throttle(self, count: int, retry_after: float = 1, status: int = 429, code: str | None = None) -> None:
        """The next ``count`` Graph requests answer ``status`` (429 or 503) with ``Retry-After``."""
        if status not in (429, 503):
            raise ValueError("status must be 429 or 503")
        if status == 429:
            code, message = code or "TooManyRequests", "Please retry again later."
        else:
            code, message = (
                code or "ServiceNotAvailable",
                "The service is temporarily unavailable. Please retry later.",
            )
        with self._fault_lock:
            self._faults.extend([(status, float(retry_after), code, message)] * count)

    # -- fault injection (faults.py) ---------------------------------------------------------------
    def inject_faults(self, *faults: fault_hooks.Fault, seed: int | None = None) -> None:
        """Add fault rules (``faults.throttle(...)``, ``faults.reset(...)``, ...; see faults.py);
        ``seed`` (when given) restarts the injector's random draws from that seed."""
        if seed is not None:
            self.faults.seed(seed)
        self.faults.add(*faults)

    def clear_faults(self) -> None:
        """Remove every fault rule (tokens that faults expired stay expired)."""
        self.faults.clear()

    @property
    def fault_log(self) -> list[dict[str, Any]]:
        """``{time, kind, status, method, path, after, rule}`` per injected fault."""
        return self.faults.log

    def expire_delta_tokens(self, with_location: bool = False) -> None:
        """Every delta/skip token issued so far answers 410 Gone ``SyncStateNotFound``
        (``with_location``: plus a ``Location`` header that starts a new round)."""
        self.graph.delta_tokens.expire_all(with_location)

    def inject_empty_delta_pages(self, count: int) -> None:
        self.graph.inject_empty_delta_pages(count)

    def set_latency(self, seconds: float) -> None:
        """Delay every Graph HTTP request by ``seconds`` (a network round trip; a ``$batch``
        waits once, not once per request inside it), e.g. to exercise the mailbox
        concurrency limit."""
        self._latency = max(0.0, float(seconds))

    # -- change notifications ------------------------------------------------------------------
    @property
    def notification_settings(self) -> NotificationSettings:
        """Handshake and delivery knobs (timeouts, retries, pool size, CA bundle); see subscriptions.py."""
        return self._subscriptions.settings

    def configure_notifications(self, **changes: Any) -> None:
        """``sim.configure_notifications(validation_timeout=0.5, max_attempts=2, retry_backoff=0.05)``."""
        self._subscriptions.settings.update(**changes)

    def subscriptions(self) -> list[dict[str, Any]]:
        """Every live subscription of every app, as the subscription entity JSON (oldest first)."""
        return self._subscriptions.snapshot()

    def expire_subscription(self, subscription_id: str) -> None:
        """Let a subscription expire now (404 afterwards; nothing more is sent). KeyError if unknown."""
        self._subscriptions.expire(subscription_id)

    def send_lifecycle(self, subscription_id: str, event: str) -> bool:
        """POST a ``reauthorizationRequired`` / ``subscriptionRemoved`` (which also deletes the
        subscription) / ``missed`` lifecycle notification to the subscription's
        lifecycleNotificationUrl. Returns False when it has none (nothing is sent)."""
        return self._subscriptions.send_lifecycle(subscription_id, event)

    @property
    def notification_log(self) -> list[dict[str, Any]]:
        """Every delivery attempt: ``{kind: change|lifecycle, url (no query), subscription_id,
        change_type, lifecycle_event, status (None: no answer), seconds, attempt, slow, error, time,
        payload}``."""
        return self._subscriptions.notification_log()

    def reset_notification_log(self) -> None:
        self._subscriptions.reset_notification_log()

    @property
    def validation_log(self) -> list[dict[str, Any]]:
        """Every validation handshake: ``{url (no query), status, content_type, seconds, ok, error, time}``."""
        return self._subscriptions.validation_records()

    def wait_for_notifications(self, timeout: float = 10.0) -> bool:
        """Wait until no notification is queued, being delivered or waiting for a retry."""
        return self._subscriptions.wait_idle(timeout)

    def issue_server_certificate(self, hosts: tuple[str, ...] | list[str] = ("127.0.0.1",)) -> tuple[str, str]:
        """A server certificate for ``hosts`` from the stand-in's CA (which deliveries trust by
        default), so a test webhook can serve HTTPS: returns ``(cert_chain_path, key_path)`` (PEM,
        in the state dir)."""
        if not hosts:
            raise ValueError("hosts must name at least one host")
        leaf = self._ca.issue_cert(*hosts)
        with self._log_lock:
            self._cert_serial += 1
            n = self._cert_serial
        cert_path = self.state_dir / f"webhook-{n}-cert.pem"
        key_path = self.state_dir / f"webhook-{n}-key.pem"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)
        return str(cert_path), str(key_path)

    # -- delegated access (auth-code flow) -------------------------------------------------------------
    def _user_id(self, upn: str) -> str:
        user = self.store.find_user(upn)
        if user is None:
            raise KeyError(upn)
        return user.id

    def deny_consent(self, upn: str, denied: bool = True) -> None:
        """The user declines consent: ``/authorize`` redirects with ``error=access_denied``
        (AADSTS65004) until ``deny_consent(upn, False)``. KeyError for an unknown user."""
        self.auth.deny_consent(self._user_id(upn), denied)

    def revoke_refresh_tokens(self, upn: str) -> int:
        """Like ``revokeSignInSessions``: the user's refresh tokens issued so far answer
        ``invalid_grant`` AADSTS50173 (access tokens live on until they expire)."""
        return self.auth.revoke_refresh_tokens(self._user_id(upn))

    def expire_refresh_tokens(self, upn: str) -> int:
        """The user's refresh tokens issued so far expired through inactivity (AADSTS700082)."""
        return self.auth.expire_refresh_tokens(self._user_id(upn))

    def expire_access_tokens(self, upn: str | None = None) -> int:
        """Access tokens issued so far (delegated tokens of ``upn``, or every token) are expired:
        Graph answers 401 "Lifetime validation failed, the token is expired."."""
        return self.auth.expire_access_tokens(self._user_id(upn) if upn is not None else None)

    @property
    def token_lifetime(self) -> int:
        return self.auth.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int) -> None:
        self.auth.token_lifetime = int(seconds)

    # -- request handling ----------------------------------------------------------------------
    def _dispatch(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        segments = [unquote(s) for s in url.path.split("/") if s]
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = self._read_body(h)
        bytes_in = h.counted.take()  # request line + headers + body as received
        request_id = str(uuid.uuid4())
        client_request_id = h.headers.get("client-request-id") or request_id
        record: dict[str, Any] = {
            "method": h.command,
            "path": "/" + "/".join(segments),
            "query": query,
            "status": None,
            "user": None,
            "app": None,
            "time": time.time(),
        }
        admin = bool(segments) and segments[0] == "_sim"
        is_batch = segments[:1] == ["v1.0"] and batching.is_batch_path(segments[1:])
        # -- fault injection (faults.py): pick this request's fault, if any -------------------
        # (a $batch envelope draws none: its inner requests draw theirs, batch.py)
        fault = None
        if not admin:
            if not is_batch:
                fault = self.faults.draw(h.command, record["path"], h.headers.get("Authorization"))
            record["fault"] = fault_hooks.label(fault)
            record["client_request_id"] = h.headers.get("client-request-id")
            record |= {"request_id": request_id, "batch": None, "bytes_in": bytes_in, "bytes_out": 0}
        # ---------------------------------------------------------------------------------------
        try:
            early = fault_hooks.answer_before(self, fault, request_id, client_request_id) if fault else None
            if early is not None:
                resp = early
            elif is_batch:  # batch.py: runs each inner request through _graph_call
                if self._latency:  # one round trip for the batch, none per inner request
                    time.sleep(self._latency)
                resp, inner_fault = batching.handle(self, h, body, request_id, client_request_id, record)
                fault = inner_fault or fault  # an inner timeout/reset loses the whole answer
            elif segments[:1] == ["v1.0"]:
                resp = self._graph_call(
                    h.command, h.headers, segments[1:], query, body, request_id, client_request_id, record
                )
            elif admin:
                resp = self._admin_call(h.command, segments[1:], body)
            else:
                resp = self._identity_call(h.command, segments, query, body, record)
        except Exception:  # a bug in the stand-in: answer like Graph does, keep serving
            traceback.print_exc()
            resp = Response(500, error_body("UnknownError", "graphsim internal error", request_id, client_request_id))
        if fault is not None:  # faults.py: replace the answer, or stall / reset the connection
            resp = fault_hooks.answer_after(self, fault, h, resp, request_id, client_request_id)
        resp.headers.setdefault("request-id", request_id)
        resp.headers.setdefault("client-request-id", client_request_id)
        dropped = fault_hooks.dropped(resp)
        data = b"" if dropped else self._encode(h, resp)
        if not admin:
            record["bytes_out"] = len(data)
            self._log_exchange(record, resp)
        if fault is not None and dropped:
            fault_hooks.drop(self, fault, h)  # faults.py: stall (timeout) and close, or reset
            return
        h.wfile.write(data)

    def _log_exchange(self, record: dict[str, Any], resp: Response) -> None:
        """Append a Graph/identity request to ``request_log`` and its JSON body (secrets redacted)
        to ``response_log``; batch.py logs inner requests of a ``$batch`` through here too."""
        record["status"] = None if fault_hooks.dropped(resp) else resp.status
        with self._log_lock:
            self._request_log.append(record)
            if isinstance(resp.body, dict):
                logged = resp.body
                secret_fields = {"access_token", "refresh_token", "id_token"} & logged.keys()
                if secret_fields:
                    logged = {**logged, **dict.fromkeys(secret_fields, "<redacted>")}
                self._response_log.append(
                    {k: record[k] for k in ("method", "path", "query", "status", "batch")} | {"body": logged}
                )

    @staticmethod
    def _read_body(h: _Handler) -> bytes:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    @staticmethod
    def _encode(h: _Handler, resp: Response) -> bytes:
        """The whole answer as sent (status line, headers, body), built before it is logged so
        that ``bytes_out`` is in the request log by the time the client has the answer; the head
        is what ``BaseHTTPRequestHandler.send_response``/``send_header`` would write."""
        payload = b""
        if resp.body is not None:
            payload = json.dumps(resp.body).encode()
            resp.headers.setdefault("Content-Type", JSON_CONTENT_TYPE)
            resp.headers.setdefault("OData-Version", "4.0")
        h.log_request(resp.status)
        reason = h.responses[resp.status][0] if resp.status in h.responses else ""
        lines = [
            f"{h.protocol_version} {resp.status} {reason}",
            f"Server: {h.version_string()}",
            f"Date: {h.date_time_string()}",
            *(f"{name}: {value}" for name, value in resp.headers.items()),
            f"Content-Length: {len(payload)}",
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict")
        return head + (payload if h.command != "HEAD" else b"")

    def _graph_call(
        self,
        method: str,
        headers: Message,
        segments: list[str],
        query: dict[str, str],
        body: bytes,
        request_id: str,
        client_request_id: str,
        record: dict[str, Any],
        *,
        round_trip: bool = True,
    ) -> Response:
        """One Graph request; ``round_trip`` False for a request inside a ``$batch`` (the
        latency set with :meth:`set_latency` stands for the network: once per HTTP request)."""
        req = Request(
            method=method,
            segments=segments,
            query=query,
            headers=headers,  # type: ignore[arg-type]
            body=body,
            graph_url=self.graph_url,
            request_id=request_id,
            client_request_id=client_request_id,
            prefer=parse_prefer(headers.get_all("Prefer") or []),
        )
        try:
            token = self.auth.validate_bearer(headers.get("Authorization"))
            req.app = token
            record["app"] = token.client_id
            if token.delegated:
                req.segments = segments = self._delegated_segments(token, req)
                # routes.py gates mailbox routes on the token's permissions (``roles``); a delegated
                # token's are its ``scp``, valid on the signed-in user's own mailbox (checked above).
                req.app = replace(token, roles=token.scopes)
            mailbox = segments[1] if len(segments) >= 2 and segments[0].lower() == "users" else None
            user = self.store.find_user(mailbox) if mailbox else None
            record["user"] = user.upn if user else mailbox
            self._take_fault()
            with self._mailbox_slot(token.client_id, user.id if user else (mailbox or "").lower()):
                if self._latency and round_trip:
                    time.sleep(self._latency)
                return self.graph.handle(req)
        except GraphError as err:
            return Response(err.status, error_body(err.code, err.message, request_id, client_request_id), err.headers)

    def _delegated_segments(self, token: AccessToken, req: Request) -> list[str]:
        """``/me/...`` as ``/users/{oid}/...``; 403 for another user's mailbox (or subscription)."""
        assert token.user_id is not None
        segs = req.segments
        if segs and segs[0].lower() == "me":
            return ["users", token.user_id, *segs[1:]]
        if len(segs) >= 2 and segs[0].lower() == "users":
            owner = self.store.find_user(segs[1])
            if owner is not None and owner.id != token.user_id:
                if len(segs) == 2:
                    raise GraphError(
                        403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
                    )
                raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if req.method == "POST" and [s.lower() for s in segs] == ["subscriptions"]:
            try:
                resource = json.loads(req.body or b"{}").get("resource")
            except (ValueError, AttributeError):
                resource = None
            parts = resource.strip().lstrip("/").split("/") if isinstance(resource, str) else []
            if len(parts) >= 2 and parts[0].lower() == "users":
                owner = self.store.find_user(parts[1])
                if owner is not None and owner.id != token.user_id:
                    raise GraphError(
                        403,
                        "ExtensionError",
                        "Operation: Create; Exception: [Status Code: Forbidden; Reason: Access is denied. Check "
                        "credentials and try again.]",
                    )
        return segs

    def _take_fault(self) -> None:
        with self._fault_lock:
            if not self._faults:
                return
            status, retry_after, code, message = self._faults.pop(0)
        value = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        raise GraphError(status, code, message, {"Retry-After": value})

    @contextmanager
    def _mailbox_slot(self, app: str, mailbox: str) -> Iterator[None]:
        key = (app.lower(), mailbox)
        with self._fault_lock:
            if mailbox and self._inflight.get(key, 0) >= self.mailbox_concurrency_limit:
                raise GraphError(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    {"Retry-After": "1"},
                )
            self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            yield
        finally:
            with self._fault_lock:
                self._inflight[key] -= 1

    def _identity_call(
        self, method: str, segments: list[str], query: dict[str, str], body: bytes, record: dict[str, Any]
    ) -> Response:
        host = self.authority_host
        if len(segments) == 4 and segments[1:] == ["oauth2", "v2.0", "authorize"]:
            if method != "GET":
                return Response(405, {"error": "invalid_request", "error_description": "Use GET."})
            record["app"] = query.get("client_id")
            status, doc, headers = self.auth.authorize(segments[0], query, host)
            return Response(status, doc, headers)
        if method == "GET" and len(segments) == 4 and segments[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            status, doc = self.auth.openid_configuration(segments[0], host)
            return Response(status, doc)
        if method == "GET" and len(segments) == 4 and segments[1:] == ["discovery", "v2.0", "keys"]:
            return Response(200, self.auth.jwks())
        if len(segments) == 4 and segments[1:] == ["oauth2", "v2.0", "token"]:
            if method != "POST":
                return Response(405, {"error": "invalid_request", "error_description": "Use POST."})
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
            record["app"] = form.get("client_id")
            status, doc = self.auth.token(segments[0], form, host)
            return Response(status, doc, {"Cache-Control": "no-store", "Pragma": "no-cache"})
        return Response(
            404,
            {
                "error": "not_found",
                "error_description": f"graphsim has no endpoint {method} /{'/'.join(segments)}",
            },
        )

    # -- admin over HTTPS (for a separate process such as the demo) ----------------------------------
    def _admin_subscription_route(self, method: str, segments: list[str], data: dict[str, Any]) -> Response | None:
        route = (method, *segments)
        if route == ("GET", "subscriptions"):
            return Response(200, {"value": self.subscriptions()})
        if method == "POST" and len(segments) == 3 and segments[0] == "subscriptions":
            sid, action = segments[1], segments[2]
            try:
                if action == "lifecycle":
                    queued = self.send_lifecycle(sid, str(data["event"]))
                    return Response(202, {"queued": queued})
                if action == "expire":
                    self.expire_subscription(sid)
                    return Response(204)
            except KeyError as exc:
                if exc.args and exc.args[0] == sid:
                    return Response(404, {"error": {"code": "NotFound", "message": f"no subscription {sid}"}})
                raise
            return None
        if route == ("GET", "notifications"):
            return Response(200, {"value": self.notification_log})
        if route == ("DELETE", "notifications"):
            self.reset_notification_log()
            return Response(204)
        if route == ("GET", "validations"):
            return Response(200, {"value": self.validation_log})
        if route == ("POST", "notifications", "wait"):
            return Response(200, {"idle": self.wait_for_notifications(float(data.get("timeout", 10.0)))})
        if route == ("POST", "notification-settings"):
            self.configure_notifications(**data)
            return Response(200, self.notification_settings.as_dict())
        if route == ("POST", "server-certificates"):
            cert, key = self.issue_server_certificate(tuple(data.get("hosts") or ("127.0.0.1",)))
            return Response(201, {"cert": cert, "key": key})
        return None

    def _admin_call(self, method: str, segments: list[str], body: bytes) -> Response:
        """JSON admin endpoints under ``/_sim`` mirroring the in-process API (see README.md)."""
        try:
            data: dict[str, Any] = json.loads(body) if body else {}
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            return self._admin_route(method, segments, data)
        except (ValueError, KeyError, TypeError) as exc:
            return Response(400, {"error": {"code": "BadRequest", "message": str(exc)}})

    def _admin_route(self, method: str, segments: list[str], data: dict[str, Any]) -> Response:
        route = (method, *segments)
        if route == ("GET", "health"):
            return Response(
                200,
                {
                    "status": "ok",
                    "authority_host": self.authority_host,
                    "graph_url": self.graph_url,
                    "ca": self.ca_path,
                },
            )
        if route == ("POST", "apps"):
            roles = data.get("roles", list(DEFAULT_ROLES))
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise ValueError("roles must be a list of permission names")
            redirect_uris = data.get("redirect_uris", [])
            if not isinstance(redirect_uris, list) or not all(isinstance(r, str) for r in redirect_uris):
                raise ValueError("redirect_uris must be a list of URIs")
            self.register_app(
                data["tenant_id"],
                data["client_id"],
                data.get("client_secret"),
                data.get("certificate_pem"),
                roles,
                redirect_uris,
            )
            return Response(201, {"tenant_id": data["tenant_id"], "client_id": data["client_id"]})
        if route == ("POST", "users"):
            user_id = self.add_user(data["upn"], data.get("display_name"))
            return Response(
                201,
                {
                    "id": user_id,
                    "upn": data["upn"],
                    "default_calendar_id": self.default_calendar_id(data["upn"]),
                },
            )
        if method == "POST" and len(segments) == 3 and segments[0] == "users" and segments[2] == "calendars":
            cal_id = self.add_calendar(segments[1], data["name"], bool(data.get("can_edit", True)))
            return Response(201, {"id": cal_id, "name": data["name"]})
        if route == ("GET", "requests"):
            return Response(200, {"value": self.request_log})
        if route == ("DELETE", "requests"):
            self.reset_request_log()
            return Response(204)
        if route == ("GET", "responses"):
            return Response(200, {"value": self.response_log})
        if route == ("DELETE", "responses"):
            self.reset_response_log()
            return Response(204)
        if route == ("GET", "invitations"):
            return Response(200, {"value": self.sent_invitations})
        if route == ("DELETE", "invitations"):
            self.reset_sent_invitations()
            return Response(204)
        if route == ("POST", "throttle"):
            self.inject_throttle(
                int(data["count"]), data.get("retry_after", 1), int(data.get("status", 429)), data.get("code")
            )
            return Response(204)
        if route == ("POST", "expire-delta-tokens"):
            self.expire_delta_tokens(bool(data.get("with_location", False)))
            return Response(204)
        if route == ("POST", "empty-delta-pages"):
            self.inject_empty_delta_pages(int(data["count"]))
            return Response(204)
        if route == ("POST", "latency"):
            self.set_latency(float(data["seconds"]))
            return Response(204)
        if method == "POST" and len(segments) == 3 and segments[0] == "users" and segments[2] in _USER_AUTH_ACTIONS:
            try:
                if segments[2] == "deny-consent":
                    self.deny_consent(segments[1], bool(data.get("denied", True)))
                elif segments[2] == "revoke-refresh-tokens":
                    self.revoke_refresh_tokens(segments[1])
                else:
                    self.expire_refresh_tokens(segments[1])
            except KeyError:
                return Response(404, {"error": {"code": "NotFound", "message": f"no user {segments[1]}"}})
            return Response(204)
        if route == ("POST", "expire-access-tokens"):
            self.expire_access_tokens(data.get("upn"))
            return Response(204)
        if route == ("POST", "token-lifetime"):
            self.token_lifetime = int(data["seconds"])
            return Response(204)
        if segments[:1] == ["faults"]:  # faults.py
            return fault_hooks.admin(self, method, segments, data)
        sub_route = self._admin_subscription_route(method, segments, data)
        if sub_route is not None:
            return sub_route
        return Response(
            404,
            {
                "error": {
                    "code": "NotFound",
                    "message": f"no admin endpoint {method} /_sim/{'/'.join(segments)}",
                }
            },
        )
