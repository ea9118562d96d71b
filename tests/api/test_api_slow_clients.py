"""Slow clients on a real socket: a trickled head or body cannot hold a connection."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import ClientSession

from agent.api import create_app
from agent.api.serve import ApiServer
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore

BOUND = 10.0  # generous: the limits under test are a fraction of a second


async def _trickle(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> bytes:
    """Send one byte every 50 ms until the server hangs up; what it sent back."""
    answer = asyncio.ensure_future(_read_all(reader))
    try:
        async with asyncio.timeout(BOUND):
            while not answer.done():
                with contextlib.suppress(ConnectionError):
                    writer.write(b"x")
                    await writer.drain()
                await asyncio.wait({answer}, timeout=0.05)
            return answer.result()
    finally:
        answer.cancel()


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset after unread bytes counts)."""
    got = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(4096):
            got += chunk
    return got


async def _server(runner: Runner, **limits: float) -> tuple[ApiServer, int]:
    body = {k: v for k, v in limits.items() if k == "body_timeout"}
    rest = {k: v for k, v in limits.items() if k != "body_timeout"}
    app = create_app(runner=runner, **body)
    server = ApiServer(app, host="127.0.0.1", port=0, grace=1.0, **rest)
    url = await server.start()
    return server, int(url.rsplit(":", 1)[1])


async def test_a_trickled_request_head_is_closed(runner: Runner) -> None:
    server, port = await _server(runner, header_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer = await _trickle(writer, reader)
        writer.close()
        assert answer == b""  # hung up without an answer: the head never ended
        # The listener still serves everyone else.
        url = f"http://127.0.0.1:{port}/livez"
        async with ClientSession() as session, session.get(url) as response:
            assert response.status == 200
    finally:
        await server.stop()


async def test_an_idle_connection_is_closed(runner: Runner) -> None:
    server, port = await _server(runner, header_timeout=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(BOUND):
            assert await reader.read() == b""
        writer.close()
    finally:
        await server.stop()


async def test_a_trickled_body_is_refused_with_408_and_closed(
    runner: Runner, store: SqliteStore
) -> None:
    server, port = await _server(runner, body_timeout=0.3, linger=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/v1/flows/step/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        answer = await _trickle(writer, reader)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"\r\nConnection: close" in head
        assert b"urn:flow-agent:problem:request_timeout" in body
        assert store.list_runs() == []  # the handler never ran
    finally:
        await server.stop()


async def test_a_body_that_arrives_in_time_is_served(runner: Runner, store: SqliteStore) -> None:
    server, port = await _server(runner, body_timeout=5.0, header_timeout=5.0)
    try:
        async with ClientSession() as session:
            url = f"http://127.0.0.1:{port}/api/v1/flows/step/runs"
            async with session.post(url, json={}) as response:
                assert response.status in (200, 201, 202), await response.text()
        assert len(store.list_runs()) == 1
    finally:
        await server.stop()
