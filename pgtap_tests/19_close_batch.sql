-- els.close_batch (SPEC section 10): a DBA closes one batch now, whatever its age:
-- outcome closed (empty slots -> content_ingestion_failed / CONTENT_TIMEOUT, one
-- completion with completion_reason 'deadline') or already_complete (nothing
-- changes); an unknown batch is ELV03 unknown_batch. CONTENT_TIMEOUT is the
-- database's own code: no incoming event may use it. The report and the stuck view
-- show the close.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(34);

CREATE FUNCTION pg_temp.content(p_batch text, p_text text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'text_storage_id', p_text,
                          'file_upload_id', 'upload-' || p_text, 'original_file_name', p_text || '.docx');
CREATE FUNCTION pg_temp.failure(p_batch text, p_upload text, p_code text DEFAULT 'CONTENT_TOO_SHORT') RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'file_upload_id', p_upload, 'original_file_name', p_upload || '.pdf',
                          'validation_error_code', p_code);
CREATE FUNCTION pg_temp.batch(p_batch text, p_essays text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'expected_essay_count', cardinality(p_essays),
                          'essay_ids', to_jsonb(p_essays), 'course_code', 'SV3', 'user_id', 'dba-teacher',
                          'correlation_id', 'corr-' || p_batch);
CREATE FUNCTION pg_temp.completions(p_batch text) RETURNS bigint LANGUAGE sql STABLE
RETURN (SELECT count(*) FROM els.event_outbox
         WHERE message_key = p_batch AND event_type = 'BatchContentProvisioningCompleted');

-- ===========================================================================
-- closed: a fresh batch with one content and two empty slots
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch(pg_temp.batch('cb-a', ARRAY['cba-1', 'cba-2', 'cba-3']));
    PERFORM els.provision_content(pg_temp.content('cb-a', 'cba-t1'));
END $setup$;
SELECT is(els.close_batch(batch_id => 'cb-a'),
          jsonb_build_object('batch_id', 'cb-a', 'outcome', 'closed', 'slots_timed_out', 2,
                             'events', jsonb_build_array(els.stable_event_id('BatchContentProvisioningCompleted', 'cb-a'))),
          'closed: exact result, whatever the batch''s age (registered just now)');
SELECT results_eq(
    $$SELECT essay_id, status::text, text_storage_id, failed_file_upload_id, failure_code
        FROM els.essay_slot WHERE batch_id = 'cb-a' ORDER BY slot_no$$,
    $$VALUES ('cba-1', 'ready_for_processing', 'cba-t1', NULL::text, NULL::text),
             ('cba-2', 'content_ingestion_failed', NULL, NULL, 'CONTENT_TIMEOUT'),
             ('cba-3', 'content_ingestion_failed', NULL, NULL, 'CONTENT_TIMEOUT')$$,
    'closed: the empty slots timed out, the filled one kept its text');
SELECT is((SELECT completion_reason FROM els.batch_tracker WHERE batch_id = 'cb-a'), 'deadline',
          'closed: tracker completion_reason deadline');
SELECT is((SELECT completed_at = now() FROM els.batch_tracker WHERE batch_id = 'cb-a'), true,
          'closed: tracker completed now');
SELECT is((SELECT (envelope -> 'data') - 'timestamp' FROM els.event_outbox
            WHERE message_key = 'cb-a' AND event_type = 'BatchContentProvisioningCompleted'),
          '{"batch_id": "cb-a", "provisioned_count": 1, "expected_count": 3, "course_code": "SV3",
            "user_id": "dba-teacher", "class_type": "GUEST", "correlation_id": "corr-cb-a",
            "essays_for_processing": [{"essay_id": "cba-1", "text_storage_id": "cba-t1"}],
            "completion_reason": "deadline"}'::jsonb,
          'closed: the completion event''s data');

-- ===========================================================================
-- already_complete: a second close, and a batch completed by its items
-- ===========================================================================
CREATE TEMP TABLE state_before AS SELECT pg_temp.els_state() AS s;
SELECT is(els.close_batch('cb-a'),
          '{"batch_id": "cb-a", "outcome": "already_complete", "slots_timed_out": 0, "events": []}'::jsonb,
          'second close: already_complete, nothing emitted');
SELECT is(pg_temp.els_state(), (SELECT s FROM state_before), 'second close: no row changed');
SELECT is(pg_temp.completions('cb-a'), 1::bigint, 'exactly one completion');

DO $setup$ BEGIN
    PERFORM els.register_batch(pg_temp.batch('cb-full', ARRAY['cbf-1']));
    PERFORM els.record_validation_failure(pg_temp.failure('cb-full', 'cbf-f1'));
END $setup$;
SELECT is(els.close_batch('cb-full'),
          '{"batch_id": "cb-full", "outcome": "already_complete", "slots_timed_out": 0, "events": []}'::jsonb,
          'a batch completed by its last item: already_complete');
SELECT is((SELECT completion_reason FROM els.batch_tracker WHERE batch_id = 'cb-full'), 'all_slots_closed',
          'its completion_reason stays all_slots_closed');

-- ===========================================================================
-- nothing arrived at all
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch(pg_temp.batch('cb-empty', ARRAY['cbe-1', 'cbe-2']));
END $setup$;
SELECT is(els.close_batch('cb-empty') -> 'slots_timed_out', '2'::jsonb, 'empty batch: every slot timed out');
SELECT is((SELECT envelope -> 'data' -> 'provisioned_count' FROM els.event_outbox
            WHERE message_key = 'cb-empty' AND event_type = 'BatchContentProvisioningCompleted'), '0'::jsonb,
          'empty batch: provisioned_count 0');

-- ===========================================================================
-- After the close: late items are excess, redeliveries duplicates
-- ===========================================================================
SELECT is(els.provision_content(pg_temp.content('cb-a', 'cba-t1')) ->> 'outcome', 'duplicate',
          'the content that filled a slot, redelivered: duplicate');
SELECT is(els.provision_content(pg_temp.content('cb-a', 'cba-late')),
          jsonb_build_object('batch_id', 'cb-a', 'outcome', 'excess', 'essay_id', NULL, 'complete', true,
                             'events', jsonb_build_array(els.stable_event_id('ExcessContentProvisioned', 'cb-a', 'cba-late'))),
          'late content: excess, with its ExcessContentProvisioned');
SELECT is(els.record_validation_failure(pg_temp.failure('cb-a', 'cba-late-f')),
          '{"batch_id": "cb-a", "outcome": "excess", "essay_id": null, "complete": true, "events": []}'::jsonb,
          'late failure: excess');
SELECT is(els.register_batch(pg_temp.batch('cb-a', ARRAY['cba-1', 'cba-2', 'cba-3'])) - 'class_type' - 'expected_count',
          '{"batch_id": "cb-a", "outcome": "duplicate", "slots_created": 0, "content_assigned": 0,
            "failures_applied": 0, "excess": 0, "complete": true, "events": []}'::jsonb,
          'registration redelivered: duplicate, complete');
SELECT is(pg_temp.completions('cb-a'), 1::bigint, 'still exactly one completion');
SELECT is((SELECT count(*) FROM els.essay_slot WHERE batch_id = 'cb-a' AND failure_code = 'CONTENT_TIMEOUT'), 2::bigint,
          'the timed-out slots stay timed out (late items do not reopen them)');

-- ===========================================================================
-- The report and the stuck view
-- ===========================================================================
SELECT is((SELECT jsonb_build_object('reason', r -> 'tracker' -> 'completion_reason', 'timed_out', r -> 'slots_timed_out',
                                     'purged', r -> 'purged', 'slot3', r -> 'slots' -> 2 -> 'failure_code')
             FROM els.batch_report('cb-a') AS r),
          '{"reason": "deadline", "timed_out": 2, "purged": false, "slot3": "CONTENT_TIMEOUT"}'::jsonb,
          'batch_report: completion_reason, timed-out slots and their failure code');
DO $setup$ BEGIN
    PERFORM els.register_batch(pg_temp.batch('cb-stuck', ARRAY['cbs-1']));
END $setup$;
SELECT ok(EXISTS (SELECT FROM els.stuck_batches WHERE batch_id = 'cb-stuck'), 'an open batch is in els.stuck_batches');
SELECT is((SELECT last_activity_at FROM els.stuck_batches WHERE batch_id = 'cb-stuck'), now(),
          'els.stuck_batches: last_activity_at (registration, nothing since)');
SELECT is(els.close_batch('cb-stuck') ->> 'outcome', 'closed', 'close it');
SELECT ok(NOT EXISTS (SELECT FROM els.stuck_batches WHERE batch_id = 'cb-stuck'), 'a closed batch is not stuck');

-- ===========================================================================
-- Unknown batch, NULL
-- ===========================================================================
SELECT * FROM pg_temp.rejects($$SELECT els.close_batch('cb-never-registered')$$, 'ELV03',
    'unknown batch: no batch with this id was registered',
    '{"field": "batch_id", "reason": "unknown_batch", "batch_id": "cb-never-registered"}', 'unknown batch');
DO $setup$ BEGIN
    PERFORM els.provision_content(pg_temp.content('cb-pending-only', 'cbp-t1'));
END $setup$;
SELECT * FROM pg_temp.rejects($$SELECT els.close_batch('cb-pending-only')$$, 'ELV03',
    'unknown batch: no batch with this id was registered',
    '{"field": "batch_id", "reason": "unknown_batch"}', 'a batch with only pending content is not registered');
SELECT * FROM pg_temp.rejects($$SELECT els.close_batch(NULL)$$, 'ELV02',
    'required argument batch_id is null', '{"field": "batch_id", "reason": "missing"}', 'batch_id NULL');

-- ===========================================================================
-- CONTENT_TIMEOUT is the database's: an event may not use it, the tables hold it only
-- on a slot the database closed itself
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch(pg_temp.batch('cb-code', ARRAY['cbc-1']));
END $setup$;
SELECT * FROM pg_temp.rejects($$SELECT els.record_validation_failure(pg_temp.failure('cb-code', 'cbc-f1', 'CONTENT_TIMEOUT'))$$,
    'ELV03', 'field validation_error_code has an unknown value',
    '{"field": "validation_error_code", "reason": "not_in_enum", "actual": "CONTENT_TIMEOUT"}',
    'an incoming failure with validation_error_code CONTENT_TIMEOUT');
SELECT throws_ok($$UPDATE els.essay_slot SET status = 'content_ingestion_failed', failure_code = 'SOMETHING_ELSE'
                    WHERE essay_id = 'cbc-1'$$, '23514', NULL, 'failure_code holds CONTENT_TIMEOUT only');
SELECT throws_ok($$UPDATE els.essay_slot SET failure_code = 'CONTENT_TIMEOUT' WHERE essay_id = 'cbc-1'$$, '23514', NULL,
                 'an empty slot cannot carry a failure code');

SELECT is_definer('els', 'close_batch', ARRAY['text'], 'close_batch is SECURITY DEFINER');

SELECT * FROM finish();
ROLLBACK;
