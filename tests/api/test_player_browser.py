"""The player page end to end in headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.api import create_app
from agent.connectors.registry import default_registry
from agent.runtime.catalog import Catalog
from agent.runtime.runner import Runner
from agent.store.sqlite import SqliteStore

from .conftest import SECRETS, publish, serve
from .flows import ALL

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (apt-get install chromium); "
        "scripts/test.sh installs it when run as root",
    ),
    pytest.mark.asyncio(loop_scope="module"),
]

expect = playwright_api.expect


class Server:
    """The API over a real runner and store, shared by this module's tests."""

    def __init__(self, base: str, runner: Runner) -> None:
        self.base = base
        self.runner = runner


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    store = SqliteStore.open(tmp_path_factory.mktemp("browser") / "state", synchronous="off")
    publish(store, *ALL)
    registry = default_registry()
    runner = Runner(store=store, catalog=Catalog(store), connectors=registry, secrets=SECRETS)
    client = await serve(create_app(runner=runner))
    try:
        yield Server(f"http://127.0.0.1:{client.port}", runner)
    finally:
        await client.close()
        await registry.close_all()
        store.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    # One Chromium for the module: starting one takes seconds on a busy machine.
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh browser context (its own cookies) per test."""
    context = await browser.new_context()
    yield await context.new_page()
    await context.close()


async def test_start_fill_answer_and_complete(server: Server, page: Any) -> None:
    await page.goto(f"{server.base}/ui/")
    await page.get_by_role("link", name="Start Invoice approval").click()
    await expect(page.get_by_role("heading", name="Start Invoice approval")).to_be_visible()
    await page.get_by_label("who").fill("Browser Co")
    await page.get_by_label("amount").fill("42.5")
    await page.get_by_role("button", name="Start run").click()

    await expect(page.get_by_role("heading", name="Approve 42.5 for Browser Co?")).to_be_visible()
    assert "/ui/runs/r_" in page.url
    # The labels point at their controls; the current values are shown.
    await expect(page.get_by_label("Amount")).to_have_value("42.5")
    await expect(page.get_by_label("Urgent")).not_to_be_checked()
    await page.get_by_label("Comment").fill("fine by me")
    await page.get_by_label("Urgent").check()
    await page.get_by_role("button", name="Approve").click()

    await expect(page.get_by_role("heading", name="Completed")).to_be_visible()
    await expect(page.get_by_text("fine by me")).to_be_visible()
    history = page.get_by_role("region", name="History").get_by_role("listitem")
    await expect(history).to_have_count(3)
    await expect(history.nth(1)).to_contain_text("Mark approved")
    run_id = page.url.rsplit("/", 1)[1]
    result = await server.runner.result_of(run_id)
    assert result["status"] == "completed"
    assert result["outputs"] == {"amount": 42.5, "note": "fine by me", "approved": True}


async def test_the_keyboard_alone_answers_a_page(server: Server, page: Any) -> None:
    run = await server.runner.start("form", {})
    await page.goto(f"{server.base}/ui/runs/{run['run_id']}")
    await page.get_by_label("Comment").focus()
    await page.keyboard.type("typed")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "field-amount"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "field-urgent"
    await page.keyboard.press("Space")
    # Enter in a text box submits with the first outcome button.
    await page.get_by_label("Comment").press("Enter")
    await expect(page.get_by_role("heading", name="Completed")).to_be_visible()
    result = await server.runner.result_of(run["run_id"])
    assert result["outputs"]["note"] == "typed"
    assert result["status"] == "completed"


async def test_the_second_person_is_told_the_run_moved_on(
    server: Server, browser: Any, page: Any
) -> None:
    run = await server.runner.start("form", {})
    url = f"{server.base}/ui/runs/{run['run_id']}"
    other = await browser.new_context()  # a second person: cookies of their own
    first, second = page, await other.new_page()
    await first.goto(url)
    await second.goto(url)
    await first.get_by_label("Comment").fill("first")
    await second.get_by_label("Comment").fill("second")
    await first.get_by_role("button", name="Reject").click()
    await expect(first.get_by_role("heading", name="Failed")).to_be_visible()
    await second.get_by_role("button", name="Approve").click()
    alert = second.get_by_role("alert").filter(has_text="This run has moved on")
    await expect(alert).to_be_visible()
    await expect(second.get_by_text("rejected: first")).to_be_visible()
    assert (await server.runner.result_of(run["run_id"]))["error"]["message"] == "rejected: first"
    await other.close()


async def test_invalid_fields_are_announced_beside_them(server: Server, page: Any) -> None:
    await page.goto(f"{server.base}/ui/flows/form")
    await page.get_by_label("tags").fill("[not json")
    await page.get_by_role("button", name="Start run").click()
    field = page.get_by_label("tags")
    await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(field).to_have_accessible_description(
        "a JSON list, e.g. [1, 2] expected a list as JSON, got text that is not JSON"
    )
    await expect(page.get_by_role("alert")).to_contain_text("There is a problem")
