"""``flow-agent doctor``: what stands between this host and a working agent.

Each check gives one pass/fail line with a hint a person can act on, in the
order a problem would show: the state directory (owner and modes), the
identity, the proxy in the way, DNS, TCP, TLS, the websocket handshake with
authentication (``hello``/``auth``/``welcome``, then a clean close), the
clock against the control plane (``hello.server_time``), free disk.  A
check that cannot run because an earlier one failed is skipped, not failed.

A running daemon holds this agent's only session: a second authenticated
session would replace it (close code 4409), so with the daemon running the
websocket check stops after ``hello`` and reads the daemon's own link
status instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import stat
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from agent.errors import AgentError
from agent.settings import Settings

PASS: Final = "pass"
FAIL: Final = "fail"
SKIP: Final = "skip"
MAX_SKEW: Final = 30.0  # seconds; tokens and certificates are checked against the clock
MIN_FREE_BYTES: Final = 200 * 1024 * 1024
MIN_FREE_SHARE: Final = 0.02
PRIVATE_MASK: Final = 0o077


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    result: str  # pass, fail or skip
    detail: str
    hint: str | None = None

    @property
    def failed(self) -> bool:
        return self.result == FAIL


def _pass(name: str, detail: str) -> Check:
    return Check(name=name, result=PASS, detail=detail)


def _fail(name: str, detail: str, hint: str) -> Check:
    return Check(name=name, result=FAIL, detail=detail, hint=hint)


def _skip(name: str, why: str) -> Check:
    return Check(name=name, result=SKIP, detail=why)


def masked_url(url: str) -> str:
    """``url`` without a password (``http://user:***@proxy:3128``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- local checks ------------------------------------------------------------------


def check_state_dir(state_dir: Path, *, euid: int | None = None) -> Check:
    name = "state directory"
    euid = os.geteuid() if euid is None else euid
    try:
        info = state_dir.stat()
    except FileNotFoundError:
        return _fail(name, f"{state_dir} does not exist", "pair first: flow-agent pair TOKEN")
    except OSError as exc:
        return _fail(name, f"cannot stat {state_dir}: {exc.strerror}", "check the path")
    if not stat.S_ISDIR(info.st_mode):
        return _fail(name, f"{state_dir} is not a directory", "point --state-dir at a directory")
    owner = info.st_uid
    problems: list[str] = []
    mode = stat.S_IMODE(info.st_mode)
    if mode & PRIVATE_MASK:
        problems.append(f"the directory is mode {mode:04o}, not 0700")
    if euid not in (0, owner):
        problems.append(f"it belongs to uid {owner}, not to this user (uid {euid})")
    try:
        entries = list(state_dir.iterdir())
    except OSError as exc:
        return _fail(
            name,
            f"cannot list {state_dir}: {exc.strerror}",
            f"run doctor as the agent's user (uid {owner})",
        )
    for entry in sorted(entries):
        try:
            entry_info = entry.lstat()
        except OSError:
            continue
        if entry_info.st_uid != owner:
            problems.append(f"{entry.name} belongs to uid {entry_info.st_uid}, not {owner}")
        entry_mode = stat.S_IMODE(entry_info.st_mode)
        if stat.S_ISREG(entry_info.st_mode) and entry_mode & PRIVATE_MASK:
            problems.append(f"{entry.name} is mode {entry_mode:04o}, not 0600")
    if problems:
        return _fail(
            name,
            f"{state_dir}: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""),
            f"chown -R {owner} {state_dir}; chmod 700 {state_dir}; chmod 600 {state_dir}/*"
            " (files made by running a command as root are the usual cause)",
        )
    return _pass(name, f"{state_dir}: owner uid {owner}, mode 0700, files 0600")


def check_disk(state_dir: Path) -> Check:
    name = "free disk"
    target = state_dir if state_dir.exists() else state_dir.parent
    try:
        usage = shutil.disk_usage(target)
    except OSError as exc:
        return _fail(name, f"cannot measure {target}: {exc.strerror}", "check the mount")
    free_mib = usage.free // (1024 * 1024)
    share = usage.free / usage.total if usage.total else 0.0
    detail = f"{free_mib} MiB free ({share:.0%}) on the state directory's file system"
    if usage.free < MIN_FREE_BYTES or share < MIN_FREE_SHARE:
        return _fail(
            name,
            detail,
            "free some space: with a full disk the agent refuses new runs (runs are kept)",
        )
    return _pass(name, detail)


def check_identity(state_dir: Path) -> tuple[Check, Any]:
    """The identity check and the loaded (identity, key), or None."""
    from agent.identity import load_identity, load_private_key
    from agent.link.state import REPAIR_HINT
    from agent.link.status import read_status

    name = "identity"
    pair_hint = "pair this host: flow-agent pair --token-file FILE"
    try:
        identity = load_identity(state_dir)
        if identity is None:
            return _fail(name, f"{state_dir} holds no identity", pair_hint), None
        key = load_private_key(state_dir)
        link = read_status(state_dir).link
    except AgentError as exc:
        return _fail(name, exc.message, exc.hint or pair_hint), None
    who = f"agent {identity.agent_id} in tenant {identity.tenant}, control plane {identity.url}"
    if link.state.terminal:
        return _fail(
            name,
            f"{who}: the control plane {link.state.value.replace('_', ' ')} this agent"
            + (f" ({link.detail})" if link.detail else ""),
            REPAIR_HINT,
        ), None
    return _pass(name, who), (identity, key)


# -- the network path ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Target:
    url: str  # the control plane's base URL
    host: str
    port: int
    secure: bool
    proxy: str | None  # the proxy the link goes through, if any

    @classmethod
    def of(cls, url: str) -> Target:
        from websockets.uri import get_proxy as ws_proxy
        from websockets.uri import parse_uri

        from agent.link.transport import link_url

        parts = urlsplit(url)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        try:
            proxy = ws_proxy(parse_uri(link_url(url)))
        except Exception:  # a malformed proxy variable: reported by check_proxy
            proxy = None
        return cls(url=url, host=parts.hostname or "", port=port, secure=secure, proxy=proxy)


def check_proxy(target: Target) -> Check:
    from websockets.uri import parse_proxy

    name = "proxy"
    env = {k: masked_url(v) for k, v in urllib.request.getproxies().items()}
    if target.proxy is None:
        noted = ", ".join(f"{k}={v}" for k, v in sorted(env.items()))
        return _pass(name, f"none for {target.host}" + (f" (set: {noted})" if noted else ""))
    try:
        parse_proxy(target.proxy)
    except Exception as exc:
        return _fail(
            name,
            f"{masked_url(target.proxy)} does not parse: "
            + str(exc).replace(target.proxy, masked_url(target.proxy)),
            "fix HTTPS_PROXY (http://HOST:PORT), or add the control plane to NO_PROXY",
        )
    return _pass(name, f"the link goes through {masked_url(target.proxy)}")


def _endpoint(target: Target) -> tuple[str, int, str]:
    """Where this host itself connects: the proxy when there is one."""
    if target.proxy is not None:
        parts = urlsplit(target.proxy)
        return parts.hostname or "", parts.port or 1080, "the proxy "
    return target.host, target.port, ""


async def check_dns(target: Target, *, timeout: float) -> tuple[Check, list[Any]]:
    name = "dns"
    host, port, what = _endpoint(target)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        return _fail(
            name,
            f"cannot resolve {what}{host}: {reason}",
            "check the name and this host's resolver (/etc/resolv.conf)",
        ), []
    addresses = sorted({str(info[4][0]) for info in infos})
    detail = f"{what}{host} -> {', '.join(addresses[:4])}"
    if target.proxy is not None:
        detail += f" ({target.host} is resolved by the proxy)"
    return _pass(name, detail), infos


async def check_tcp(target: Target, infos: list[Any], *, timeout: float) -> Check:
    name = "tcp"
    host, port, what = _endpoint(target)
    errors = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, address)
            return _pass(name, f"connected to {what}{address[0]} port {port}")
        except (OSError, TimeoutError) as exc:
            errors.append(f"{address[0]}: {'timed out' if isinstance(exc, TimeoutError) else exc}")
        finally:
            sock.close()
    return _fail(
        name,
        f"cannot connect to {what}{host} port {port}: " + "; ".join(errors),
        "check that the control plane runs and that firewalls let this host out on that port",
    )


async def check_tls(target: Target, settings: Settings, infos: list[Any]) -> Check:
    from agent.link.transport import is_loopback, ssl_context

    name = "tls"
    if not target.secure:
        if is_loopback(target.host):
            return _pass(name, "plaintext to a loopback address (allowed without TLS)")
        if settings.allow_plaintext:
            return _fail(
                name,
                f"plaintext to {target.host}, allowed by allow_plaintext",
                "give the control plane a TLS certificate (https://)",
            )
        return _fail(
            name, f"plaintext to {target.host} is refused", "use the control plane's https:// URL"
        )
    if target.proxy is not None:
        return _skip(name, "checked end to end by the websocket check, through the proxy")
    try:
        context = ssl_context(settings.ca_file)
    except AgentError as exc:
        return _fail(name, exc.message, exc.hint or "fix ca_file")
    try:
        async with asyncio.timeout(settings.connect_timeout):
            _, writer = await asyncio.open_connection(
                infos[0][4][0], target.port, ssl=context, server_hostname=target.host
            )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        return _fail(
            name,
            f"TLS with {target.host} failed: {reason}",
            "if the control plane uses a private CA, set ca_file to its PEM file"
            " (a TLS-inspecting proxy needs its CA there too)",
        )
    try:
        tls = writer.get_extra_info("ssl_object")
        cert = tls.getpeercert() if tls is not None else None
        version = tls.version() if tls is not None else "?"
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    detail = f"{version}, certificate for {target.host} verified"
    if cert and cert.get("notAfter"):
        left = (ssl.cert_time_to_seconds(str(cert["notAfter"])) - time.time()) / 86400
        detail += f", expires in {left:.0f} days"
        if left < 14:
            return _fail(name, detail, "renew the control plane's certificate")
    return _pass(name, detail)


async def check_websocket(
    target: Target,
    settings: Settings,
    identity: Any,
    key: Any,
    *,
    daemon_pid: int | None,
    clock: Callable[[], float] = time.time,
) -> tuple[Check, float | None]:
    """The handshake; returns the check and the clock skew in seconds (server - here)."""
    from websockets.exceptions import ConnectionClosed

    from agent import __version__
    from agent.identity import host_facts
    from agent.link.state import REPAIR_HINT
    from agent.link.transport import link_url, open_link
    from agent.protocol.frames import Auth, Hello, Welcome
    from agent.protocol.session import Role, Session, classify_close
    from agent.protocol.signing import sign_auth

    name = "websocket auth"
    url = link_url(target.url)
    timeout = settings.connect_timeout
    try:
        async with asyncio.timeout(2 * timeout):
            ws = await open_link(
                url,
                ca_file=settings.ca_file,
                max_frame_bytes=settings.max_frame_bytes,
                open_timeout=timeout,
            )
            try:
                session = Session(role=Role.AGENT, max_bytes=settings.max_frame_bytes)
                sent_at = clock()
                hello = session.receive(await ws.recv())
                received_at = clock()
                assert isinstance(hello, Hello)
                server = datetime.fromisoformat(hello.server_time).timestamp()
                skew = server - (sent_at + received_at) / 2
                if daemon_pid is not None:
                    return _pass(
                        name,
                        f"hello from region {hello.region}; not authenticating: the running"
                        f" daemon (pid {daemon_pid}) holds this agent's session, and a second"
                        " one would replace it (flow-agent status shows its link)",
                    ), skew
                signature = sign_auth(key, nonce=hello.nonce, agent_id=identity.agent_id)
                await ws.send(
                    session.send(
                        Auth(
                            agent_id=identity.agent_id,
                            signature=signature,
                            agent_version=__version__,
                            facts=host_facts(),
                        )
                    )
                )
                welcome = session.receive(await ws.recv())
                assert isinstance(welcome, Welcome)
            finally:
                await ws.close()
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        info = classify_close(code)
        hint = REPAIR_HINT if info.terminal else "see the control plane's log"
        return _fail(name, f"the control plane closed the link: {info.reason} ({code})", hint), None
    except TimeoutError:
        return _fail(
            name,
            f"no handshake from {url} within {2 * timeout:g} s",
            "check that the URL is the control plane's and not another service",
        ), None
    except AgentError as exc:
        return _fail(name, exc.message, exc.hint or "see the message"), None
    except Exception as exc:
        return _fail(
            name, f"{url}: {type(exc).__name__}: {exc}", "check the URL, the proxy and ca_file"
        ), None
    return _pass(
        name,
        f"authenticated as {identity.agent_id} (tenant {welcome.tenant}, region"
        f" {hello.region}), then closed",
    ), skew


def check_clock(skew: float | None) -> Check:
    name = "clock"
    if skew is None:
        return _skip(name, "no hello from the control plane to compare with")
    detail = f"{abs(skew):.1f} s {'behind' if skew > 0 else 'ahead of'} the control plane"
    if abs(skew) > MAX_SKEW:
        return _fail(name, detail, "synchronise the clock (NTP: timedatectl set-ntp true)")
    return _pass(name, detail)


# -- all of it -----------------------------------------------------------------------


async def run_checks(settings: Settings) -> list[Check]:
    from agent.link.status import read_status

    state_dir = settings.state_dir
    checks = [check_state_dir(state_dir)]
    identity_check, loaded = check_identity(state_dir)
    checks.append(identity_check)
    network = ("proxy", "dns", "tcp", "tls", "websocket auth", "clock")
    if loaded is None:
        checks += [_skip(name, "no usable identity") for name in network]
    else:
        identity, key = loaded
        target = Target.of(identity.url)
        checks.append(check_proxy(target))
        dns, infos = await check_dns(target, timeout=settings.connect_timeout)
        checks.append(dns)
        tcp = await check_tcp(target, infos, timeout=settings.connect_timeout) if infos else None
        checks.append(tcp or _skip("tcp", "the name did not resolve"))
        if tcp is None or tcp.failed:
            checks += [_skip(name, "no TCP connection") for name in network[3:]]
        else:
            checks.append(await check_tls(target, settings, infos))
            pid = read_status(state_dir).daemon_pid
            ws, skew = await check_websocket(target, settings, identity, key, daemon_pid=pid)
            checks += [ws, check_clock(skew)]
    checks.append(check_disk(state_dir))
    return checks


def format_checks(checks: list[Check]) -> list[str]:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.result.upper():<4}  {check.name:<{width}}  {check.detail}")
        if check.hint and check.failed:
            lines.append(f"{'':<4}  {'':<{width}}  hint: {check.hint}")
    failed = sum(c.failed for c in checks)
    lines.append(f"{failed} check(s) failed" if failed else "every check passed")
    return lines


def checks_json(checks: list[Check]) -> str:
    return json.dumps(
        {"ok": not any(c.failed for c in checks), "checks": [asdict(c) for c in checks]}, indent=2
    )


__all__ = [
    "Check",
    "check_clock",
    "check_disk",
    "check_state_dir",
    "checks_json",
    "format_checks",
    "masked_url",
    "run_checks",
]
