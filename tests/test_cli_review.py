"""What a new admin's walk through the command line found: each finding, held by a test."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.cli import EXIT_BROKEN_PIPE, main
from agent.connectors.registry import ConnectorRegistry
from agent.errors import StateDirLocked, StoreError
from agent.runtime.catalog import Catalog, read_flow_file
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore
from tests.e2e.helpers import clean_env
from tests.link.linkhelpers import wait_flow
from tests.support.net import free_port
from tests.test_cli import EXAMPLES, run, write

# -- a reader that goes away -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", str(EXAMPLES / "hello.json")],
        ["validate", str(EXAMPLES / "hello.json")],
        ["config", "show"],
    ],
    ids=["exec", "validate", "config-show"],
)
def test_a_closed_pipe_exits_141_without_a_word(tmp_path: Path, argv: list[str]) -> None:
    # The reader closed its end before the command wrote: `flow-agent ... | true`, no race.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=clean_env(HOME=str(tmp_path)),
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == EXIT_BROKEN_PIPE == 141
    assert done.stderr == b""


# -- runs next to the daemon ---------------------------------------------------------------


def _exec_kept(capsys: pytest.CaptureFixture[str], state: Path, *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, "exec", *argv, "--state-dir", str(state), "--json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_runs_lists_a_store_another_process_holds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = _exec_kept(capsys, state, str(EXAMPLES / "hello.json"))
    # The writer (a daemon, say) holds the directory's lock and commits while `runs` reads.
    with SqliteStore.open(state) as writer:
        with pytest.raises(StateDirLocked):
            SqliteStore.open(state)
        flow = read_flow_file(EXAMPLES / "hello.json")
        runner = Runner(
            store=writer, catalog=Catalog(writer, local=[flow]), connectors=ConnectorRegistry()
        )
        later = asyncio.run(runner.start(flow.id, {"name": "again"}))
        code, out, err = run(capsys, "runs", "--state-dir", str(state), "--json")
        assert code == 0, err
        assert [r["run_id"] for r in json.loads(out)] == [later["run_id"], first["run_id"]]
        code, out, _ = run(capsys, "runs", "--state-dir", str(state), "--status", "waiting")
        assert (code, out) == (0, "no runs\n")
        # The lister left the writer's store writable and its own hands off.
        writer.set_meta("still.mine", "yes")
    with SqliteStore.open(state) as store:
        assert store.get_meta("still.mine") == "yes"


def test_a_read_only_store_refuses_writes(tmp_path: Path) -> None:
    SqliteStore.open(tmp_path).close()
    reader = SqliteStore.open_readonly(tmp_path)
    try:
        with pytest.raises(StoreError, match="read-only"):
            reader.set_meta("k", "v")
        assert reader.get_meta("k") is None
    finally:
        reader.close()
        reader.close()  # idempotent, as for a writer's store
    # It never held the lock: a writer opens next to it, and after it.
    SqliteStore.open(tmp_path).close()


# -- a fault path taken is said on stderr ----------------------------------------------------


def test_exec_notes_a_fault_outcome_taken_for_an_unknown_subflow(
    capsys: pytest.CaptureFixture[str],
) -> None:
    invoice = str(EXAMPLES / "invoice-approval.json")
    code, out, err = run(capsys, "exec", invoice, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["status"] == "completed" and result["path"][:2] == ["credit", "rejected"]
    assert err == (
        "flow-agent: note: element 'credit' took its fault outcome: subflow 'credit-check'"
        " failed: flow 'credit-check' is not known to this agent (pass --flows DIR?)\n"
    )
    # The JSON is the run result as before: the fault is said on stderr only.
    assert "fault" not in result and result["error"] is None

    # With the subflow found, no fault and no note.
    code, out, err = run(
        capsys, "exec", invoice, "--flows", str(EXAMPLES / "flows"), "--input", "amount=50"
    )
    assert code == 0 and err == ""


def _caller(port: int, *, fault: bool) -> dict[str, Any]:
    notify: dict[str, Any] = {
        "type": "message",
        "connector": "svc",
        "action": "POST /x",
        "timeout": 5,
        "next": "done",
    }
    if fault:
        notify["fault"] = "done"
    return {
        "format": "flow/v1",
        "id": "caller",
        "connectors": {"svc": {"type": "http", "base_url": f"http://127.0.0.1:{port}"}},
        "start": "notify",
        "elements": {"notify": notify, "done": {"type": "end"}},
    }


def test_exec_notes_other_faults_without_the_flows_hint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there: the call is refused
    code, _, err = run(capsys, "exec", write(tmp_path, _caller(port, fault=True)))
    assert code == 0
    assert err.startswith("flow-agent: note: element 'notify' took its fault outcome: ")
    assert err.count("\n") == 1 and "--flows" not in err

    # No fault outcome: the run failed at the element, which the report already says.
    code, out, err = run(capsys, "exec", write(tmp_path, _caller(port, fault=False)))
    assert code == 1 and "error at 'notify'" in out
    assert "note:" not in err


# -- resume: the hint after a refusal, the printed command ----------------------------------

ASK: dict[str, Any] = {
    "format": "flow/v1",
    "id": "ask",
    "values": {
        "n": {"type": "number", "access": "output"},
        "note": {"type": "string", "access": "output"},
    },
    "start": "page",
    "elements": {
        "page": {
            "type": "page",
            "fields": [
                {"value": "n", "label": "Number", "required": True},
                {"value": "note", "label": "Note"},
            ],
            "outcomes": [{"id": "go", "next": "done"}],
        },
        "done": {"type": "end"},
    },
}


def test_answering_a_finished_run_says_there_is_nothing_to_do(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    waiting = _exec_kept(capsys, state, write(tmp_path, ASK))
    run_id = waiting["run_id"]
    code, _, err = run(
        capsys, "resume", run_id, "--state-dir", str(state), "--outcome", "go", "--field", "n=3"
    )
    assert code == 0, err
    code, _, err = run(capsys, "resume", run_id, "--state-dir", str(state), "--outcome", "go")
    assert code == 1
    assert err.splitlines() == [
        f"flow-agent: cannot resume {run_id}: run {run_id} is completed, not waiting for a person",
        "flow-agent: hint: nothing to do: the run has finished",
    ]

    # A refusal of a run that does wait keeps the old hint, and the run as it was.
    again = _exec_kept(capsys, state, write(tmp_path, ASK))
    code, _, err = run(
        capsys, "resume", again["run_id"], "--state-dir", str(state), "--outcome", "go"
    )
    assert code == 1 and "field 'n' (Number) is required" in err
    assert err.endswith("hint: the run is unchanged and still waiting\n")


def test_answering_a_run_on_a_timer_says_how_to_continue_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    napping = _exec_kept(capsys, state, write(tmp_path, wait_flow(3600)), "--max-wait", "0")
    assert napping["waiting"]["kind"] == "timer"
    code, _, err = run(
        capsys, "resume", napping["run_id"], "--state-dir", str(state), "--outcome", "go"
    )
    assert code == 1 and "(waiting on a timer)" in err
    assert err.endswith("hint: the run is unchanged; resume it without --outcome to continue it\n")


def _resume_line(out: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith("  resume: ")]
    return line.removeprefix("  resume: ")


def test_the_printed_resume_command_names_the_required_fields(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = tmp_path / "my state"  # a space: the printed command quotes it
    code, out, err = run(capsys, "exec", write(tmp_path, ASK), "--state-dir", str(state))
    assert code == 0, err
    command = _resume_line(out)
    assert " --field n=NUMBER " in command and "note=" not in command
    assert "  (put the values in place of the capitals; optional: --field note=STRING)" in out
    # Run as printed, with the placeholder filled in, it answers the page.
    argv = shlex.split(command.replace("n=NUMBER", "n=7"))
    assert argv[:2] == ["flow-agent", "resume"]
    code, out, err = run(capsys, *argv[1:], "--json")
    assert code == 0, err
    assert json.loads(out)["outputs"]["n"] == 7


def test_a_required_field_that_has_a_value_needs_no_placeholder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = json.loads(json.dumps(ASK))
    doc["values"]["n"]["default"] = 5
    code, out, _ = run(capsys, "exec", write(tmp_path, doc), "--state-dir", str(tmp_path / "s"))
    assert code == 0
    assert "--field" not in _resume_line(out)
    # It has a value already: giving it again is optional.
    assert "  (optional: --field n=NUMBER --field note=STRING)" in out


# -- small things ---------------------------------------------------------------------------


def test_a_state_dir_that_is_a_file_is_called_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv in (
        ["exec", str(EXAMPLES / "hello.json")],
        ["resume", "r_x"],
        ["runs"],
    ):
        code, out, err = run(capsys, *argv, "--state-dir", str(afile))
        assert (code, out) == (2, ""), argv
        assert f"--state-dir {afile} is a file, not a directory" in err
    assert afile.read_text() == ""


@pytest.mark.parametrize("given", ["-1", "nan", "soon"])
def test_max_wait_takes_no_negative_or_odd_seconds(
    capsys: pytest.CaptureFixture[str], given: str
) -> None:
    code, out, err = run(capsys, "exec", str(EXAMPLES / "hello.json"), "--max-wait", given)
    assert (code, out) == (2, "")
    assert "argument --max-wait:" in err and given in err


def test_max_wait_zero_is_fine(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "exec", str(EXAMPLES / "hello.json"), "--max-wait", "0")
    assert code == 0, err


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("run", "1 when it cannot start"),
        ("resume", "the state directory that keeps the run"),
        ("runs", "the state directory to list"),
    ],
)
def test_help_says_it(capsys: pytest.CaptureFixture[str], command: str, expected: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert expected in " ".join(capsys.readouterr().out.split())
