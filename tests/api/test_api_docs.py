"""docs/api.md cannot fall behind: every route, metric and problem code is in it."""

from __future__ import annotations

import re
from pathlib import Path

from agent.api import Metrics, create_app
from agent.api import problems as problems_module
from agent.runtime.runner import Runner

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
API = ROOT / "agent" / "api"


def test_every_route_is_documented(runner: Runner) -> None:
    app = create_app(runner=runner)
    missing = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        entry = f"{route.method} {route.resource.canonical}"
        if f"`{entry}" not in DOC and f"`{route.method} {route.resource.canonical}?" not in DOC:
            missing.append(entry)
    assert missing == []


def test_every_counter_is_documented() -> None:
    # The element-duration histogram is the daemon's (docs/operations.md has it).
    families = Metrics().registry.collect()
    names = [f"{family.name}_total" for family in families if family.type == "counter"]
    assert "flow_agent_api_requests_total" in names
    for name in names:
        assert name.startswith("flow_agent_"), name
        assert f"`{name}`" in DOC, name


def test_every_problem_code_is_documented() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in API.glob("*.py"))
    codes = set(re.findall(r'Problem\(\s*\d{3},\s*"([a-z_]+)"', source))
    codes |= set(re.findall(r'SignatureRefused\(\s*"([a-z_]+)"', source))
    codes |= set(problems_module.HTTP_CODES.values())
    codes |= {"stale_token", "not_waiting", "unknown_outcome", "unknown_field"}
    codes |= {"missing_field", "invalid_field"}
    assert len(codes) > 20
    assert sorted(c for c in codes if f"`{c}`" not in DOC) == []
