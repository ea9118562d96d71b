"""The ``flow-controlplane`` command line (spec/cli.md).

``serve`` runs the control plane; every other command is a thin client of the
admin API.  Exit codes: 0 success, 1 the operation failed, 2 usage error, 141
stdout closed by its reader.  Errors go to stderr as lines a person can act on,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import re
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.errors import AgentError, OperationError, UsageError
from controlplane.client import AdminClient, ApiError, path_part
from controlplane.settings import Settings

Handler = Callable[[argparse.Namespace], int]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
PROG = "flow-controlplane"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # main() puts PROG in front of every error: name only the subcommand here.
        command = self.prog.removeprefix(PROG).strip()
        text = f"{command}: {message}" if command else message
        raise UsageError(text, hint=f"see '{self.prog} --help'")


def parse_duration(text: str) -> float:
    """``90``, ``10m``, ``2h``, ``1d``, ``1h30m`` -> seconds."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise UsageError(f"{text!r} is not a duration", hint="use e.g. 90s, 10m, 2h or 1d")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UsageError("a duration must be longer than zero")
    return seconds


def _pairs(items: Sequence[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} {item!r} must look like NAME=VALUE")
        out[name] = value
    return out


def _client(args: argparse.Namespace) -> AdminClient:
    return AdminClient.from_flags(url=args.url, admin_key=args.admin_key, data=args.data)


def _tenant(args: argparse.Namespace) -> str:
    return "/admin/v1/tenants/" + path_part(args.tenant)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


# -- serve --------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.public_url and not re.match(r"https?://[^/]+", args.public_url):
        raise UsageError(f"--public-url {args.public_url!r} is not an http(s) URL")
    tls: ssl.SSLContext | None = None
    if args.tls_cert:
        from controlplane.app import tls_context

        try:
            tls = tls_context(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the TLS certificate or key: {exc}") from None
    settings = Settings(
        data_dir=Path(args.data),
        region=args.region,
        public_url=args.public_url.rstrip("/") if args.public_url else None,
        secure_cookies=tls is not None,
    )
    return asyncio.run(_serve(settings, host=args.host, port=args.port, tls=tls))


async def _serve(settings: Settings, *, host: str, port: int, tls: ssl.SSLContext | None) -> int:
    from controlplane.app import start_server
    from controlplane.service import ControlPlane

    cp = ControlPlane(settings)
    for note in cp.notes:
        print(note, file=sys.stderr)
    try:
        server = await start_server(cp, host=host, port=port, tls=tls)
    except OSError as exc:
        raise OperationError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another process may hold the port; choose one with --port",
        ) from None
    print(f"{PROG} listening on {server.url}", flush=True)
    if cp.public_url != server.url:
        print(f"public URL (put in pairing tokens): {cp.public_url}", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


# -- admin commands -----------------------------------------------------------


def cmd_tenant_create(args: argparse.Namespace) -> int:
    _client(args).call("POST", "/admin/v1/tenants", {"name": args.name})
    print(f"created tenant {args.name}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    body = {"ttl": parse_duration(args.ttl)}
    answer = _client(args).call("POST", _tenant(args) + "/tokens", body)
    print(answer["token"])
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        definition = json.loads(text)
    except ValueError as exc:
        print(f"{args.file}: (document): not JSON: {exc}", file=sys.stderr)
        return 1
    client = _client(args)
    try:
        answer = client.call("POST", _tenant(args) + "/flows", {"definition": definition})
    except ApiError as exc:
        issues = exc.body.get("issues")
        if exc.body.get("error") != "flow_invalid" or not isinstance(issues, list):
            raise
        for issue in issues:
            print(f"{args.file}: {issue.get('path')}: {issue.get('message')}", file=sys.stderr)
        return 1
    print(f"{answer['id']} {answer['version']}")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    path = f"{_tenant(args)}/flows/{path_part(args.id)}/activate"
    answer = _client(args).call("POST", path, {"version": args.version})
    print(f"{answer['id']} {answer['version']}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    inputs: dict[str, Any] = {}
    if args.inputs:
        try:
            inputs = json.loads(args.inputs)
        except ValueError as exc:
            raise UsageError(f"--inputs is not JSON: {exc}") from None
        if not isinstance(inputs, dict):
            raise UsageError("--inputs must be a JSON object")
    inputs.update(_pairs(args.input, "--input"))
    body: dict[str, Any] = {"flow": args.id, "inputs": inputs}
    if args.agent:
        body["agent"] = args.agent
    if args.run_id:
        body["run_id"] = args.run_id
    client = _client(args)
    if args.wait is None:
        run = client.call("POST", _tenant(args) + "/runs", body)
        print(json.dumps(run["result"], indent=2) if args.json else run["run_id"])
        return 0
    if args.wait < 0:
        raise UsageError("--wait must be zero or more seconds")
    deadline = time.monotonic() + args.wait
    body["wait"] = min(args.wait, 600.0)
    run = client.call("POST", _tenant(args) + "/runs", body, timeout=body["wait"] + 30)
    while run["status"] in ("dispatched", "accepted", "running"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        step = min(remaining, 600.0)
        path = f"{_tenant(args)}/runs/{path_part(run['run_id'])}?wait={step:.3f}"
        run = client.call("GET", path, timeout=step + 30)
    return _report_run(run, as_json=args.json, waited=args.wait)


def _report_run(run: dict[str, Any], *, as_json: bool, waited: float) -> int:
    result = run["result"]
    status = result.get("status", run["status"])
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(f"{run['run_id']} {status}")
        if result.get("outputs"):
            print("outputs: " + json.dumps(result["outputs"], ensure_ascii=False))
        waiting = result.get("waiting")
        if isinstance(waiting, dict):
            print(f"waiting: {waiting.get('element')} ({waiting.get('kind')})")
        error = result.get("error")
        if isinstance(error, dict) and error.get("message"):
            where = f"{error['element']}: " if error.get("element") else ""
            print(f"error: {where}{error['message']}")
    if status in ("running",):
        print(
            f"{PROG}: run {run['run_id']} is still running after {waited:g} s",
            file=sys.stderr,
        )
        return 1
    return 0 if status in ("completed", "waiting") else 1


def cmd_agents(args: argparse.Namespace) -> int:
    agents = _client(args).call("GET", _tenant(args) + "/agents")["agents"]
    if args.json:
        print(json.dumps(agents, indent=2, ensure_ascii=False))
        return 0
    rows = [
        [a["id"], a["name"], a["status"], a["version"] or "-", a["last_seen"] or "never"]
        for a in agents
    ]
    print(_table(rows, ["ID", "NAME", "STATUS", "VERSION", "LAST SEEN"]))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    runs = _client(args).call("GET", f"{_tenant(args)}/runs?limit={args.limit}")["runs"]
    if args.json:
        print(json.dumps([r["result"] for r in runs], indent=2, ensure_ascii=False))
        return 0
    rows = [
        [
            r["run_id"],
            r["flow"],
            str(r["version"] or "-"),
            r["result"]["status"],
            r["agent"] or "-",
            r["created_at"],
        ]
        for r in runs
    ]
    print(_table(rows, ["RUN", "FLOW", "VERSION", "STATUS", "AGENT", "CREATED"]))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    path = f"{_tenant(args)}/agents/{path_part(args.agent_id)}/revoke"
    _client(args).call("POST", path)
    print(f"{args.agent_id} revoked")
    return 0


def read_secret_value(stdin: Any = None) -> str:
    """The value from stdin (one trailing newline dropped), or a hidden prompt on a terminal."""
    stream = sys.stdin if stdin is None else stdin
    if stream.isatty():
        value = getpass.getpass("secret value: ")
    else:
        value = stream.read()
        if value.endswith("\n"):
            value = value[:-2] if value.endswith("\r\n") else value[:-1]
    if not value:
        raise UsageError(
            "no secret value on stdin",
            hint="pipe it in: ... | flow-controlplane secret set NAME ...",
        )
    return value


def cmd_secret_set(args: argparse.Namespace) -> int:
    value = read_secret_value()
    path = f"{_tenant(args)}/agents/{path_part(args.agent)}/secrets"
    _client(args).call("POST", path, {"name": args.name, "value": value})
    print(f"{args.name} stored on {args.agent}")
    return 0


# -- parser -------------------------------------------------------------------


def _admin_flags() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--url", help="the control plane (default $FLOW_CP_URL or http://127.0.0.1:8700)"
    )
    common.add_argument(
        "--admin-key",
        metavar="KEY",
        help="the admin key (default: --data DIR/admin.key, then $FLOW_CP_ADMIN_KEY)",
    )
    common.add_argument(
        "--data", metavar="DIR", help="the server's data directory, to read DIR/admin.key"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The reference regional control plane for flow-agent.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    admin = _admin_flags()

    p = sub.add_parser(
        "serve",
        help="run the control plane",
        description="Run the control plane. On first start with an empty DATA "
        "it creates its signing key and DATA/admin.key (0600).",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="data directory (made 0700)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8700, help="port (0 picks a free one)")
    p.add_argument("--region", default="local", metavar="NAME", help="region name")
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="URL agents use, put in tokens (default: from host and port)",
    )
    p.add_argument("--tls-cert", metavar="F", help="TLS certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="F", help="TLS private key (PEM)")
    p.set_defaults(handler=cmd_serve)

    tenant = sub.add_parser("tenant", help="manage tenants")
    tsub = tenant.add_subparsers(
        dest="action", metavar="ACTION", parser_class=_Parser, required=True
    )
    p = tsub.add_parser("create", parents=[admin], help="create a tenant")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_tenant_create)

    token = sub.add_parser("token", help="manage pairing tokens")
    ksub = token.add_subparsers(
        dest="action", metavar="ACTION", parser_class=_Parser, required=True
    )
    p = ksub.add_parser(
        "create",
        parents=[admin],
        help="print one single-use pairing token",
        description="Print one pairing token on stdout and nothing else.",
    )
    p.add_argument("--tenant", required=True, metavar="NAME")
    p.add_argument(
        "--ttl", default="24h", metavar="DURATION", help="lifetime, e.g. 10m, 2h, 1d (default 24h)"
    )
    p.set_defaults(handler=cmd_token_create)

    p = sub.add_parser(
        "publish",
        parents=[admin],
        help="publish a flow as its next version",
        description="Publish a flow/v1 file as the next version of its id and "
        "make it active; prints 'ID VERSION'.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--tenant", required=True, metavar="NAME")
    p.set_defaults(handler=cmd_publish)

    p = sub.add_parser(
        "activate",
        parents=[admin],
        help="make a published version active",
        description="Make an earlier (or later) published version active "
        "(rollback); prints 'ID VERSION'.",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("version", type=int, metavar="VERSION")
    p.add_argument("--tenant", required=True, metavar="NAME")
    p.set_defaults(handler=cmd_activate)

    p = sub.add_parser(
        "run",
        parents=[admin],
        help="start a run on an online agent",
        description="Ask an online agent of the tenant to start a run; prints "
        "the run id, or with --wait the run result once it ends or waits for a "
        "person (exit 1 if it failed, was cancelled or refused).",
    )
    p.add_argument("id", metavar="ID", help="flow id")
    p.add_argument("--tenant", required=True, metavar="NAME")
    p.add_argument("--agent", metavar="AGENT_ID", help="this agent (default: any online one)")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input value (the agent converts it to the declared type)",
    )
    p.add_argument("--inputs", metavar="JSON", help="inputs as one JSON object")
    p.add_argument(
        "--run-id", metavar="ID", help="your own run id; repeating it never starts a second run"
    )
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait this long for the run")
    p.add_argument("--json", action="store_true", help="print the run result as JSON")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("agents", parents=[admin], help="list agents")
    p.add_argument("--tenant", required=True, metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_agents)

    p = sub.add_parser("runs", parents=[admin], help="list runs reported by agents")
    p.add_argument("--tenant", required=True, metavar="NAME")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="print a list of run results")
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser(
        "revoke",
        parents=[admin],
        help="revoke an agent",
        description="Revoke an agent: it is disconnected at once and can no longer connect.",
    )
    p.add_argument("agent_id", metavar="AGENT_ID")
    p.add_argument("--tenant", required=True, metavar="NAME")
    p.set_defaults(handler=cmd_revoke)

    secret = sub.add_parser("secret", help="send secrets to agents, sealed")
    ssub = secret.add_subparsers(
        dest="action", metavar="ACTION", parser_class=_Parser, required=True
    )
    p = ssub.add_parser(
        "set",
        parents=[admin],
        help="seal a secret (value on stdin) to one online agent",
        description="Read the value from stdin (never from the command line), seal it to "
        "the agent's key and send it; the agent stores it encrypted. The control plane "
        "keeps no copy; the agent must be online.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--tenant", required=True, metavar="NAME")
    p.add_argument("--agent", required=True, metavar="AGENT_ID")
    p.set_defaults(handler=cmd_secret_set)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return 2
        code = handler(args)
        # A closed reader shows here, inside the handling below, not at exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`| head`): quiet, as a killed-by-SIGPIPE tool would
        # be; stdout goes to devnull so the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except AgentError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code if exc.exit_code in (1, 2) else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line a person can report, not a traceback
        logging.getLogger("controlplane").info("unexpected error", exc_info=True)
        print(f"{PROG}: unexpected error: {exc!r}", file=sys.stderr)
        print("hint: run again with -v for details, and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
