"""The network guard: the deciding rule, literal tricks, resolved names, redirects."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from ipaddress import ip_address, ip_network

import pytest
import trustme
from aiohttp import web
from yarl import URL

from agent.connectors.guard import (
    GuardedResolver,
    NetworkGuard,
    NetworkRefused,
    guard_from_settings,
    literal_address,
)
from agent.connectors.http import HttpConnector
from agent.errors import ConfigError

from .conftest import Serve
from .helpers import NameTable, request

MakeConnector = Callable[..., HttpConnector]
METADATA_REASON = (
    "is in the denied network 169.254.0.0/16 (link-local / cloud metadata); "
    "allow it with the http_allow_networks setting if this is intended"
)


def counting_app() -> tuple[web.Application, list[str]]:
    seen: list[str] = []

    async def handler(req: web.Request) -> web.Response:
        seen.append(f"{req.method} {req.path_qs}")
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app, seen


def redirecting_app(location: str, *, status: int = 302) -> tuple[web.Application, list[str]]:
    seen: list[str] = []

    async def handler(req: web.Request) -> web.Response:
        seen.append(req.path)
        return web.Response(status=status, headers={"Location": location})

    app = web.Application()
    app.router.add_route("*", "/go", handler)
    return app, seen


# -- the deciding rule -------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fe80::1%eth0",
        "fd00:ec2::254",
        "100.100.100.200",
        "::ffff:169.254.169.254",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64
        "2002:a9fe:a9fe::1",  # 6to4
    ],
)
def test_link_local_and_metadata_are_refused_by_default(address: str) -> None:
    assert NetworkGuard().refusal(ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "203.0.113.9", "2001:db8::1"]
)
def test_loopback_private_and_public_are_allowed_by_default(address: str) -> None:
    assert NetworkGuard().refusal(ip_address(address)) is None


def test_the_refusal_names_the_address_the_network_and_the_remedy() -> None:
    reason = NetworkGuard().refusal(ip_address("169.254.169.254"))

    assert reason == f"169.254.169.254 {METADATA_REASON}"


def test_the_more_specific_network_wins() -> None:
    guard = NetworkGuard(deny=[ip_network("10.0.0.0/8")], allow=[ip_network("10.1.2.0/24")])

    assert guard.refusal(ip_address("10.1.2.3")) is None
    assert guard.refusal(ip_address("10.1.3.3")) == (
        "10.1.3.3 is in the denied network 10.0.0.0/8 (http_deny_networks setting)"
    )
    # and the other way round: a narrow deny inside a wide allow
    guard = NetworkGuard(deny=[ip_network("10.1.2.0/24")], allow=[ip_network("10.0.0.0/8")])
    assert guard.refusal(ip_address("10.1.2.3")) is not None
    assert guard.refusal(ip_address("10.1.3.3")) is None


def test_ties_deny_setting_beats_allow_setting_beats_built_in_default() -> None:
    same = [ip_network("10.0.0.0/8")]
    assert NetworkGuard(deny=same, allow=same).refusal(ip_address("10.0.0.1")) is not None

    metadata = [ip_network("169.254.0.0/16")]
    assert NetworkGuard(allow=metadata).refusal(ip_address("169.254.169.254")) is None


def test_an_allow_can_open_one_metadata_address_only() -> None:
    guard = NetworkGuard(allow=[ip_network("169.254.169.254/32")])

    assert guard.refusal(ip_address("169.254.169.254")) is None
    assert guard.refusal(ip_address("::ffff:169.254.169.254")) is None
    assert guard.refusal(ip_address("169.254.169.253")) is not None


def test_a_mapped_ipv6_address_is_judged_by_its_ipv4_network() -> None:
    guard = NetworkGuard(deny=[ip_network("127.0.0.0/8")])

    reason = guard.refusal(ip_address("::ffff:127.0.0.1"))

    assert reason == (
        "::ffff:7f00:1 (IPv4 127.0.0.1) is in the denied network 127.0.0.0/8 "
        "(http_deny_networks setting)"
    )


def test_settings_parse_and_a_bad_entry_names_the_setting() -> None:
    guard = guard_from_settings(allow=["10.1.2.0/24"], deny=[" 10.0.0.0/8 "])
    assert guard.refusal(ip_address("10.9.9.9")) is not None

    with pytest.raises(ConfigError, match=r"http_deny_networks: '10\.1\.2\.3/24' is not a network"):
        guard_from_settings(deny=["10.1.2.3/24"])
    with pytest.raises(ConfigError, match="http_allow_networks: 'lan' is not a network"):
        guard_from_settings(allow=["lan"])


# -- literal hosts -----------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "2852039166",  # integer
        "0xA9FEA9FE",  # hex
        "0xa9.0xfe.0xa9.0xfe",  # hex per part
        "0251.0376.0251.0376",  # octal
        "169.254.43518",  # short form
        "[::ffff:169.254.169.254]",
        "::ffff:a9fe:a9fe",
    ],
)
def test_every_spelling_of_the_metadata_address_is_refused(host: str) -> None:
    assert literal_address(host) is not None

    with pytest.raises(NetworkRefused) as caught:
        NetworkGuard().check_host(host)

    assert caught.value.host == host
    assert caught.value.address in {"169.254.169.254", "::ffff:a9fe:a9fe"}
    assert METADATA_REASON in caught.value.message


def test_a_numeric_trick_is_shown_with_the_address_it_means() -> None:
    with pytest.raises(NetworkRefused) as caught:
        NetworkGuard().check_host("2852039166")

    assert caught.value.message == f"host 2852039166 means 169.254.169.254, which {METADATA_REASON}"


def test_names_are_left_to_the_resolver_and_broken_literals_are_refused() -> None:
    NetworkGuard().check_host("erp.example")  # no exception: the resolver decides
    NetworkGuard().check_host("deadbeef.example")

    with pytest.raises(NetworkRefused, match="not a valid IP address"):
        NetworkGuard().check_host("1.2.3.4.5")


# -- resolved names ----------------------------------------------------------


async def test_the_resolver_refuses_a_name_that_resolves_to_metadata() -> None:
    resolver = NetworkGuard(resolver=NameTable({"metadata.test": ["169.254.169.254"]})).resolver()

    with pytest.raises(NetworkRefused) as caught:
        await resolver.resolve("metadata.test", 80)

    assert caught.value.message == (
        f"host metadata.test resolves to 169.254.169.254, which {METADATA_REASON}"
    )


async def test_the_resolver_drops_denied_addresses_and_keeps_the_rest() -> None:
    table = NameTable({"mixed.test": ["169.254.169.254", "::ffff:169.254.1.1", "127.0.0.1"]})
    resolver = NetworkGuard(resolver=table).resolver()

    results = await resolver.resolve("mixed.test", 8080)

    assert [r["host"] for r in results] == ["127.0.0.1"]
    assert results[0]["port"] == 8080


@pytest.mark.parametrize("host", ["0xA9FEA9FE", "2852039166", "0251.0376.0251.0376"])
async def test_the_system_resolver_reading_numeric_tricks_is_checked_too(host: str) -> None:
    # The real resolver (getaddrinfo) turns these into 169.254.169.254 without
    # any network traffic; the check happens on its answer, not on the text.
    resolver = GuardedResolver(guard=NetworkGuard(), inner=None)
    try:
        with pytest.raises(NetworkRefused, match=r"resolves to 169\.254\.169\.254"):
            await resolver.resolve(host, 80)
    finally:
        await resolver.close()


async def test_localhost_is_refused_when_loopback_is_denied() -> None:
    guard = guard_from_settings(deny=["127.0.0.0/8", "::1/128"])
    resolver = GuardedResolver(guard=guard, inner=None)
    try:
        with pytest.raises(NetworkRefused, match=r"127\.0\.0\.0/8|::1/128"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


# -- through the http connector ----------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "http://169.254.169.254/latest",
        "http://2852039166/latest",
        "http://0xA9FEA9FE/latest",
        "http://0251.0376.0251.0376/latest",
        "http://[::ffff:169.254.169.254]/latest",
        "http://[fe80::1]/latest",
        "http://metadata.test/latest",
        "http://mapped.test/latest",
    ],
)
async def test_the_connector_refuses_metadata_in_every_form(
    make_connector: MakeConnector, base_url: str
) -> None:
    table = NameTable(
        {"metadata.test": ["169.254.169.254"], "mapped.test": ["::ffff:169.254.169.254"]}
    )
    connector = make_connector(guard=NetworkGuard(resolver=table))

    result = await connector.call(request(base_url, "GET /meta-data", attempts=3, timeout=2))

    assert not result.ok
    assert result.status is None
    assert result.attempts == 1  # a refusal is not retried
    shown = str(URL(base_url))  # as normalised: lower-case host, compressed IPv6
    assert result.message.startswith(f"GET {shown}/meta-data refused: ")
    assert "is in the denied network" in result.message


async def test_a_name_is_connected_to_the_address_the_guard_checked(
    serve: Serve, make_connector: MakeConnector
) -> None:
    app, seen = counting_app()
    port = int((await serve(app)).rsplit(":", 1)[1])
    table = NameTable({"erp.test": ["127.0.0.1"]})
    connector = make_connector(guard=NetworkGuard(resolver=table))

    result = await connector.call(request(f"http://erp.test:{port}", "GET /api"))

    assert result.ok, result.message
    assert seen == ["GET /api"]
    assert table.lookups == ["erp.test"]


async def test_a_denied_extra_network_refuses_loopback_in_every_form(
    serve: Serve, make_connector: MakeConnector
) -> None:
    app, seen = counting_app()
    port = int((await serve(app)).rsplit(":", 1)[1])
    guard = NetworkGuard(
        deny=[ip_network("127.0.0.0/8")], resolver=NameTable({"erp.test": ["127.0.0.1"]})
    )
    connector = make_connector(guard=guard)

    for host in [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
        "erp.test",
    ]:
        result = await connector.call(request(f"http://{host}:{port}", "GET /api"))
        assert not result.ok, host
        assert "127.0.0.0/8 (http_deny_networks setting)" in result.message, host

    assert seen == []


async def test_an_allowed_network_overrides_a_wider_deny(
    serve: Serve, make_connector: MakeConnector
) -> None:
    app, seen = counting_app()
    base = await serve(app)
    guard = guard_from_settings(deny=["127.0.0.0/8"], allow=["127.0.0.1/32"])

    result = await make_connector(guard=guard).call(request(base, "GET /api"))

    assert result.ok, result.message
    assert seen == ["GET /api"]


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",
        "http://metadata.test/",
    ],
)
async def test_a_redirect_into_metadata_is_refused(
    serve: Serve, make_connector: MakeConnector, location: str
) -> None:
    app, seen = redirecting_app(location)
    base = await serve(app)
    connector = make_connector(
        guard=NetworkGuard(resolver=NameTable({"metadata.test": ["169.254.169.254"]}))
    )

    result = await connector.call(request(base, "GET /go", attempts=3))

    assert not result.ok
    assert result.status is None
    assert seen == ["/go"]
    assert result.attempts == 1
    assert "169.254.169.254" in result.message and "refused" in result.message


@pytest.mark.parametrize(
    ("location", "scheme"),
    [("file:///etc/passwd", "file"), ("gopher://127.0.0.1:70/_x", "gopher"), ("ftp://x/", "ftp")],
)
async def test_a_redirect_to_another_scheme_is_refused(
    serve: Serve, make_connector: MakeConnector, location: str, scheme: str
) -> None:
    app, _ = redirecting_app(location)
    base = await serve(app)

    result = await make_connector().call(request(base, "GET /go"))

    assert not result.ok
    assert result.message == (
        f"GET {base}/go refused: redirected to a {scheme}: URL; only http and https are allowed"
    )


@pytest.mark.parametrize(("hops", "ok"), [(5, True), (6, False)])
async def test_at_most_five_redirects_are_followed(
    serve: Serve, make_connector: MakeConnector, hops: int, ok: bool
) -> None:
    seen: list[int] = []

    async def hop(req: web.Request) -> web.Response:
        left = int(req.match_info["left"])
        seen.append(left)
        if left == 0:
            return web.json_response({"arrived": True})
        return web.Response(status=307, headers={"Location": f"/hop/{left - 1}"})

    app = web.Application()
    app.router.add_get("/hop/{left}", hop)
    base = await serve(app)

    result = await make_connector().call(request(base, f"GET /hop/{hops}"))

    assert result.ok is ok
    if ok:
        assert result.body == {"arrived": True}
        assert seen == [5, 4, 3, 2, 1, 0]
    else:
        assert "failed: more than 5 redirects" in result.message
        assert len(seen) == 6


async def test_see_other_continues_as_get_and_credentials_stay_at_their_origin(
    serve: Serve, make_connector: MakeConnector
) -> None:
    landed: list[dict[str, str | bytes]] = []

    async def landing(req: web.Request) -> web.Response:
        landed.append({"method": req.method, "body": await req.read(), **req.headers})
        return web.json_response({"done": True})

    target = web.Application()
    target.router.add_route("*", "/landing", landing)
    target_port = int((await serve(target)).rsplit(":", 1)[1])
    app, _ = redirecting_app(f"http://other.test:{target_port}/landing", status=303)
    base = await serve(app)
    connector = make_connector(
        guard=NetworkGuard(resolver=NameTable({"other.test": ["127.0.0.1"]}))
    )

    result = await connector.call(
        request(base, "POST /go", body={"x": 1}, headers={"Authorization": "Bearer t"})
    )

    assert result.ok, result.message
    [seen] = landed
    assert seen["method"] == "GET"
    assert seen["body"] == b""
    assert "Authorization" not in seen
    assert "Content-Type" not in seen
    assert seen["Idempotency-Key"] == "r_test:notify:1"


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for erp.test, client context trusting it)"""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("erp.test").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    return server_tls, client_tls


async def test_https_to_a_pinned_address_still_checks_the_certificate_name(
    serve: Serve, make_connector: MakeConnector, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, client_tls = tls
    app, seen = counting_app()
    port = int((await serve(app, ssl_context=server_tls)).rsplit(":", 1)[1])
    guard = NetworkGuard(resolver=NameTable({"erp.test": ["127.0.0.1"]}))
    connector = make_connector(guard=guard, ssl_context=client_tls)

    by_name = await connector.call(request(f"https://erp.test:{port}", "GET /api"))
    by_address = await connector.call(request(f"https://127.0.0.1:{port}", "GET /api", attempts=3))

    assert by_name.ok, by_name.message
    assert seen == ["GET /api"]
    assert not by_address.ok  # the certificate is for erp.test, not for the address
    assert by_address.attempts == 1  # a certificate does not improve with retries
    assert "TLS failed: certificate not accepted" in by_address.message


async def test_a_redirect_from_https_down_to_http_is_refused(
    serve: Serve, make_connector: MakeConnector, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, client_tls = tls
    plain, seen = counting_app()
    plain_base = await serve(plain)
    app, _ = redirecting_app(f"{plain_base}/landing", status=307)
    port = int((await serve(app, ssl_context=server_tls)).rsplit(":", 1)[1])
    guard = NetworkGuard(resolver=NameTable({"erp.test": ["127.0.0.1"]}))
    connector = make_connector(guard=guard, ssl_context=client_tls)

    result = await connector.call(request(f"https://erp.test:{port}", "POST /go", body={"a": 1}))

    assert not result.ok
    assert "refused: redirected from https to plain http" in result.message
    assert seen == []
