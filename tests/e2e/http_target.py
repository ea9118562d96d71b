"""A real HTTP server on loopback for connector calls from agents in this or another process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class Target:
    """A loopback HTTP server answering ``GET /ping`` with a JSON body of a chosen size."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.body_bytes = 10
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                target.paths.append(self.path)
                body = json.dumps({"pad": "x" * target.body_bytes}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    try:
        yield server
    finally:
        server.close()


def ping_flow(port: int) -> dict[str, Any]:
    """Flow ``ping``: one http call to ``GET /ping`` of the target, its body as ``reply``."""
    return {
        "format": "flow/v1",
        "id": "ping",
        "values": {"reply": {"type": "object", "access": "output"}},
        "start": "call",
        "connectors": {"target": {"type": "http", "base_url": f"http://127.0.0.1:{port}"}},
        "elements": {
            "call": {
                "type": "message",
                "connector": "target",
                "action": "GET /ping",
                "timeout": 5,
                "outputs": {"reply": "body"},
                "next": "done",
            },
            "done": {"type": "end"},
        },
    }
