"""Admin API: authentication, OpenAPI coverage, tenants, publish and activate, the page."""

from __future__ import annotations

import re

import aiohttp
from cphelpers import HELLO_FLOW, Admin, pair

from agent.protocol.signing import (
    flow_sha256,
    load_public_key,
    verify_activation,
    verify_flow,
)
from controlplane.app import RunningServer


async def test_admin_api_refuses_missing_or_wrong_key(admin: Admin) -> None:
    async with admin.http.get(admin.url + "/admin/v1/tenants") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthorized"
    status, answer = await admin.call("GET", "/admin/v1/tenants", key="fcpa_wrong")
    assert (status, answer["error"]) == (401, "unauthorized")
    status, answer = await admin.call("POST", "/admin/v1/tenants", {"name": "x"}, key="")
    assert status == 401
    status, _ = await admin.call("GET", "/admin/v1/tenants")
    assert status == 200
    # Nothing was created by the refused request.
    assert (await admin.ok("GET", "/admin/v1/tenants"))["tenants"] == []


async def test_openapi_describes_every_admin_route(admin: Admin, server: RunningServer) -> None:
    async with admin.http.get(admin.url + "/admin/v1/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    routes = set()
    for route in server.runner.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/admin/v1") and route.method != "HEAD":
            routes.add((path, route.method.lower()))
    assert len(routes) >= 15
    for path, method in routes:
        assert path in doc["paths"], path
        assert method in doc["paths"][path], (path, method)
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert documented == routes


async def test_tenants(admin: Admin) -> None:
    assert (await admin.call("POST", "/admin/v1/tenants", {"name": "acme"}))[0] == 201
    status, answer = await admin.call("POST", "/admin/v1/tenants", {"name": "acme"})
    assert (status, answer["error"]) == (409, "tenant_exists")
    status, answer = await admin.call("POST", "/admin/v1/tenants", {"name": "Bad Name!"})
    assert status == 400
    status, answer = await admin.call("GET", "/admin/v1/tenants/nope/agents")
    assert (status, answer["error"]) == (404, "tenant_unknown")
    assert (await admin.ok("GET", "/admin/v1/tenants"))["tenants"] == [{"name": "acme"}]


async def test_publish_versions_are_monotonic_and_signed(admin: Admin, tenant: str) -> None:
    info = await admin.ok("GET", "/admin/v1/info")
    key = load_public_key(info["signing_key"])
    versions = []
    for name in ("one", "two", "three"):
        answer = await admin.publish({**HELLO_FLOW, "name": name, "version": 99})
        versions.append(answer["version"])
    assert versions == [1, 2, 3]
    other = await admin.publish({**HELLO_FLOW, "id": "other"})
    assert other["version"] == 1
    stored = await admin.ok("GET", "/admin/v1/tenants/acme/flows/hello/versions/2")
    assert stored["definition"]["version"] == 2
    assert stored["definition"]["name"] == "two"
    assert stored["sha256"] == flow_sha256(stored["definition"])
    verify_flow(
        key,
        tenant="acme",
        flow_id="hello",
        version=2,
        definition=stored["definition"],
        signature=stored["signature"],
    )
    flows = {f["id"]: f for f in (await admin.ok("GET", "/admin/v1/tenants/acme/flows"))["flows"]}
    assert flows["hello"]["active"] == 3
    assert [v["version"] for v in flows["hello"]["versions"]] == [1, 2, 3]


async def test_invalid_flow_is_rejected_with_paths(admin: Admin, tenant: str) -> None:
    bad = {**HELLO_FLOW, "start": "nowhere"}
    status, answer = await admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": bad})
    assert status == 422
    assert answer["error"] == "flow_invalid"
    assert any(issue["path"] == "start" for issue in answer["issues"])
    status, answer = await admin.call("POST", "/admin/v1/tenants/acme/flows", {"definition": [1]})
    assert status == 422
    flows = (await admin.ok("GET", "/admin/v1/tenants/acme/flows"))["flows"]
    assert flows == []


async def test_activation_serial_increases_and_is_signed(admin: Admin, tenant: str) -> None:
    key = load_public_key((await admin.ok("GET", "/admin/v1/info"))["signing_key"])
    for _ in range(3):
        await admin.publish(HELLO_FLOW)
    serials = []
    for version in (1, 2, 1):
        answer = await admin.ok(
            "POST", "/admin/v1/tenants/acme/flows/hello/activate", {"version": version}
        )
        assert answer["version"] == version
        verify_activation(
            key,
            tenant="acme",
            flow_id="hello",
            version=version,
            serial=answer["serial"],
            signature=answer["signature"],
        )
        serials.append(answer["serial"])
    assert serials == [1, 2, 3]
    flows = (await admin.ok("GET", "/admin/v1/tenants/acme/flows"))["flows"]
    assert (flows[0]["active"], flows[0]["serial"]) == (1, 3)
    # A publish after a rollback makes the new version active and keeps the serial.
    assert (await admin.publish(HELLO_FLOW))["version"] == 4
    flows = (await admin.ok("GET", "/admin/v1/tenants/acme/flows"))["flows"]
    assert (flows[0]["active"], flows[0]["serial"]) == (4, 3)
    answer = await admin.ok("POST", "/admin/v1/tenants/acme/flows/hello/activate", {"version": 2})
    assert answer["serial"] == 4
    status, answer = await admin.call(
        "POST", "/admin/v1/tenants/acme/flows/hello/activate", {"version": 9}
    )
    assert (status, answer["error"]) == (404, "flow_unknown")


async def test_admin_page_needs_a_login(admin: Admin, tenant: str) -> None:
    await pair(admin, name="<script>alert(1)</script>")
    await admin.publish(HELLO_FLOW)
    # unsafe=True: aiohttp's client keeps no cookies for IP hosts otherwise; browsers do.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(admin.url + "/", allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/login"
        # A key in the URL is not a way in.
        async with browser.get(admin.url + f"/?key={admin.key}", allow_redirects=False) as resp:
            assert resp.status == 303
        async with browser.post(admin.url + "/login", data={"key": "wrong"}) as resp:
            assert resp.status == 401
            assert "not right" in await resp.text()
        async with browser.post(
            admin.url + "/login", data={"key": admin.key}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
            cookie = resp.cookies["fcp_session"]
            assert cookie["httponly"]
            assert cookie["samesite"] == "Strict"
            assert admin.key not in cookie.value
        async with browser.get(admin.url + "/") as resp:
            assert resp.status == 200
            page = await resp.text()
        assert "Tenant acme" in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<script>" not in page
        assert re.search(r"<b>v1</b>", page)
        assert "offline" in page
        async with browser.post(admin.url + "/logout", allow_redirects=False) as resp:
            assert resp.status == 303
        async with browser.get(admin.url + "/", allow_redirects=False) as resp:
            assert resp.status == 303
