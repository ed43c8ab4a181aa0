"""The worker's per-event log line, written by hand for speed, says exactly what the
general code said: the JSON object of its fields, byte for byte (the relay's delivery
coordinates, also hand-built: tests/stack/test_delivery_arrays.py)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from els_worker import observability, report
from els_worker.messages import Item
from els_worker.observability import Metrics

TOPIC = "huleedu.file.essay.content.provisioned.v1"


@pytest.fixture
def worker_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The worker's own JSON logging (setup_logging), written to a buffer."""
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level, observability._JSON_HANDLER
    monkeypatch.setattr(sys, "stderr", out)
    observability.setup_logging("INFO")
    try:
        yield out
    finally:
        root.handlers[:], level, observability._JSON_HANDLER = saved
        root.setLevel(level)


def _item(offset: int, envelope: Any, result: dict[str, Any] | None) -> Item:
    it = Item(msg=None, topic=TOPIC, partition=2, offset=offset)  # type: ignore[arg-type]
    it.envelope, it.result = envelope, result
    return it


def test_event_applied_lines_are_the_json_of_their_fields(worker_log: io.StringIO) -> None:
    items = [
        _item(7, {"correlation_id": "c-1", "data": {"entity_id": "b-1"}},
              {"batch_id": "b-1", "outcome": "assigned", "essay_id": "e-1", "complete": False,
               "events": ["00000000-0000-0000-0000-000000000001"]}),
        # what a text field may hold: quotes, backslashes, control characters, non-ASCII
        _item(8, {"data": {"entity_id": 'b-"2"\\\n\u00e9\u4e2d\U0001f600',
                           "correlation_id": "c\t2"}},
              {"batch_id": 'b-"2"\\\n\u00e9\u4e2d\U0001f600', "outcome": "pending",
               "essay_id": None, "complete": None, "events": []}),
        _item(9, {"data": {"entity_id": "b-3"}},
              {"batch_id": "b-3", "outcome": "registered", "complete": True}),
    ]
    dead = _item(10, {"data": {"entity_id": "b-4"}}, None)
    dead.kill("ELV02", "field user_id is required", '{"field": "user_id"}', {"hint": "x"})
    report.report([*items, dead], 0.0123456, Metrics(), "other-topic", log_events=True)

    lines = worker_log.getvalue().splitlines()
    assert len(lines) == 4
    for line, it in zip(lines, items, strict=False):
        res = it.result or {}
        expected = {"ts": json.loads(line)["ts"], "level": "info", "logger": "els.worker",
                    "msg": "event applied", "topic": TOPIC, "partition": 2,
                    "offset": it.offset, "batch_id": res["batch_id"],
                    "correlation_id": it.correlation_id, "duration_ms": 12.346,
                    "outcome": res["outcome"], "essay_id": res.get("essay_id"),
                    "complete": res.get("complete"), "events": len(res.get("events") or ())}
        assert line == json.dumps(expected, ensure_ascii=False)
    dead_line = json.loads(lines[3])
    assert dead_line["msg"] == "event dead-lettered"
    assert dead_line["sqlstate"] == "ELV02" and dead_line["pg"] == {"hint": "x"}


def test_event_applied_lines_reach_a_foreign_log_handler_as_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without the worker's logging set up (an embedding application, pytest), the lines
    go through ``logging`` with their fields intact."""
    caplog.set_level(logging.INFO, logger="els.worker")
    it = _item(7, {"correlation_id": "c-1"},
               {"batch_id": "b-1", "outcome": "assigned", "essay_id": "e-1", "complete": True,
                "events": ["x"]})
    report.report([it], 0.001, Metrics(), "other-topic", log_events=True)
    [record] = [r for r in caplog.records if r.getMessage() == "event applied"]
    assert record.fields == {  # type: ignore[attr-defined]
        "topic": TOPIC, "partition": 2, "offset": 7, "batch_id": "b-1",
        "correlation_id": "c-1", "duration_ms": 1.0, "outcome": "assigned",
        "essay_id": "e-1", "complete": True, "events": 1}
