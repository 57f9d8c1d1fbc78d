"""The readable note that carries what Graph cannot hold without side effects.

Writing ``attendees`` to a Microsoft 365 event makes Exchange send meeting requests (*Create
event*: "an invitation is sent to each attendee"), and ``onlineMeeting.joinUrl`` is read-only.
So a copy of a CalDAV invitation keeps its organizer, attendees and join URL as lines at the
end of the body, each starting with :data:`NOTE_PREFIX`, and as JSON in the extended property
:data:`ATTENDEES_PROPERTY_ID` (``$expand`` on a single GET; delta cannot expand, so the
reader parses the lines). The reader strips the note again, so the body a user wrote
round-trips unchanged.

Line forms (one per line, in this order)::

    [davbridge] Organizer: Ada Lovelace <ada@example.com>
    [davbridge] Attendee: Bob <bob@example.com>; optional; accepted
    [davbridge] Join: https://meet.example.com/abc
    [davbridge] Series: one occurrence of a repeating event kept in the CalDAV calendar
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Any

from sync_core.model import AttendeeRole, Event, Person, ResponseStatus

NOTE_PREFIX = "[davbridge] "
ATTENDEES_PROPERTY_ID = "String {7a658d66-d096-4926-a509-61d41de9322e} Name davbridgeAttendees"
#: ``Event.extra`` key set on an occurrence copied out of a series Graph cannot express.
SERIES_EXTRA = "davbridge-expanded-series"
SERIES_LINE = "Series: one occurrence of a repeating event kept in the CalDAV calendar (edit the series there)"
_HTML_NOTE = re.compile(r"<div\s+id=\"davbridge-note\"[^>]*>.*?</div>", re.IGNORECASE | re.DOTALL)
_PERSON = re.compile(r"^(?P<name>.*?)\s*<(?P<email>[^<>\s]+)>$")


@dataclass(frozen=True)
class Note:
    """What the note says; ``None`` fields were not in it."""

    organizer: Person | None = None
    attendees: tuple[Person, ...] = ()
    join_url: str = ""
    series: bool = False

    @property
    def empty(self) -> bool:
        return self.organizer is None and not self.attendees and not self.join_url and not self.series


def note_for(event: Event, *, graph_attendees: bool = False, graph_join_url: str = "") -> Note:
    """The note a Graph copy of ``event`` needs: what Graph would not hold by itself.

    ``graph_attendees``: the Graph event already lists these attendees itself (a meeting that
    lives in Microsoft 365), so no note is needed for them; likewise ``graph_join_url``.
    """
    people = not graph_attendees and (event.attendees or event.organizer is not None)
    return Note(
        organizer=event.organizer if people else None,
        attendees=event.attendees if people else (),
        join_url=event.online_meeting_url if event.online_meeting_url != graph_join_url else "",
        series=any(key == SERIES_EXTRA for key, _ in event.extra),
    )


def note_lines(note: Note) -> list[str]:
    lines: list[str] = []
    if note.organizer is not None:
        lines.append(f"Organizer: {_person_text(note.organizer)}")
    for person in note.attendees:
        lines.append(f"Attendee: {_person_text(person)}; {person.role.value}; {person.status.value}")
    if note.join_url:
        lines.append(f"Join: {note.join_url}")
    if note.series:
        lines.append(SERIES_LINE)
    return [NOTE_PREFIX + line for line in lines]


def note_html(note: Note) -> str:
    """The note as an HTML block appended to an HTML body."""
    lines = note_lines(note)
    if not lines:
        return ""
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return f'<div id="davbridge-note">{paragraphs}</div>'


def note_property(note: Note) -> dict[str, str] | None:
    """``singleValueExtendedProperties`` entry holding the people as JSON (machine-readable)."""
    if note.organizer is None and not note.attendees:
        return None
    data: dict[str, Any] = {
        "organizer": _person_json(note.organizer) if note.organizer else None,
        "attendees": [_person_json(person) for person in note.attendees],
    }
    return {"id": ATTENDEES_PROPERTY_ID, "value": json.dumps(data, separators=(",", ":"), ensure_ascii=False)}


def strip_html_note(content: str) -> str:
    return _HTML_NOTE.sub("", content)


def split_note(text: str) -> tuple[str, Note]:
    """(body text without the trailing note lines, the note they held)."""
    lines = text.split("\n")
    end = len(lines)
    while end > 0 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(NOTE_PREFIX)):
        end -= 1
    note_part = [line.strip()[len(NOTE_PREFIX):] for line in lines[end:] if line.strip()]
    if not note_part:
        return text, Note()
    body = "\n".join(lines[:end])
    return body, _parse(note_part)


def _parse(lines: list[str]) -> Note:
    organizer: Person | None = None
    attendees: list[Person] = []
    join_url = ""
    series = False
    for line in lines:
        head, _, rest = line.partition(": ")
        if head == "Organizer":
            organizer = _person_from_text(rest, AttendeeRole.REQUIRED, ResponseStatus.ORGANIZER)
        elif head == "Attendee":
            who, role_text, status_text = ([*rest.rsplit("; ", 2), "", ""])[:3]
            person = _person_from_text(who, _enum(AttendeeRole, role_text, AttendeeRole.REQUIRED),
                                       _enum(ResponseStatus, status_text, ResponseStatus.NONE))
            if person is not None:
                attendees.append(person)
        elif head == "Join":
            join_url = rest.strip()
        elif line == SERIES_LINE:
            series = True
    return Note(organizer, tuple(attendees), join_url, series)


def people_from_property(value: str) -> tuple[Person | None, tuple[Person, ...]] | None:
    """The people stored in :data:`ATTENDEES_PROPERTY_ID`, ``None`` when unreadable."""
    try:
        data = json.loads(value)
        organizer = _person_from_json(data.get("organizer")) if data.get("organizer") else None
        attendees = tuple(p for p in (_person_from_json(item) for item in data.get("attendees") or []) if p)
    except (ValueError, AttributeError, TypeError):
        return None
    return organizer, attendees


def _enum(kind: Any, text: str, default: Any) -> Any:
    for member in kind:
        if member.value == text.strip():
            return member
    return default


def _person_text(person: Person) -> str:
    name = " ".join(person.name.split())
    return f"{name} <{person.email}>" if name else f"<{person.email}>"


def _person_from_text(text: str, role: AttendeeRole, status: ResponseStatus) -> Person | None:
    match = _PERSON.match(text.strip())
    if match is None:
        return None
    return Person(email=match.group("email"), name=match.group("name").strip(), role=role, status=status)


def _person_json(person: Person) -> dict[str, str]:
    return {"email": person.email, "name": person.name, "role": person.role.value, "status": person.status.value}


def _person_from_json(item: Any) -> Person | None:
    if not isinstance(item, dict) or not isinstance(item.get("email"), str):
        return None
    return Person(
        email=item["email"],
        name=str(item.get("name") or ""),
        role=_enum(AttendeeRole, str(item.get("role") or ""), AttendeeRole.REQUIRED),
        status=_enum(ResponseStatus, str(item.get("status") or ""), ResponseStatus.NONE),
    )
