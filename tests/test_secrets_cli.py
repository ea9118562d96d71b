"""``flow-agent secret`` and secrets in ``exec``, through real processes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import select
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web

from agent.cli import main
from agent.secrets import SecretStore
from agent.store.sqlite import SqliteStore

CLI = [sys.executable, "-m", "agent.cli"]


class Done:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(*args: str, stdin: str | None = None) -> Done:
    """``flow-agent ARGS`` in this process (the terminal case runs a real one)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(sys, "stdin", io.StringIO(stdin or "")),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = main(list(args))
    return Done(code, out.getvalue(), err.getvalue())


def stored(state: Path, name: str) -> str | None:
    store = SqliteStore.open(state)
    try:
        with SecretStore.for_store(store) as secrets:
            return secrets.get(name)
    finally:
        store.close()


def test_set_list_rm(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    done = cli("secret", "set", "erp-token", "--state-dir", state, stdin="v4lue-1\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stored secret erp-token\n"
    assert "v4lue-1" not in done.stdout + done.stderr
    assert stored(tmp_path / "state", "erp-token") == "v4lue-1"  # one newline removed
    assert cli("secret", "set", "db", "--state-dir", state, stdin="a\nb").returncode == 0
    assert stored(tmp_path / "state", "db") == "a\nb"
    listed = cli("secret", "list", "--state-dir", state)
    assert listed.stdout == "db\nerp-token\n"
    as_json = json.loads(cli("secret", "list", "--json", "--state-dir", state).stdout)
    assert [item["name"] for item in as_json] == ["db", "erp-token"]
    assert set(as_json[0]) == {"name", "created_at", "updated_at"}
    removed = cli("secret", "rm", "db", "--state-dir", state)
    assert removed.returncode == 0 and removed.stdout == "removed secret db\n"
    again = cli("secret", "rm", "db", "--state-dir", state)
    assert again.returncode == 1
    assert "no secret db" in again.stderr


def test_a_value_is_never_taken_from_argv_and_empty_input_is_refused(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    on_argv = cli("secret", "set", "erp", "hunter2", "--state-dir", state, stdin="")
    assert on_argv.returncode == 2
    assert "unrecognized arguments" in on_argv.stderr
    empty = cli("secret", "set", "erp", "--state-dir", state, stdin="")
    assert empty.returncode == 2
    assert "no value on standard input" in empty.stderr
    bad_name = cli("secret", "set", "../x", "--state-dir", state, stdin="v")
    assert bad_name.returncode == 2
    assert "not a valid secret name" in bad_name.stderr
    assert cli("secret", "list", "--state-dir", str(tmp_path / "none")).returncode == 2


def test_a_supplied_key_file(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    done = cli("secret", "set", "x", "--state-dir", state, "--key-file", str(key), stdin="v")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "state" / "secrets.key").exists()
    listed = cli("secret", "list", "--state-dir", state, "--key-file", str(key))
    assert listed.stdout == "x\n"


def test_on_a_terminal_the_value_is_asked_for_without_echo(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    pid, fd = pty.fork()
    if pid == 0:  # the child: a real flow-agent on the terminal
        os.execv(sys.executable, [*CLI, "secret", "set", "erp", "--state-dir", state])
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        while marker not in seen:
            ready, _, _ = select.select([fd], [], [], 30)
            assert ready, f"no {marker!r} from the terminal; saw {seen!r}"
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk

    read_until(b"value of secret erp: ")
    os.write(fd, b"tty-s3cret\n")
    read_until(b"(again): ")
    os.write(fd, b"tty-s3cret\n")
    read_until(b"stored secret erp")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"tty-s3cret" not in seen  # typed, but never echoed
    assert stored(tmp_path / "state", "erp") == "tty-s3cret"


def _flow() -> dict[str, Any]:
    return {
        "format": "flow/v1",
        "id": "uses-secret",
        "values": {
            "token": {"type": "secret", "secret": "erp-token"},
            "seen": {"type": "string", "access": "output"},
        },
        "connectors": {
            "erp": {
                "type": "http",
                "base_url": "http://127.0.0.1:1",
                "headers": {"Authorization": "Bearer {{ token }}"},
            }
        },
        "start": "call",
        "elements": {
            "call": {
                "type": "message",
                "connector": "erp",
                "action": "GET /whoami",
                "outputs": {"seen": "body.fingerprint"},
                "next": "done",
            },
            "done": {"type": "end"},
        },
    }


@pytest.fixture
async def whoami() -> AsyncIterator[tuple[str, list[str]]]:
    """A server that records the Authorization headers it gets."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"fingerprint": f"len {len(seen[-1])}"})

    app = web.Application()
    app.router.add_get("/whoami", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_exec_reads_the_store_and_secret_overrides_it(
    tmp_path: Path, whoami: tuple[str, list[str]]
) -> None:
    url, seen = whoami
    doc = _flow()
    doc["connectors"]["erp"]["base_url"] = url
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps(doc))
    state = str(tmp_path / "state")

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    assert (
        cli("secret", "set", "erp-token", "--state-dir", state, stdin="from-store").returncode == 0
    )
    code, out, err = await run("exec", str(flow), "--state-dir", state, "--json")
    assert code == 0, err
    assert seen[-1] == "Bearer from-store"
    code, out, err = await run(
        "exec", str(flow), "--state-dir", state, "--secret", "erp-token=override", "--json"
    )
    assert code == 0, err
    assert seen[-1] == "Bearer override"
    # The override was for that command only.
    assert stored(tmp_path / "state", "erp-token") == "from-store"
    assert "from-store" not in out + err and "override" not in out + err
