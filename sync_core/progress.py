"""A one-line text progress bar for long CLI operations (first sync of a user, bulk import).

    label [####................] 120/500 (24%) 3.1/s eta 2m08s

On a terminal the line is redrawn in place ("\\r") at most every :data:`REDRAW_INTERVAL`
seconds. When the stream is not a terminal (CI logs, pipes, files) a plain line is printed at
every 10% instead (with an unknown total: every :data:`PLAIN_INTERVAL` seconds), without any
control characters. :meth:`Progress.close` (or leaving the ``with`` block) prints the final
line with the elapsed time. An unknown total shows a counter and the rate only; it may be set
later with :meth:`Progress.set_total`. All methods are thread-safe: workers may call
:meth:`Progress.advance` concurrently. Output errors (a closed pipe) never reach the caller.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

BAR_WIDTH = 20
#: At most one redraw per this many seconds on a terminal.
REDRAW_INTERVAL = 0.1
#: Not a terminal and no total known: one plain line per this many seconds.
PLAIN_INTERVAL = 10.0
_DEFAULT_COLUMNS = 80


class Progress:
    """Progress of ``total`` steps (``None``: not known yet) written to ``stream`` (default
    ``sys.stderr`` at construction). ``enabled=False`` prints nothing (counting still works);
    ``None`` (the default) prints whenever there is a stream."""

    def __init__(self, total: int | None, label: str, *, stream: TextIO | None = None, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is not None and total < 0:
            raise ValueError("total must not be negative")
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = (self._stream is not None) if enabled is None else enabled
        self.label = "".join(" " if not ch.isprintable() else ch for ch in label)
        self._clock = clock
        self._lock = threading.Lock()
        self._total = total
        self._done = 0
        self._start = clock()
        self._closed = False
        self._broken = False
        self._tty = self.enabled and _isatty(self._stream)
        self._columns = _columns(self._stream) if self._tty else _DEFAULT_COLUMNS
        self._drawn_len = 0  # terminal: length of the line on screen
        self._last_draw = -math.inf
        self._last_decile = self._decile()  # not a terminal: the last 10% step printed
        self._last_plain = self._start
        if self._tty:
            with self._lock:
                self._draw(self._start)

    # -- state --------------------------------------------------------------------------------
    @property
    def done(self) -> int:
        with self._lock:
            return self._done

    @property
    def total(self) -> int | None:
        with self._lock:
            return self._total

    @property
    def elapsed(self) -> float:
        return max(0.0, self._clock() - self._start)

    @property
    def is_tty(self) -> bool:
        return self._tty

    # -- updates ------------------------------------------------------------------------------
    def advance(self, n: int = 1) -> None:
        """``n`` more steps are done."""
        if n < 0:
            raise ValueError("advance by a negative amount")
        with self._lock:
            self._done += n
            self._update()

    def set_total(self, n: int | None) -> None:
        """The total became known (or changed); the next 10% step counts from here."""
        if n is not None and n < 0:
            raise ValueError("total must not be negative")
        with self._lock:
            self._total = n
            self._last_decile = self._decile()
            self._update()

    def close(self) -> None:
        """Print the final line with the elapsed time (once; later calls do nothing)."""
        self._finish(stopped=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._finish(stopped=exc_type is not None)

    # -- output (always under the lock) -------------------------------------------------------
    def _finish(self, *, stopped: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self.enabled:
                return
            now = self._clock()
            elapsed = _duration(max(0.0, now - self._start))
            line = self._line(now, tail=f"stopped after {elapsed}" if stopped else f"in {elapsed}")
            if self._tty:
                line = self._fit(line)
                self._write("\r" + line + " " * max(0, self._drawn_len - len(line)) + "\n")
            else:
                self._write(line + "\n")

    def _update(self) -> None:
        if not self.enabled or self._closed or self._broken:
            return
        now = self._clock()
        if self._tty:
            if now - self._last_draw >= REDRAW_INTERVAL:
                self._draw(now)
            return
        if self._total is None:
            if now - self._last_plain >= PLAIN_INTERVAL:
                self._last_plain = now
                self._write(self._line(now) + "\n")
            return
        decile = self._decile()
        if decile > self._last_decile:
            self._last_decile = decile
            if decile < 10:  # 100%: the final line from close() says it, with the time
                self._write(self._line(now) + "\n")

    def _draw(self, now: float) -> None:
        line = self._fit(self._line(now))
        self._write("\r" + line + " " * max(0, self._drawn_len - len(line)))
        self._drawn_len = len(line)
        self._last_draw = now

    def _decile(self) -> int:
        if self._total is None:
            return 0
        return int(self._fraction() * 10)

    def _fraction(self) -> float:
        assert self._total is not None
        if self._total == 0:
            return 1.0
        return min(1.0, self._done / self._total)

    def _line(self, now: float, *, tail: str | None = None) -> str:
        elapsed = now - self._start
        rate = self._done / elapsed if elapsed > 0 else None
        parts = [self.label]
        if self._total is not None:
            fraction = self._fraction()
            filled = int(fraction * BAR_WIDTH)
            parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
            parts.append(f"{self._done}/{self._total} ({int(fraction * 100)}%)")
        else:
            parts.append(str(self._done))
        if rate is not None:
            parts.append(f"{_rate(rate)}/s")
        if tail is not None:
            parts.append(tail)
        elif self._total is not None and rate and self._done < self._total:
            parts.append(f"eta {_duration((self._total - self._done) / rate)}")
        return " ".join(p for p in parts if p)

    def _fit(self, line: str) -> str:
        """Shorten the label so the line fits the terminal (a wrapped line cannot be redrawn)."""
        limit = self._columns - 1
        if len(line) <= limit:
            return line
        room = limit - (len(line) - len(self.label))
        if room >= 4:
            return self.label[:room - 3] + "..." + line[len(self.label):]
        return line[:limit]

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # closed pipe / closed file: progress is not worth a failure
            self._broken = True


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return _DEFAULT_COLUMNS
    return columns if columns > 10 else _DEFAULT_COLUMNS


def _rate(per_second: float) -> str:
    return f"{per_second:.1f}" if per_second < 100 else f"{per_second:.0f}"


def _duration(seconds: float) -> str:
    """12s, 3.4s (under 10 s), 2m05s, 1h02m."""
    if round(seconds, 1) < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
