"""A micro-batch of messages applied in one database transaction.

The fast path sends the whole micro-batch in one call of ``els.apply_events``, the
set-based core that the per-event functions also go through: it returns one result per
event, and a rejected event (ELV*/ELC*, or a value PostgreSQL refuses as jsonb) is
dead-lettered alone from its result while the others commit; nothing is re-run. (A value
psycopg cannot send at all, e.g. one with a NUL character, is judged alone, in a
SAVEPOINT of the same transaction, as the careful path would.) When the call itself
fails with an unexpected error, the transaction is rolled back and the micro-batch
re-run carefully, one SAVEPOINT per message through the per-event functions, in rounds:
a rejected event is dead-lettered alone; an unexpected error is retried in the next
round, and its event dead-lettered after ``ELS_UNEXPECTED_MAX_ATTEMPTS`` only while other
events of the micro-batch apply (a poison event: others of its topic, hence of its
function, apply where it fails). When no event of a failing event's topic applies, the
fault is systemic (SPEC 4): ``SystemicFault`` rolls everything back and the consumer
holds the micro-batch, backs off and tries again, dead-lettering nothing. Operational and
deployment faults leave through ``apply``'s own retry: the transaction is rolled back,
the connection dropped when it cannot serve again (lost, read-only), and the whole
micro-batch retried in order, in a fresh transaction, without limit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from els_worker import db
from els_worker.config import Config
from els_worker.errors import Action, Scope, classify, pg_diagnostics, scope_of
from els_worker.health import Health
from els_worker.messages import Item, UnexpectedResult, check_result
from els_worker.observability import Metrics, log
from els_worker.retry import Retry


class SystemicFault(Exception):
    """An unexpected error struck every event of the micro-batch: nothing was applied."""

    def __init__(self, cause: BaseException, struck: int = 1, applied: int = 0) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.struck = struck  # events that failed with no event of their topic applied
        self.applied = applied  # events of other topics that did apply (rolled back)


class BatchProcessor:
    """Applies micro-batches; owns the consumer path's database session."""

    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        stop: threading.Event,
        health: Health,
        session: db.Session | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.stop = stop
        self.health = health
        self.session = session or db.Session(cfg, "els-worker")
        self.routes = cfg.routes
        self.kinds = cfg.route_functions

    def close(self) -> None:
        self.session.close()

    def ping(self) -> None:
        try:
            self.session.get().execute(db.PING)
            self.health.db_ok()
        except psycopg.Error as exc:
            self.health.db_failed(classify(exc).kind)
            log(logging.WARNING, "database ping failed", **pg_diagnostics(exc))
            self.session.after_fault(exc)

    def apply(self, items: Sequence[Item]) -> None:
        """Every live item gets a result or a dead-letter verdict, committed.

        Raises ``SystemicFault`` (nothing committed) when no event could be applied,
        ``Stopping`` when shutdown interrupts a retry (nothing committed: redelivered).
        """
        retry = Retry(self.cfg.retry_base_ms, self.cfg.retry_max_ms, self.metrics, self.stop)
        while True:
            for it in items:
                it.result = None
            try:
                self._apply_once(items)
                self.health.db_ok()
                return
            except SystemicFault:
                # the next try runs on a new session: the session's own state (prepared
                # statements, settings) is ruled out as the cause
                self.session.close()
                raise
            except (psycopg.Error, OSError) as exc:
                rule = classify(exc, self.session.conn)
                if rule.action is not Action.RETRY_FOREVER:
                    raise
                self.session.after_fault(exc)
                self.health.db_failed(rule.kind, rule.reason)
                first = items[0]
                retry.wait(rule.kind, f"{rule.kind} fault: retrying the micro-batch",
                           messages=len(items), topic=first.topic, partition=first.partition,
                           offset=first.offset, rule=rule.reason, **pg_diagnostics(exc))

    def _apply_once(self, items: Sequence[Item]) -> None:
        conn = self.session.get()
        live = [it for it in items if not it.dead]
        if not live:
            return
        try:
            self._apply_set_based(conn, live)
            return
        except psycopg.Error as exc:
            if classify(exc, conn).action is Action.RETRY_FOREVER:
                raise
            log(logging.WARNING, "micro-batch call failed: one message at a time",
                messages=len(live), **pg_diagnostics(exc))
        except UnexpectedResult as exc:
            log(logging.WARNING, "micro-batch result unexpected: one message at a time",
                messages=len(live), error=str(exc))
        for it in live:
            if not it.dead:
                it.result = None
        live = [it for it in live if not it.dead]
        if not live:
            return
        # Something in the micro-batch failed: find out what, message by message.
        try:
            with conn.transaction():
                self._apply_in_rounds(conn, live)
        except psycopg.Error as exc:
            if classify(exc, conn).action is Action.RETRY_FOREVER:
                raise
            # The COMMIT itself failed (e.g. a deferred constraint): no single message
            # can be blamed inside one transaction, so each gets one of its own.
            log(logging.WARNING, "micro-batch commit failed: one transaction per message",
                **pg_diagnostics(exc))
            for it in live:
                it.result = None
            self._apply_in_rounds(conn, [it for it in live if not it.dead])

    def _apply_set_based(self, conn: psycopg.Connection[Any], live: Sequence[Item]) -> None:
        """One call of els.apply_events for the micro-batch, in one transaction. Raises
        (nothing committed, no verdict kept) when the call, a result or the commit fails."""
        judged: list[Item] = []
        try:
            with conn.transaction():
                sendable = []
                for it in live:
                    if it.text is not None and "\x00" in it.text:
                        self._apply_one(conn, it)  # psycopg refuses it: judged alone
                    else:
                        sendable.append(it)
                if not sendable:
                    return
                kinds = [self.kinds[it.topic] for it in sendable]
                texts = [it.text or "" for it in sendable]
                row = None
                if all(it.envelope is not None for it in sendable):  # all parsed by Python
                    try:
                        with conn.transaction():
                            row = conn.execute(db.APPLY_EVENTS_JSON, {
                                "events": db.events_document(kinds, texts)}).fetchone()
                    except psycopg.Error as exc:
                        if classify(exc, conn).action is Action.RETRY_FOREVER:
                            raise
                        if scope_of(exc) is not Scope.VALUE:
                            raise
                        row = None  # a value PostgreSQL refuses: the text[] form finds it
                if row is None:
                    row = conn.execute(db.APPLY_EVENTS,
                                       {"kinds": kinds, "events": texts}).fetchone()
                results = row[0] if row else None
                if not isinstance(results, list) or len(results) != len(sendable):
                    raise UnexpectedResult("els.apply_events returned no result per event")
                for res in results:
                    check_result(res)  # every verdict is sound before any is taken
                for it, res in zip(sendable, results, strict=True):
                    it.apply_result(res)
                    if it.dead:
                        it.attempts += 1
                        judged.append(it)
        except BaseException:
            for it in judged:  # rolled back: the careful path judges them again
                it.revive()
            raise

    def _apply_in_rounds(self, conn: psycopg.Connection[Any], live: Sequence[Item]) -> None:
        """Each pending item in a SAVEPOINT (or its own transaction when the caller has
        none); unexpected failures are retried in later rounds."""
        retry = Retry(self.cfg.retry_base_ms, self.cfg.retry_max_ms, self.metrics, self.stop)
        pending = list(live)
        applied_topics: set[str] = set()
        while pending:
            failing = []
            for it in pending:
                if self._apply_one(conn, it):
                    applied_topics.add(it.topic)
                elif it.suspect is not None:
                    failing.append(it)
            if not failing:
                return
            # A bug in one function strikes every event of its topic: an event is judged
            # poison only when events of the same topic apply where it fails.
            struck = [it for it in failing if it.topic not in applied_topics]
            if struck:
                raise SystemicFault(struck[0].suspect or RuntimeError("unknown"), len(struck),
                                    len(live) - len(failing))
            pending = [it for it in failing if not self._give_up(it)]
            if pending:
                retry.wait("unexpected", "unexpected error: retrying event(s)",
                           events=len(pending), **pg_diagnostics(pending[0].suspect or Exception()))

    def _apply_one(self, conn: psycopg.Connection[Any], it: Item) -> bool:
        """True when applied; False when dead-lettered or suspect (``it.suspect``)."""
        it.attempts += 1
        it.suspect = None
        try:
            with conn.transaction():
                row = conn.execute(self.routes[it.topic], {"event": it.text}).fetchone()
            it.result = row[0] if row else None
            return True
        except psycopg.Error as exc:
            rule = classify(exc, conn)
            if rule.action is Action.RETRY_FOREVER:
                raise  # the whole micro-batch is retried
            if rule.action is Action.DEAD_LETTER:
                it.kill_from_exception(exc, rule)
            else:
                it.suspect = exc
            return False

    def _give_up(self, it: Item) -> bool:
        """Dead-letters a poison event whose attempts are exhausted."""
        if it.attempts < self.cfg.unexpected_max_attempts or it.suspect is None:
            return False
        log(logging.ERROR, "unexpected error while other events apply: dead-lettering",
            topic=it.topic, partition=it.partition, offset=it.offset, attempts=it.attempts,
            **pg_diagnostics(it.suspect))
        it.kill_from_exception(it.suspect, classify(it.suspect))
        return True
