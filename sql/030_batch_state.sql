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

-- The first of p_essay_ids (by id) that a batch other than p_batch_id holds (a slot)
-- or held (its tombstone, after purge_history: one batch per essay id, forever), that
-- batch, and whether it was purged. No row: none.
-- (PL/pgSQL, not BEGIN ATOMIC: a migration's rollback may drop els.retired_essay)
CREATE OR REPLACE FUNCTION els._essay_owner_elsewhere(p_batch_id text, p_essay_ids text[])
RETURNS TABLE (essay_id text, batch_id text, purged boolean)
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    RETURN QUERY
    SELECT o.essay_id, o.batch_id, o.purged
      FROM (SELECT s.essay_id, s.batch_id, false AS purged
              FROM els.essay_slot AS s
             WHERE s.essay_id = ANY (p_essay_ids) AND s.batch_id <> p_batch_id
            UNION ALL
            -- a purged batch's ids (migration 0009): a primary-key probe each
            SELECT r.essay_id, r.batch_id, true
              FROM els.retired_essay AS r
             WHERE r.essay_id = ANY (p_essay_ids) AND r.batch_id <> p_batch_id) AS o
     ORDER BY o.purged, o.essay_id
     LIMIT 1;
END
$fn$;

-- The DETAIL of ELC02 (SPEC 4), the one place it is written.
CREATE OR REPLACE FUNCTION els._essay_owner_detail(p_essay_id text, p_owner_batch_id text, p_purged boolean)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN jsonb_build_object('field', 'essay_ids', 'reason', 'essay_owned_by_other_batch',
                          'essay_id', p_essay_id, 'owner_batch_id', p_owner_batch_id)
       || CASE WHEN p_purged THEN '{"purged": true}'::jsonb ELSE '{}'::jsonb END;

-- Creates a registered batch's missing slots (a tracker an older writer left without
-- them, re-driven or closed by a DBA), numbered by the order of essay_ids, in one
-- set-based insert; p_some_exist: only the missing ones. An essay id another batch
-- holds (the slot primary key) or held (its tombstone, read after the insert, so that a
-- purge that committed meanwhile is seen) raises ELC02 naming both. Rows go in essay id
-- order so that two registrations racing for overlapping ids wait on each other in
-- the same order instead of deadlocking.
CREATE OR REPLACE FUNCTION els._create_slots(p_batch_id text, p_essay_ids text[], p_some_exist boolean)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_created integer;
    v_owner record;
BEGIN
    BEGIN
        INSERT INTO els.essay_slot (essay_id, batch_id, slot_no)
        SELECT u.id, p_batch_id, u.ord
          FROM unnest(p_essay_ids) WITH ORDINALITY AS u(id, ord)
         WHERE NOT p_some_exist
            OR NOT EXISTS (SELECT FROM els.essay_slot AS s
                            WHERE s.essay_id = u.id AND s.batch_id = p_batch_id)
         ORDER BY u.id;
        GET DIAGNOSTICS v_created = ROW_COUNT;
    EXCEPTION WHEN unique_violation THEN
        v_created := NULL;
    END;
    SELECT o.essay_id, o.batch_id, o.purged INTO v_owner
      FROM els._essay_owner_elsewhere(p_batch_id, p_essay_ids) AS o;
    IF FOUND THEN
        PERFORM els._reject('ELC02', 'an essay id already belongs to another batch',
                            els._essay_owner_detail(v_owner.essay_id, v_owner.batch_id, v_owner.purged));
    ELSIF v_created IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'unique_violation',
            MESSAGE = format('slots of batch %s: a unique violation without another owner', p_batch_id);
    END IF;
    IF v_created > 0 THEN
        -- behind the proxy: the claims on the other partitions (046_essay_claims.sql)
        PERFORM els._claim_essays(array_fill(p_batch_id, ARRAY[cardinality(p_essay_ids)]), p_essay_ids);
    END IF;
    RETURN v_created;
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
-- PL/pgSQL: its plan is kept for the session (a SQL function's is made again for every
-- statement that calls it)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    RETURN (
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
         WHERE t.batch_id = p_batch_id);
END
$fn$;

REVOKE ALL ON FUNCTION els._batch_lock_key(text), els._lock_batch(text), els._try_lock_batch(text),
    els._essay_owner_elsewhere(text, text[]), els._essay_owner_detail(text, text, boolean),
    els._create_slots(text, text[], boolean),
    els._slot_assigned_spec(text, text, text, text, text, text), els._excess_spec(text, text, text, text),
    els._completion_spec(text, text) FROM PUBLIC;
