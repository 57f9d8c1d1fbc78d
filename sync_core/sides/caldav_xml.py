"""WebDAV / CalDAV XML request bodies and multistatus parsing for :mod:`caldav_side`.

Request bodies: PROPFIND (RFC 4918 9.1), sync-collection REPORT (RFC 6578 3.2) and
calendar-multiget REPORT (RFC 4791 7.9). Responses: the DAV:multistatus of RFC 4918 13 / 14.16,
with the RFC 6578 DAV:sync-token element, parsed into plain objects so the side never touches
XML. Parsing never resolves entities nor fetches anything from the network.

Hrefs and etags are normalised here too (PRODUCT.md trap 8):

- :func:`normalize_href` turns any href a server sends (absolute URL or path, percent-encoded
  one way or another) into one canonical, requestable path, so the same resource always has
  the same id;
- :func:`normalize_etag` makes quoted and unquoted etags compare equal (RFC 7232 2.3 entity-tag
  form: ``"x"`` or ``W/"x"``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes, urlsplit
from xml.sax.saxutils import escape

from lxml import etree

DAV = "DAV:"
CALDAV = "urn:ietf:params:xml:ns:caldav"
CS = "http://calendarserver.org/ns/"


def tag(ns: str, name: str) -> str:
    """Clark notation ``{ns}name`` as lxml uses it."""
    return f"{{{ns}}}{name}"


GETETAG = tag(DAV, "getetag")
SYNC_TOKEN = tag(DAV, "sync-token")
RESOURCETYPE = tag(DAV, "resourcetype")
DISPLAYNAME = tag(DAV, "displayname")
CURRENT_USER_PRINCIPAL = tag(DAV, "current-user-principal")
CURRENT_USER_PRIVILEGE_SET = tag(DAV, "current-user-privilege-set")
CALENDAR_DATA = tag(CALDAV, "calendar-data")
CALENDAR_HOME_SET = tag(CALDAV, "calendar-home-set")
SCHEDULE_INBOX_URL = tag(CALDAV, "schedule-inbox-URL")
SCHEDULE_DEFAULT_CALENDAR_URL = tag(CALDAV, "schedule-default-calendar-URL")
SUPPORTED_COMPONENTS = tag(CALDAV, "supported-calendar-component-set")

# RFC 3986 3.3 pchar minus "%" (re-encoded from the raw bytes) and "/" kept as the separator.
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
_STATUS_RE = re.compile(r"\b([1-5]\d\d)\b")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True, remove_blank_text=False)


class XMLError(ValueError):
    """The server's answer is not the XML document expected."""


# --- request bodies -----------------------------------------------------------------------

_PREFIXES = f'xmlns:d="{DAV}" xmlns:c="{CALDAV}" xmlns:cs="{CS}"'


def _prop_xml(props: Iterable[str]) -> str:
    out = []
    for clark in props:
        ns, _, name = clark[1:].partition("}")
        prefix = {DAV: "d", CALDAV: "c", CS: "cs"}.get(ns)
        if prefix is None:
            out.append(f'<x:{name} xmlns:x="{escape(ns)}"/>')
        else:
            out.append(f"<{prefix}:{name}/>")
    return "".join(out)


def propfind_body(props: Iterable[str]) -> bytes:
    """RFC 4918 9.1 PROPFIND asking for the named properties (Clark notation)."""
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<d:propfind {_PREFIXES}>'
        f"<d:prop>{_prop_xml(props)}</d:prop></d:propfind>"
    ).encode()


def sync_collection_body(token: str) -> bytes:
    """RFC 6578 3.2 sync-collection, sync-level 1, asking for DAV:getetag only.

    DAV:limit (RFC 6578 3.7 / RFC 5323 5.17) is never sent: Xandikos truncates the result when
    it gets one, and a server that truncates on its own says so with a 507 (RFC 6578 3.6).
    """
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<d:sync-collection {_PREFIXES}>'
        f"<d:sync-token>{escape(token)}</d:sync-token><d:sync-level>1</d:sync-level>"
        f"<d:prop><d:getetag/></d:prop></d:sync-collection>"
    ).encode()


def multiget_body(hrefs: Iterable[str]) -> bytes:
    """RFC 4791 7.9 calendar-multiget asking for DAV:getetag and CALDAV:calendar-data."""
    refs = "".join(f"<d:href>{escape(h)}</d:href>" for h in hrefs)
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<c:calendar-multiget {_PREFIXES}>'
        f"<d:prop><d:getetag/><c:calendar-data/></d:prop>{refs}</c:calendar-multiget>"
    ).encode()


# --- multistatus parsing ------------------------------------------------------------------


@dataclass
class DavResponse:
    """One DAV:response of a multistatus (RFC 4918 14.24), for one href.

    ``status`` is the response-level DAV:status when the server sent one (RFC 6578 uses it for
    removed members, 404, and for truncation, 507). ``props`` holds the properties that came
    back in a 2xx DAV:propstat; ``prop_status`` the status of every property named.
    """

    href: str
    status: int | None = None
    props: dict[str, etree._Element] = field(default_factory=dict)
    prop_status: dict[str, int] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        """Text content of a 2xx property (``None`` when absent)."""
        el = self.props.get(name)
        if el is None:
            return None
        return "".join(el.itertext())

    def hrefs(self, name: str) -> list[str]:
        """The DAV:href children of a 2xx property (e.g. calendar-home-set)."""
        el = self.props.get(name)
        if el is None:
            return []
        return [(h.text or "").strip() for h in el.iter(tag(DAV, "href")) if (h.text or "").strip()]

    def child_tags(self, name: str) -> set[str]:
        """Clark names of every element below a 2xx property (resourcetype, privileges)."""
        el = self.props.get(name)
        if el is None:
            return set()
        return {c.tag for c in el.iter() if c is not el and isinstance(c.tag, str)}


@dataclass
class Multistatus:
    responses: list[DavResponse]
    sync_token: str | None = None


def parse_status(text: str | None) -> int | None:
    """``HTTP/1.1 404 Not Found`` -> 404 (RFC 4918 14.28)."""
    if not text:
        return None
    m = _STATUS_RE.search(text)
    return int(m.group(1)) if m else None


def parse_xml(data: bytes) -> etree._Element:
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise XMLError(f"invalid XML from server: {exc}") from None


def parse_multistatus(data: bytes) -> Multistatus:
    """Parse an RFC 4918 13 multistatus body (RFC 6578 6.2 adds DAV:sync-token)."""
    if not data or not data.strip():
        raise XMLError("empty body where a multistatus was expected")
    root = parse_xml(data)
    if root.tag != tag(DAV, "multistatus"):
        raise XMLError(f"expected DAV:multistatus, got {root.tag}")
    out: list[DavResponse] = []
    for resp in root.findall(tag(DAV, "response")):
        out.extend(_responses_of(resp))
    token_el = root.find(SYNC_TOKEN)
    token = (token_el.text or "").strip() if token_el is not None else None
    return Multistatus(out, token or None)


class MultistatusStream:
    """A multistatus read one DAV:response at a time (``iterparse``), for listings of a whole
    collection: memory stays that of one response, not of the whole document (a 50,000-item
    PROPFIND answer parsed at once costs about 100 MB). Each :class:`DavResponse` is valid
    only until the next one is taken (its elements are freed); ``sync_token`` is known once
    the responses are exhausted (RFC 6578 6.2 puts it after them)."""

    def __init__(self, data: bytes) -> None:
        if not data or not data.strip():
            raise XMLError("empty body where a multistatus was expected")
        self._data = data
        self.sync_token: str | None = None

    def responses(self) -> Iterator[DavResponse]:
        response_tag, token_tag = tag(DAV, "response"), SYNC_TOKEN
        events = etree.iterparse(io.BytesIO(self._data), events=("start", "end"), resolve_entities=False,
                                 no_network=True, huge_tree=True, remove_blank_text=False)
        depth = 0
        try:
            for event, el in events:
                if event == "start":
                    if depth == 0 and el.tag != tag(DAV, "multistatus"):
                        raise XMLError(f"expected DAV:multistatus, got {el.tag}")
                    depth += 1
                    continue
                depth -= 1
                if depth != 1:
                    continue
                if el.tag == response_tag:
                    yield from _responses_of(el)
                elif el.tag == token_tag:
                    self.sync_token = (el.text or "").strip() or None
                el.clear()
                while el.getprevious() is not None:  # what was read is dropped as we go
                    del el.getparent()[0]
        except etree.XMLSyntaxError as exc:
            raise XMLError(f"invalid XML from server: {exc}") from None


def _responses_of(resp: etree._Element) -> list[DavResponse]:
    hrefs = [(h.text or "").strip() for h in resp.findall(tag(DAV, "href"))]
    hrefs = [h for h in hrefs if h]
    if not hrefs:
        return []
    status = parse_status(resp.findtext(tag(DAV, "status")))
    props: dict[str, etree._Element] = {}
    prop_status: dict[str, int] = {}
    for ps in resp.findall(tag(DAV, "propstat")):
        st = parse_status(ps.findtext(tag(DAV, "status")))
        prop = ps.find(tag(DAV, "prop"))
        if prop is None:
            continue
        for el in prop:
            if not isinstance(el.tag, str):
                continue
            prop_status[el.tag] = st or 0
            if st is not None and 200 <= st < 300:
                props[el.tag] = el
    # RFC 4918 14.24: several hrefs share one status; with propstat there is one href.
    return [DavResponse(href=h, status=status, props=props, prop_status=prop_status) for h in hrefs]


def error_conditions(data: bytes) -> set[str]:
    """Precondition / postcondition names of a DAV:error body (RFC 4918 16), local names only.

    Anything unparseable gives an empty set (servers answer errors with HTML too).
    """
    if not data or not data.lstrip().startswith(b"<"):
        return set()
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError:
        return set()
    if root.tag != tag(DAV, "error"):
        return set()
    return {etree.QName(c).localname for c in root if isinstance(c.tag, str)}


def error_hrefs(data: bytes, condition: str) -> list[str]:
    """DAV:href values inside the named error element (e.g. CALDAV:no-uid-conflict)."""
    try:
        root = etree.fromstring(data, _PARSER)
    except (etree.XMLSyntaxError, ValueError):
        return []
    out = []
    for c in root:
        if isinstance(c.tag, str) and etree.QName(c).localname == condition:
            out += [(h.text or "").strip() for h in c.iter(tag(DAV, "href"))]
    return [h for h in out if h]


# --- hrefs and etags ------------------------------------------------------------------------


def normalize_href(href: str) -> str:
    """One canonical, requestable path for an href (RFC 4918 8.3: absolute URL or path).

    Servers re-encode hrefs (``@`` as ``%40``, ``%20`` vs ``+``-free forms, upper/lower-case
    hex): the path is decoded to its raw bytes and re-encoded with one fixed rule, so every
    spelling of one resource gives the same string, and the string can be sent again as a URL
    path or a DAV:href. Scheme, host, query and fragment are dropped.
    """
    path = urlsplit(href.strip()).path or "/"
    return quote(unquote_to_bytes(path), safe=_PATH_SAFE)


def normalize_etag(etag: str | None) -> str | None:
    """``abc`` / ``"abc"`` -> ``"abc"``; ``W/abc`` / ``W/"abc"`` -> ``W/"abc"`` (RFC 7232 2.3)."""
    if etag is None:
        return None
    value = etag.strip()
    if not value:
        return None
    weak = value[:2] in ("W/", "w/")
    if weak:
        value = value[2:].strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    return f'W/"{value}"' if weak else f'"{value}"'


def is_collection(response: DavResponse) -> bool:
    return tag(DAV, "collection") in response.child_tags(RESOURCETYPE)
