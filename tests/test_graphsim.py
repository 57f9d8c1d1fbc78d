"""devtools.graphsim: the local Microsoft Graph / identity platform stand-in, over real HTTPS.

Each test starts its own stand-in on 127.0.0.1 (port 0, state in tmp_path). Note: requests
ignores ``Session.verify`` when ``REQUESTS_CA_BUNDLE`` is set (requests#3829), so the sessions
here set ``trust_env = False``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from devtools.graphsim import GraphSim
from devtools.graphsim.csdl import load_schema
from devtools.graphsim.schemas import (
    validate_aad_error,
    validate_error_body,
    validate_token_response,
    validate_user,
)

TENANT = "7d0c4f4e-1111-4a4a-9b9b-000000000001"
CLIENT = "0a1b2c3d-2222-4b4b-8c8c-000000000002"
SECRET = "not-a-real-secret~42"
UPN = "ada@contoso.test"
SCOPE = ["https://graph.microsoft.com/.default"]
WINDOW = "startDateTime=2026-11-01T00:00:00Z&endDateTime=2026-12-01T00:00:00Z"
EXT_ID = "String {d0e9f1a2-3b4c-4d5e-8f70-8192a3b4c5d6} Name davbridgePairId"


def new_session(sim: GraphSim) -> requests.Session:
    s = requests.Session()
    s.verify = sim.ca_path
    s.trust_env = False
    return s


class Graph:
    """A thin authenticated client: ``g.get("/users/x")`` -> requests.Response."""

    def __init__(self, sim: GraphSim, token: str) -> None:
        self.sim = sim
        self.s = new_session(sim)
        self.s.headers["Authorization"] = f"Bearer {token}"

    def url(self, path: str) -> str:
        return path if path.startswith("https://") else self.sim.graph_url + path

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.s.get(self.url(path), timeout=10, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.s.post(self.url(path), json=body, timeout=10, **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> requests.Response:
        return self.s.patch(self.url(path), json=body, timeout=10, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.s.delete(self.url(path), timeout=10, **kw)


def secret_app(sim: GraphSim, secret: str = SECRET) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        CLIENT,
        client_credential=secret,
        authority=f"{sim.authority_host}/{TENANT}",
        instance_discovery=False,
        http_client=new_session(sim),
    )


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[GraphSim]:
    with GraphSim(host="127.0.0.1", port=0, state_dir=tmp_path / "sim") as server:
        server.register_app(TENANT, CLIENT, client_secret=SECRET)
        server.add_user(UPN, "Ada Lovelace")
        yield server


@pytest.fixture
def g(sim: GraphSim) -> Graph:
    result = secret_app(sim).acquire_token_for_client(SCOPE)
    assert "access_token" in result, result
    return Graph(sim, result["access_token"])


@pytest.fixture(scope="module")
def certificate() -> tuple[str, str, str]:
    """(private key PEM, certificate PEM, SHA-1 thumbprint hex) of a self-signed RSA certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "davbridge test app")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return key_pem, cert_pem, cert.fingerprint(hashes.SHA1()).hex()


def event_body(subject: str, day: int = 24, hour: int = 9, zone: str = "UTC", **extra: Any) -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {"dateTime": f"2026-11-{day:02d}T{hour:02d}:00:00", "timeZone": zone},
        "end": {"dateTime": f"2026-11-{day:02d}T{hour + 1:02d}:00:00", "timeZone": zone},
        **extra,
    }


def create(g: Graph, subject: str, path: str = f"/users/{UPN}/events", **kw: Any) -> dict[str, Any]:
    resp = g.post(path, event_body(subject, **kw))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def follow_delta(g: Graph, url: str, page_size: int | None = None) -> tuple[list[list[dict[str, Any]]], str]:
    """All pages of one delta round: (pages, deltaLink)."""
    headers = {"Prefer": f"odata.maxpagesize={page_size}"} if page_size else {}
    pages = []
    while True:
        resp = g.get(url, headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages.append(body["value"])
        if "@odata.deltaLink" in body:
            assert "@odata.nextLink" not in body
            return pages, body["@odata.deltaLink"]
        url = body["@odata.nextLink"]


# --- authentication ---------------------------------------------------------------------------
def test_msal_client_secret_token_works_against_graph(sim: GraphSim) -> None:
    result = secret_app(sim).acquire_token_for_client(SCOPE)
    assert result["token_type"] == "Bearer" and result["expires_in"] > 3000
    me = Graph(sim, result["access_token"]).get(f"/users/{UPN}")
    assert me.status_code == 200
    assert me.json()["userPrincipalName"] == UPN and me.json()["displayName"] == "Ada Lovelace"
    paths = [r["path"] for r in sim.request_log]
    assert paths[:2] == [f"/{TENANT}/v2.0/.well-known/openid-configuration", f"/{TENANT}/oauth2/v2.0/token"]
    assert sim.request_log[-1]["user"] == UPN and sim.request_log[-1]["app"] == CLIENT


@pytest.mark.parametrize("style", ["thumbprint", "public_certificate"])
def test_msal_certificate_credential_works(sim: GraphSim, certificate: tuple[str, str, str], style: str) -> None:
    key_pem, cert_pem, sha1 = certificate
    sim.register_app(TENANT, "cert-app", certificate_pem=cert_pem)
    credential = {"private_key": key_pem, "thumbprint": sha1}  # RS256 + x5t
    if style == "public_certificate":
        credential = {"private_key": key_pem, "public_certificate": cert_pem}  # PS256 + x5t#S256
    app = msal.ConfidentialClientApplication(
        "cert-app",
        client_credential=credential,
        authority=f"{sim.authority_host}/{TENANT}",
        instance_discovery=False,
        http_client=new_session(sim),
    )
    result = app.acquire_token_for_client(SCOPE)
    assert "access_token" in result, result
    assert Graph(sim, result["access_token"]).get(f"/users/{UPN}/calendar").status_code == 200


def test_a_certificate_signed_by_another_key_is_refused(sim: GraphSim, certificate: tuple[str, str, str]) -> None:
    _, cert_pem, sha1 = certificate
    sim.register_app(TENANT, "cert-app", certificate_pem=cert_pem)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    app = msal.ConfidentialClientApplication(
        "cert-app",
        client_credential={"private_key": other_pem, "thumbprint": sha1},
        authority=f"{sim.authority_host}/{TENANT}",
        instance_discovery=False,
        http_client=new_session(sim),
    )
    result = app.acquire_token_for_client(SCOPE)
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]


def test_wrong_secret_unknown_app_and_bad_scope_are_refused(sim: GraphSim) -> None:
    result = secret_app(sim, "wrong").acquire_token_for_client(SCOPE)
    assert result["error"] == "invalid_client"
    assert result["error_description"].startswith("AADSTS7000215:")
    assert "wrong" not in str(result) and SECRET not in str(result)
    s = new_session(sim)
    token_url = f"{sim.authority_host}/{TENANT}/oauth2/v2.0/token"
    form = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x", "scope": SCOPE[0]}
    resp = s.post(token_url, data=form)
    assert (resp.status_code, resp.json()["error"]) == (400, "unauthorized_client")
    resp = s.post(token_url, data={**form, "client_id": CLIENT, "client_secret": SECRET, "scope": "User.Read"})
    assert (resp.status_code, resp.json()["error_codes"]) == (400, [1002012])
    resp = s.get(f"{sim.authority_host}/no-such-tenant/v2.0/.well-known/openid-configuration")
    assert resp.status_code == 400 and resp.json()["error_codes"] == [90002]
    with pytest.raises(ValueError):
        msal.ConfidentialClientApplication(
            CLIENT,
            client_credential=SECRET,
            authority=f"{sim.authority_host}/no-such-tenant",
            instance_discovery=False,
            http_client=new_session(sim),
        )
    assert all(SECRET not in str(r) for r in sim.request_log + sim.response_log)


def test_graph_needs_a_valid_unexpired_token(sim: GraphSim, g: Graph) -> None:
    anonymous = new_session(sim).get(f"{sim.graph_url}/users/{UPN}")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert anonymous.json()["error"]["message"] == "Access token is empty."
    assert "WWW-Authenticate" in anonymous.headers
    assert Graph(sim, "made-up").get(f"/users/{UPN}").status_code == 401
    sim.token_lifetime = -1  # tokens issued from now on are already expired
    expired = secret_app(sim).acquire_token_for_client(SCOPE)["access_token"]
    resp = Graph(sim, expired).get(f"/users/{UPN}")
    assert resp.status_code == 401 and "expired" in resp.json()["error"]["message"]
    assert g.get(f"/users/{UPN}").status_code == 200  # the earlier token still works


# --- users and calendars --------------------------------------------------------------------------
def test_users_and_calendars(sim: GraphSim, g: Graph) -> None:
    user_id = sim.store.find_user(UPN).id  # type: ignore[union-attr]
    assert g.get(f"/users/{user_id.upper()}").json()["userPrincipalName"] == UPN  # ids are GUIDs
    missing = g.get("/users/nobody@contoso.test")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "Request_ResourceNotFound")
    assert g.get("/users/nobody@contoso.test/events").json()["error"]["code"] == "ErrorInvalidUser"

    primary = g.get(f"/users/{UPN}/calendar").json()
    assert primary["name"] == "Calendar" and primary["isDefaultCalendar"] and primary["canEdit"]
    assert primary["owner"] == {"name": "Ada Lovelace", "address": UPN}
    shared = sim.add_calendar(UPN, "Team (read-only)", can_edit=False)
    created = g.post(f"/users/{UPN}/calendars", {"name": "Sync target"})
    assert created.status_code == 201 and created.json()["canEdit"] is True
    listed = g.get(f"/users/{UPN}/calendars").json()["value"]
    assert [c["name"] for c in listed] == ["Calendar", "Team (read-only)", "Sync target"]
    assert [c["isDefaultCalendar"] for c in listed] == [True, False, False]
    assert g.get(f"/users/{UPN}/calendars/{shared}").json()["canEdit"] is False
    dup = g.post(f"/users/{UPN}/calendars", {"name": "sync TARGET"})
    assert (dup.status_code, dup.json()["error"]["code"]) == (409, "ErrorFolderExists")
    denied = g.post(f"/users/{UPN}/calendars/{shared}/events", event_body("x"))
    assert (denied.status_code, denied.json()["error"]["code"]) == (403, "ErrorAccessDenied")
    assert g.get(f"/users/{UPN}/calendars/{shared}X").json()["error"]["code"] == "ErrorItemNotFound"
    assert g.get("/me/events").status_code == 400
    unknown = g.get(f"/users/{UPN}/mailFolders")
    assert unknown.json()["error"]["message"] == "Resource not found for the segment 'mailFolders'."


# --- events -----------------------------------------------------------------------------------------
def test_event_crud_etags_and_times(sim: GraphSim, g: Graph) -> None:
    body = event_body(
        "Design review",
        zone="W. Europe Standard Time",
        body={"contentType": "text", "content": "Agenda:\n1. sync"},
        location={"displayName": "Room 4"},
        categories=["Blue category"],
        iCalUId="client-chosen-uid",
        isReminderOn=False,
    )
    resp = g.post(f"/users/{UPN}/calendars/{sim.default_calendar_id(UPN)}/events", body)
    assert resp.status_code == 201, resp.text
    ev = resp.json()
    assert ev["start"] == {"dateTime": "2026-11-24T08:00:00.0000000", "timeZone": "UTC"}  # 09:00 CET
    assert ev["originalStartTimeZone"] == "W. Europe Standard Time"
    assert ev["iCalUId"] != "client-chosen-uid" and ev["iCalUId"].startswith("040000008200E00074C5B7101A82E008")
    assert ev["type"] == "singleInstance" and ev["isOrganizer"] and ev["isReminderOn"] is False
    assert ev["@odata.etag"] == f'W/"{ev["changeKey"]}"'
    assert ev["body"]["contentType"] == "html" and "Agenda:<br>" in ev["body"]["content"]
    assert ev["bodyPreview"] == "Agenda: 1. sync"
    assert ev["locations"][0]["displayName"] == "Room 4"
    assert ev["@odata.context"].startswith(f"{sim.graph_url}/$metadata#users('{UPN}')/calendars('")

    url = f"/users/{UPN}/events/{ev['id']}"
    tokyo = g.get(url, headers={"Prefer": 'outlook.timezone="Tokyo Standard Time", outlook.body-content-type="text"'})
    assert tokyo.json()["start"] == {"dateTime": "2026-11-24T17:00:00.0000000", "timeZone": "Tokyo Standard Time"}
    assert tokyo.json()["body"] == {"contentType": "text", "content": "Agenda:\n1. sync"}
    assert 'outlook.timezone="Tokyo Standard Time"' in tokyo.headers["Preference-Applied"]
    assert tokyo.headers["ETag"] == ev["@odata.etag"]
    assert (
        g.get(url, headers={"Prefer": 'IdType="ImmutableId"'}).headers["Preference-Applied"] == 'IdType="ImmutableId"'
    )
    assert g.get(url.upper()).status_code in (400, 404)  # ids are case-sensitive

    patched = g.patch(url, {"subject": "Design review (moved)", "location": {"displayName": "Room 5"}})
    assert patched.status_code == 200
    p = patched.json()
    assert p["subject"] == "Design review (moved)" and p["categories"] == ["Blue category"]
    assert p["changeKey"] != ev["changeKey"] and p["@odata.etag"] != ev["@odata.etag"]
    assert p["lastModifiedDateTime"] > ev["lastModifiedDateTime"] and p["iCalUId"] == ev["iCalUId"]
    assert [loc["displayName"] for loc in p["locations"]] == ["Room 5"]

    stale = g.patch(url, {"subject": "lost update"}, headers={"If-Match": ev["@odata.etag"]})
    assert (stale.status_code, stale.json()["error"]["code"]) == (412, "ErrorIrresolvableConflict")
    assert g.get(url).json()["subject"] == "Design review (moved)"
    fresh = g.patch(url, {"subject": "ok"}, headers={"If-Match": p["@odata.etag"]})
    assert fresh.status_code == 200
    assert g.delete(url, headers={"If-Match": p["@odata.etag"]}).status_code == 412
    assert g.delete(url).status_code == 204
    gone = g.get(url)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "ErrorItemNotFound")
    assert g.delete(url).status_code == 404


def test_event_write_validation_like_graph(g: Graph) -> None:
    path = f"/users/{UPN}/events"
    bad_zone = g.post(path, event_body("x", zone="Mars/Olympus_Mons"))
    assert bad_zone.status_code == 400
    assert bad_zone.json()["error"]["code"] == "TimeZoneNotSupportedException"
    assert "'Mars/Olympus_Mons'" in bad_zone.json()["error"]["message"]
    iana = g.post(path, event_body("iana", zone="America/New_York")).json()
    assert iana["originalStartTimeZone"] == "Eastern Standard Time"
    assert iana["start"]["dateTime"] == "2026-11-24T14:00:00.0000000"
    assert g.post(path, event_body("x", zone="Etc/UTC")).status_code == 400  # not on the documented list
    typo = g.post(path, {**event_body("x"), "subjekt": "typo"})
    assert (typo.status_code, typo.json()["error"]["code"]) == (400, "RequestBodyRead")
    assert "'subjekt' does not exist on type 'microsoft.graph.event'" in typo.json()["error"]["message"]
    assert g.post(path, {**event_body("x"), "showAs": "away"}).status_code == 400
    backwards = {**event_body("x"), "end": {"dateTime": "2026-11-24T08:00:00", "timeZone": "UTC"}}
    assert g.post(path, backwards).json()["error"]["code"] == "ErrorCalendarEndDateIsEarlierThanStartDate"
    not_midnight = g.post(path, {**event_body("x"), "isAllDay": True})
    assert (not_midnight.status_code, not_midnight.json()["error"]["code"]) == (400, "ErrorPropertyValidationFailure")
    all_day = {
        "subject": "Holiday",
        "isAllDay": True,
        "start": {"dateTime": "2026-11-26T00:00:00", "timeZone": "Pacific Standard Time"},
        "end": {"dateTime": "2026-11-27T00:00:00", "timeZone": "Pacific Standard Time"},
    }
    made = g.post(path, all_day)
    assert made.status_code == 201
    assert made.json()["start"] == {"dateTime": "2026-11-26T00:00:00.0000000", "timeZone": "UTC"}  # no shift
    assert g.s.post(g.url(path), data="{not json", timeout=10).json()["error"]["code"] == "BadRequest"


def test_transaction_id_makes_create_idempotent(sim: GraphSim, g: Graph) -> None:
    body = event_body("Once", transactionId="pair-7f3a")
    first = g.post(f"/users/{UPN}/events", body)
    second = g.post(f"/users/{UPN}/calendar/events", {**body, "subject": "Once (retry)"})
    assert first.status_code == second.status_code == 201
    assert second.json()["id"] == first.json()["id"] and second.json()["subject"] == "Once"
    assert second.json()["transactionId"] == "pair-7f3a"
    assert len(g.get(f"/users/{UPN}/events").json()["value"]) == 1
    other = g.post(f"/users/{UPN}/events", event_body("Twice", transactionId="pair-8b4c"))
    assert other.json()["id"] != first.json()["id"]
    sim.add_user("bob@contoso.test")  # the same transactionId in another mailbox is another event
    bobs = g.post("/users/bob@contoso.test/events", body)
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]


def test_list_paging_select_filter_and_extended_properties(g: Graph) -> None:
    path = f"/users/{UPN}/events"
    tagged = create(g, "tagged", singleValueExtendedProperties=[{"id": EXT_ID, "value": "pair-1"}])
    for i in range(11):
        create(g, f"plain {i}", day=2 + i)
    page1 = g.get(path).json()
    assert len(page1["value"]) == 10 and "$skip=10" in page1["@odata.nextLink"]
    page2 = g.get(page1["@odata.nextLink"]).json()
    assert len(page2["value"]) == 2 and "@odata.nextLink" not in page2
    assert "singleValueExtendedProperties" not in page1["value"][0]

    small = g.get(path, params={"$top": "3", "$select": "subject,start"}).json()
    assert len(small["value"]) == 3
    assert set(small["value"][0]) == {"@odata.etag", "id", "subject", "start"}
    assert small["@odata.context"].endswith("/events(subject,start)")
    assert g.get(path, params={"$select": "subjekt"}).status_code == 400

    flt = f"singleValueExtendedProperties/Any(ep: ep/id eq '{EXT_ID}' and ep/value eq 'pair-1')"
    found = g.get(path, params={"$filter": flt}).json()["value"]
    assert [e["id"] for e in found] == [tagged["id"]]
    lower = flt.replace("{d0e9f1a2-3b4c-4d5e-8f70-8192a3b4c5d6}", "{D0E9F1A2-3B4C-4D5E-8F70-8192A3B4C5D6}")
    assert [e["id"] for e in g.get(path, params={"$filter": lower}).json()["value"]] == [tagged["id"]]
    assert g.get(path, params={"$filter": flt.replace("pair-1", "pair-2")}).json()["value"] == []
    assert len(g.get(path, params={"$filter": "subject eq 'plain 3'"}).json()["value"]) == 1
    assert g.get(path, params={"$filter": "nonsense eq 1"}).status_code == 400

    expand = {"$expand": f"singleValueExtendedProperties($filter=id eq '{EXT_ID}')"}
    got = g.get(f"{path}/{tagged['id']}", params=expand).json()
    assert got["singleValueExtendedProperties"] == [{"id": EXT_ID, "value": "pair-1"}]
    g.patch(f"{path}/{tagged['id']}", {"singleValueExtendedProperties": [{"id": EXT_ID, "value": "pair-9"}]})
    assert (
        g.get(f"{path}/{tagged['id']}", params=expand).json()["singleValueExtendedProperties"][0]["value"] == "pair-9"
    )
    assert g.get(f"{path}/{tagged['id']}", params={"$expand": "singleValueExtendedProperties"}).status_code == 400
    bad_ext = g.post(path, event_body("x", singleValueExtendedProperties=[{"id": "nonsense", "value": "1"}]))
    assert bad_ext.status_code == 400


def test_attendees_are_recorded_as_sent_invitations(sim: GraphSim, g: Graph) -> None:
    alone = create(g, "focus time")
    g.patch(f"/users/{UPN}/events/{alone['id']}", {"subject": "focus"})
    assert sim.sent_invitations == []
    meeting = create(g, "1:1", attendees=[{"emailAddress": {"address": "bob@contoso.test"}, "type": "required"}])
    assert meeting["attendees"][0]["status"]["response"] == "none"
    assert meeting["attendees"][0]["emailAddress"] == {"name": "bob@contoso.test", "address": "bob@contoso.test"}
    g.patch(f"/users/{UPN}/events/{meeting['id']}", {"subject": "1:1 (new time)"})
    g.delete(f"/users/{UPN}/events/{meeting['id']}")
    sent = sim.sent_invitations
    assert [(s["action"], s["event_id"], s["attendees"]) for s in sent] == [
        ("create", meeting["id"], ["bob@contoso.test"]),
        ("update", meeting["id"], ["bob@contoso.test"]),
        ("cancel", meeting["id"], ["bob@contoso.test"]),
    ]
    sim.reset_sent_invitations()
    assert sim.sent_invitations == []


def test_recurring_events_are_stored_as_series_masters(g: Graph) -> None:
    rec = {
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["tuesday"]},
        "range": {"type": "noEnd", "startDate": "2026-11-24"},
    }
    master = create(g, "Weekly", recurrence=rec, zone="Pacific Standard Time")
    assert master["type"] == "seriesMaster"
    assert master["recurrence"]["pattern"] == {
        "type": "weekly", "interval": 1, "month": 0, "dayOfMonth": 0, "daysOfWeek": ["tuesday"],
        "firstDayOfWeek": "sunday", "index": "first",
    }  # fmt: skip
    assert master["recurrence"]["range"]["recurrenceTimeZone"] == "Pacific Standard Time"
    assert master["cancelledOccurrences"] == []
    bad = g.post(
        f"/users/{UPN}/events", event_body("x", recurrence={"pattern": {"type": "weekly"}, "range": rec["range"]})
    )
    assert bad.status_code == 400
    # calendarView lists occurrences, never the master (tests/test_graphsim_recurrence.py has more)
    later = g.get(f"/users/{UPN}/calendarView?startDateTime=2027-03-01T00:00:00Z&endDateTime=2027-03-08T00:00:00Z")
    assert [(e["type"], e["seriesMasterId"]) for e in later.json()["value"]] == [("occurrence", master["id"])]


# --- calendarView and delta ----------------------------------------------------------------------------
def test_calendar_view_window_and_paging(g: Graph) -> None:
    path = f"/users/{UPN}/calendarView"
    missing = g.get(path)
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, "ErrorInvalidParameter")
    create(g, "before", day=1, hour=0)  # 2026-11-01 00:00-01:00: starts at the window start
    create(g, "inside", day=15)
    create(g, "late", day=30, hour=22)
    g.post(path.replace("calendarView", "events"), {
        "subject": "december",
        "start": {"dateTime": "2026-12-01T00:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-01T01:00:00", "timeZone": "UTC"},
    })  # fmt: skip
    got = g.get(f"{path}?{WINDOW}").json()
    assert [e["subject"] for e in got["value"]] == ["before", "inside", "late"]
    offset = g.get(f"{path}?startDateTime=2026-11-15T10:30:00%2B01:00&endDateTime=2026-11-15T10:45:00%2B01:00")
    assert [e["subject"] for e in offset.json()["value"]] == ["inside"]  # 09:30-09:45 UTC overlaps 09-10
    paged = g.get(f"{path}?{WINDOW}&$top=2").json()
    assert len(paged["value"]) == 2
    rest = g.get(paged["@odata.nextLink"]).json()
    assert [e["subject"] for e in rest["value"]] == ["late"]


def test_delta_initial_round_pages_then_incremental_changes(sim: GraphSim, g: Graph) -> None:
    cal = sim.add_calendar(UPN, "Synced")
    events_path = f"/users/{UPN}/calendars/{cal}/events"
    ids = [create(g, f"e{i}", path=events_path, day=2 + i)["id"] for i in range(7)]
    create(g, "outside", path=events_path, day=1).get("id")
    g.patch(f"{events_path}/{ids[0]}", {"start": {"dateTime": "2026-10-01T09:00:00", "timeZone": "UTC"},
                                        "end": {"dateTime": "2026-10-01T10:00:00", "timeZone": "UTC"}})  # fmt: skip
    create(g, "primary calendar is another view")
    delta_url = f"/users/{UPN}/calendars/{cal}/calendarView/delta?{WINDOW.replace('11-01', '11-02')}"

    pages, delta_link = follow_delta(g, delta_url, page_size=2)
    assert [len(p) for p in pages] == [2, 2, 2]
    assert sorted(e["id"] for p in pages for e in p) == sorted(ids[1:])
    assert all(e["@odata.type"] == "#microsoft.graph.event" and "subject" in e for p in pages for e in p)
    assert "$deltatoken=" in delta_link and "startDateTime" not in delta_link

    # nothing changed: an empty page with a new deltaLink
    pages, delta_link = follow_delta(g, delta_link)
    assert pages == [[]]

    new = create(g, "new", path=events_path, day=20)
    g.patch(f"{events_path}/{ids[1]}", {"subject": "e1 renamed"})
    g.delete(f"{events_path}/{ids[2]}")
    g.patch(f"{events_path}/{ids[3]}", {"start": {"dateTime": "2027-01-05T09:00:00", "timeZone": "UTC"},
                                        "end": {"dateTime": "2027-01-05T10:00:00", "timeZone": "UTC"}})  # fmt: skip
    create(g, "created outside", path=events_path, day=1)
    pages, delta_link = follow_delta(g, delta_link, page_size=3)
    items = [e for p in pages for e in p]
    full = {e["id"]: e for e in items if "@removed" not in e}
    removed = [e["id"] for e in items if "@removed" in e]
    assert set(full) == {new["id"], ids[1]}
    assert full[ids[1]]["subject"] == "e1 renamed" and full[new["id"]]["start"]["timeZone"] == "UTC"
    assert {ids[2], ids[3]} <= set(removed) and len(removed) == 3  # + the one created outside
    assert all(e["@removed"] == {"reason": "deleted"} and set(e) == {"@odata.type", "id", "@removed"}
               for e in items if "@removed" in e)  # fmt: skip
    assert g.get(f"{events_path}/{ids[3]}").status_code == 200  # out of the window, not deleted
    assert g.get(f"{events_path}/{ids[2]}").status_code == 404

    sim.inject_empty_delta_pages(1)
    g.patch(f"{events_path}/{ids[4]}", {"subject": "after an empty page"})
    pages, _ = follow_delta(g, delta_link)
    assert pages[0] == [] and [e["subject"] for e in pages[1]] == ["after an empty page"]


def test_delta_rejects_query_options_and_needs_a_window(g: Graph) -> None:
    base = f"/users/{UPN}/calendarView/delta"
    assert g.get(base).json()["error"]["code"] == "ErrorInvalidParameter"
    for option in ("$select=subject", "$filter=subject eq 'x'", "$expand=attachments", "$top=1"):
        resp = g.get(f"{base}?{WINDOW}&{option}")
        assert resp.status_code == 400, option
    ok = g.get(f"{base}?{WINDOW}", headers={"Prefer": 'odata.maxpagesize=5, IdType="ImmutableId"'})
    applied = ok.headers["Preference-Applied"]
    assert "odata.maxpagesize=5" in applied and 'IdType="ImmutableId"' in applied
    link = ok.json()["@odata.deltaLink"]
    other_cal = g.post(f"/users/{UPN}/calendars", {"name": "Other"}).json()["id"]
    token = link.split("$deltatoken=")[1]
    stolen = g.get(f"/users/{UPN}/calendars/{other_cal}/calendarView/delta?$deltatoken={token}")
    assert stolen.status_code == 400
    assert g.get(f"{base}?$deltatoken={token[:-3]}xyz").status_code == 410  # forged


@pytest.mark.parametrize("with_location", [False, True])
def test_expired_delta_tokens_answer_410(sim: GraphSim, g: Graph, with_location: bool) -> None:
    for day in (3, 4, 5):
        create(g, f"d{day}", day=day)
    first = g.get(f"/users/{UPN}/calendarView/delta?{WINDOW}", headers={"Prefer": "odata.maxpagesize=1"}).json()
    next_link = first["@odata.nextLink"]
    _, delta_link = follow_delta(g, next_link)
    sim.expire_delta_tokens(with_location=with_location)
    for url in (delta_link, next_link):
        gone = g.get(url)
        assert gone.status_code == 410
        assert gone.json()["error"]["code"] == "SyncStateNotFound"
        assert ("Location" in gone.headers) is with_location
    if with_location:
        restart = g.get(g.get(delta_link).headers["Location"])  # a new initial round over the same window
        assert restart.status_code == 200
        assert {e["subject"] for e in restart.json()["value"]} == {"d3", "d4", "d5"}
    # tokens issued after the expiry work again
    pages, _ = follow_delta(g, f"/users/{UPN}/calendarView/delta?{WINDOW}")
    assert len(pages[0]) == 3


# --- throttling --------------------------------------------------------------------------------------------
def test_injected_throttling_answers_429_and_503_with_retry_after(sim: GraphSim, g: Graph) -> None:
    sim.inject_throttle(2, retry_after=1.5)
    sim.inject_throttle(1, retry_after=3, status=503)
    answers = [g.get(f"/users/{UPN}/calendar") for _ in range(4)]
    assert [r.status_code for r in answers] == [429, 429, 503, 200]
    assert [r.headers.get("Retry-After") for r in answers[:3]] == ["1.5", "1.5", "3"]
    assert answers[0].json()["error"]["code"] == "TooManyRequests"
    assert answers[2].json()["error"]["code"] == "ServiceNotAvailable"
    assert [r["status"] for r in sim.request_log[-4:]] == [429, 429, 503, 200]


def test_more_than_four_concurrent_requests_per_mailbox_are_throttled(sim: GraphSim, g: Graph) -> None:
    sim.set_latency(0.6)
    token = g.s.headers["Authorization"]
    results: list[requests.Response] = []
    lock = threading.Lock()
    start = threading.Barrier(7)

    def call() -> None:
        s = new_session(sim)
        s.headers["Authorization"] = token
        start.wait()
        r = s.get(f"{sim.graph_url}/users/{UPN}/calendar", timeout=10)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in results)
    # 4 run at once; the others are refused while those 4 sleep (more than 4 only if a thread
    # arrived after the first ones were done, which a loaded machine can cause)
    assert statuses.count(200) >= 4 and statuses.count(429) >= 1 and len(statuses) == 7, statuses
    assert set(statuses) == {200, 429}
    throttled = next(r for r in results if r.status_code == 429)
    assert throttled.json()["error"]["code"] == "ApplicationThrottled"
    assert "MailboxConcurrency" in throttled.json()["error"]["message"]
    assert throttled.headers["Retry-After"]
    sim.set_latency(0)
    assert g.get(f"/users/{UPN}/calendar").status_code == 200


# --- admin API over HTTPS, CLI, loopback -------------------------------------------------------------------
def test_admin_endpoints_drive_the_stand_in_from_another_process(sim: GraphSim) -> None:
    s = new_session(sim)
    admin = f"{sim.authority_host}/_sim"
    assert s.get(f"{admin}/health").json()["graph_url"] == sim.graph_url
    assert s.post(f"{admin}/apps", json={"tenant_id": "t2", "client_id": "c2", "client_secret": "x"}).status_code == 201
    user = s.post(f"{admin}/users", json={"upn": "eve@contoso.test", "display_name": "Eve"}).json()
    assert user["default_calendar_id"] == sim.default_calendar_id("eve@contoso.test")
    cal = s.post(f"{admin}/users/eve@contoso.test/calendars", json={"name": "Side", "can_edit": False}).json()
    token = s.post(
        f"{sim.authority_host}/t2/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": "c2", "client_secret": "x", "scope": SCOPE[0]},
    ).json()["access_token"]
    eve = Graph(sim, token)
    assert eve.get(f"/users/eve@contoso.test/calendars/{cal['id']}").json()["canEdit"] is False
    assert s.post(f"{admin}/throttle", json={"count": 1, "retry_after": 2}).status_code == 204
    assert eve.get("/users/eve@contoso.test").status_code == 429
    assert s.post(f"{admin}/expire-delta-tokens", json={"with_location": True}).status_code == 204
    log = s.get(f"{admin}/requests").json()["value"]
    assert [r["status"] for r in log][-2:] == [200, 429] and all("/_sim" not in r["path"] for r in log)
    assert s.delete(f"{admin}/requests").status_code == 204 and sim.request_log == []
    assert s.get(f"{admin}/invitations").json() == {"value": []}
    assert s.post(f"{admin}/users", json={}).status_code == 400
    assert s.get(f"{admin}/nope").status_code == 404


def test_cli_prints_the_ready_line_and_serves(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.graphsim", "--port", "0", "--state-dir", str(tmp_path / "st")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        words = line.split()
        assert words[:2] == ["graphsim", "ready"] and words[2].startswith("https://127.0.0.1:"), line
        ca = words[3].removeprefix("ca=")
        assert Path(ca) == tmp_path / "st" / "ca.pem" and Path(ca).read_text().startswith("-----BEGIN CERTIFICATE")
        s = requests.Session()
        s.trust_env = False
        assert s.get(f"{words[2]}/_sim/health", verify=ca, timeout=10).json()["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_only_loopback_addresses_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        GraphSim(host="0.0.0.0", port=0, state_dir=tmp_path)
    with pytest.raises(ValueError):
        GraphSim(host="192.168.1.10", port=0, state_dir=tmp_path)


# --- every emitted payload against the CSDL --------------------------------------------------------------
def _classify(rec: dict[str, Any]) -> str:
    path, status, body = rec["path"], rec["status"], rec["body"]
    if not path.startswith("/v1.0/"):
        if path.endswith("/openid-configuration"):
            return "oidc" if status == 200 else "aad-error"
        if path.endswith("/token"):
            return "token" if status == 200 else "aad-error"
        return "unknown"
    if status >= 400:
        return "graph-error"
    parts = path.split("/")[2:]  # users, {u}, ...
    collection = "value" in body
    if len(parts) == 2:
        return "user"
    if parts[2] in ("calendar", "calendars") and (len(parts) == 3 or (len(parts) == 4 and parts[2] == "calendars")):
        return "calendar-collection" if collection else "calendar"
    if "events" in parts or "calendarView" in parts:
        return "event-collection" if collection else "event"
    return "unknown"


def test_every_payload_the_stand_in_emits_matches_the_csdl(
    sim: GraphSim, g: Graph, certificate: tuple[str, str, str]
) -> None:
    """Drive every endpoint (successes and errors), then validate each JSON body the stand-in sent."""
    secret_app(sim, "wrong").acquire_token_for_client(SCOPE)
    u = f"/users/{UPN}"
    g.get(u)
    g.get("/users/nobody@contoso.test")
    g.get(f"{u}/calendars")
    g.get(f"{u}/calendar")
    cal = g.post(f"{u}/calendars", {"name": "Mirror", "color": "lightBlue"}).json()["id"]
    g.get(f"{u}/calendars/{cal}")
    full = {
        **event_body("everything", zone="Europe/Berlin"),
        "body": {"contentType": "html", "content": "<p>Hi &amp; bye</p>"},
        "location": {"displayName": "HQ", "address": {"city": "Berlin", "countryOrRegion": "DE"},
                     "coordinates": {"latitude": 52.5, "longitude": 13.4}},
        "attendees": [{"emailAddress": {"address": "bob@contoso.test", "name": "Bob"}, "type": "optional"}],
        "categories": ["Red category"], "importance": "high", "sensitivity": "private", "showAs": "tentative",
        "reminderMinutesBeforeStart": 30, "isOnlineMeeting": False, "hideAttendees": True,
        "transactionId": "tx-1", "singleValueExtendedProperties": [{"id": EXT_ID, "value": "p"}],
    }  # fmt: skip
    ev = g.post(f"{u}/calendars/{cal}/events", full).json()
    g.post(f"{u}/calendars/{cal}/events", full)  # transactionId replay
    create(g, "series", recurrence={"pattern": {"type": "relativeMonthly", "interval": 2, "daysOfWeek": ["friday"],
                                                "index": "last"},
                                    "range": {"type": "numbered", "startDate": "2026-11-27",
                                              "numberOfOccurrences": 5}}, day=27)  # fmt: skip
    create(g, "second in mirror", path=f"{u}/calendars/{cal}/events", day=25)
    create(g, "primary", path=f"{u}/calendar/events")
    g.post(f"{u}/events", {**event_body("x"), "isAllDay": True})
    g.post(f"{u}/events", event_body("x", zone="Nowhere"))
    g.post(f"{u}/events", {**event_body("x"), "bogus": 1})
    g.get(
        f"{u}/calendars/{cal}/events/{ev['id']}",
        params={"$expand": f"singleValueExtendedProperties($filter=id eq '{EXT_ID}')"},
    )
    g.get(
        f"{u}/events/{ev['id']}", headers={"Prefer": 'outlook.timezone="Asia/Tokyo"'}, params={"$select": "subject,end"}
    )
    g.get(f"{u}/events", params={"$top": "1"})
    g.get(f"{u}/calendars/{cal}/events", params={"$filter": f"singleValueExtendedProperties/any(e:e/id eq '{EXT_ID}')"})
    g.patch(f"{u}/events/{ev['id']}", {"subject": "changed", "recurrence": None})
    g.patch(f"{u}/events/{ev['id']}", {"subject": "x"}, headers={"If-Match": 'W/"stale"'})
    g.get(f"{u}/calendarView?{WINDOW}")
    g.get(f"{u}/calendars/{cal}/calendarView?{WINDOW}&$top=1")
    g.get(f"{u}/calendarView")
    pages, link = follow_delta(g, f"{u}/calendars/{cal}/calendarView/delta?{WINDOW}", page_size=1)
    g.delete(f"{u}/events/{ev['id']}")
    follow_delta(g, link)
    g.get(f"{u}/calendarView/delta?{WINDOW}&$select=subject")
    sim.inject_throttle(1)
    g.get(u)
    sim.expire_delta_tokens()
    g.get(link)
    g.get(f"{u}/events/{ev['id']}")
    g.get(f"{u}/nothing")

    schema = load_schema()
    seen: dict[str, int] = {}
    problems: list[str] = []
    for rec in sim.response_log:
        kind = _classify(rec)
        seen[kind] = seen.get(kind, 0) + 1
        body = rec["body"]
        if kind == "event":
            issues = [str(i) for i in schema.validate(body, "event")]
        elif kind == "event-collection":
            issues = [str(i) for i in schema.validate_collection(body, "event")]
        elif kind == "calendar":
            issues = [str(i) for i in schema.validate(body, "calendar")]
        elif kind == "calendar-collection":
            issues = [str(i) for i in schema.validate_collection(body, "calendar")]
        elif kind == "graph-error":
            issues = validate_error_body(body)
        elif kind == "user":
            issues = validate_user(body)
        elif kind == "token":
            issues = validate_token_response(body)
        elif kind == "aad-error":
            issues = validate_aad_error(body)
        elif kind == "oidc":
            issues = [f"missing {k}" for k in ("issuer", "token_endpoint", "authorization_endpoint") if k not in body]
        else:
            issues = ["unclassified payload"]
        problems += [f"{rec['method']} {rec['path']} -> {rec['status']}: {i}" for i in issues]
    assert problems == []
    for kind in ("event", "event-collection", "calendar", "calendar-collection", "graph-error", "user", "token",
                 "aad-error", "oidc"):  # fmt: skip
        assert seen.get(kind, 0) >= 1, (kind, seen)
    assert seen["graph-error"] >= 8 and seen["event"] >= 5 and seen["event-collection"] >= 6
    assert len(pages) >= 2  # the delta round really was paged
