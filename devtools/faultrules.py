"""What the two fault injectors share (``devtools/faultproxy.py`` in front of a CalDAV server,
``devtools/graphsim/faults.py`` inside the Graph stand-in): how a rule names the requests it
applies to and counts what it has left, and how a connection is dropped without an answer."""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Iterable
from contextlib import suppress


def methods_of(value: str | Iterable[str]) -> frozenset[str]:
    """``"PUT,DELETE"`` / ``["PUT"]`` / ``"*"`` as a set of upper-case method names."""
    items = [value] if isinstance(value, str) else list(value)
    out = frozenset(m.strip().upper() for item in items for m in item.split(",") if m.strip())
    if not out:
        raise ValueError("methods must name at least one HTTP method (or '*')")
    return out


class RuleMatching:
    """Mixin for a bounded fault rule with ``count``, ``fired``, ``methods`` (a frozenset from
    :func:`methods_of`) and ``_pattern`` (the compiled path expression)."""

    count: int
    fired: int
    methods: str | Iterable[str]
    _pattern: re.Pattern[str]

    @property
    def left(self) -> int:
        return self.count - self.fired

    def matches(self, method: str, path: str) -> bool:
        methods = self.methods
        assert isinstance(methods, frozenset)
        return ("*" in methods or method.upper() in methods) and self._pattern.search(path) is not None


def drop_connection(connection: socket.socket, *, rst: bool) -> None:
    """Give up on a client connection without answering: with ``rst`` a TCP reset (SO_LINGER 0),
    else an orderly close. The close completes when the request handler lets go of the socket."""
    if rst:
        with suppress(OSError):
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        with suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
    with suppress(OSError):
        connection.close()
