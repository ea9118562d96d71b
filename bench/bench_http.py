"""A lean HTTP/1.1 client for load generation: one keep-alive connection, JSON in and out.

The API bench runs its clients on the same two cores as the server.
aiohttp's client spends about 0.6 ms of CPU per request there (building a
request object, cookie and redirect handling, response parsing in Python),
more than half of what the server spends on a whole run, so the bench
measured its own client nearly as much as the server.  This one writes
prepared request bytes and reads the answer by its ``Content-Length``:
what a load generator written in C would cost, in spirit.  It understands
just the answers aiohttp's server gives (``Content-Length``, keep-alive) and
refuses anything else, so it cannot report a success it did not see.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """An answer this client does not understand: the figures would mean nothing."""


class LeanClient:
    """One connection; requests go one after the other on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def connect(cls, url: str) -> LeanClient:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise HttpError(f"not a plain http URL with a port: {url}")
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, f"{parts.hostname}:{parts.port}")

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """POST ``body`` as JSON; the status and the decoded JSON answer."""
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode("ascii")
        self._writer.write(head + data)
        answer = await self._reader.readuntil(b"\r\n\r\n")
        status_line, _, fields = answer.partition(b"\r\n")
        if not status_line.startswith(b"HTTP/1.1 "):
            raise HttpError(f"not an HTTP/1.1 answer: {status_line[:80]!r}")
        status = int(status_line[9:12])
        length = None
        for line in fields.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" or (
                name == b"connection" and value.strip().lower() == b"close"
            ):
                raise HttpError(f"an answer this client cannot read: {line!r}")
        if length is None:
            raise HttpError("an answer without Content-Length")
        return status, json.loads(await self._reader.readexactly(length))

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()
