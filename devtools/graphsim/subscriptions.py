"""Change notifications: ``/subscriptions``, the validation handshake, webhook delivery, lifecycle
notifications.

Written from the v1.0 documentation (subscription resource, subscription-post-subscriptions,
subscription-update, change-notifications-delivery-webhooks, change-notifications-lifecycle-events,
changeNotification / resourceData resources) and the error bodies users quoted from the real service;
details and choices are listed in README.md ("Change notifications").

* ``POST /subscriptions`` checks the body, then performs the **validation handshake** before it
  answers 201: ``POST <notificationUrl>?validationToken=<url-encoded token>`` (query parameters already
  in the URL are kept), ``Content-Type: text/plain; charset=utf-8``, empty body; the endpoint must
  answer 200, ``text/plain``, with the decoded token as the body, within 10 s. The same for
  ``lifecycleNotificationUrl``.
* Every change in the :class:`~devtools.graphsim.store.Store` (through its change hook) becomes a
  ``changeNotificationCollection`` POSTed to each live subscription that covers the event's mailbox
  (``/users/{id}/events``) or calendar (``/users/{id}/calendars/{id}/events``) and asked for that
  change type. A create is announced as ``created`` *and* ``updated``.
* Deliveries run on a bounded pool of worker threads (default 16 concurrent POSTs), over HTTPS that
  verifies the receiver against a CA bundle (default: the stand-in's own CA); non-2xx answers,
  timeouts and connection errors are retried a bounded number of times with a short exponential
  backoff (Graph retries for up to 4 hours: compressed here so tests stay fast).
* ``reauthorizationRequired``, ``subscriptionRemoved`` and ``missed`` lifecycle notifications are
  sent on request (:meth:`SubscriptionService.send_lifecycle`) to ``lifecycleNotificationUrl``.
"""

from __future__ import annotations

import http.client
import json
import queue
import re
import ssl
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from ipaddress import ip_address
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from devtools.graphsim import timezones as tz
from devtools.graphsim.auth import AccessToken
from devtools.graphsim.csdl import Schema
from devtools.graphsim.odata import GraphError, bad_request
from devtools.graphsim.routes import Request, Response
from devtools.graphsim.store import Store, StoredEvent

SUBSCRIPTION_TYPE = "microsoft.graph.subscription"
#: Outlook event subscriptions live at most 10,080 minutes (subscription resource, "Subscription lifetime").
EVENT_MAX_MINUTES = 10_080
CLIENT_STATE_MAX = 128
CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("missed", "subscriptionRemoved", "reauthorizationRequired")
TLS_VERSIONS = ("v1_0", "v1_1", "v1_2", "v1_3")
LIST_PAGE_SIZE = 100
VALIDATION_PREFIX = "Validation: Testing client application reachability for subscription Request-Id: "
EVENT_ODATA_TYPE = "#Microsoft.Graph.Event"  # as in the documented Outlook notification payloads
_FRACTION = re.compile(r"(\.\d{6})\d+")
_PATCHABLE = frozenset({"expirationDateTime", "notificationUrl"})


@dataclass
class NotificationSettings:
    """Knobs of the handshake and the delivery (all times in seconds).

    ``validation_timeout``: the endpoint must answer the handshake within this time (Graph: 10 s).
    ``delivery_timeout``: the HTTP client timeout of a notification POST (Graph: 3 s); an answer that
    does not arrive in time is a failure and is retried. ``slow_threshold``: answers taking at least
    this long are flagged ``slow`` in the log (Graph: "greater than 2900 ms ... is considered slow").
    ``max_attempts``: attempts per notification (first try included); ``retry_backoff``: delay before
    the first retry, doubled for each further one. ``max_concurrency``: worker threads, i.e.
    concurrent POSTs (read when the pool starts). ``ca_bundle``: PEM file to verify receivers with
    (None: the stand-in's CA). ``allow_remote``: also call hosts that are not loopback.
    """

    validation_timeout: float = 10.0
    delivery_timeout: float = 3.0
    slow_threshold: float = 2.9
    max_attempts: int = 4
    retry_backoff: float = 0.2
    max_concurrency: int = 16
    ca_bundle: str | None = None
    allow_remote: bool = False

    def update(self, **changes: Any) -> None:
        known = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown notification setting {name!r}")
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Subscription:
    id: str
    resource: str
    change_type: str  # as the client wrote it
    change_types: frozenset[str]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: datetime
    tenant_id: str  # GUID form (changeNotification.tenantId is an Edm.Guid)
    client_id: str
    app_tenant: str  # as registered (to match the caller's token)
    creator_id: str
    user_id: str
    calendar_id: str | None
    latest_tls: str = "v1_2"
    encryption_certificate: str | None = None
    encryption_certificate_id: str | None = None
    notification_url_app_id: str | None = None
    notification_query_options: str | None = None
    created: float = field(default_factory=time.monotonic)

    def covers(self, user_id: str, calendar_id: str) -> bool:
        return self.user_id == user_id and (self.calendar_id is None or self.calendar_id == calendar_id)

    def owned_by(self, app: AccessToken | None) -> bool:
        return (
            app is not None
            and app.client_id.lower() == self.client_id.lower()
            and app.tenant_id.lower() == self.app_tenant.lower()
        )

    def to_json(self) -> dict[str, Any]:
        """The subscription entity (every property the v1.0 CSDL declares, as Graph returns them)."""
        return {
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.client_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": self.notification_query_options,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": tz.format_timestamp(self.expiration),
            "creatorId": self.creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": self.latest_tls,
            "encryptionCertificate": self.encryption_certificate,
            "encryptionCertificateId": self.encryption_certificate_id,
            "notificationUrlAppId": self.notification_url_app_id,
        }


@dataclass(frozen=True)
class _Job:
    url: str  # with query
    payload: dict[str, Any]
    subscription_id: str
    kind: str  # "change" | "lifecycle"
    label: str  # changeType or lifecycleEvent
    check_live: bool
    attempt: int = 1


class _Posted:
    """The outcome of one HTTPS POST."""

    def __init__(self, status: int | None, content_type: str, body: bytes, seconds: float, error: str | None):
        self.status = status
        self.content_type = content_type
        self.body = body
        self.seconds = seconds
        self.error = error


def _strip_query(url: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, p.path, "", ""))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _tenant_guid(tenant: str) -> str:
    try:
        return str(uuid.UUID(tenant))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"graphsim-tenant:{tenant.lower()}"))


def _service_principal_id(app: AccessToken) -> str:
    """creatorId of an app-only subscription: "the id of the service principal corresponding to the
    app" (a stable GUID per tenant and app here)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"graphsim-sp:{app.tenant_id.lower()}/{app.client_id.lower()}"))


def _status_name(status: int) -> str:
    """.NET ``HttpStatusCode`` style: 500 -> ``InternalServerError`` (as Graph's messages show it)."""
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return str(status)


def _not_found() -> GraphError:
    # the body users quote for GET/DELETE /subscriptions/{id} of a subscription that does not exist
    return GraphError(404, "ResourceNotFound", "The object was not found.")


def _invalid(message: str) -> GraphError:
    return bad_request("InvalidRequest", message)


class _Dispatcher:
    """A bounded pool of delivery workers with retries, and the delivery log."""

    def __init__(self, service: SubscriptionService) -> None:
        self._svc = service
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._cond = threading.Condition()
        self._pending = 0  # queued + being delivered + waiting for a retry
        self._threads: list[threading.Thread] = []
        self._timers: set[threading.Timer] = set()
        self._stopping = False
        self._generation = 0  # bumped by stop(): retries scheduled before are dropped
        self.log: list[dict[str, Any]] = []

    def submit(self, job: _Job) -> None:
        with self._cond:
            if self._stopping:
                return
            self._pending += 1
            if not self._threads:
                for n in range(max(1, int(self._svc.settings.max_concurrency))):
                    t = threading.Thread(target=self._work, name=f"graphsim-notify-{n}", daemon=True)
                    t.start()
                    self._threads.append(t)
        self._queue.put(job)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                retry = self._deliver(job)
            except Exception:  # a bug in the stand-in must not leave the pool "busy" forever
                traceback.print_exc()
                retry = None
            if retry is None:
                self._done()

    def _done(self) -> None:
        with self._cond:
            self._pending = max(0, self._pending - 1)
            self._cond.notify_all()

    def _deliver(self, job: _Job) -> _Job | None:
        """POST one notification; returns the scheduled retry (None: finished)."""
        if self._stopping or (job.check_live and not self._svc.is_live(job.subscription_id)):
            return None  # deleted or expired meanwhile: Graph sends nothing for it any more
        settings = self._svc.settings
        body = json.dumps(job.payload).encode()
        posted = self._svc.post(job.url, body, "application/json; charset=utf-8", settings.delivery_timeout)
        ok = posted.status is not None and 200 <= posted.status < 300
        record = {
            "kind": job.kind,
            "url": _strip_query(job.url),
            "subscription_id": job.subscription_id,
            "change_type": job.label if job.kind == "change" else None,
            "lifecycle_event": job.label if job.kind == "lifecycle" else None,
            "status": posted.status,
            "seconds": round(posted.seconds, 4),
            "attempt": job.attempt,
            "slow": posted.seconds >= settings.slow_threshold,
            "error": posted.error,
            "time": tz.format_timestamp(datetime.now(UTC)),
            "payload": job.payload,
        }
        with self._cond:
            self.log.append(record)
        if ok or job.attempt >= settings.max_attempts:
            return None
        retry = replace(job, attempt=job.attempt + 1)
        delay = max(0.0, float(settings.retry_backoff)) * 2 ** (job.attempt - 1)
        with self._cond:
            if self._stopping:
                return None
            timer = threading.Timer(delay, self._requeue, args=(retry, self._generation))
            timer.daemon = True
            self._timers.add(timer)
            timer.start()
        return retry

    def _requeue(self, job: _Job, generation: int) -> None:
        with self._cond:
            current = threading.current_thread()
            self._timers = {t for t in self._timers if t.is_alive() and t is not current}
            if generation != self._generation:
                return
        self._queue.put(job)

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._generation += 1
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join(timeout=5)
        with self._cond:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._pending = 0
            self._stopping = False
            self._cond.notify_all()


class SubscriptionService:
    """Subscriptions of every app, their handshake, and the delivery of change and lifecycle
    notifications (see the module docstring)."""

    def __init__(self, store: Store, schema: Schema, default_ca: str, settings: NotificationSettings | None = None):
        self.store = store
        self.schema = schema
        self.default_ca = default_ca
        self.settings = settings or NotificationSettings()
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.validation_log: list[dict[str, Any]] = []
        self.dispatcher = _Dispatcher(self)
        store.add_change_listener(self._on_change)

    # -- outbound HTTPS ----------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        cafile = self.settings.ca_bundle or self.default_ca
        with self._lock:
            ctx = self._contexts.get(cafile)
            if ctx is None:
                ctx = ssl.create_default_context(cafile=cafile)
                self._contexts[cafile] = ctx
            return ctx

    def post(self, url: str, body: bytes, content_type: str, timeout: float) -> _Posted:
        """POST ``body`` to ``url`` over HTTPS (certificate verified); never raises."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        start = time.monotonic()
        if not self.settings.allow_remote and not _is_loopback(host):
            return _Posted(None, "", b"", 0.0, f"graphsim only calls loopback hosts, not {host!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = http.client.HTTPSConnection(host, parts.port or 443, context=self._ssl_context(), timeout=timeout)
        try:
            conn.request(
                "POST",
                path,
                body=body,
                headers={"Content-Type": content_type, "User-Agent": "graphsim-notifications/1"},
            )
            resp = conn.getresponse()
            data = resp.read()
            seconds = time.monotonic() - start
            if seconds > timeout:
                return _Posted(None, "", b"", seconds, "timeout")
            return _Posted(resp.status, resp.getheader("Content-Type") or "", data, seconds, None)
        except TimeoutError:
            return _Posted(None, "", b"", time.monotonic() - start, "timeout")
        except ssl.SSLError as exc:
            return _Posted(None, "", b"", time.monotonic() - start, f"tls: {exc.reason or exc}")
        except (OSError, http.client.HTTPException) as exc:
            return _Posted(None, "", b"", time.monotonic() - start, f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def _handshake(self, url: str) -> None:
        """The notificationUrl validation request; GraphError 400 unless the endpoint echoes the token."""
        token = VALIDATION_PREFIX + str(uuid.uuid4())
        sep = "&" if urlsplit(url).query else "?"
        target = f"{url}{sep}validationToken={quote(token, safe='')}"
        posted = self.post(target, b"", "text/plain; charset=utf-8", float(self.settings.validation_timeout))
        ok_type = posted.content_type.split(";")[0].strip().lower() == "text/plain"
        ok = posted.status == 200 and ok_type and posted.body == token.encode()
        record = {
            "url": _strip_query(url),
            "status": posted.status,
            "content_type": posted.content_type,
            "seconds": round(posted.seconds, 4),
            "ok": ok,
            "error": posted.error,
            "time": tz.format_timestamp(datetime.now(UTC)),
        }
        with self._lock:
            self.validation_log.append(record)
        if ok:
            return
        if posted.error == "timeout":
            raise _invalid("Subscription validation request timed out.")
        if posted.error and posted.error.startswith("graphsim only calls loopback"):
            raise _invalid(f"Invalid notification url='{url}': {posted.error} (NotificationSettings.allow_remote).")
        failed = "Subscription validation request failed."
        must = "Notification endpoint must respond with 200 OK to validation request."
        if posted.status is not None and posted.status != 200:
            status = _status_name(posted.status)
            raise bad_request("ValidationError", f"{failed} HTTP status code is '{status}'. {must}")
        if posted.status == 200 and ok_type:
            mismatch = "Response must exactly match validationToken query parameter."
            raise bad_request("ValidationError", f"{failed} {mismatch}")
        raise bad_request("ValidationError", f"{failed} {must}")

    # -- validation of request bodies ------------------------------------------------------------------
    def _check_body(self, payload: dict[str, Any], operation: str) -> None:
        if self.schema.validate(payload, SUBSCRIPTION_TYPE):
            raise _invalid(
                f"Could not process subscription {operation} payload. Are all property names spelled and camelCased "
                "properly?"
            )

    @staticmethod
    def _check_url(value: Any, name: str) -> str:
        label = "NotificationUrl" if name == "notificationUrl" else "LifecycleNotificationUrl"
        text = "notification url" if name == "notificationUrl" else "lifecycle notification url"
        if not isinstance(value, str) or not value:
            raise _invalid(f"Invalid {text}='{value}'.")
        parts = urlsplit(value)
        if parts.scheme.lower() != "https":
            raise _invalid(f"{label} scheme='{parts.scheme}' is not supported.")
        try:
            _ = parts.port
        except ValueError:
            raise _invalid(f"Invalid {text}='{value}'.") from None
        if not parts.hostname or parts.fragment or " " in value:
            raise _invalid(f"Invalid {text}='{value}'.")
        return value

    @staticmethod
    def _check_expiration(value: Any, now: datetime) -> datetime:
        if not isinstance(value, str):
            raise _invalid("expirationDateTime is a required property for subscription creation.")
        try:
            when = datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(
                "Could not process subscription creation payload. Are all property names spelled and camelCased "
                "properly?"
            ) from None
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        if when <= now:
            raise _invalid("Subscription expiration must be in the future.")
        if when > now + timedelta(minutes=EVENT_MAX_MINUTES):
            raise bad_request(
                "ExtensionError", f"Subscription expiration can only be {EVENT_MAX_MINUTES} minutes in the future."
            )
        return when

    @staticmethod
    def _check_change_type(value: Any) -> frozenset[str]:
        if not isinstance(value, str) or not value.strip():
            raise _invalid("changeType is a required property for subscription creation.")
        parts = [p.strip() for p in value.split(",")]
        for p in parts:
            if p not in CHANGE_TYPES:
                raise _invalid(f"Invalid 'changeType' attribute: '{p}'.")
        return frozenset(parts)

    def _resolve_resource(self, value: Any) -> tuple[str, str | None]:
        """``(user id, calendar id or None)`` of an events resource; 400 / 404 otherwise."""
        if not isinstance(value, str) or not value.strip():
            raise _invalid("resource is a required property for subscription creation.")
        segs = value.strip().lstrip("/").split("/")
        low = [s.lower() for s in segs]
        if low and low[0] == "me":
            raise bad_request("BadRequest", "/me request is only valid with delegated authentication flow.")
        if (
            "?" in value
            or not (
                (len(segs) == 3 and low[0] == "users" and low[2] == "events")
                or (len(segs) == 5 and low[0] == "users" and low[2] == "calendars" and low[4] == "events")
            )
            or not all(segs)
        ):
            raise _invalid(f"Resource '{value}' is not supported for change notifications.")
        user = self.store.find_user(segs[1])
        if user is None:
            raise GraphError(
                404,
                "ExtensionError",
                f"Operation: Create; Exception: [Status Code: NotFound; Reason: The requested user '{segs[1]}' is "
                "invalid.]",
            )
        if len(segs) == 5:
            if segs[3] not in user.calendars:
                raise GraphError(
                    404,
                    "ExtensionError",
                    "Operation: Create; Exception: [Status Code: NotFound; Reason: The specified object was not "
                    "found in the store.]",
                )
            return user.id, segs[3]
        return user.id, None

    # -- HTTP handlers (routes.py delegates here) ----------------------------------------------------
    @staticmethod
    def _headers(req: Request) -> dict[str, str]:
        if req.prefer.get("idtype", "").lower() == "immutableid":
            return {"Preference-Applied": 'IdType="ImmutableId"'}
        return {}

    def _entity(self, req: Request, sub: Subscription) -> dict[str, Any]:
        return {"@odata.context": f"{req.graph_url}/$metadata#subscriptions/$entity", **sub.to_json()}

    def _owned(self, req: Request, sid: str) -> Subscription:
        self._purge()
        with self._lock:
            sub = self._subs.get(sid)
        if sub is None or not sub.owned_by(req.app):
            raise _not_found()
        return sub

    def create_subscription(self, req: Request, params: Mapping[str, str]) -> Response:
        payload = req.json()
        self._check_body(payload, "creation")
        for name in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if payload.get(name) is None:
                raise _invalid(f"{name} is a required property for subscription creation.")
        change_types = self._check_change_type(payload["changeType"])
        url = self._check_url(payload["notificationUrl"], "notificationUrl")
        lifecycle = payload.get("lifecycleNotificationUrl")
        if lifecycle is not None:
            lifecycle = self._check_url(lifecycle, "lifecycleNotificationUrl")
        client_state = payload.get("clientState")
        if client_state is not None and len(client_state) > CLIENT_STATE_MAX:
            raise _invalid(f"clientState has exceeded the maximum length of {CLIENT_STATE_MAX} characters.")
        tls = payload.get("latestSupportedTlsVersion") or "v1_2"
        if tls not in TLS_VERSIONS:
            raise _invalid(f"Invalid 'latestSupportedTlsVersion' attribute: '{tls}'.")
        if payload.get("includeResourceData"):
            raise GraphError(501, "NotImplemented", "graphsim does not implement notifications with resource data.")
        expiration = self._check_expiration(payload["expirationDateTime"], datetime.now(UTC))
        user_id, calendar_id = self._resolve_resource(payload["resource"])
        app = req.app
        assert app is not None
        self._handshake(url)
        if lifecycle is not None:
            self._handshake(lifecycle)
        sub = Subscription(
            id=str(uuid.uuid4()),
            resource=payload["resource"],
            change_type=payload["changeType"],
            change_types=change_types,
            notification_url=url,
            lifecycle_url=lifecycle,
            client_state=client_state,
            expiration=expiration,
            tenant_id=_tenant_guid(app.tenant_id),
            client_id=app.client_id,
            app_tenant=app.tenant_id,
            creator_id=_service_principal_id(app),
            user_id=user_id,
            calendar_id=calendar_id,
            latest_tls=tls,
            encryption_certificate=payload.get("encryptionCertificate"),
            encryption_certificate_id=payload.get("encryptionCertificateId"),
            notification_url_app_id=payload.get("notificationUrlAppId"),
            notification_query_options=payload.get("notificationQueryOptions"),
        )
        with self._lock:
            self._subs[sub.id] = sub
        return Response(201, self._entity(req, sub), self._headers(req))

    def list_subscriptions(self, req: Request, params: Mapping[str, str]) -> Response:
        """The calling app's live subscriptions, oldest first, 100 per page (``$skiptoken``)."""
        self._purge()
        with self._lock:
            mine = sorted((s for s in self._subs.values() if s.owned_by(req.app)), key=lambda s: s.created)
        skip_raw = req.q("$skiptoken") or "0"
        if not skip_raw.isdigit():
            raise bad_request("BadRequest", "Invalid $skiptoken.")
        skip = int(skip_raw)
        body: dict[str, Any] = {"@odata.context": f"{req.graph_url}/$metadata#subscriptions"}
        if skip + LIST_PAGE_SIZE < len(mine):
            body["@odata.nextLink"] = f"{req.graph_url}/subscriptions?$skiptoken={skip + LIST_PAGE_SIZE}"
        body["value"] = [s.to_json() for s in mine[skip : skip + LIST_PAGE_SIZE]]
        return Response(200, body, self._headers(req))

    def get_subscription(self, req: Request, params: Mapping[str, str]) -> Response:
        return Response(200, self._entity(req, self._owned(req, params["sid"])), self._headers(req))

    def update_subscription(self, req: Request, params: Mapping[str, str]) -> Response:
        """PATCH: ``expirationDateTime`` (renewal, same limits as on creation) and ``notificationUrl``
        (validated again). ``lifecycleNotificationUrl`` cannot be changed; other properties neither."""
        sub = self._owned(req, params["sid"])
        payload = req.json()
        self._check_body(payload, "update")
        current = sub.to_json()
        if "lifecycleNotificationUrl" in payload and payload["lifecycleNotificationUrl"] != sub.lifecycle_url:
            raise _invalid(
                "lifecycleNotificationUrl cannot be updated. Delete the subscription and create a new one with the "
                "lifecycleNotificationUrl."
            )
        for key, value in payload.items():
            skip = key.startswith("@") or key in _PATCHABLE or key == "lifecycleNotificationUrl"
            if not skip and value != current.get(key):  # the same value (a whole object sent back) is fine
                raise _invalid(f"Property '{key}' cannot be updated; only expirationDateTime and notificationUrl can.")
        expiration = sub.expiration
        if "expirationDateTime" in payload:
            expiration = self._check_expiration(payload["expirationDateTime"], datetime.now(UTC))
        url = sub.notification_url
        if "notificationUrl" in payload:
            url = self._check_url(payload["notificationUrl"], "notificationUrl")
            if url != sub.notification_url:
                self._handshake(url)
        with self._lock:
            live = self._subs.get(sub.id)
            if live is None:
                raise _not_found()
            live.expiration = expiration
            live.notification_url = url
        return Response(200, self._entity(req, live), self._headers(req))

    def delete_subscription(self, req: Request, params: Mapping[str, str]) -> Response:
        sub = self._owned(req, params["sid"])
        with self._lock:
            self._subs.pop(sub.id, None)
        return Response(204)

    def reauthorize_subscription(self, req: Request, params: Mapping[str, str]) -> Response:
        """``POST /subscriptions/{id}/reauthorize`` (bound action in the v1.0 CSDL): 204, no change."""
        self._owned(req, params["sid"])
        return Response(204)

    # -- lifetime ------------------------------------------------------------------------------------------
    def _purge(self) -> None:
        now = datetime.now(UTC)
        with self._lock:
            for sid in [s.id for s in self._subs.values() if s.expiration <= now]:
                del self._subs[sid]

    def is_live(self, subscription_id: str) -> bool:
        self._purge()
        with self._lock:
            return subscription_id in self._subs

    def snapshot(self) -> list[dict[str, Any]]:
        self._purge()
        with self._lock:
            return [s.to_json() for s in sorted(self._subs.values(), key=lambda s: s.created)]

    def expire(self, subscription_id: str) -> None:
        """Let the subscription expire now: it is gone (404) and nothing more is sent for it."""
        with self._lock:
            if subscription_id not in self._subs:
                raise KeyError(subscription_id)
            self._subs[subscription_id].expiration = datetime.now(UTC) - timedelta(microseconds=1)
        self._purge()

    # -- notifications --------------------------------------------------------------------------------------
    def _on_change(self, change_type: str, ev: StoredEvent) -> None:
        """Store hook (called under the store lock): queue the notifications, nothing else."""
        user_id, calendar_id, event_id, change_key = ev.user_id, ev.calendar_id, ev.id, ev.change_key
        announced = ("created", "updated") if change_type == "created" else (change_type,)
        self._purge()
        with self._lock:
            targets = [s for s in self._subs.values() if s.covers(user_id, calendar_id)]
        for sub in sorted(targets, key=lambda s: s.created):
            for kind in announced:
                if kind not in sub.change_types:
                    continue
                resource = f"Users/{user_id}/Events/{event_id}"
                item: dict[str, Any] = {
                    "subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": tz.format_timestamp(sub.expiration),
                    "changeType": kind,
                    "resource": resource,
                    "resourceData": {
                        "@odata.type": EVENT_ODATA_TYPE,
                        "@odata.id": resource,
                        "@odata.etag": f'W/"{change_key}"',
                        "id": event_id,
                    },
                }
                if sub.client_state is not None:
                    item["clientState"] = sub.client_state
                item["tenantId"] = sub.tenant_id
                self.dispatcher.submit(_Job(sub.notification_url, {"value": [item]}, sub.id, "change", kind, True))

    def send_lifecycle(self, subscription_id: str, event: str) -> bool:
        """Send a lifecycle notification; ``subscriptionRemoved`` also deletes the subscription.
        Returns whether one was queued (a subscription without lifecycleNotificationUrl gets none)."""
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"lifecycle event must be one of {', '.join(LIFECYCLE_EVENTS)}")
        self._purge()
        with self._lock:
            sub = self._subs.get(subscription_id)
            if sub is None:
                raise KeyError(subscription_id)
            if event == "subscriptionRemoved":
                del self._subs[subscription_id]
        if sub.lifecycle_url is None:
            return False
        item: dict[str, Any] = {
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": tz.format_timestamp(sub.expiration),
            "tenantId": sub.tenant_id,
        }
        if sub.client_state is not None:
            item["clientState"] = sub.client_state
        item["lifecycleEvent"] = event
        item["resource"] = sub.resource
        job = _Job(sub.lifecycle_url, {"value": [item]}, sub.id, "lifecycle", event, event != "subscriptionRemoved")
        self.dispatcher.submit(job)
        return True

    def validation_records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.validation_log)

    def notification_log(self) -> list[dict[str, Any]]:
        with self.dispatcher._cond:
            return list(self.dispatcher.log)

    def reset_notification_log(self) -> None:
        with self.dispatcher._cond:
            self.dispatcher.log.clear()

    def wait_idle(self, timeout: float) -> bool:
        return self.dispatcher.wait_idle(timeout)

    def stop(self) -> None:
        self.dispatcher.stop()
