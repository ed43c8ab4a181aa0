-- els.apply_events (issue 15): a micro-batch of the three event kinds in arrival
-- order, applied by the set-based core the per-event functions also call. One
-- result per event; a rejected event gets the error its function would raise and
-- changes nothing, the others apply; events of one batch in one call behave as if
-- applied one after another (registration then content, content before the
-- registration, duplicates within the call, excess, completion once); a value
-- PostgreSQL refuses as jsonb is that event's result; the locks of several
-- batches are taken in ascending key order.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(39);

CREATE FUNCTION pg_temp.reg(p_batch text, p_essays text[]) RETURNS text LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'expected_essay_count', cardinality(p_essays),
                          'essay_ids', to_jsonb(p_essays), 'course_code', 'ENG5', 'user_id', 'teacher')::text;
CREATE FUNCTION pg_temp.content(p_batch text, p_text text) RETURNS text LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'text_storage_id', p_text,
                          'file_upload_id', 'up-' || p_text, 'original_file_name', p_text || '.docx',
                          'correlation_id', 'corr-' || p_text)::text;
CREATE FUNCTION pg_temp.failure(p_batch text, p_upload text) RETURNS text LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'file_upload_id', p_upload,
                          'original_file_name', p_upload || '.pdf',
                          'validation_error_code', 'EMPTY_CONTENT', 'correlation_id', 'corr-' || p_upload)::text;

-- ===========================================================================
-- shape and privileges
-- ===========================================================================
SELECT has_function('els', 'apply_events', ARRAY['text[]', 'text[]'], 'els.apply_events(text[], text[]) exists');
SELECT function_returns('els', 'apply_events', ARRAY['text[]', 'text[]'], 'jsonb', 'apply_events returns jsonb');
SELECT ok(has_function_privilege('els_worker', 'els.apply_events(text[], text[])', 'EXECUTE'),
          'els_worker may execute apply_events');
SELECT ok(NOT has_function_privilege('els_readonly', 'els.apply_events(text[], text[])', 'EXECUTE'),
          'els_readonly may not execute apply_events');
SELECT is((SELECT p.prosecdef FROM pg_proc p WHERE p.oid = 'els.apply_events(text[], text[])'::regprocedure),
          true, 'apply_events is SECURITY DEFINER');
SELECT is((SELECT p.proconfig FROM pg_proc p WHERE p.oid = 'els.apply_events(text[], text[])'::regprocedure),
          ARRAY['search_path=pg_catalog, pg_temp'], 'apply_events pins search_path');
SELECT is(els.apply_events(ARRAY[]::text[], ARRAY[]::text[]), '[]'::jsonb, 'an empty micro-batch: no result');
SELECT throws_ok($$SELECT els.apply_events(ARRAY['provision_content'], ARRAY['{}', '{}'])$$, '22023',
                 'kinds and events differ in length', 'kinds and events must have the same length');
SELECT throws_ok($$SELECT els.apply_events(ARRAY['nope'], ARRAY['{}'])$$, '22023',
                 'unknown event kind nope', 'an unknown kind is the caller''s bug, not a verdict');

-- ===========================================================================
-- one batch in one call, as if one after another
-- ===========================================================================
CREATE TEMP TABLE r1 AS
SELECT e.value AS res, e.ord
  FROM jsonb_array_elements(els.apply_events(
        ARRAY['provision_content', 'register_batch', 'provision_content', 'provision_content',
              'record_validation_failure', 'provision_content', 'provision_content'],
        ARRAY[pg_temp.content('ae-1', 't-early'), pg_temp.reg('ae-1', ARRAY['ae-1-a', 'ae-1-b', 'ae-1-c']),
              pg_temp.content('ae-1', 't-1'), pg_temp.content('ae-1', 't-1'),
              pg_temp.failure('ae-1', 'u-1'), pg_temp.content('ae-1', 't-2'), pg_temp.content('ae-1', 't-early')]))
       WITH ORDINALITY AS e(value, ord);

SELECT is((SELECT res -> 'result' ->> 'outcome' FROM r1 WHERE ord = 1), 'pending', 'content before the registration: pending');
SELECT is((SELECT res -> 'result' ->> 'outcome' FROM r1 WHERE ord = 2), 'registered', 'the registration');
SELECT is((SELECT (res -> 'result' ->> 'content_assigned')::int FROM r1 WHERE ord = 2), 1,
          'the registration reconciles the content that came before it in the same call');
SELECT is((SELECT res -> 'result' ->> 'essay_id' FROM r1 WHERE ord = 3), 'ae-1-b',
          'content after the registration takes the next empty slot');
SELECT is((SELECT res -> 'result' ->> 'outcome' FROM r1 WHERE ord = 4), 'duplicate', 'the same content twice in one call: duplicate');
SELECT is((SELECT res -> 'result' ->> 'essay_id' FROM r1 WHERE ord = 4), 'ae-1-b', 'the duplicate names the slot of the first');
SELECT is((SELECT res -> 'result' -> 'events' FROM r1 WHERE ord = 4), '[]'::jsonb, 'the duplicate emits nothing');
SELECT is((SELECT res -> 'result' ->> 'outcome' FROM r1 WHERE ord = 5), 'recorded', 'a failure closes the last slot');
SELECT is((SELECT (res -> 'result' ->> 'complete')::boolean FROM r1 WHERE ord = 5), true, 'and completes the batch');
SELECT is((SELECT jsonb_array_length(res -> 'result' -> 'events') FROM r1 WHERE ord = 5), 1, 'the completion event is the failure''s');
SELECT is((SELECT res -> 'result' ->> 'outcome' FROM r1 WHERE ord = 6), 'excess', 'content after completion: excess');
SELECT is((SELECT res -> 'result' ->> 'outcome' FROM r1 WHERE ord = 7), 'duplicate',
          'a redelivery of content reconciled earlier in the call: duplicate');
SELECT is((SELECT count(*)::int FROM els.event_outbox WHERE message_key = 'ae-1'
            AND event_type = 'BatchContentProvisioningCompleted'), 1, 'exactly one completion');
SELECT results_eq(
    $$SELECT event_type FROM els.event_outbox WHERE message_key = 'ae-1' ORDER BY id$$,
    $$VALUES ('EssaySlotAssigned'), ('EssaySlotAssigned'), ('BatchContentProvisioningCompleted'),
             ('ExcessContentProvisioned')$$,
    'outbox rows in the order one call after another writes them');
SELECT results_eq(
    $$SELECT essay_id, status::text, coalesce(text_storage_id, failed_file_upload_id)
        FROM els.essay_slot WHERE batch_id = 'ae-1' ORDER BY slot_no$$,
    $$VALUES ('ae-1-a', 'ready_for_processing', 't-early'), ('ae-1-b', 'ready_for_processing', 't-1'),
             ('ae-1-c', 'content_ingestion_failed', 'u-1')$$,
    'slots filled in arrival order');

-- ===========================================================================
-- rejected events change nothing; the others apply
-- ===========================================================================
CREATE TEMP TABLE r2 AS
SELECT e.value AS res, e.ord
  FROM jsonb_array_elements(els.apply_events(
        ARRAY['register_batch', 'provision_content', 'register_batch', 'register_batch', 'provision_content',
              'provision_content'],
        ARRAY[pg_temp.reg('ae-2', ARRAY['ae-2-a', 'ae-2-b']),
              '{"entity_id": "ae-2", "file_upload_id": "x", "original_file_name": "x"}',
              pg_temp.reg('ae-3', ARRAY['ae-2-a', 'ae-3-b']),
              (pg_temp.reg('ae-2', ARRAY['ae-2-a', 'ae-2-b'])::jsonb || '{"user_id": "other"}')::text,
              '{"entity_id": "ae-2", "text_storage_id": "\u0000"}',
              pg_temp.content('ae-2', 't-1')]))
       WITH ORDINALITY AS e(value, ord);
SELECT is((SELECT res -> 'result' ->> 'outcome' FROM r2 WHERE ord = 1), 'registered', 'the good registration applies');
SELECT is((SELECT res - 'detail_text' - 'context' FROM r2 WHERE ord = 2),
          jsonb_build_object('ok', false) || (pg_temp.error_of($$SELECT els.provision_content(
              '{"entity_id": "ae-2", "file_upload_id": "x", "original_file_name": "x"}')$$)),
          'a rejected event: the SQLSTATE, message and detail provision_content raises');
SELECT is((SELECT res ->> 'sqlstate' FROM r2 WHERE ord = 3), 'ELC02',
          'another batch claiming an essay id registered earlier in the same call: ELC02');
SELECT is((SELECT res ->> 'sqlstate' FROM r2 WHERE ord = 4), 'ELC01', 'a different identity: ELC01');
SELECT is((SELECT res ->> 'detail_text' FROM r2 WHERE ord = 4), (SELECT (res -> 'detail')::text FROM r2 WHERE ord = 4),
          'detail_text is the DETAIL as raised');
SELECT is((SELECT (res ->> 'refused_value')::boolean FROM r2 WHERE ord = 5), true, 'a value jsonb refuses: refused_value');
SELECT is((SELECT res ->> 'sqlstate' FROM r2 WHERE ord = 5), '22P05', 'with PostgreSQL''s SQLSTATE');
SELECT is((SELECT res -> 'result' ->> 'outcome' FROM r2 WHERE ord = 6), 'assigned', 'the events after the rejected ones apply');
SELECT is((SELECT count(*)::int FROM els.batch_tracker WHERE batch_id = 'ae-3'), 0, 'the ELC02 registration left no tracker');
SELECT is((SELECT user_id FROM els.batch_tracker WHERE batch_id = 'ae-2'), 'teacher', 'the ELC01 one changed nothing');

-- ===========================================================================
-- the per-event functions are calls of the same core
-- ===========================================================================
SELECT ok((SELECT prosrc FROM pg_proc WHERE oid = 'els.provision_content(jsonb)'::regprocedure)
          LIKE '%els._apply_one(''provision_content''%', 'provision_content calls the core');
SELECT ok((SELECT prosrc FROM pg_proc WHERE oid = 'els.register_batch(jsonb)'::regprocedure)
          LIKE '%els._apply_one(''register_batch''%', 'register_batch calls the core');

-- the JSON-array form: the same core, the same results
SELECT ok(has_function_privilege('els_worker', 'els.apply_events(jsonb)', 'EXECUTE'),
          'els_worker may execute apply_events(jsonb)');
CREATE FUNCTION pg_temp.no_context(p jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN (SELECT jsonb_agg(e.value - 'context' ORDER BY e.ord)
          FROM jsonb_array_elements(p) WITH ORDINALITY AS e(value, ord));
SELECT is(pg_temp.no_context(els.apply_events(jsonb_build_array(
              jsonb_build_object('kind', 'provision_content', 'event', pg_temp.content('ae-1', 't-1')::jsonb),
              jsonb_build_object('kind', 'provision_content', 'event', '{"entity_id": "ae-1"}'::jsonb)))),
          pg_temp.no_context(els.apply_events(ARRAY['provision_content', 'provision_content'],
                                              ARRAY[pg_temp.content('ae-1', 't-1'), '{"entity_id": "ae-1"}'])),
          'apply_events(jsonb) gives what apply_events(text[], text[]) gives (context aside: it names the caller)');
SELECT throws_ok($$SELECT els.apply_events('{}'::jsonb)$$, '22023', NULL, 'events must be a JSON array');

SELECT * FROM finish();
ROLLBACK;
