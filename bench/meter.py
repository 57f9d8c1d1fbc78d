"""Count HTTP requests and bytes a process sends and receives, per server port, at the socket
layer (plain sockets and TLS plaintext alike), whatever HTTP library made them (requests,
niquests, http.client). For benchmarks only: it patches ``socket.socket`` and
``ssl.SSLSocket`` methods while the context is open.

A request is counted when a send starts with ``METHOD SP target SP HTTP/1.x CRLF`` (every
HTTP/1.1 client here writes the request head with one send)."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_REQUEST_LINE = re.compile(rb"^[A-Z]{3,12} \S+ HTTP/1\.[01]\r\n")


@dataclass
class Traffic:
    requests: int = 0
    sent: int = 0
    received: int = 0

    @property
    def bytes(self) -> int:
        return self.sent + self.received


@dataclass
class Meter:
    by_port: dict[int, Traffic] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, port: int) -> Traffic:
        with self.lock:
            return Traffic(**vars(self.by_port.get(port, Traffic())))

    def reset(self) -> None:
        with self.lock:
            self.by_port.clear()

    def _add(self, sock: Any, sent: int = 0, received: int = 0, data: bytes | None = None) -> None:
        try:
            port = sock.getpeername()[1]
        except (OSError, IndexError, TypeError):
            return
        with self.lock:
            row = self.by_port.setdefault(port, Traffic())
            row.sent += sent
            row.received += received
            if data is not None and _REQUEST_LINE.match(data):
                row.requests += 1


@contextmanager
def metered() -> Iterator[Meter]:
    """Count traffic of every socket of this process while open."""
    meter = Meter()
    undo: list[Callable[[], None]] = []

    def patch(cls: type, name: str, make: Callable[[Any], Any]) -> None:
        own = name in cls.__dict__
        original = getattr(cls, name)
        setattr(cls, name, make(original))
        undo.append((lambda: setattr(cls, name, original)) if own else (lambda: delattr(cls, name)))

    def sender(original: Any) -> Any:
        def send(self: Any, data: Any, *args: Any) -> Any:
            result = original(self, data, *args)
            view = bytes(memoryview(data)[:8192])
            count = len(data) if result is None else int(result)
            meter._add(self, sent=count, data=view)
            return result
        return send

    def receiver(original: Any) -> Any:
        def recv(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            meter._add(self, received=len(result) if isinstance(result, bytes) else int(result or 0))
            return result
        return recv

    for cls in (socket.socket, ssl.SSLSocket):
        for name in ("send", "sendall"):
            if cls is ssl.SSLSocket and name == "sendall":
                continue  # SSLSocket.sendall calls self.send: counted there
            patch(cls, name, sender)
        for name in ("recv", "recv_into"):
            patch(cls, name, receiver)
    try:
        yield meter
    finally:
        for step in reversed(undo):
            step()
