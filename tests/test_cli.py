"""The flow-agent command line, in process (the e2e tests use real processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, doc: Any, name: str = "f.json") -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("command", ["validate", "exec", "resume", "runs"])
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: flow-agent" in capsys.readouterr().out


def test_validate_prints_ok_or_path_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = str(EXAMPLES / "hello.json")
    bad = write(
        tmp_path,
        {
            "format": "flow/v1",
            "id": "x",
            "start": "a",
            "elements": {
                "a": {"type": "operator", "operations": [{"set": "nope", "to": 1}], "next": "dne"}
            },
        },
    )
    code, out, _err = run(capsys, "validate", good, bad)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{good}: ok"
    assert f"{bad}: elements.a.next: unknown element 'dne'" in lines
    assert f"{bad}: elements.a.operations[0].set: unknown value 'nope'" in lines


def test_validate_not_json_and_unreadable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "validate", write(tmp_path, "{nope"))
    assert code == 1 and ": (document): not JSON" in out
    code, _, err = run(capsys, "validate", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read the file" in err


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_every_example_runs(capsys: pytest.CaptureFixture[str], example: str) -> None:
    code, out, err = run(
        capsys, "exec", str(EXAMPLES / example), "--flows", str(EXAMPLES / "flows"), "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] in ("completed", "waiting")
    assert result["error"] is None


def test_exec_json_result_and_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "exec",
        str(EXAMPLES / "hello.json"),
        "--inputs",
        '{"amount": 1000, "name": "x"}',
        "--input",
        "name=Ann",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert result["outputs"]["total"] == 1200
    assert result["outputs"]["band"] == "large"
    assert result["outputs"]["greeting"].startswith("Hello, Ann!")
    assert result["path"] == ["price", "size", "large", "done"]


def test_exec_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    failing = write(
        tmp_path,
        {
            "format": "flow/v1",
            "id": "f",
            "start": "e",
            "elements": {"e": {"type": "end", "status": "failed", "message": "no"}},
        },
    )
    code, out, _ = run(capsys, "exec", failing)
    assert code == 1 and "failed" in out and "error at 'e': no" in out

    code, _, err = run(capsys, "exec", str(EXAMPLES / "hello.json"), "--input", "amount=lots")
    assert code == 2 and "input 'amount': 'lots' is not a number" in err

    code, _, err = run(capsys, "exec", str(EXAMPLES / "hello.json"), "--input", "total=1")
    assert code == 2 and "input 'total': not an input value" in err

    code, _, err = run(capsys, "exec", write(tmp_path, {"format": "flow/v1"}, "bad.json"))
    assert code == 2 and "missing required field 'id'" in err

    code, _, err = run(capsys, "exec", str(EXAMPLES / "hello.json"), "--input", "novalue")
    assert code == 2 and "NAME=VALUE" in err

    code, _, err = run(capsys, "exec")
    assert code == 2 and "Traceback" not in err


def test_resume_and_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    code, out, _ = run(
        capsys,
        "exec",
        str(EXAMPLES / "invoice-approval.json"),
        "--flows",
        str(EXAMPLES / "flows"),
        "--input",
        "amount=700",
        "--state-dir",
        state,
        "--json",
    )
    assert code == 0
    waiting = json.loads(out)
    run_id = waiting["run_id"]
    assert waiting["waiting"]["kind"] == "input"

    code, _, err = run(
        capsys,
        "resume",
        run_id,
        "--state-dir",
        state,
        "--outcome",
        "approve",
        "--field",
        "missing=1",
    )
    assert code == 1 and "'missing' is not a field" in err and "unchanged" in err

    code, out, _ = run(capsys, "runs", "--state-dir", state, "--status", "waiting", "--json")
    assert [r["run_id"] for r in json.loads(out)] == [run_id]

    code, out, _ = run(
        capsys,
        "resume",
        run_id,
        "--state-dir",
        state,
        "--outcome",
        "approve",
        "--field",
        "note=ok",
        "--state-token",
        waiting["waiting"]["state_token"],
        "--json",
    )
    assert code == 0
    assert json.loads(out)["outputs"]["approved"] is True

    code, out, _ = run(capsys, "runs", "--state-dir", state)
    assert code == 0 and run_id in out and "completed" in out

    code, _, err = run(capsys, "resume", "r_unknown", "--state-dir", state)
    assert code == 1 and "no run 'r_unknown'" in err

    code, _, err = run(capsys, "runs", "--state-dir", str(tmp_path / "empty"))
    assert code == 2 and "no flow-agent state" in err


def test_secrets_are_never_printed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = {
        "format": "flow/v1",
        "id": "s",
        "start": "call",
        "values": {"token": {"type": "secret", "secret": "api-token"}},
        "connectors": {
            "api": {
                "type": "http",
                "base_url": "http://127.0.0.1:9",
                "headers": {"Authorization": "Bearer {{ token }}"},
            }
        },
        "elements": {
            "call": {
                "type": "message",
                "connector": "api",
                "action": "GET /x",
                "timeout": 2,
                "next": "done",
            },
            "done": {"type": "end"},
        },
    }
    code, out, err = run(
        capsys, "-v", "exec", write(tmp_path, doc), "--secret", "api-token=CANARY-s3cr3t", "--json"
    )
    assert code == 1
    assert "CANARY-s3cr3t" not in out + err
    assert json.loads(out)["error"]["element"] == "call"
