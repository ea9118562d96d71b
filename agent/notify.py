"""systemd notification over the plain ``NOTIFY_SOCKET`` datagram protocol.

No systemd library: one ``AF_UNIX``/``SOCK_DGRAM`` socket and ``sendto``.
``Watchdog`` feeds ``WATCHDOG=1`` only while the loops it watches
(``Progress``) beat within their allowance; a blocked event loop does not
run it at all.
A name starting with ``@`` is an abstract socket (Linux), as sd_notify(3)
specifies.  Without ``NOTIFY_SOCKET`` every method is a no-op, so the same
code runs under systemd, in a container, in a terminal and in tests.

A failed send never stops the agent: systemd may be restarting, the socket
may be gone; the agent's work matters more than its notifications.  The
first failure is logged, later ones only at debug level.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = logging.getLogger("flow_agent.notify")

MAX_STATUS: Final = 400  # systemd shows one line; keep datagrams small


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        return b"\0" + name[1:].encode("utf-8")
    return name


def watchdog_interval(
    env: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)).

    None when no watchdog is asked for, or when ``WATCHDOG_PID`` names
    another process (the variable was inherited, not meant for us).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000 / 2


class Notifier:
    """Sends state lines to the service manager; a no-op without an address."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        self._failed = False
        self.sent = 0  # datagrams delivered, for tests and status

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True when it was delivered."""
        if self.address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, _address(self.address))
        except OSError as exc:
            (log.debug if self._failed else log.warning)(
                "cannot notify the service manager at %s: %s", self.address, exc.strerror or exc
            )
            self._failed = True
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        return self.send(*self._status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *self._status(status))

    def reloading(self, monotonic_usec: int) -> bool:
        # MONOTONIC_USEC lets systemd (253+) match the reload to its request.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more of start/stop time (systemd 236+ ``EXTEND_TIMEOUT_USEC``)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        if not text:
            return ()
        line = " ".join(text.split())  # one line, whatever the text held
        return (f"STATUS={line[:MAX_STATUS]}",)


class Progress:
    """Beats of loops that must keep going, each with the age it may reach."""

    def __init__(self, *, mono: Callable[[], float] = time.monotonic) -> None:
        self.mono = mono
        self._beats: dict[str, float] = {}
        self._limits: dict[str, Callable[[], float]] = {}

    def watch(self, name: str, max_age: Callable[[], float]) -> None:
        self._limits[name] = max_age
        self._beats[name] = self.mono()

    def forget(self, name: str) -> None:
        self._limits.pop(name, None)
        self._beats.pop(name, None)

    def beat(self, name: str) -> None:
        if name in self._limits:
            self._beats[name] = self.mono()

    def stale(self) -> list[tuple[str, float]]:
        """(name, seconds since its last beat) of every loop past its allowance."""
        now = self.mono()
        late = []
        for name, limit in self._limits.items():
            age = now - self._beats[name]
            if age > limit():
                late.append((name, age))
        return late


class Watchdog:
    """Feeds ``WATCHDOG=1`` every ``interval`` while no watched loop is stale."""

    def __init__(
        self,
        *,
        notifier: Notifier,
        progress: Progress,
        interval: float,
        metrics: AgentMetrics | None = None,
        sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
    ) -> None:
        self.notifier = notifier
        self.progress = progress
        self.interval = interval
        self.metrics = metrics
        self.sleep = sleep
        self.fed = 0
        self.withheld = 0
        self._stalled = False

    def tick(self) -> bool:
        """One check: feed when every loop progresses.  True when fed."""
        stale = self.progress.stale()
        if stale:
            self.withheld += 1
            if not self._stalled:
                what = ", ".join(
                    f"the {name} loop has not progressed for {age:.1f} s" for name, age in stale
                )
                log.error("watchdog not fed: %s", what)
            self._stalled = True
            return False
        if self._stalled:
            log.warning("the watched loops progress again; feeding the watchdog")
            self._stalled = False
        self.fed += 1
        self.notifier.watchdog()
        return True

    async def run(self) -> None:
        mono = self.progress.mono
        while True:
            before = mono()
            await self.sleep(self.interval)
            lag = max(mono() - before - self.interval, 0.0)
            if self.metrics is not None:
                self.metrics.loop_lag.set(lag)
            if lag > max(1.0, self.interval / 2):
                log.warning("the event loop was blocked for about %.1f s", lag)
            self.tick()


__all__ = ["Notifier", "Progress", "Watchdog", "watchdog_interval"]
