-- els.record_validation_failure (SPEC section 3): every outcome (pending,
-- recorded, duplicate, excess), the fields it stores, lowest-numbered empty slot
-- first, and every rejection it can raise (ELV01, ELV02, ELV03). Rejections are
-- checked as in 11_register_batch_errors: SQLSTATE and MESSAGE, JSON DETAIL,
-- and no row changed in any els table.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(86);

-- ---------------------------------------------------------------------------
-- Helpers (session-local, rolled back with the test); els_state, error_of and
-- rejects come from helpers/common.psql.
-- ---------------------------------------------------------------------------

-- A valid bare EssayValidationFailed payload; tests break one thing at a time.
CREATE FUNCTION pg_temp.failure(p_batch text DEFAULT 'vf-new', p_upload text DEFAULT 'vf-upload') RETURNS jsonb
LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'file_upload_id', p_upload,
                          'original_file_name', p_upload || '.pdf', 'validation_error_code', 'CONTENT_TOO_SHORT');
CREATE FUNCTION pg_temp.batch(p_batch text, p_essays text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'expected_essay_count', cardinality(p_essays),
                          'essay_ids', to_jsonb(p_essays), 'course_code', 'ENG5', 'user_id', 'teacher');

-- ===========================================================================
-- pending: the batch is not registered yet
-- ===========================================================================
SELECT is(els.record_validation_failure('{
    "event_id": "fa11fa11-0000-4000-8000-000000000001",
    "event_type": "huleedu.file.essay.validation.failed.v1",
    "correlation_id": "corr-fail",
    "data": {"entity_id": "vf-a", "file_upload_id": "up-early", "original_file_name": "Broken.pdf",
             "validation_error_code": "ENCRYPTED_FILE_UNSUPPORTED",
             "validation_error_detail": {"message": "password protected", "page": 1},
             "raw_file_storage_id": "raw-early", "file_size_bytes": 2048,
             "timestamp": "2026-03-04T05:06:07Z", "unknown_field": [1]}}'),
    '{"batch_id": "vf-a", "outcome": "pending", "essay_id": null, "complete": false, "events": []}'::jsonb,
    'pending: failure for an unregistered batch, exact result');
SELECT results_eq(
    $$SELECT disposition::text, essay_id, original_file_name, validation_error_code, validation_error_detail,
             raw_file_storage_id, file_size_bytes, correlation_id, source_event_id, event_timestamp,
             received_at, disposed_at
        FROM els.validation_failure WHERE batch_id = 'vf-a' AND file_upload_id = 'up-early'$$,
    $$VALUES ('pending', NULL::text, 'Broken.pdf', 'ENCRYPTED_FILE_UNSUPPORTED',
              '{"message": "password protected", "page": 1}'::jsonb, 'raw-early', 2048::bigint, 'corr-fail',
              'fa11fa11-0000-4000-8000-000000000001', '2026-03-04T05:06:07Z', now(), NULL::timestamptz)$$,
    'pending: every field of the event is stored, not yet disposed');
SELECT is_empty($$SELECT 1 FROM els.batch_tracker WHERE batch_id = 'vf-a'
                  UNION ALL SELECT 1 FROM els.event_outbox WHERE message_key = 'vf-a'$$,
                'pending: no tracker, no event');
SELECT is(els.record_validation_failure('{"event_type": "essay.validation.failed", "entity_id": "vf-a",
        "file_upload_id": "up-early-2", "original_file_name": "b.pdf", "validation_error_code": "EMPTY_CONTENT",
        "validation_error_detail": null}') ->> 'outcome',
          'pending', 'pending: bare payload, short event_type, validation_error_detail null');
SELECT ok((SELECT correlation_id ~ '^[0-9a-f-]{36}$' AND validation_error_detail IS NULL AND source_event_id IS NULL
             FROM els.validation_failure WHERE batch_id = 'vf-a' AND file_upload_id = 'up-early-2'),
          'pending: absent optional fields are NULL, a correlation id is generated');

CREATE TEMP TABLE snap AS SELECT pg_temp.els_state() AS state;
SELECT is(els.record_validation_failure(pg_temp.failure('vf-a', 'up-early') || '{"validation_error_code": "EMPTY_CONTENT"}'),
          '{"batch_id": "vf-a", "outcome": "duplicate", "essay_id": null, "complete": false, "events": []}'::jsonb,
          'duplicate (pending): same file_upload_id, even with another error code');
SELECT is(pg_temp.els_state(), (SELECT state FROM snap), 'duplicate (pending): no row changed');

-- ===========================================================================
-- recorded: lowest-numbered empty slot
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch(pg_temp.batch('vf-b', ARRAY['s-c', 's-b', 's-a']));
END $setup$;
SELECT is(els.provision_content('{"entity_id": "vf-b", "text_storage_id": "t-1", "file_upload_id": "ok-1",
                                  "original_file_name": "ok.docx"}') ->> 'essay_id', 's-c',
          'content fills slot 1');
SELECT is(els.record_validation_failure('{"correlation_id": "corr-rec", "event_id": "fa11fa11-0000-4000-8000-000000000002",
        "data": {"entity_id": "vf-b", "file_upload_id": "bad-1", "original_file_name": "bad.docx",
                 "validation_error_code": "TEXT_EXTRACTION_FAILED", "validation_error_detail": {"why": "corrupt"},
                 "file_size_bytes": 0}}'),
    '{"batch_id": "vf-b", "outcome": "recorded", "essay_id": "s-b", "complete": false, "events": []}'::jsonb,
    'recorded: closes the lowest empty slot (2), exact result, no event');
SELECT results_eq(
    $$SELECT slot_no, status::text, text_storage_id, failed_file_upload_id, filled_at IS NOT NULL
        FROM els.essay_slot WHERE batch_id = 'vf-b' ORDER BY slot_no$$,
    $$VALUES (1, 'ready_for_processing', 't-1', NULL::text, true),
             (2, 'content_ingestion_failed', NULL, 'bad-1', true),
             (3, 'uploaded', NULL, NULL, false)$$,
    'recorded: slot 2 is content_ingestion_failed and names the failed upload');
SELECT results_eq(
    $$SELECT disposition::text, essay_id, validation_error_code, validation_error_detail, file_size_bytes,
             correlation_id, source_event_id, disposed_at
        FROM els.validation_failure WHERE batch_id = 'vf-b' AND file_upload_id = 'bad-1'$$,
    $$VALUES ('assigned', 's-b', 'TEXT_EXTRACTION_FAILED', '{"why": "corrupt"}'::jsonb, 0::bigint, 'corr-rec',
              'fa11fa11-0000-4000-8000-000000000002', now())$$,
    'recorded: the ledger row keeps code and detail and names its slot');
SELECT is(els.record_validation_failure(pg_temp.failure('vf-b', 'bad-1')),
          '{"batch_id": "vf-b", "outcome": "duplicate", "essay_id": "s-b", "complete": false, "events": []}'::jsonb,
          'duplicate (recorded): essay_id names the slot it closed');
SELECT is_empty($$SELECT 1 FROM els.event_outbox WHERE message_key = 'vf-b' AND event_type <> 'EssaySlotAssigned'$$,
                'recorded: a failure emits no event of its own');

SELECT is(els.record_validation_failure(pg_temp.failure('vf-b', 'bad-2')),
          jsonb_build_object('batch_id', 'vf-b', 'outcome', 'recorded', 'essay_id', 's-a', 'complete', true,
                             'events', jsonb_build_array(els.stable_event_id('BatchContentProvisioningCompleted', 'vf-b'))),
          'recorded: the failure closing the last slot completes the batch; events = [completion]');

-- ===========================================================================
-- excess: no empty slot
-- ===========================================================================
SELECT is(els.record_validation_failure(pg_temp.failure('vf-b', 'bad-3')),
          '{"batch_id": "vf-b", "outcome": "excess", "essay_id": null, "complete": true, "events": []}'::jsonb,
          'excess: no empty slot, exact result, no event');
SELECT results_eq(
    $$SELECT disposition::text, essay_id, disposed_at FROM els.validation_failure
       WHERE batch_id = 'vf-b' AND file_upload_id = 'bad-3'$$,
    $$VALUES ('excess', NULL::text, now())$$,
    'excess: the failure is kept, disposition excess');
SELECT is(els.record_validation_failure(pg_temp.failure('vf-b', 'bad-3')),
          '{"batch_id": "vf-b", "outcome": "duplicate", "essay_id": null, "complete": true, "events": []}'::jsonb,
          'duplicate (excess): essay_id null');
SELECT is((SELECT count(*)::integer FROM els.event_outbox WHERE message_key = 'vf-b'
              AND event_type = 'BatchContentProvisioningCompleted'), 1,
          'still one completion after excess and duplicates');

-- pending failures of vf-a meet their registration; the redelivery names the slot
SELECT is(els.register_batch(pg_temp.batch('vf-a', ARRAY['va-1', 'va-2', 'va-3'])) ->> 'failures_applied', '2',
          'the pending failures are applied at registration');
SELECT is(els.record_validation_failure(pg_temp.failure('vf-a', 'up-early-2')) ->> 'essay_id', 'va-2',
          'duplicate (after reconciliation): essay_id names the slot the pending failure closed');
SELECT is(els.record_validation_failure(pg_temp.failure('vf-a', 'bad-1')) ->> 'outcome', 'recorded',
          'file_upload_id is unique per batch, not globally');

-- a tracker without slots (older writer): the failure waits as pending
INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id)
VALUES ('vf-slotless', 1, ARRAY['vsl-1'], 'ENG5', 't', 'c');
SELECT is(els.record_validation_failure(pg_temp.failure('vf-slotless', 'x')) ->> 'outcome', 'pending',
          'pending: a tracker without slots does not count as registered');

-- every validation_error_code of the SPEC is accepted
SELECT is(
    (SELECT array_agg(els.record_validation_failure(pg_temp.failure('vf-codes', 'u-' || c)
                          || jsonb_build_object('validation_error_code', c)) ->> 'outcome' ORDER BY c)
       FROM unnest(ARRAY['EMPTY_CONTENT', 'CONTENT_TOO_SHORT', 'CONTENT_TOO_LONG', 'RAW_STORAGE_FAILED',
                         'TEXT_EXTRACTION_FAILED', 'ENCRYPTED_FILE_UNSUPPORTED', 'UNKNOWN_VALIDATION_ERROR']) AS c),
    array_fill('pending'::text, ARRAY[7]),
    'all seven validation_error_codes of the SPEC are accepted');

-- ===========================================================================
-- Rejections
-- ===========================================================================
CREATE TEMP TABLE state_before_errors AS SELECT pg_temp.els_state() AS state;

SELECT * FROM pg_temp.rejects($$SELECT els.record_validation_failure('42')$$, 'ELV01',
    'event is not a JSON object', '{"field": null, "reason": "not_an_object", "actual": "number"}',
    'ELV01: a JSON number');
SELECT * FROM pg_temp.rejects($$SELECT els.record_validation_failure(NULL)$$, 'ELV01',
    'event is not a JSON object', '{"reason": "not_an_object"}', 'ELV01: SQL NULL');
SELECT * FROM pg_temp.rejects($$SELECT els.record_validation_failure('{"data": true}')$$, 'ELV01',
    'envelope field data is not a JSON object', '{"field": "data", "reason": "not_an_object", "actual": "boolean"}',
    'ELV01: data is a boolean');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(jsonb_build_object('data', pg_temp.failure(), 'source_service', 1))$$, 'ELV01',
    'envelope field source_service is not a string', '{"field": "source_service", "reason": "wrong_type"}',
    'ELV01: envelope source_service is a number');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(jsonb_build_object('data', pg_temp.failure(),
                                           'event_type', 'huleedu.file.essay.content.provisioned.v1'))$$, 'ELV03',
    'event_type names another event (misrouted)',
    '{"field": "event_type", "reason": "misrouted",
      "expected": ["huleedu.file.essay.validation.failed.v1", "essay.validation.failed"]}',
    'ELV03: content routed to record_validation_failure');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(pg_temp.failure() || '{"event_type": "batch.essays.registered"}')$$, 'ELV03',
    'event_type names another event (misrouted)', '{"field": "event_type", "reason": "misrouted"}',
    'ELV03: a registration routed to record_validation_failure (bare payload)');

SELECT pg_temp.rejects(format($$SELECT els.record_validation_failure(pg_temp.failure() - %L)$$, f), 'ELV02',
    format('required field %s is missing or null', f), jsonb_build_object('field', f, 'reason', 'missing'),
    format('ELV02: %s missing', f))
  FROM unnest(ARRAY['entity_id', 'file_upload_id', 'original_file_name', 'validation_error_code']) AS f;
SELECT pg_temp.rejects(
    format($$SELECT els.record_validation_failure(pg_temp.failure() || jsonb_build_object(%L, NULL))$$, f), 'ELV02',
    format('required field %s is missing or null', f), jsonb_build_object('field', f, 'reason', 'missing'),
    format('ELV02: %s null', f))
  FROM unnest(ARRAY['entity_id', 'file_upload_id', 'original_file_name', 'validation_error_code']) AS f;
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(pg_temp.failure() - 'validation_error_code' || '{"entity_id": 1}')$$, 'ELV02',
    'required field validation_error_code is missing or null', '{"field": "validation_error_code"}',
    'order: a missing field before a wrong type');

SELECT pg_temp.rejects(format($$SELECT els.record_validation_failure(pg_temp.failure() || '{"%s": 42}')$$, f), 'ELV03',
    format('field %s must be a string', f),
    jsonb_build_object('field', f, 'reason', 'wrong_type', 'expected', 'string', 'actual', 'number'),
    format('ELV03: %s is a number', f))
  FROM unnest(ARRAY['entity_id', 'file_upload_id', 'original_file_name', 'validation_error_code',
                    'raw_file_storage_id', 'correlation_id', 'timestamp']) AS f;
SELECT pg_temp.rejects(
    format($$SELECT els.record_validation_failure(pg_temp.failure() || jsonb_build_object(%L, repeat('x', 256)))$$, f), 'ELV03',
    format('field %s must be 1..255 characters', f),
    jsonb_build_object('field', f, 'reason', 'bad_length', 'actual', 256),
    format('ELV03: %s of 256 characters', f))
  FROM unnest(ARRAY['entity_id', 'file_upload_id']) AS f;
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(pg_temp.failure() || jsonb_build_object('original_file_name', repeat('n', 1025)))$$, 'ELV03',
    'field original_file_name must be 1..1024 characters',
    '{"field": "original_file_name", "reason": "bad_length", "max": 1024}',
    'ELV03: original_file_name of 1025 characters');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(pg_temp.failure() || '{"validation_error_code": "VIRUS_FOUND"}')$$, 'ELV03',
    'field validation_error_code has an unknown value',
    '{"field": "validation_error_code", "reason": "not_in_enum", "actual": "VIRUS_FOUND",
      "allowed": ["EMPTY_CONTENT", "CONTENT_TOO_SHORT", "CONTENT_TOO_LONG", "RAW_STORAGE_FAILED",
                  "TEXT_EXTRACTION_FAILED", "ENCRYPTED_FILE_UNSUPPORTED", "UNKNOWN_VALIDATION_ERROR"]}',
    'ELV03: unknown validation_error_code');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(pg_temp.failure() || '{"validation_error_code": "empty_content"}')$$, 'ELV03',
    'field validation_error_code has an unknown value', '{"field": "validation_error_code", "reason": "not_in_enum"}',
    'ELV03: validation_error_code is case-sensitive');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(pg_temp.failure() || '{"validation_error_detail": "too short"}')$$, 'ELV03',
    'field validation_error_detail must be an object',
    '{"field": "validation_error_detail", "reason": "wrong_type", "expected": "object", "actual": "string"}',
    'ELV03: validation_error_detail is a string');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(pg_temp.failure() || '{"file_size_bytes": -5}')$$, 'ELV03',
    'field file_size_bytes is out of range', '{"field": "file_size_bytes", "reason": "out_of_range"}',
    'ELV03: file_size_bytes negative');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(pg_temp.failure() || '{"file_size_bytes": [1]}')$$, 'ELV03',
    'field file_size_bytes must be an integer', '{"field": "file_size_bytes", "reason": "wrong_type", "actual": "array"}',
    'ELV03: file_size_bytes is an array');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.record_validation_failure(pg_temp.failure() || '{"timestamp": "2026-13"}')$$, 'ELV03',
    'field timestamp must be an ISO-8601 timestamp', '{"field": "timestamp", "reason": "bad_format"}',
    'ELV03: timestamp not ISO-8601');

SELECT is(pg_temp.els_state(), (SELECT state FROM state_before_errors),
          'after every rejection, every els table is exactly as before');

SELECT * FROM finish();
ROLLBACK;
