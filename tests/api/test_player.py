"""The player page over HTTP: forms, validation beside fields, views, escaping."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore

from .conftest import Clock

Client = TestClient[web.Request, web.Application]


def origin(client: Client) -> dict[str, str]:
    return {"Origin": f"http://{client.host}:{client.port}"}


async def post(client: Client, url: str, data: Any) -> Any:
    return await client.post(url, data=data, headers=origin(client), allow_redirects=False)


def control(html: str, element_id: str) -> str:
    match = re.search(rf'<(input|textarea)[^>]*\bid="{re.escape(element_id)}"[^>]*>', html)
    assert match, f"no control #{element_id}"
    return match.group(0)


async def test_start_form_has_a_labelled_control_per_input_type(client: Client) -> None:
    response = await client.get("/ui/flows/form")
    assert response.status == 200
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    html = await response.text()
    assert 'type="number"' in control(html, "input-amount") and 'value="10"' in control(
        html, "input-amount"
    )
    assert 'type="checkbox"' in control(html, "input-urgent")
    assert 'type="datetime-local"' in control(html, "input-due")
    assert control(html, "input-tags").startswith("<textarea")
    assert 'type="text"' in control(html, "input-who")
    for name in ("amount", "urgent", "due", "tags", "who"):
        assert f'<label for="input-{name}">' in html
    assert "input-note" not in html  # outputs are not inputs


async def test_starting_redirects_to_the_run_page(client: Client, store: SqliteStore) -> None:
    response = await post(
        client,
        "/ui/flows/form/runs",
        {
            "input.amount": "250",
            "input.who": "Bolt & Nut <Ltd>",
            "input.urgent": ["false", "true"],
            "input.due": "2030-01-02T03:04",
            "input.tags": '["a", "b"]',
        },
    )
    assert response.status == 303
    run_id = response.headers["Location"].rsplit("/", 1)[1]
    record = store.get_run(run_id)
    assert record is not None and record.status == "waiting"
    page = await (await client.get(response.headers["Location"])).text()
    # Values reach the page, escaped.
    assert "Approve 250 for Bolt &amp; Nut &lt;Ltd&gt;?" in page
    assert "<Ltd>" not in page
    assert 'value="2030-01-02T03:04"' in control(page, "field-due")
    assert "checked" in control(page, "field-urgent")
    assert "&#34;a&#34;" in page or "&quot;a&quot;" in page


async def test_a_refused_start_shows_messages_beside_the_inputs(client: Client) -> None:
    response = await post(
        client, "/ui/flows/form/runs", {"input.amount": "lots", "input.tags": "{"}
    )
    assert response.status == 422
    html = await response.text()
    assert 'aria-invalid="true"' in control(html, "input-amount")
    assert 'aria-describedby="input-amount-error"' in control(html, "input-amount")
    assert re.search(r'id="input-amount-error">[^<]*lots', html)
    assert 'id="input-tags-error"' in html
    assert 'value="lots"' in control(html, "input-amount")  # what was typed stays
    assert 'role="alert"' in html


async def test_answering_a_page_completes_the_run(client: Client, runner: Runner) -> None:
    run = await runner.start("form", {})
    token = run["waiting"]["state_token"]
    url = f"/ui/runs/{run['run_id']}"
    html = await (await client.get(url)).text()
    assert f'name="state_token" value="{token}"' in html
    assert '<button type="submit" name="outcome" value="approve"' in html
    assert '<meta http-equiv="refresh"' not in html  # a person is filling it in
    response = await post(
        client,
        f"{url}/answer",
        {
            "state_token": token,
            "outcome": "approve",
            "field.note": "looks right",
            "field.amount": "11",
            "field.urgent": "false",
            "field.due": "",
            "field.tags": "",
        },
    )
    assert response.status == 303 and response.headers["Location"] == url
    result = await runner.result_of(run["run_id"])
    assert result["status"] == "completed"
    assert result["outputs"] == {"amount": 11, "note": "looks right", "approved": True}
    done = await (await client.get(url)).text()
    assert "Completed" in done and "looks right" in done
    assert re.findall(r"<code>(\w+)</code>", done.split("History", 1)[1]) == ["ask", "mark", "done"]
    assert "Mark approved" in done  # element labels in the timeline


async def test_every_bad_field_gets_its_message(client: Client, runner: Runner) -> None:
    run = await runner.start("form", {})
    url = f"/ui/runs/{run['run_id']}"
    response = await post(
        client,
        f"{url}/answer",
        {
            "state_token": run["waiting"]["state_token"],
            "outcome": "approve",
            "field.note": "",
            "field.amount": "ten",
            "field.urgent": "false",
            "field.due": "someday",
            "field.tags": "[1",
        },
    )
    assert response.status == 422
    html = await response.text()
    for name in ("note", "amount", "due", "tags"):
        assert f'id="field-{name}-error"' in html, name
        assert 'aria-invalid="true"' in control(html, f"field-{name}")
    assert 'id="field-urgent-error"' not in html
    assert 'value="ten"' in control(html, "field-amount")
    assert (await runner.result_of(run["run_id"]))["status"] == "waiting"


async def test_an_unknown_outcome_is_shown_at_the_top(client: Client, runner: Runner) -> None:
    run = await runner.start("step", {})
    url = f"/ui/runs/{run['run_id']}"
    assert "Read the policy, you." in await (await client.get(url)).text()
    response = await post(
        client, f"{url}/answer", {"state_token": run["waiting"]["state_token"], "outcome": "nope"}
    )
    assert response.status == 422
    assert "is not an outcome" in await response.text()


async def test_the_second_answer_sees_the_run_moved_on(client: Client, runner: Runner) -> None:
    run = await runner.start("form", {})
    url = f"/ui/runs/{run['run_id']}"
    answer = {
        "state_token": run["waiting"]["state_token"],
        "outcome": "reject",
        "field.note": "no",
        "field.amount": "1",
        "field.urgent": "false",
    }
    assert (await post(client, f"{url}/answer", answer)).status == 303
    second = await post(client, f"{url}/answer", {**answer, "outcome": "approve"})
    assert second.status == 303 and second.headers["Location"] == f"{url}?notice=moved"
    html = await (await client.get(second.headers["Location"])).text()
    assert "This run has moved on" in html
    assert "Failed" in html and "rejected: no" in html
    assert (await runner.result_of(run["run_id"]))["status"] == "failed"


async def test_a_timer_page_refreshes_itself_and_says_when(
    client: Client, runner: Runner, clock: Clock
) -> None:
    run = await runner.start("timer", {})
    html = await (await client.get(f"/ui/runs/{run['run_id']}")).text()
    assert '<meta http-equiv="refresh" content="30">' in html
    assert "2027-01-15 09:00:00 UTC" in html and "in 60 minutes" in html
    clock.now += 3590
    html = await (await client.get(f"/ui/runs/{run['run_id']}")).text()
    assert '<meta http-equiv="refresh" content="10">' in html and "in 10 seconds" in html
    clock.now += 60  # overdue: the agent's timer loop takes it soon
    html = await (await client.get(f"/ui/runs/{run['run_id']}")).text()
    assert '<meta http-equiv="refresh" content="5">' in html and "due now" in html


async def test_cancel_from_the_player(client: Client, runner: Runner) -> None:
    run = await runner.start("timer", {})
    url = f"/ui/runs/{run['run_id']}"
    response = await post(client, f"{url}/cancel", {})
    assert response.status == 303
    html = await (await client.get(url)).text()
    assert "Cancelled" in html and "Cancel this run" not in html


async def test_a_parent_shows_its_childs_page_and_answers_it(
    client: Client, runner: Runner
) -> None:
    run = await runner.start("parent", {})
    url = f"/ui/runs/{run['run_id']}"
    html = await (await client.get(url)).text()
    assert "Approve 99 for Parent Ltd?" in html
    assert f"/ui/runs/{run['run_id']}.1" in html  # the child run, linked
    child_token = run["waiting"]["child_run"]["waiting"]["state_token"]
    response = await post(
        client,
        f"{url}/answer",
        {
            "state_token": child_token,
            "outcome": "approve",
            "field.note": "ok",
            "field.amount": "99",
        },
    )
    assert response.status == 303
    assert (await runner.result_of(run["run_id"]))["outputs"] == {"ok": True}


async def test_unknown_pages_are_html_not_json(client: Client) -> None:
    for url in ("/ui/runs/r_nothing", "/ui/flows/nothing", "/ui/nothing"):
        response = await client.get(url)
        assert response.status == 404
        assert response.content_type == "text/html"
        assert "Not found" in await response.text()


async def test_index_and_stylesheet(client: Client, runner: Runner) -> None:
    await runner.start("timer", {})
    html = await (await client.get("/ui/")).text()
    assert "Cooling-off period" in html and 'href="/ui/flows/form"' in html
    assert "timer at <code>pause</code>" in html
    css = await client.get("/ui/static/style.css")
    assert css.status == 200 and css.content_type == "text/css"
    assert ":focus-visible" in await css.text()
    root = await client.get("/", allow_redirects=False)
    assert root.status == 303 and root.headers["Location"] == "/ui/"
