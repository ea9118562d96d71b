"""The NOTIFY_SOCKET protocol on a real datagram socket, and the watchdog's rule."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.notify import Notifier, Progress, Watchdog, watchdog_interval


class Listener:
    """A bound AF_UNIX datagram socket standing in for systemd."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.setblocking(False)

    def received(self) -> list[str]:
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return found

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    sock = Listener(str(tmp_path / "notify"))
    try:
        yield sock
    finally:
        sock.close()


def test_lines_arrive_as_one_datagram_each(listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled
    assert notifier.ready("connected;\n 3 flows")
    assert notifier.watchdog()
    assert notifier.stopping("draining")
    assert notifier.extend_timeout(30)
    assert notifier.reloading(1234)
    notifier.close()
    assert listener.received() == [
        "READY=1\nSTATUS=connected; 3 flows",  # a status is always one line
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=draining",
        "EXTEND_TIMEOUT_USEC=30000000",
        "RELOADING=1\nMONOTONIC_USEC=1234",
    ]
    assert notifier.sent == 5


def test_an_abstract_socket_name_starts_with_at() -> None:
    address = f"@flow-agent-test-{uuid.uuid4().hex}"
    sock = Listener(address)
    try:
        notifier = Notifier(address)
        assert notifier.status("hello")
        notifier.close()
        assert sock.received() == ["STATUS=hello"]
    finally:
        sock.close()


def test_without_the_variable_nothing_is_sent() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog()
    assert notifier.sent == 0


def test_a_vanished_socket_costs_a_log_line_not_the_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert not notifier.watchdog()
    assert not notifier.watchdog()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot notify" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_the_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_is_fed_only_while_the_watched_loop_beats(listener: Listener) -> None:
    clock = FakeClock()
    progress = Progress(mono=clock)
    progress.watch("timer", lambda: 5.0)
    dog = Watchdog(notifier=Notifier(listener.address), progress=progress, interval=2.0)
    assert dog.tick()  # fresh
    clock.now += 4.0
    assert dog.tick()  # 4 s old, allowed 5
    clock.now += 2.0
    assert not dog.tick()  # 6 s without a beat: withheld
    assert not dog.tick()
    progress.beat("timer")
    assert dog.tick()  # progressing again
    progress.forget("timer")  # e.g. stopping: the timer loop ended on purpose
    clock.now += 100.0
    assert dog.tick()
    assert listener.received() == ["WATCHDOG=1"] * 4
    assert (dog.fed, dog.withheld) == (4, 2)


async def test_the_watchdog_task_feeds_every_interval_and_stops_when_the_loop_stalls(
    listener: Listener,
) -> None:
    clock = FakeClock()
    progress = Progress(mono=clock)
    progress.watch("timer", lambda: 3.0)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        # Time passes; the timer loop beats for the first three rounds only.
        sleeps.append(seconds)
        clock.now += seconds
        if len(sleeps) <= 3:
            progress.beat("timer")
        if len(sleeps) == 8:
            raise _Enough

    dog = Watchdog(
        notifier=Notifier(listener.address), progress=progress, interval=1.0, sleep=sleep
    )
    with pytest.raises(_Enough):
        await dog.run()
    # Beats at t=1,2,3; allowed 3 s: fed at 1..6, withheld from 7 on.
    assert sleeps == [1.0] * 8
    assert listener.received() == ["WATCHDOG=1"] * 6
    assert dog.withheld == 1


class _Enough(Exception):
    pass


async def test_a_blocked_event_loop_sends_no_watchdog_until_it_runs_again(
    listener: Listener,
) -> None:
    """Case 24 with the real clock: the watchdog lives on the event loop, not on a
    thread of its own that would feed systemd while the loop hangs."""
    progress = Progress()
    progress.watch("timer", lambda: 60.0)
    dog = Watchdog(notifier=Notifier(listener.address), progress=progress, interval=0.01)
    counts: list[int] = []

    def block() -> None:
        # The loop's only thread is held here for 15 intervals; the socket is read meanwhile.
        for _ in range(3):
            time.sleep(dog.interval * 5)
            counts.append(len(listener.received()))

    async with asyncio.TaskGroup() as group:
        feeding = group.create_task(dog.run())
        await _until(lambda: dog.fed >= 2)
        listener.received()
        asyncio.get_running_loop().call_soon(block)
        await asyncio.sleep(0)
        await _until(lambda: bool(counts))
        assert counts == [0, 0, 0]  # not one WATCHDOG=1 while the loop was blocked
        fed = dog.fed
        await _until(lambda: dog.fed > fed)  # and fed again once it runs
        assert "WATCHDOG=1" in listener.received()
        feeding.cancel()


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):  # a guard against a hang, not a timing assertion
        while not check():
            await asyncio.sleep(0.005)
