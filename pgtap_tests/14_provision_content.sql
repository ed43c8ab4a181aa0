-- els.provision_content (SPEC section 3): every outcome (pending, assigned,
-- duplicate, excess), the fields it stores, lowest-numbered empty slot first,
-- and every rejection it can raise (ELV01, ELV02, ELV03; the other codes are
-- about registrations). Rejections are checked as in 11_register_batch_errors:
-- SQLSTATE and MESSAGE, JSON DETAIL, and no row changed in any els table.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(104);

-- ---------------------------------------------------------------------------
-- Helpers (session-local, rolled back with the test); els_state, error_of and
-- rejects come from helpers/common.psql.
-- ---------------------------------------------------------------------------

-- A valid bare EssayContentProvisioned payload; tests break one thing at a time.
CREATE FUNCTION pg_temp.content(p_batch text DEFAULT 'pc-new', p_text text DEFAULT 'pc-text') RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'text_storage_id', p_text,
                          'file_upload_id', 'upload-' || p_text, 'original_file_name', p_text || '.docx');
CREATE FUNCTION pg_temp.batch(p_batch text, p_essays text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'expected_essay_count', cardinality(p_essays),
                          'essay_ids', to_jsonb(p_essays), 'course_code', 'SV1', 'user_id', 'teacher');

-- ===========================================================================
-- pending: the batch is not registered yet
-- ===========================================================================
SELECT is(els.provision_content('{
    "event_id": "c0ffee00-0000-4000-8000-000000000001",
    "event_type": "huleedu.file.essay.content.provisioned.v1",
    "correlation_id": "corr-pending",
    "data": {"entity_id": "pc-a", "text_storage_id": "text-early", "file_upload_id": "up-early",
             "original_file_name": "Early Essay.docx", "raw_file_storage_id": "raw-early",
             "file_size_bytes": 12345, "content_md5_hash": "d41d8cd98f00b204e9800998ecf8427e",
             "timestamp": "2026-03-04T05:06:07.123456+01:00", "unknown_field": 1}}'),
    '{"batch_id": "pc-a", "outcome": "pending", "essay_id": null, "complete": false, "events": []}'::jsonb,
    'pending: content for an unregistered batch, exact result');
SELECT results_eq(
    $$SELECT disposition::text, essay_id, file_upload_id, original_file_name, raw_file_storage_id, file_size_bytes,
             content_md5_hash, correlation_id, source_event_id, event_timestamp, received_at, disposed_at
        FROM els.essay_content WHERE batch_id = 'pc-a' AND text_storage_id = 'text-early'$$,
    $$VALUES ('pending', NULL::text, 'up-early', 'Early Essay.docx', 'raw-early', 12345::bigint,
              'd41d8cd98f00b204e9800998ecf8427e', 'corr-pending', 'c0ffee00-0000-4000-8000-000000000001',
              '2026-03-04T05:06:07.123456+01:00', now(), NULL::timestamptz)$$,
    'pending: every field of the event is stored, not yet disposed');
SELECT is_empty($$SELECT 1 FROM els.event_outbox WHERE message_key = 'pc-a'$$, 'pending: no event');
SELECT is_empty($$SELECT 1 FROM els.batch_tracker WHERE batch_id = 'pc-a'$$, 'pending: no tracker is created');
SELECT is(els.provision_content('{"event_type": "essay.content.provisioned", "entity_id": "pc-a",
                                  "text_storage_id": "text-early-2", "file_upload_id": "up-2",
                                  "original_file_name": "b.txt"}') ->> 'outcome',
          'pending', 'pending: bare payload with the short event_type');
SELECT ok((SELECT correlation_id ~ '^[0-9a-f-]{36}$' AND source_event_id IS NULL AND file_size_bytes IS NULL
                  AND raw_file_storage_id IS NULL AND content_md5_hash IS NULL AND event_timestamp IS NULL
             FROM els.essay_content WHERE batch_id = 'pc-a' AND text_storage_id = 'text-early-2'),
          'pending: optional fields absent are NULL, a correlation id is generated');

-- duplicate of pending content: nothing changes, essay_id null
CREATE TEMP TABLE snap AS SELECT pg_temp.els_state() AS state;
SELECT is(els.provision_content('{"entity_id": "pc-a", "text_storage_id": "text-early",
                                  "file_upload_id": "another-upload", "original_file_name": "renamed.docx"}'),
          '{"batch_id": "pc-a", "outcome": "duplicate", "essay_id": null, "complete": false, "events": []}'::jsonb,
          'duplicate (pending): same text_storage_id, even with other file fields');
SELECT is(pg_temp.els_state(), (SELECT state FROM snap), 'duplicate (pending): no row changed');

-- ===========================================================================
-- assigned: lowest-numbered empty slot
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch(pg_temp.batch('pc-b', ARRAY['essay-z', 'essay-y', 'essay-x', 'essay-w']));
END $setup$;
SELECT is(els.provision_content('{"correlation_id": "corr-assign", "data": {"entity_id": "pc-b",
        "text_storage_id": "text-1", "file_upload_id": "up-1", "original_file_name": "one.pdf",
        "raw_file_storage_id": "raw-1", "file_size_bytes": 0, "content_md5_hash": "h1",
        "timestamp": "2026-03-04"}}'),
    jsonb_build_object('batch_id', 'pc-b', 'outcome', 'assigned', 'essay_id', 'essay-z', 'complete', false,
                       'events', jsonb_build_array(els.stable_event_id('EssaySlotAssigned', 'pc-b', 'essay-z', 'text-1'))),
    'assigned: slot 1 (essay_ids[1], not the smallest essay id), exact result with its event');
SELECT results_eq(
    $$SELECT slot_no, status::text, text_storage_id, filled_at FROM els.essay_slot WHERE batch_id = 'pc-b' ORDER BY slot_no$$,
    $$VALUES (1, 'ready_for_processing', 'text-1', now()), (2, 'uploaded', NULL::text, NULL::timestamptz),
             (3, 'uploaded', NULL, NULL), (4, 'uploaded', NULL, NULL)$$,
    'assigned: slot 1 is ready_for_processing with the text, the others stay uploaded');
SELECT results_eq(
    $$SELECT disposition::text, essay_id, file_upload_id, original_file_name, raw_file_storage_id, file_size_bytes,
             content_md5_hash, correlation_id, event_timestamp, disposed_at
        FROM els.essay_content WHERE batch_id = 'pc-b' AND text_storage_id = 'text-1'$$,
    $$VALUES ('assigned', 'essay-z', 'up-1', 'one.pdf', 'raw-1', 0::bigint, 'h1', 'corr-assign', '2026-03-04', now())$$,
    'assigned: the ledger row keeps every file field and names its slot');
SELECT is(els.record_validation_failure('{"entity_id": "pc-b", "file_upload_id": "bad-1", "original_file_name": "x",
                                          "validation_error_code": "EMPTY_CONTENT"}') ->> 'essay_id',
          'essay-y', 'a failure closes slot 2');
SELECT is(els.provision_content(pg_temp.content('pc-b', 'text-2')) ->> 'essay_id', 'essay-x',
          'assigned: the next content skips filled and failed slots -> slot 3');
SELECT is(els.provision_content(pg_temp.content('pc-b', 'text-1')),
          '{"batch_id": "pc-b", "outcome": "duplicate", "essay_id": "essay-z", "complete": false, "events": []}'::jsonb,
          'duplicate (assigned): essay_id names the slot it filled');
SELECT is(els.provision_content(pg_temp.content('pc-b', 'text-3')) -> 'complete', 'true'::jsonb,
          'assigned: the content filling the last slot (4) completes the batch');
SELECT results_eq(
    $$SELECT slot_no, essay_id, status::text, coalesce(text_storage_id, failed_file_upload_id)
        FROM els.essay_slot WHERE batch_id = 'pc-b' ORDER BY slot_no$$,
    $$VALUES (1, 'essay-z', 'ready_for_processing', 'text-1'), (2, 'essay-y', 'content_ingestion_failed', 'bad-1'),
             (3, 'essay-x', 'ready_for_processing', 'text-2'), (4, 'essay-w', 'ready_for_processing', 'text-3')$$,
    'assigned: slots were filled lowest-numbered first');

-- ===========================================================================
-- excess: no empty slot
-- ===========================================================================
SELECT is(els.provision_content(pg_temp.content('pc-b', 'text-4')),
          jsonb_build_object('batch_id', 'pc-b', 'outcome', 'excess', 'essay_id', NULL, 'complete', true,
                             'events', jsonb_build_array(els.stable_event_id('ExcessContentProvisioned', 'pc-b', 'text-4'))),
          'excess: exact result with the ExcessContentProvisioned event');
SELECT results_eq(
    $$SELECT disposition::text, essay_id, file_upload_id, original_file_name, disposed_at
        FROM els.essay_content WHERE batch_id = 'pc-b' AND text_storage_id = 'text-4'$$,
    $$VALUES ('excess', NULL::text, 'upload-text-4', 'text-4.docx', now())$$,
    'excess: the content is kept, disposition excess, no slot');
SELECT is(els.provision_content(pg_temp.content('pc-b', 'text-4')),
          '{"batch_id": "pc-b", "outcome": "duplicate", "essay_id": null, "complete": true, "events": []}'::jsonb,
          'duplicate (excess): essay_id null, no second event');

-- pending content of pc-a meets its registration; a redelivery then names the slot
SELECT is(els.register_batch(pg_temp.batch('pc-a', ARRAY['pa-1', 'pa-2', 'pa-3'])) ->> 'content_assigned', '2',
          'the pending content is reconciled at registration');
SELECT is(els.provision_content(pg_temp.content('pc-a', 'text-early')) ->> 'essay_id', 'pa-1',
          'duplicate (after reconciliation): essay_id names the slot the pending content got');

-- text_storage_id is unique per batch, not globally
SELECT is(els.provision_content(pg_temp.content('pc-a', 'text-1')) ->> 'outcome', 'assigned',
          'the same text_storage_id in another batch is new content there');

-- a tracker without slots (older writer): content waits as pending
INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id)
VALUES ('pc-slotless', 1, ARRAY['psl-1'], 'ENG5', 't', 'c');
SELECT is(els.provision_content(pg_temp.content('pc-slotless', 't')) ->> 'outcome', 'pending',
          'pending: a tracker without slots does not count as registered');

-- ===========================================================================
-- Rejections
-- ===========================================================================
CREATE TEMP TABLE state_before_errors AS SELECT pg_temp.els_state() AS state;

SELECT * FROM pg_temp.rejects($$SELECT els.provision_content('[]')$$, 'ELV01',
    'event is not a JSON object', '{"field": null, "reason": "not_an_object", "actual": "array"}',
    'ELV01: a JSON array');
SELECT * FROM pg_temp.rejects($$SELECT els.provision_content(NULL)$$, 'ELV01',
    'event is not a JSON object', '{"reason": "not_an_object"}', 'ELV01: SQL NULL');
SELECT * FROM pg_temp.rejects($$SELECT els.provision_content('{"data": "text"}')$$, 'ELV01',
    'envelope field data is not a JSON object', '{"field": "data", "reason": "not_an_object", "actual": "string"}',
    'ELV01: data is a string');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(jsonb_build_object('data', pg_temp.content(), 'event_id', 5))$$, 'ELV01',
    'envelope field event_id is not a string', '{"field": "event_id", "reason": "wrong_type"}',
    'ELV01: envelope event_id is a number');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(jsonb_build_object('data', pg_temp.content(), 'correlation_id', repeat('c', 256)))$$, 'ELV01',
    'envelope field correlation_id must be 1..255 characters', '{"field": "correlation_id", "reason": "bad_length"}',
    'ELV01: envelope correlation_id of 256 characters');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(jsonb_build_object('data', pg_temp.content(),
                                   'event_type', 'huleedu.batch.essays.registered.v1'))$$, 'ELV03',
    'event_type names another event (misrouted)',
    '{"field": "event_type", "reason": "misrouted",
      "expected": ["huleedu.file.essay.content.provisioned.v1", "essay.content.provisioned"]}',
    'ELV03: a registration routed to provision_content');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() || '{"event_type": "essay.validation.failed"}')$$, 'ELV03',
    'event_type names another event (misrouted)', '{"field": "event_type", "reason": "misrouted"}',
    'ELV03: a validation failure routed to provision_content (bare payload)');

SELECT pg_temp.rejects(format($$SELECT els.provision_content(pg_temp.content() - %L)$$, f), 'ELV02',
    format('required field %s is missing or null', f), jsonb_build_object('field', f, 'reason', 'missing'),
    format('ELV02: %s missing', f))
  FROM unnest(ARRAY['entity_id', 'text_storage_id', 'file_upload_id', 'original_file_name']) AS f;
SELECT pg_temp.rejects(format($$SELECT els.provision_content(pg_temp.content() || jsonb_build_object(%L, NULL))$$, f), 'ELV02',
    format('required field %s is missing or null', f), jsonb_build_object('field', f, 'reason', 'missing'),
    format('ELV02: %s null', f))
  FROM unnest(ARRAY['entity_id', 'text_storage_id', 'file_upload_id', 'original_file_name']) AS f;
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() - 'original_file_name' || '{"text_storage_id": 1}')$$, 'ELV02',
    'required field original_file_name is missing or null', '{"field": "original_file_name"}',
    'order: a missing field before a wrong type');

SELECT pg_temp.rejects(format($$SELECT els.provision_content(pg_temp.content() || '{"%s": 42}')$$, f), 'ELV03',
    format('field %s must be a string', f),
    jsonb_build_object('field', f, 'reason', 'wrong_type', 'expected', 'string', 'actual', 'number'),
    format('ELV03: %s is a number', f))
  FROM unnest(ARRAY['entity_id', 'text_storage_id', 'file_upload_id', 'original_file_name',
                    'raw_file_storage_id', 'content_md5_hash', 'correlation_id', 'timestamp']) AS f;
SELECT pg_temp.rejects(format($$SELECT els.provision_content(pg_temp.content() || '{"%s": ""}')$$, f), 'ELV03',
    format('field %s must be 1..%s characters', f, CASE f WHEN 'original_file_name' THEN 1024 ELSE 255 END),
    jsonb_build_object('field', f, 'reason', 'bad_length', 'actual', 0),
    format('ELV03: %s is empty', f))
  FROM unnest(ARRAY['entity_id', 'text_storage_id', 'file_upload_id', 'original_file_name']) AS f;
SELECT pg_temp.rejects(
    format($$SELECT els.provision_content(pg_temp.content() || jsonb_build_object(%L, repeat('x', 256)))$$, f), 'ELV03',
    format('field %s must be 1..255 characters', f),
    jsonb_build_object('field', f, 'reason', 'bad_length', 'max', 255, 'actual', 256),
    format('ELV03: %s of 256 characters', f))
  FROM unnest(ARRAY['entity_id', 'text_storage_id', 'file_upload_id']) AS f;
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() || jsonb_build_object('original_file_name', repeat('n', 1025)))$$, 'ELV03',
    'field original_file_name must be 1..1024 characters',
    '{"field": "original_file_name", "reason": "bad_length", "max": 1024, "actual": 1025}',
    'ELV03: original_file_name of 1025 characters');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() || '{"file_size_bytes": -1}')$$, 'ELV03',
    'field file_size_bytes is out of range', '{"field": "file_size_bytes", "reason": "out_of_range", "min": 0}',
    'ELV03: file_size_bytes negative');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() || '{"file_size_bytes": "100"}')$$, 'ELV03',
    'field file_size_bytes must be an integer', '{"field": "file_size_bytes", "reason": "wrong_type", "actual": "string"}',
    'ELV03: file_size_bytes is a string (not coerced)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() || '{"file_size_bytes": 10.5}')$$, 'ELV03',
    'field file_size_bytes must be an integer', '{"field": "file_size_bytes", "reason": "not_an_integer"}',
    'ELV03: file_size_bytes has a fraction');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() || '{"file_size_bytes": 9223372036854775808}')$$, 'ELV03',
    'field file_size_bytes is out of range', '{"field": "file_size_bytes", "reason": "out_of_range"}',
    'ELV03: file_size_bytes beyond bigint');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() || '{"timestamp": "yesterday"}')$$, 'ELV03',
    'field timestamp must be an ISO-8601 timestamp',
    '{"field": "timestamp", "reason": "bad_format", "expected": "ISO-8601"}',
    'ELV03: timestamp not ISO-8601');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() || '{"timestamp": "04/03/2026 10:00"}')$$, 'ELV03',
    'field timestamp must be an ISO-8601 timestamp', '{"field": "timestamp", "reason": "bad_format"}',
    'ELV03: timestamp in a local date format');

SELECT * FROM pg_temp.rejects(
    $$SELECT els.provision_content(pg_temp.content() || '{"timestamp": "2026-19-45T99:99:99Z"}')$$, 'ELV03',
    'field timestamp must be an ISO-8601 timestamp', '{"field": "timestamp", "reason": "bad_format"}',
    'ELV03: timestamp with month, day and time out of range');
SELECT is(pg_temp.els_state(), (SELECT state FROM state_before_errors),
          'after every rejection, every els table is exactly as before');

-- accepted timestamp shapes and boundaries (each creates pending content)
SELECT is(
    (SELECT array_agg(els.provision_content(pg_temp.content('pc-ts', 'ts-' || n) || jsonb_build_object('timestamp', ts)) ->> 'outcome'
                      ORDER BY n)
       FROM unnest(ARRAY['2026-03-04T05:06:07Z', '2026-03-04T05:06:07.123+00:00', '2026-03-04 05:06',
                         '2026-03-04T05:06:07-0500', '2026-03-04T05:06:07.123456789z']) WITH ORDINALITY AS u(ts, n)),
    ARRAY['pending', 'pending', 'pending', 'pending', 'pending'],
    'ISO-8601 timestamps with Z, offsets, fractions, or without seconds are accepted');
SELECT is(els.provision_content(pg_temp.content('pc-max', repeat('t', 255))
                                || jsonb_build_object('file_upload_id', repeat('u', 255), 'original_file_name', repeat('n', 1024),
                                                      'file_size_bytes', 9223372036854775807)) ->> 'outcome',
          'pending', 'boundaries: 255-character ids, 1024-character file name, file_size_bytes = max bigint');

SELECT * FROM finish();
ROLLBACK;
