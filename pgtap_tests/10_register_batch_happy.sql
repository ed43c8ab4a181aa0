-- els.register_batch: the happy path (SPEC sections 2 and 3).
-- GUEST and REGULAR batches, envelope and bare payload, the result jsonb key by
-- key, the slots (one per essay id, in essay_ids order, status 'uploaded'), the
-- tracker fields, and event_type given as the topic name or the short name.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(39);

-- ---------------------------------------------------------------------------
-- GUEST batch, bare payload (no envelope), class_id absent.
-- essay_ids deliberately not in sorted order: slot numbers follow the array.
-- ---------------------------------------------------------------------------
SELECT is(
    els.register_batch('{"entity_id": "happy-guest", "expected_essay_count": 3,
                         "essay_ids": ["hg-c", "hg-a", "hg-b"], "course_code": "ENG5",
                         "user_id": "teacher-1", "correlation_id": "corr-guest"}'),
    '{"batch_id": "happy-guest", "outcome": "registered", "class_type": "GUEST",
      "expected_count": 3, "slots_created": 3, "content_assigned": 0,
      "failures_applied": 0, "excess": 0, "complete": false, "events": []}'::jsonb,
    'GUEST bare payload: the result is exactly the SPEC section 3 document');

SELECT results_eq(
    $$SELECT essay_id, slot_no, status::text, text_storage_id, failed_file_upload_id, filled_at
        FROM els.essay_slot WHERE batch_id = 'happy-guest' ORDER BY slot_no$$,
    $$VALUES ('hg-c', 1, 'uploaded', NULL::text, NULL::text, NULL::timestamptz),
             ('hg-a', 2, 'uploaded', NULL, NULL, NULL),
             ('hg-b', 3, 'uploaded', NULL, NULL, NULL)$$,
    'GUEST: one empty slot per essay id, numbered in essay_ids order, status uploaded');

SELECT results_eq(
    $$SELECT expected_count, essay_ids, course_code, user_id, org_id, class_id, class_type,
             student_prompt_ref, metadata, correlation_id, registration_event_id, completed_at
        FROM els.batch_tracker WHERE batch_id = 'happy-guest'$$,
    $$VALUES (3, ARRAY['hg-c', 'hg-a', 'hg-b'], 'ENG5', 'teacher-1', NULL::text, NULL::text,
              'GUEST', NULL::jsonb, '{}'::jsonb, 'corr-guest', NULL::text, NULL::timestamptz)$$,
    'GUEST: tracker holds the identity; bare payload takes correlation_id from data; metadata defaults to {}');

SELECT is((SELECT registered_at FROM els.batch_tracker WHERE batch_id = 'happy-guest'), now(),
          'GUEST: registered_at is the registering transaction''s time');

SELECT is((SELECT count(*)::integer FROM els.event_outbox WHERE message_key = 'happy-guest'), 0,
          'GUEST: registration of a batch without content emits no event');

-- ---------------------------------------------------------------------------
-- REGULAR batch, full envelope, event_type = topic name, every optional field.
-- ---------------------------------------------------------------------------
SELECT is(
    els.register_batch('{
        "event_id": "0b8f5a4e-3c1d-4f7a-9e2b-6d5c4b3a2f10",
        "event_type": "huleedu.batch.essays.registered.v1",
        "event_timestamp": "2026-01-02T03:04:05Z",
        "source_service": "batch_orchestrator_service",
        "schema_version": 1,
        "correlation_id": "corr-envelope",
        "metadata": {"trace": "abc"},
        "data": {"entity_id": "happy-regular", "expected_essay_count": 2,
                 "essay_ids": ["hr-1", "hr-2"], "course_code": "SV2", "user_id": "teacher-2",
                 "org_id": "org-9", "class_id": "class-7",
                 "student_prompt_ref": {"storage_id": "prompt-1"},
                 "metadata": {"source": "test"},
                 "correlation_id": "corr-data-ignored",
                 "some_future_field": [1, 2, 3]}}'),
    '{"batch_id": "happy-regular", "outcome": "registered", "class_type": "REGULAR",
      "expected_count": 2, "slots_created": 2, "content_assigned": 0,
      "failures_applied": 0, "excess": 0, "complete": false, "events": []}'::jsonb,
    'REGULAR envelope: the result is exactly the SPEC section 3 document');

SELECT results_eq(
    $$SELECT essay_id, slot_no, status::text FROM els.essay_slot
       WHERE batch_id = 'happy-regular' ORDER BY slot_no$$,
    $$VALUES ('hr-1', 1, 'uploaded'), ('hr-2', 2, 'uploaded')$$,
    'REGULAR: slots in essay_ids order, status uploaded');

SELECT results_eq(
    $$SELECT expected_count, essay_ids, course_code, user_id, org_id, class_id, class_type,
             student_prompt_ref, metadata, correlation_id, registration_event_id, completed_at
        FROM els.batch_tracker WHERE batch_id = 'happy-regular'$$,
    $$VALUES (2, ARRAY['hr-1', 'hr-2'], 'SV2', 'teacher-2', 'org-9', 'class-7', 'REGULAR',
              '{"storage_id": "prompt-1"}'::jsonb, '{"source": "test"}'::jsonb,
              'corr-envelope', '0b8f5a4e-3c1d-4f7a-9e2b-6d5c4b3a2f10', NULL::timestamptz)$$,
    'REGULAR: tracker keeps org_id, class_id, prompt ref, payload metadata, the envelope''s correlation and event id');

-- ---------------------------------------------------------------------------
-- class_id given as JSON null is a GUEST batch; org_id null is accepted.
-- ---------------------------------------------------------------------------
SELECT is(
    els.register_batch('{"entity_id": "happy-null-class", "expected_essay_count": 1,
                         "essay_ids": ["hn-1"], "course_code": "ENG7", "user_id": "u",
                         "class_id": null, "org_id": null, "student_prompt_ref": null}') ->> 'class_type',
    'GUEST', 'class_id: null means a GUEST batch');
SELECT results_eq(
    $$SELECT class_id, org_id, class_type, student_prompt_ref FROM els.batch_tracker
       WHERE batch_id = 'happy-null-class'$$,
    $$VALUES (NULL::text, NULL::text, 'GUEST', NULL::jsonb)$$,
    'class_id, org_id, student_prompt_ref null are stored as SQL NULL');

-- Bare payload without any correlation id: one is generated (a uuid).
SELECT ok(
    (SELECT correlation_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
       FROM els.batch_tracker WHERE batch_id = 'happy-null-class'),
    'bare payload without correlation_id: a uuid correlation id is generated');

-- Envelope whose correlation_id is null: data.correlation_id is used.
SELECT is(
    els.register_batch('{"event_type": "batch.essays.registered", "correlation_id": null,
                         "data": {"entity_id": "happy-corr-fallback", "expected_essay_count": 1,
                                  "essay_ids": ["hcf-1"], "course_code": "SV1", "user_id": "u",
                                  "correlation_id": "corr-from-data"}}') ->> 'outcome',
    'registered', 'envelope with event_type as the short name is accepted');
SELECT is((SELECT correlation_id FROM els.batch_tracker WHERE batch_id = 'happy-corr-fallback'),
          'corr-from-data', 'envelope correlation_id null: data.correlation_id is used');

-- ---------------------------------------------------------------------------
-- event_type: topic name and short name, in an envelope and in a bare payload.
-- ---------------------------------------------------------------------------
SELECT is(
    els.register_batch('{"event_type": "huleedu.batch.essays.registered.v1",
                         "entity_id": "happy-bare-topic", "expected_essay_count": 1,
                         "essay_ids": ["hbt-1"], "course_code": "SV3", "user_id": "u"}') ->> 'outcome',
    'registered', 'bare payload with event_type = topic name is accepted');
SELECT is(
    els.register_batch('{"event_type": "batch.essays.registered",
                         "entity_id": "happy-bare-short", "expected_essay_count": 1,
                         "essay_ids": ["hbs-1"], "course_code": "ENG6", "user_id": "u"}') ->> 'outcome',
    'registered', 'bare payload with event_type = short name is accepted');
SELECT is(
    els.register_batch('{"event_type": null, "data": {"entity_id": "happy-null-type",
                         "expected_essay_count": 1, "essay_ids": ["hnt-1"],
                         "course_code": "ENG5", "user_id": "u"}}') ->> 'outcome',
    'registered', 'envelope with event_type null (absent) is accepted');

-- ---------------------------------------------------------------------------
-- Every course code of the SPEC is accepted.
-- ---------------------------------------------------------------------------
SELECT is(
    (SELECT array_agg(els.register_batch(jsonb_build_object(
                'entity_id', 'happy-course-' || c, 'expected_essay_count', 1,
                'essay_ids', jsonb_build_array('hcc-' || c), 'course_code', c,
                'user_id', 'u')) ->> 'outcome' ORDER BY c)
       FROM unnest(ARRAY['ENG5', 'ENG6', 'ENG7', 'SV1', 'SV2', 'SV3']) AS c),
    ARRAY['registered', 'registered', 'registered', 'registered', 'registered', 'registered'],
    'every course_code of the SPEC (ENG5 ENG6 ENG7 SV1 SV2 SV3) is accepted');

-- ---------------------------------------------------------------------------
-- Boundaries: 255-character strings, 1 essay, 10000 essays.
-- ---------------------------------------------------------------------------
SELECT is(
    els.register_batch(jsonb_build_object(
        'entity_id', repeat('b', 255), 'expected_essay_count', 1,
        'essay_ids', jsonb_build_array(repeat('e', 255)), 'course_code', 'ENG5',
        'user_id', repeat('u', 255), 'org_id', repeat('o', 255), 'class_id', repeat('c', 255))) ->> 'outcome',
    'registered', 'strings of exactly 255 characters are accepted');
SELECT is((SELECT length(essay_id) FROM els.essay_slot WHERE batch_id = repeat('b', 255)), 255,
          'a 255-character essay id is stored whole');

SELECT is(
    els.register_batch(jsonb_build_object(
        'entity_id', 'happy-10000', 'expected_essay_count', 10000,
        'essay_ids', (SELECT jsonb_agg('big-' || i ORDER BY i) FROM generate_series(1, 10000) AS i),
        'course_code', 'ENG5', 'user_id', 'u')),
    '{"batch_id": "happy-10000", "outcome": "registered", "class_type": "GUEST",
      "expected_count": 10000, "slots_created": 10000, "content_assigned": 0,
      "failures_applied": 0, "excess": 0, "complete": false, "events": []}'::jsonb,
    'a batch of exactly 10000 essays (the ELV06 limit) is accepted');
SELECT is(
    (SELECT count(*)::integer FROM els.essay_slot
      WHERE batch_id = 'happy-10000' AND status = 'uploaded' AND essay_id = 'big-' || slot_no),
    10000, '10000 empty slots, slot n holds essay_ids[n]');

-- Unicode: lengths are characters, not bytes (255 x a 3-byte character).
SELECT is(
    els.register_batch(jsonb_build_object(
        'entity_id', 'happy-unicode', 'expected_essay_count', 2,
        'essay_ids', jsonb_build_array(repeat('ä', 255), 'ö-€'), 'course_code', 'SV1',
        'user_id', 'användare')) ->> 'slots_created',
    '2', '255 multi-byte characters are 255 characters: accepted');

-- Unknown extra fields, in the envelope and in the payload, are ignored.
SELECT is(
    els.register_batch('{"event_type": "huleedu.batch.essays.registered.v1",
                         "unexpected_envelope_field": {"x": 1}, "schema_version": 2,
                         "data": {"entity_id": "happy-extra", "expected_essay_count": 1,
                                  "essay_ids": ["he-1"], "course_code": "ENG5", "user_id": "u",
                                  "unexpected": true, "nested": {"deep": [null]}}}') ->> 'outcome',
    'registered', 'unknown extra fields in envelope and payload are ignored');

-- Each call stands alone: other batches were not touched by any of these.
SELECT is((SELECT count(*)::integer FROM els.batch_tracker WHERE batch_id LIKE 'happy-%'
              OR batch_id = repeat('b', 255)), 17,
          'one tracker per registered batch (17)');
SELECT is((SELECT count(*)::integer FROM els.essay_slot AS s
             JOIN els.batch_tracker AS t USING (batch_id)
            WHERE t.batch_id LIKE 'happy-%' OR t.batch_id = repeat('b', 255)),
          10000 + 3 + 2 + 1 + 1 + 1 + 1 + 1 + 6 + 1 + 2 + 1,
          'one slot per essay id across all registered batches');
SELECT is_empty(
    $$SELECT t.batch_id FROM els.batch_tracker AS t
       WHERE (t.batch_id LIKE 'happy-%' OR t.batch_id = repeat('b', 255))
         AND t.expected_count <> (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = t.batch_id)$$,
    'every registered tracker has exactly expected_count slots');
SELECT is_empty(
    $$SELECT 1 FROM els.essay_content WHERE batch_id LIKE 'happy-%'
      UNION ALL SELECT 1 FROM els.validation_failure WHERE batch_id LIKE 'happy-%'
      UNION ALL SELECT 1 FROM els.event_outbox WHERE message_key LIKE 'happy-%'$$,
    'registrations without content write no content, failure or outbox row');

-- The status values are the database's own enum (SPEC rule 6).
SELECT enum_has_labels('els', 'essay_status',
    ARRAY['uploaded', 'ready_for_processing', 'content_ingestion_failed'],
    'els.essay_status defines exactly the three slot statuses, in order');
SELECT col_type_is('els', 'essay_slot', 'status', 'els.essay_status',
                   'essay_slot.status is the els.essay_status enum');
SELECT col_default_is('els', 'essay_slot', 'status', 'uploaded'::els.essay_status::text,
                      'a new slot is uploaded by default');

-- A registered batch whose content then arrives is not a different identity:
-- registering it again after content is a duplicate and keeps the content.
SELECT is(els.provision_content('{"entity_id": "happy-guest", "text_storage_id": "hg-t1",
                                  "file_upload_id": "hg-f1", "original_file_name": "one.txt"}') ->> 'essay_id',
          'hg-c', 'content fills slot 1 (essay_ids[1] = hg-c)');
SELECT is(
    els.register_batch('{"entity_id": "happy-guest", "expected_essay_count": 3,
                         "essay_ids": ["hg-c", "hg-a", "hg-b"], "course_code": "ENG5",
                         "user_id": "teacher-1", "correlation_id": "corr-guest"}'),
    '{"batch_id": "happy-guest", "outcome": "duplicate", "class_type": "GUEST",
      "expected_count": 3, "slots_created": 0, "content_assigned": 0,
      "failures_applied": 0, "excess": 0, "complete": false, "events": []}'::jsonb,
    'registering the same batch again is a duplicate with the exact result document');
SELECT results_eq(
    $$SELECT essay_id, status::text, text_storage_id FROM els.essay_slot
       WHERE batch_id = 'happy-guest' ORDER BY slot_no$$,
    $$VALUES ('hg-c', 'ready_for_processing', 'hg-t1'), ('hg-a', 'uploaded', NULL::text),
             ('hg-b', 'uploaded', NULL::text)$$,
    'the duplicate registration left the filled slot alone');

-- The function signature callers rely on.
SELECT function_returns('els', 'register_batch', ARRAY['jsonb'], 'jsonb',
                        'els.register_batch(jsonb) returns jsonb');
SELECT is_definer('els', 'register_batch', ARRAY['jsonb'], 'els.register_batch is SECURITY DEFINER');
SELECT function_lang_is('els', 'register_batch', ARRAY['jsonb'], 'plpgsql',
                        'els.register_batch is PL/pgSQL');
SELECT volatility_is('els', 'register_batch', ARRAY['jsonb'], 'volatile',
                     'els.register_batch is volatile');

-- Result keys: exactly the SPEC's, no more, no fewer.
SELECT is(
    (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(els.register_batch(
        '{"entity_id": "happy-keys", "expected_essay_count": 1, "essay_ids": ["hk-1"],
          "course_code": "ENG5", "user_id": "u"}')) AS k),
    ARRAY['batch_id', 'class_type', 'complete', 'content_assigned', 'events', 'excess',
          'expected_count', 'failures_applied', 'outcome', 'slots_created'],
    'register_batch result has exactly the ten keys of SPEC section 3');
SELECT is(
    (SELECT jsonb_object_agg(k, jsonb_typeof(v))
       FROM jsonb_each(els.register_batch('{"entity_id": "happy-keys", "expected_essay_count": 1,
                                            "essay_ids": ["hk-1"], "course_code": "ENG5",
                                            "user_id": "u"}')) AS e(k, v)),
    '{"batch_id": "string", "outcome": "string", "class_type": "string", "expected_count": "number",
      "slots_created": "number", "content_assigned": "number", "failures_applied": "number",
      "excess": "number", "complete": "boolean", "events": "array"}'::jsonb,
    'register_batch result keys have the SPEC''s JSON types');

SELECT * FROM finish();
ROLLBACK;
