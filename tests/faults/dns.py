"""A DNS server on loopback (dnslib) and an aiohttp resolver that asks it.

``DnsServer`` answers A and AAAA queries from a table; a name may have a
list of answer sets, handed out one per query (the last one repeats): that
is DNS rebinding, a public answer for the check and a loopback one after.
``LoopbackResolver`` is what the agent's http connector gets instead of the
system resolver, so the connector's own guard sees those answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from dnslib import AAAA, QTYPE, RR, A, DNSRecord


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = {k.rstrip(".").lower(): v for k, v in answers.items()}
        self.asked: dict[str, int] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = DNSRecord.parse(data)
        name = str(query.q.qname).rstrip(".").lower()
        reply = query.reply()
        sets = self.answers.get(name)
        if sets:
            n = self.asked.get(name, 0)
            self.asked[name] = n + 1
            for address in sets[min(n, len(sets) - 1)]:
                v6 = ":" in address
                if query.q.qtype == (QTYPE.AAAA if v6 else QTYPE.A):
                    # dnslib wants the packed form of an IPv6 address (mapped ones too).
                    rdata = AAAA(tuple(ipaddress.IPv6Address(address).packed)) if v6 else A(address)
                    reply.add_answer(RR(name, query.q.qtype, rdata=rdata, ttl=0))
        assert self.transport is not None
        self.transport.sendto(reply.pack(), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class LoopbackResolver(AbstractResolver):
    """Resolves through ``DnsServer`` (A and AAAA), as aiohttp expects."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def _ask(self, host: str, qtype: str) -> list[str]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()

        class _Once(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if not answer.done():
                    answer.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(
            _Once, remote_addr=("127.0.0.1", self.port)
        )
        try:
            transport.sendto(DNSRecord.question(host, qtype).pack())
            reply = DNSRecord.parse(await asyncio.wait_for(answer, 5))
        finally:
            transport.close()
        return [str(rr.rdata) for rr in reply.rr]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found: list[ResolveResult] = []
        kinds = {socket.AF_INET: ("A",), socket.AF_INET6: ("AAAA",)}.get(family, ("A", "AAAA"))
        for kind in kinds:
            for address in await self._ask(host, kind):
                fam = socket.AF_INET6 if ":" in address else socket.AF_INET
                found.append(
                    {
                        "hostname": host,
                        "host": address,
                        "port": port,
                        "family": fam,
                        "proto": 0,
                        "flags": socket.AI_NUMERICHOST,
                    }
                )
        if not found:
            raise OSError(f"{host} has no address")
        return found

    async def close(self) -> None:
        return None
