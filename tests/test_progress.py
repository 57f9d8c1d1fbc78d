"""The CLI progress bar (sync_core.progress): terminal redraws with throttling, plain lines for
logs and pipes, unknown totals, the final line, and thread safety. A fake stream decides
whether it is a terminal; a fake clock decides the time."""

from __future__ import annotations

import io
import re
import sys
import threading
from collections.abc import Iterator

import pytest

from sync_core.progress import Progress, _duration


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty
        self.writes = 0

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def frames(stream: FakeStream) -> list[str]:
    """What a terminal showed: each redraw starts with "\\r"; trailing padding dropped."""
    return [f.rstrip(" \n") for f in stream.getvalue().split("\r") if f]


PLAIN_LINE = re.compile(r"[^\r\n\x1b]* \[[#.]{20}\] \d+/\d+ \(\d+%\)( [0-9.]+/s)?( eta \S+| in \S+)?")


# -- format -----------------------------------------------------------------------------------
def test_line_format(clock: FakeClock) -> None:
    stream = FakeStream(tty=False)
    p = Progress(500, "import", stream=stream, clock=clock)
    clock.tick(38.7)
    p.advance(120)  # crosses 10% and 20%: one line, for 24%
    assert stream.getvalue() == "import [####................] 120/500 (24%) 3.1/s eta 2m03s\n"


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0.0s"), (3.44, "3.4s"), (12.4, "12s"), (59.6, "1m00s"), (125, "2m05s"), (3600, "1h00m"), (7384, "2h03m"),
])
def test_durations(seconds: float, text: str) -> None:
    assert _duration(seconds) == text


# -- terminal ---------------------------------------------------------------------------------
def test_tty_draws_at_once_and_redraws_with_carriage_return(clock: FakeClock) -> None:
    stream = FakeStream(tty=True)
    p = Progress(10, "sync ann@contoso.com", stream=stream, clock=clock)
    assert frames(stream) == ["sync ann@contoso.com [....................] 0/10 (0%)"]
    clock.tick(1.0)
    p.advance(5)
    assert "\n" not in stream.getvalue()
    assert frames(stream)[-1] == "sync ann@contoso.com [##########..........] 5/10 (50%) 5.0/s eta 1.0s"
    clock.tick(1.0)
    p.advance(5)
    p.close()
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1
    assert frames(stream)[-1] == "sync ann@contoso.com [####################] 10/10 (100%) 5.0/s in 2.0s"


def test_tty_redraws_at_most_every_tenth_of_a_second(clock: FakeClock) -> None:
    stream = FakeStream(tty=True)
    p = Progress(1000, "x", stream=stream, clock=clock)
    assert stream.writes == 1
    step = 1 / 64  # exact in binary: no rounding at the 0.1 s boundary
    for _ in range(6):
        clock.tick(step)
        p.advance()
    assert stream.writes == 1  # 0.094 s after the first frame
    clock.tick(step)
    p.advance()
    assert stream.writes == 2 and frames(stream)[-1].startswith("x [....................] 7/1000 (0%)")
    for _ in range(1280):  # 10 s of advances every 7.8 ms: a frame every 13th (0.102 s), 98 in all
        clock.tick(1 / 128)
        p.advance(0)
    assert stream.writes == 2 + 1280 // 13


def test_tty_pads_a_shorter_line_over_a_longer_one(clock: FakeClock) -> None:
    stream = FakeStream(tty=True)
    p = Progress(None, "x", stream=stream, clock=clock)
    clock.tick(0.2)
    p.advance(100_000)  # "x 100000 500000/s"
    clock.tick(999_999.8)
    p.advance(0)        # "x 100000 0.1/s": shorter, padded
    last_two = stream.getvalue().split("\r")[-2:]
    assert last_two[0] == "x 100000 500000/s"
    assert last_two[1] == "x 100000 0.1/s   "


def test_tty_long_label_is_shortened_to_fit_80_columns(clock: FakeClock) -> None:
    stream = FakeStream(tty=True)
    p = Progress(500, "first sync of " + "averyveryverylong" * 6 + "@contoso.com", stream=stream, clock=clock)
    clock.tick(1)
    p.advance(100)
    line = frames(stream)[-1]
    assert len(line) <= 79 and "..." in line and line.endswith("100/500 (20%) 100/s eta 4.0s")


# -- not a terminal ---------------------------------------------------------------------------
def test_non_tty_prints_a_plain_line_every_ten_percent(clock: FakeClock) -> None:
    stream = FakeStream(tty=False)
    with Progress(1000, "import users.csv", stream=stream, clock=clock) as p:
        for _ in range(1000):
            clock.tick(0.01)
            p.advance()
    out = stream.getvalue()
    assert "\r" not in out and "\x1b" not in out and "\b" not in out
    lines = out.splitlines()
    assert [re.search(r"\((\d+)%\)", line).group(1) for line in lines] == [  # type: ignore[union-attr]
        "10", "20", "30", "40", "50", "60", "70", "80", "90", "100"]
    assert all(PLAIN_LINE.fullmatch(line) for line in lines), lines
    assert lines[0] == "import users.csv [##..................] 100/1000 (10%) 100/s eta 9.0s"
    assert lines[-1] == "import users.csv [####################] 1000/1000 (100%) 100/s in 10s"


def test_non_tty_big_steps_print_one_line_per_crossing(clock: FakeClock) -> None:
    stream = FakeStream(tty=False)
    p = Progress(200, "x", stream=stream, clock=clock)
    p.advance(1)  # below 10%
    assert stream.getvalue() == ""
    clock.tick(1)
    p.advance(109)  # 55%: one line, not five
    p.advance(1)
    assert stream.getvalue().splitlines() == ["x [###########.........] 110/200 (55%) 110/s eta 0.8s"]
    p.advance(89)  # 100%: left to the final line
    assert len(stream.getvalue().splitlines()) == 1
    p.close()
    assert stream.getvalue().splitlines()[-1] == "x [####################] 200/200 (100%) 200/s in 1.0s"


def test_no_output_at_all_when_disabled(clock: FakeClock) -> None:
    for tty in (True, False):
        stream = FakeStream(tty=tty)
        with Progress(10, "x", stream=stream, clock=clock, enabled=False) as p:
            for _ in range(10):
                clock.tick(1)
                p.advance()
            p.set_total(20)
        assert stream.getvalue() == "" and stream.writes == 0
        assert p.done == 10 and p.total == 20


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str], clock: FakeClock) -> None:
    with Progress(4, "x", clock=clock) as p:
        clock.tick(2)
        p.advance(4)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "x [####################] 4/4 (100%) 2.0/s in 2.0s\n"


# -- unknown total ----------------------------------------------------------------------------
def test_unknown_total_shows_counter_and_rate_then_the_bar_once_known(clock: FakeClock) -> None:
    stream = FakeStream(tty=True)
    p = Progress(None, "first sync", stream=stream, clock=clock)
    assert frames(stream) == ["first sync 0"]
    clock.tick(2)
    p.advance(7)
    assert frames(stream)[-1] == "first sync 7 3.5/s"
    clock.tick(2)
    p.set_total(28)
    assert frames(stream)[-1] == "first sync [#####...............] 7/28 (25%) 1.8/s eta 12s"
    p.close()
    assert frames(stream)[-1] == "first sync [#####...............] 7/28 (25%) 1.8/s in 4.0s"


def test_unknown_total_without_a_terminal_prints_every_ten_seconds(clock: FakeClock) -> None:
    stream = FakeStream(tty=False)
    p = Progress(None, "x", stream=stream, clock=clock)
    for _ in range(250):
        clock.tick(0.1)
        p.advance()
    p.close()
    assert stream.getvalue().splitlines() == ["x 100 10.0/s", "x 200 10.0/s", "x 250 10.0/s in 25s"]


def test_late_total_counts_ten_percent_steps_from_there(clock: FakeClock) -> None:
    stream = FakeStream(tty=False)
    p = Progress(None, "x", stream=stream, clock=clock)
    clock.tick(1)
    p.advance(35)
    p.set_total(100)  # 35%: the 30% step is not printed after the fact
    p.advance(4)
    assert stream.getvalue() == ""
    p.advance(1)
    assert stream.getvalue().splitlines() == ["x [########............] 40/100 (40%) 40.0/s eta 1.5s"]


def test_zero_total_is_complete(clock: FakeClock) -> None:
    stream = FakeStream(tty=False)
    with Progress(0, "nothing to import", stream=stream, clock=clock):
        pass
    assert stream.getvalue() == "nothing to import [####################] 0/0 (100%) in 0.0s\n"


# -- close ------------------------------------------------------------------------------------
def test_close_is_idempotent_and_silences_later_advances(clock: FakeClock) -> None:
    stream = FakeStream(tty=False)
    p = Progress(10, "x", stream=stream, clock=clock)
    p.advance(10)
    p.close()
    p.close()
    p.advance(5)
    assert len(stream.getvalue().splitlines()) == 1
    assert p.done == 15


def test_an_exception_leaves_a_stopped_line(clock: FakeClock) -> None:
    stream = FakeStream(tty=True)
    with pytest.raises(KeyboardInterrupt), Progress(10, "x", stream=stream, clock=clock) as p:
        clock.tick(3)
        p.advance(3)
        raise KeyboardInterrupt
    assert stream.getvalue().endswith("\n")
    assert frames(stream)[-1] == "x [######..............] 3/10 (30%) 1.0/s stopped after 3.0s"


def test_a_broken_stream_never_fails_the_operation(clock: FakeClock) -> None:
    class Broken(FakeStream):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    for tty in (True, False):
        p = Progress(10, "x", stream=Broken(tty), clock=clock)
        for _ in range(10):
            clock.tick(1)
            p.advance()
        p.close()
        assert p.done == 10


def test_negative_values_are_refused(clock: FakeClock) -> None:
    p = Progress(10, "x", stream=FakeStream(False), clock=clock)
    with pytest.raises(ValueError):
        p.advance(-1)
    with pytest.raises(ValueError):
        p.set_total(-1)
    with pytest.raises(ValueError):
        Progress(-1, "x", clock=clock)


def test_label_control_characters_cannot_break_the_line(clock: FakeClock) -> None:
    stream = FakeStream(tty=False)
    with Progress(1, "a\rb\nc\x1b[2J", stream=stream, clock=clock) as p:
        p.advance()
    out = stream.getvalue()
    assert out.count("\n") == 1 and "\r" not in out and "\x1b" not in out


# -- threads ----------------------------------------------------------------------------------
@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as possible, so unguarded read-modify-write races show up."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def advance_from_eight_threads(p: Progress) -> None:
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(1000):
            p.advance()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.close()


@pytest.mark.parametrize("tty", [False, True])
@pytest.mark.usefixtures("busy_switching")
def test_eight_threads_advancing_a_thousand_times_each(tty: bool) -> None:
    for _ in range(5):  # races are rare events: give them a few chances
        stream = FakeStream(tty=tty)
        p = Progress(8000, "threads", stream=stream)
        advance_from_eight_threads(p)
        assert p.done == 8000
        out = stream.getvalue()
        if tty:
            assert frames(stream)[-1].startswith("threads [####################] 8000/8000 (100%)")
            assert out.count("\n") == 1
        else:
            lines = out.splitlines()
            assert all(PLAIN_LINE.fullmatch(line) for line in lines), lines  # never interleaved
            assert [int(re.search(r"\((\d+)%\)", line).group(1)) for line in lines] == list(  # type: ignore[union-attr]
                range(10, 101, 10))
            assert lines[-1].startswith("threads [####################] 8000/8000 (100%)")


@pytest.mark.usefixtures("busy_switching")
def test_eight_threads_count_exactly_without_output() -> None:
    for _ in range(5):
        p = Progress(None, "threads", enabled=False)
        advance_from_eight_threads(p)
        assert p.done == 8000
