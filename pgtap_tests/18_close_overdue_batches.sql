-- els.close_overdue_batches (SPEC section 10): every registered, incomplete batch
-- registered at least older_than ago, oldest first, at most max_batches, is closed:
-- its empty slots become content_ingestion_failed with failure code CONTENT_TIMEOUT,
-- it completes once with completion_reason 'deadline', and whatever arrives later is
-- excess. Younger batches, complete batches and unregistered items are untouched;
-- a second call changes nothing. Time is simulated by moving registered_at back
-- (now() is fixed inside this test's transaction).
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(39);

CREATE FUNCTION pg_temp.content(p_batch text, p_text text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'text_storage_id', p_text,
                          'file_upload_id', 'upload-' || p_text, 'original_file_name', p_text || '.docx');
CREATE FUNCTION pg_temp.failure(p_batch text, p_upload text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'file_upload_id', p_upload, 'original_file_name', p_upload || '.pdf',
                          'validation_error_code', 'EMPTY_CONTENT');
CREATE FUNCTION pg_temp.batch(p_batch text, p_essays text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'expected_essay_count', cardinality(p_essays),
                          'essay_ids', to_jsonb(p_essays), 'course_code', 'ENG7', 'user_id', 'teacher',
                          'class_id', 'class-9', 'correlation_id', 'corr-' || p_batch);
-- registers a batch and pretends it was registered p_age ago
CREATE FUNCTION pg_temp.registered(p_batch text, p_essays text[], p_age interval) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM els.register_batch(pg_temp.batch(p_batch, p_essays));
    UPDATE els.batch_tracker SET registered_at = now() - p_age WHERE batch_id = p_batch;
END
$fn$;
CREATE FUNCTION pg_temp.completions(p_batch text) RETURNS bigint LANGUAGE sql STABLE
RETURN (SELECT count(*) FROM els.event_outbox
         WHERE message_key = p_batch AND event_type = 'BatchContentProvisioningCompleted');
CREATE FUNCTION pg_temp.completion_data(p_batch text) RETURNS jsonb LANGUAGE sql STABLE
RETURN (SELECT envelope -> 'data' FROM els.event_outbox
         WHERE message_key = p_batch AND event_type = 'BatchContentProvisioningCompleted');

-- ===========================================================================
-- What gets closed: old incomplete batches, oldest first
-- ===========================================================================
DO $setup$ BEGIN
    -- 3 slots: one content, one failure, one left empty
    PERFORM pg_temp.registered('od-a', ARRAY['oda-1', 'oda-2', 'oda-3'], '3 hours');
    PERFORM els.provision_content(pg_temp.content('od-a', 'oda-t1'));
    PERFORM els.record_validation_failure(pg_temp.failure('od-a', 'oda-f1'));
    -- 2 slots, nothing arrived
    PERFORM pg_temp.registered('od-b', ARRAY['odb-1', 'odb-2'], '2 hours');
    -- too young
    PERFORM pg_temp.registered('od-young', ARRAY['ody-1'], '10 minutes');
    -- old but completed by its items
    PERFORM pg_temp.registered('od-done', ARRAY['odd-1'], '5 hours');
    PERFORM els.provision_content(pg_temp.content('od-done', 'odd-t1'));
    -- never registered: pending stays pending
    PERFORM els.provision_content(pg_temp.content('od-unregistered', 'odu-t1'));
END $setup$;

CREATE TEMP TABLE first_call AS SELECT els.close_overdue_batches(older_than => interval '1 hour') AS r;
SELECT is((SELECT r FROM first_call),
          jsonb_build_object('batches_closed', 2, 'slots_timed_out', 3,
                             'events', jsonb_build_array(
                                 els.stable_event_id('BatchContentProvisioningCompleted', 'od-a'),
                                 els.stable_event_id('BatchContentProvisioningCompleted', 'od-b'))),
          'closes the two overdue batches, oldest first: counts and their completion event ids');
SELECT results_eq(
    $$SELECT essay_id, status::text, text_storage_id, failed_file_upload_id, failure_code
        FROM els.essay_slot WHERE batch_id = 'od-a' ORDER BY slot_no$$,
    $$VALUES ('oda-1', 'ready_for_processing', 'oda-t1', NULL::text, NULL::text),
             ('oda-2', 'content_ingestion_failed', NULL, 'oda-f1', NULL),
             ('oda-3', 'content_ingestion_failed', NULL, NULL, 'CONTENT_TIMEOUT')$$,
    'od-a: filled and failed slots keep what they had; the empty one timed out (CONTENT_TIMEOUT)');
SELECT results_eq(
    $$SELECT status::text, failure_code, filled_at = now() FROM els.essay_slot WHERE batch_id = 'od-b' ORDER BY slot_no$$,
    $$VALUES ('content_ingestion_failed', 'CONTENT_TIMEOUT', true), ('content_ingestion_failed', 'CONTENT_TIMEOUT', true)$$,
    'od-b: both empty slots timed out, stamped now');
SELECT results_eq(
    $$SELECT batch_id, completed_at IS NOT NULL, completion_reason FROM els.batch_tracker
       WHERE batch_id LIKE 'od-%' ORDER BY batch_id$$,
    $$VALUES ('od-a', true, 'deadline'), ('od-b', true, 'deadline'), ('od-done', true, 'all_slots_closed'),
             ('od-young', false, NULL::text)$$,
    'trackers: the closed ones completed by deadline, the complete one unchanged, the young one still open');
SELECT is(pg_temp.completion_data('od-a') - 'timestamp',
          '{"batch_id": "od-a", "provisioned_count": 1, "expected_count": 3, "course_code": "ENG7",
            "user_id": "teacher", "class_type": "REGULAR", "correlation_id": "corr-od-a",
            "essays_for_processing": [{"essay_id": "oda-1", "text_storage_id": "oda-t1"}],
            "completion_reason": "deadline"}'::jsonb,
          'od-a: completion data counts only the ready essay and says completion_reason deadline');
SELECT is(pg_temp.completion_data('od-b') -> 'essays_for_processing', '[]'::jsonb,
          'od-b: nothing for processing');
SELECT is(pg_temp.completion_data('od-b') ->> 'completion_reason', 'deadline', 'od-b: completion_reason deadline');
SELECT is(pg_temp.completion_data('od-done') ->> 'completion_reason', 'all_slots_closed',
          'od-done (completed by its item): completion_reason all_slots_closed');
SELECT results_eq(
    $$SELECT batch_id, pg_temp.completions(batch_id) FROM els.batch_tracker WHERE batch_id LIKE 'od-%' ORDER BY batch_id$$,
    $$VALUES ('od-a', 1::bigint), ('od-b', 1::bigint), ('od-done', 1::bigint), ('od-young', 0::bigint)$$,
    'exactly one completion per complete batch, none for the open one');
SELECT is((SELECT count(*) FROM els.essay_slot WHERE batch_id = 'od-young' AND status = 'uploaded'), 1::bigint,
          'od-young: its slot is still empty');
SELECT is((SELECT disposition::text FROM els.essay_content WHERE batch_id = 'od-unregistered'), 'pending',
          'content of a never-registered batch stays pending');
SELECT is((SELECT count(*) FROM els.event_outbox WHERE message_key = 'od-a'), 2::bigint,
          'od-a outbox: its slot event and its completion, nothing else (failures emit nothing)');

-- ===========================================================================
-- Idempotent: a second call finds nothing
-- ===========================================================================
CREATE TEMP TABLE state_before AS SELECT pg_temp.els_state() AS s;
SELECT is(els.close_overdue_batches(interval '1 hour'),
          '{"batches_closed": 0, "slots_timed_out": 0, "events": []}'::jsonb,
          'second call: nothing to close');
SELECT is(pg_temp.els_state(), (SELECT s FROM state_before), 'second call: no row changed in any els table');

-- ===========================================================================
-- Late items for a closed batch are excess
-- ===========================================================================
SELECT is(els.provision_content(pg_temp.content('od-b', 'odb-late')) - 'events',
          '{"batch_id": "od-b", "outcome": "excess", "essay_id": null, "complete": true}'::jsonb,
          'late content for a closed batch: excess, complete');
SELECT is(els.provision_content(pg_temp.content('od-b', 'odb-late')) -> 'events', '[]'::jsonb,
          'late content again: duplicate, no event');
SELECT is((SELECT count(*) FROM els.event_outbox WHERE message_key = 'od-b' AND event_type = 'ExcessContentProvisioned'),
          1::bigint, 'late content: one ExcessContentProvisioned');
SELECT is(els.record_validation_failure(pg_temp.failure('od-b', 'odb-late-f')),
          '{"batch_id": "od-b", "outcome": "excess", "essay_id": null, "complete": true, "events": []}'::jsonb,
          'late failure for a closed batch: excess, complete, no event');
SELECT is(els.register_batch(pg_temp.batch('od-b', ARRAY['odb-1', 'odb-2'])) ->> 'outcome', 'duplicate',
          'the closed batch''s registration redelivered: duplicate');
SELECT is(pg_temp.completions('od-b'), 1::bigint, 'still exactly one completion for od-b');

-- ===========================================================================
-- max_batches: at most that many per call, oldest first; 0 closes nothing
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM pg_temp.registered('od-m1', ARRAY['odm1-1'], '4 hours');
    PERFORM pg_temp.registered('od-m2', ARRAY['odm2-1'], '3 hours');
    PERFORM pg_temp.registered('od-m3', ARRAY['odm3-1', 'odm3-2'], '2 hours');
END $setup$;
SELECT is(els.close_overdue_batches(older_than => interval '1 hour', max_batches => 0),
          '{"batches_closed": 0, "slots_timed_out": 0, "events": []}'::jsonb, 'max_batches 0: closes nothing');
SELECT is(els.close_overdue_batches(older_than => interval '1 hour', max_batches => 2) -> 'events',
          jsonb_build_array(els.stable_event_id('BatchContentProvisioningCompleted', 'od-m1'),
                            els.stable_event_id('BatchContentProvisioningCompleted', 'od-m2')),
          'max_batches 2: the two oldest');
SELECT is((SELECT completed_at IS NULL FROM els.batch_tracker WHERE batch_id = 'od-m3'), true,
          'max_batches 2: the third waits for the next call');
SELECT is(els.close_overdue_batches(older_than => interval '1 hour', max_batches => 2) - 'events',
          '{"batches_closed": 1, "slots_timed_out": 2}'::jsonb, 'the next call closes the rest');
SELECT is(els.close_overdue_batches(interval '0 seconds') - 'events',
          '{"batches_closed": 1, "slots_timed_out": 1}'::jsonb,
          'older_than 0: every incomplete batch, whatever its age (od-young)');

-- ===========================================================================
-- A tracker an older writer left without slots, with content waiting: re-driven
-- first (the content fills a slot), then the rest times out
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.provision_content(pg_temp.content('od-legacy', 'odl-t1'));
    INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id, registered_at)
    VALUES ('od-legacy', 2, ARRAY['odl-1', 'odl-2'], 'ENG5', 'u', 'corr-legacy', now() - interval '2 hours');
END $setup$;
SELECT is(els.close_overdue_batches(interval '1 hour') -> 'slots_timed_out', '1'::jsonb,
          'legacy tracker: one slot timed out');
SELECT results_eq(
    $$SELECT essay_id, status::text, text_storage_id, failure_code FROM els.essay_slot
       WHERE batch_id = 'od-legacy' ORDER BY slot_no$$,
    $$VALUES ('odl-1', 'ready_for_processing', 'odl-t1', NULL::text), ('odl-2', 'content_ingestion_failed', NULL, 'CONTENT_TIMEOUT')$$,
    'legacy tracker: slots created, the waiting content assigned, the rest timed out');
SELECT is((SELECT count(*) FROM els.event_outbox WHERE message_key = 'od-legacy'), 2::bigint,
          'legacy tracker: its slot event and its completion');

-- A legacy tracker whose missing slot's essay id belongs to another batch cannot be
-- repaired: skipped (with a warning), the others still close.
DO $setup$ BEGIN
    PERFORM pg_temp.registered('od-owner', ARRAY['odo-1'], '1 minute');
    INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id, registered_at)
    VALUES ('od-broken', 1, ARRAY['odo-1'], 'ENG5', 'u', 'corr-broken', now() - interval '9 hours');
    PERFORM pg_temp.registered('od-after-broken', ARRAY['odab-1'], '8 hours');
END $setup$;
SET LOCAL client_min_messages = error;  -- the expected WARNING
SELECT is(els.close_overdue_batches(interval '1 hour') - 'events',
          '{"batches_closed": 1, "slots_timed_out": 1}'::jsonb,
          'an unrepairable legacy batch is skipped; the next one still closes');
SET LOCAL client_min_messages = warning;
SELECT is((SELECT completed_at IS NULL FROM els.batch_tracker WHERE batch_id = 'od-broken'), true,
          'the unrepairable batch stays open (els.stuck_batches shows it)');
SELECT throws_ok($$SELECT els.close_batch('od-broken')$$, 'ELC02', NULL,
                 'els.close_batch on it raises the ELC02 that stops it');

-- ===========================================================================
-- Arguments
-- ===========================================================================
SELECT * FROM pg_temp.rejects($$SELECT els.close_overdue_batches(NULL)$$, 'ELV02',
    'required argument older_than is null', '{"field": "older_than", "reason": "missing"}', 'older_than NULL');
SELECT * FROM pg_temp.rejects($$SELECT els.close_overdue_batches(interval '-1 hour')$$, 'ELV03',
    'older_than must not be negative', '{"field": "older_than", "reason": "out_of_range"}', 'older_than negative');
SELECT * FROM pg_temp.rejects($$SELECT els.close_overdue_batches(interval '1 hour', -1)$$, 'ELV03',
    'max_batches must be an integer >= 0', '{"field": "max_batches", "reason": "out_of_range"}', 'max_batches negative');
SELECT is_definer('els', 'close_overdue_batches', ARRAY['interval', 'integer'], 'close_overdue_batches is SECURITY DEFINER');
SELECT volatility_is('els', 'close_overdue_batches', ARRAY['interval', 'integer'], 'volatile',
                     'close_overdue_batches writes (VOLATILE)');

SELECT * FROM finish();
ROLLBACK;
