"""pg_cron as the in-database scheduler of the deadline (SPEC section 10, docs/operations.md).

scripts/stack.sh preloads pg_cron (Debian's postgresql-15-cron, installed by
scripts/bootstrap.sh) with cron.database_name = 'els', the database ELS_DATABASE_URL
names. This test does what the runbook tells a DBA to do there: CREATE EXTENSION
pg_cron, schedule ``SELECT els.close_overdue_batches('1 second')``, and then it
watches an overdue batch get closed by the scheduler (polling, with a deadline),
and unschedules the job.

pg_cron schedules in seconds ('1 seconds') from version 1.5; Debian bookworm ships
1.4, whose finest schedule is a cron minute ('* * * * *'): the test asks for '1
seconds' and, where pg_cron refuses it, uses the minute schedule (so it may wait about
a minute). The job closes every batch of database els that is incomplete for more
than a second: els is the stack's scratch database (make migrate / make demo).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import psycopg
import pytest

import els_migrate
from testkit import events
from testkit.stack import Stack

COMMAND = "SELECT els.close_overdue_batches('1 second')"
WAIT_S = 150.0


def _schedule(conn: psycopg.Connection[Any], name: str) -> str:
    """cron.schedule every second if this pg_cron can, else every minute; returns it."""
    for schedule in ("1 seconds", "* * * * *"):
        try:
            with conn.transaction():
                conn.execute("SELECT cron.schedule(%(name)s::text, %(schedule)s::text,"
                             " %(command)s::text)",
                             {"name": name, "schedule": schedule, "command": COMMAND})
            return schedule
        except psycopg.Error as exc:
            if "invalid schedule" not in str(exc):
                raise
    raise AssertionError("pg_cron accepted no schedule")


def test_pg_cron_closes_an_overdue_batch(stack: Stack) -> None:
    els_migrate.apply_migrations(stack.database_url)
    batch_id = f"cron-{uuid.uuid4()}"
    job = f"els-test-close-overdue-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        if preload is None or "pg_cron" not in preload[0]:
            if os.environ.get("ELS_TEST_EXTERNAL_STACK") == "1":
                pytest.skip("the external stack's PostgreSQL does not preload pg_cron")
            pytest.fail("pg_cron is not preloaded: run scripts/stack.sh up (it restarts the "
                        "cluster for it) after scripts/bootstrap.sh installed postgresql-15-cron")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        # jobs an interrupted run of this test left behind
        conn.execute("SELECT cron.unschedule(jobid) FROM cron.job"
                     " WHERE jobname LIKE 'els-test-close-overdue-%'")

        events.apply(conn, "register", events.registration(batch_id, [f"{batch_id}-e0",
                                                                      f"{batch_id}-e1"]))
        events.apply(conn, "content", events.content(batch_id, "t0"))
        schedule = _schedule(conn, job)
        try:
            deadline = time.monotonic() + WAIT_S
            state: tuple[Any, ...] | None = None
            while time.monotonic() < deadline:
                state = conn.execute(
                    "SELECT completion_reason FROM els.batch_tracker WHERE batch_id = %(b)s",
                    {"b": batch_id}).fetchone()
                if state is not None and state[0] is not None:
                    break
                time.sleep(0.5)
            runs = conn.execute(
                "SELECT d.status, d.return_message FROM cron.job_run_details AS d"
                " JOIN cron.job AS j USING (jobid) WHERE j.jobname = %(job)s ORDER BY d.runid",
                {"job": job}).fetchall()
        finally:
            conn.execute("SELECT cron.unschedule(%(job)s::text)", {"job": job})

        assert state == ("deadline",), (
            f"not closed within {WAIT_S:.0f}s by the job scheduled '{schedule}'; runs: {runs}")
        assert any(status == "succeeded" for status, _ in runs), runs
        assert not any(status == "failed" for status, _ in runs), runs
        slots = conn.execute(
            "SELECT status::text, failure_code FROM els.essay_slot WHERE batch_id = %(b)s"
            " ORDER BY slot_no", {"b": batch_id}).fetchall()
        assert slots == [("ready_for_processing", None),
                         ("content_ingestion_failed", "CONTENT_TIMEOUT")]
        completions = conn.execute(
            "SELECT envelope -> 'data' ->> 'completion_reason' FROM els.event_outbox"
            " WHERE message_key = %(b)s AND event_type = 'BatchContentProvisioningCompleted'",
            {"b": batch_id}).fetchall()
        assert completions == [("deadline",)]
        assert conn.execute("SELECT count(*) FROM cron.job WHERE jobname = %(job)s",
                            {"job": job}).fetchone() == (0,)
