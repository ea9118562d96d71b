"""How the daemon serves the API: which token, the listener, a rotated token file."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from agent.api import create_app
from agent.api.auth import TokenFile, load_or_create_token, rotate_token
from agent.api.serve import ApiServer, api_token, public_url
from agent.errors import ConfigError, OperationError
from agent.runtime.runner import Runner
from agent.settings import Settings


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(state_dir=tmp_path / "state", **values)  # type: ignore[arg-type]


def test_loopback_without_a_token_file_is_open(tmp_path: Path) -> None:
    for listen in ("127.0.0.1:8355", "[::1]:0", "localhost:8355"):
        assert api_token(_settings(tmp_path, api_listen=listen)) is None


def test_beyond_loopback_without_a_token_is_refused_saying_how(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:8355", "[::]:8355", "10.1.2.3:8355"):
        with pytest.raises(ConfigError) as refused:
            api_token(_settings(tmp_path, api_listen=listen))
        assert listen in refused.value.message and "beyond loopback" in refused.value.message
        assert "flow-agent api-token" in str(refused.value.hint)
        assert refused.value.exit_code == 78


def test_a_token_once_made_is_required_on_loopback_too(tmp_path: Path) -> None:
    settings = _settings(tmp_path, api_listen="0.0.0.0:8355")
    token = load_or_create_token(settings.state_dir)
    source = api_token(settings)
    assert source is not None and source() == token
    loopback = api_token(_settings(tmp_path))
    assert loopback is not None and loopback() == token


def test_api_token_file_is_used_and_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.token"
    settings = _settings(tmp_path, api_token_file=path)
    with pytest.raises(ConfigError, match="does not exist"):
        api_token(settings)
    token = rotate_token(tmp_path, path=path)
    source = api_token(settings)
    assert source is not None and source() == token
    assert not (settings.state_dir / "api.token").exists()


def test_a_rotated_token_file_applies_without_a_restart(tmp_path: Path) -> None:
    now = [0.0]
    first = rotate_token(tmp_path)
    source = TokenFile(tmp_path / "api.token", every=1.0, mono=lambda: now[0])
    second = rotate_token(tmp_path)
    assert source() == first  # looked at less than a second ago
    now[0] = 1.5
    assert source() == second
    (tmp_path / "api.token").chmod(0o644)  # opened up: refused, the last good one stays
    (tmp_path / "api.token").write_text("x" * 43 + "\n")
    now[0] = 3.0
    assert source() == second
    (tmp_path / "api.token").unlink()
    now[0] = 4.5
    assert source() == second


def test_the_public_url_defaults_to_where_the_api_listens(tmp_path: Path) -> None:
    assert public_url(_settings(tmp_path), "http://127.0.0.1:41000") == "http://127.0.0.1:41000"
    custom = _settings(tmp_path, api_public_url="https://agent.example.internal/")
    assert public_url(custom, "http://0.0.0.0:8355") == "https://agent.example.internal"


async def test_the_server_binds_port_0_answers_and_stops(runner: Runner) -> None:
    server = ApiServer(create_app(runner=runner), host="127.0.0.1", port=0, grace=1.0)
    url = await server.start()
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    async with ClientSession() as session, session.get(f"{url}/livez") as response:
        assert response.status == 200
    await server.stop()
    await server.stop()  # idempotent
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) != 0


async def test_a_taken_port_is_an_error_naming_the_address(runner: Runner) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ApiServer(create_app(runner=runner), host="127.0.0.1", port=port, grace=1.0)
        with pytest.raises(OperationError, match=f"cannot listen on 127.0.0.1:{port}"):
            await server.start()


async def test_a_forced_stop_cuts_requests_in_flight_short(runner: Runner) -> None:
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.sleep(3600)
        return web.Response()

    app = create_app(runner=runner)
    app.router.add_get("/slow", slow)
    server = ApiServer(app, host="127.0.0.1", port=0, grace=3600.0)
    url = await server.start()
    async with ClientSession() as session:
        request = asyncio.ensure_future(session.get(f"{url}/slow"))
        await entered.wait()
        force = asyncio.Event()
        stopping = asyncio.ensure_future(server.stop(force=force))
        await asyncio.sleep(0)
        assert not stopping.done()  # the grace period would wait for the request
        force.set()
        await stopping
        with pytest.raises(Exception):  # noqa: B017 - the connection is cut, however aiohttp says it
            await request
