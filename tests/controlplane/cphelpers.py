"""Helpers for the control-plane tests: an admin HTTP client and a test agent.

``LinkClient`` is a protocol-speaking agent written for the tests with the
``websockets`` library and ``agent.protocol`` (the real agent's link is built
elsewhere); it performs hello/auth with a real Ed25519 key.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import aiohttp
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection

from agent.protocol.frames import Auth, Hello, Message, Welcome
from agent.protocol.session import Role, Session
from agent.protocol.signing import (
    generate_private_key,
    parse_token,
    public_key_b64,
    sign_auth,
)

# Guards against a hang, never a timing assertion.
STEP = 10.0

HELLO_FLOW: dict[str, Any] = {
    "format": "flow/v1",
    "id": "hello",
    "start": "done",
    "elements": {"done": {"type": "end"}},
}


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Admin:
    """The admin API over real HTTP."""

    def __init__(self, http: aiohttp.ClientSession, url: str, key: str) -> None:
        self.http = http
        self.url = url
        self.key = key

    async def call(
        self, method: str, path: str, body: Any = None, *, key: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.key if key is None else key}"}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.call(method, path, body)
        assert status < 300, (status, answer)
        return answer

    async def token(self, tenant: str = "acme", ttl: float | None = None) -> str:
        body = {} if ttl is None else {"ttl": ttl}
        answer = await self.ok("POST", f"/admin/v1/tenants/{tenant}/tokens", body)
        return str(answer["token"])

    async def publish(self, definition: dict[str, Any], tenant: str = "acme") -> dict[str, Any]:
        answer = await self.ok(
            "POST", f"/admin/v1/tenants/{tenant}/flows", {"definition": definition}
        )
        assert isinstance(answer, dict)
        return answer


@dataclass
class Paired:
    agent_id: str
    key: Ed25519PrivateKey
    answer: dict[str, Any]


async def pair(admin: Admin, *, tenant: str = "acme", name: str = "host-1") -> Paired:
    token = parse_token(await admin.token(tenant))
    key = generate_private_key()
    body = {
        "token_secret": token.secret,
        "public_key": public_key_b64(key),
        "name": name,
        "facts": {"hostname": name, "os": "linux", "arch": "x86_64", "agent_version": "0.1.0"},
    }
    async with admin.http.post(token.url + "/agent/v1/pair", json=body) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    return Paired(agent_id=answer["agent_id"], key=key, answer=answer)


class LinkClient:
    """A minimal agent end of the link, for driving the server in tests."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.session = Session(role=Role.AGENT)
        self.hello: Hello | None = None
        self.welcome: Welcome | None = None

    @classmethod
    async def connect(
        cls, url: str, agent_id: str, key: Ed25519PrivateKey, *, signature: str | None = None
    ) -> LinkClient:
        ws = await websockets.connect(url.replace("http", "ws", 1) + "/agent/v1/connect")
        client = cls(ws)
        hello = await client.recv()
        assert isinstance(hello, Hello)
        client.hello = hello
        sig = signature or sign_auth(key, nonce=hello.nonce, agent_id=agent_id)
        await client.send(
            Auth(
                agent_id=agent_id,
                signature=sig,
                agent_version="0.1.0",
                facts={"hostname": "host-1"},
            )
        )
        return client

    async def ready(self) -> Welcome:
        welcome = await self.recv()
        assert isinstance(welcome, Welcome)
        self.welcome = welcome
        return welcome

    async def send(self, msg: Message) -> None:
        await self.ws.send(self.session.send(msg))

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self) -> Message:
        text = await asyncio.wait_for(self.ws.recv(), STEP)
        return self.session.receive(text)

    async def recv_type(self, kind: type[Message]) -> Any:
        while True:
            msg = await self.recv()
            if isinstance(msg, kind):
                return msg

    async def close_code(self) -> int | None:
        """Read until the server closes; the close code it sent."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), STEP)
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    async def close(self) -> None:
        await self.ws.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
