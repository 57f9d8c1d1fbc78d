"""Onboarding checks: can davbridge reach both sides of a user, and which calendars are there?

An admin onboards a user as (Microsoft 365 UPN, CalDAV URL, user name, app password). Both
sides are checked at once, and every failure becomes one line the admin can act on (the
``reason``) instead of an exception:

Microsoft Graph (:func:`check_graph_mailbox`), from what ``GraphClient`` / ``GraphAuth`` raise
(``graph_http.py``: the status and Graph's error code are in the message, ``HTTP 403
ErrorAccessDenied``; token endpoint errors carry the ``AADSTSnnnnn`` code of Entra ID):

- 404, ``ErrorInvalidUser``, ``MailboxNotEnabledForRESTAPI`` -> :data:`UNKNOWN_MAILBOX`;
- 403 ``ErrorAccessDenied`` / ``Authorization_RequestDenied`` -> :data:`MISSING_PERMISSION`
  (Exchange answers the same when an application access policy excludes the mailbox);
- token endpoint errors (AADSTS7000215 wrong secret, AADSTS700016 unknown app, AADSTS65001 no
  consent, AADSTS90002 unknown tenant, ...) and a refused token (401) -> ``Graph sign-in
  failed: <what to fix>``;
- a certificate / TLS failure (token endpoint or Graph) -> ``TLS error talking to Microsoft
  Graph: <reason>``; a connection failure -> ``Microsoft Graph not reachable: <reason>``.

CalDAV (:func:`check_caldav`): ``CalDAV 401: ...`` (credentials refused; the client sends
Basic auth with the first request, see :func:`~sync_core.sides.caldav_side.open_caldav`, since
Cyrus answers an anonymous PROPFIND with 207), ``CalDAV 403: ...``, ``CalDAV server not
reachable: ...``, ``TLS error: ...``, ``calendar not found: <url>``, ``no event calendar
found``. Calendars come with their read-only flag (RFC 3744 current-user-privilege-set, see
:func:`~sync_core.sides.caldav_side.discover_calendars`).

Reasons never hold a password, client secret or token: they are built from fixed texts, status
codes, error codes and URLs without user info, and scrubbed of the secrets involved on top.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

from sync_core.errors import AuthenticationFailed, DavbridgeError, NotFound, SideError, Throttled
from sync_core.sides import caldav_xml as dx
from sync_core.sides.caldav_side import CalendarInfo, calendar_info, discover_calendars, open_caldav
from sync_core.sides.graph_http import Conflict, GraphAuth, GraphClient

log = logging.getLogger("davbridge.checks")

#: One calendar collection of the CalDAV account (url, display_name, read_only, components,
#: is_default, privileges; ``supports_events``).
CalDAVCalendarInfo = CalendarInfo

UNKNOWN_MAILBOX: Final = "unknown mailbox: {upn} (no such user, or no Exchange Online licence)"
MISSING_PERMISSION: Final = (
    "missing Graph permission: grant the application permission Calendars.ReadWrite and admin consent"
)
CALDAV_401: Final = "CalDAV 401: the server refused user name / app password"
NO_EVENT_CALENDAR: Final = "no event calendar found"

_UNKNOWN_MAILBOX_CODES: Final = frozenset({"ErrorInvalidUser", "MailboxNotEnabledForRESTAPI"})
_PERMISSION_CODES: Final = frozenset({"ErrorAccessDenied", "Authorization_RequestDenied"})
# GraphError.describe(): "Graph GET /v1.0/users/x/calendar: HTTP 403 ErrorAccessDenied: ..."
_GRAPH_STATUS: Final = re.compile(r": HTTP (\d{3}) ([^\s:\[]+)")
_AADSTS: Final = re.compile(r"AADSTS(\d{4,8})")
_HTTP_STATUS: Final = re.compile(r"HTTP (\d{3})(/\d{3})?")
_SSL_REASON: Final = re.compile(r"\[SSL(?:: [A-Z0-9_]+)?\] ([^()\[\]']{3,200}?)\s*(?:\(_ssl|$|\)|')")

#: Entra ID sign-in error codes (AADSTS error code reference) -> what the admin has to fix.
_SIGN_IN_FIXES: Final[dict[str, str]] = {
    "7000215": "the client secret is wrong: store the Value (not the Secret ID) of a current client secret "
    "of the app registration",
    "7000222": "the client secret has expired: create a new client secret for the app registration and store it",
    "700016": "no application with this client ID in the tenant: check the client (application) ID and the "
    "tenant ID",
    "65001": "the app has no admin consent: grant admin consent for its application permission Calendars.ReadWrite",
    "90002": "the tenant was not found: check the tenant (directory) ID",
    "900023": "the tenant ID is not valid: use the directory ID (a GUID) or a verified domain",
    "700027": "the certificate was refused: upload its public certificate to the app registration and store the "
    "matching private key",
    "700024": "the client assertion is outside its valid time: check this machine's clock",
    "7000218": "no client secret or certificate was sent: store one for the app registration",
    "7000112": "the application is disabled in the tenant: enable its enterprise application",
    "700023": "the app registration cannot be used in this tenant: check the tenant ID",
}


# --- Microsoft Graph ------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphCalendarInfo:
    """One calendar of a mailbox (Graph ``calendar`` resource)."""

    id: str
    name: str
    can_edit: bool
    is_default: bool
    owner: str | None = None

    @staticmethod
    def from_graph(item: dict[str, Any]) -> GraphCalendarInfo:
        owner = item.get("owner")
        return GraphCalendarInfo(
            id=str(item.get("id") or ""),
            name=str(item.get("name") or ""),
            can_edit=bool(item.get("canEdit")),
            is_default=bool(item.get("isDefaultCalendar")),
            owner=str(owner["address"]) if isinstance(owner, dict) and owner.get("address") else None,
        )


def _user_path(upn: str) -> str:
    return "/users/" + quote(upn, safe="@")


def check_graph_mailbox(graph: GraphClient, upn: str) -> str | None:
    """None when the app can read ``upn``'s primary calendar (``GET /users/{upn}/calendar``:
    needs only the calendar permission, unlike ``GET /users/{upn}``); else the reason.

    Graph errors are the client's (its retries included: a TLS or network failure on Graph
    itself is retried up to ``graph.max_attempts`` times; one on the token endpoint is not).
    """
    try:
        graph.get_json(_user_path(upn) + "/calendar", params={"$select": "id"})
    except DavbridgeError as exc:
        reason = graph_failure_reason(exc, upn, graph)
        log.info("graph mailbox check failed: %s", reason)
        return reason
    return None


def graph_failure_reason(exc: BaseException, upn: str, graph: GraphClient | None = None) -> str:
    """The admin-facing reason for an error ``GraphClient`` / ``GraphAuth`` raised for ``upn``."""
    text = _scrub(str(exc), _graph_secrets(graph))
    tls = _tls_reason(exc)
    if tls is not None:
        return f"TLS error talking to Microsoft Graph: {tls}"
    found = _GRAPH_STATUS.search(text)
    status, code = (int(found.group(1)), found.group(2)) if found else (None, "")
    if code in _UNKNOWN_MAILBOX_CODES or (status == 404 and isinstance(exc, NotFound)):
        return UNKNOWN_MAILBOX.format(upn=upn)
    if code in _PERMISSION_CODES or status == 403:
        return MISSING_PERMISSION
    if isinstance(exc, AuthenticationFailed):
        return f"Graph sign-in failed: {_sign_in_fix(exc, text, status, code)}"
    if isinstance(exc, Throttled):
        return "Microsoft Graph is throttling this app: check again in a few minutes"
    unreachable = _unreachable_reason(exc)
    if unreachable is not None:
        return f"Microsoft Graph not reachable: {unreachable}"
    return f"Microsoft Graph error: {text}"


def _sign_in_fix(exc: BaseException, text: str, status: int | None, code: str) -> str:
    if status == 401:
        return (
            f"Microsoft Graph refused the app's access token ({code or 'HTTP 401'}): check the tenant ID "
            "(the mailbox's tenant) and that the token is for Microsoft Graph"
        )
    # msal's own message may hide Entra's code one level down (an unknown tenant fails OIDC
    # discovery with a ValueError quoting AADSTS90002): search the whole chain for it.
    for err in _chain(exc):
        found = _AADSTS.search(str(err))
        if found:
            return _SIGN_IN_FIXES.get(found.group(1), text)
    if "authority" in text.lower():
        return f"the authority (tenant) was not accepted: check the tenant ID and the authority host ({text})"
    return text


def _graph_secrets(graph: GraphClient | None) -> list[str]:
    auth = getattr(graph, "auth", None)
    if isinstance(auth, GraphAuth):
        creds = auth.credentials
        return [s for s in (creds.client_secret, creds.private_key_passphrase) if s]
    return []


def graph_calendars(graph: GraphClient, upn: str) -> list[GraphCalendarInfo]:
    """Every calendar of the mailbox (*List calendars*, ``GET /users/{upn}/calendars``, every
    page: Graph answers 10 per page by default). Graph errors raise as ``GraphClient`` raises
    them (:func:`graph_failure_reason` turns one into a reason)."""
    params = {"$select": "id,name,canEdit,isDefaultCalendar,owner"}
    items = graph.iter_items(_user_path(upn) + "/calendars", params=params)
    return [GraphCalendarInfo.from_graph(item) for item in items]


def create_graph_calendar(graph: GraphClient, upn: str, name: str) -> GraphCalendarInfo:
    """A new calendar ``name`` in the mailbox (*Create calendar*, ``POST /users/{upn}/calendars``),
    or the existing one of that name: Graph answers 409 ``ErrorFolderExists`` for a taken name
    (compared case-insensitively, as Exchange folder names are), so a retry, or a second
    onboarding, returns the calendar made the first time."""
    wanted = name.strip()
    if not wanted:
        raise ValueError("a calendar name must not be empty")
    try:
        created = graph.request_json("POST", _user_path(upn) + "/calendars", json={"name": wanted})
    except Conflict as exc:
        if exc.code != "ErrorFolderExists":
            raise
        key = wanted.casefold()
        existing = [c for c in graph_calendars(graph, upn) if c.name.strip().casefold() == key]
        if not existing:
            raise SideError(
                f"Graph says a folder named {wanted!r} already exists in {upn}'s mailbox, but no calendar of "
                "that name is listed: rename or remove that folder"
            ) from None
        return next((c for c in existing if c.name.strip() == wanted), existing[0])
    return GraphCalendarInfo.from_graph(created)


# --- CalDAV ---------------------------------------------------------------------------------


def check_caldav(
    url: str,
    username: str,
    password: str,
    *,
    calendar_url: str | None = None,
    timeout: float = 30,
    verify: bool | str = True,
) -> tuple[list[CalDAVCalendarInfo], str | None]:
    """The account's event calendars (each with ``read_only`` and ``is_default``) and None, or
    what is wrong.

    With ``calendar_url``, that calendar must exist on the same server (``https://host:port``
    as ``url``; credentials are never sent elsewhere) and hold events; when it lies outside the
    user's calendar home (a calendar shared with the user) it is added to the list. When only
    ``calendar_url`` is wrong, the discovered calendars come back with the reason, so the admin
    can pick one. ``verify`` is the TLS verification flag or a CA bundle path.
    """
    try:
        client = open_caldav(url, username, password, timeout=timeout, verify=verify)
        found = discover_calendars(client)
    except DavbridgeError as exc:
        reason = _scrub(caldav_failure_reason(exc, url, timeout=timeout), [password])
        log.info("caldav check failed: %s", reason)
        return [], reason
    if not calendar_url:
        return found, (None if found else NO_EVENT_CALENDAR)
    shown = _without_userinfo(calendar_url)
    if _origin(calendar_url) != _origin(url):
        return found, f"calendar not found: {shown} (it is not on the CalDAV server {_origin(url)})"
    if any(_same_collection(c.url, calendar_url) for c in found):
        return found, None
    try:
        info = calendar_info(client, calendar_url)
    except AuthenticationFailed as exc:
        status = _auth_status(exc)
        if status == 401:
            return found, CALDAV_401
        return found, f"calendar not found: {shown} (HTTP {status or 403}: the account may not read it)"
    except DavbridgeError as exc:
        return found, _scrub(caldav_failure_reason(exc, calendar_url, timeout=timeout), [password])
    if info is None:
        return found, f"calendar not found: {shown}"
    if not info.supports_events:
        kinds = ", ".join(sorted(info.components)) or "no components"
        return found, f"calendar not found: {shown} (it holds {kinds}, not events)"
    return [*found, info], None


def caldav_failure_reason(exc: BaseException, url: str, *, timeout: float | None = None) -> str:
    """The admin-facing reason for an error ``open_caldav`` / ``discover_calendars`` raised."""
    origin = _origin(url)
    tls = _tls_reason(exc)
    if tls is not None:
        return f"TLS error: {tls} ({origin})"
    if isinstance(exc, AuthenticationFailed):
        status = _auth_status(exc)
        if status == 403:
            return (
                f"CalDAV 403: the server denied access to {_without_userinfo(url)}: the URL belongs to another "
                "user or is not this account's CalDAV URL"
            )
        return CALDAV_401
    text = str(exc)
    if "did not answer in time" in text or any("timeout" in type(e).__name__.lower() for e in _chain(exc)):
        waited = f" in {timeout:g} s" if timeout else ""
        return f"CalDAV server not reachable: no answer{waited} ({origin})"
    unreachable = _unreachable_reason(exc)
    if unreachable is not None:
        return f"CalDAV server not reachable: {unreachable} ({origin})"
    if any(type(e).__name__ == "NotFoundError" for e in _chain(exc)) or "(HTTP 404)" in text:
        return f"CalDAV URL not found: {_without_userinfo(url)} (HTTP 404): give the server's CalDAV URL"
    return f"CalDAV check failed: {text}"


def _auth_status(exc: BaseException) -> int | None:
    """401 or 403 from an AuthenticationFailed (its message, else caldav's AuthorizationError)."""
    found = _HTTP_STATUS.search(str(exc))
    if found and not found.group(2):
        return int(found.group(1))
    for err in _chain(exc):
        reason = str(getattr(err, "reason", "") or "").lower()
        if "unauthorized" in reason:
            return 401
        if "forbidden" in reason:
            return 403
    return 401 if found else None


def _same_collection(a: str, b: str) -> bool:
    return dx.normalize_href(a).rstrip("/") == dx.normalize_href(b).rstrip("/")


# --- helpers ----------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes / contexts (``raise ... from None`` keeps ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _tls_reason(exc: BaseException) -> str | None:
    """The TLS failure behind ``exc`` (``certificate verify failed: ...``), or None."""
    tls_seen = False
    for err in _chain(exc):
        if isinstance(err, ssl.SSLCertVerificationError) and err.verify_message:
            return f"certificate verify failed: {err.verify_message}"
        name = type(err).__name__
        if isinstance(err, ssl.SSLError) or "ssl" in name.lower() or "TLS error" in str(err):
            tls_seen = True
            found = _SSL_REASON.search(str(err))
            if found:
                return found.group(1).strip().rstrip(":")
    return "TLS handshake failed" if tls_seen else None


def _unreachable_reason(exc: BaseException) -> str | None:
    """``Connection refused`` / ``Name or service not known`` / ``timed out`` behind ``exc``."""
    connection_seen = False
    for err in _chain(exc):
        name = type(err).__name__
        if isinstance(err, TimeoutError) or "timeout" in name.lower():
            return "timed out"
        if isinstance(err, OSError) and err.strerror:
            return str(err.strerror)
        if "connection" in name.lower() or "cannot connect" in str(err) or "unreachable" in str(err):
            connection_seen = True
    return "connection failed" if connection_seen else None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}{port}"


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
