"""The OpenAPI document against the running app, with schemathesis.

Every operation gets a few generated requests (valid and invalid ones); the
app must answer without a 5xx, with a status code, content type and body
that the document declares, and refuse requests without the bearer token.
Then every kind of run result (completed, failed, waiting on a page, a
timer, a subflow) is fetched and checked against the document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from agent.api.openapi import OPENAPI

from .conftest import TOKEN
from .flows import ALL, UNCONFIGURED_HOOK
from .live import LiveServer

schemathesis = pytest.importorskip("schemathesis")

AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=8)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # The flow whose webhook secret is missing answers 503 on purpose; any
    # 5xx fails schemathesis, so that case is tested on its own elsewhere.
    flows = [f for f in ALL if f is not UNCONFIGURED_HOOK]
    with LiveServer(tmp_path_factory.mktemp("openapi") / "state", token=TOKEN, flows=flows) as s:
        yield s


# Built at import time (the lazy fixture loader of schemathesis does not work
# with pytest 9); the server's URL is given to each call instead.
schema = schemathesis.openapi.from_dict(OPENAPI)
schema.config.generation.update(max_examples=8, database="none")


@schema.parametrize()  # type: ignore[untyped-decorator]
@QUICK
def test_the_app_conforms_to_its_openapi_document(case: Any, live: LiveServer) -> None:
    case.call_and_validate(base_url=live.url, headers=AUTH)


def test_linked_calls_conform(live: LiveServer) -> None:
    """Start, then follow the document's links: get, resume, cancel."""
    schema.config.update(base_url=live.url, headers=AUTH)
    # Which inputs a flow takes is the flow's business, not the document's:
    # a schema-valid body of unknown inputs is rightly refused with 422.
    schema.config.checks.update(excluded_check_names=["positive_data_acceptance"])
    workflow = schema.as_state_machine()
    workflow.run(settings=settings(QUICK, max_examples=6, stateful_step_count=5))


def test_every_kind_of_run_result_conforms(live: LiveServer) -> None:
    start = schema["/api/v1/flows/{flow_id}/runs"]["POST"]
    get = schema["/api/v1/runs/{run_id}"]["GET"]
    seen = set()
    for flow, inputs in (
        ("double", {"n": 2}),
        ("fails", {}),
        ("form", {"due": "2030-01-01T00:00:00Z", "tags": ["x"]}),
        ("step", {}),
        ("timer", {}),
        ("parent", {}),
    ):
        case = start.Case(
            path_parameters={"flow_id": flow},
            body={"inputs": inputs},
            media_type="application/json",
        )
        response = case.call_and_validate(base_url=live.url, headers=AUTH)
        assert response.status_code == 201, response.text
        result = response.json()
        seen.add((result["waiting"] or {}).get("kind", result["status"]))
        again = get.Case(path_parameters={"run_id": result["run_id"]})
        assert again.call_and_validate(base_url=live.url, headers=AUTH).json() == result
    assert seen == {"completed", "failed", "input", "timer", "subflow"}
    listing = schema["/api/v1/runs"]["GET"].Case(query={"limit": 50})
    assert len(listing.call_and_validate(base_url=live.url, headers=AUTH).json()["runs"]) >= 6


def test_the_document_is_valid_openapi_3_1() -> None:
    schema.validate()
    assert OPENAPI["openapi"] == "3.1.0"
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert "POST /api/v1/runs/{run_id}/resume" in labels and len(labels) == 12
    assert "POST /api/v1/runs/{run_id}/callback" in labels
