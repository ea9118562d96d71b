"""``validate``, ``exec``, ``resume`` and ``runs``: flows without a control plane."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.connectors.registry import ConnectorRegistry, default_registry
from agent.errors import OperationError, UsageError
from agent.flow.commands import Answer
from agent.flow.engine import AnswerRefused, InputInvalid
from agent.flow.model import Flow
from agent.flow.state import RunState
from agent.flow.values import is_empty
from agent.identity import IDENTITY_FILE, load_identity
from agent.runtime.catalog import Catalog, FlowFileInvalid, read_flow_dir, read_flow_file
from agent.runtime.runner import Runner
from agent.secrets import SecretStore, SecretsView
from agent.settings import Settings, load_settings
from agent.store.base import RunRecord
from agent.store.sqlite import SqliteStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} takes NAME=VALUE, got {item.split('=')[0]!r}")
        out[name] = value
    return out


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if args.inputs:
        try:
            parsed = json.loads(args.inputs)
        except ValueError as exc:
            raise UsageError(f"--inputs is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise UsageError("--inputs must be a JSON object of input names to values")
        inputs.update(parsed)
    inputs.update(_pairs(args.input, "--input"))
    return inputs


def _print_invalid(exc: FlowFileInvalid) -> None:
    for line in str(exc).splitlines():
        print(line, file=sys.stderr)


def validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for name in args.files:
        try:
            read_flow_file(Path(name))
        except FlowFileInvalid as exc:
            for where, what in exc.issues:
                print(f"{name}: {where}: {what}")
            status = max(status, EXIT_FAILED)
            continue
        print(f"{name}: ok")
    return status


def _existing_dir(given: str) -> Path:
    """``--state-dir`` as a path; a file there is a mistake worth its own words."""
    path = Path(given)
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"--state-dir {given} is a file, not a directory",
            hint="point --state-dir at a directory (one that does not exist yet is created)",
        )
    return path


@contextmanager
def _state_dir(given: str | None) -> Iterator[Path]:
    if given:
        yield _existing_dir(given)
        return
    temporary = Path(tempfile.mkdtemp(prefix="flow-agent-"))
    try:
        yield temporary / "state"
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _refuse_paired(state_dir: Path, *, doing: str) -> None:
    """Keep ``exec`` and ``resume`` out of a paired agent's state directory.

    Its store holds the flows its control plane publishes (signed) and runs
    that the daemon reports step by step: a local flow file recorded there
    would become the version the daemon runs, and a run moved on here would
    never be reported.
    """
    if not (state_dir / IDENTITY_FILE).exists():
        return
    try:
        identity = load_identity(state_dir)
    except OperationError:
        identity = None  # damaged, but a paired agent's all the same
    whose = "" if identity is None else f" (agent {identity.agent_id} in tenant {identity.tenant})"
    raise UsageError(
        f"{state_dir} is the state directory of a paired agent{whose}: {doing}",
        hint="use another --state-dir for local flows (or none: a temporary one); a paired"
        " agent's runs go on in its daemon (flow-agent run), its pages through its local API",
    )


def _connector_settings(args: argparse.Namespace) -> Settings:
    """The connector settings: flag > FLOW_AGENT_* > the config file > default, as for ``run``."""
    flags = {
        "http_allow_networks": args.http_allow_network or None,
        "http_deny_networks": args.http_deny_network or None,
        "http_max_response_bytes": args.http_max_response_bytes,
    }
    return load_settings(flags, config=Path(args.config) if args.config else None)


@asynccontextmanager
async def _runner(
    state_dir: Path, args: argparse.Namespace, local: list[Flow]
) -> AsyncIterator[Runner]:
    overrides = _pairs(args.secret, "--secret")
    # A bad setting is refused before any state is made.
    options = _connector_settings(args).connector_options()
    store = SqliteStore.open(state_dir, synchronous=args.sync)
    key_file = getattr(args, "secrets_key_file", None)
    try:
        vault = SecretStore.for_store(store, key_file=Path(key_file) if key_file else None)
    except BaseException:
        store.close()
        raise
    # --secret overrides the encrypted store for this command only.
    secrets = SecretsView(vault, overrides)
    registry = default_registry(secrets=secrets, state_dir=state_dir, **options)
    try:
        catalog = Catalog(store, local=local)
        yield Runner(
            store=store,
            catalog=catalog,
            connectors=registry,
            secrets=secrets,
            inline_wait=args.max_wait,
        )
    finally:
        await registry.close_all()
        vault.close()
        store.close()


def _local_flows(args: argparse.Namespace) -> list[Flow]:
    return list(read_flow_dir(Path(args.flows)).values()) if args.flows else []


def exec_(args: argparse.Namespace) -> int:
    try:
        flow = read_flow_file(Path(args.file))
        local = _local_flows(args)
    except FlowFileInvalid as exc:
        _print_invalid(exc)
        return EXIT_USAGE
    inputs = _inputs(args)
    if args.state_dir:
        _refuse_paired(
            _existing_dir(args.state_dir),
            doing=f"exec would store {args.file} (flow '{flow.id}') in its store, where its"
            " daemon would run it in place of the version its control plane publishes",
        )

    async def go(state_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
        async with _runner(state_dir, args, [*local, flow]) as runner:
            result = await runner.start(flow.id, inputs)
            return result, _fault_of(runner, result["run_id"])

    with _state_dir(args.state_dir) as state_dir:
        try:
            result, fault = asyncio.run(go(state_dir))
        except InputInvalid as exc:
            for problem in exc.problems:
                print(f"flow-agent: {args.file}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    _report(result, args, kept=bool(args.state_dir))
    _note_fault(result, fault, args)
    return EXIT_FAILED if result["status"] in ("failed", "cancelled") else EXIT_OK


def resume(args: argparse.Namespace) -> int:
    state_dir = _existing_dir(args.state_dir)
    if not (state_dir / "state.db").exists():
        raise UsageError(f"{state_dir} holds no flow-agent state (no state.db)")
    _refuse_paired(
        state_dir,
        doing=f"resume would move run {args.run_id} on outside its daemon, unreported to the"
        " control plane" + (", and store the --flows files in its store" if args.flows else ""),
    )
    try:
        local = _local_flows(args)
    except FlowFileInvalid as exc:
        _print_invalid(exc)
        return EXIT_USAGE
    fields = _pairs(args.field, "--field")
    if (fields or args.state_token) and not args.outcome:
        raise UsageError("--field and --state-token go with --outcome")
    answer = (
        Answer(outcome=args.outcome, fields=fields, state_token=args.state_token)
        if args.outcome
        else None
    )

    async def go() -> tuple[dict[str, Any], dict[str, Any] | None]:
        async with _runner(state_dir, args, local) as runner:
            try:
                result = await runner.resume(args.run_id, answer=answer)
            except AnswerRefused as exc:
                hint = _refusal_hint(exc, runner.store.get_run(args.run_id))
                raise OperationError(f"cannot resume {args.run_id}: {exc}", hint=hint) from None
            return result, _fault_of(runner, result["run_id"])

    result, fault = asyncio.run(go())
    _report(result, args, kept=True)
    _note_fault(result, fault, args)
    return EXIT_FAILED if result["status"] in ("failed", "cancelled") else EXIT_OK


def _refusal_hint(exc: AnswerRefused, record: RunRecord | None) -> str:
    """What a refused answer leaves behind, for the run as it now stands."""
    if record is not None and record.status in ("completed", "failed", "cancelled"):
        return "nothing to do: the run has finished"
    if exc.code == "not_waiting":
        # Interrupted, or waiting on a timer: no page to answer.
        return "the run is unchanged; resume it without --outcome to continue it"
    return "the run is unchanged and still waiting"


def runs(args: argparse.Namespace) -> int:
    state_dir = _existing_dir(args.state_dir)
    if not (state_dir / "state.db").exists():
        raise UsageError(f"{state_dir} holds no flow-agent state (no state.db)")
    # Read-only and without the directory's lock: a running daemon's runs can be listed.
    store = SqliteStore.open_readonly(state_dir)
    try:
        runner = Runner(store=store, catalog=Catalog(store), connectors=ConnectorRegistry())

        async def go() -> list[tuple[float, dict[str, Any]]]:
            records = store.list_runs(status=args.status, top_level=True, limit=10_000)
            return [(r.updated_at, await runner.result_of(r.run_id)) for r in records]

        listed = asyncio.run(go())
    finally:
        store.close()
    if args.json:
        print(json.dumps([result for _, result in listed], indent=2))
        return EXIT_OK
    if not listed:
        print("no runs")
        return EXIT_OK
    print(f"{'RUN':<30} {'FLOW':<24} {'VER':>4} {'STATUS':<10} UPDATED")
    for updated, r in listed:
        when = datetime.fromtimestamp(updated, UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{r['run_id']:<30} {r['flow']:<24} {r['version']:>4} {r['status']:<10} {when}")
    return EXIT_OK


def _fault_of(runner: Runner, run_id: str) -> dict[str, Any] | None:
    """The run's built-in ``fault`` value: set when an element took its fault outcome."""
    record = runner.store.get_run(run_id)
    if record is None:
        return None
    fault = RunState.peek(record.state).get("values", {}).get("fault")
    return fault if isinstance(fault, dict) else None


def _note_fault(
    result: dict[str, Any], fault: dict[str, Any] | None, args: argparse.Namespace
) -> None:
    """One line on stderr for a fault path taken: the run can complete all the same."""
    if fault is None:
        return
    error = result.get("error") or {}
    if error.get("element") == fault.get("element"):
        return  # no fault outcome: the run failed there, and the report says so
    message = str(fault.get("message"))
    hint = ""
    if "is not known to this agent" in message:
        hint = (
            " (is it in --flows DIR?)" if getattr(args, "flows", None) else " (pass --flows DIR?)"
        )
    print(
        f"flow-agent: note: element '{fault.get('element')}' took its fault outcome: {message}"
        + hint,
        file=sys.stderr,
    )


def _report(result: dict[str, Any], args: argparse.Namespace, *, kept: bool) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"run {result['run_id']} (flow {result['flow']} v{result['version']}): {result['status']}"
    )
    print("path: " + " -> ".join(result["path"]))
    if result["outputs"]:
        print("outputs:")
        for name, value in result["outputs"].items():
            print(f"  {name} = {json.dumps(value)}")
    if result["error"]:
        print(f"error at '{result['error']['element']}': {result['error']['message']}")
    waiting = result["waiting"]
    if waiting:
        _report_waiting(result["run_id"], waiting, args, kept=kept)


def _report_waiting(
    run_id: str, waiting: dict[str, Any], args: argparse.Namespace, *, kept: bool
) -> None:
    while waiting.get("kind") == "subflow" and waiting.get("child_run", {}).get("waiting"):
        print(f"waiting on subflow run {waiting['child_run']['run_id']}")
        waiting = waiting["child_run"]["waiting"]
    kind = waiting["kind"]
    if kind == "timer":
        print(f"waiting at '{waiting['element']}' on a timer until {waiting['until']}")
    elif kind == "input":
        title = f": {waiting['title']}" if waiting.get("title") else ""
        print(f"waiting for a person at '{waiting['element']}'{title}")
        if waiting.get("content"):
            print(f"  {waiting['content']}")
        for f in waiting["fields"]:
            need = "required" if f["required"] else "optional"
            print(f"  field {f['value']} ({f['label']}, {f['type']}, {need})")
        print("  outcomes: " + ", ".join(f"{o['id']} ({o['label']})" for o in waiting["outcomes"]))
    else:
        print(f"waiting at '{waiting['element']}' ({kind})")
    if not kept:
        print("note: the state was temporary; pass --state-dir to keep a run you want to resume")
    elif kind == "input" and waiting["outcomes"]:
        state_dir = shlex.quote(str(getattr(args, "state_dir", None)))
        # A required field still empty must come with the answer: a placeholder to fill in.
        needed: list[str] = []
        optional: list[str] = []
        for f in waiting["fields"]:
            flag = f"--field {f['value']}={_placeholder(f['type'])}"
            (needed if f["required"] and is_empty(f.get("current")) else optional).append(flag)
        fields = "".join(f" {flag}" for flag in needed)
        print(
            f"  resume: flow-agent resume {run_id} --state-dir {state_dir} "
            f"--outcome {waiting['outcomes'][0]['id']}{fields} "
            f"--state-token {waiting['state_token']}"
        )
        notes = ["put the values in place of the capitals"] if needed else []
        if optional:
            notes.append("optional: " + " ".join(optional))
        if notes:
            print(f"  ({'; '.join(notes)})")


def _placeholder(value_type: str) -> str:
    """What stands for a field's value in a printed command: its type, in capitals."""
    return "".join(c if c.isalnum() else "_" for c in value_type).upper() or "VALUE"
