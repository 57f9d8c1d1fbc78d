"""HTTP access to Microsoft Graph: app-only tokens (msal), retries, typed errors, paging.

Graph behaviour implemented here, by the Microsoft documentation page it comes from:

- *Get access without a user* / msal ``ConfidentialClientApplication.acquire_token_for_client``:
  client credentials with a secret or a certificate, scope ``https://graph.microsoft.com/.default``;
  msal caches the token in the application object, so the object is kept per
  (authority, client, credential) at module level.
- *Microsoft Graph throttling guidance*: 429 carries ``Retry-After`` (seconds); wait that long
  and retry; without the header back off exponentially. *Microsoft Graph error responses and
  resource types*: 503 may also carry ``Retry-After``; 504 is a gateway timeout (retried the
  same way); 412 is a failed precondition such as ``If-Match``.
- *Get immutable identifiers for Outlook resources*: ``Prefer: IdType="ImmutableId"`` on every
  request, so event ids survive moves between folders.
- *Paging Microsoft Graph data in your app*: follow ``@odata.nextLink`` as an opaque URL.
- *Use delta query to track changes in Microsoft Graph data* ("Synchronization reset",
  "Token duration"): a delta link can be answered with 410 Gone (maybe with a ``Location``) or
  a 4xx with ``syncStateNotFound``; both mean "start a full synchronization again".

Secrets and tokens never appear in log lines or exception messages; log lines carry the method,
the URL path without its query (delta and skip tokens live in the query), the status and
Graph's ``request-id``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import msal
import msal.authority
import requests

from sync_core.errors import (
    AuthenticationFailed,
    DavbridgeError,
    DeltaTokenExpired,
    NotFound,
    PreconditionFailed,
    SideError,
    Throttled,
)
from sync_core.http_sessions import new_session

log = logging.getLogger("davbridge.graph")

PUBLIC_GRAPH_URL = "https://graph.microsoft.com/v1.0"
PUBLIC_AUTHORITY_HOST = "https://login.microsoftonline.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
IMMUTABLE_ID_PREFERENCE = 'IdType="ImmutableId"'

RETRY_STATUSES = frozenset({429, 503, 504})
#: *JSON batching*: "JSON batch requests are currently limited to 20 individual requests".
BATCH_LIMIT = 20


@dataclass(frozen=True)
class BatchStep:
    """One request inside a ``$batch``: ``url`` relative to the version (``/users/...``)."""

    method: str
    url: str
    body: Any = None
    headers: Mapping[str, str] | None = None
# Graph's codes for "this delta/skip token can no longer be used" (delta query overview,
# "Token duration": 40X with codes *such as* syncStateNotFound; compared case-insensitively).
_RESYNC_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})

_AUTH_HINTS = {
    "ErrorAccessDenied": "missing permission or admin consent (application permission "
    "Calendars.ReadWrite), or an application access policy excludes this mailbox",
    "Authorization_RequestDenied": "missing permission or admin consent",
    "InvalidAuthenticationToken": "the access token was refused",
    "ErrorInvalidUser": "unknown mailbox",
    "MailboxNotEnabledForRESTAPI": "the user has no Exchange Online mailbox",
}


# --- credentials and tokens ---------------------------------------------------------------
@dataclass(frozen=True)
class GraphCredentials:
    """An Entra app registration used app-only (client credentials flow).

    Exactly one of ``client_secret`` and ``certificate_pem`` is given. ``certificate_pem``
    holds the private key in PEM, optionally followed by its certificate; with the
    certificate msal signs the assertion with the SHA-256 thumbprint (``x5t#S256``) and sends
    the chain (``x5c``); without it, ``certificate_thumbprint`` (SHA-1 hex, as the portal shows
    it) is required. Secret fields are excluded from ``repr``.
    """

    tenant_id: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    certificate_pem: str | None = field(default=None, repr=False)
    certificate_thumbprint: str | None = None
    private_key_passphrase: str | None = field(default=None, repr=False)
    authority_host: str = PUBLIC_AUTHORITY_HOST

    def __post_init__(self) -> None:
        if (self.client_secret is None) == (self.certificate_pem is None):
            raise ValueError("give either a client secret or a certificate, not both or neither")
        if not self.tenant_id or not self.client_id:
            raise ValueError("tenant_id and client_id are required")

    @property
    def authority(self) -> str:
        return f"{self.authority_host.rstrip('/')}/{self.tenant_id}"

    def msal_credential(self) -> str | dict[str, str]:
        """The ``client_credential`` argument of ``msal.ConfidentialClientApplication``."""
        if self.client_secret is not None:
            return self.client_secret
        assert self.certificate_pem is not None
        key_pem, cert_pem = _split_pem(self.certificate_pem)
        if not key_pem:
            raise ValueError("certificate_pem holds no private key")
        credential: dict[str, str] = {"private_key": key_pem}
        if self.certificate_thumbprint:
            credential["thumbprint"] = self.certificate_thumbprint
        elif cert_pem:
            credential["public_certificate"] = cert_pem
        else:
            raise ValueError("a certificate credential needs the certificate or its thumbprint")
        if self.private_key_passphrase:
            credential["passphrase"] = self.private_key_passphrase
        return credential

    def fingerprint(self) -> str:
        """A hash of the credential material: a rotated secret gets a new msal app object."""
        parts = [
            self.client_secret or "",
            self.certificate_pem or "",
            self.certificate_thumbprint or "",
            self.private_key_passphrase or "",
        ]
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def _split_pem(pem: str) -> tuple[str, str]:
    """Split a PEM bundle into (private key blocks, certificate blocks)."""
    keys: list[str] = []
    certs: list[str] = []
    block: list[str] = []
    kind = ""
    for line in pem.strip().splitlines():
        line = line.strip()
        if line.startswith("-----BEGIN "):
            block, kind = [line], line
            continue
        if not block:
            continue
        block.append(line)
        if line.startswith("-----END "):
            text = "\n".join(block) + "\n"
            (certs if "CERTIFICATE" in kind else keys).append(text)
            block, kind = [], ""
    return "".join(keys), "".join(certs)


class _MsalHttpClient:
    """The HTTP client handed to msal: a requests session whose own ``verify`` is honoured.

    requests lets ``REQUESTS_CA_BUNDLE`` override ``Session.verify`` when a call does not pass
    ``verify`` (psf/requests#3829); msal never passes it, so this adapter does.
    """

    def __init__(self, session: requests.Session, timeout: tuple[float, float]) -> None:
        self._session = session
        self._timeout = timeout

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self._session.verify)
        kwargs.setdefault("timeout", self._timeout)
        return self._session.post(url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self._session.verify)
        kwargs.setdefault("timeout", self._timeout)
        return self._session.get(url, **kwargs)

    def close(self) -> None:
        self._session.close()


class TokenProvider(Protocol):
    """Anything that returns a bearer token for Graph (app-only or delegated)."""

    def token(self) -> str: ...


_APPS: dict[tuple[str, str, str], msal.ConfidentialClientApplication] = {}
_APPS_LOCK = threading.Lock()


def _uses_instance_discovery(authority_host: str) -> bool:
    """msal's instance discovery only knows Microsoft's clouds; skip it for any other host."""
    host = urlsplit(authority_host).netloc.lower()
    return host in msal.authority.WELL_KNOWN_AUTHORITY_HOSTS


class GraphAuth:
    """App-only tokens for Graph through msal's client credentials flow.

    The msal application object is cached at module level per (authority, client id,
    credential hash): msal keeps the token in that object and answers from its cache until
    shortly before expiry, so repeated :meth:`token` calls cost no request. ``session`` is the
    HTTP client msal uses (its ``verify`` decides the CA bundle for the token endpoint).
    """

    def __init__(
        self,
        credentials: GraphCredentials,
        *,
        session: requests.Session | None = None,
        verify: bool | str | None = None,
        scope: str = GRAPH_SCOPE,
        timeout: tuple[float, float] = (10.0, 30.0),
    ) -> None:
        self.credentials = credentials
        self.scope = scope
        self._session = session or new_session()
        if verify is not None:
            self._session.verify = verify
        self._http = _MsalHttpClient(self._session, timeout)

    def _app(self) -> msal.ConfidentialClientApplication:
        creds = self.credentials
        key = (creds.authority, creds.client_id, creds.fingerprint())
        with _APPS_LOCK:
            app = _APPS.get(key)
            if app is not None:
                return app
            try:
                app = msal.ConfidentialClientApplication(
                    creds.client_id,
                    authority=creds.authority,
                    client_credential=creds.msal_credential(),
                    http_client=self._http,
                    instance_discovery=None if _uses_instance_discovery(creds.authority_host) else False,
                )
            except requests.RequestException as exc:
                raise SideError(f"token authority unreachable: {type(exc).__name__}") from None
            except ValueError as exc:
                # msal: unknown tenant / authority (its message names the authority URL only);
                # cryptography: a PEM that does not load. Neither message holds the secret.
                raise AuthenticationFailed(f"cannot use the app registration: {_scrub(str(exc), creds)}") from None
            _APPS[key] = app
            return app

    def token(self) -> str:
        """A bearer token for Graph; raises :class:`AuthenticationFailed` with msal's error."""
        app = self._app()
        try:
            result = app.acquire_token_for_client(scopes=[self.scope])
        except requests.RequestException as exc:
            raise SideError(f"token endpoint unreachable: {type(exc).__name__}") from None
        except ValueError as exc:
            raise AuthenticationFailed(f"token request failed: {_scrub(str(exc), self.credentials)}") from None
        if not isinstance(result, dict) or "access_token" not in result:
            result = result if isinstance(result, dict) else {}
            error = str(result.get("error") or "unknown_error")
            description = str(result.get("error_description") or "").strip().splitlines()
            first = description[0] if description else ""
            raise AuthenticationFailed(
                f"token request refused: {error}: {_scrub(first, self.credentials)}".rstrip(": ")
            )
        return str(result["access_token"])

    def invalidate(self) -> None:
        """Forget cached access tokens (after Graph answered 401 to one of them)."""
        app = self._app()
        cache = app.token_cache
        for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(entry)


def _scrub(text: str, creds: GraphCredentials) -> str:
    for secret in (creds.client_secret, creds.private_key_passphrase):
        if secret:
            text = text.replace(secret, "***")
    return text


class StaticToken:
    """A fixed bearer token (tests, or a token obtained elsewhere)."""

    def __init__(self, value: str) -> None:
        self._value = value

    def token(self) -> str:
        return self._value


# --- the HTTP client ----------------------------------------------------------------------
class DeltaReset(DeltaTokenExpired):
    """Graph refused a delta or skip token (410 Gone / syncStateNotFound).

    ``location`` is the 410's ``Location`` header when Graph sent one (delta query overview,
    "Synchronization reset": a request URL with an empty ``$deltatoken``).
    """

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class Conflict(SideError):
    """HTTP 409 from Graph (for a create: possibly the transactionId is already used)."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class GraphError:
    """What Graph said about a failed request (``{"error": {"code", "message"}}``)."""

    status: int
    code: str
    message: str
    request_id: str

    def describe(self, method: str, path: str) -> str:
        text = f"Graph {method} {path}: HTTP {self.status} {self.code or '-'}"
        if self.message:
            text += f": {self.message[:300]}"
        if self.request_id:
            text += f" (request-id {self.request_id})"
        return text


def _graph_error(resp: requests.Response) -> GraphError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    return _error_of(resp.status_code, resp.headers, body)


def _error_of(status: int, headers: Mapping[str, str], body: Any) -> GraphError:
    code = message = ""
    request_id = headers.get("request-id", "") or headers.get("client-request-id", "")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or "")
        message = str(err.get("message") or "")
        inner = err.get("innerError") or err.get("innererror")
        if not request_id and isinstance(inner, dict):
            request_id = str(inner.get("request-id") or "")
    return GraphError(status, code, message, request_id)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds (fractions accepted) or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class GraphClient:
    """A requests session for Graph with bearer auth, immutable ids, retries and typed errors.

    Retries: 429/503/504 honour ``Retry-After`` (seconds, fractional allowed, or an HTTP-date)
    and otherwise back off exponentially with jitter; network errors are retried the same way.
    At most ``max_attempts`` tries and ``max_wait`` seconds of waiting per request; past that
    (or when Graph asks for a longer wait than is left) :class:`Throttled` is raised so the run
    ends and the next run retries. Every write we send is idempotent (POST with
    ``transactionId``, PATCH, DELETE), so retrying them is safe.

    Errors: 401/403 -> :class:`AuthenticationFailed` (with Graph's code and a hint),
    404 -> :class:`NotFound`, 410 or ``syncStateNotFound`` on a delta URL -> :class:`DeltaReset`,
    412 or ``ErrorIrresolvableConflict`` -> :class:`PreconditionFailed`, anything else ->
    :class:`SideError` with Graph's code. ``request_count`` counts HTTP requests sent to Graph
    (token requests are msal's and not counted).
    """

    def __init__(
        self,
        auth: TokenProvider,
        *,
        base_url: str = PUBLIC_GRAPH_URL,
        verify: bool | str | None = None,
        session: requests.Session | None = None,
        max_attempts: int = 5,
        max_wait: float = 60.0,
        backoff_base: float = 0.5,
        timeout: tuple[float, float] = (10.0, 60.0),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.auth = auth
        self.base_url = base_url.rstrip("/")
        split = urlsplit(self.base_url)
        if split.scheme not in ("https", "http") or not split.netloc:
            raise ValueError("base_url must be an absolute http(s) URL")
        self._origin = (split.scheme, split.netloc.lower())
        self.session = session or new_session()
        if verify is not None:
            self.session.verify = verify
        self.max_attempts = max(1, max_attempts)
        self.max_wait = max_wait
        self.backoff_base = backoff_base
        self.timeout = timeout
        self.sleep = sleep
        self.request_count = 0
        self.waited = 0.0  # seconds spent waiting for retries, over the client's life

    # -- URLs
    def url(self, path_or_url: str) -> str:
        """Absolute URL for a path under the base URL, or a checked absolute Graph URL.

        Links Graph returns (next/delta links) are followed only on the base URL's origin, so
        a bearer token is never sent to another host.
        """
        if path_or_url.startswith(("https://", "http://")):
            split = urlsplit(path_or_url)
            if (split.scheme, split.netloc.lower()) != self._origin:
                raise SideError(f"refusing to follow a link to another host: {split.netloc}")
            return path_or_url
        if not path_or_url.startswith("/"):
            path_or_url = "/" + path_or_url
        return self.base_url + path_or_url

    def relative(self, url: str) -> str:
        """``url`` without the base URL when it lies under it (for compact cursors)."""
        if url.startswith(self.base_url + "/"):
            return url[len(self.base_url) :]
        return url

    # -- requests
    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        prefer: str | None = None,
    ) -> requests.Response:
        """Send one logical request (with retries) and return the successful response."""
        url = self.url(path_or_url)
        path = urlsplit(url).path
        is_delta = "/delta" in path
        preference = IMMUTABLE_ID_PREFERENCE + (f", {prefer}" if prefer else "")
        client_request_id = str(uuid.uuid4())
        waited = 0.0
        refreshed_token = False
        attempt = 0
        while True:
            attempt += 1
            send_headers = {
                "Authorization": f"Bearer {self.auth.token()}",
                "Prefer": preference,
                "Accept": "application/json",
                "client-request-id": client_request_id,
            }
            if headers:
                send_headers.update(headers)
            started = time.monotonic()
            self.request_count += 1
            try:
                resp = self.session.request(
                    method,
                    url,
                    params=dict(params) if params else None,
                    json=json,
                    headers=send_headers,
                    timeout=self.timeout,
                    verify=self.session.verify,  # not REQUESTS_CA_BUNDLE (psf/requests#3829)
                )
            except requests.RequestException as exc:
                log.warning("graph %s %s failed: %s (try %d)", method, path, type(exc).__name__, attempt)
                delay = self._backoff(attempt)
                if attempt >= self.max_attempts or waited + delay > self.max_wait:
                    raise SideError(f"Graph {method} {path}: {type(exc).__name__} after {attempt} tries") from None
                self._wait(delay)
                waited += delay
                continue
            elapsed_ms = (time.monotonic() - started) * 1000
            request_id = resp.headers.get("request-id", "")
            log.debug(
                "graph %s %s -> %d in %.0f ms (request-id %s, try %d)",
                method,
                path,
                resp.status_code,
                elapsed_ms,
                request_id or "-",
                attempt,
            )
            if resp.status_code < 400:
                return resp
            if resp.status_code in RETRY_STATUSES:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                delay = retry_after if retry_after is not None else self._backoff(attempt)
                err = _graph_error(resp)
                if attempt >= self.max_attempts or waited + delay > self.max_wait:
                    raise Throttled(
                        err.describe(method, path) + f"; gave up after {attempt} tries and {waited:.1f} s of waiting"
                    )
                log.info(
                    "graph %s %s throttled (HTTP %d %s); waiting %.2f s (try %d)",
                    method,
                    path,
                    resp.status_code,
                    err.code or "-",
                    delay,
                    attempt,
                )
                self._wait(delay)
                waited += delay
                continue
            invalidate = getattr(self.auth, "invalidate", None)
            if resp.status_code == 401 and not refreshed_token and callable(invalidate):
                # A cached token may have been revoked: get a fresh one once.
                refreshed_token = True
                invalidate()
                continue
            raise self._error(method, path, resp, is_delta)

    def _backoff(self, attempt: int) -> float:
        base = min(30.0, self.backoff_base * (2 ** (attempt - 1)))
        return base + random.uniform(0, base)

    def _wait(self, seconds: float) -> None:
        self.waited += seconds
        if seconds > 0:
            self.sleep(seconds)

    def batch(self, steps: Sequence[BatchStep]) -> list[dict[str, Any] | DavbridgeError]:
        """Send up to ``BATCH_LIMIT`` requests in one ``POST /$batch`` (*Combine multiple HTTP
        requests using JSON batching*) and return, in order, each one's JSON answer or its
        typed error (as :meth:`request` would raise it).

        The batch's own headers do not reach the requests inside it, so each carries its own
        ``Prefer`` (immutable ids). Requests inside are "evaluated individually against the
        applicable throttling limits": those answered 429/503/504 alone are sent again, in a
        new batch after the longest ``Retry-After``, within the same tries and waiting budget
        as :meth:`request`; past it they are :class:`Throttled`. The batch POST itself is
        retried by :meth:`request`."""
        if len(steps) > BATCH_LIMIT:
            raise ValueError(f"a Graph $batch holds at most {BATCH_LIMIT} requests")
        pending = {str(i + 1): step for i, step in enumerate(steps)}
        results: dict[str, dict[str, Any] | DavbridgeError] = {}
        waited, attempt = 0.0, 0
        while pending:
            attempt += 1
            body = {"requests": [
                {"id": key, "method": step.method, "url": step.url,
                 "headers": {"Prefer": IMMUTABLE_ID_PREFERENCE, **({"Content-Type": "application/json"}
                                                                  if step.body is not None else {}),
                             **dict(step.headers or {})},
                 **({"body": step.body} if step.body is not None else {})}
                for key, step in pending.items()]}
            answer = _json_object(self.request("POST", "/$batch", json=body), "POST", "/$batch")
            replies = {str(r.get("id")): r for r in answer.get("responses") or [] if isinstance(r, dict)}
            again: dict[str, BatchStep] = {}
            delay = 0.0
            for key, step in pending.items():
                reply = replies.get(key)
                if reply is None:
                    results[key] = SideError(f"Graph $batch: no answer for {step.method} {urlsplit(step.url).path}")
                    continue
                status = int(reply.get("status") or 0)
                headers = {str(k): str(v) for k, v in (reply.get("headers") or {}).items()}
                if 200 <= status < 400:
                    answered = reply.get("body")
                    results[key] = answered if isinstance(answered, dict) else {}
                elif status in RETRY_STATUSES:
                    again[key] = step
                    retry_after = parse_retry_after(headers.get("Retry-After"))
                    delay = max(delay, retry_after if retry_after is not None else self._backoff(attempt))
                else:
                    path = urlsplit(step.url).path
                    results[key] = self._typed(step.method, path, status, headers, reply.get("body"), "/delta" in path)
            if again and (attempt >= self.max_attempts or waited + delay > self.max_wait):
                for key, step in again.items():
                    results[key] = Throttled(f"Graph {step.method} {urlsplit(step.url).path} in $batch: throttled; "
                                             f"gave up after {attempt} tries and {waited:.1f} s of waiting")
                break
            if again:
                log.info("graph $batch: %d of %d requests throttled; waiting %.2f s (try %d)",
                         len(again), len(pending), delay, attempt)
                self._wait(delay)
                waited += delay
            pending = again
        return [results[str(i + 1)] for i in range(len(steps))]

    @staticmethod
    def _error(method: str, path: str, resp: requests.Response, is_delta: bool) -> Exception:
        try:
            body = resp.json()
        except ValueError:
            body = None
        return GraphClient._typed(method, path, resp.status_code, resp.headers, body, is_delta)

    @staticmethod
    def _typed(method: str, path: str, status: int, headers: Mapping[str, str], body: Any,
               is_delta: bool) -> DavbridgeError:
        err = _error_of(status, headers, body)
        text = err.describe(method, path)
        if is_delta and (status == 410 or err.code.lower() in _RESYNC_CODES):
            return DeltaReset(text, location=headers.get("Location"))
        if err.code == "ErrorIrresolvableConflict" or status == 412:
            return PreconditionFailed(text)
        if status in (401, 403):
            hint = _AUTH_HINTS.get(err.code)
            return AuthenticationFailed(text + (f" [{hint}]" if hint else ""))
        if status in (404, 410):
            return NotFound(text)
        if status == 409:
            return Conflict(text, code=err.code)
        return SideError(text)

    def request_json(
        self,
        method: str,
        path_or_url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """A write (POST/PATCH) whose answer is a JSON object (the written entity)."""
        resp = self.request(method, path_or_url, json=json, headers=headers)
        return _json_object(resp, method, path_or_url)

    def get_json(
        self,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        prefer: str | None = None,
    ) -> dict[str, Any]:
        resp = self.request("GET", path_or_url, params=params, prefer=prefer)
        return _json_object(resp, "GET", path_or_url)

    def iter_pages(
        self,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        prefer: str | None = None,
        max_pages: int = 10_000,
    ) -> Iterator[dict[str, Any]]:
        """Yield each page of a collection, following ``@odata.nextLink`` (bounded)."""
        page = self.get_json(path_or_url, params=params, prefer=prefer)
        pages = 1
        yield page
        while isinstance(page.get("@odata.nextLink"), str):
            if pages >= max_pages:
                raise SideError(f"Graph paging did not end after {max_pages} pages")
            page = self.get_json(page["@odata.nextLink"], prefer=prefer)
            pages += 1
            yield page

    def iter_items(
        self,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        prefer: str | None = None,
        max_pages: int = 10_000,
    ) -> Iterator[dict[str, Any]]:
        """Yield the ``value`` items of every page."""
        for page in self.iter_pages(path_or_url, params=params, prefer=prefer, max_pages=max_pages):
            for item in page.get("value") or []:
                if isinstance(item, dict):
                    yield item


def _json_object(resp: requests.Response, method: str, what: str) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        raise SideError(f"Graph {method} {urlsplit(what).path}: answer is not JSON") from None
    if not isinstance(body, dict):
        raise SideError(f"Graph {method} {urlsplit(what).path}: answer is not a JSON object")
    return body


def clear_app_cache() -> None:
    """Drop every cached msal application (credential rotation, tests)."""
    with _APPS_LOCK:
        _APPS.clear()
