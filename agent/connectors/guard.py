"""The network guard: which addresses the http connector may connect to.

Checks happen on IP addresses, never on host text: ``2852039166``,
``0xA9FEA9FE``, ``0251.0376.0251.0376`` and ``[::ffff:169.254.169.254]`` are
all 169.254.169.254 once resolved, and a name can resolve anywhere.  Two
entry points cover every way aiohttp reaches an address:

* ``NetworkGuard.resolver()`` gives an aiohttp resolver that resolves a name,
  drops every denied address and hands aiohttp only the survivors, so the
  socket is opened to exactly the address that was checked (no DNS rebinding
  window between check and connect).  Every redirect hop resolves through it.
* ``NetworkGuard.check_host()`` covers IP literals, which aiohttp connects to
  without asking the resolver; the http connector calls it before every hop.

Deciding rule: the most specific matching network decides (longest prefix).
When an allowed and a denied network are equally specific, an operator's
``http_deny_networks`` entry beats an ``http_allow_networks`` entry, and an
``http_allow_networks`` entry beats a built-in default.  An address no
network matches is allowed: by default only link-local and cloud-metadata
addresses are refused (loopback and private ranges are reachable unless the
operator denies them; ``PRIVATE_NETWORKS`` lists them for that purpose).

IPv6 addresses that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) are refused when either form is.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from agent.errors import ConfigError, OperationError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

ALLOW_SETTING = "http_allow_networks"
DENY_SETTING = "http_deny_networks"

# Refused unless an operator allows them: nothing a flow should talk to lives
# there, and the metadata services hand out cloud credentials.
DEFAULT_DENY: tuple[tuple[str, str], ...] = (
    ("169.254.0.0/16", "link-local / cloud metadata"),
    ("fe80::/10", "IPv6 link-local"),
    ("fd00:ec2::254/128", "cloud metadata, AWS IPv6"),
    ("100.100.100.200/32", "cloud metadata, Alibaba Cloud"),
)

# Not denied by default (the agent often talks to services on its own LAN or
# host), but what a locked-down deployment puts in http_deny_networks.
PRIVATE_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::/128",
    "::1/128",
    "fc00::/7",
)

# The word a network setting may hold for all of PRIVATE_NETWORKS.
PRIVATE_ALIAS = "private"

_NAT64 = IPv6Network("64:ff9b::/96")
_NUMERIC_HOST_CHARS = frozenset("0123456789abcdefxABCDEFX.")

# Tie-break ranks among equally specific networks (higher wins).
_RANK_DEFAULT_DENY = 0
_RANK_ALLOW = 1
_RANK_DENY = 2


class NetworkRefused(OperationError):
    """The guard refused a host: it resolves only to denied addresses."""

    def __init__(self, message: str, *, host: str, address: str) -> None:
        super().__init__(message)
        self.host = host
        self.address = address


@dataclass(frozen=True, slots=True)
class _Rule:
    network: IPNetwork
    allow: bool
    rank: int
    why: str


def parse_networks(values: Iterable[str | IPNetwork], *, setting: str) -> list[IPNetwork]:
    """Read a setting's list of networks; a bad entry is a ConfigError naming it."""
    networks: list[IPNetwork] = []
    for value in values:
        if isinstance(value, IPv4Network | IPv6Network):
            networks.append(value)
            continue
        if str(value).strip().lower() == PRIVATE_ALIAS:
            networks.extend(ip_network(n) for n in PRIVATE_NETWORKS)
            continue
        try:
            networks.append(ip_network(str(value).strip()))
        except ValueError as exc:
            raise ConfigError(
                f"{setting}: {value!r} is not a network",
                hint="write networks as address/prefix with no host bits set, "
                f"e.g. 10.1.2.0/24 or fd00::/8, or {PRIVATE_ALIAS!r}",
            ) from exc
    return networks


def literal_address(host: str) -> IPAddress | None:
    """The address an IP-literal host means, including legacy numeric forms.

    ``2852039166``, ``0xa9fea9fe`` and ``0251.0376.0251.0376`` all mean
    169.254.169.254 to the C library, so they are read the same way here.
    Returns None for a name that needs resolving.
    """
    text = host.strip("[]")
    try:
        return ip_address(text)
    except ValueError:
        pass
    if text and _NUMERIC_HOST_CHARS.issuperset(text):
        try:
            return IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _is_plain_literal(host: str) -> bool:
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _candidates(address: IPAddress) -> list[IPAddress]:
    found: list[IPAddress] = [address]
    if isinstance(address, IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            found.append(embedded)
    return found


class NetworkGuard:
    """Decides which IP addresses outgoing connector traffic may reach."""

    def __init__(
        self,
        *,
        deny: Sequence[IPNetwork] = (),
        allow: Sequence[IPNetwork] = (),
        resolver: AbstractResolver | None = None,
    ) -> None:
        rules = [
            _Rule(ip_network(net), False, _RANK_DEFAULT_DENY, why) for net, why in DEFAULT_DENY
        ]
        rules += [_Rule(net, True, _RANK_ALLOW, f"{ALLOW_SETTING} setting") for net in allow]
        rules += [_Rule(net, False, _RANK_DENY, f"{DENY_SETTING} setting") for net in deny]
        # Most specific first, then by rank, so the first match decides.
        rules.sort(key=lambda r: (r.network.prefixlen, r.rank), reverse=True)
        self._v4 = tuple(r for r in rules if r.network.version == 4)
        self._v6 = tuple(r for r in rules if r.network.version == 6)
        self._resolver = resolver

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused ("x is in the denied network ..."), or None."""
        verdict = self._verdict(address)
        return None if verdict is None else f"{verdict[0]} {verdict[1]}"

    def _verdict(self, address: IPAddress) -> tuple[str, str] | None:
        # (the address as shown, "is in the denied network ...") or None
        for candidate in _candidates(address):
            rules = self._v4 if candidate.version == 4 else self._v6
            for rule in rules:
                if candidate not in rule.network:
                    continue
                if rule.allow:
                    break
                shown = str(address)
                if candidate is not address:
                    shown = f"{address} (IPv4 {candidate})"
                tail = f"is in the denied network {rule.network} ({rule.why})"
                if rule.rank == _RANK_DEFAULT_DENY:
                    tail += f"; allow it with the {ALLOW_SETTING} setting if this is intended"
                return shown, tail
        return None

    def check_host(self, host: str) -> None:
        """Refuse an IP-literal host that is denied; names are left to the resolver.

        Raises NetworkRefused.  Also refuses text that aiohttp would take for
        an address but that is no valid address, since it cannot be checked.
        """
        address = literal_address(host)
        if address is None:
            if ":" in host or host.replace(".", "").isdigit():
                raise NetworkRefused(
                    f"host {host} is not a valid IP address", host=host, address=host
                )
            return
        verdict = self._verdict(address)
        if verdict is None:
            return
        shown, tail = verdict
        if _is_plain_literal(host):
            message = f"{shown} {tail}"
        else:
            message = f"host {host} means {shown}, which {tail}"
        raise NetworkRefused(message, host=host, address=str(address))

    def resolved_refusal(self, host: str, address: str) -> str | None:
        """Why the resolver answer ``address`` for ``host`` is refused, or None."""
        try:
            parsed = ip_address(address)
        except ValueError:
            # An answer we cannot read as an address cannot be checked.
            return f"host {host} resolves to {address!r}, which is not an IP address"
        verdict = self._verdict(parsed)
        if verdict is None:
            return None
        return f"host {host} resolves to {verdict[0]}, which {verdict[1]}"

    def resolver(self) -> AbstractResolver:
        """An aiohttp resolver that hands out only allowed addresses.

        Call it inside the event loop that will use it.
        """
        return GuardedResolver(guard=self, inner=self._resolver)


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and keeps only the addresses the guard allows."""

    def __init__(self, *, guard: NetworkGuard, inner: AbstractResolver | None) -> None:
        self._guard = guard
        self._owns_inner = inner is None
        self._inner: AbstractResolver = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refused: list[tuple[str, str]] = []
        for result in results:
            reason = self._guard.resolved_refusal(host, result["host"])
            if reason is None:
                kept.append(result)
            else:
                refused.append((result["host"], reason))
        if kept:
            return kept
        if not refused:
            raise NetworkRefused(f"host {host} resolves to no address", host=host, address="")
        address, reason = refused[0]
        if len(refused) > 1:
            reason += f" (and so are its {len(refused) - 1} other addresses)"
        raise NetworkRefused(reason, host=host, address=address)

    async def close(self) -> None:
        if self._owns_inner:
            await self._inner.close()


def guard_from_settings(
    *,
    allow: Iterable[str | IPNetwork] = (),
    deny: Iterable[str | IPNetwork] = (),
    resolver: AbstractResolver | None = None,
) -> NetworkGuard:
    """Build a guard from the two settings' raw values (strings or networks)."""
    return NetworkGuard(
        allow=parse_networks(allow, setting=ALLOW_SETTING),
        deny=parse_networks(deny, setting=DENY_SETTING),
        resolver=resolver,
    )
