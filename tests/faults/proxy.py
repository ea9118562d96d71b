"""A TCP fault proxy on loopback, with the toxics of Toxiproxy that the suite needs.

Each direction of every connection (``up``: client to server, ``down``: the
reverse) has a ``Toxics`` object the test changes while traffic flows:

* ``latency``: seconds added to every chunk, order kept;
* ``rate``: a bandwidth cap in bytes per second;
* ``mode``: ``"pass"``; ``"hold"`` (keep the bytes, deliver them when the
  mode goes back to pass: a stall); ``"drop"`` (read and discard while the
  socket stays open: a half-open link, a dead NAT entry).

``reset_all()`` aborts every connection with a TCP RST (SO_LINGER 0) and
discards whatever was held; ``refuse`` makes new connections reset at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Toxics:
    latency: float = 0.0
    rate: float | None = None
    mode: str = "pass"
    bytes: int = 0


@dataclass
class _Conn:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    frozen: bool = False  # half-open: bytes read and dropped both ways, sockets kept


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(
        self, upstream_port: int, *, upstream_host: str = "127.0.0.1", host: str = "127.0.0.1"
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.up = Toxics()
        self.down = Toxics()
        self.refuse = False
        self.connections = 0
        self.accepted_at: list[float] = []  # monotonic time of every connection attempt
        self.resets = 0
        self._conns: list[_Conn] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, port: int = 0) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def open_connections(self) -> int:
        return len(self._conns)

    def freeze(self) -> int:
        """Make every open connection half-open; new ones pass.  Returns how many."""
        live = [c for c in self._conns if not c.frozen]
        for conn in live:
            conn.frozen = True
        return len(live)

    def reset_all(self) -> int:
        """RST every open connection; returns how many there were."""
        conns, self._conns = self._conns, []
        for conn in conns:
            for task in conn.tasks:
                task.cancel()
            for writer in conn.writers:
                _rst(writer)
        self.resets += len(conns)
        return len(conns)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.accepted_at.append(time.monotonic())
        if self.refuse:
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(writer)
            return
        conn = _Conn(writers=[writer, up_writer])
        self._conns.append(conn)
        loop = asyncio.get_running_loop()
        conn.tasks = [
            loop.create_task(self._pipe(reader, up_writer, self.up, conn)),
            loop.create_task(self._pipe(up_reader, writer, self.down, conn)),
        ]
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        if conn in self._conns:
            self._conns.remove(conn)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tox: Toxics, conn: _Conn
    ) -> None:
        queue: deque[tuple[float, bytes]] = deque()
        more = asyncio.Event()
        loop = asyncio.get_running_loop()
        deliver = loop.create_task(self._deliver(queue, more, writer, tox, conn))
        conn.tasks.append(deliver)
        try:
            while data := await reader.read(16384):
                if tox.mode == "drop" or conn.frozen:
                    continue
                queue.append((time.monotonic() + tox.latency, data))
                more.set()
            if conn.frozen:
                return  # a half-open link: the other side never learns of the close
            queue.append((0.0, b""))  # end of stream: close after the queued bytes
            more.set()
            await deliver
        except (ConnectionError, OSError, asyncio.CancelledError):
            deliver.cancel()
            for w in conn.writers:
                w.transport.abort()

    async def _deliver(
        self,
        queue: deque[tuple[float, bytes]],
        more: asyncio.Event,
        writer: asyncio.StreamWriter,
        tox: Toxics,
        conn: _Conn,
    ) -> None:
        while True:
            while not queue:
                more.clear()
                await more.wait()
            due, data = queue[0]
            if not data:
                writer.close()
                return
            while tox.mode == "hold":
                await asyncio.sleep(0.02)
            if tox.mode == "drop" or conn.frozen:
                queue.popleft()  # held bytes of a link that then went dead are lost
                continue
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            queue.popleft()
            step = len(data) if not tox.rate else max(1024, int(tox.rate / 20))
            for at in range(0, len(data), step):
                chunk = data[at : at + step]
                writer.write(chunk)
                await writer.drain()
                tox.bytes += len(chunk)
                if tox.rate:
                    await asyncio.sleep(len(chunk) / tox.rate)

    async def stop(self) -> None:
        self.reset_all()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
