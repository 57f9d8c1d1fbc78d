"""devtools.graphsim.csdl: the CSDL loader and JSON validator (no server needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devtools.graphsim import csdl
from devtools.graphsim.schemas import validate_error_body, validate_user


@pytest.fixture(scope="module")
def schema() -> csdl.Schema:
    return csdl.load_schema()


def good_event() -> dict[str, Any]:
    return {
        "@odata.etag": 'W/"abc"',
        "id": "AAMkAD-x_y=",
        "changeKey": "abc",
        "categories": ["Red"],
        "createdDateTime": "2026-11-24T09:00:00.1234567Z",
        "subject": "Standup",
        "importance": "normal",
        "isAllDay": False,
        "start": {"dateTime": "2026-11-24T09:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2026-11-24T09:15:00.0000000", "timeZone": "UTC"},
        "location": {"displayName": "Room 1", "address": {}, "coordinates": {"latitude": 47.6}},
        "attendees": [
            {"type": "required", "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
             "emailAddress": {"name": "Bo", "address": "bo@example.test"}},
        ],
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1, "month": 0, "dayOfMonth": 0, "daysOfWeek": ["monday"],
                        "firstDayOfWeek": "sunday", "index": "first"},
            "range": {"type": "noEnd", "startDate": "2026-11-24", "endDate": "0001-01-01",
                      "recurrenceTimeZone": "UTC", "numberOfOccurrences": 0},
        },
        "singleValueExtendedProperties": [{"id": "String {00000000-0000-0000-0000-000000000000} Name x", "value": "1"}],
    }  # fmt: skip


def messages(issues: list[csdl.Issue]) -> str:
    return "\n".join(map(str, issues))


def test_loads_the_shared_reference_with_inheritance(schema: csdl.Schema) -> None:
    assert schema.path.name == "graph-v1.0-calendar.csdl.xml"
    props = schema.properties("event")
    # own, from outlookItem, from entity
    assert {"subject", "changeKey", "categories", "id", "singleValueExtendedProperties"} <= set(props)
    assert props["cancelledOccurrences"].collection and not props["cancelledOccurrences"].nullable
    assert schema.derives_from("attendee", "recipient")
    assert "tentativelyAccepted" in schema.enums["microsoft.graph.responseType"].members


def test_a_valid_event_has_no_issues(schema: csdl.Schema) -> None:
    assert schema.validate(good_event(), "microsoft.graph.event") == []


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda e: e.update(subjekt="typo"), "$.subjekt", "not a property of microsoft.graph.event"),
        (lambda e: e.update(importance="urgent"), "$.importance", "not a member of microsoft.graph.importance"),
        (lambda e: e.update(isAllDay="false"), "$.isAllDay", "Edm.Boolean"),
        (lambda e: e.update(categories="Red"), "$.categories", "expected an array"),
        (lambda e: e.update(createdDateTime="2026-11-24 09:00"), "$.createdDateTime", "Edm.DateTimeOffset"),
        (lambda e: e["start"].update(dateTime=None), "$.start.dateTime", "null"),
        (lambda e: e["location"]["coordinates"].update(latitude="47"), "$.location.coordinates.latitude", "Edm.Double"),
        (lambda e: e["attendees"][0]["emailAddress"].update(mail="x"), "$.attendees[0].emailAddress.mail", "not a"),
        (lambda e: e["recurrence"]["pattern"].update(dayOfMonth=None), "$.recurrence.pattern.dayOfMonth", "null"),
        (lambda e: e["recurrence"]["range"].update(startDate="24.11.2026"), "$.recurrence.range.startDate", "Edm.Date"),
        (lambda e: e["recurrence"]["pattern"].update(daysOfWeek=["mon"]), "$.recurrence.pattern.daysOfWeek[0]", "Week"),
        (lambda e: e.update({"@removed": {"reason": "gone"}}), "$.@removed", "reason"),
        (lambda e: e.update({"@custom": 1}), "$.@custom", "namespace-qualified"),
        (lambda e: e.update(reminderMinutesBeforeStart=2**40), "$.reminderMinutesBeforeStart", "Edm.Int32"),
    ],
)  # fmt: skip
def test_each_kind_of_mistake_is_reported_with_its_path(
    schema: csdl.Schema, mutate: Callable[[dict[str, Any]], object], path: str, fragment: str
) -> None:
    event = good_event()
    mutate(event)
    issues = schema.validate(event, "event")
    assert [i.path for i in issues] == [path], messages(issues)
    assert fragment in issues[0].message


def test_open_types_allow_dynamic_properties_except_event(schema: csdl.Schema) -> None:
    assert schema.validate({"anything": 1}, "resourceData") == []
    assert schema.validate({"anything": 1}, "event", strict_open=()) == []
    assert [i.path for i in schema.validate({"anything": 1}, "event")] == ["$.anything"]
    assert [i.path for i in schema.validate({"anything": 1}, "calendar")] == ["$.anything"]


def test_odata_type_switches_to_a_derived_type_only(schema: csdl.Schema) -> None:
    recipient = {"@odata.type": "#microsoft.graph.attendee", "type": "optional", "emailAddress": {"address": "a@b"}}
    assert schema.validate(recipient, "recipient") == []
    issues = schema.validate({"@odata.type": "#microsoft.graph.location"}, "recipient")
    assert "does not derive from" in messages(issues)


def test_delta_removed_entry_and_collection_wrapper(schema: csdl.Schema) -> None:
    page = {
        "@odata.context": "https://x/v1.0/$metadata#Collection(event)",
        "@odata.deltaLink": "https://x/v1.0/users/a/calendarView/delta?$deltatoken=abc",
        "value": [
            {"@odata.type": "#microsoft.graph.event", "id": "AAMk=", "@removed": {"reason": "deleted"}},
            good_event(),
        ],
    }
    assert schema.validate_collection(page, "event") == []
    both = {**page, "@odata.nextLink": "https://x"}
    assert "either @odata.nextLink or @odata.deltaLink" in messages(schema.validate_collection(both, "event"))
    assert schema.validate_collection({"values": []}, "event")  # no "value", unexpected member
    with pytest.raises(csdl.CsdlValidationError) as err:
        schema.check({"value": [{"subject": 3}]}, "event", collection=True)
    assert err.value.issues[0].path == "$.value[0].subject"


def test_csdl_path_can_be_overridden_by_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.xml"
    tiny.write_text(
        '<Schema Namespace="microsoft.graph" xmlns="http://docs.oasis-open.org/odata/ns/edm">'
        '<ComplexType Name="thing"><Property Name="n" Type="Edm.Int32" Nullable="false"/></ComplexType>'
        "</Schema>"
    )
    monkeypatch.setenv("GRAPH_CSDL_PATH", str(tiny))
    assert csdl.default_csdl_path() == tiny
    schema = csdl.load_schema()
    assert schema.type_names() == ["microsoft.graph.thing"]
    assert [i.path for i in schema.validate({"n": None}, "thing")] == ["$.n"]


def test_error_and_user_schemas_catch_shape_errors() -> None:
    good = {"error": {"code": "ErrorItemNotFound", "message": "m", "innerError": {
        "date": "2026-11-24T09:00:00", "request-id": "r", "client-request-id": "c"}}}  # fmt: skip
    assert validate_error_body(good) == []
    assert validate_error_body({"error": {"code": "", "message": "m"}})
    assert validate_error_body({"error": {**good["error"], "extra": 1}}) == ["$.error: unexpected 'extra'"]
    user = {"id": "0f8fad5b-d9cb-469f-a165-70867728950e", "userPrincipalName": "a@b.test", "displayName": "A",
            "businessPhones": []}  # fmt: skip
    assert validate_user(user) == []
    assert validate_user({**user, "id": "nope"}) == ["$.id: must be a lower-case GUID string"]
