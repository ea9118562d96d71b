"""JSON and text log lines, the run context, and secrets masked everywhere."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from agent.logs import (
    MASK,
    JsonFormatter,
    LogContextObserver,
    RedactFilter,
    RedactingSecrets,
    Redactor,
    TextFormatter,
    bind,
    configure_logging,
    log_context,
    resolve_format,
)

SECRET = "s3cr3t-value-91f2"


class Capture:
    """A logger whose lines land in a string, through the agent's filter and a formatter."""

    def __init__(self, formatter: logging.Formatter, redactor: Redactor) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.addFilter(RedactFilter(redactor))
        self.handler.setFormatter(formatter)
        self.logger = logging.getLogger(f"flow_agent.test.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def docs(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def redactor() -> Redactor:
    found = Redactor()
    found.add(SECRET)
    return found


@pytest.fixture
def capture(redactor: Redactor) -> Iterator[Capture]:
    cap = Capture(JsonFormatter(), redactor)
    yield cap
    cap.logger.removeHandler(cap.handler)


def test_a_json_line_has_the_standard_fields(capture: Capture) -> None:
    capture.logger.info("run %s started", "r_1")
    (doc,) = capture.docs()
    assert set(doc) == {"ts", "level", "logger", "message"}
    assert doc["level"] == "info" and doc["message"] == "run r_1 started"
    assert doc["logger"] == capture.logger.name
    assert str(doc["ts"]).endswith("Z") and "T" in str(doc["ts"])


def test_run_fields_come_from_extra_or_from_the_context(capture: Capture) -> None:
    capture.logger.info("explicit", extra={"run_id": "r_1", "flow": "hello", "element": "greet"})
    with log_context(run_id="r_2", flow="approve"):
        capture.logger.warning("from the context")
        capture.logger.warning("extra wins", extra={"run_id": "r_3"})
    capture.logger.info("outside")
    explicit, context, wins, outside = capture.docs()
    assert (explicit["run_id"], explicit["flow"], explicit["element"]) == ("r_1", "hello", "greet")
    assert (context["run_id"], context["flow"]) == ("r_2", "approve")
    assert "element" not in context
    assert wins["run_id"] == "r_3" and wins["flow"] == "approve"
    assert "run_id" not in outside


def test_the_observer_binds_the_run_it_is_told_about(capture: Capture) -> None:
    def in_a_task_of_its_own() -> None:
        LogContextObserver().committed(
            result={
                "run_id": "r_9",
                "flow": "approve",
                "path": ["start", "ask"],
                "waiting": {"element": "ask", "kind": "page"},
            },
            previous=None,
            visits=(),
            parent_id=None,
        )
        capture.logger.info("after a commit")

    import contextvars

    contextvars.copy_context().run(in_a_task_of_its_own)
    capture.logger.info("elsewhere")
    after, elsewhere = capture.docs()
    assert (after["run_id"], after["flow"], after["element"]) == ("r_9", "approve", "ask")
    assert "run_id" not in elsewhere


def test_secrets_are_masked_in_message_args_fields_and_tracebacks(capture: Capture) -> None:
    capture.logger.info(f"header was Bearer {SECRET}")
    capture.logger.info("args: %s", {"password": SECRET})
    capture.logger.info("field", extra={"detail": f"x{SECRET}x"})
    try:
        raise ValueError(f"the peer said {SECRET}")
    except ValueError:
        capture.logger.exception("a call failed")
    text = capture.stream.getvalue()
    assert SECRET not in text
    docs = capture.docs()
    assert docs[0]["message"] == f"header was Bearer {MASK}"
    assert MASK in str(docs[1]["message"]) and docs[2]["detail"] == f"x{MASK}x"
    assert "ValueError: the peer said " + MASK in str(docs[3]["exc"])


def test_escaped_forms_of_a_secret_are_masked_too(capture: Capture, redactor: Redactor) -> None:
    tricky = 'pa"ss/wo rd'
    redactor.add(tricky)
    capture.logger.info("json %s, url %s", json.dumps(tricky), "https://h/?p=pa%22ss%2Fwo%20rd")
    (doc,) = capture.docs()
    assert doc["message"] == f'json "{MASK}", url https://h/?p={MASK}'
    assert "wo rd" not in capture.stream.getvalue()


def test_too_short_values_are_not_masked(redactor: Redactor) -> None:
    redactor.add("ab", "", None)
    assert redactor.mask("abc ab") == "abc ab"


def test_reading_a_secret_teaches_the_redactor(capture: Capture, redactor: Redactor) -> None:
    secrets = RedactingSecrets({"erp": "erp-password-77", "other": "other-value-88"}, redactor)
    capture.logger.info("before: erp-password-77")
    assert secrets["erp"] == "erp-password-77"
    capture.logger.info("after: erp-password-77, other-value-88")
    assert secrets.refresh() == 2
    capture.logger.info("refreshed: other-value-88")
    before, after, refreshed = capture.docs()
    assert before["message"] == "before: erp-password-77"  # unknown until read
    assert after["message"] == f"after: {MASK}, other-value-88"
    assert refreshed["message"] == f"refreshed: {MASK}"
    assert "erp-password-77" not in repr(secrets)


def test_the_text_format_is_one_readable_line(redactor: Redactor) -> None:
    cap = Capture(TextFormatter(), redactor)
    with log_context(run_id="r_1"):
        cap.logger.warning("slow call")
    (line,) = cap.lines()
    assert " WARNING " in line and line.endswith("slow call [run_id=r_1]")
    cap.logger.removeHandler(cap.handler)


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    main, other = os.openpty()
    try:
        with open(other, "w", closefd=False) as tty:
            assert resolve_format("auto", tty) == "text"
    finally:
        os.close(main)
        os.close(other)
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"


def test_configure_logging_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging(level="warning", fmt="json", stream=first)
        handler = configure_logging(level="debug", fmt="json", stream=second)
        logging.getLogger("flow_agent.test").debug("hello")
        assert first.getvalue() == ""
        assert json.loads(second.getvalue())["message"] == "hello"
        assert [h for h in root.handlers if h not in before] == [handler]
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)


def test_bind_sets_the_context_for_the_rest_of_the_task(capture: Capture) -> None:
    import contextvars

    def task() -> None:
        bind(run_id="r_5")
        capture.logger.info("bound")

    contextvars.copy_context().run(task)
    assert capture.docs()[0]["run_id"] == "r_5"
