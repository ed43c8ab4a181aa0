-- Per-batch serialization, reconciliation of pending items, and completion.
-- Shared by register_batch, provision_content, record_validation_failure and
-- reconcile_batch, so that all of them follow exactly one set of rules.

-- Every call that changes a batch first takes this transaction-scoped lock on
-- the batch id. It exists before the batch does (an advisory lock needs no
-- row), which closes the race between "no tracker yet, store as pending" and a
-- concurrent registration. A call of one batch takes one such lock; a
-- micro-batch (els._apply_events) takes the locks of all its batches at once,
-- in ascending key order, so two callers can never deadlock on them, and calls
-- for different batches never wait for each other (barring a 64-bit hash
-- collision, which only serializes them).
CREATE OR REPLACE FUNCTION els._batch_lock_key(p_batch_id text)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN hashtextextended('els.batch:' || p_batch_id, 0);
COMMENT ON FUNCTION els._batch_lock_key(text) IS
    'The advisory lock key of a batch: the one definition used by _lock_batch, _try_lock_batch '
    'and els._apply_events (which takes the keys of a micro-batch in ascending order).';

CREATE OR REPLACE FUNCTION els._lock_batch(p_batch_id text)
RETURNS void
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pg_advisory_xact_lock(els._batch_lock_key(p_batch_id));
END;

-- The same lock without waiting: true when taken (held to the end of the
-- transaction), false when another transaction holds it. For callers that may
-- skip a busy batch and come back to it later (els.purge_history), so that they
-- never wait for an ingest call nor take part in a deadlock. Same key as above.
CREATE OR REPLACE FUNCTION els._try_lock_batch(p_batch_id text)
RETURNS boolean
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT pg_try_advisory_xact_lock(els._batch_lock_key(p_batch_id));
END;

-- Creates a registered batch's slots, numbered by the order of essay_ids, in
-- one set-based insert. p_some_exist: an older writer left some slots, so only
-- the missing ones are inserted. An essay id owned by another batch violates
-- the slot primary key; that becomes ELC02 naming both. Rows go in essay id
-- order so that two registrations racing for overlapping ids wait on each
-- other in the same order instead of deadlocking.
CREATE OR REPLACE FUNCTION els._create_slots(p_batch_id text, p_essay_ids text[], p_some_exist boolean)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_created integer;
    v_owned_essay text;
    v_owner_batch text;
BEGIN
    IF p_some_exist THEN
        INSERT INTO els.essay_slot (essay_id, batch_id, slot_no)
        SELECT u.id, p_batch_id, u.ord
          FROM unnest(p_essay_ids) WITH ORDINALITY AS u(id, ord)
         WHERE NOT EXISTS (SELECT FROM els.essay_slot AS s
                            WHERE s.essay_id = u.id AND s.batch_id = p_batch_id)
         ORDER BY u.id;
    ELSE
        INSERT INTO els.essay_slot (essay_id, batch_id, slot_no)
        SELECT u.id, p_batch_id, u.ord
          FROM unnest(p_essay_ids) WITH ORDINALITY AS u(id, ord)
         ORDER BY u.id;
    END IF;
    GET DIAGNOSTICS v_created = ROW_COUNT;
    RETURN v_created;
EXCEPTION WHEN unique_violation THEN
    SELECT s.essay_id, s.batch_id INTO v_owned_essay, v_owner_batch
      FROM els.essay_slot AS s
     WHERE s.essay_id = ANY (p_essay_ids) AND s.batch_id <> p_batch_id
     ORDER BY s.essay_id
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE;
    END IF;
    PERFORM els._reject('ELC02', 'an essay id already belongs to another batch',
        jsonb_build_object('field', 'essay_ids', 'reason', 'essay_owned_by_other_batch',
                           'essay_id', v_owned_essay, 'owner_batch_id', v_owner_batch));
    RETURN NULL;
END
$fn$;

-- The outbox events of SPEC 5 as _emit_events takes them, each written once here
-- and used by every path that emits it (reconciliation, the set-based ingest of
-- els._apply_items, completion by the last item or by a deadline). STABLE, as
-- jsonb_build_object is: an IMMUTABLE wrapper of it would not be inlined into the
-- statements that call it (a function call per event instead of an expression).
CREATE OR REPLACE FUNCTION els._slot_assigned_spec(
    p_batch_id text, p_essay_id text, p_file_upload_id text, p_text_storage_id text,
    p_original_file_name text, p_correlation_id text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN jsonb_build_object(
    'event_type', 'EssaySlotAssigned', 'key', p_batch_id,
    'identity', jsonb_build_array(p_batch_id, p_essay_id, p_text_storage_id),
    'correlation_id', p_correlation_id,
    'data', jsonb_build_object(
        'batch_id', p_batch_id, 'essay_id', p_essay_id,
        'file_upload_id', p_file_upload_id, 'text_storage_id', p_text_storage_id,
        'original_file_name', p_original_file_name));

CREATE OR REPLACE FUNCTION els._excess_spec(
    p_batch_id text, p_original_file_name text, p_text_storage_id text, p_correlation_id text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN jsonb_build_object(
    'event_type', 'ExcessContentProvisioned', 'key', p_batch_id,
    'identity', jsonb_build_array(p_batch_id, p_text_storage_id),
    'correlation_id', p_correlation_id,
    'data', jsonb_build_object(
        'batch_id', p_batch_id, 'original_file_name', p_original_file_name,
        'text_storage_id', p_text_storage_id, 'reason', 'NO_AVAILABLE_SLOT'));

-- BatchContentProvisioningCompleted of a batch as it stands now (its filled slots
-- in slot order): called once its last slot is closed, in the same transaction.
CREATE OR REPLACE FUNCTION els._completion_spec(p_batch_id text, p_reason text)
RETURNS jsonb
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT jsonb_build_object(
        'event_type', 'BatchContentProvisioningCompleted', 'key', p_batch_id,
        'identity', jsonb_build_array(p_batch_id),
        'correlation_id', t.correlation_id,
        'data', jsonb_build_object(
            'batch_id', p_batch_id,
            'provisioned_count', r.ready_count,
            'expected_count', t.expected_count,
            'course_code', t.course_code,
            'user_id', t.user_id,
            'class_type', t.class_type,
            'essays_for_processing', r.ready,
            'completion_reason', p_reason))
      FROM els.batch_tracker AS t
     CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_agg(jsonb_build_object('essay_id', s.essay_id,
                                                     'text_storage_id', s.text_storage_id)
                                  ORDER BY s.slot_no), '[]'::jsonb) AS ready,
               count(*)::integer AS ready_count
          FROM els.essay_slot AS s
         WHERE s.batch_id = p_batch_id AND s.status = 'ready_for_processing') AS r
     WHERE t.batch_id = p_batch_id;
END;

-- Fills a registered batch's empty slots with its pending items, oldest first
-- (arrival order, then id): pending content first, then pending failures.
-- What finds no empty slot becomes excess. Emits EssaySlotAssigned for each
-- filled slot and ExcessContentProvisioned for each excess content.
-- Set-based: two statements whatever the number of items.
CREATE OR REPLACE FUNCTION els._reconcile(
    p_batch_id text,
    OUT content_assigned integer, OUT failures_applied integer, OUT excess integer,
    OUT event_ids uuid[])
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_content_excess integer;
    v_failures_excess integer;
    v_events jsonb;
BEGIN
    content_assigned := 0;
    v_content_excess := 0;
    failures_applied := 0;
    v_failures_excess := 0;
    -- Each set-based statement only when there is something pending: most
    -- registrations find nothing, and one index probe is far cheaper than
    -- starting the statement (docs/BENCHMARKS.md).
    IF EXISTS (SELECT FROM els.essay_content AS c
                WHERE c.batch_id = p_batch_id AND c.disposition = 'pending') THEN
        WITH empty_slot AS (
            SELECT s.essay_id, row_number() OVER (ORDER BY s.slot_no) AS rn
            FROM els.essay_slot AS s
            WHERE s.batch_id = p_batch_id AND s.status = 'uploaded'
        ), pending AS (
            SELECT c.text_storage_id, row_number() OVER (ORDER BY c.arrival_seq, c.text_storage_id) AS rn
            FROM els.essay_content AS c
            WHERE c.batch_id = p_batch_id AND c.disposition = 'pending'
        ), disposed AS (
            UPDATE els.essay_content AS c
            SET disposition = CASE WHEN e.essay_id IS NULL THEN 'excess' ELSE 'assigned' END::els.item_disposition,
                essay_id = e.essay_id,
                disposed_at = now()
            FROM pending AS p
            LEFT JOIN empty_slot AS e ON e.rn = p.rn
            WHERE c.batch_id = p_batch_id AND c.text_storage_id = p.text_storage_id
            RETURNING c.*
        ), filled AS (
            UPDATE els.essay_slot AS s
            SET status = 'ready_for_processing', text_storage_id = d.text_storage_id, filled_at = now()
            FROM disposed AS d
            WHERE d.essay_id IS NOT NULL AND s.essay_id = d.essay_id
            RETURNING s.essay_id
        )
        SELECT (SELECT count(*) FROM filled)::integer,
               (count(*) FILTER (WHERE d.essay_id IS NULL))::integer,
               jsonb_agg(CASE WHEN d.essay_id IS NOT NULL THEN
                             els._slot_assigned_spec(p_batch_id, d.essay_id, d.file_upload_id,
                                                     d.text_storage_id, d.original_file_name,
                                                     d.correlation_id)
                         ELSE
                             els._excess_spec(p_batch_id, d.original_file_name, d.text_storage_id,
                                              d.correlation_id)
                         END ORDER BY d.arrival_seq, d.text_storage_id)
          INTO content_assigned, v_content_excess, v_events
          FROM disposed AS d;
    END IF;

    IF EXISTS (SELECT FROM els.validation_failure AS f
                WHERE f.batch_id = p_batch_id AND f.disposition = 'pending') THEN
        WITH empty_slot AS (
            SELECT s.essay_id, row_number() OVER (ORDER BY s.slot_no) AS rn
            FROM els.essay_slot AS s
            WHERE s.batch_id = p_batch_id AND s.status = 'uploaded'
        ), pending AS (
            SELECT f.file_upload_id, row_number() OVER (ORDER BY f.arrival_seq, f.file_upload_id) AS rn
            FROM els.validation_failure AS f
            WHERE f.batch_id = p_batch_id AND f.disposition = 'pending'
        ), disposed AS (
            UPDATE els.validation_failure AS f
            SET disposition = CASE WHEN e.essay_id IS NULL THEN 'excess' ELSE 'assigned' END::els.item_disposition,
                essay_id = e.essay_id,
                disposed_at = now()
            FROM pending AS p
            LEFT JOIN empty_slot AS e ON e.rn = p.rn
            WHERE f.batch_id = p_batch_id AND f.file_upload_id = p.file_upload_id
            RETURNING f.essay_id, f.file_upload_id
        ), closed AS (
            UPDATE els.essay_slot AS s
            SET status = 'content_ingestion_failed', failed_file_upload_id = d.file_upload_id,
                filled_at = now()
            FROM disposed AS d
            WHERE d.essay_id IS NOT NULL AND s.essay_id = d.essay_id
            RETURNING s.essay_id
        )
        SELECT (SELECT count(*) FROM closed)::integer, (count(*) FILTER (WHERE d.essay_id IS NULL))::integer
          INTO failures_applied, v_failures_excess
          FROM disposed AS d;
    END IF;

    excess := v_content_excess + v_failures_excess;
    event_ids := CASE WHEN v_events IS NULL THEN '{}'::uuid[] ELSE els._emit_events(v_events) END;
END
$fn$;

-- If the batch is registered, has its slots, none empty, and has not completed
-- yet: stamp it complete and emit its one BatchContentProvisioningCompleted.
-- Returns whether the batch is complete after the call, and the event id when
-- this call completed it. The completed_at stamp and the outbox's unique index
-- on completions make a second completion impossible. p_reason is the
-- completion_reason (SPEC sections 5 and 10): all_slots_closed when the last
-- item closed the last empty slot (every ingest path), deadline when
-- els.close_batch / els.close_overdue_batches timed the empty slots out.
CREATE OR REPLACE FUNCTION els._complete_if_done(
    p_batch_id text, p_reason text DEFAULT 'all_slots_closed', OUT complete boolean, OUT event_id uuid)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_tracker record;
BEGIN
    -- Most calls fill a slot that is not the last: one probe of the partial
    -- index of empty slots answers them without reading the tracker.
    IF EXISTS (SELECT FROM els.essay_slot AS s WHERE s.batch_id = p_batch_id AND s.status = 'uploaded') THEN
        complete := false;
        RETURN;
    END IF;
    -- Only the columns needed: a whole row would detoast essay_ids (up to
    -- 10,000 ids) on every content event of a big batch.
    SELECT t.completed_at, t.expected_count
      INTO v_tracker FROM els.batch_tracker AS t WHERE t.batch_id = p_batch_id;
    IF NOT FOUND THEN
        complete := false;
        RETURN;
    END IF;
    IF v_tracker.completed_at IS NOT NULL THEN
        complete := true;
        RETURN;
    END IF;
    -- Complete means no slot is empty and every expected slot exists: a
    -- tracker whose slots an older writer left missing (all or some) is not.
    IF (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = p_batch_id)
       <> v_tracker.expected_count THEN
        complete := false;
        RETURN;
    END IF;

    UPDATE els.batch_tracker AS t SET completed_at = now(), completion_reason = p_reason
     WHERE t.batch_id = p_batch_id;
    event_id := (els._emit_events(jsonb_build_array(els._completion_spec(p_batch_id, p_reason))))[1];
    complete := true;
END
$fn$;

REVOKE ALL ON FUNCTION els._batch_lock_key(text), els._lock_batch(text), els._try_lock_batch(text),
    els._create_slots(text, text[], boolean),
    els._slot_assigned_spec(text, text, text, text, text, text), els._excess_spec(text, text, text, text),
    els._completion_spec(text, text),
    els._reconcile(text),
    els._complete_if_done(text, text) FROM PUBLIC;
