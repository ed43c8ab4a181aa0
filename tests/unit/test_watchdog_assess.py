"""The partition stall watchdog's decision (els_worker/watchdog.py ``assess``): a pure
function over what the loop delivered, librdkafka's statistics and the broker's end
offset. The watchdog against the real broker is tests/stack/test_worker_stall.py."""

from __future__ import annotations

from typing import Any

from els_worker.watchdog import PartitionStats, Verdict, assess, parse_stats

# --- the decision ------------------------------------------------------------------

STUCK = PartitionStats(fetch_state="validate-epoch-wait", leader=1, next_offset=537,
                       hi_offset=537, ls_offset=537, fetchq_cnt=0)


def _assess(**kw: Any) -> Verdict:
    args: dict[str, Any] = {"quiet_for": 31.0, "timeout": 30.0, "next_offset": 537,
                            "position": None, "end": 540, "stats": STUCK}
    args.update(kw)
    return assess(**args)


def test_the_incident_is_a_stall() -> None:
    """Committed 537 of 540, nothing delivered for longer than the timeout, librdkafka's
    statistics frozen at the last fetch (hi_offset 537) in validate-epoch-wait: stalled.
    The broker's end offset decides, not the statistics' stale hi_offset."""
    assert _assess() is Verdict.STALLED
    assert _assess(stats=None) is Verdict.STALLED  # no statistics received: still decided
    assert _assess(position=537) is Verdict.STALLED  # librdkafka at our position, no further
    assert _assess(position=12) is Verdict.STALLED  # an older position changes nothing
    # other partitions' messages waiting in the shared consumer queue change nothing either
    assert _assess(stats=PartitionStats("active", 1, 537, 537, 537, 40_000)) is Verdict.STALLED


def test_quiet_for_less_than_the_timeout_waits() -> None:
    assert _assess(quiet_for=29.9) is Verdict.WAIT


def test_nothing_beyond_our_position_is_idle_not_stalled() -> None:
    assert _assess(end=537) is Verdict.CAUGHT_UP
    assert _assess(next_offset=540) is Verdict.CAUGHT_UP


def test_a_transaction_marker_at_the_end_is_not_a_stall() -> None:
    """dlq-replay writes the input topics in transactions: the commit marker takes an
    offset no message is ever delivered at. librdkafka's position passes it; ours stays."""
    assert _assess(next_offset=539, position=540, end=540) is Verdict.CAUGHT_UP


def test_fetched_messages_waiting_for_poll_mean_the_loop_is_behind() -> None:
    """A backlog: the fetcher fetched up to 540, the messages wait in the consumer queue
    behind other partitions' for longer than the timeout. Seeking would only send them
    to the back of the queue again."""
    busy = PartitionStats(fetch_state="active", leader=1, next_offset=540, hi_offset=540,
                          ls_offset=540, fetchq_cnt=90_000)
    assert _assess(stats=busy) is Verdict.QUEUED
    # fetched ahead, but nothing waits in the queue: the messages are nowhere, a stall
    gone = PartitionStats(fetch_state="active", leader=1, next_offset=540, hi_offset=540,
                          ls_offset=540, fetchq_cnt=0)
    assert _assess(stats=gone) is Verdict.STALLED


def test_unknown_offsets_decide_nothing() -> None:
    assert _assess(next_offset=None) is Verdict.UNKNOWN  # no commit, started at latest
    assert _assess(end=None) is Verdict.UNKNOWN


def test_statistics_parsed_per_partition() -> None:
    stats = {"topics": {"t.in": {"partitions": {
        "0": {"fetch_state": "offset-query", "leader": 2, "next_offset": 537, "hi_offset": 540,
              "ls_offset": 539, "fetchq_cnt": 0, "consumer_lag": 3},
        "1": {"fetch_state": "active", "leader": 1},  # incomplete: skipped
        "-1": {"fetch_state": "none", "leader": -1, "next_offset": 0, "hi_offset": -1001,
               "ls_offset": -1001, "fetchq_cnt": 0},
    }}}}
    assert parse_stats(stats) == {
        ("t.in", 0): PartitionStats("offset-query", 2, 537, 540, 539, 0)}
    assert parse_stats({}) == {}
