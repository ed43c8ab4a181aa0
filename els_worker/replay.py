"""``dlq-replay``: move dead letters back to the input topic their DLQ belongs to.

The DLQs are read as queues by the consumer group ``<ELS_GROUP_ID>.dlq-replay``, from
its committed position up to the end seen at start. A matching letter (by SQLSTATE
prefix; all when no filter) goes back to its input topic with the same key and value;
the others are appended to their DLQ again, unchanged, so that nothing is lost.

The target comes from the DLQ topic's own name (``<input>.dlq`` -> ``<input>``), and
only the three input topics are targets: a header is data, and data must not choose
where data goes. A letter whose ``els.source.topic`` header disagrees is kept.

Exactly once, also across a crashed run: letters move in Kafka transactions of at most
``CHUNK_LETTERS`` letters, each committing the group's position with the letters it
produced; a run killed mid-chunk leaves an aborted transaction (invisible to
``read_committed`` consumers, the worker's setting) and the next run resumes from the
last committed chunk. A committed transaction proves that the group's new positions
and the commit markers were written; it does not prove that every letter of the
chunk is in its topic (librdkafka can report a message delivered, without an offset,
that the broker never stored, and the commit then goes through without it). So a
chunk commits only when every letter's delivery report carries its offset (SPEC 5,
proof of delivery); otherwise the transaction is aborted and the chunk sent again,
up to ``CHUNK_ATTEMPTS`` times. ``--dry-run`` produces and commits nothing: it shows, for each
letter, what replaying it would do now (applied in a rolled-back transaction).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from els_worker import contract, kafka
from els_worker.admin import dry_apply, printable, resolve_topic
from els_worker.config import Config

CHUNK_LETTERS = 100
CHUNK_ATTEMPTS = 5
CHUNK_BYTES = 128 * 1024 * 1024


@dataclass
class Plan:
    """What to do with one letter: replay to ``target`` or keep, and why."""

    replay: bool
    target: str
    why: str


@dataclass
class Progress:
    replayed: int = 0
    kept: int = 0
    unconfirmed_chunks: int = 0  # transactions aborted for a letter without an offset


def plan_for(msg: Message, sqlstates: list[str], source: str) -> Plan:
    h = kafka.header_texts(msg)
    dlq = msg.topic() or ""
    claimed = h.get(contract.H_SOURCE_TOPIC)
    if claimed is not None and claimed != source:
        return Plan(False, dlq, f"header {contract.H_SOURCE_TOPIC}={claimed!r} disagrees with "
                                f"{dlq}: kept (forged or misrouted)")
    state = h.get(contract.H_SQLSTATE, "")
    if sqlstates and not any(state.startswith(s) for s in sqlstates):
        return Plan(False, dlq, f"sqlstate={state}: not selected")
    if msg.value() is None:
        return Plan(False, dlq, f"sqlstate={state}: value omitted (too large when dead-lettered); "
                                f"the original is {source}[{h.get(contract.H_SOURCE_PARTITION)}]"
                                f"@{h.get(contract.H_SOURCE_OFFSET)}")
    return Plan(True, source, f"sqlstate={state}: {h.get(contract.H_MESSAGE, '')}")


def cmd_dlq_replay(cfg: Config, topics: list[str], sqlstates: list[str], dry_run: bool,
                   timeout: float,
                   make_producer: Callable[[Config], Producer] | None = None) -> int:
    """The command; ``make_producer`` builds the transactional producer (default
    ``transactional_producer``; init_transactions is called on what it returns)."""
    sources: dict[str, str] = {}
    for name in topics or cfg.input_topics:
        source = resolve_topic(cfg, name)
        if source is None:
            print(f"refused: {printable(name)!r} is not an input topic "
                  f"({', '.join(cfg.input_topics)})", file=sys.stderr)
            return 2
        sources[contract.dlq_topic(source)] = source
    consumer = kafka.consumer(cfg, f"{cfg.group_id}.dlq-replay", **{
        "auto.offset.reset": "earliest"})
    try:
        # A run killed mid-chunk left an open transaction, and the group's committed
        # position stays "unstable" until it ends. Initialising a producer with the same
        # transactional.id fences the dead run and aborts its transaction at once; a dry
        # run does not fence, so it may wait for the transaction timeout instead.
        producer = None if dry_run else _init_transactions(
            (make_producer or transactional_producer)(cfg))
        ranges = _ranges(consumer, list(sources), timeout=70 if dry_run else 30)
        if not ranges:
            print("nothing to replay in:", ", ".join(sources))
            return 0
        consumer.assign([TopicPartition(t, p, start) for (t, p), (start, _) in ranges.items()])
        letters = _letters(consumer, ranges, timeout)
        if dry_run:
            return _dry_run(cfg, letters, sources, sqlstates)
        assert producer is not None
        return _replay(producer, consumer, letters, sources, sqlstates)
    finally:
        consumer.close()


Range = tuple[int, int]


def _ranges(consumer: Consumer, dlqs: list[str],
            timeout: float) -> dict[tuple[str, int], Range]:
    """For each DLQ partition with letters past the group's position: [position, end at
    start). Letters appended later (the kept ones this run re-appends) wait for a next run."""
    metadata = consumer.list_topics(timeout=15)
    tps = [TopicPartition(t, p) for t in dlqs if t in metadata.topics
           for p in metadata.topics[t].partitions]
    ranges: dict[tuple[str, int], Range] = {}
    for tp in consumer.committed(tps, timeout=timeout) if tps else []:
        low, high = consumer.get_watermark_offsets(tp, timeout=15)
        start = tp.offset if tp.offset != OFFSET_INVALID and tp.offset >= 0 else low
        if start < high:
            ranges[(tp.topic, tp.partition)] = (start, high)
    return ranges


def _letters(consumer: Consumer, ranges: dict[tuple[str, int], Range],
             timeout: float) -> Iterator[Message]:
    """The letters of ``ranges`` in partition order; stops early after ``timeout`` seconds
    without a message (what was not read stays for the next run)."""
    todo = {key: end for key, (_, end) in ranges.items()}
    idle_since = time.monotonic()
    while todo:
        msg = consumer.poll(0.5)
        if msg is None:
            if time.monotonic() - idle_since > timeout:
                print(f"timed out before the end of {sorted(todo)}; run again", file=sys.stderr)
                return
            continue
        idle_since = time.monotonic()
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(err)
            continue
        key = (msg.topic() or "", msg.partition() or 0)
        offset = msg.offset() or 0
        end = todo.get(key)
        if end is None or offset >= end:
            continue
        yield msg
        if offset + 1 >= end:
            del todo[key]


def _dry_run(cfg: Config, letters: Iterator[Message], sources: dict[str, str],
             sqlstates: list[str]) -> int:
    """Shows what replaying each letter would do now; produces and commits nothing."""
    would = kept = 0
    with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=5) as conn:
        for msg in letters:
            plan = plan_for(msg, sqlstates, sources[msg.topic() or ""])
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            if not plan.replay:
                kept += 1
                print(f"keep    {where}: {printable(plan.why)}")
                continue
            would += 1
            text = (msg.value() or b"").decode("utf-8", "replace")
            out = dry_apply(conn, cfg, plan.target, text)
            result = out.get("result") or {}
            now = (f"outcome={result.get('outcome')}" if "error" not in out
                   else f"sqlstate={out['error'].get('sqlstate')}")
            print(f"replay  {where} -> {plan.target}: {printable(plan.why)}; now: {now}")
    print(f"dry run: would replay {would} letter(s); would keep {kept}")
    return 0


def transactional_producer(cfg: Config) -> Producer:
    return kafka.producer(cfg, "els-dlq-replay", **{
        "transactional.id": f"{cfg.group_id}.dlq-replay",
        "linger.ms": 20})


def _init_transactions(producer: Producer) -> Producer:
    producer.init_transactions(60)
    return producer


def _replay(producer: Producer, consumer: Consumer, letters: Iterator[Message],
            sources: dict[str, str], sqlstates: list[str]) -> int:
    progress = Progress()
    try:
        chunk: list[tuple[Message, Plan]] = []
        size = 0
        for msg in letters:
            plan = plan_for(msg, sqlstates, sources[msg.topic() or ""])
            chunk.append((msg, plan))
            size += len(msg.value() or b"")
            if len(chunk) >= CHUNK_LETTERS or size >= CHUNK_BYTES:
                _commit_chunk(producer, consumer, chunk, progress)
                chunk, size = [], 0
        if chunk:
            _commit_chunk(producer, consumer, chunk, progress)
    except KafkaException as exc:
        print(f"replay stopped: {exc}; {progress.replayed} replayed and {progress.kept} kept "
              "are committed, the rest is untouched: run again", file=sys.stderr)
        return 1
    print(f"replayed {progress.replayed} letter(s); kept {progress.kept}"
          + (f"; {progress.unconfirmed_chunks} chunk(s) sent again for a letter without an "
             "offset" if progress.unconfirmed_chunks else ""))
    return 0


class UnconfirmedChunk(Exception):
    """A letter of the chunk was reported delivered without an offset."""


def _commit_chunk(producer: Producer, consumer: Consumer, chunk: list[tuple[Message, Plan]],
                  progress: Progress) -> None:
    """The chunk in one Kafka transaction, sent again (in a new transaction) while a
    letter's delivery report has no offset; gives up after CHUNK_ATTEMPTS."""
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        try:
            _chunk_transaction(producer, consumer, chunk)
            break
        except UnconfirmedChunk as exc:
            progress.unconfirmed_chunks += 1
            print(f"chunk aborted (attempt {attempt}/{CHUNK_ATTEMPTS}): {exc}; sending it again",
                  file=sys.stderr)
    else:
        raise KafkaException(KafkaError(KafkaError._FAIL, "letters reported delivered without "
                                        f"an offset in {CHUNK_ATTEMPTS} transactions"))
    replayed = sum(1 for _, plan in chunk if plan.replay)
    progress.replayed += replayed
    progress.kept += len(chunk) - replayed


def _chunk_transaction(producer: Producer, consumer: Consumer,
                       chunk: list[tuple[Message, Plan]]) -> None:
    """One Kafka transaction: the chunk's letters, replayed or re-appended, together with
    the group's new positions. All of it becomes visible, or none of it; it commits only
    when the broker gave every letter an offset."""
    deliveries = kafka.Deliveries()
    producer.begin_transaction()
    try:
        positions: dict[tuple[str, int], int] = {}
        for msg, plan in chunk:
            refused = kafka.produce(producer, plan.target, msg.key(), msg.value(),
                                    kafka.headers_list(msg), deliveries.callback(msg))
            if refused is not None:
                raise KafkaException(refused)
            positions[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
        producer.flush(60)
        if deliveries.failed:
            raise KafkaException(next(iter(deliveries.failed.values()))[1])
        if len(deliveries.stored) < len(chunk):
            raise UnconfirmedChunk(f"{len(chunk) - len(deliveries.stored)} of {len(chunk)} "
                                   "letters have no offset (reported without one, or no "
                                   "report in time)")
        producer.send_offsets_to_transaction(
            [TopicPartition(t, p, o) for (t, p), o in positions.items()],
            consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(60)
    except (KafkaException, UnconfirmedChunk):
        producer.abort_transaction(30)
        raise
