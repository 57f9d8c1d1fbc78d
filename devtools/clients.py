""""Another client" on each side: what a person's Outlook or CalDAV app would do.

Used by the demo and the scenario tests to seed, edit and inspect calendars independently of
``sync_core`` (plain requests / raw HTTP, no davbridge code), so a test sees what is really on
each side rather than what the sync believes.
"""

from __future__ import annotations

import sys
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests

from devtools.servers import CalDAVServer, HTTPResult

_NS = {"d": "DAV:", "c": "urn:ietf:params:xml:ns:caldav"}


def _sensitive(origin: str, *texts: Any) -> None:
    """Event contents written here must never appear in a log: tell the test suite's check
    (tests/log_secrecy.py) when it is loaded; a no-op elsewhere (the demo)."""
    registry = sys.modules.get("log_secrecy")
    if registry is not None:
        for text in texts:
            registry.sensitive_text(text, origin)


def _payload_texts(payload: dict[str, Any]) -> tuple[Any, Any]:
    body = payload.get("body")
    return payload.get("subject"), body.get("content") if isinstance(body, dict) else None


class GraphUserApp:
    """A Graph client with its own app-only token, acting as a person editing in Outlook."""

    def __init__(self, graph_url: str, authority_host: str, tenant: str, client_id: str, secret: str,
                 ca_path: str) -> None:
        self.graph_url = graph_url.rstrip("/")
        self.session = requests.Session()
        self.ca_path = ca_path  # passed per request: REQUESTS_CA_BUNDLE would override session.verify
        reply = self.session.post(f"{authority_host}/{tenant}/oauth2/v2.0/token", verify=ca_path, data={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
            "scope": "https://graph.microsoft.com/.default"}, timeout=10)
        reply.raise_for_status()
        self.session.headers["Authorization"] = "Bearer " + reply.json()["access_token"]
        self.session.headers["Prefer"] = 'IdType="ImmutableId"'

    def _call(self, method: str, path: str, **kw: Any) -> requests.Response:
        reply = self.session.request(method, self.graph_url + path, timeout=10, verify=self.ca_path, **kw)
        reply.raise_for_status()
        return reply

    def create(self, upn: str, subject: str, start: str, end: str, *, tz: str = "UTC", body: str = "",
               location: str = "", all_day: bool = False) -> dict[str, Any]:
        payload = {"subject": subject, "start": {"dateTime": start, "timeZone": tz},
                   "end": {"dateTime": end, "timeZone": tz}, "isAllDay": all_day,
                   "body": {"contentType": "text", "content": body}, "location": {"displayName": location}}
        _sensitive("event title/body written by GraphUserApp.create", subject, body)
        return dict(self._call("POST", f"/users/{upn}/events", json=payload).json())

    def create_raw(self, upn: str, payload: dict[str, Any]) -> dict[str, Any]:
        _sensitive("event title/body written by GraphUserApp.create_raw", *_payload_texts(payload))
        return dict(self._call("POST", f"/users/{upn}/events", json=payload).json())

    def get(self, upn: str, event_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/users/{upn}/events/{event_id}").json())

    def calendars(self, upn: str) -> list[dict[str, Any]]:
        return self._all_pages(f"/users/{upn}/calendars")

    def instances(self, upn: str, event_id: str, start: str, end: str) -> list[dict[str, Any]]:
        """Occurrences and exceptions of a series between two ISO instants (all pages)."""
        return self._all_pages(f"/users/{upn}/events/{event_id}/instances?startDateTime={start}&endDateTime={end}")

    def _all_pages(self, path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        url: str | None = self.graph_url + path
        while url:
            page = self.session.get(url, timeout=10, verify=self.ca_path)
            page.raise_for_status()
            data = page.json()
            out.extend(data["value"])
            url = data.get("@odata.nextLink")
        return out

    def update(self, upn: str, event_id: str, **fields: Any) -> dict[str, Any]:
        _sensitive("event title/body written by GraphUserApp.update", *_payload_texts(fields))
        return dict(self._call("PATCH", f"/users/{upn}/events/{event_id}", json=fields).json())

    def delete(self, upn: str, event_id: str) -> None:
        self._call("DELETE", f"/users/{upn}/events/{event_id}")

    def events(self, upn: str) -> list[dict[str, Any]]:
        """Every event of the primary calendar (all pages)."""
        return self._all_pages(f"/users/{upn}/calendar/events?$top=50")


@dataclass
class CalDAVObject:
    href: str
    etag: str
    ics: str

    def prop(self, name: str) -> str | None:
        """First value of a VEVENT property (unfolded, parameters dropped); enough for checks."""
        lines = self.ics.replace("\r\n ", "").replace("\n ", "").splitlines()
        for line in lines:
            key = line.split(":", 1)[0].split(";", 1)[0].upper()
            if key == name.upper() and ":" in line:
                value = line.split(":", 1)[1]
                return (value.replace("\\n", "\n").replace("\\N", "\n").replace("\\,", ",")
                        .replace("\\;", ";").replace("\\\\", "\\"))
        return None


class CalDAVUserApp:
    """A CalDAV client doing raw WebDAV requests, acting as a person's calendar app."""

    def __init__(self, server: CalDAVServer, calendar_url: str) -> None:
        self.server = server
        self.calendar_url = calendar_url if calendar_url.endswith("/") else calendar_url + "/"

    def _req(self, method: str, url: str, **kw: Any) -> HTTPResult:
        return self.server.request(method, url, **kw)

    def put(self, summary: str, dtstart: str, dtend: str, *, uid: str | None = None, tzid: str | None = None,
            description: str = "", location: str = "", href: str | None = None, etag: str | None = None,
            extra: str = "") -> str:
        uid = uid or f"{uuid.uuid4()}@caldav.example"
        when = (f"DTSTART;TZID={tzid}:{dtstart}\r\nDTEND;TZID={tzid}:{dtend}" if tzid else
                f"DTSTART:{dtstart}\r\nDTEND:{dtend}")
        if len(dtstart) == 8:
            when = f"DTSTART;VALUE=DATE:{dtstart}\r\nDTEND;VALUE=DATE:{dtend}"
        ics = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//devtools//person//EN\r\nBEGIN:VEVENT\r\n"
               f"UID:{uid}\r\nDTSTAMP:20261101T000000Z\r\nLAST-MODIFIED:{_now_stamp()}\r\n{when}\r\n"
               f"SUMMARY:{_esc(summary)}\r\n" + (f"DESCRIPTION:{_esc(description)}\r\n" if description else "")
               + (f"LOCATION:{_esc(location)}\r\n" if location else "") + extra
               + "END:VEVENT\r\nEND:VCALENDAR\r\n")
        _sensitive("event title/body written by CalDAVUserApp.put", summary, description)
        target = href or urljoin(self.calendar_url, uid.replace("@", "-") + ".ics")
        headers = {"Content-Type": "text/calendar; charset=utf-8"}
        headers.update({"If-Match": etag} if etag else {"If-None-Match": "*"})
        reply = self._req("PUT", target, body=ics.encode(), headers=headers)
        if reply.status not in (200, 201, 204):
            raise RuntimeError(f"PUT {target} answered {reply.status}")
        return target

    def put_raw(self, name: str, ics: str) -> str:
        registry = sys.modules.get("log_secrecy")
        if registry is not None:
            registry.sensitive_ical(ics, "event title/body written by CalDAVUserApp.put_raw")
        target = urljoin(self.calendar_url, name)
        reply = self._req("PUT", target, body=ics.encode(), headers={"Content-Type": "text/calendar"})
        if reply.status not in (200, 201, 204):
            raise RuntimeError(f"PUT {target} answered {reply.status}")
        return target

    def delete(self, href: str) -> None:
        reply = self._req("DELETE", urljoin(self.calendar_url, href))
        if reply.status not in (200, 204, 404):
            raise RuntimeError(f"DELETE answered {reply.status}")

    def objects(self) -> list[CalDAVObject]:
        """Every calendar object with its data (RFC 4791 7.8 calendar-query, no filter on time)."""
        body = ('<?xml version="1.0" encoding="utf-8"?><c:calendar-query xmlns:d="DAV:" '
                'xmlns:c="urn:ietf:params:xml:ns:caldav"><d:prop><d:getetag/><c:calendar-data/></d:prop>'
                '<c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"/></c:comp-filter>'
                "</c:filter></c:calendar-query>")
        reply = self._req("REPORT", self.calendar_url, body=body.encode(),
                          headers={"Depth": "1", "Content-Type": "application/xml; charset=utf-8"})
        if reply.status != 207:
            raise RuntimeError(f"calendar-query answered {reply.status}")
        out = []
        for resp in ET.fromstring(reply.body).findall("d:response", _NS):
            href = resp.findtext("d:href", default="", namespaces=_NS)
            etag = resp.findtext(".//d:getetag", default="", namespaces=_NS)
            data = resp.findtext(".//c:calendar-data", default="", namespaces=_NS)
            if data:
                out.append(CalDAVObject(href, etag, data))
        return out

    def by_summary(self, summary: str) -> list[CalDAVObject]:
        return [o for o in self.objects() if o.prop("SUMMARY") == summary]


def _esc(text: str) -> str:
    """RFC 5545 3.3.11 TEXT escaping."""
    return text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def _now_stamp() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
