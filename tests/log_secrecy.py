"""Log secrecy for the whole test session (a pytest plugin, registered in ``conftest.py``).

Every log record of the session -- every logger, every level down to DEBUG, from every thread
-- is captured (its formatted message, exception text and stack) by one handler on the root
logger. Values that must never reach a log are registered with :func:`sensitive`:

- secrets: the Graph client secrets apps are registered with (``GraphSim`` /
  ``AuthService.register_app``), the CalDAV passwords (``devtools.servers.DEFAULT_PASSWORD``,
  every ``CalDAVServer`` a fixture hands out, Radicale's curator), the Azurite account key, and
  every ``*SECRET*`` / ``*PASSWORD*`` string constant of the test modules;
- contents: every event title and body the independent clients write
  (``devtools/clients.py``: ``GraphUserApp.create/create_raw/update``, ``CalDAVUserApp.put/put_raw``).

At session end every captured record is searched for every registered value; any hit fails
the run (exit status 1) with a report naming the value, the logger and the test(s).

Which values are registered (:func:`worth_checking`): after stripping, at least
``MIN_LENGTH`` (6) characters, and not a lone dictionary-like word: a value must contain a
character other than a letter (a space, a digit, punctuation: "Therapy session", "Token 2",
"Check-up") or be at least ``UNIQUE_LENGTH`` (12) characters long. A bare word of 6-11 letters
("Dentist", "Holiday", "Planning") may legitimately occur in a library's log line and is not
registered; shorter values never are. Secrets go through the same rule (all real ones pass).
Bodies are registered whole and line by line (and, for HTML, by the text between tags), so a
log line quoting one line of a body is still caught. Matching is case-sensitive and exact.

The check neither changes what other handlers see nor can a test switch it off: records below
the configured levels (or under ``logging.disable``) are still made, but only for the
collector (``LogSecrecy.install``), so caplog and pytest's reports see what they always saw; the
handler is re-attached around every test phase if a test took it off, and a record that would
not reach it (a non-propagating logger, root handlers replaced mid-test) is handed to it directly.
"""

from __future__ import annotations

import functools
import html
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MIN_LENGTH = 6
UNIQUE_LENGTH = 12
#: String constants of the test modules whose names match this are registered as secrets.
SECRET_NAME = re.compile(r"(?:^|_)(?:SECRET|PASSWORD)(?:$|_)")
_OUTSIDE = "(outside any test: session set-up / tear-down)"
_SHADOW = "_log_secrecy_shadow"  # marks a record only the collector may see
_TESTS_DIR = Path(__file__).resolve().parent

# -- the registry --------------------------------------------------------------------------------
_lock = threading.Lock()
_values: dict[str, str] = {}  # value -> where it came from (first registration)


def worth_checking(value: str) -> bool:
    """The rule above: long enough, and not a lone 6-11 letter word."""
    value = value.strip()
    if len(value) < MIN_LENGTH:
        return False
    return len(value) >= UNIQUE_LENGTH or not value.isalpha()


def sensitive(value: str | None, origin: str = "") -> bool:
    """Register ``value`` as never to be logged; False when the rule skips it."""
    if not isinstance(value, str) or not worth_checking(value):
        return False
    value = value.strip()
    with _lock:
        _values.setdefault(value, origin or "registered")
    return True


def sensitive_text(text: str | None, origin: str = "") -> None:
    """Register a body: whole, each line, and for HTML the text between the tags."""
    if not isinstance(text, str) or not text.strip():
        return
    sensitive(text, origin)
    parts = text.splitlines()
    if "<" in text and ">" in text:
        parts += [html.unescape(p) for p in re.split(r"<[^>]*>", text)]
    for part in parts:
        sensitive(part, origin)


def sensitive_ical(ics: str, origin: str = "") -> None:
    """Register every SUMMARY and DESCRIPTION of an iCalendar text (unfolded, unescaped)."""
    unfolded = re.sub(r"\r?\n[ \t]", "", ics)
    for line in unfolded.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.split(";", 1)[0].strip().upper() in ("SUMMARY", "DESCRIPTION"):
            value = (value.replace("\\n", "\n").replace("\\N", "\n").replace("\\,", ",")
                     .replace("\\;", ";").replace("\\\\", "\\"))
            sensitive_text(value, origin)


def registered() -> dict[str, str]:
    """A copy of the registry (value -> origin)."""
    with _lock:
        return dict(_values)


# -- the collector -------------------------------------------------------------------------------
@dataclass
class _Seen:
    level: str
    count: int = 0
    tests: list[str] = field(default_factory=list)


class Collector(logging.Handler):
    """Keeps the text of every record: one entry per distinct (logger, text), with the tests."""

    MAX_TESTS = 3

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: dict[tuple[str, str], _Seen] = {}
        self.records = 0
        self.current = _OUTSIDE
        self._formatter = logging.Formatter()

    def text_of(self, record: logging.LogRecord) -> str:
        try:
            text = record.getMessage()
        except Exception:  # a broken format: what it would have shown
            text = f"{record.msg!r} % {record.args!r}"
        if record.exc_info:
            text += "\n" + self._formatter.formatException(record.exc_info)
        elif record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + record.stack_info
        return text

    def emit(self, record: logging.LogRecord) -> None:
        text = self.text_of(record)
        self.records += 1
        entry = self.seen.get((record.name, text))
        if entry is None:
            entry = self.seen[(record.name, text)] = _Seen(record.levelname)
        entry.count += 1
        if len(entry.tests) < self.MAX_TESTS and self.current not in entry.tests:
            entry.tests.append(self.current)


@dataclass
class Leak:
    value: str
    origin: str
    logger: str
    level: str
    tests: list[str]
    excerpt: str


def find_leaks(seen: dict[tuple[str, str], _Seen], values: dict[str, str]) -> list[Leak]:
    """Every (value, logger) pair where a captured text contains a registered value.

    A regular expression over the distinct MIN_LENGTH-character prefixes (a trie, so the scan
    stays in C) finds candidate positions; each candidate is confirmed with ``startswith``."""
    if not values or not seen:
        return []
    by_prefix: dict[str, list[str]] = {}
    for value in values:
        by_prefix.setdefault(value[:MIN_LENGTH], []).append(value)
    scan = re.compile(_trie_pattern(by_prefix))
    leaks: dict[tuple[str, str], Leak] = {}
    for (logger, text), entry in seen.items():
        match = scan.search(text)
        while match is not None:
            pos = match.start()
            for value in by_prefix[text[pos:pos + MIN_LENGTH]]:
                if text.startswith(value, pos) and (value, logger) not in leaks:
                    lo, hi = max(0, pos - 60), min(len(text), pos + len(value) + 60)
                    leaks[(value, logger)] = Leak(value, values[value], logger, entry.level, list(entry.tests),
                                                  text[lo:hi])
            match = scan.search(text, pos + 1)
    return list(leaks.values())


def _trie_pattern(words: Iterable[str]) -> str:
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})

    def build(node: dict[str, Any]) -> str:
        alternatives = [re.escape(ch) + build(child) for ch, child in sorted(node.items())]
        if not alternatives:
            return ""
        return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"

    return build(trie)


# -- the plugin ----------------------------------------------------------------------------------
class LogSecrecy:
    def __init__(self) -> None:
        self.collector = Collector()
        self.tampering: list[str] = []
        self.leaks: list[Leak] = []
        self.check_seconds = 0.0
        self._undo: list[Callable[[], None]] = []

    # installation -------------------------------------------------------------------------------
    def install(self) -> None:
        """The handler on the root logger, and four wrappers on ``logging.Logger`` so that it sees
        every record at DEBUG and above while every other handler sees exactly what it saw before
        (the levels the tests set stay in force for them: caplog's view does not change).

        - ``isEnabledFor``: DEBUG and above are always "enabled", so the records get made;
        - ``makeRecord``: a record the real configuration (levels, ``logging.disable``) would not
          have made is marked as a shadow;
        - ``handle``: a shadow goes through the logger's own filters (msal's redaction) to the
          collector only, never to another handler;
        - ``callHandlers``: a real record that would not reach the root handler (a
          non-propagating logger, root handlers replaced mid-test) is handed to it directly."""
        self.ensure(initial=True)
        collector = self.collector
        enabled, make, handle, call = (logging.Logger.isEnabledFor, logging.Logger.makeRecord,
                                       logging.Logger.handle, logging.Logger.callHandlers)

        def is_enabled_for(logger: logging.Logger, level: int) -> bool:
            return level >= collector.level or enabled(logger, level)

        def make_record(logger: logging.Logger, name: str, level: int, *args: Any, **kwargs: Any
                        ) -> logging.LogRecord:
            record = make(logger, name, level, *args, **kwargs)
            if not enabled(logger, level):
                record.__dict__[_SHADOW] = True
            return record

        def handle_record(logger: logging.Logger, record: logging.LogRecord) -> None:
            if not record.__dict__.get(_SHADOW):
                handle(logger, record)
            elif not logger.disabled and logger.filter(record):
                collector.handle(record)

        def call_handlers(logger: logging.Logger, record: logging.LogRecord) -> None:
            if not _reaches(logger, collector) and record.levelno >= collector.level:
                collector.handle(record)
            call(logger, record)

        for name, original, replacement in (("isEnabledFor", enabled, is_enabled_for),
                                            ("makeRecord", make, make_record),
                                            ("handle", handle, handle_record),
                                            ("callHandlers", call, call_handlers)):
            setattr(logging.Logger, name, replacement)
            self._undo.append(functools.partial(setattr, logging.Logger, name, original))
        self._wrap_register_app()

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
        logging.getLogger().removeHandler(self.collector)

    def ensure(self, *, initial: bool = False) -> None:
        """Put the handler back on the root logger if a test took it off."""
        root = logging.getLogger()
        if self.collector not in root.handlers:
            root.addHandler(self.collector)
            if not initial:
                self.tampering.append(f"the root handler was removed (re-attached after {self.collector.current})")

    def _wrap_register_app(self) -> None:
        """Every client secret an app is registered with in the Graph stand-in is sensitive."""
        try:
            from devtools.graphsim.auth import AuthService
        except ImportError:  # a pytester run without the repository on the path
            return
        original = AuthService.register_app

        def register_app(service: Any, tenant_id: str, client_id: str, client_secret: str | None = None,
                         *args: Any, **kwargs: Any) -> Any:
            sensitive(client_secret, f"Graph client secret of app {client_id!r}")
            return original(service, tenant_id, client_id, client_secret, *args, **kwargs)

        AuthService.register_app = register_app  # type: ignore[method-assign, assignment]
        self._undo.append(lambda: setattr(AuthService, "register_app", original))

    # hooks --------------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        _register_known_secrets()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        _register_module_constants()

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
                             ) -> Generator[None, Any, Any]:
        value = yield
        _register_fixture_value(value)
        return value

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.collector.current = nodeid

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        self.collector.current = _OUTSIDE

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._phase())

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._phase())

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None
                                ) -> Generator[None, None, None]:
        return (yield from self._phase())

    def _phase(self) -> Generator[None, None, None]:
        self.ensure()
        try:
            return (yield)
        finally:
            self.ensure()

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.ensure()
        started = time.perf_counter()
        self.leaks = find_leaks(self.collector.seen, registered())
        self.check_seconds = time.perf_counter() - started
        if self.leaks and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        tr = terminalreporter
        values = registered()
        if not self.leaks:
            tr.write_line(f"log secrecy: {self.collector.records} log record(s) "
                          f"({len(self.collector.seen)} distinct) checked against {len(values)} sensitive value(s) "
                          f"in {self.check_seconds:.2f} s: no leak")
        else:
            tr.section("log secrecy: sensitive values in the logs", sep="=", red=True, bold=True)
            for leak in sorted(self.leaks, key=lambda lk: (lk.logger, lk.value)):
                tr.write_line(f"LEAK of {leak.value!r} ({leak.origin})", red=True, bold=True)
                tr.write_line(f"  logger: {leak.logger} ({leak.level})")
                tr.write_line(f"  test(s): {', '.join(leak.tests)}")
                tr.write_line(f"  text: ...{leak.excerpt!r}...")
            tr.write_line(f"log secrecy: {len(self.leaks)} leak(s) in {self.collector.records} log record(s); "
                          "the run fails", red=True, bold=True)
        for note in dict.fromkeys(self.tampering):
            tr.write_line(f"log secrecy: note: {note}", yellow=True)


def _reaches(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether a record handled by ``logger`` reaches ``handler`` (Logger.callHandlers' walk)."""
    current: logging.Logger | None = logger
    while current is not None:
        if handler in current.handlers:
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def _register_known_secrets() -> None:
    try:
        from devtools import servers
    except ImportError:
        return
    sensitive(servers.DEFAULT_PASSWORD, "devtools.servers.DEFAULT_PASSWORD (CalDAV password)")
    sensitive(servers.AZURITE_KEY, "devtools.servers.AZURITE_KEY (storage account key)")


def _register_fixture_value(value: Any) -> None:
    kind = type(value).__name__
    if kind == "CalDAVServer":
        sensitive(getattr(value, "password", None), "CalDAVServer.password")
        curator = getattr(value, "curator_auth", None)
        if curator:
            sensitive(curator[1], "CalDAVServer.curator_auth password")
    elif kind == "AzuriteServer":
        sensitive(getattr(value, "key", None), "AzuriteServer.key")


def _register_module_constants() -> None:
    """``*SECRET*`` / ``*PASSWORD*`` string constants of the modules under tests/."""
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or Path(path).resolve().parent != _TESTS_DIR:
            continue
        for name, value in list(vars(module).items()):
            if isinstance(value, str) and SECRET_NAME.search(name):
                sensitive(value, f"{module.__name__}.{name}")


_PLUGIN_NAME = "log-secrecy"


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.has_plugin(_PLUGIN_NAME):
        return
    plugin = LogSecrecy()
    plugin.install()
    config.pluginmanager.register(plugin, _PLUGIN_NAME)
    config.add_cleanup(plugin.uninstall)
