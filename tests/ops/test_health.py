"""``flow-agent health`` against real local HTTP servers: one line, exit 0 or 1."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.cli import main
from agent.cli_ops import probe_address
from agent.errors import OperationError


def _server(status: int, body: dict[str, str]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = json.dumps(body).encode() if self.path == "/livez" else b"{}"
            self.send_response(status if self.path == "/livez" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def serving() -> Iterator[list[ThreadingHTTPServer]]:
    servers: list[ThreadingHTTPServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def _start(serving: list[ThreadingHTTPServer], status: int, body: dict[str, str]) -> int:
    server = _server(status, body)
    serving.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])


def _health(tmp_path: Path, port: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    config = tmp_path / "agent.toml"
    config.write_text(f'api_listen = "0.0.0.0:{port}"\n')  # a wildcard is probed on loopback
    code = main(["health", "--config", str(config), "--state-dir", str(tmp_path / "s")])
    return code, capsys.readouterr().out


def test_an_answering_livez_is_healthy(
    tmp_path: Path, serving: list[ThreadingHTTPServer], capsys: pytest.CaptureFixture[str]
) -> None:
    port = _start(serving, 200, {"status": "ok"})
    code, out = _health(tmp_path, port, capsys)
    assert code == 0 and out == f"healthy: the agent's API answers on 127.0.0.1:{port}\n"


def test_a_failing_or_absent_api_is_unhealthy(
    tmp_path: Path, serving: list[ThreadingHTTPServer], capsys: pytest.CaptureFixture[str]
) -> None:
    port = _start(serving, 500, {"status": "broken"})
    code, out = _health(tmp_path, port, capsys)
    assert code == 1 and out.startswith("unhealthy: ") and "500" in out
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])
    code, out = _health(tmp_path, closed, capsys)
    assert code == 1 and "no answer from the agent's API" in out
    assert len(out.splitlines()) == 1


def test_where_a_probe_knocks() -> None:
    assert probe_address("0.0.0.0:8355") == ("127.0.0.1", 8355)
    assert probe_address("[::]:8355") == ("::1", 8355)
    assert probe_address("10.0.0.5:9000") == ("10.0.0.5", 9000)
    assert probe_address("127.0.0.1:0", bound="http://127.0.0.1:41234") == ("127.0.0.1", 41234)
    with pytest.raises(OperationError) as unknown:
        probe_address("127.0.0.1:0", bound=None)
    assert "no running agent recorded its port" in unknown.value.message
