"""A counting TCP relay: put it between a client and a server to count the bytes they exchange.

    with TcpMeter("127.0.0.1", 5232) as meter:
        url = meter.rewrite("http://127.0.0.1:5232/alice/calendar/")   # -> the meter's port
        ...                                                           # the client talks to url
        meter.counts()   # {"sent": bytes client -> server, "received": server -> client, "connections": n}
        meter.reset()    # returns the counts and starts again from zero

Payload bytes as TCP carries them (HTTP headers and bodies, TLS records if the protocol is TLS),
without TCP/IP headers. Two threads per connection in this process; only for loopback benchmarks.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 256 * 1024


class TcpMeter:
    """Listens on ``host`` (a free port) and relays every connection to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sent = 0
        self._received = 0
        self._connections = 0
        self._active = 0
        self._sockets: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcpmeter-{self.port}", daemon=True)
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> TcpMeter:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        return cls(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))

    def rewrite(self, url: str) -> str:
        """``url`` with its host and port replaced by the meter's."""
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, f"{self.host}:{self.port}", parts.path, parts.query, parts.fragment))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"sent": self._sent, "received": self._received, "connections": self._connections}

    def reset(self) -> dict[str, int]:
        """The counts so far, then zero (waits briefly for connections still closing)."""
        self.wait_idle(1.0)
        with self._lock:
            out = {"sent": self._sent, "received": self._received, "connections": self._connections}
            self._sent = self._received = self._connections = 0
        return out

    def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no relayed connection is open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._active:
                    return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            live = list(self._sockets)
        for s in live:
            with contextlib.suppress(OSError):
                s.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TcpMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- relaying -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections += 1
                self._active += 1
                self._sockets.update((client, upstream))
            done = _Countdown(2, functools.partial(self._closed, client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, "sent", done), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "received", done), daemon=True).start()

    def _closed(self, client: socket.socket, upstream: socket.socket) -> None:
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.close()
        with self._lock:
            self._active -= 1
            self._sockets.difference_update((client, upstream))

    def _pump(self, src: socket.socket, dst: socket.socket, counter: str, done: _Countdown) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                with self._lock:
                    if counter == "sent":
                        self._sent += len(data)
                    else:
                        self._received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            done.tick()


class _Countdown:
    """Calls ``action`` once ``tick()`` was called ``count`` times (both directions ended)."""

    def __init__(self, count: int, action: Callable[[], None]) -> None:
        self._left = count
        self._action = action
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._action()
