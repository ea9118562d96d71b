"""Bearer token, loopback-only without one, cross-site refusals, the token file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from agent.api import load_or_create_token, rotate_token
from agent.api.auth import TOKEN_FILE, is_loopback_host, session_value
from agent.errors import ConfigError

from .conftest import TOKEN
from .test_api_runs import problem

Client = TestClient[web.Request, web.Application]
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def test_without_a_token_everything_is_open_on_loopback(client: Client) -> None:
    for path in ("/api/v1/flows", "/metrics", "/ui/", "/livez", "/readyz"):
        assert (await client.get(path)).status == 200, path


async def test_without_a_token_a_foreign_host_is_refused(client: Client) -> None:
    # A page on a DNS name rebound to 127.0.0.1 would send its own Host.
    headers = {"Host": "evil.example:8355"}
    await problem(await client.get("/api/v1/flows", headers=headers), 403, "host_not_allowed")
    response = await client.post("/api/v1/flows/double/runs", json={}, headers=headers)
    await problem(response, 403, "host_not_allowed")
    # Health stays open to probes that use any name.
    assert (await client.get("/livez", headers=headers)).status == 200


async def test_the_token_guards_every_route_but_health(guarded: Client) -> None:
    assert (await guarded.get("/livez")).status == 200
    assert (await guarded.get("/readyz")).status == 200
    for path in ("/api/v1/flows", "/api/v1/runs", "/metrics", "/api/v1/openapi.json"):
        response = await guarded.get(path)
        await problem(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        wrong = await guarded.get(path, headers={"Authorization": "Bearer " + "x" * 43})
        await problem(wrong, 401, "unauthorized")
        basic = await guarded.get(path, headers={"Authorization": f"Basic {TOKEN}"})
        await problem(basic, 401, "unauthorized")
        assert (await guarded.get(path, headers=BEARER)).status == 200, path
    response = await guarded.post("/api/v1/flows/double/runs", json={"inputs": {"n": 1}})
    await problem(response, 401, "unauthorized")
    response = await guarded.post(
        "/api/v1/flows/double/runs", json={"inputs": {"n": 1}}, headers=BEARER
    )
    assert response.status == 201


async def test_with_a_token_any_host_may_call(guarded: Client) -> None:
    headers = {**BEARER, "Host": "agent.internal:8355"}
    assert (await guarded.get("/api/v1/flows", headers=headers)).status == 200


async def test_a_cross_site_post_is_refused(client: Client, guarded: Client) -> None:
    for c, headers in ((client, {}), (guarded, BEARER)):
        response = await c.post(
            "/api/v1/flows/double/runs",
            json={"inputs": {"n": 1}},
            headers={**headers, "Origin": "https://evil.example"},
        )
        await problem(response, 403, "cross_site")
        same = f"http://{c.host}:{c.port}"
        response = await c.post(
            "/api/v1/flows/double/runs",
            json={"inputs": {"n": 1}},
            headers={**headers, "Origin": same},
        )
        assert response.status == 201


async def test_the_player_signs_in_with_the_token(guarded: Client) -> None:
    origin = {"Origin": f"http://{guarded.host}:{guarded.port}"}
    response = await guarded.get("/ui/runs/r_x", allow_redirects=False)
    assert response.status == 303
    location = URL(response.headers["Location"])
    assert location.path == "/ui/login" and location.query["next"] == "/ui/runs/r_x"
    page = await guarded.get("/ui/login")
    assert page.status == 200 and 'for="token"' in await page.text()
    refused = await guarded.post(
        "/ui/login", data={"token": "wrong", "next": "/ui/"}, headers=origin, allow_redirects=False
    )
    assert refused.status == 401
    assert "not this agent" in await refused.text()
    assert "flow_agent_session" not in refused.cookies
    # "next" may only lead to the player, never to another site.
    response = await guarded.post(
        "/ui/login",
        data={"token": TOKEN, "next": "//evil.example/"},
        headers=origin,
        allow_redirects=False,
    )
    assert response.status == 303 and response.headers["Location"] == "/ui/"
    cookie = response.cookies["flow_agent_session"]
    assert cookie.value == session_value(TOKEN) and TOKEN not in cookie.value
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/ui/"
    index = await guarded.get("/ui/")
    assert index.status == 200 and "Invoice approval" in await index.text()
    # The session cookie is for the player only, not for the JSON API.
    await problem(await guarded.get("/api/v1/flows"), 401, "unauthorized")
    out = await guarded.post("/ui/logout", headers=origin, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/ui/login"
    guarded.session.cookie_jar.clear()
    assert (await guarded.get("/ui/", allow_redirects=False)).status == 303


async def test_the_player_takes_the_bearer_header(guarded: Client) -> None:
    response = await guarded.get("/ui/", headers=BEARER)
    assert response.status == 200


async def test_player_posts_need_a_same_origin_origin_or_referer(client: Client) -> None:
    url = "/ui/flows/double/runs"
    here = f"http://{client.host}:{client.port}"
    for headers in ({}, {"Origin": "https://evil.example"}, {"Referer": "https://evil.example/x"}):
        response = await client.post(url, data={"input.n": "2"}, headers=headers)
        assert response.status == 403, headers
        assert "cross-site" in await response.text()
    ok = await client.post(
        url, data={"input.n": "2"}, headers={"Referer": f"{here}/ui/flows/double"}
    )
    assert ok.status == 200 and "Completed" in await ok.text()


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1:8355", "localhost", "LOCALHOST:1", "[::1]:8355", "127.9.9.9"):
        assert is_loopback_host(host), host
    for other in ("evil.example", "10.0.0.1:8355", "[::2]", "", None, "localhost.evil.example"):
        assert not is_loopback_host(other), other


def test_token_file_is_created_private_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    token = load_or_create_token(state)
    path = state / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 43 and path.read_text().strip() == token
    assert load_or_create_token(state) == token
    rotated = rotate_token(state)
    assert rotated != token and load_or_create_token(state) == rotated
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in state.iterdir()] == [TOKEN_FILE]  # no temporary left behind


def test_token_file_readable_by_others_or_empty_is_refused(tmp_path: Path) -> None:
    load_or_create_token(tmp_path)
    path = tmp_path / TOKEN_FILE
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        load_or_create_token(tmp_path)
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="no usable token"):
        load_or_create_token(tmp_path)
