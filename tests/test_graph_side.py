"""GraphCalendar / GraphClient / GraphAuth against the in-process Graph stand-in (devtools.graphsim).

One stand-in per module (HTTPS on 127.0.0.1, port 0, state under a tmp dir) and one fresh
mailbox per test. Changes "made by another client" (the user in Outlook) go to the stand-in as
plain HTTP requests with their own token, not through the code under test.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import trustme

from devtools.graphsim import GraphSim
from sync_core.errors import (
    AuthenticationFailed,
    NotFound,
    PreconditionFailed,
    SideError,
    Throttled,
    UnsupportedEvent,
)
from sync_core.model import Event
from sync_core.sides.base import SideName
from sync_core.sides.graph_http import (
    GraphAuth,
    GraphClient,
    GraphCredentials,
    _split_pem,
    clear_app_cache,
    parse_retry_after,
)
from sync_core.sides.graph_side import (
    GraphCalendar,
    check_mailbox,
    list_calendars,
    transaction_id_for,
)

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SECRET = "s3cr3t-Value~with.odd_chars"
_MAILBOXES = itertools.count(1)

NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW = (NOW - timedelta(days=30), NOW + timedelta(days=365))


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _fresh_msal_apps() -> Iterator[None]:
    clear_app_cache()
    yield
    clear_app_cache()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphSim]:
    server = GraphSim(host="127.0.0.1", port=0, state_dir=tmp_path_factory.mktemp("graphsim"))
    server.start()
    try:
        server.register_app(TENANT, CLIENT_ID, client_secret=SECRET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def upn(sim: GraphSim) -> str:
    """A fresh mailbox for each test."""
    address = f"user{next(_MAILBOXES)}@contoso.example"
    sim.add_user(address)
    return address


def make_client(sim: GraphSim, **kwargs: Any) -> GraphClient:
    creds = GraphCredentials(TENANT, CLIENT_ID, client_secret=SECRET, authority_host=sim.authority_host)
    auth = GraphAuth(creds, verify=sim.ca_path)
    options: dict[str, Any] = {"max_wait": 10.0}
    options.update(kwargs)
    return GraphClient(auth, base_url=sim.graph_url, verify=sim.ca_path, **options)


@pytest.fixture
def client(sim: GraphSim) -> GraphClient:
    return make_client(sim)


class Outlook:
    """Another Graph client: the user editing the calendar. Raw requests, its own token."""

    def __init__(self, sim: GraphSim, upn: str) -> None:
        self.base = f"{sim.graph_url}/users/{upn}"
        self.session = requests.Session()
        self.session.verify = sim.ca_path
        self.session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify
        token = self.session.post(
            f"{sim.authority_host}/{TENANT}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
                "scope": "https://graph.microsoft.com/.default",
            },
            timeout=10,
        )
        token.raise_for_status()
        self.session.headers["Authorization"] = "Bearer " + token.json()["access_token"]
        self.session.headers["Prefer"] = 'IdType="ImmutableId"'

    def create(self, subject: str, start: datetime, *, hours: int = 1, **extra: Any) -> dict[str, Any]:
        body = {
            "subject": subject,
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (start + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
            "body": {"contentType": "text", "content": f"body of {subject}"},
            **extra,
        }
        resp = self.session.post(f"{self.base}/calendar/events", json=body, timeout=10)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def patch(self, event_id: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.session.patch(f"{self.base}/events/{event_id}", json=body, timeout=10)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def move(self, event_id: str, start: datetime) -> dict[str, Any]:
        end = start + timedelta(hours=1)
        return self.patch(
            event_id,
            {
                "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            },
        )

    def delete(self, event_id: str) -> None:
        resp = self.session.delete(f"{self.base}/events/{event_id}", timeout=10)
        assert resp.status_code == 204, resp.text

    def list_events(self) -> list[dict[str, Any]]:
        resp = self.session.get(f"{self.base}/calendar/events", timeout=10)
        assert resp.status_code == 200, resp.text
        return list(resp.json()["value"])


@pytest.fixture
def outlook(sim: GraphSim, upn: str) -> Outlook:
    return Outlook(sim, upn)


def calendar(client: GraphClient, upn: str, **kwargs: Any) -> GraphCalendar:
    options: dict[str, Any] = {"window": WINDOW}
    options.update(kwargs)
    return GraphCalendar(client, upn, **options)


def model_event(subject: str, start: datetime, uid: str | None = None) -> Event:
    return Event(subject=subject, start=start, end=start + timedelta(hours=1), timezone="UTC", uid=uid)


def in_window(days: int, hour: int = 9) -> datetime:
    return (NOW + timedelta(days=days)).replace(hour=hour, minute=0, second=0)


# --- pure helpers -------------------------------------------------------------------------
def test_retry_after_accepts_fractional_seconds_and_http_dates() -> None:
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30.0


def test_transaction_id_is_stable_and_plain() -> None:
    assert transaction_id_for("pair1-abc_123") == "pair1-abc_123"
    assert transaction_id_for("pair/1:abc") == "pair/1:abc"
    odd = "pair 1 with spaces and a very long tail " * 5
    assert transaction_id_for(odd) == transaction_id_for(odd)
    assert transaction_id_for(odd) != transaction_id_for(odd + "x")
    assert len(transaction_id_for(odd)) == 36


def test_pem_bundle_is_split_into_key_and_certificate() -> None:
    leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("app.example", key_type=trustme.KeyType.RSA)
    key = leaf.private_key_pem.bytes().decode()
    cert = leaf.cert_chain_pems[0].bytes().decode()
    got_key, got_cert = _split_pem(key + cert)
    assert "PRIVATE KEY" in got_key and "CERTIFICATE" not in got_key
    assert got_cert.startswith("-----BEGIN CERTIFICATE-----")


def test_credentials_need_exactly_one_secret_and_hide_it() -> None:
    with pytest.raises(ValueError):
        GraphCredentials(TENANT, CLIENT_ID)
    with pytest.raises(ValueError):
        GraphCredentials(TENANT, CLIENT_ID, client_secret="a", certificate_pem="b")
    assert SECRET not in repr(GraphCredentials(TENANT, CLIENT_ID, client_secret=SECRET))


# --- authentication -----------------------------------------------------------------------
def test_token_with_client_secret(sim: GraphSim, client: GraphClient, upn: str) -> None:
    assert isinstance(client.auth.token(), str)
    assert client.get_json(f"/users/{upn}/calendar")["id"]


def test_wrong_secret_is_authentication_failed_without_the_secret(sim: GraphSim) -> None:
    wrong = "not-the-right-secret-123"
    creds = GraphCredentials(TENANT, CLIENT_ID, client_secret=wrong, authority_host=sim.authority_host)
    with pytest.raises(AuthenticationFailed) as info:
        GraphAuth(creds, verify=sim.ca_path).token()
    assert "invalid_client" in str(info.value)
    assert wrong not in str(info.value)


def test_unknown_tenant_is_authentication_failed(sim: GraphSim) -> None:
    creds = GraphCredentials(
        "99999999-9999-9999-9999-999999999999",
        CLIENT_ID,
        client_secret=SECRET,
        authority_host=sim.authority_host,
    )
    with pytest.raises(AuthenticationFailed):
        GraphAuth(creds, verify=sim.ca_path).token()


def test_token_with_certificate(sim: GraphSim, upn: str) -> None:
    leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("davbridge", key_type=trustme.KeyType.RSA)
    key_pem = leaf.private_key_pem.bytes().decode()
    cert_pem = leaf.cert_chain_pems[0].bytes().decode()
    cert_client = "cccccccc-0000-0000-0000-000000000001"
    sim.register_app(TENANT, cert_client, certificate_pem=cert_pem)
    creds = GraphCredentials(TENANT, cert_client, certificate_pem=key_pem + cert_pem, authority_host=sim.authority_host)
    client = GraphClient(GraphAuth(creds, verify=sim.ca_path), base_url=sim.graph_url, verify=sim.ca_path)
    assert client.get_json(f"/users/{upn}/calendar")["id"]

    other = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("intruder", key_type=trustme.KeyType.RSA)
    bad = GraphCredentials(
        TENANT,
        cert_client,
        certificate_pem=other.private_key_pem.bytes().decode() + other.cert_chain_pems[0].bytes().decode(),
        authority_host=sim.authority_host,
    )
    with pytest.raises(AuthenticationFailed):
        GraphAuth(bad, verify=sim.ca_path).token()


def test_the_msal_app_is_reused_and_caches_the_token(sim: GraphSim, client: GraphClient) -> None:
    first = client.auth.token()
    again = make_client(sim).auth.token()
    assert first == again
    token_requests = sum(1 for r in sim.request_log if r["path"].endswith("/oauth2/v2.0/token"))

    assert isinstance(client.auth, GraphAuth)
    client.auth.invalidate()
    assert client.auth.token()
    after = sum(1 for r in sim.request_log if r["path"].endswith("/oauth2/v2.0/token"))
    assert after == token_requests + 1


# --- reading: delta -----------------------------------------------------------------------
def test_initial_round_follows_pages_to_the_delta_link(
    sim: GraphSim, client: GraphClient, outlook: Outlook, upn: str
) -> None:
    ids = {outlook.create(f"event {n}", in_window(n + 1))["id"] for n in range(7)}
    outlook.create("far future", NOW + timedelta(days=800))
    side = calendar(client, upn, page_size=2)
    assert side.name is SideName.M365

    sim.inject_empty_delta_pages(2)
    before = client.request_count
    batch = side.changes(None, {})

    assert {item.id for item in batch.changed} == ids
    assert batch.deleted == [] and batch.reset is False and batch.cursor
    assert client.request_count - before >= 4  # 7 events at 2 a page
    for item in batch.changed:
        assert item.error is None and item.event is not None and item.etag
        assert item.event.subject.startswith("event ")


def test_no_change_sync_costs_one_request(client: GraphClient, outlook: Outlook, upn: str) -> None:
    for n in range(3):
        outlook.create(f"event {n}", in_window(n + 1))
    side = calendar(client, upn)
    first = side.changes(None, {})
    known = {item.id: item.etag for item in first.changed}

    before = client.request_count
    again = side.changes(first.cursor, known)

    assert client.request_count - before == 1
    assert again.changed == [] and again.deleted == [] and again.reset is False
    assert again.cursor


def test_incremental_create_update_delete(client: GraphClient, outlook: Outlook, upn: str) -> None:
    kept = outlook.create("kept", in_window(1))
    edited = outlook.create("edited", in_window(2))
    gone = outlook.create("gone", in_window(3))
    side = calendar(client, upn)
    first = side.changes(None, {})
    known = {item.id: item.etag for item in first.changed}

    added = outlook.create("added", in_window(4))
    outlook.patch(edited["id"], {"subject": "edited again"})
    outlook.delete(gone["id"])
    batch = side.changes(first.cursor, known)

    by_id = {item.id: item for item in batch.changed}
    assert set(by_id) == {added["id"], edited["id"]}
    edited_event = by_id[edited["id"]].event
    assert edited_event is not None and edited_event.subject == "edited again"
    assert by_id[edited["id"]].etag != known[edited["id"]]
    assert batch.deleted == [gone["id"]]
    assert kept["id"] not in by_id


def test_leaving_the_window_is_a_change_not_a_deletion(client: GraphClient, outlook: Outlook, upn: str) -> None:
    """Delta sends ``@removed`` for an event edited out of the range: it still exists with a
    new etag, so it is read by id and reported as changed (its copy must move too)."""
    leaving = outlook.create("leaving", in_window(5))
    deleted = outlook.create("deleted", in_window(6))
    side = calendar(client, upn)
    first = side.changes(None, {})
    known = {item.id: item.etag for item in first.changed}

    outlook.move(leaving["id"], NOW + timedelta(days=700))
    outlook.delete(deleted["id"])
    batch = side.changes(first.cursor, known)

    assert batch.deleted == [deleted["id"]]
    (moved,) = [item for item in batch.changed if item.id == leaving["id"]]
    assert moved.event is not None and moved.event.start > NOW + timedelta(days=699)


def test_removed_ids_not_linked_are_ignored(client: GraphClient, outlook: Outlook, upn: str) -> None:
    side = calendar(client, upn)
    first = side.changes(None, {})
    stranger = outlook.create("stranger", in_window(2))
    outlook.delete(stranger["id"])
    batch = side.changes(first.cursor, {})
    assert batch.deleted == []


@pytest.mark.parametrize("with_location", [False, True])
def test_expired_delta_token_resets_and_confirms_deletions(
    sim: GraphSim, client: GraphClient, outlook: Outlook, with_location: bool, upn: str
) -> None:
    stay = outlook.create("stay", in_window(1))
    drop = outlook.create("drop", in_window(2))
    away = outlook.create("away", in_window(3))
    side = calendar(client, upn)
    first = side.changes(None, {})
    known = {item.id: item.etag for item in first.changed}
    known["AAMkMissingEventThatNeverExisted"] = None

    outlook.delete(drop["id"])
    outlook.move(away["id"], NOW + timedelta(days=900))
    sim.expire_delta_tokens(with_location=with_location)
    batch = side.changes(first.cursor, known)

    assert batch.reset is True
    assert sorted(batch.deleted) == sorted([drop["id"], "AAMkMissingEventThatNeverExisted"])
    # "away" left the window with an edit: read by id, a change, not a deletion.
    assert {item.id for item in batch.changed} == {stay["id"], away["id"]}
    assert batch.cursor and batch.cursor != first.cursor

    # The new cursor works incrementally again.
    before = client.request_count
    assert side.changes(batch.cursor, {stay["id"]: None}).reset is False
    assert client.request_count - before == 1


def test_empty_full_listing_deletes_only_what_is_confirmed_gone(
    client: GraphClient, outlook: Outlook, upn: str
) -> None:
    outside = outlook.create("outside", NOW + timedelta(days=1000))
    known: dict[str, str | None] = {outside["id"]: outside["@odata.etag"]}
    known.update({f"AAMkGone{n}": None for n in range(3)})
    batch = calendar(client, upn).changes(None, known)
    assert batch.changed == []  # still there, unchanged: neither a change nor a deletion
    assert sorted(batch.deleted) == [f"AAMkGone{n}" for n in range(3)]
    # Known without an etag (a quarantined item): read by id, so its state is settled.
    known[outside["id"]] = None
    assert [item.id for item in calendar(client, upn).changes(None, known).changed] == [outside["id"]]


def test_moved_window_starts_a_new_round(client: GraphClient, outlook: Outlook, upn: str) -> None:
    early = outlook.create("early", in_window(1))
    side = calendar(client, upn)
    first = side.changes(None, {})
    known = {item.id: item.etag for item in first.changed}

    same_day = calendar(client, upn, window=(WINDOW[0] + timedelta(hours=3), WINDOW[1] + timedelta(hours=3)))
    assert same_day.changes(first.cursor, known).reset is False

    later = calendar(client, upn, window=(NOW + timedelta(days=3), WINDOW[1] + timedelta(days=3)))
    batch = later.changes(first.cursor, known)
    assert batch.reset is True
    assert batch.deleted == []  # "early" left the window; it still exists
    assert early["id"] not in {item.id for item in batch.changed}


def test_unreadable_cursor_means_a_full_listing(client: GraphClient, outlook: Outlook, upn: str) -> None:
    event = outlook.create("one", in_window(1))
    batch = calendar(client, upn).changes("not json", {})
    assert batch.reset is True
    assert [item.id for item in batch.changed] == [event["id"]]


def test_a_series_is_read_as_one_item(client: GraphClient, outlook: Outlook, upn: str) -> None:
    start = in_window(1)
    master = outlook.create(
        "weekly",
        start,
        recurrence={
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [start.strftime("%A").lower()]},
            "range": {"type": "numbered", "startDate": start.date().isoformat(), "numberOfOccurrences": 3},
        },
    )
    batch = calendar(client, upn).changes(None, {})
    (item,) = batch.changed
    assert item.id == master["id"] and item.error is None and item.event is not None
    assert item.event.recurrence is not None and "COUNT=3" in item.event.recurrence.rule


# --- throttling ---------------------------------------------------------------------------
def test_throttling_honours_retry_after(sim: GraphSim, client: GraphClient, upn: str) -> None:
    client.auth.token()
    sim.inject_throttle(2, 0.2, 429)
    started = time.monotonic()
    assert client.get_json(f"/users/{upn}/calendar")["id"]
    assert time.monotonic() - started >= 0.4
    assert client.waited == pytest.approx(0.4)


def test_service_unavailable_is_retried_too(sim: GraphSim, client: GraphClient, upn: str) -> None:
    sim.inject_throttle(1, 0.1, 503)
    assert client.get_json(f"/users/{upn}/calendar")["id"]
    assert client.waited == pytest.approx(0.1)


def test_throttled_after_the_retry_budget(sim: GraphSim, upn: str) -> None:
    client = make_client(sim, max_attempts=3)
    client.auth.token()
    sim.inject_throttle(3, 0.1, 429)  # exactly the tries allowed: the stand-in is shared
    before = client.request_count
    with pytest.raises(Throttled):
        client.get_json(f"/users/{upn}/calendar")
    assert client.request_count - before == 3


def test_a_retry_after_longer_than_the_budget_gives_up_at_once(sim: GraphSim, upn: str) -> None:
    client = make_client(sim, max_wait=1.0)
    client.auth.token()
    sim.inject_throttle(1, 30, 429)
    started = time.monotonic()
    with pytest.raises(Throttled):
        client.get_json(f"/users/{upn}/calendar")
    assert time.monotonic() - started < 5


# --- writing ------------------------------------------------------------------------------
def test_create_with_the_same_key_twice_makes_one_event(
    sim: GraphSim, client: GraphClient, outlook: Outlook, upn: str
) -> None:
    side = calendar(client, upn)
    event = model_event("mirrored", in_window(2), uid="caldav-uid-1@example")
    first = side.create(event, idempotency_key="pair1-create-0001")
    second = side.create(event, idempotency_key="pair1-create-0001")

    assert first.id == second.id
    assert [e["subject"] for e in outlook.list_events()] == ["mirrored"]
    assert first.event.subject == "mirrored" and first.etag
    assert [i for i in sim.sent_invitations if i["user"] == upn] == []


def test_created_event_carries_the_uid_tag(client: GraphClient, upn: str) -> None:
    side = calendar(client, upn)
    written = side.create(model_event("tagged", in_window(3), uid="uid-tag-42"), idempotency_key="k-42")
    [read] = side.get([written.id])
    assert "uid-tag-42" in read.match_uids
    assert side.find_by_uid_tag("uid-tag-42") is not None
    assert side.find_by_uid_tag("some-other-uid") is None


def test_lookup_before_create_finds_an_existing_tagged_event(client: GraphClient, outlook: Outlook, upn: str) -> None:
    plain = calendar(client, upn)
    first = plain.create(model_event("once", in_window(2), uid="uid-once"), idempotency_key="key-a")
    careful = calendar(client, upn, lookup_before_create=True)
    again = careful.create(model_event("once", in_window(2), uid="uid-once"), idempotency_key="key-b")
    assert again.id == first.id
    assert len(outlook.list_events()) == 1


def test_update_and_stale_etag(client: GraphClient, upn: str) -> None:
    side = calendar(client, upn)
    created = side.create(model_event("v1", in_window(2), uid="u-upd"), idempotency_key="k-upd")
    updated = side.update(created.id, model_event("v2", in_window(2), uid="u-upd"), etag=created.etag)
    assert updated.id == created.id and updated.etag != created.etag
    assert updated.event.subject == "v2"

    with pytest.raises(PreconditionFailed):
        side.update(created.id, model_event("v3", in_window(2)), etag=created.etag)


def test_stale_etag_is_refused_by_graph_itself(client: GraphClient, upn: str) -> None:
    """Without the guard's pre-read, the If-Match header alone must make the write fail."""
    side = calendar(client, upn, protect_meetings=False)
    created = side.create(model_event("v1", in_window(2)), idempotency_key="k-412")
    side.update(created.id, model_event("v2", in_window(2)), etag=created.etag)
    before = client.request_count
    with pytest.raises(PreconditionFailed):
        side.update(created.id, model_event("v3", in_window(2)), etag=created.etag)
    assert client.request_count - before == 1  # the PATCH itself was refused


def test_update_of_a_missing_event_is_not_found(client: GraphClient, upn: str) -> None:
    with pytest.raises(NotFound):
        calendar(client, upn).update("AAMkNoSuchEvent", model_event("x", in_window(1)), etag=None)


def test_delete_and_delete_again(client: GraphClient, outlook: Outlook, upn: str) -> None:
    side = calendar(client, upn)
    created = side.create(model_event("bye", in_window(2)), idempotency_key="k-del")
    side.delete(created.id, etag=created.etag)
    side.delete(created.id, etag=None)
    assert outlook.list_events() == []


def test_meetings_with_attendees_are_never_rewritten(
    sim: GraphSim, client: GraphClient, outlook: Outlook, upn: str
) -> None:
    meeting = outlook.create(
        "team meeting",
        in_window(2),
        attendees=[{"emailAddress": {"address": "bob@contoso.example"}, "type": "required"}],
    )
    invitations = len(sim.sent_invitations)
    side = calendar(client, upn)
    side.changes(None, {})
    with pytest.raises(UnsupportedEvent):
        side.update(meeting["id"], model_event("renamed", in_window(2)), etag=meeting["@odata.etag"])
    with pytest.raises(UnsupportedEvent):
        side.delete(meeting["id"], etag=None)
    assert len(sim.sent_invitations) == invitations


def test_the_side_never_sends_invitations(sim: GraphSim, client: GraphClient, upn: str) -> None:
    side = calendar(client, upn)
    created = side.create(model_event("solo", in_window(2), uid="u-solo"), idempotency_key="k-solo")
    side.update(created.id, model_event("solo 2", in_window(3), uid="u-solo"), etag=created.etag)
    side.changes(None, {})
    side.delete(created.id, etag=None)
    assert [i for i in sim.sent_invitations if i["user"] == upn] == []


# --- admin helpers ------------------------------------------------------------------------
def test_list_calendars_and_check_mailbox(sim: GraphSim, client: GraphClient, upn: str) -> None:
    sim.add_calendar(upn, "Work")
    calendars = list_calendars(client, upn)
    assert {c.name for c in calendars} >= {"Work"}
    assert sum(c.is_default for c in calendars) == 1
    assert all(c.as_dict()["id"] for c in calendars)

    assert check_mailbox(client, upn).ok is True
    missing = check_mailbox(client, "nobody@contoso.example")
    assert missing.ok is False and missing.reason


def test_a_secondary_calendar_is_synced_on_its_own(
    sim: GraphSim, client: GraphClient, outlook: Outlook, upn: str
) -> None:
    sim.add_calendar(upn, "Work")
    work = next(c for c in list_calendars(client, upn) if c.name == "Work")
    outlook.create("in primary", in_window(1))
    side = GraphCalendar(client, upn, work.id, window=WINDOW)
    created = side.create(model_event("in work", in_window(2)), idempotency_key="k-work")
    batch = side.changes(None, {})
    assert [item.id for item in batch.changed] == [created.id]


# --- logging ------------------------------------------------------------------------------
def test_logs_hold_no_tokens_secrets_or_content(
    caplog: pytest.LogCaptureFixture, sim: GraphSim, client: GraphClient, outlook: Outlook, upn: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="davbridge.graph")
    outlook.create("Confidential board meeting", in_window(1))
    side = calendar(client, upn, page_size=1)
    first = side.changes(None, {})
    side.changes(first.cursor, {})
    sim.inject_throttle(1, 0.05, 429)
    side.create(model_event("Secret subject", in_window(2)), idempotency_key="k-log")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "graph GET" in text
    for forbidden in (SECRET, client.auth.token(), "Bearer", "deltatoken", "skiptoken", "Confidential", "Secret"):
        assert forbidden.lower() not in text.lower(), forbidden


def test_read_only_calendar_write_is_access_denied(sim: GraphSim, client: GraphClient, upn: str) -> None:
    shared = sim.add_calendar(upn, "Shared", can_edit=False)
    side = GraphCalendar(client, upn, shared, window=WINDOW)
    with pytest.raises(AuthenticationFailed) as info:
        side.create(model_event("nope", in_window(1)), idempotency_key="k-ro")
    assert "ErrorAccessDenied" in str(info.value)


def test_write_bodies_never_carry_attendees() -> None:
    body = GraphCalendar._body({"subject": "x", "attendees": [{"emailAddress": {"address": "a@b.c"}}]})
    assert body == {"subject": "x"}


# --- delta round mechanics the stand-in does not produce (replays) ------------------------
class ScriptedGraph:
    """Answers get_json with prepared delta pages (no HTTP): replays and malformed pages."""

    base_url = "https://graph.example/v1.0"

    def __init__(self, *pages: dict[str, Any]) -> None:
        self.pages = list(pages)
        self.urls: list[str] = []
        self.request_count = 0

    def get_json(self, url: str, *, params: Any = None, prefer: str | None = None) -> dict[str, Any]:
        self.urls.append(url)
        self.request_count += 1
        return self.pages.pop(0)

    def relative(self, url: str) -> str:
        return url.removeprefix(self.base_url)

    def url(self, link: str) -> str:
        if link.startswith("https://") and not link.startswith(self.base_url):
            raise SideError("foreign host")
        return link


def graph_event(event_id: str, subject: str, etag: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "@odata.etag": etag,
        "type": "singleInstance",
        "subject": subject,
        "start": {"dateTime": "2030-01-02T09:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2030-01-02T10:00:00.0000000", "timeZone": "UTC"},
        "body": {"contentType": "text", "content": ""},
    }


def scripted_calendar(graph: ScriptedGraph, **kwargs: Any) -> GraphCalendar:
    return GraphCalendar(graph, "x@contoso.example", window=WINDOW, **kwargs)  # type: ignore[arg-type]


def test_replayed_items_are_merged_last_one_wins() -> None:
    graph = ScriptedGraph(
        {
            "value": [graph_event("A", "first", 'W/"1"'), {"id": "B", "@removed": {"reason": "deleted"}}],
            "@odata.nextLink": "https://graph.example/v1.0/next1",
        },
        {"value": [], "@odata.nextLink": "https://graph.example/v1.0/next2"},
        {
            "value": [graph_event("A", "second", 'W/"2"'), graph_event("B", "back", 'W/"3"')],
            "@odata.deltaLink": "https://graph.example/v1.0/users/x/calendarView/delta?$deltatoken=t",
        },
    )
    batch = scripted_calendar(graph).changes(None, {})
    by_id = {item.id: item for item in batch.changed}
    assert set(by_id) == {"A", "B"}
    replayed = by_id["A"].event
    assert replayed is not None and replayed.subject == "second"
    assert by_id["A"].etag == 'W/"2"'
    assert batch.deleted == []
    assert graph.urls[1:] == ["https://graph.example/v1.0/next1", "https://graph.example/v1.0/next2"]
    assert "$deltatoken=t" in (batch.cursor or "") and "graph.example" not in (batch.cursor or "")


def test_a_page_without_links_is_an_error_and_no_cursor() -> None:
    graph = ScriptedGraph({"value": [graph_event("A", "a", 'W/"1"')]})
    with pytest.raises(SideError):
        scripted_calendar(graph).changes(None, {})


def test_a_round_that_never_ends_is_bounded() -> None:
    pages = [{"value": [], "@odata.nextLink": f"https://graph.example/v1.0/p{n}"} for n in range(5)]
    with pytest.raises(SideError):
        scripted_calendar(ScriptedGraph(*pages), max_pages=3).changes(None, {})


def test_a_cursor_pointing_at_another_host_is_not_followed() -> None:
    graph = ScriptedGraph(
        {"value": [], "@odata.deltaLink": "https://graph.example/v1.0/users/x/calendarView/delta?$deltatoken=n"}
    )
    side = scripted_calendar(graph)
    good = side.changes(None, {}).cursor or ""
    foreign = good.replace("/users/x/calendarView/delta", "https://evil.example/v1.0/delta")
    assert foreign != good
    graph.pages.append(
        {"value": [], "@odata.deltaLink": "https://graph.example/v1.0/users/x/calendarView/delta?$deltatoken=m"}
    )
    batch = side.changes(foreign, {})
    assert batch.reset is True
    assert not any("evil" in url for url in graph.urls)


class FlakyToken:
    """Hands out a revoked token until told to forget it."""

    def __init__(self, good: GraphAuth) -> None:
        self.good = good
        self.stale = True
        self.invalidations = 0

    def token(self) -> str:
        return "revoked-token" if self.stale else self.good.token()

    def invalidate(self) -> None:
        self.invalidations += 1
        self.stale = False


def test_a_refused_token_is_renewed_once_then_reported(sim: GraphSim, client: GraphClient, upn: str) -> None:
    assert isinstance(client.auth, GraphAuth)
    flaky = FlakyToken(client.auth)
    renewing = GraphClient(flaky, base_url=sim.graph_url, verify=sim.ca_path)
    assert renewing.get_json(f"/users/{upn}/calendar")["id"]
    assert flaky.invalidations == 1

    hopeless = FlakyToken(client.auth)
    hopeless.invalidate = lambda: None  # type: ignore[method-assign]
    with pytest.raises(AuthenticationFailed) as info:
        GraphClient(hopeless, base_url=sim.graph_url, verify=sim.ca_path).get_json(f"/users/{upn}/calendar")
    assert "401" in str(info.value) and "revoked-token" not in str(info.value)


# --- JSON batching ---------------------------------------------------------------------------------
def _batches(sim: GraphSim) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    log = sim.request_log
    return ([r for r in log if r["path"].endswith("/$batch")],
            [r for r in log if r.get("batch") and r["method"] == "POST"])


def test_create_many_sends_batches_of_20_and_a_retry_creates_nothing_twice(
    sim: GraphSim, client: GraphClient, outlook: Outlook, upn: str
) -> None:
    """45 creates: 3 ``$batch`` POSTs (20 + 20 + 5), each inner POST as ``create`` sends it, with
    its ``transactionId``; the same creates sent again (an answer lost) make no second event."""
    side = calendar(client, upn)
    creates = [(model_event(f"batched {i}", in_window(1) + timedelta(hours=i), uid=f"u{i}@b"), f"key-{i}")
               for i in range(45)]
    sim.reset_request_log()
    results = side.create_many(creates)
    outer, inner = _batches(sim)
    assert len(outer) == 3 and len(inner) == 45
    assert all(not isinstance(r, Exception) for r in results)
    assert [r.event.subject for r in results if not isinstance(r, Exception)] == [f"batched {i}" for i in range(45)]
    listed = side.changes(None, {})
    assert sorted(i.event.subject for i in listed.changed if i.event) == sorted(f"batched {i}" for i in range(45))

    again = side.create_many(creates[:5])
    assert all(not isinstance(r, Exception) for r in again)
    assert {r.id for r in again if not isinstance(r, Exception)} == {r.id for r in results[:5]
                                                                        if not isinstance(r, Exception)}
    assert len(side.changes(None, {}).changed) == 45


def test_create_many_retries_only_the_throttled_requests(sim: GraphSim, client: GraphClient, upn: str) -> None:
    """Requests inside a batch are throttled one by one (429 with Retry-After in their own
    headers): only those are sent again, after the Retry-After, in a new batch."""
    side = calendar(client, upn)
    creates = [(model_event(f"throttled {i}", in_window(2) + timedelta(hours=i)), f"t-{i}") for i in range(6)]
    sim.reset_request_log()
    sim.inject_throttle(2, retry_after=0.1)
    results = side.create_many(creates)
    outer, inner = _batches(sim)
    assert all(not isinstance(r, Exception) for r in results), results
    assert len(outer) == 2 and len(inner) == 8  # 6, then the 2 throttled ones again
    assert len(side.changes(None, {}).changed) == 6


def test_create_many_gives_each_create_its_own_typed_error(sim: GraphSim, upn: str) -> None:
    """A throttled request that stays throttled past the budget is ``Throttled`` while the
    others in its batch are created."""
    client = make_client(sim, max_attempts=1)
    side = calendar(client, upn)
    creates = [(model_event(f"budget {i}", in_window(3) + timedelta(hours=i)), f"b-{i}") for i in range(3)]
    sim.inject_throttle(1, retry_after=0.1)
    results = side.create_many(creates)
    assert isinstance(results[0], Throttled)
    assert [type(r).__name__ for r in results[1:]] == ["WriteResult", "WriteResult"]
