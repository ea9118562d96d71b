"""The flow-controlplane CLI through real processes against a real server process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cphelpers import HELLO_FLOW, LinkClient

from agent.errors import UsageError
from agent.protocol.frames import Ack, Event, Events, RunAck, StartRun
from agent.protocol.signing import generate_private_key, parse_token, public_key_b64
from controlplane.cli import main, parse_duration

CLI = [sys.executable, "-m", "controlplane.cli"]
STARTUP = 30.0


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOW_CP_")}


@dataclass
class Done:
    code: int
    out: str
    err: str


async def cli(*args: str, env: dict[str, str] | None = None) -> Done:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env or clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


@dataclass
class ServerProcess:
    proc: asyncio.subprocess.Process
    url: str
    data: Path

    def flags(self) -> list[str]:
        return ["--url", self.url, "--data", str(self.data)]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    data = tmp_path / "cp"
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--data",
        str(data),
        "--port",
        "0",
        "--region",
        "eu-1",
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), STARTUP)).decode()
    assert line.startswith("flow-controlplane listening on http://127.0.0.1:"), line
    url = line.rsplit(" ", 1)[1].strip()
    try:
        yield ServerProcess(proc=proc, url=url, data=data)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


def no_traceback(done: Done) -> None:
    assert "Traceback" not in done.err and "Traceback" not in done.out


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["tenant", "create"],
        ["token", "create"],
        ["publish"],
        ["activate"],
        ["run"],
        ["agents"],
        ["runs"],
        ["revoke"],
        [],
    ],
)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # In-process: argparse's --help is the same code either way, and processes are slow here.
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: flow-controlplane" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "first_line"),
    [
        (
            ["--data", "cp-data", "tenant", "create", "acme"],
            "flow-controlplane: argument COMMAND: invalid choice: 'cp-data'",
        ),
        (
            ["activate", "hello", "x"],
            "flow-controlplane: activate: argument VERSION: invalid int value: 'x'",
        ),
        (
            ["token", "create"],
            "flow-controlplane: token create: the following arguments are required: --tenant",
        ),
    ],
)
def test_usage_errors_name_the_program_once(
    argv: list[str], first_line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process: the error path is argparse's either way.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith(first_line), err
    assert err.count("flow-controlplane:") == 1, err


async def test_usage_errors_exit_2() -> None:
    done = await cli("token", "create")
    assert done.code == 2
    assert "--tenant" in done.err
    no_traceback(done)
    done = await cli("agents", "--tenant", "acme", "--url", "http://127.0.0.1:9")
    assert done.code == 2
    assert "no admin key" in done.err
    done = await cli(
        "agents", "--tenant", "acme", "--url", "http://127.0.0.1:9", "--admin-key", "k"
    )
    assert done.code == 1
    assert "cannot reach the control plane" in done.err
    no_traceback(done)


async def test_admin_commands_against_a_served_control_plane(
    served: ServerProcess, tmp_path: Path
) -> None:
    flags = served.flags()
    assert (await cli("tenant", "create", "acme", *flags)).out.strip() == "created tenant acme"
    token = await cli("token", "create", "--tenant", "acme", "--ttl", "10m", *flags)
    assert token.code == 0
    assert len(token.out.splitlines()) == 1
    parsed = parse_token(token.out)
    assert (parsed.url, parsed.region) == (served.url, "eu-1")

    flow_file = tmp_path / "hello.json"
    flow_file.write_text(json.dumps(HELLO_FLOW))
    assert (await cli("publish", str(flow_file), "--tenant", "acme", *flags)).out == "hello 1\n"
    assert (await cli("publish", str(flow_file), "--tenant", "acme", *flags)).out == "hello 2\n"
    assert (await cli("activate", "hello", "1", "--tenant", "acme", *flags)).out == "hello 1\n"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**HELLO_FLOW, "start": "nowhere"}))
    done = await cli("publish", str(bad), "--tenant", "acme", *flags)
    assert done.code == 1
    assert f"{bad}: start: " in done.err
    done = await cli("publish", str(tmp_path / "missing.json"), "--tenant", "acme", *flags)
    assert done.code == 2
    assert "cannot read" in done.err

    done = await cli("agents", "--tenant", "acme", "--url", served.url, "--admin-key", "wrong")
    assert done.code == 1
    assert "admin key was refused" in done.err
    no_traceback(done)
    env = {
        **clean_env(),
        "FLOW_CP_URL": served.url,
        "FLOW_CP_ADMIN_KEY": (served.data / "admin.key").read_text().strip(),
    }
    done = await cli("agents", "--tenant", "acme", "--json", env=env)
    assert (done.code, json.loads(done.out)) == (0, [])

    # Pair a test agent with the token the CLI printed, and bring it online.
    key = generate_private_key()
    async with aiohttp.ClientSession() as http:
        body = {
            "token_secret": parsed.secret,
            "public_key": public_key_b64(key),
            "name": "host-1",
            "facts": {},
        }
        async with http.post(parsed.url + "/agent/v1/pair", json=body) as resp:
            agent_id = (await resp.json())["agent_id"]
    client = await LinkClient.connect(served.url, agent_id, key)
    await client.ready()

    async def agent_side() -> None:
        start = await client.recv_type(StartRun)
        await client.send(RunAck(run_id=start.run_id, accepted=True))
        data: dict[str, Any] = {
            "run_id": start.run_id,
            "flow": "hello",
            "version": 1,
            "status": "completed",
            "outputs": {"n": 1},
            "path": ["done"],
            "waiting": None,
            "error": None,
        }
        await client.send(
            Events(
                events=(
                    Event(
                        seq=1,
                        kind="run.completed",
                        run_id=start.run_id,
                        at="2026-01-01T00:00:00Z",
                        data=data,
                    ),
                )
            )
        )
        await client.recv_type(Ack)

    agent_task = asyncio.create_task(agent_side())
    done = await cli(
        "run", "hello", "--tenant", "acme", "--input", "x=1", "--wait", "30", "--json", *flags
    )
    await agent_task
    assert done.code == 0, done.err
    assert json.loads(done.out)["status"] == "completed"
    assert json.loads(done.out)["outputs"] == {"n": 1}

    listed = await cli("agents", "--tenant", "acme", *flags)
    assert agent_id in listed.out and "online" in listed.out
    runs = await cli("runs", "--tenant", "acme", "--json", *flags)
    assert [r["status"] for r in json.loads(runs.out)] == ["completed"]

    revoked = await cli("revoke", agent_id, "--tenant", "acme", *flags)
    assert revoked.out.strip() == f"{agent_id} revoked"
    assert await client.close_code() == 4403

    served.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.proc.wait(), 30) == 0


async def test_a_reader_that_closes_at_once_gets_no_error(served: ServerProcess) -> None:
    flags = served.flags()
    assert (await cli("tenant", "create", "acme", *flags)).code == 0
    for command in (["runs"], ["runs", "--json"], ["agents"]):
        # The read end is closed before the command starts: its first write must fail.
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = await asyncio.create_subprocess_exec(
                *CLI,
                *command,
                "--tenant",
                "acme",
                *flags,
                env=clean_env(),
                stdout=write_end,
                stderr=asyncio.subprocess.PIPE,
            )
        finally:
            os.close(write_end)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert (proc.returncode, err.decode()) == (128 + signal.SIGPIPE, ""), command


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "45s", "10m", "2h", "1d", "1h30m")] == [
        90,
        45,
        600,
        7200,
        86400,
        5400,
    ]
    for bad in ("", "10x", "-5m", "0", "m"):
        with pytest.raises(UsageError):
            parse_duration(bad)
