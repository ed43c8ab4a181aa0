-- els.purge_history (SPEC section 10): complete batches whose completion is at least
-- older_than old go (tracker, slots, ledgers), each leaving a tombstone; pending items
-- of never-registered batches received at least older_than ago go; published outbox
-- rows at least older_than old go. Unpublished outbox rows and incomplete batches are
-- never deleted. After the purge a redelivered registration is a duplicate (ELC01 if
-- it differs), content and failures are excess: one completion per batch, forever.
-- Time is simulated by moving timestamps back (now() is fixed in this transaction).
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(45);

-- The outbox counts below start from an empty outbox (rolled back afterwards).
DELETE FROM els.event_outbox;

CREATE FUNCTION pg_temp.content(p_batch text, p_text text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'text_storage_id', p_text,
                          'file_upload_id', 'upload-' || p_text, 'original_file_name', p_text || '.docx');
CREATE FUNCTION pg_temp.failure(p_batch text, p_upload text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'file_upload_id', p_upload, 'original_file_name', p_upload || '.pdf',
                          'validation_error_code', 'RAW_STORAGE_FAILED');
CREATE FUNCTION pg_temp.batch(p_batch text, p_essays text[], p_course text DEFAULT 'ENG5') RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'expected_essay_count', cardinality(p_essays),
                          'essay_ids', to_jsonb(p_essays), 'course_code', p_course, 'user_id', 'ret-teacher',
                          'org_id', 'org-r', 'class_id', 'class-r', 'correlation_id', 'corr-' || p_batch,
                          'metadata', jsonb_build_object('note', 'first delivery'));
-- pretends the batch completed, and its outbox rows were published (or not), p_age ago
CREATE FUNCTION pg_temp.age_batch(p_batch text, p_age interval, p_published boolean) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE els.batch_tracker SET registered_at = now() - p_age - interval '1 hour', completed_at = now() - p_age
     WHERE batch_id = p_batch AND completed_at IS NOT NULL;
    UPDATE els.batch_tracker SET registered_at = now() - p_age WHERE batch_id = p_batch AND completed_at IS NULL;
    UPDATE els.event_outbox SET published_at = CASE WHEN p_published THEN now() - p_age END WHERE message_key = p_batch;
    UPDATE els.essay_content SET received_at = now() - p_age WHERE batch_id = p_batch;
    UPDATE els.validation_failure SET received_at = now() - p_age WHERE batch_id = p_batch;
END
$fn$;
CREATE FUNCTION pg_temp.rows_of(p_batch text) RETURNS jsonb LANGUAGE sql STABLE
RETURN jsonb_build_object(
    'tracker', (SELECT count(*) FROM els.batch_tracker WHERE batch_id = p_batch),
    'slots', (SELECT count(*) FROM els.essay_slot WHERE batch_id = p_batch),
    'content', (SELECT count(*) FROM els.essay_content WHERE batch_id = p_batch),
    'failures', (SELECT count(*) FROM els.validation_failure WHERE batch_id = p_batch),
    'outbox', (SELECT count(*) FROM els.event_outbox WHERE message_key = p_batch),
    'tombstone', (SELECT count(*) FROM els.batch_tombstone WHERE batch_id = p_batch));

DO $setup$ BEGIN
    -- complete 3 days ago, everything published 3 days ago: 2 slot events, 1 excess, 1 completion
    PERFORM els.register_batch(pg_temp.batch('ph-old', ARRAY['pho-1', 'pho-2', 'pho-3']));
    PERFORM els.provision_content(pg_temp.content('ph-old', 'pho-t1'));
    PERFORM els.provision_content(pg_temp.content('ph-old', 'pho-t2'));
    PERFORM els.record_validation_failure(pg_temp.failure('ph-old', 'pho-f1'));
    PERFORM els.provision_content(pg_temp.content('ph-old', 'pho-t3'));           -- excess
    PERFORM pg_temp.age_batch('ph-old', '3 days', true);
    -- complete by deadline 3 days ago, its outbox rows never published
    PERFORM els.register_batch(pg_temp.batch('ph-unpub', ARRAY['phu-1', 'phu-2']));
    PERFORM els.provision_content(pg_temp.content('ph-unpub', 'phu-t1'));
    PERFORM els.close_batch('ph-unpub');
    PERFORM pg_temp.age_batch('ph-unpub', '3 days', false);
    -- complete just now (published just now)
    PERFORM els.register_batch(pg_temp.batch('ph-recent', ARRAY['phr-1']));
    PERFORM els.provision_content(pg_temp.content('ph-recent', 'phr-t1'));
    UPDATE els.event_outbox SET published_at = now() WHERE message_key = 'ph-recent';
    -- incomplete, registered 10 days ago, its slot event published 10 days ago
    PERFORM els.register_batch(pg_temp.batch('ph-open', ARRAY['php-1', 'php-2']));
    PERFORM els.provision_content(pg_temp.content('ph-open', 'php-t1'));
    PERFORM pg_temp.age_batch('ph-open', '10 days', true);
    -- never registered: old pending content and failure, and a recent one
    PERFORM els.provision_content(pg_temp.content('ph-never', 'phn-t1'));
    PERFORM els.record_validation_failure(pg_temp.failure('ph-never', 'phn-f1'));
    PERFORM pg_temp.age_batch('ph-never', '2 days', false);
    PERFORM els.provision_content(pg_temp.content('ph-never', 'phn-t2'));
END $setup$;

CREATE TEMP TABLE first_purge AS SELECT els.purge_history(older_than => interval '1 day') AS r;
SELECT is((SELECT r FROM first_purge),
          '{"batches_purged": 2, "pending_purged": 2, "outbox_purged": 5}'::jsonb,
          'purge: two old complete batches, two old pending items, five old published outbox rows (4 of ph-old, 1 of ph-open)');
SELECT is(pg_temp.rows_of('ph-old'),
          '{"tracker": 0, "slots": 0, "content": 0, "failures": 0, "outbox": 0, "tombstone": 1}'::jsonb,
          'ph-old: everything gone but its tombstone');
SELECT is(pg_temp.rows_of('ph-unpub'),
          '{"tracker": 0, "slots": 0, "content": 0, "failures": 0, "outbox": 2, "tombstone": 1}'::jsonb,
          'ph-unpub: purged, but its two unpublished outbox rows are kept');
SELECT is((SELECT count(*) FROM els.event_outbox WHERE message_key = 'ph-unpub' AND published_at IS NULL), 2::bigint,
          'ph-unpub: the kept rows are still unpublished, for the relay');
SELECT is(pg_temp.rows_of('ph-recent'),
          '{"tracker": 1, "slots": 1, "content": 1, "failures": 0, "outbox": 2, "tombstone": 0}'::jsonb,
          'ph-recent (completed now): kept whole');
SELECT is(pg_temp.rows_of('ph-open'),
          '{"tracker": 1, "slots": 2, "content": 1, "failures": 0, "outbox": 0, "tombstone": 0}'::jsonb,
          'ph-open (incomplete, 10 days old): kept; only its old published outbox row went');
SELECT results_eq(
    $$SELECT text_storage_id FROM els.essay_content WHERE batch_id = 'ph-never' ORDER BY 1$$,
    $$VALUES ('phn-t2')$$, 'ph-never: the old pending content went, the recent one stays');
SELECT is((SELECT count(*) FROM els.validation_failure WHERE batch_id = 'ph-never'), 0::bigint,
          'ph-never: the old pending failure went');
SELECT is((SELECT to_jsonb(b) - 'purged_at' - 'registered_at' - 'completed_at' FROM els.batch_tombstone AS b
            WHERE batch_id = 'ph-old'),
          '{"batch_id": "ph-old", "expected_count": 3, "essay_ids": ["pho-1", "pho-2", "pho-3"],
            "course_code": "ENG5", "user_id": "ret-teacher", "org_id": "org-r", "class_id": "class-r",
            "class_type": "REGULAR", "correlation_id": "corr-ph-old", "completion_reason": "all_slots_closed",
            "filled_count": 2, "failed_count": 1, "timed_out_count": 0, "last_late_item_at": null}'::jsonb,
          'tombstone: the registration identity and the final counts');
SELECT is((SELECT (completed_at, purged_at) = (now() - interval '3 days', now())
             FROM els.batch_tombstone WHERE batch_id = 'ph-old'), true,
          'tombstone: when the batch completed and when it was purged');
SELECT is((SELECT jsonb_build_object('reason', completion_reason, 'timed_out', timed_out_count, 'filled', filled_count)
             FROM els.batch_tombstone WHERE batch_id = 'ph-unpub'),
          '{"reason": "deadline", "timed_out": 1, "filled": 1}'::jsonb,
          'tombstone of a batch closed by its deadline');

-- ===========================================================================
-- Idempotent
-- ===========================================================================
CREATE TEMP TABLE state_before AS SELECT pg_temp.els_state() AS s;
SELECT is(els.purge_history(interval '1 day'),
          '{"batches_purged": 0, "pending_purged": 0, "outbox_purged": 0}'::jsonb, 'second purge: nothing left to do');
SELECT is(pg_temp.els_state(), (SELECT s FROM state_before), 'second purge: no row changed');

-- ===========================================================================
-- Redelivery after the purge
-- ===========================================================================
SELECT is(els.register_batch(pg_temp.batch('ph-old', ARRAY['pho-1', 'pho-2', 'pho-3']) || '{"metadata": {"note": "replayed"}}'),
          '{"batch_id": "ph-old", "outcome": "duplicate", "class_type": "REGULAR", "expected_count": 3,
            "slots_created": 0, "content_assigned": 0, "failures_applied": 0, "excess": 0,
            "complete": true, "events": []}'::jsonb,
          'registration redelivered (other metadata): duplicate, complete, no event');
SELECT is(pg_temp.els_state(), (SELECT s FROM state_before), 'the duplicate registration wrote nothing (no tracker, no slot, no event)');
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch(pg_temp.batch('ph-old', ARRAY['pho-1', 'pho-2', 'pho-3'], 'SV1'))$$,
    'ELC01', 'batch already registered with a different identity',
    '{"field": "course_code", "reason": "identity_conflict", "batch_id": "ph-old"}',
    'registration with another identity after the purge');
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch(pg_temp.batch('ph-old', ARRAY['pho-1', 'pho-3', 'pho-2']))$$,
    'ELC01', 'batch already registered with a different identity',
    '{"field": "essay_ids", "reason": "identity_conflict"}', 'registration with the essay ids reordered after the purge');
-- one batch per essay id, forever: another batch naming a purged batch's essay id
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch(pg_temp.batch('ph-thief', ARRAY['ph-new-1', 'pho-2']))$$,
    'ELC02', 'an essay id already belongs to another batch',
    '{"field": "essay_ids", "reason": "essay_owned_by_other_batch", "essay_id": "pho-2",
      "owner_batch_id": "ph-old", "purged": true}',
    'another batch naming an essay id of a purged batch: ELC02 (the tombstone owns it)');
SELECT is((SELECT jsonb_agg(r -> 'ok' ORDER BY o)
             FROM jsonb_array_elements(els.apply_events(
                      ARRAY['register_batch', 'register_batch', 'register_batch'],
                      ARRAY[pg_temp.batch('ph-mb-1', ARRAY['ph-mb-1a'])::text,
                            pg_temp.batch('ph-mb-thief', ARRAY['pho-3'])::text,
                            pg_temp.batch('ph-mb-2', ARRAY['ph-mb-2a'])::text])) WITH ORDINALITY AS x(r, o)),
          '[true, false, true]'::jsonb,
          'in a micro-batch: the registration naming a purged essay id is rejected, the others apply');
SELECT is((SELECT count(*)::integer FROM els.batch_tracker WHERE batch_id LIKE 'ph-mb-%'), 2,
          'and it left no tracker behind');
SELECT is(els.provision_content(pg_temp.content('ph-old', 'pho-t1')),
          jsonb_build_object('batch_id', 'ph-old', 'outcome', 'excess', 'essay_id', NULL, 'complete', true,
                             'events', jsonb_build_array(els.stable_event_id('ExcessContentProvisioned', 'ph-old', 'pho-t1'))),
          'content that once filled a slot, redelivered after the purge: excess');
SELECT is(els.provision_content(pg_temp.content('ph-old', 'pho-t1')) - 'essay_id',
          '{"batch_id": "ph-old", "outcome": "duplicate", "complete": true, "events": []}'::jsonb,
          'and again: duplicate');
SELECT is(els.provision_content(pg_temp.content('ph-unpub', 'phu-new')) ->> 'outcome', 'excess',
          'new content for a purged batch: excess');
SELECT is(els.record_validation_failure(pg_temp.failure('ph-old', 'pho-f1')),
          '{"batch_id": "ph-old", "outcome": "excess", "essay_id": null, "complete": true, "events": []}'::jsonb,
          'a failure redelivered after the purge: excess, no event');
SELECT is(els.record_validation_failure(pg_temp.failure('ph-old', 'pho-f1')) ->> 'outcome', 'duplicate',
          'and again: duplicate');
SELECT is((SELECT count(*) FROM els.event_outbox
            WHERE message_key IN ('ph-old', 'ph-unpub') AND event_type = 'BatchContentProvisioningCompleted'),
          1::bigint, 'no new completion: only ph-unpub''s unpublished original remains');
SELECT is((SELECT last_late_item_at FROM els.batch_tombstone WHERE batch_id = 'ph-old'), now(),
          'the tombstone notes the late arrivals');
SELECT is((SELECT jsonb_build_object('registered', r -> 'registered', 'purged', r -> 'purged', 'complete', r -> 'complete',
                                     'reason', r -> 'tracker' -> 'completion_reason',
                                     'filled', r -> 'tombstone' -> 'filled_count',
                                     'excess', jsonb_array_length(r -> 'excess_content'))
             FROM els.batch_report('ph-old') AS r),
          '{"registered": true, "purged": true, "complete": true, "reason": "all_slots_closed", "filled": 2, "excess": 1}'::jsonb,
          'batch_report of a purged batch: says so, tracker data from the tombstone, what came later');
SELECT is(els.close_batch('ph-old') ->> 'outcome', 'already_complete', 'close_batch of a purged batch: already_complete');
SELECT is(els.reconcile_batch('ph-old') ->> 'outcome', 'not_registered',
          'reconcile_batch of a purged batch: nothing to re-drive');

-- the late items go with a later purge, once old enough
SELECT is(els.purge_history(interval '1 day') -> 'pending_purged', '0'::jsonb, 'late items are recent: kept');
DO $setup$ BEGIN
    UPDATE els.essay_content SET received_at = now() - interval '2 days' WHERE batch_id IN ('ph-old', 'ph-unpub');
    UPDATE els.validation_failure SET received_at = now() - interval '2 days' WHERE batch_id IN ('ph-old', 'ph-unpub');
    UPDATE els.batch_tombstone SET last_late_item_at = now() - interval '2 days' WHERE batch_id IN ('ph-old', 'ph-unpub');
END $setup$;
SELECT is(els.purge_history(interval '1 day') -> 'pending_purged', '3'::jsonb,
          'late items of purged batches, once old: purged (two contents, one failure)');
SELECT is(pg_temp.rows_of('ph-old') - 'outbox',
          '{"tracker": 0, "slots": 0, "content": 0, "failures": 0, "tombstone": 1}'::jsonb,
          'ph-old: the tombstone stays, forever');
SELECT is((SELECT last_late_item_at FROM els.batch_tombstone WHERE batch_id = 'ph-old'), NULL,
          'the tombstone''s late mark is cleared');
SELECT is(els.register_batch(pg_temp.batch('ph-old', ARRAY['pho-1', 'pho-2', 'pho-3'])) ->> 'outcome', 'duplicate',
          'still a duplicate after the second purge');

-- a tracker an older writer left without slots, with old content waiting for it: kept
DO $setup$ BEGIN
    PERFORM els.provision_content(pg_temp.content('ph-legacy', 'phl-t1'));
    INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id, registered_at)
    VALUES ('ph-legacy', 1, ARRAY['phl-1'], 'ENG5', 'u', 'corr-legacy', now() - interval '9 days');
    UPDATE els.essay_content SET received_at = now() - interval '9 days' WHERE batch_id = 'ph-legacy';
END $setup$;
SELECT is(els.purge_history(interval '1 day') -> 'pending_purged', '0'::jsonb,
          'pending content of a registered (legacy, slotless) batch is not purged');
SELECT is(els.reconcile_batch('ph-legacy') ->> 'complete', 'true', 'it is still there for els.reconcile_batch');

-- ===========================================================================
-- Arguments
-- ===========================================================================
SELECT * FROM pg_temp.rejects($$SELECT els.purge_history(NULL)$$, 'ELV02',
    'required argument older_than is null', '{"field": "older_than", "reason": "missing"}', 'older_than NULL');
SELECT * FROM pg_temp.rejects($$SELECT els.purge_history(interval '-1 day')$$, 'ELV03',
    'older_than must not be negative', '{"field": "older_than", "reason": "out_of_range"}', 'older_than negative');
SELECT is_definer('els', 'purge_history', ARRAY['interval'], 'purge_history is SECURITY DEFINER');

SELECT * FROM finish();
ROLLBACK;
