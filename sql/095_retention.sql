-- Retention (SPEC section 10): no table grows forever, and no purge can make a batch
-- complete twice.
--
-- els.purge_history(older_than) deletes, in the caller's one transaction:
--   1. complete batches whose completion is at least older_than old: tracker, slots,
--      content and failure ledgers; a tombstone (els.batch_tombstone) keeps the id,
--      the registration identity and the final counts, so that a redelivered
--      registration is still a duplicate (ELC01 if it differs) and late content or
--      failures are excess, forever;
--   2. ledger rows without a tracker received at least older_than ago: pending items
--      of batches never registered, and late (excess) items of purged batches, found
--      through the tombstone's last_late_item_at;
--   3. outbox rows published at least older_than ago. Unpublished rows are never
--      deleted, and neither is anything of an incomplete batch (close it first).
-- Each batch is deleted under its per-batch lock, the one the ingest calls take, so a
-- purge and an ingest call of the same batch serialize. The lock is only tried
-- (els._try_lock_batch): a batch an ingest call holds right now is skipped and purged
-- by a later call, so a purge never waits for ingest nor deadlocks with another purge
-- or a close. Bounded per call, so that one call holds few locks and a short
-- transaction: at most 1000 batches (of parts 1 and 2 together, parts 1 first; part 1
-- also stops once ~100,000 slots went) and 100,000 outbox rows. Idempotent: call it
-- again until it returns zeros (the worker's maintenance loop calls it on a schedule).
-- Returns {"batches_purged", "pending_purged", "outbox_purged"}; pending_purged counts
-- the ledger rows of part 2.

CREATE OR REPLACE FUNCTION els.purge_history(older_than interval)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    c_max_batches constant integer := 1000;
    c_max_slots constant bigint := 100000;
    c_max_outbox constant integer := 100000;
    v_cutoff timestamptz;
    v_batch record;
    v_batch_id text;
    v_locked integer := 0;
    v_slots bigint := 0;
    v_batches integer := 0;
    v_pending bigint := 0;
    v_rows bigint;
    v_outbox bigint;
BEGIN
    IF older_than IS NULL THEN
        PERFORM els._reject('ELV02', 'required argument older_than is null',
            jsonb_build_object('field', 'older_than', 'reason', 'missing'));
    END IF;
    IF older_than < interval '0' THEN
        PERFORM els._reject('ELV03', 'older_than must not be negative',
            jsonb_build_object('field', 'older_than', 'reason', 'out_of_range', 'actual', older_than::text));
    END IF;
    v_cutoff := now() - older_than;

    -- 1. complete batches, oldest completion first (partial index batch_tracker_completed_idx)
    FOR v_batch IN
        SELECT t.batch_id, t.expected_count
          FROM els.batch_tracker AS t
         WHERE t.completed_at IS NOT NULL AND t.completed_at <= v_cutoff
         ORDER BY t.completed_at, t.batch_id
         LIMIT c_max_batches
    LOOP
        EXIT WHEN v_slots >= c_max_slots;
        CONTINUE WHEN NOT els._try_lock_batch(v_batch.batch_id);
        v_locked := v_locked + 1;
        -- under the lock: still there (a concurrent purge may have taken it)? A
        -- complete batch never becomes incomplete again.
        CONTINUE WHEN NOT EXISTS (SELECT FROM els.batch_tracker AS t
                                   WHERE t.batch_id = v_batch.batch_id AND t.completed_at IS NOT NULL);
        -- One statement, so that the foreign keys between slots and ledgers (both
        -- ways) are checked once everything of the batch is gone (a data-modifying
        -- WITH runs to completion whether or not the outer statement reads it).
        WITH slots AS (
            DELETE FROM els.essay_slot AS s WHERE s.batch_id = v_batch.batch_id
            RETURNING s.essay_id, s.status, s.failure_code
        ), retired AS (
            -- its essay ids stay taken (migration 0009): registration probes these
            INSERT INTO els.retired_essay (essay_id, batch_id)
            SELECT s.essay_id, v_batch.batch_id FROM slots AS s
        ), contents AS (
            DELETE FROM els.essay_content AS c WHERE c.batch_id = v_batch.batch_id RETURNING 1
        ), failures AS (
            DELETE FROM els.validation_failure AS f WHERE f.batch_id = v_batch.batch_id RETURNING 1
        ), tracker AS (
            DELETE FROM els.batch_tracker AS t WHERE t.batch_id = v_batch.batch_id
            RETURNING t.*
        )
        INSERT INTO els.batch_tombstone (
            batch_id, expected_count, essay_ids, course_code, user_id, org_id, class_id, class_type,
            correlation_id, registered_at, completed_at, completion_reason,
            filled_count, failed_count, timed_out_count)
        SELECT tr.batch_id, tr.expected_count, tr.essay_ids, tr.course_code, tr.user_id, tr.org_id,
               tr.class_id, tr.class_type, tr.correlation_id, tr.registered_at, tr.completed_at,
               tr.completion_reason,
               (SELECT count(*) FROM slots AS s WHERE s.status = 'ready_for_processing'),
               (SELECT count(*) FROM slots AS s
                 WHERE s.status = 'content_ingestion_failed' AND s.failure_code IS NULL),
               (SELECT count(*) FROM slots AS s WHERE s.failure_code IS NOT NULL)
          FROM tracker AS tr;
        v_batches := v_batches + 1;
        v_slots := v_slots + v_batch.expected_count;
    END LOOP;

    -- 2a. pending items of batches never registered. A registered batch has none,
    -- except a tracker an older writer left without its slots: its pending items wait
    -- for els.reconcile_batch (or a close) and are kept.
    FOR v_batch_id IN
        SELECT p.batch_id FROM (
            SELECT c.batch_id FROM els.essay_content AS c
             WHERE c.disposition = 'pending' AND c.received_at <= v_cutoff
            UNION
            SELECT f.batch_id FROM els.validation_failure AS f
             WHERE f.disposition = 'pending' AND f.received_at <= v_cutoff) AS p
         WHERE NOT EXISTS (SELECT FROM els.batch_tracker AS t WHERE t.batch_id = p.batch_id)
         ORDER BY p.batch_id
         LIMIT greatest(c_max_batches - v_locked, 0)
    LOOP
        CONTINUE WHEN NOT els._try_lock_batch(v_batch_id);
        v_locked := v_locked + 1;
        -- under the lock: registered meanwhile? Then its items are no longer pending
        -- (the registration reconciled them), and a tracker is there to keep them.
        CONTINUE WHEN EXISTS (SELECT FROM els.batch_tracker AS t WHERE t.batch_id = v_batch_id);
        DELETE FROM els.essay_content AS c
         WHERE c.batch_id = v_batch_id AND c.disposition = 'pending' AND c.received_at <= v_cutoff;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_pending := v_pending + v_rows;
        DELETE FROM els.validation_failure AS f
         WHERE f.batch_id = v_batch_id AND f.disposition = 'pending' AND f.received_at <= v_cutoff;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_pending := v_pending + v_rows;
    END LOOP;

    -- 2b. late items of purged batches, once the latest of them is old enough
    FOR v_batch_id IN
        SELECT b.batch_id FROM els.batch_tombstone AS b
         WHERE b.last_late_item_at IS NOT NULL AND b.last_late_item_at <= v_cutoff
         ORDER BY b.last_late_item_at, b.batch_id
         LIMIT greatest(c_max_batches - v_locked, 0)
    LOOP
        CONTINUE WHEN NOT els._try_lock_batch(v_batch_id);
        v_locked := v_locked + 1;
        -- under the lock: a late item may have arrived meanwhile (then it waits for next time)
        CONTINUE WHEN NOT EXISTS (SELECT FROM els.batch_tombstone AS b
                                   WHERE b.batch_id = v_batch_id AND b.last_late_item_at <= v_cutoff);
        DELETE FROM els.essay_content AS c WHERE c.batch_id = v_batch_id;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_pending := v_pending + v_rows;
        DELETE FROM els.validation_failure AS f WHERE f.batch_id = v_batch_id;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_pending := v_pending + v_rows;
        UPDATE els.batch_tombstone AS b SET last_late_item_at = NULL WHERE b.batch_id = v_batch_id;
    END LOOP;

    -- 3. published outbox rows; the relay only ever touches unpublished ones
    DELETE FROM els.event_outbox AS o
     WHERE o.id IN (SELECT o2.id FROM els.event_outbox AS o2
                     WHERE o2.published_at IS NOT NULL AND o2.published_at <= v_cutoff
                     LIMIT c_max_outbox);
    GET DIAGNOSTICS v_outbox = ROW_COUNT;

    RETURN jsonb_build_object('batches_purged', v_batches, 'pending_purged', v_pending,
                              'outbox_purged', v_outbox);
END
$fn$;
COMMENT ON FUNCTION els.purge_history(interval) IS
    'Deletes complete batches (keeping a tombstone), pending items of never-registered batches '
    'and published outbox rows, each at least older_than old; never unpublished rows nor incomplete '
    'batches. Bounded per call (1000 batches, 100,000 outbox rows): call until it returns zeros.';

REVOKE ALL ON FUNCTION els.purge_history(interval) FROM PUBLIC;
-- SPEC 8/10: the worker's maintenance loop may purge; els_readonly may not.
GRANT EXECUTE ON FUNCTION els.purge_history(interval) TO els_worker;
