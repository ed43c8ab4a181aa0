-- els.register_batch(event jsonb): BatchEssaysRegistered -> a tracker and one
-- empty slot per essay id, then reconciliation of whatever content or failures
-- arrived before the registration, then completion if nothing is left empty.
--
-- One call is one atomic step (SPEC section 3): the tracker and its slots are
-- written in the same transaction, so the old failure mode (tracker committed,
-- slots rolled back, retries failing forever on the tracker's key) cannot occur.
-- A tracker found without its slots, or with only some (left by that older
-- writer), is repaired: the missing slots are created now.
--
-- A batch purged by els.purge_history has no tracker any more but a tombstone
-- with its registration identity (SPEC section 10): its redelivered registration
-- is a duplicate (complete, nothing emitted), or ELC01 if the identity differs,
-- so that it can never register, and complete, a second time.

-- The rules are applied by els._apply_events (035_apply_events.sql), the one
-- implementation shared with els.apply_events: a registration is read and checked
-- with its micro-batch (els._read_events, 010_validation.sql, before any lock), then
-- applied under its batch's lock (_register_locked). els.register_batch is a call of
-- that core with one event.

-- Applies one checked registration (els._registration_row); the caller holds
-- the batch's lock. Raises ELC01 (identity differs from the tracker's or the
-- tombstone's) before writing anything, and ELC02 (an essay id owned by another
-- batch) from _create_slots: the caller runs it in a subtransaction, so that a
-- rejected registration leaves no trace while the rest of its micro-batch applies.
CREATE OR REPLACE FUNCTION els._register_locked(p_reg jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_batch_id text := p_reg ->> 'batch_id';
    v_expected integer := (p_reg ->> 'expected_count')::integer;
    v_essay_ids text[] := ARRAY(SELECT jsonb_array_elements_text(p_reg -> 'essay_ids'));
    v_course_code text := p_reg ->> 'course_code';
    v_user_id text := p_reg ->> 'user_id';
    v_org_id text := p_reg ->> 'org_id';
    v_class_id text := p_reg ->> 'class_id';
    v_tracker els.batch_tracker;
    v_tombstone els.batch_tombstone;
    v_outcome text;
    v_conflict_field text;
    v_slots_created integer;
    v_existing_slots bigint := 0;
    v_reconciled record;
    v_completion record;
BEGIN
    SELECT * INTO v_tracker FROM els.batch_tracker AS t WHERE t.batch_id = v_batch_id;
    IF FOUND THEN
        v_conflict_field := CASE
            WHEN v_tracker.essay_ids IS DISTINCT FROM v_essay_ids THEN 'essay_ids'
            WHEN v_tracker.expected_count IS DISTINCT FROM v_expected THEN 'expected_essay_count'
            WHEN v_tracker.course_code IS DISTINCT FROM v_course_code THEN 'course_code'
            WHEN v_tracker.user_id IS DISTINCT FROM v_user_id THEN 'user_id'
            WHEN v_tracker.org_id IS DISTINCT FROM v_org_id THEN 'org_id'
            WHEN v_tracker.class_id IS DISTINCT FROM v_class_id THEN 'class_id'
        END;
        IF v_conflict_field IS NOT NULL THEN
            PERFORM els._reject('ELC01', 'batch already registered with a different identity',
                jsonb_build_object('field', v_conflict_field, 'reason', 'identity_conflict',
                                   'batch_id', v_batch_id));
        END IF;
        SELECT count(*) INTO v_existing_slots FROM els.essay_slot AS s WHERE s.batch_id = v_batch_id;
        IF v_existing_slots = v_tracker.expected_count THEN
            RETURN jsonb_build_object(
                'batch_id', v_batch_id, 'outcome', 'duplicate',
                'class_type', v_tracker.class_type, 'expected_count', v_tracker.expected_count,
                'slots_created', 0, 'content_assigned', 0, 'failures_applied', 0, 'excess', 0,
                'complete', v_tracker.completed_at IS NOT NULL, 'events', '[]'::jsonb);
        END IF;
        v_outcome := 'repaired';
    ELSE
        SELECT * INTO v_tombstone FROM els.batch_tombstone AS b WHERE b.batch_id = v_batch_id;
        IF FOUND THEN
            v_conflict_field := CASE
                WHEN v_tombstone.essay_ids IS DISTINCT FROM v_essay_ids THEN 'essay_ids'
                WHEN v_tombstone.expected_count IS DISTINCT FROM v_expected THEN 'expected_essay_count'
                WHEN v_tombstone.course_code IS DISTINCT FROM v_course_code THEN 'course_code'
                WHEN v_tombstone.user_id IS DISTINCT FROM v_user_id THEN 'user_id'
                WHEN v_tombstone.org_id IS DISTINCT FROM v_org_id THEN 'org_id'
                WHEN v_tombstone.class_id IS DISTINCT FROM v_class_id THEN 'class_id'
            END;
            IF v_conflict_field IS NOT NULL THEN
                PERFORM els._reject('ELC01', 'batch already registered with a different identity',
                    jsonb_build_object('field', v_conflict_field, 'reason', 'identity_conflict',
                                       'batch_id', v_batch_id, 'purged', true));
            END IF;
            RETURN jsonb_build_object(
                'batch_id', v_batch_id, 'outcome', 'duplicate',
                'class_type', v_tombstone.class_type, 'expected_count', v_tombstone.expected_count,
                'slots_created', 0, 'content_assigned', 0, 'failures_applied', 0, 'excess', 0,
                'complete', true, 'events', '[]'::jsonb);
        END IF;
        INSERT INTO els.batch_tracker AS t (
            batch_id, expected_count, essay_ids, course_code, user_id, org_id, class_id,
            student_prompt_ref, metadata, correlation_id, registration_event_id)
        VALUES (v_batch_id, v_expected, v_essay_ids, v_course_code, v_user_id, v_org_id,
                v_class_id, nullif(p_reg -> 'student_prompt_ref', 'null'::jsonb), p_reg -> 'metadata',
                p_reg ->> 'correlation_id', p_reg ->> 'source_event_id')
        RETURNING t.* INTO v_tracker;
        v_outcome := 'registered';
    END IF;

    v_slots_created := els._create_slots(v_batch_id, v_essay_ids, v_existing_slots > 0);

    v_reconciled := els._reconcile(v_batch_id);
    v_completion := els._complete_if_done(v_batch_id);

    RETURN jsonb_build_object(
        'batch_id', v_batch_id,
        'outcome', v_outcome,
        'class_type', v_tracker.class_type,
        'expected_count', v_tracker.expected_count,
        'slots_created', v_slots_created,
        'content_assigned', v_reconciled.content_assigned,
        'failures_applied', v_reconciled.failures_applied,
        'excess', v_reconciled.excess,
        'complete', v_completion.complete,
        'events', to_jsonb(v_reconciled.event_ids
                           || CASE WHEN v_completion.event_id IS NULL THEN '{}'::uuid[]
                                   ELSE ARRAY[v_completion.event_id] END));
END
$fn$;

-- The DBA- and test-facing call of SPEC 3: the set-based core with one event;
-- a rejection is raised with the SQLSTATE, message and detail the core reports.
CREATE OR REPLACE FUNCTION els.register_batch(event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN els._apply_one('register_batch', event);
END
$fn$;

COMMENT ON FUNCTION els.register_batch(jsonb) IS
    'BatchEssaysRegistered -> tracker + slots, reconciliation of pending items, completion. '
    'Outcomes: registered, duplicate, repaired. Errors: ELV01-ELV06, ELC01, ELC02.';
REVOKE ALL ON FUNCTION els._register_locked(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els.register_batch(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.register_batch(jsonb) TO els_worker;
