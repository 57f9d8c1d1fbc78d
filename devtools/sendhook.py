"""Watch every HTTP request this process sends: a wrapper around ``Session.send`` of requests
(azure-core's transport and the Graph client send through it) and of niquests (the CalDAV
client's library). Used by the tick benchmark and by tests that bound how many requests a
sync costs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

#: ``record(method, url, seconds)`` after each request (from the sending thread).
Recorder = Callable[[str, str, float], None]


@contextlib.contextmanager
def watching_requests(record: Recorder) -> Iterator[None]:
    import requests

    sessions: list[Any] = [requests.Session]
    with contextlib.suppress(ImportError):
        import niquests

        sessions.append(niquests.Session)
    undo: list[tuple[Any, Any]] = []
    for cls in sessions:
        original = cls.send

        def send(self: Any, request: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _original(self, request, *args, **kwargs)
            finally:
                record(str(request.method), str(request.url), time.perf_counter() - started)

        cls.send = send
        undo.append((cls, original))
    try:
        yield
    finally:
        for cls, original in undo:
            cls.send = original
