"""The log-secrecy plugin (tests/log_secrecy.py) itself: a pytest run in which a test logs a
registered value fails with a report (value, logger, test), however the test set up or tore
down logging; a run without a leak passes; and the clients really register what they write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from log_secrecy import find_leaks, registered, sensitive_ical, sensitive_text, worth_checking

from devtools.clients import CalDAVUserApp, GraphUserApp
from devtools.servers import HTTPResult

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

LEAKING = '''
import logging

from log_secrecy import sensitive

TITLE = "Quarterly board meeting 7"
PASSWORD = "hunter2-secret-pw"


def test_register():
    assert sensitive(TITLE, "a title from the test")
    assert sensitive(PASSWORD, "a password from the test")
    assert not sensitive("Dentist") and not sensitive("notes")


def test_plain_debug_record():
    logging.getLogger("lib.plain").debug("synced event %s", TITLE)


def test_exception_text():
    try:
        raise ValueError(f"cannot convert {TITLE!r}")
    except ValueError:
        logging.getLogger("lib.exc").exception("conversion failed")


def test_handlers_replaced_in_the_middle_of_a_test():
    logging.root.handlers = [logging.NullHandler()]
    logging.getLogger("lib.rebel").warning("logging in with %s", PASSWORD)


def test_non_propagating_logger():
    quiet = logging.getLogger("lib.quiet")
    quiet.propagate = False
    quiet.error("%s", PASSWORD)


def test_leaves_logging_disabled_and_the_root_at_critical():
    logging.root.handlers.clear()
    logging.root.setLevel(logging.CRITICAL)
    logging.disable(logging.CRITICAL)


def test_logs_after_the_previous_test_switched_logging_off():
    logging.getLogger("lib.after").info("title: %s", TITLE)


def test_caplog_sees_only_what_the_levels_let_through(caplog):
    logging.getLogger("lib.unseen").debug("again: %s", TITLE)  # below the root's WARNING
    assert caplog.records == []  # the check does not change what other handlers see ...


def test_logs_a_value_registered_only_later():
    logging.getLogger("lib.early").info("Late registered title 9 arrived")


def test_registers_it():
    assert sensitive("Late registered title 9", "registered after it was logged")
'''

CLEAN = '''
import logging

from log_secrecy import sensitive


def test_nothing_leaks():
    assert sensitive("Quarterly board meeting 7", "a title")
    assert not sensitive("Dentist")
    log = logging.getLogger("lib.plain")
    log.debug("synced 3 events for %s", "user@contoso.test")
    log.warning("Dentist")  # a bare word is not registered: no false positive
    log.info("Quarterly board meeting")  # a different text: no match
'''


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest_subprocess("-p", "log_secrecy", "-p", "no:cacheprovider", "-q")


def test_a_run_that_logs_a_registered_value_fails_with_a_report(pytester: pytest.Pytester,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, LEAKING)
    result.assert_outcomes(passed=10)  # every test passed ...
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # ... and the run failed
    out = result.stdout.str()
    assert "log secrecy: sensitive values in the logs" in out
    for value, logger, test in (
        ("Quarterly board meeting 7", "lib.plain (DEBUG)", "test_plain_debug_record"),
        ("Quarterly board meeting 7", "lib.exc (ERROR)", "test_exception_text"),
        ("hunter2-secret-pw", "lib.rebel (WARNING)", "test_handlers_replaced_in_the_middle_of_a_test"),
        ("hunter2-secret-pw", "lib.quiet (ERROR)", "test_non_propagating_logger"),
        ("Quarterly board meeting 7", "lib.after (INFO)", "test_logs_after_the_previous_test_switched_logging_off"),
        ("Late registered title 9", "lib.early (INFO)", "test_logs_a_value_registered_only_later"),
        ("Quarterly board meeting 7", "lib.unseen (DEBUG)", "test_caplog_sees_only_what_the_levels_let_through"),
    ):
        block = out.split(f"LEAK of {value!r}")
        assert any(f"logger: {logger}\n  test(s): test_inner.py::{test}" in b for b in block[1:]), (value, logger)
    assert "a password from the test" in out  # where the value came from
    assert "7 leak(s)" in out  # ... but it sees every record, also those
    assert "the root handler was removed (re-attached after test_inner.py::test_leaves_logging" in out


def test_a_run_without_a_leak_passes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, CLEAN)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["log secrecy: * log record(s) * checked against * sensitive value(s) in * s: no leak"])


def test_the_rule_for_what_is_registered() -> None:
    for value in ("Therapy session", "Token 2", "Check-up", "Event +1", "app-secret-for-tests", "Supercalifragilistic"):
        assert worth_checking(value), value
    for value in ("", "notes", "Token", "Dentist", "Holiday", "Planning", "  agenda  ", "Quarterlyyy"):
        assert not worth_checking(value), value


def test_find_leaks_finds_overlapping_and_repeated_prefixes() -> None:
    from log_secrecy import _Seen

    values = {"aaaaaa1": "x", "aaaaaa2 b": "y", "Team meeting": "z", "Team meeting 2": "w"}
    seen = {("l1", "xaaaaaaa1 and aaaaaa2 b"): _Seen("INFO", 1, ["t1"]),
            ("l2", "Team meeting 2"): _Seen("INFO", 1, ["t2"]),
            ("l3", "team meeting"): _Seen("INFO", 1, ["t3"])}  # matching is case-sensitive
    found = {(leak.value, leak.logger) for leak in find_leaks(seen, values)}
    assert found == {("aaaaaa1", "l1"), ("aaaaaa2 b", "l1"), ("Team meeting", "l2"), ("Team meeting 2", "l2")}


def test_bodies_and_icalendar_texts_are_registered_whole_and_in_parts() -> None:
    sensitive_text("<p>Bring the lsq <b>quarterly</b> numbers</p>\n<div>Lsq room 4, floor 2</div>", "unit test")
    sensitive_ical("BEGIN:VEVENT\r\nSUMMARY;LANGUAGE=en:Lsq folded\r\n  title\\, with comma\r\n"
                   "DESCRIPTION:lsq line one\\nlsq line two\r\nLOCATION:Lsq room 99\r\nEND:VEVENT\r\n", "unit test")
    values = registered()
    assert "<p>Bring the lsq <b>quarterly</b> numbers</p>\n<div>Lsq room 4, floor 2</div>" in values  # whole
    for value in ("Bring the lsq", "Lsq room 4, floor 2", "Lsq folded title, with comma", "lsq line one\nlsq line two",
                  "lsq line one", "lsq line two"):
        assert value in values, value
    assert "quarterly" not in values  # a bare word
    assert "Lsq room 99" not in values  # locations are not registered, only titles and bodies


class _FakeServer:
    def request(self, method: str, url: str, **kwargs: Any) -> HTTPResult:
        return HTTPResult(201, {}, b"")


def test_the_independent_clients_register_every_title_and_body_they_write(monkeypatch: pytest.MonkeyPatch) -> None:
    caldav = CalDAVUserApp(_FakeServer(), "http://127.0.0.1:9/cal/")  # type: ignore[arg-type]
    caldav.put("Clients test title 1", "20260105T090000Z", "20260105T100000Z", description="Clients test body 1")
    caldav.put_raw("x.ics", "BEGIN:VEVENT\r\nSUMMARY:Clients test title 2\r\nEND:VEVENT\r\n")
    graph = object.__new__(GraphUserApp)
    monkeypatch.setattr(graph, "_call", lambda *a, **kw: type("R", (), {"json": lambda self: {}})(), raising=False)
    graph.create("u@x", "Clients test title 3", "2026-01-05T09:00:00", "2026-01-05T10:00:00",
                 body="Clients test body 3")
    graph.create_raw("u@x", {"subject": "Clients test title 4", "body": {"contentType": "html",
                                                                          "content": "<p>Clients test body 4</p>"}})
    graph.update("u@x", "id", subject="Clients test title 5", body={"content": "Clients test body 5"})
    values = registered()
    for n in (1, 3, 5):
        assert f"Clients test title {n}" in values and f"Clients test body {n}" in values, n
    assert "Clients test title 2" in values and "Clients test title 4" in values
    assert "Clients test body 4" in values
    assert "CalDAVUserApp.put" in values["Clients test title 1"]  # the report says where a value came from
