"""Deadlines and retention (SPEC section 10): no batch waits forever, no table grows forever.

- ``els.batch_tracker.completion_reason``: why a batch completed, ``all_slots_closed``
  (its last item closed the last empty slot) or ``deadline`` (els.close_batch /
  els.close_overdue_batches gave up on the missing content). Set together with
  completed_at, by the one completion builder (els._complete_if_done). Batches that
  completed before this migration completed by their last item: backfilled so (this
  UPDATE rewrites every completed tracker row once; on a big table run it in a quiet
  hour).
- ``els.essay_slot.failure_code``: a slot the database closed itself carries the code
  that says why, ``CONTENT_TIMEOUT``. It is recorded by the database only: the incoming
  enum of validation_error_code (SPEC section 2, els.validation_failure's check and
  record_validation_failure's validation) does not contain it, so no event can use it.
  A failed slot is closed by exactly one of a validation failure or that code.
- ``els.batch_tombstone``: what els.purge_history keeps of a purged batch, its id and
  registration identity (plus its final counts, for els.batch_report), so that a
  redelivered registration still answers ``duplicate`` (ELC01 if its identity differs)
  and content or failures for it are ``excess``: one completion per batch, forever.
  ``last_late_item_at`` marks tombstones whose batch got late items after the purge,
  so that the next purge finds those ledger rows through an index.
- Partial indexes: incomplete batches by registration time (els.close_overdue_batches
  oldest first, els.batch_health without reading completed batches) and complete
  batches by completion time (els.purge_history).

``els._complete_if_done`` gains a reason parameter, so the one-argument version is
dropped here; the post-apply reload of sql/ creates the new one.

Rollback restores the previous release's functions (migrations/0004_rollback/ holds
its sql/ files, exactly as they were at 0003, loaded whole like sql/), since BEGIN ATOMIC
bodies (batch_report) depend on the new columns and the plpgsql ones read them. The
previous schema cannot say "closed by timeout": a timed-out slot becomes a recorded
failure with code UNKNOWN_VALIDATION_ERROR, file_upload_id ``els-timeout:<essay id>``
and detail ``{"failure_code": "CONTENT_TIMEOUT"}``, so counts and completions stay as
they are; applying this migration again turns them back into timed-out slots (and
their batches' completion_reason into deadline). Tombstones are dropped with their table: after a rollback a purged batch's
registration would register it anew, so purge nothing you may roll back over.
"""

from pathlib import Path

from yoyo import step

__depends__ = {"0003_outbox_set_aside"}

PREVIOUS_FUNCTIONS = Path(__file__).resolve().parent / "0004_rollback"

CREATE = """
SET LOCAL ROLE els_owner;

ALTER TABLE els.essay_slot
    DROP CONSTRAINT essay_slot_status_matches_filling,
    ADD COLUMN failure_code text
        CONSTRAINT essay_slot_failure_code_check CHECK (failure_code IN ('CONTENT_TIMEOUT')),
    ADD CONSTRAINT essay_slot_status_matches_filling CHECK (
        CASE status
            WHEN 'uploaded' THEN text_storage_id IS NULL AND failed_file_upload_id IS NULL
                                 AND failure_code IS NULL
            WHEN 'ready_for_processing' THEN text_storage_id IS NOT NULL AND failed_file_upload_id IS NULL
                                             AND failure_code IS NULL
            WHEN 'content_ingestion_failed' THEN text_storage_id IS NULL
                                                 AND (failed_file_upload_id IS NULL) <> (failure_code IS NULL)
        END);
-- A rollback of this migration kept timed-out slots as recorded failures (see
-- DROP_COLUMNS below); applied again, they are timed-out slots again.
UPDATE els.essay_slot AS s SET failed_file_upload_id = NULL, failure_code = 'CONTENT_TIMEOUT'
  FROM els.validation_failure AS f
 WHERE f.batch_id = s.batch_id AND f.file_upload_id = s.failed_file_upload_id
   AND f.file_upload_id = 'els-timeout:' || s.essay_id
   AND f.validation_error_code = 'UNKNOWN_VALIDATION_ERROR'
   AND f.validation_error_detail = '{"failure_code": "CONTENT_TIMEOUT"}'::jsonb;
DELETE FROM els.validation_failure AS f
 WHERE f.file_upload_id = 'els-timeout:' || f.essay_id
   AND f.validation_error_code = 'UNKNOWN_VALIDATION_ERROR'
   AND f.validation_error_detail = '{"failure_code": "CONTENT_TIMEOUT"}'::jsonb
   AND EXISTS (SELECT FROM els.essay_slot AS s
                WHERE s.essay_id = f.essay_id AND s.failure_code = 'CONTENT_TIMEOUT');

ALTER TABLE els.batch_tracker
    ADD COLUMN completion_reason text
        CONSTRAINT batch_tracker_completion_reason_check
        CHECK (completion_reason IN ('all_slots_closed', 'deadline'));
-- Batches completed before: by their last item, unless they have timed-out slots
-- (completed by a deadline, before a rollback of this migration).
UPDATE els.batch_tracker AS t
   SET completion_reason = CASE WHEN EXISTS (SELECT FROM els.essay_slot AS s
                                              WHERE s.batch_id = t.batch_id
                                                AND s.failure_code IS NOT NULL)
                                THEN 'deadline' ELSE 'all_slots_closed' END
 WHERE t.completed_at IS NOT NULL;
ALTER TABLE els.batch_tracker
    ADD CONSTRAINT batch_tracker_completion_has_reason
        CHECK ((completed_at IS NULL) = (completion_reason IS NULL));
COMMENT ON COLUMN els.batch_tracker.completion_reason IS
    'Why the batch completed: all_slots_closed (its last item) or deadline (els.close_batch, '
    'els.close_overdue_batches). NULL while incomplete.';
CREATE INDEX batch_tracker_incomplete_idx ON els.batch_tracker (registered_at, batch_id)
    WHERE completed_at IS NULL;
CREATE INDEX batch_tracker_completed_idx ON els.batch_tracker (completed_at, batch_id)
    WHERE completed_at IS NOT NULL;
COMMENT ON COLUMN els.essay_slot.failure_code IS
    'Set when the database itself closed the slot: CONTENT_TIMEOUT (the batch was closed by its '
    'deadline). Not an incoming validation_error_code: no event can set it.';

CREATE TABLE els.batch_tombstone (
    batch_id            text        PRIMARY KEY,
    expected_count      integer     NOT NULL,
    essay_ids           text[]      NOT NULL,
    course_code         text        NOT NULL,
    user_id             text        NOT NULL,
    org_id              text,
    class_id            text,
    class_type          text        NOT NULL,
    correlation_id      text        NOT NULL,
    registered_at       timestamptz NOT NULL,
    completed_at        timestamptz NOT NULL,
    completion_reason   text        NOT NULL
        CHECK (completion_reason IN ('all_slots_closed', 'deadline')),
    filled_count        integer     NOT NULL,
    failed_count        integer     NOT NULL,
    timed_out_count     integer     NOT NULL,
    purged_at           timestamptz NOT NULL DEFAULT now(),
    last_late_item_at   timestamptz
);
COMMENT ON TABLE els.batch_tombstone IS
    'One row per batch purged by els.purge_history: its registration identity and final counts, '
    'kept forever so that a redelivered registration is a duplicate (ELC01 if it differs) and '
    'late content or failures are excess.';
COMMENT ON COLUMN els.batch_tombstone.last_late_item_at IS
    'When content or a failure last arrived for the batch after its purge (kept as excess); '
    'the next purge older than this deletes those rows and clears it.';
CREATE INDEX batch_tombstone_late_idx ON els.batch_tombstone (last_late_item_at)
    WHERE last_late_item_at IS NOT NULL;
REVOKE ALL ON els.batch_tombstone FROM PUBLIC;
GRANT SELECT ON els.batch_tombstone TO els_readonly;

DROP FUNCTION IF EXISTS els._complete_if_done(text);
"""

DROP_NEW_FUNCTIONS = """
SET LOCAL ROLE els_owner;
-- every function and view of els, whatever release added it (the previous release's
-- files below recreate all of theirs), as migrations/post-apply.py does
DO $drop$
DECLARE
    v_objects text[];
    v_object text;
BEGIN
    SELECT array_agg(o.stmt ORDER BY o.stmt DESC) INTO v_objects
      FROM (SELECT 'VIEW ' || c.oid::regclass::text AS stmt
              FROM pg_catalog.pg_class AS c
             WHERE c.relnamespace = 'els'::regnamespace AND c.relkind IN ('v', 'm')
            UNION ALL
            SELECT 'FUNCTION ' || p.oid::regprocedure::text
              FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace = 'els'::regnamespace AND p.prokind IN ('f', 'p')) AS o;
    FOREACH v_object IN ARRAY coalesce(v_objects, '{}') LOOP
        EXECUTE format('DROP %s IF EXISTS %s CASCADE', split_part(v_object, ' ', 1),
                       substr(v_object, strpos(v_object, ' ') + 1));
    END LOOP;
END
$drop$;
"""

DROP_COLUMNS = """
SET LOCAL ROLE els_owner;
-- what the previous schema can hold of a timed-out slot: a recorded failure
INSERT INTO els.validation_failure (
    batch_id, file_upload_id, disposition, essay_id, original_file_name, validation_error_code,
    validation_error_detail, correlation_id, received_at, disposed_at)
SELECT s.batch_id, 'els-timeout:' || s.essay_id, 'assigned', s.essay_id, '(content timed out)',
       'UNKNOWN_VALIDATION_ERROR', '{"failure_code": "CONTENT_TIMEOUT"}'::jsonb, t.correlation_id,
       s.filled_at, s.filled_at
  FROM els.essay_slot AS s JOIN els.batch_tracker AS t ON t.batch_id = s.batch_id
 WHERE s.failure_code IS NOT NULL;
ALTER TABLE els.essay_slot DROP CONSTRAINT essay_slot_status_matches_filling;
UPDATE els.essay_slot SET failed_file_upload_id = 'els-timeout:' || essay_id, failure_code = NULL
 WHERE failure_code IS NOT NULL;
ALTER TABLE els.essay_slot
    DROP COLUMN failure_code,
    ADD CONSTRAINT essay_slot_status_matches_filling CHECK (
        CASE status
            WHEN 'uploaded' THEN text_storage_id IS NULL AND failed_file_upload_id IS NULL
            WHEN 'ready_for_processing' THEN text_storage_id IS NOT NULL AND failed_file_upload_id IS NULL
            WHEN 'content_ingestion_failed' THEN text_storage_id IS NULL AND failed_file_upload_id IS NOT NULL
        END);
DROP TABLE els.batch_tombstone;
DROP INDEX els.batch_tracker_incomplete_idx;
DROP INDEX els.batch_tracker_completed_idx;
ALTER TABLE els.batch_tracker DROP COLUMN completion_reason;
"""


def restore_previous_functions(conn: object) -> None:
    """The previous release's function files, each sent whole (as post-apply does)."""
    cursor = conn.cursor()  # type: ignore[attr-defined]
    cursor.execute(DROP_NEW_FUNCTIONS)
    cursor.execute("SET LOCAL ROLE els_owner")
    for path in sorted(PREVIOUS_FUNCTIONS.glob("*.sql")):
        cursor.execute(path.read_text(encoding="utf-8"))
    cursor.execute(DROP_COLUMNS)
    cursor.execute("RESET ROLE")


steps = [step(CREATE, restore_previous_functions)]
