-- Deadlines (SPEC section 10): a batch whose content never arrives must not wait
-- forever. Closing a batch turns each of its empty slots into
-- content_ingestion_failed with failure code CONTENT_TIMEOUT (a code only the
-- database records: no incoming event may carry it) and completes the batch, which
-- emits its one BatchContentProvisioningCompleted with completion_reason 'deadline'.
-- Whatever arrives afterwards finds no empty slot and is excess, as for any complete
-- batch. Each batch is closed under the same per-batch lock as the ingest calls
-- (els._lock_batch), so a close and an ingest call of one batch serialize, and
-- closing is idempotent: a closed batch is complete, and a second close finds it so.

-- Closes one registered batch; the caller holds its lock. A tracker an older writer
-- left without all its slots, or with pending items, is re-driven first, exactly as
-- els.reconcile_batch does, so the slots that content already exists for are filled,
-- not timed out. When an essay id of such a tracker now belongs to another batch
-- (ELC02), p_raise decides: raise it (els.close_batch: the DBA sees why) or return
-- outcome 'unrepairable' with a WARNING (els.close_overdue_batches: one broken legacy
-- batch must not stop the others from closing). Outcomes: closed, already_complete,
-- unknown (no tracker and no tombstone), unrepairable.
CREATE OR REPLACE FUNCTION els._close_locked_batch(
    p_batch_id text, p_raise boolean,
    OUT outcome text, OUT slots_timed_out integer, OUT event_ids uuid[])
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_tracker record;
    v_existing bigint;
    v_essay_ids text[];
    v_reconciled record;
    v_completion record;
BEGIN
    slots_timed_out := 0;
    event_ids := '{}'::uuid[];
    SELECT t.completed_at, t.expected_count INTO v_tracker
      FROM els.batch_tracker AS t WHERE t.batch_id = p_batch_id;
    IF NOT FOUND THEN
        outcome := CASE WHEN EXISTS (SELECT FROM els.batch_tombstone AS b WHERE b.batch_id = p_batch_id)
                        THEN 'already_complete' ELSE 'unknown' END;
        RETURN;
    END IF;
    IF v_tracker.completed_at IS NOT NULL THEN
        outcome := 'already_complete';
        RETURN;
    END IF;

    SELECT count(*) INTO v_existing FROM els.essay_slot AS s WHERE s.batch_id = p_batch_id;
    IF v_existing <> v_tracker.expected_count THEN
        SELECT t.essay_ids INTO v_essay_ids FROM els.batch_tracker AS t WHERE t.batch_id = p_batch_id;
        IF p_raise THEN
            PERFORM els._create_slots(p_batch_id, v_essay_ids, v_existing > 0);
        ELSE
            BEGIN
                PERFORM els._create_slots(p_batch_id, v_essay_ids, v_existing > 0);
            EXCEPTION WHEN SQLSTATE 'ELC02' THEN
                RAISE WARNING 'batch % not closed: its missing slots cannot be created (an essay id '
                              'belongs to another batch); see els.batch_report', p_batch_id;
                outcome := 'unrepairable';
                RETURN;
            END;
        END IF;
    END IF;
    v_reconciled := els._reconcile(p_batch_id);

    UPDATE els.essay_slot AS s
       SET status = 'content_ingestion_failed', failure_code = 'CONTENT_TIMEOUT', filled_at = now()
     WHERE s.batch_id = p_batch_id AND s.status = 'uploaded';
    GET DIAGNOSTICS slots_timed_out = ROW_COUNT;

    -- re-driving alone may have closed the last slot: then the last item completed it
    v_completion := els._complete_if_done(
        p_batch_id, CASE WHEN slots_timed_out > 0 THEN 'deadline' ELSE 'all_slots_closed' END);
    event_ids := v_reconciled.event_ids
                 || CASE WHEN v_completion.event_id IS NULL THEN '{}'::uuid[]
                         ELSE ARRAY[v_completion.event_id] END;
    outcome := 'closed';
END
$fn$;

-- els.close_batch(batch_id): a DBA giving up on a batch's missing content, now,
-- whatever its age. {"batch_id", "outcome": "closed" | "already_complete",
-- "slots_timed_out", "events"}; an unknown batch raises ELV03 (field batch_id,
-- reason unknown_batch). A purged batch (tombstone) is already_complete.
CREATE OR REPLACE FUNCTION els.close_batch(batch_id text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_batch_id text := close_batch.batch_id;
    v_closed record;
BEGIN
    IF v_batch_id IS NULL THEN
        PERFORM els._reject('ELV02', 'required argument batch_id is null',
            jsonb_build_object('field', 'batch_id', 'reason', 'missing'));
    END IF;
    PERFORM els._lock_batch(v_batch_id);
    v_closed := els._close_locked_batch(v_batch_id, true);
    IF v_closed.outcome = 'unknown' THEN
        PERFORM els._reject('ELV03', 'unknown batch: no batch with this id was registered',
            jsonb_build_object('field', 'batch_id', 'reason', 'unknown_batch',
                               'batch_id', left(v_batch_id, 300)));
    END IF;
    RETURN jsonb_build_object(
        'batch_id', v_batch_id,
        'outcome', v_closed.outcome,
        'slots_timed_out', v_closed.slots_timed_out,
        'events', to_jsonb(v_closed.event_ids));
END
$fn$;
COMMENT ON FUNCTION els.close_batch(text) IS
    'Closes one batch now: empty slots -> content_ingestion_failed (CONTENT_TIMEOUT), completion '
    'with completion_reason deadline. Outcomes: closed, already_complete. Unknown batch: ELV03.';

-- els.close_overdue_batches(older_than, max_batches): every registered, incomplete
-- batch registered at least older_than ago, oldest first, at most max_batches, is
-- closed as by els.close_batch. Batches are locked one by one in one fixed order
-- (registration time, then id), which is also the order any concurrent caller uses,
-- so two callers cannot deadlock; a batch that completed while we waited for its lock
-- is skipped. The locks are held until the caller's transaction ends, so max_batches
-- bounds how long the batches it closed stay blocked: the worker calls it in chunks.
-- The oldest-first scan reads only incomplete batches (partial index
-- batch_tracker_incomplete_idx). {"batches_closed", "slots_timed_out", "events"}.
CREATE OR REPLACE FUNCTION els.close_overdue_batches(older_than interval, max_batches integer DEFAULT 1000)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_batch_id text;
    v_closed record;
    v_batches integer := 0;
    v_slots integer := 0;
    v_events uuid[] := '{}'::uuid[];
BEGIN
    IF older_than IS NULL THEN
        PERFORM els._reject('ELV02', 'required argument older_than is null',
            jsonb_build_object('field', 'older_than', 'reason', 'missing'));
    END IF;
    IF older_than < interval '0' THEN
        PERFORM els._reject('ELV03', 'older_than must not be negative',
            jsonb_build_object('field', 'older_than', 'reason', 'out_of_range', 'actual', older_than::text));
    END IF;
    IF max_batches IS NULL OR max_batches < 0 THEN
        PERFORM els._reject('ELV03', 'max_batches must be an integer >= 0',
            jsonb_build_object('field', 'max_batches', 'reason', 'out_of_range', 'actual', max_batches));
    END IF;

    FOR v_batch_id IN
        SELECT t.batch_id
          FROM els.batch_tracker AS t
         WHERE t.completed_at IS NULL AND t.registered_at <= now() - older_than
         ORDER BY t.registered_at, t.batch_id
         LIMIT max_batches
    LOOP
        PERFORM els._lock_batch(v_batch_id);
        v_closed := els._close_locked_batch(v_batch_id, false);
        IF v_closed.outcome = 'closed' THEN
            v_batches := v_batches + 1;
            v_slots := v_slots + v_closed.slots_timed_out;
            v_events := v_events || v_closed.event_ids;
        END IF;
    END LOOP;
    RETURN jsonb_build_object('batches_closed', v_batches, 'slots_timed_out', v_slots,
                              'events', to_jsonb(v_events));
END
$fn$;
COMMENT ON FUNCTION els.close_overdue_batches(interval, integer) IS
    'Closes (as els.close_batch) every incomplete batch registered at least older_than ago, oldest '
    'first, at most max_batches. Returns batches_closed, slots_timed_out, events.';

-- els.batch_health(stuck_after): the worker's gauges in one cheap call.
-- {"incomplete_batches", "stuck_batches" (incomplete and registered at least
-- stuck_after ago), "oldest_incomplete_age_seconds" (0 when none)}. Reads the
-- partial index of incomplete batches only (an index-only scan once vacuumed),
-- never the completed ones.
CREATE OR REPLACE FUNCTION els.batch_health(stuck_after interval)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT jsonb_build_object(
               'incomplete_batches', count(*),
               'stuck_batches', count(*) FILTER (WHERE t.registered_at <= now() - stuck_after),
               'oldest_incomplete_age_seconds',
               coalesce(round(extract(epoch FROM now() - min(t.registered_at)), 3), 0))
      FROM els.batch_tracker AS t
     WHERE t.completed_at IS NULL;
END;
COMMENT ON FUNCTION els.batch_health(interval) IS
    'incomplete_batches, stuck_batches (incomplete, registered at least stuck_after ago) and '
    'oldest_incomplete_age_seconds (0 when none), from the index of incomplete batches.';

REVOKE ALL ON FUNCTION els._close_locked_batch(text, boolean), els.close_batch(text),
    els.close_overdue_batches(interval, integer), els.batch_health(interval) FROM PUBLIC;
-- SPEC 8/10: the worker's maintenance loop may close batches; els_readonly may not.
GRANT EXECUTE ON FUNCTION els.close_batch(text), els.close_overdue_batches(interval, integer)
    TO els_worker;
GRANT EXECUTE ON FUNCTION els.batch_health(interval) TO els_worker, els_readonly;
