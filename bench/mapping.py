"""``mapping``: events per second through the converters, Graph JSON -> model -> iCalendar and
back (iCalendar -> model -> Graph JSON), for a mix of single events (time zones, bodies,
categories, reminders) and weekly series. CPU only, no I/O."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sync_core.convert.graph_json import event_from_graph, event_to_graph
from sync_core.convert.ical import event_from_ical, event_to_ical

ZONES = ["W. Europe Standard Time", "Pacific Standard Time", "UTC", "Tokyo Standard Time"]


def graph_payloads(n: int) -> list[dict[str, Any]]:
    """``n`` Graph event payloads as delta returns them (every 10th a weekly series master)."""
    t0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
    out = []
    for i in range(n):
        start = t0 + timedelta(hours=i)
        zone = ZONES[i % len(ZONES)]
        payload: dict[str, Any] = {
            "id": f"AAMkBench{i}==",
            "@odata.etag": f'W/"bench{i}"',
            "changeKey": f"bench{i}",
            "iCalUId": f"040000008200E00074C5B7101A82E0080000000{i:08d}",
            "subject": f"Meeting {i} about the quarterly plan",
            "body": {"contentType": "html", "content": f"<html><body><p>Agenda item {i}</p><ul><li>one</li>"
                                                       "<li>two</li></ul></body></html>"},
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": zone},
            "end": {"dateTime": (start + timedelta(minutes=45)).strftime("%Y-%m-%dT%H:%M:%S.0000000"),
                    "timeZone": zone},
            "originalStartTimeZone": zone,
            "originalEndTimeZone": zone,
            "location": {"displayName": f"Room {i % 12}"},
            "isAllDay": False,
            "showAs": "busy",
            "sensitivity": "normal",
            "importance": "normal",
            "categories": ["Blue category"] if i % 3 == 0 else [],
            "isReminderOn": True,
            "reminderMinutesBeforeStart": 15,
            "lastModifiedDateTime": "2026-11-20T10:00:00Z",
            "createdDateTime": "2026-11-20T10:00:00Z",
            "type": "singleInstance",
            "isOrganizer": True,
            "attendees": [],
        }
        if i % 10 == 0:
            payload["type"] = "seriesMaster"
            payload["recurrence"] = {
                "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [start.strftime("%A").lower()],
                            "firstDayOfWeek": "monday"},
                "range": {"type": "numbered", "startDate": start.date().isoformat(), "numberOfOccurrences": 10,
                          "recurrenceTimeZone": zone},
            }
        out.append(payload)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    n = 500 if quick else 5000
    payloads = graph_payloads(n)
    started = time.perf_counter()
    for payload in payloads:
        event = event_from_graph(payload)
        text = event_to_ical(event)
        back = event_from_ical(text)
        event_to_graph(back, uid_tag=back.uid)
    seconds = time.perf_counter() - started
    return {"events": n, "seconds": round(seconds, 3), "events_per_second": round(n / seconds, 1),
            "path": "Graph JSON -> Event -> iCalendar -> Event -> Graph JSON"}
