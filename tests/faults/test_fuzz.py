"""Case 30: the protocol decoder and the flow parser under size, depth and garbage.

Hypothesis drives the decoder and the parser (the existing fuzz tests in
tests/protocol and tests/flow cover arbitrary text and JSON); these add the
catalogue's size and depth cases with memory measured by tracemalloc, and
the same frames sent to a real daemon over its real link.
"""

from __future__ import annotations

import contextlib
import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.flow.model import FlowInvalid, parse_flow
from agent.protocol.errors import FrameTooDeep, FrameTooLarge, RemoteProtocolError
from agent.protocol.frames import MAX_DEPTH, MAX_FRAME_BYTES, decode
from controlplane.service import ControlPlane

from .conftest import LONG, Record
from .harness import ControlPlaneThread, Daemon, Sink, charge_flow, wait_for

EXAMPLES = 400 if LONG else 60
SMALL = 4096  # a small frame limit keeps the size cases fast; the rule is the same


def _frame(body: str) -> str:
    return '{"v":1,"type":"status","pad":' + body + "}"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra=st.integers(-64, 64), char=st.sampled_from(["a", "é", "€", "😀"]))
def test_30_sizes_around_the_limit(extra: int, char: str) -> None:
    """Frames a few bytes either side of the limit, in 1-4-byte UTF-8 characters.

    Pass: over the limit (counted in UTF-8 bytes) is FrameTooLarge; at or
    under it the decoder answers a refusal of its own kind, never another
    exception.
    """
    head = len(_frame('""').encode()) - 2
    count = max(0, (SMALL - head + extra) // len(char.encode()))
    text = _frame(json.dumps(char * count, ensure_ascii=False))
    try:
        decode(text, max_bytes=SMALL)
    except FrameTooLarge:
        assert len(text.encode()) > SMALL
    except RemoteProtocolError:
        assert len(text.encode()) <= SMALL


@settings(max_examples=EXAMPLES, deadline=None)
@given(depth=st.integers(0, 300), opener=st.sampled_from(["[", '{"k":']), tail=st.booleans())
def test_30_depth_around_the_limit(depth: int, opener: str, tail: bool) -> None:
    """Nesting from 0 to 300 levels, closed or left open.

    Pass: deeper than MAX_DEPTH (64) is FrameTooDeep, before any parsing;
    otherwise a refusal of the decoder's own kind; never RecursionError.
    """
    closer = "]" if opener == "[" else "}"
    body = opener * depth + "1" + (closer * depth if tail else "")
    try:
        decode(_frame(body))
    except FrameTooDeep:
        assert depth + 1 > MAX_DEPTH
    except RemoteProtocolError:
        pass


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    with contextlib.suppress(RemoteProtocolError):
        fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_30_memory_stays_bounded(record: Record) -> None:
    """The largest and deepest frames cost memory in proportion to what was received.

    Pass: a frame 1 byte over 4 MiB, a million open brackets, a 5,000-digit
    number and a 4 MiB string of escapes each cost under 4 times their own
    size in peak memory, and each is refused (or decoded) in under 2 s.
    """
    cases = {
        "over the size limit": _frame('"' + "x" * MAX_FRAME_BYTES + '"'),
        "a million brackets": _frame("[" * 1_000_000),
        "a 5000-digit number": _frame("1" * 5000),
        "4 MiB of escapes": _frame('"' + "\\u0041" * (MAX_FRAME_BYTES // 7) + '"'),
    }
    figures: dict[str, Any] = {}
    for name, text in cases.items():
        started = time.monotonic()
        _peak(lambda: None)
        with contextlib.suppress(RemoteProtocolError):
            decode(text)
        took = time.monotonic() - started
        peak = _peak(lambda t=text: decode(t))
        assert peak < 4 * len(text), (name, peak, len(text))
        assert took < 2.0, (name, took)
        figures[name] = f"{peak / len(text):.2f}x in {took:.2f} s"
    record(30, decoder=figures)


def _flow_of(size: int, depth: int) -> dict[str, Any]:
    elements: dict[str, Any] = {
        f"e{i}": {
            "type": "operator",
            "next": f"e{i + 1}",
            "operations": [{"set": "v", "to": {"expr": "(" * depth + "1" + ")" * depth}}],
        }
        for i in range(size)
    }
    elements[f"e{size}"] = {"type": "end"}
    return {
        "format": "flow/v1",
        "id": "big",
        "values": {"v": {"type": "number", "access": "output"}},
        "start": "e0",
        "elements": elements,
    }


@settings(max_examples=4 if not LONG else 60, deadline=None)
@given(size=st.integers(1, 1000), depth=st.integers(0, 400))
def test_30_flow_parser_size_and_depth(size: int, depth: int) -> None:
    """Flows of up to 1,000 elements with expressions nested up to 400 deep.

    Pass: a flow or FlowInvalid (never RecursionError or another error),
    within 10 s.
    """
    started = time.monotonic()
    with contextlib.suppress(FlowInvalid):
        parse_flow(_flow_of(size, depth))
    assert time.monotonic() - started < 10.0


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_30_hostile_frames_over_the_real_link(
    cp: ControlPlaneThread, sink: Sink, daemons: Callable[..., Daemon], record: Record
) -> None:
    """The control plane's socket sends garbage, an oversized frame (5 MiB), a frame
    over the websocket limit (9 MiB), a million brackets and a deep object.

    Pass: the daemon stays up (same pid, no traceback), its memory stays
    bounded (RSS within 64 MiB of before), the link recovers, and a run
    dispatched afterwards completes.
    """
    cp.publish(charge_flow(sink.url, pause=0.01))
    daemon = daemons()
    daemon.start(FLOW_AGENT_PAIRING_TOKEN=cp.token())
    wait_for(daemon.connected, "connect", timeout=60)
    agent_id = daemon.agent_id()
    pid, before = daemon.pid, _rss(daemon.pid)
    frames = [
        "\x00garbage",
        "{" * 10,
        _frame('"' + "x" * (5 * 2**20) + '"'),
        _frame('"' + "y" * (9 * 2**20) + '"'),
        _frame("[" * 1_000_000),
        _frame('{"a":' * 100 + "1" + "}" * 100),
    ]

    async def blast(plane: ControlPlane) -> int:
        conn = plane.hub.connection(agent_id)
        assert conn is not None
        sent = 0
        for text in frames:
            try:
                await conn.ws.send_str(text)
                sent += 1
            except Exception:  # the agent closed the socket on an oversized frame
                break
        return sent

    sent = cp.do(blast)
    wait_for(lambda: cp.online(agent_id) and daemon.connected(), "the link back", timeout=60)
    peak = _rss(daemon.pid)
    run_id = cp.dispatch("charge")
    assert run_id is not None
    wait_for(
        lambda: cp.read("SELECT status FROM runs WHERE id = ?", (run_id,))[0][0] == "completed",
        "a run after the hostile frames",
    )
    assert daemon.pid == pid and daemon.alive()
    assert peak - before < 64 * 2**20, (before, peak)
    assert "Traceback" not in daemon.log_text()
    assert daemon.terminate() == 0
    record(
        30,
        frames_sent=sent,
        rss_before_mib=round(before / 2**20, 1),
        rss_after_mib=round(peak / 2**20, 1),
    )
