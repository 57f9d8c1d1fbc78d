"""Graph v1.0 routes: a table of (method, path pattern, handler) and the handlers.

Adding an endpoint means adding a :class:`Route` to :data:`ROUTES` and a method to
:class:`GraphService` (``$batch`` is not a route: ``batch.py``, called by ``server.py``, runs each
inner request through the server's Graph path and so through this table). The ``/subscriptions`` routes are served by
:class:`~devtools.graphsim.subscriptions.SubscriptionService` (``GraphService.subscriptions``).

Paths are matched segment by segment, literals case-insensitively (Graph's are), after
``/v1.0``. Handlers raise :class:`~devtools.graphsim.odata.GraphError` for error answers.
Cross-cutting behaviour (authentication, throttling, the per-mailbox concurrency limit,
logging) lives in ``server.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from devtools.graphsim import events as ev_model
from devtools.graphsim import series
from devtools.graphsim import timezones as tz
from devtools.graphsim.auth import AccessToken
from devtools.graphsim.csdl import Schema, load_schema
from devtools.graphsim.odata import (
    FilterContext,
    FilterParser,
    GraphError,
    bad_request,
    normalize_extended_property_id,
    parse_expand_extended,
    parse_select,
    split_expand,
)
from devtools.graphsim.store import Calendar, CalendarExists, Store, StoredEvent, User

if TYPE_CHECKING:  # subscriptions.py imports Request/Response from here
    from devtools.graphsim.subscriptions import SubscriptionService

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000
EVENT_TYPE = "microsoft.graph.event"
JSON_CONTENT_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"


@dataclass
class Request:
    method: str
    segments: list[str]  # decoded path segments after /v1.0
    query: dict[str, str]  # first value of each parameter, names as sent
    headers: Mapping[str, str]
    body: bytes
    graph_url: str
    request_id: str
    client_request_id: str
    prefer: dict[str, str]
    app: AccessToken | None = None

    def q(self, name: str) -> str | None:
        """Query option by case-insensitive name (Graph accepts ``startdatetime`` too)."""
        low = name.lower()
        for k, v in self.query.items():
            if k.lower() == low:
                return v
        return None

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict):
            raise bad_request(
                "BadRequest",
                "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of "
                "valid JSON format.",
            )
        return data


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    pattern: tuple[str, ...]
    handler: str


def _build_routes() -> tuple[Route, ...]:
    routes = [
        Route("GET", ("users", "{u}"), "get_user"),
        Route("GET", ("users", "{u}", "calendars"), "list_calendars"),
        Route("POST", ("users", "{u}", "calendars"), "create_calendar"),
        Route("GET", ("users", "{u}", "calendar"), "get_calendar"),
        Route("GET", ("users", "{u}", "calendars", "{cid}"), "get_calendar"),
    ]
    # /users/{u}/events = the primary calendar; /calendar/... and /calendars/{cid}/... likewise.
    for sel in ((), ("calendar",), ("calendars", "{cid}")):
        base = ("users", "{u}", *sel)
        routes += [
            Route("GET", (*base, "events"), "list_events"),
            Route("POST", (*base, "events"), "create_event"),
            Route("GET", (*base, "events", "{eid}"), "get_event"),
            Route("PATCH", (*base, "events", "{eid}"), "update_event"),
            Route("DELETE", (*base, "events", "{eid}"), "delete_event"),
            Route("GET", (*base, "events", "{eid}", "instances"), "list_instances"),
            Route("GET", (*base, "calendarView"), "calendar_view"),
            Route("GET", (*base, "calendarView", "delta"), "delta"),
        ]
    routes += [
        Route("GET", ("subscriptions",), "list_subscriptions"),
        Route("POST", ("subscriptions",), "create_subscription"),
        Route("GET", ("subscriptions", "{sid}"), "get_subscription"),
        Route("PATCH", ("subscriptions", "{sid}"), "update_subscription"),
        Route("DELETE", ("subscriptions", "{sid}"), "delete_subscription"),
        Route("POST", ("subscriptions", "{sid}", "reauthorize"), "reauthorize_subscription"),
    ]
    return tuple(routes)


ROUTES = _build_routes()
_DELTA_ALIASES = frozenset({"delta", "delta()", "microsoft.graph.delta", "microsoft.graph.delta()"})
_REAUTHORIZE_ALIASES = frozenset({"reauthorize", "microsoft.graph.reauthorize"})
#: Handlers that live on ``GraphService.subscriptions`` (a SubscriptionService).
SUBSCRIPTION_HANDLERS = frozenset(r.handler for r in ROUTES if r.pattern[0] == "subscriptions")
#: Application permissions that let an app-only token read / write mailbox calendars
#: (permissions reference: Calendars.Read, Calendars.ReadWrite).
READ_ROLES = frozenset({"Calendars.Read", "Calendars.ReadWrite"})
WRITE_ROLES = frozenset({"Calendars.ReadWrite"})


def match_route(method: str, segments: list[str]) -> tuple[Route, dict[str, str]]:
    """The route for a request, or GraphError 400 (unknown segment) / 405 (method)."""
    allowed = False
    for route in ROUTES:
        params = _match(route.pattern, segments)
        if params is None:
            continue
        if route.method == method:
            return route, params
        allowed = True
    if allowed:
        raise GraphError(405, "BadRequest", f"The HTTP method '{method}' is not allowed for this resource.")
    if segments and segments[0].lower() == "me":
        raise bad_request("BadRequest", "/me request is only valid with delegated authentication flow.")
    bad = _first_unknown_segment(segments)
    raise bad_request("BadRequest", f"Resource not found for the segment '{bad}'.")


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for pat, seg in zip(pattern, segments, strict=True):
        if pat.startswith("{"):
            if not seg:
                return None
            params[pat[1:-1]] = seg
        elif pat == "delta":
            if seg.lower() not in _DELTA_ALIASES:
                return None
        elif pat == "reauthorize":
            if seg.lower() not in _REAUTHORIZE_ALIASES:
                return None
        elif pat.lower() != seg.lower():
            return None
    return params


def _first_unknown_segment(segments: list[str]) -> str:
    for n in range(len(segments), 0, -1):
        if any(_match(r.pattern[:n], segments[:n]) is not None for r in ROUTES if len(r.pattern) >= n):
            return segments[n] if n < len(segments) else segments[-1]
    return segments[0] if segments else ""


# -- delta state tokens -------------------------------------------------------------------------
class DeltaTokenExpired(Exception):
    def __init__(self, state: dict[str, Any] | None):
        super().__init__("sync state not found")
        self.state = state


class DeltaTokens:
    """Opaque, tamper-proof state tokens for calendarView delta.

    A token carries the mailbox, calendar, window, phase and version cursor (like Graph's, "state
    tokens ... encode the startDateTime and endDateTime parameters"), plus a serial number so
    :meth:`expire_all` can retire every token issued so far (Graph: "410 Gone ... SyncStateNotFound"
    once the delta token cache dropped it).
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._serial = 0
        self._floor = 0
        self.expired_with_location = False

    def issue(self, state: dict[str, Any]) -> str:
        with self._lock:
            self._serial += 1
            data = dict(state, n=self._serial)
        payload = _b64(json.dumps(data, separators=(",", ":")).encode())
        sig = _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())[:32]
        return f"{payload}.{sig}"

    def read(self, token: str) -> dict[str, Any]:
        """The state in ``token``; DeltaTokenExpired if retired, forged or from another run."""
        payload, _, sig = token.partition(".")
        good = _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())[:32]
        if not hmac.compare_digest(sig, good):
            raise DeltaTokenExpired(None)
        try:
            state: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, binascii.Error):
            raise DeltaTokenExpired(None) from None
        with self._lock:
            if state.get("n", 0) <= self._floor:
                raise DeltaTokenExpired(state)
        return state

    def expire_all(self, with_location: bool = False) -> None:
        with self._lock:
            self._floor = self._serial
            self.expired_with_location = with_location


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# -- the service ------------------------------------------------------------------------------------
_ID_CHARS = re.compile(r"^[A-Za-z0-9\-_=+/]+$")
_ORDERBY = {
    "start/datetime": lambda e: e.fields["start"].utc,
    "end/datetime": lambda e: e.fields["end"].utc,
    "createddatetime": lambda e: e.created,
    "lastmodifieddatetime": lambda e: e.modified,
    "subject": lambda e: e.fields["subject"].lower(),
}
_FILTERABLE = frozenset(
    {
        "id",
        "subject",
        "iCalUId",
        "transactionId",
        "type",
        "isAllDay",
        "showAs",
        "importance",
        "sensitivity",
        "isCancelled",
        "isOrganizer",
        "seriesMasterId",
        "start/dateTime",
        "end/dateTime",
        "createdDateTime",
        "lastModifiedDateTime",
        "singleValueExtendedProperties",
    }
)
_NO_DELTA_OPTIONS = ("$select", "$filter", "$expand", "$orderby", "$search", "$top")
#: What lists, views and renders handle: a stored event or an instance of a series.
Item = StoredEvent | series.Instance


class GraphService:
    """Handlers of the Graph v1.0 surface over one :class:`Store`."""

    def __init__(self, store: Store, schema: Schema | None = None) -> None:
        self.store = store
        self.schema = schema or load_schema()
        self.delta_tokens = DeltaTokens()
        self.default_page_size = DEFAULT_PAGE_SIZE
        self.sent_invitations: list[dict[str, Any]] = []
        self._empty_delta_pages = 0
        self._knobs = threading.Lock()
        self.subscriptions: SubscriptionService | None = None  # set by the server

    def inject_empty_delta_pages(self, count: int) -> None:
        """The next ``count`` delta answers are empty pages with a nextLink (Graph: "Pages can be
        empty"; "This is true even if the current response may contain an empty result")."""
        with self._knobs:
            self._empty_delta_pages = count

    def handle(self, req: Request) -> Response:
        route, params = match_route(req.method, req.segments)
        self._authorize(req, route)
        owner: object = self
        if route.handler in SUBSCRIPTION_HANDLERS:
            if self.subscriptions is None:
                raise GraphError(501, "NotImplemented", "Subscriptions are not enabled on this stand-in.")
            owner = self.subscriptions
        handler: Callable[[Request, dict[str, str]], Response] = getattr(owner, route.handler)
        return handler(req, params)

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _authorize(req: Request, route: Route) -> None:
        """Mailbox routes (``/users/{u}/...``) need a calendar application permission in the
        token: any of :data:`READ_ROLES` for GET, :data:`WRITE_ROLES` otherwise. Without it
        Graph answers 403 ``ErrorAccessDenied`` "Access is denied. Check credentials and try
        again." (the body quoted in microsoftgraph-postman-collections #48 and
        msgraph-sdk-javascript #378). Checked before the mailbox is looked up. ``GET
        /users/{u}`` (User.Read.All in Graph) and ``/subscriptions`` are not gated."""
        if req.app is None or route.pattern[:2] != ("users", "{u}") or len(route.pattern) == 2:
            return
        needed = READ_ROLES if req.method == "GET" else WRITE_ROLES
        # app-only tokens hold application permissions (roles), delegated ones scopes (scp)
        if not needed & (req.app.roles | req.app.scopes):
            raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")

    def _user(self, key: str) -> User:
        user = self.store.find_user(key)
        if user is None:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.")
        return user

    def _calendar(self, user: User, params: Mapping[str, str]) -> Calendar:
        cid = params.get("cid")
        if cid is None:
            return user.calendars[user.default_calendar_id]
        _check_id(cid)
        cal = user.calendars.get(cid)
        if cal is None:
            raise _not_found()
        return cal

    def _in_scope(self, user: User, params: Mapping[str, str], req: Request, ev: StoredEvent) -> Calendar:
        """The event's calendar; 404 when the path names another calendar."""
        scoped = "cid" in params or (len(req.segments) > 2 and req.segments[2].lower() == "calendar")
        if scoped and ev.calendar_id != self._calendar(user, params).id:
            raise _not_found()
        return user.calendars[ev.calendar_id]

    def _target(
        self, user: User, params: Mapping[str, str], req: Request
    ) -> tuple[Calendar, StoredEvent, series.Instance | None]:
        """The addressed event as ``(calendar, stored event, instance)``: a single instance or
        series master (instance None), or an occurrence/exception of a series (the stored event
        is its master). ``/users/{u}/events/{id}`` finds it in any calendar of the mailbox;
        ``/calendar/events/{id}`` and ``/calendars/{cid}/events/{id}`` only in that calendar.
        A cancelled occurrence is 404."""
        eid = params["eid"]
        _check_id(eid)
        ev = self.store.get_event(eid)
        if ev is not None:
            if ev.user_id != user.id:
                raise _not_found()
            return self._in_scope(user, params, req, ev), ev, None
        parsed = series.parse_instance_id(eid)
        master = self.store.get_event(parsed[0]) if parsed else None
        if parsed is None or master is None or master.user_id != user.id:
            raise _not_found()
        cal = self._in_scope(user, params, req, master)
        inst = series.find_instance(master, parsed[1])
        if inst is None:
            raise _not_found()
        return cal, master, inst

    @staticmethod
    def _collection_path(params: Mapping[str, str], req: Request, leaf: str) -> str:
        path = f"users('{params['u']}')"
        if "cid" in params:
            path += f"/calendars('{params['cid']}')"
        elif len(req.segments) > 2 and req.segments[2].lower() == "calendar":
            path += "/calendar"
        return f"{path}/{leaf}"

    def _render_options(self, req: Request, applied: list[str], *, odata_type: bool = False) -> ev_model.RenderOptions:
        zone_name, zone = "UTC", cast(tzinfo, UTC)
        pref_tz = req.prefer.get("outlook.timezone")
        if pref_tz:
            try:
                zone = tz.resolve_zone(pref_tz)
                zone_name = pref_tz
                applied.append(f'outlook.timezone="{pref_tz}"')
            except tz.UnsupportedTimeZone:
                pass
        body_type = req.prefer.get("outlook.body-content-type", "").lower() or None
        if body_type in ("text", "html"):
            applied.append(f'outlook.body-content-type="{body_type}"')
        else:
            body_type = None
        select = None
        if not odata_type:
            names = parse_select(req.q("$select"))
            if names:
                known = self.schema.properties(EVENT_TYPE)
                for n in names:
                    if n not in known:
                        raise bad_request(
                            "RequestBroker--ParseUri",
                            f"Could not find a property named '{n}' on type '{EVENT_TYPE}'.",
                        )
                select = tuple(names)
        expand = None
        expand_exceptions = False
        raw_expand = req.q("$expand")
        if not odata_type and raw_expand is not None:
            for item in split_expand(raw_expand) or [raw_expand]:
                if item.lower() == "exceptionoccurrences":
                    expand_exceptions = True
                    continue
                ids = parse_expand_extended(item) or []
                expand = (*(expand or ()), *(normalize_extended_property_id(i) or i for i in ids))
        return ev_model.RenderOptions(zone_name, zone, body_type, select, expand, odata_type, expand_exceptions)

    def _render(self, item: ev_model.EventLike, user: User, opts: ev_model.RenderOptions) -> dict[str, Any]:
        """An event's JSON; a series master with ``$expand=exceptionOccurrences`` lists its
        exceptions (the navigation property the CSDL declares on event)."""
        out = ev_model.render_event(item, user, opts)
        if opts.expand_exceptions and isinstance(item, StoredEvent) and item.event_type == "seriesMaster":
            plain = replace(opts, expand_exceptions=False)
            out["exceptionOccurrences"] = [ev_model.render_event(x, user, plain) for x in series.exceptions(item)]
        return out

    @staticmethod
    def _view_entries(
        ev: StoredEvent, user: User, opts: ev_model.RenderOptions, ws: datetime, we: datetime
    ) -> list[tuple[str, dict[str, Any]]]:
        """What a calendarView delta over [ws, we) lists for one stored event, as ``(id, json)``:
        a single instance when it overlaps; for a series with instances in the window, the
        master (full), its occurrences (thin) and its exceptions (full), by start."""
        if not ev.fields.get("recurrence"):
            return [(ev.id, ev_model.render_event(ev, user, opts))] if ev_model.overlaps(ev.fields, ws, we) else []
        instances = series.window_instances(ev, ws, we)
        if not instances:
            return []
        out = [(ev.id, ev_model.render_event(ev, user, opts))]
        for inst in instances:
            body = ev_model.render_event(inst, user, opts) if inst.is_exception else ev_model.render_thin(inst, opts)
            out.append((inst.id, body))
        return out

    @staticmethod
    def _id_preference(req: Request, applied: list[str]) -> None:
        # Immutable ids are the only ids this stand-in has, so the preference always holds.
        if req.prefer.get("idtype", "").lower() == "immutableid":
            applied.append('IdType="ImmutableId"')

    @staticmethod
    def _headers(applied: list[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if applied:
            headers["Preference-Applied"] = ", ".join(applied)
        return headers

    def _context(self, req: Request, path: str, select: tuple[str, ...] | None = None) -> str:
        if select:
            if path.endswith("/$entity"):
                path = path[: -len("/$entity")] + f"({','.join(select)})/$entity"
            else:
                path += f"({','.join(select)})"
        return f"{req.graph_url}/$metadata#{path}"

    def _validate_body(self, payload: dict[str, Any], type_name: str) -> None:
        if "multiValueExtendedProperties" in payload:
            raise GraphError(501, "NotImplemented", "graphsim does not implement multiValueExtendedProperties yet.")
        issues = self.schema.validate(payload, type_name)
        if issues:
            first = issues[0]
            if first.kind == "unknown_property":
                name = first.path.rsplit(".", 1)[-1]
                msg = (
                    f"The property '{name}' does not exist on type '{first.type_name}'. Make sure to only use "
                    "property names that are defined by the type or mark the type as open type."
                )
            else:
                msg = f"Invalid value at {first.path}: {first.message}"
            raise bad_request("RequestBodyRead", msg)

    def _record_invitation(self, user: User, ev: ev_model.EventLike, action: str) -> None:
        """Exchange sends meeting requests/updates/cancellations for organizer events with
        attendees; the sync must never cause one, so every such write is recorded here."""
        if not ev.fields["attendees"]:
            return
        self.sent_invitations.append(
            {
                "user": user.upn,
                "event_id": ev.id,
                "action": action,
                "subject": ev.fields["subject"],
                "attendees": [a["emailAddress"]["address"] for a in ev.fields["attendees"]],
                "time": tz.format_timestamp(datetime.now(UTC)),
            }
        )

    @staticmethod
    def _check_if_match(req: Request, ev: ev_model.EventLike) -> None:
        want = req.headers.get("If-Match")
        if want is None or want.strip() == "*":
            return
        value = want.strip()
        value = value[2:] if value.startswith("W/") else value
        if value.strip('"') != ev.change_key:
            raise GraphError(
                412,
                "ErrorIrresolvableConflict",
                "The send or update operation could not be performed because the change key passed in the request "
                "does not match the current change key for the item.",
            )

    @staticmethod
    def _require_edit(cal: Calendar) -> None:
        if not cal.can_edit:
            raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")

    # -- users and calendars -----------------------------------------------------------------------
    def get_user(self, req: Request, params: dict[str, str]) -> Response:
        """GET /users/{id | userPrincipalName} (default property set of user-get)."""
        user = self.store.find_user(params["u"])
        if user is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{params['u']}' does not exist or one of its queried reference-property objects are not "
                "present.",
            )
        given, _, surname = user.display_name.partition(" ")
        return Response(
            200,
            {
                "@odata.context": f"{req.graph_url}/$metadata#users/$entity",
                "businessPhones": [],
                "displayName": user.display_name,
                "givenName": given or None,
                "jobTitle": None,
                "mail": user.upn,
                "mobilePhone": None,
                "officeLocation": None,
                "preferredLanguage": "en-US",
                "surname": surname or None,
                "userPrincipalName": user.upn,
                "id": user.id,
            },
        )

    @staticmethod
    def calendar_json(user: User, cal: Calendar) -> dict[str, Any]:
        return {
            "id": cal.id,
            "name": cal.name,
            "color": cal.color,
            "hexColor": "",
            "isDefaultCalendar": cal.is_default,
            "changeKey": cal.change_key,
            "canShare": cal.can_edit,
            "canViewPrivateItems": True,
            "canEdit": cal.can_edit,
            "allowedOnlineMeetingProviders": ["teamsForBusiness"],
            "defaultOnlineMeetingProvider": "teamsForBusiness",
            "isTallyingResponses": True,
            "isRemovable": not cal.is_default,
            "owner": {"name": user.display_name, "address": user.upn},
        }

    def list_calendars(self, req: Request, params: dict[str, str]) -> Response:
        """GET /users/{u}/calendars: pages of ``$top`` (default 10, as Graph: python-o365 #1148,
        cal.com #6004) with ``@odata.nextLink`` (``$skip``)."""
        user = self._user(params["u"])
        top, skip = self._page_args(req)
        with self.store.lock:
            calendars = list(user.calendars.values())
            value = [self.calendar_json(user, c) for c in calendars[skip : skip + top]]
        context = self._context(req, f"users('{params['u']}')/calendars")
        body: dict[str, Any] = {"@odata.context": context, "value": value}
        if skip + top < len(calendars):
            body["@odata.nextLink"] = self._next_link(req, skip + top)
        return Response(200, body)

    def get_calendar(self, req: Request, params: dict[str, str]) -> Response:
        user = self._user(params["u"])
        cal = self._calendar(user, params)
        leaf = "calendar/$entity" if "cid" not in params else "calendars/$entity"
        body = {
            "@odata.context": self._context(req, f"users('{params['u']}')/{leaf}"),
            **self.calendar_json(user, cal),
        }
        return Response(200, body)

    def create_calendar(self, req: Request, params: dict[str, str]) -> Response:
        """POST /users/{u}/calendars {"name": ...}: 201, or 409 ErrorFolderExists for a taken name."""
        user = self._user(params["u"])
        payload = req.json()
        self._validate_body(payload, "microsoft.graph.calendar")
        name = payload.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bad_request("ErrorInvalidParameter", "The calendar name must not be empty.")
        try:
            cal = self.store.add_calendar(user, name.strip())
        except CalendarExists:
            raise GraphError(409, "ErrorFolderExists", "A folder with the specified name already exists.") from None
        if isinstance(payload.get("color"), str):
            cal.color = payload["color"]
        body = {
            "@odata.context": self._context(req, f"users('{params['u']}')/calendars/$entity"),
            **self.calendar_json(user, cal),
        }
        return Response(201, body)

    # -- events -----------------------------------------------------------------------------------
    def _page_args(self, req: Request) -> tuple[int, int]:
        top_raw, skip_raw = req.q("$top"), req.q("$skip")
        try:
            top = int(top_raw) if top_raw is not None else self.default_page_size
            skip = int(skip_raw) if skip_raw is not None else 0
        except ValueError:
            raise bad_request("BadRequest", "Invalid $top or $skip value.") from None
        if not 1 <= top <= MAX_PAGE_SIZE or skip < 0:
            raise bad_request("ErrorInvalidUrlQuery", f"$top must be 1..{MAX_PAGE_SIZE} and $skip at least 0.")
        return top, skip

    def _next_link(self, req: Request, skip: int) -> str:
        query = {k: v for k, v in req.query.items() if k.lower() != "$skip"}
        query["$skip"] = str(skip)
        qs = "&".join(f"{k}={quote(v, safe=chr(39) + '(),:/@{}$')}" for k, v in query.items())
        return f"{req.graph_url}/{'/'.join(quote(s, safe='@') for s in req.segments)}?{qs}"

    def _filter(self, req: Request, items: Sequence[Item], user: User) -> list[Item]:
        expr = req.q("$filter")
        if not expr:
            return list(items)
        pred = FilterParser(expr, lambda p: p in _FILTERABLE, EVENT_TYPE).parse()
        plain = ev_model.RenderOptions()
        out = []
        for e in items:
            rendered = ev_model.render_event(e, user, plain)

            def get(path: str, r: dict[str, Any] = rendered) -> Any:
                cur: Any = r
                for part in path.split("/"):
                    cur = cur.get(part) if isinstance(cur, dict) else None
                return cur

            ctx = FilterContext(
                get=get,
                collections={
                    "singleValueExtendedProperties": [{"id": cid, "value": v} for cid, (_, v) in e.extended.items()]
                },
            )
            if pred(ctx):
                out.append(e)
        return out

    @staticmethod
    def _order(req: Request, items: list[Item]) -> list[Item]:
        spec = req.q("$orderby")
        if not spec:
            return items
        keys = []
        for part in reversed([p.strip() for p in spec.split(",") if p.strip()]):
            name, _, direction = part.partition(" ")
            key = _ORDERBY.get(name.lower())
            if key is None or direction.strip().lower() not in ("", "asc", "desc"):
                raise bad_request("ErrorInvalidUrlQuery", f"graphsim cannot order by '{part}'.")
            keys.append((key, direction.strip().lower() == "desc"))
        for key, desc in keys:
            items = sorted(items, key=key, reverse=desc)
        return items

    def _event_page(
        self,
        req: Request,
        params: dict[str, str],
        user: User,
        items: Sequence[Item],
        leaf: str,
    ) -> Response:
        applied: list[str] = []
        opts = self._render_options(req, applied)
        self._id_preference(req, applied)
        top, skip = self._page_args(req)
        page = items[skip : skip + top]
        body: dict[str, Any] = {
            "@odata.context": self._context(req, self._collection_path(params, req, leaf), opts.select),
            "value": [self._render(e, user, opts) for e in page],
        }
        if skip + top < len(items):
            body["@odata.nextLink"] = self._next_link(req, skip + top)
        return Response(200, body, self._headers(applied))

    def list_events(self, req: Request, params: dict[str, str]) -> Response:
        """GET .../events: paged by ``$top`` (default 10) with ``$skip`` nextLinks; ``$select``,
        ``$filter`` (incl. ``singleValueExtendedProperties/Any(...)``), ``$expand``, ``$orderby``.

        Single instances and series masters only ("The list contains single instance meetings
        and series masters", event resource)."""
        user = self._user(params["u"])
        cal = self._calendar(user, params)
        items: list[Item] = list(self.store.live_events(cal))
        items = self._order(req, self._filter(req, items, user))
        return self._event_page(req, params, user, items, "events")

    def get_event(self, req: Request, params: dict[str, str]) -> Response:
        """GET .../events/{id}: a single instance, a series master (``$expand=exceptionOccurrences``
        lists its exceptions), an occurrence or an exception (404 once cancelled)."""
        user = self._user(params["u"])
        _, ev, inst = self._target(user, params, req)
        item: Item = inst if inst is not None else ev
        applied: list[str] = []
        opts = self._render_options(req, applied)
        self._id_preference(req, applied)
        body = {
            "@odata.context": self._context(req, self._collection_path(params, req, "events/$entity"), opts.select),
            **self._render(item, user, opts),
        }
        return Response(200, body, self._headers(applied, {"ETag": ev_model.etag(item)}))

    def create_event(self, req: Request, params: dict[str, str]) -> Response:
        """POST .../events. A ``transactionId`` already used in this mailbox returns the event it
        created (201) instead of creating a second one; ``iCalUId`` is always server-set."""
        user = self._user(params["u"])
        cal = self._calendar(user, params)
        self._require_edit(cal)
        payload = req.json()
        self._validate_body(payload, EVENT_TYPE)
        tx = payload.get("transactionId") or None
        with self.store.lock:
            existing = self.store.find_by_transaction(user, tx) if tx else None
            if existing is not None:
                ev = existing
            else:
                fields = ev_model.apply_write(None, payload)
                extended = ev_model.apply_extended({}, payload.get("singleValueExtendedProperties"))
                ev = self.store.create_event(cal, fields, extended, tx)
                self._record_invitation(user, ev, "create")
        return self._event_answer(req, params, user, ev, 201)

    def _event_answer(self, req: Request, params: dict[str, str], user: User, ev: Item, status: int) -> Response:
        applied: list[str] = []
        opts = self._render_options(req, applied)
        self._id_preference(req, applied)
        body = {
            "@odata.context": self._context(req, self._collection_path(params, req, "events/$entity")),
            **self._render(ev, user, opts),
        }
        return Response(status, body, self._headers(applied, {"ETag": ev_model.etag(ev)}))

    def update_event(self, req: Request, params: dict[str, str]) -> Response:
        """PATCH .../events/{id}; ``If-Match`` with a stale etag answers 412 ErrorIrresolvableConflict.

        * A series master: a different ``recurrence``, ``start`` or ``end`` drops every exception
          and cancellation (the occurrences are those of the new pattern); other fields keep them.
        * An occurrence becomes an exception with the written values (``recurrence``: 400); a new
          start on or past the date of a neighbouring instance: 400 ErrorOccurrenceCrossingBoundary.
          The master gets a new changeKey. An instance's etag is the master's.
        """
        user = self._user(params["u"])
        payload = req.json()
        self._validate_body(payload, EVENT_TYPE)
        with self.store.lock:
            cal, ev, inst = self._target(user, params, req)
            self._require_edit(cal)
            if inst is not None:
                updated = self._update_instance(req, user, cal, ev, inst, payload)
                return self._event_answer(req, params, user, updated, 200)
            self._check_if_match(req, ev)
            before = ev.fields
            fields = ev_model.apply_write(before, payload)
            extended = ev_model.apply_extended(ev.extended, payload.get("singleValueExtendedProperties"))
            reset = bool(before.get("recurrence")) and any(
                fields.get(k) != before.get(k) for k in ("recurrence", "start", "end")
            )
            self.store.update_event(cal, ev, fields, extended, reset_overrides=reset or not fields.get("recurrence"))
            self._record_invitation(user, ev, "update")
        return self._event_answer(req, params, user, ev, 200)

    def _update_instance(
        self,
        req: Request,
        user: User,
        cal: Calendar,
        master: StoredEvent,
        inst: series.Instance,
        payload: dict[str, Any],
    ) -> series.Instance:
        if payload.get("recurrence") is not None:
            raise ev_model.validation_failure("recurrence can only be set on a series master or a single instance.")
        self._check_if_match(req, inst)
        fields = ev_model.apply_write(inst.fields, payload)
        fields["recurrence"] = None
        if fields["start"] != inst.fields["start"]:
            series.check_move(master, inst.original, fields["start"])
        extended = ev_model.apply_extended(inst.extended, payload.get("singleValueExtendedProperties"))
        self.store.put_override(cal, master, inst.original, inst.day.isoformat(), fields, extended)
        updated = series.find_instance(master, inst.original)
        assert updated is not None
        self._record_invitation(user, updated, "update")
        return updated

    def delete_event(self, req: Request, params: dict[str, str]) -> Response:
        """DELETE .../events/{id}: a master deletes the whole series; an occurrence or exception
        is cancelled (listed in the master's ``cancelledOccurrences``; the master changes)."""
        user = self._user(params["u"])
        with self.store.lock:
            cal, ev, inst = self._target(user, params, req)
            self._require_edit(cal)
            if inst is not None:
                self._check_if_match(req, inst)
                self.store.put_override(cal, ev, inst.original, inst.day.isoformat(), None, {})
                self._record_invitation(user, inst, "cancel")
                return Response(204)
            self._check_if_match(req, ev)
            self.store.delete_event(cal, ev)
            self._record_invitation(user, ev, "cancel")
        return Response(204)

    def list_instances(self, req: Request, params: dict[str, str]) -> Response:
        """GET .../events/{id}/instances?startDateTime&endDateTime (event-list-instances).

        A series master: its occurrences and exceptions overlapping the window (full properties,
        cancelled ones left out), exceptions first, then the occurrences by start (the order of
        the documented example), paged like the event list. Another event: an empty collection
        (the page only describes masters). Missing bounds: 400 ErrorInvalidParameter."""
        user = self._user(params["u"])
        ws, we = self._window(req)
        with self.store.lock:
            _, ev, inst = self._target(user, params, req)
            items: list[Item] = []
            if inst is None and ev.event_type == "seriesMaster":
                found = series.window_instances(ev, ws, we)
                items = [x for x in found if x.is_exception]
                items += [x for x in found if not x.is_exception]
            items = self._order(req, self._filter(req, items, user))
        leaf = f"events('{quote(params['eid'], safe='')}')/instances"
        return self._event_page(req, params, user, items, leaf)

    # -- calendarView -------------------------------------------------------------------------------
    @staticmethod
    def _window(req: Request) -> tuple[datetime, datetime]:
        start, end = req.q("startDateTime"), req.q("endDateTime")
        if not start or not end:
            raise bad_request(
                "ErrorInvalidParameter",
                "This request requires a time window specified by the query string parameters StartDateTime and "
                "EndDateTime.",
            )
        try:
            ws, we = tz.parse_query_datetime(start), tz.parse_query_datetime(end)
        except ValueError:
            raise bad_request(
                "ErrorInvalidParameter", "The parameter 'StartDateTime' or 'EndDateTime' is invalid."
            ) from None
        if we <= ws:
            raise bad_request("ErrorInvalidParameter", "The EndDateTime must be later than the StartDateTime.")
        return ws, we

    def calendar_view(self, req: Request, params: dict[str, str]) -> Response:
        """GET .../calendarView?startDateTime&endDateTime: "the occurrences, exceptions, and single
        instances of events" intersecting the window (list-calendarview), by start; series masters
        are not listed themselves."""
        user = self._user(params["u"])
        cal = self._calendar(user, params)
        ws, we = self._window(req)
        items: list[Item] = []
        with self.store.lock:
            for e in self.store.live_events(cal):
                if e.fields.get("recurrence"):
                    items.extend(series.window_instances(e, ws, we))
                elif ev_model.overlaps(e.fields, ws, we):
                    items.append(e)
        items.sort(key=lambda e: (e.fields["start"].utc, e.seq, e.original_start or e.fields["start"].utc))
        items = self._order(req, self._filter(req, items, user))
        return self._event_page(req, params, user, items, "calendarView")

    # -- calendarView delta -------------------------------------------------------------------------
    def delta(self, req: Request, params: dict[str, str]) -> Response:
        """GET .../calendarView/delta (event-delta, delta-query-events).

        * Round 1 (no token): every event in the window, ``Prefer: odata.maxpagesize`` per page,
          ``@odata.nextLink`` ($skiptoken) until the last page, which has ``@odata.deltaLink``.
          A series with instances in the window is its master (full), its occurrences (thin:
          id, type, seriesMasterId, start, end, etag) and its exceptions (full).
        * Following a deltaLink: events changed since, in full; deletions, and changed events
          outside the window (moved out, or created/updated there), as
          ``{"@odata.type", "id", "@removed": {"reason": "deleted"}}``. A changed series is its
          master plus its instances in the window, and ``@removed`` for each instance the client
          saw at its cursor that is gone (cancelled, regenerated, moved out, series deleted).
        * ``$select``, ``$filter``, ``$expand``, ``$orderby``, ``$search``, ``$top``: 400.
        * Retired tokens: 410 Gone ``SyncStateNotFound`` (optionally with a ``Location`` that
          starts a new round).

        Page cursors are ``(a, i)``: the creation seq (round 1) or version (later rounds) of the
        last event listed, and how many of its items were listed (a series spans pages).
        """
        user = self._user(params["u"])
        cal = self._calendar(user, params)
        bad = [o for o in _NO_DELTA_OPTIONS if req.q(o) is not None]
        if bad:
            raise bad_request(
                "ErrorInvalidUrlQuery",
                "The following parameters are not supported with change tracking over the 'CalendarView' "
                f"resource: '{', '.join(bad)}'.",
            )
        skiptoken, deltatoken = req.q("$skiptoken"), req.q("$deltatoken")
        token = skiptoken or deltatoken
        if token:
            try:
                state = self.delta_tokens.read(token)
            except DeltaTokenExpired as exc:
                raise self._sync_state_gone(req, exc.state) from None
            if state.get("u") != user.id or state.get("c") != cal.id:
                raise bad_request("ErrorInvalidParameter", "The state token does not belong to this calendar view.")
            if deltatoken and not skiptoken:
                if state.get("ph") != "d":
                    raise bad_request("ErrorInvalidParameter", "The $deltatoken value is not a delta token.")
                # a new round: everything stamped after the saved cursor up to now
                state = {**state, "ph": "c", "from": state["v"], "to": cal.version, "a": state["v"], "i": 0}
        else:
            ws, we = self._window(req)
            state = {
                "u": user.id,
                "c": cal.id,
                "ws": ws.isoformat(),
                "we": we.isoformat(),
                "ph": "i",
                "v": cal.version,
                "a": 0,
                "i": 0,
            }

        applied: list[str] = []
        opts = self._render_options(req, applied, odata_type=True)
        self._id_preference(req, applied)
        size = self.default_page_size
        hint = req.prefer.get("odata.maxpagesize")
        if hint and hint.isdigit() and int(hint) > 0:
            size = min(int(hint), MAX_PAGE_SIZE)
            applied.append(f"odata.maxpagesize={size}")
        applied.append("odata.track-changes")

        path = "/".join(quote(s, safe="@") for s in req.segments)
        link_base = f"{req.graph_url}/{path}"
        body: dict[str, Any] = {"@odata.context": f"{req.graph_url}/$metadata#Collection(event)"}

        with self._knobs:
            empty = self._empty_delta_pages > 0
            if empty:
                self._empty_delta_pages -= 1
        if empty:
            body["@odata.nextLink"] = f"{link_base}?$skiptoken={self.delta_tokens.issue(state)}"
            body["value"] = []
            return Response(200, body, self._headers(applied))

        ws = datetime.fromisoformat(state["ws"])
        we = datetime.fromisoformat(state["we"])
        a, i = int(state["a"]), int(state.get("i", 0))
        with self.store.lock:
            groups: Iterable[tuple[int, list[dict[str, Any]]]]
            if state["ph"] == "i":
                groups = (
                    (e.seq, [body for _, body in self._view_entries(e, user, opts, ws, we)])
                    for e in self.store.live_events(cal)
                    if e.seq > a or (i and e.seq == a)
                )
            else:
                changes = self.store.changes(cal, a - 1 if i else a, state["to"])
                groups = (
                    (version, self._changed_entries(cal, eid, e, user, opts, ws, we, int(state["from"])))
                    for version, eid, e in changes
                )
            value, cursor = _take_page(groups, a, i, size)
        if cursor is not None:
            next_state = {**state, "a": cursor[0], "i": cursor[1]}
        elif state["ph"] == "i":
            next_state = {**state, "ph": "d", "a": 0, "i": 0}
        else:
            next_state = {k: v for k, v in state.items() if k not in ("from", "to")}
            next_state.update(ph="d", v=state["to"], a=0, i=0)
        if cursor is not None:
            body["@odata.nextLink"] = f"{link_base}?$skiptoken={self.delta_tokens.issue(next_state)}"
        else:
            body["@odata.deltaLink"] = f"{link_base}?$deltatoken={self.delta_tokens.issue(next_state)}"
        body["value"] = value
        return Response(200, body, self._headers(applied))

    def _changed_entries(
        self,
        cal: Calendar,
        eid: str,
        ev: StoredEvent | None,
        user: User,
        opts: ev_model.RenderOptions,
        ws: datetime,
        we: datetime,
        since: int,
    ) -> list[dict[str, Any]]:
        """The delta items for one event changed (or deleted) after version ``since``: what it
        shows in the window now, then ``@removed`` for every id the client saw at ``since`` that
        is not there any more. An event with nothing in the window is ``@removed`` itself (a
        deletion, or a change outside the window)."""
        now = self._view_entries(ev, user, opts, ws, we) if ev is not None else []
        now_ids = {item_id for item_id, _ in now}
        before = cal.state_at(eid, since)
        gone = [x for x in series.window_ids(eid, before, ws, we) if x not in now_ids] if before else []
        if not now and eid not in gone:
            gone.insert(0, eid)
        return [body for _, body in now] + [ev_model.removed_item(x) for x in gone]

    def _sync_state_gone(self, req: Request, state: dict[str, Any] | None) -> GraphError:
        headers: dict[str, str] = {}
        if state is not None and self.delta_tokens.expired_with_location:
            # "410 Gone and a Location header containing a request URL with an empty $deltaToken
            # (same as the initial query)" -- for a calendar view: the window again.
            path = "/".join(quote(s, safe="@") for s in req.segments)
            start = quote(datetime.fromisoformat(state["ws"]).strftime("%Y-%m-%dT%H:%M:%SZ"))
            end = quote(datetime.fromisoformat(state["we"]).strftime("%Y-%m-%dT%H:%M:%SZ"))
            headers["Location"] = f"{req.graph_url}/{path}?startDateTime={start}&endDateTime={end}"
        return GraphError(
            410,
            "SyncStateNotFound",
            "The sync state generation is not found. The delta token is expired and the data must be synchronized "
            "again.",
            headers,
        )


def _take_page(
    groups: Iterable[tuple[int, list[dict[str, Any]]]], a: int, i: int, size: int
) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
    """Up to ``size`` items from ``groups`` (``(key, items)`` by ascending key), resuming after
    cursor ``(a, i)``: group ``a`` from its ``i``-th item, then the groups after it. Returns the
    page and the cursor to resume from, or None when nothing is left."""
    page: list[dict[str, Any]] = []
    last: tuple[int, int] | None = None
    for key, items in groups:
        first = i if key == a else 0
        for idx in range(first, len(items)):
            if len(page) == size:
                return page, last
            page.append(items[idx])
            last = (key, idx + 1)
    return page, None


def _check_id(value: str) -> None:
    if not _ID_CHARS.match(value):
        raise bad_request("ErrorInvalidIdMalformed", "Id is malformed.")


def _not_found() -> GraphError:
    return GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
