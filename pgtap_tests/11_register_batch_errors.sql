-- els.register_batch: every rejection of SPEC section 4.
-- Each case is checked twice: throws_ok on the SQLSTATE and the exact one-line
-- MESSAGE, then the DETAIL (caught with GET STACKED DIAGNOSTICS) must be a JSON
-- object holding the expected field/reason (and other keys where useful), and
-- no row of any els table may have changed (every table's row count and content
-- hash compared before and after the call).
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(170);

-- ---------------------------------------------------------------------------
-- Helpers (session-local, rolled back with the test); els_state, error_of and
-- rejects come from helpers/common.psql.
-- ---------------------------------------------------------------------------

-- A valid bare BatchEssaysRegistered payload; tests break one thing at a time.
CREATE FUNCTION pg_temp.batch() RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN '{"entity_id": "err-new", "expected_essay_count": 2, "essay_ids": ["err-e1", "err-e2"],
         "course_code": "ENG5", "user_id": "err-user"}'::jsonb;

-- State the conflict cases run against: a REGULAR batch with content in a slot,
-- a GUEST batch, and some pending content for a batch not registered yet.
DO $setup$ BEGIN
PERFORM els.register_batch('{"entity_id": "err-reg", "expected_essay_count": 3,
                                "essay_ids": ["ec-1", "ec-2", "ec-3"], "course_code": "SV1",
                                "user_id": "u-9", "org_id": "org-1", "class_id": "class-1"}');
    PERFORM els.register_batch('{"entity_id": "err-guest", "expected_essay_count": 1,
                                "essay_ids": ["eg-1"], "course_code": "ENG6", "user_id": "u-8"}');
    PERFORM els.provision_content('{"entity_id": "err-reg", "text_storage_id": "t-1",
                                   "file_upload_id": "f-1", "original_file_name": "a.txt"}');
    PERFORM els.provision_content('{"entity_id": "err-new", "text_storage_id": "t-p",
                                   "file_upload_id": "f-p", "original_file_name": "p.txt"}');
END $setup$;
CREATE TEMP TABLE state_at_start AS SELECT pg_temp.els_state() AS state;

-- Sanity: the base payload is valid (registered, then undone by a raised error).
SELECT is(
    pg_temp.error_of($sql$DO $d$ BEGIN
        IF els.register_batch(pg_temp.batch()) ->> 'outcome' = 'registered' THEN
            RAISE EXCEPTION 'base payload registered';
        END IF; END $d$$sql$) ->> 'message',
    'base payload registered', 'the base payload the cases below break is itself valid');

-- ===========================================================================
-- ELV01: not an object / envelope malformed
-- ===========================================================================
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch('[1, 2]')$$, 'ELV01',
    'event is not a JSON object', '{"field": null, "reason": "not_an_object", "actual": "array"}',
    'ELV01: a JSON array');
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch('"a string"')$$, 'ELV01',
    'event is not a JSON object', '{"field": null, "reason": "not_an_object", "actual": "string"}',
    'ELV01: a JSON string');
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch('null'::jsonb)$$, 'ELV01',
    'event is not a JSON object', '{"field": null, "reason": "not_an_object", "actual": "null"}',
    'ELV01: JSON null');
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch(NULL)$$, 'ELV01',
    'event is not a JSON object', '{"field": null, "reason": "not_an_object"}',
    'ELV01: SQL NULL');
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch('{"data": [1]}')$$, 'ELV01',
    'envelope field data is not a JSON object', '{"field": "data", "reason": "not_an_object", "actual": "array"}',
    'ELV01: data is an array');
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch('{"data": null}')$$, 'ELV01',
    'envelope field data is not a JSON object', '{"field": "data", "reason": "not_an_object", "actual": "null"}',
    'ELV01: data is null');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(jsonb_build_object('data', pg_temp.batch(), 'correlation_id', 42))$$, 'ELV01',
    'envelope field correlation_id is not a string',
    '{"field": "correlation_id", "reason": "wrong_type", "actual": "number"}',
    'ELV01: envelope correlation_id is a number');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(jsonb_build_object('data', pg_temp.batch(), 'correlation_id', ''))$$, 'ELV01',
    'envelope field correlation_id must be 1..255 characters',
    '{"field": "correlation_id", "reason": "bad_length"}',
    'ELV01: envelope correlation_id is empty');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(jsonb_build_object('data', pg_temp.batch(), 'metadata', 'm'))$$, 'ELV01',
    'envelope field metadata is not a JSON object',
    '{"field": "metadata", "reason": "wrong_type", "actual": "string"}',
    'ELV01: envelope metadata is a string');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(jsonb_build_object('data', pg_temp.batch(), 'event_type', 7))$$, 'ELV01',
    'envelope field event_type is not a string',
    '{"field": "event_type", "reason": "wrong_type", "actual": "number"}',
    'ELV01: envelope event_type is a number');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(jsonb_build_object('data', pg_temp.batch(), 'schema_version', '1'))$$, 'ELV01',
    'envelope field schema_version is not a number',
    '{"field": "schema_version", "reason": "wrong_type", "actual": "string"}',
    'ELV01: envelope schema_version is a string');

-- ===========================================================================
-- ELV03 misrouted event_type (checked right after the envelope)
-- ===========================================================================
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(jsonb_build_object('data', pg_temp.batch(),
                                'event_type', 'huleedu.file.essay.content.provisioned.v1'))$$, 'ELV03',
    'event_type names another event (misrouted)',
    '{"field": "event_type", "reason": "misrouted", "actual": "huleedu.file.essay.content.provisioned.v1",
      "expected": ["huleedu.batch.essays.registered.v1", "batch.essays.registered"]}',
    'ELV03: envelope event_type is another event''s topic');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"event_type": "essay.validation.failed"}')$$, 'ELV03',
    'event_type names another event (misrouted)', '{"field": "event_type", "reason": "misrouted"}',
    'ELV03: bare payload event_type is another event''s short name');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"event_type": "BatchEssaysRegistered"}')$$, 'ELV03',
    'event_type names another event (misrouted)', '{"field": "event_type", "reason": "misrouted"}',
    'ELV03: event_type is the event''s class name, neither topic nor short name');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch('{"event_type": "huleedu.batch.essays.registered.v1 ", "data": {}}')$$, 'ELV03',
    'event_type names another event (misrouted)', '{"field": "event_type", "reason": "misrouted"}',
    'ELV03: event_type compared exactly (trailing space), before any payload check');

-- ===========================================================================
-- ELV02: each required field missing, then null
-- ===========================================================================
SELECT pg_temp.rejects(format($$SELECT els.register_batch(pg_temp.batch() - %L)$$, f), 'ELV02',
    format('required field %s is missing or null', f), jsonb_build_object('field', f, 'reason', 'missing'),
    format('ELV02: %s missing', f))
  FROM unnest(ARRAY['entity_id', 'expected_essay_count', 'essay_ids', 'course_code', 'user_id']) AS f;
SELECT pg_temp.rejects(
    format($$SELECT els.register_batch(pg_temp.batch() || jsonb_build_object(%L, NULL))$$, f), 'ELV02',
    format('required field %s is missing or null', f), jsonb_build_object('field', f, 'reason', 'missing'),
    format('ELV02: %s is null', f))
  FROM unnest(ARRAY['entity_id', 'expected_essay_count', 'essay_ids', 'course_code', 'user_id']) AS f;
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch('{"data": {}}')$$, 'ELV02',
    'required field entity_id is missing or null', '{"field": "entity_id", "reason": "missing"}',
    'ELV02: empty payload reports entity_id first');
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch('{}')$$, 'ELV02',
    'required field entity_id is missing or null', '{"field": "entity_id", "reason": "missing"}',
    'ELV02: empty bare object is a payload missing entity_id');

-- ===========================================================================
-- ELV03: wrong type, length, range, enum value
-- ===========================================================================
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch(pg_temp.batch() || '{"entity_id": 17}')$$, 'ELV03',
    'field entity_id must be a string',
    '{"field": "entity_id", "reason": "wrong_type", "expected": "string", "actual": "number"}',
    'ELV03: entity_id is a number (not coerced)');
SELECT * FROM pg_temp.rejects($$SELECT els.register_batch(pg_temp.batch() || '{"entity_id": ""}')$$, 'ELV03',
    'field entity_id must be 1..255 characters',
    '{"field": "entity_id", "reason": "bad_length", "min": 1, "max": 255, "actual": 0}',
    'ELV03: entity_id is an empty string');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || jsonb_build_object('entity_id', repeat('x', 256)))$$, 'ELV03',
    'field entity_id must be 1..255 characters',
    '{"field": "entity_id", "reason": "bad_length", "actual": 256}',
    'ELV03: entity_id of 256 characters');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": "2"}')$$, 'ELV03',
    'field expected_essay_count must be an integer',
    '{"field": "expected_essay_count", "reason": "wrong_type", "expected": "integer", "actual": "string"}',
    'ELV03: expected_essay_count is the string "2" (not coerced)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": true}')$$, 'ELV03',
    'field expected_essay_count must be an integer',
    '{"field": "expected_essay_count", "reason": "wrong_type", "actual": "boolean"}',
    'ELV03: expected_essay_count is a boolean');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 2.5}')$$, 'ELV03',
    'field expected_essay_count must be an integer',
    '{"field": "expected_essay_count", "reason": "not_an_integer", "actual": 2.5}',
    'ELV03: expected_essay_count is 2.5');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 2.0}')$$, 'ELV03',
    'field expected_essay_count must be an integer',
    '{"field": "expected_essay_count", "reason": "not_an_integer"}',
    'ELV03: expected_essay_count is 2.0 (a float, not an integer)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 0}')$$, 'ELV03',
    'field expected_essay_count is out of range',
    '{"field": "expected_essay_count", "reason": "out_of_range", "min": 1, "actual": 0}',
    'ELV03: expected_essay_count is 0');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": -2}')$$, 'ELV03',
    'field expected_essay_count is out of range',
    '{"field": "expected_essay_count", "reason": "out_of_range", "actual": -2}',
    'ELV03: expected_essay_count is negative');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"essay_ids": "err-e1,err-e2"}')$$, 'ELV03',
    'field essay_ids must be an array of strings',
    '{"field": "essay_ids", "reason": "wrong_type", "expected": "array", "actual": "string"}',
    'ELV03: essay_ids is a string, not an array');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"essay_ids": {"0": "err-e1"}}')$$, 'ELV03',
    'field essay_ids must be an array of strings',
    '{"field": "essay_ids", "reason": "wrong_type", "actual": "object"}',
    'ELV03: essay_ids is an object');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"essay_ids": ["err-e1", 2]}')$$, 'ELV03',
    'field essay_ids must hold strings of 1..255 characters',
    '{"field": "essay_ids", "reason": "bad_item", "index": 1, "item": "2"}',
    'ELV03: essay_ids holds a number (index reported 0-based)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"essay_ids": [null, "err-e2"]}')$$, 'ELV03',
    'field essay_ids must hold strings of 1..255 characters',
    '{"field": "essay_ids", "reason": "bad_item", "index": 0}',
    'ELV03: essay_ids holds a null');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"essay_ids": ["err-e1", ""]}')$$, 'ELV03',
    'field essay_ids must hold strings of 1..255 characters',
    '{"field": "essay_ids", "reason": "bad_item", "index": 1}',
    'ELV03: essay_ids holds an empty string');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || jsonb_build_object('essay_ids',
                                jsonb_build_array('err-e1', repeat('e', 256))))$$, 'ELV03',
    'field essay_ids must hold strings of 1..255 characters',
    '{"field": "essay_ids", "reason": "bad_item", "index": 1}',
    'ELV03: essay_ids holds a 256-character string');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"course_code": "ENG8"}')$$, 'ELV03',
    'field course_code has an unknown value',
    '{"field": "course_code", "reason": "not_in_enum", "actual": "ENG8",
      "allowed": ["ENG5", "ENG6", "ENG7", "SV1", "SV2", "SV3"]}',
    'ELV03: unknown course_code');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"course_code": "eng5"}')$$, 'ELV03',
    'field course_code has an unknown value', '{"field": "course_code", "reason": "not_in_enum"}',
    'ELV03: course_code is case-sensitive');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"course_code": 5}')$$, 'ELV03',
    'field course_code must be a string', '{"field": "course_code", "reason": "wrong_type"}',
    'ELV03: course_code is a number');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"user_id": ["u"]}')$$, 'ELV03',
    'field user_id must be a string', '{"field": "user_id", "reason": "wrong_type", "actual": "array"}',
    'ELV03: user_id is an array');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || jsonb_build_object('user_id', repeat('u', 256)))$$, 'ELV03',
    'field user_id must be 1..255 characters', '{"field": "user_id", "reason": "bad_length"}',
    'ELV03: user_id of 256 characters');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"org_id": 12}')$$, 'ELV03',
    'field org_id must be a string',
    '{"field": "org_id", "reason": "wrong_type", "expected": "string", "actual": "number"}',
    'ELV03: org_id is a number');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"org_id": ""}')$$, 'ELV03',
    'field org_id must be 1..255 characters', '{"field": "org_id", "reason": "bad_length"}',
    'ELV03: org_id is an empty string');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"class_id": false}')$$, 'ELV03',
    'field class_id must be a string', '{"field": "class_id", "reason": "wrong_type", "actual": "boolean"}',
    'ELV03: class_id is a boolean');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"student_prompt_ref": "prompt-1"}')$$, 'ELV03',
    'field student_prompt_ref must be an object',
    '{"field": "student_prompt_ref", "reason": "wrong_type", "expected": "object", "actual": "string"}',
    'ELV03: student_prompt_ref is a string');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"student_prompt_ref": []}')$$, 'ELV03',
    'field student_prompt_ref must be an object',
    '{"field": "student_prompt_ref", "reason": "wrong_type", "actual": "array"}',
    'ELV03: student_prompt_ref is an array');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"metadata": "m"}')$$, 'ELV03',
    'field metadata must be an object', '{"field": "metadata", "reason": "wrong_type"}',
    'ELV03: payload metadata is a string');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"correlation_id": 5}')$$, 'ELV03',
    'field correlation_id must be a string', '{"field": "correlation_id", "reason": "wrong_type"}',
    'ELV03: bare payload correlation_id is a number');

-- ===========================================================================
-- ELV04 count mismatch, ELV05 duplicates, ELV06 too large
-- ===========================================================================
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 3}')$$, 'ELV04',
    'expected_essay_count differs from the number of essay_ids',
    '{"field": "expected_essay_count", "reason": "count_mismatch", "expected_essay_count": 3, "essay_ids_count": 2}',
    'ELV04: count 3, two essay ids');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 1, "essay_ids": []}')$$, 'ELV04',
    'expected_essay_count differs from the number of essay_ids',
    '{"field": "expected_essay_count", "reason": "count_mismatch", "essay_ids_count": 0}',
    'ELV04: empty essay_ids');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 3,
                                                    "essay_ids": ["d-1", "d-2", "d-1"]}')$$, 'ELV05',
    'essay_ids contains duplicates',
    '{"field": "essay_ids", "reason": "duplicate_item", "essay_id": "d-1"}',
    'ELV05: an essay id twice');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || jsonb_build_object('expected_essay_count', 10001,
        'essay_ids', (SELECT jsonb_agg('big-' || i) FROM generate_series(1, 10001) AS i)))$$, 'ELV06',
    'batch too large: more than 10000 essays',
    '{"field": "expected_essay_count", "reason": "too_large", "max": 10000, "actual": 10001}',
    'ELV06: 10001 essays');

-- ===========================================================================
-- Order of checks (SPEC section 4: envelope, event_type, then the table order)
-- ===========================================================================
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch('{"event_type": "essay.content.provisioned", "data": []}')$$, 'ELV01',
    'envelope field data is not a JSON object', '{"field": "data"}',
    'order: malformed envelope (ELV01) before a misrouted event_type');
-- The whole envelope is checked (ELV01) before its event_type is (ELV03).
SELECT throws_ok(
    $$SELECT els.register_batch('{"event_type": "essay.content.provisioned", "correlation_id": "", "data": {}}')$$,
    'ELV01', 'envelope field correlation_id must be 1..255 characters',
    'order: an empty envelope correlation_id (ELV01) before a misrouted event_type');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch('{"event_type": "essay.content.provisioned", "data": {}}')$$, 'ELV03',
    'event_type names another event (misrouted)', '{"field": "event_type"}',
    'order: misrouted event_type before missing payload fields (ELV02)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() - 'user_id' || '{"entity_id": 5, "essay_ids": "x"}')$$, 'ELV02',
    'required field user_id is missing or null', '{"field": "user_id", "reason": "missing"}',
    'order: a missing field (ELV02) is reported before wrong types (ELV03)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 3, "essay_ids": ["a", 1]}')$$, 'ELV03',
    'field essay_ids must hold strings of 1..255 characters', '{"field": "essay_ids"}',
    'order: a wrong item type (ELV03) before a count mismatch (ELV04)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 3, "essay_ids": ["a", "a"]}')$$, 'ELV04',
    'expected_essay_count differs from the number of essay_ids', '{"reason": "count_mismatch"}',
    'order: count mismatch (ELV04) before duplicates (ELV05)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 10001}')$$, 'ELV04',
    'expected_essay_count differs from the number of essay_ids',
    '{"reason": "count_mismatch", "expected_essay_count": 10001, "essay_ids_count": 2}',
    'order: count mismatch (ELV04) before too large (ELV06)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || jsonb_build_object('expected_essay_count', 10001,
        'essay_ids', (SELECT jsonb_agg('big-' || least(i, 10000)) FROM generate_series(1, 10001) AS i)))$$, 'ELV05',
    'essay_ids contains duplicates', '{"reason": "duplicate_item", "essay_id": "big-10000"}',
    'order: duplicates (ELV05) before too large (ELV06)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch('{"entity_id": "err-reg", "expected_essay_count": 3,
                                  "essay_ids": ["ec-1", "ec-2", "ec-2"], "course_code": "SV1",
                                  "user_id": "u-9", "org_id": "org-1", "class_id": "class-1"}')$$, 'ELV05',
    'essay_ids contains duplicates', '{"essay_id": "ec-2"}',
    'order: payload validation (ELV05) before the identity check (ELC01)');

-- ===========================================================================
-- ELC01: already registered with a different identity (each identity field)
-- ===========================================================================
CREATE FUNCTION pg_temp.reg_variant(p_change jsonb) RETURNS text LANGUAGE sql IMMUTABLE
RETURN format($$SELECT els.register_batch(%L::jsonb)$$,
    '{"entity_id": "err-reg", "expected_essay_count": 3, "essay_ids": ["ec-1", "ec-2", "ec-3"],
      "course_code": "SV1", "user_id": "u-9", "org_id": "org-1", "class_id": "class-1"}'::jsonb || p_change);

SELECT is(els.register_batch('{"entity_id": "err-reg", "expected_essay_count": 3,
                                "essay_ids": ["ec-1", "ec-2", "ec-3"], "course_code": "SV1",
                                "user_id": "u-9", "org_id": "org-1", "class_id": "class-1"}') ->> 'outcome',
          'duplicate', 'ELC01 baseline: the unchanged identity is a duplicate, not a conflict');
SELECT * FROM pg_temp.rejects(pg_temp.reg_variant('{"essay_ids": ["ec-2", "ec-1", "ec-3"]}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "essay_ids", "reason": "identity_conflict", "batch_id": "err-reg"}',
    'ELC01: same essay ids in another order');
SELECT * FROM pg_temp.rejects(pg_temp.reg_variant('{"essay_ids": ["ec-1", "ec-2", "ec-9"]}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "essay_ids", "reason": "identity_conflict", "batch_id": "err-reg"}',
    'ELC01: one essay id replaced');
SELECT * FROM pg_temp.rejects(
    pg_temp.reg_variant('{"expected_essay_count": 4, "essay_ids": ["ec-1", "ec-2", "ec-3", "ec-4"]}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "essay_ids", "reason": "identity_conflict"}',
    'ELC01: one more essay (count and ids differ; essay_ids reported)');
SELECT * FROM pg_temp.rejects(
    pg_temp.reg_variant('{"expected_essay_count": 2, "essay_ids": ["ec-1", "ec-2"]}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "essay_ids", "reason": "identity_conflict"}',
    'ELC01: one essay fewer');
SELECT * FROM pg_temp.rejects(pg_temp.reg_variant('{"course_code": "SV2"}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "course_code", "reason": "identity_conflict", "batch_id": "err-reg"}',
    'ELC01: course_code differs');
SELECT * FROM pg_temp.rejects(pg_temp.reg_variant('{"user_id": "u-10"}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "user_id", "reason": "identity_conflict", "batch_id": "err-reg"}',
    'ELC01: user_id differs');
SELECT * FROM pg_temp.rejects(pg_temp.reg_variant('{"org_id": "org-2"}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "org_id", "reason": "identity_conflict", "batch_id": "err-reg"}',
    'ELC01: org_id differs');
SELECT * FROM pg_temp.rejects(pg_temp.reg_variant('{"org_id": null}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "org_id", "reason": "identity_conflict"}',
    'ELC01: org_id set -> null');
SELECT * FROM pg_temp.rejects(pg_temp.reg_variant('{"class_id": "class-2"}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "class_id", "reason": "identity_conflict", "batch_id": "err-reg"}',
    'ELC01: class_id differs');
SELECT * FROM pg_temp.rejects(pg_temp.reg_variant('{"class_id": null}'), 'ELC01',
    'batch already registered with a different identity',
    '{"field": "class_id", "reason": "identity_conflict"}',
    'ELC01: REGULAR batch re-registered as GUEST (class_id null)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch('{"entity_id": "err-guest", "expected_essay_count": 1, "essay_ids": ["eg-1"],
                                  "course_code": "ENG6", "user_id": "u-8", "class_id": "c-1"}')$$, 'ELC01',
    'batch already registered with a different identity',
    '{"field": "class_id", "reason": "identity_conflict", "batch_id": "err-guest"}',
    'ELC01: GUEST batch re-registered as REGULAR');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch('{"entity_id": "err-guest", "expected_essay_count": 1, "essay_ids": ["eg-1"],
                                  "course_code": "ENG6", "user_id": "u-8", "org_id": "o-1"}')$$, 'ELC01',
    'batch already registered with a different identity',
    '{"field": "org_id", "reason": "identity_conflict"}',
    'ELC01: org_id null -> set');

-- ===========================================================================
-- ELC02: an essay id already belongs to another batch
-- ===========================================================================
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"essay_ids": ["err-e1", "ec-2"]}')$$, 'ELC02',
    'an essay id already belongs to another batch',
    '{"field": "essay_ids", "reason": "essay_owned_by_other_batch", "essay_id": "ec-2", "owner_batch_id": "err-reg"}',
    'ELC02: a new batch claims an essay id of a registered batch (its pending content stays pending)');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch(pg_temp.batch() || '{"expected_essay_count": 1, "essay_ids": ["eg-1"]}')$$, 'ELC02',
    'an essay id already belongs to another batch',
    '{"essay_id": "eg-1", "owner_batch_id": "err-guest"}',
    'ELC02: the only essay id is owned by another batch');

-- The repair path: a tracker left without slots whose essay id is now taken.
INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id)
VALUES ('err-half', 2, ARRAY['h-1', 'ec-3'], 'ENG5', 'u-7', 'corr-half');
SELECT * FROM pg_temp.rejects(
    $$SELECT els.register_batch('{"entity_id": "err-half", "expected_essay_count": 2, "essay_ids": ["h-1", "ec-3"],
                                  "course_code": "ENG5", "user_id": "u-7"}')$$, 'ELC02',
    'an essay id already belongs to another batch',
    '{"field": "essay_ids", "essay_id": "ec-3", "owner_batch_id": "err-reg"}',
    'ELC02 on repair: the slot-less tracker stays as it was');
DELETE FROM els.batch_tracker WHERE batch_id = 'err-half';

-- ===========================================================================
-- After all of it: nothing changed, the rejected batch does not exist.
-- ===========================================================================
SELECT is(pg_temp.els_state(), (SELECT state FROM state_at_start),
          'after every rejection, every els table is exactly as before');
SELECT is_empty($$SELECT 1 FROM els.batch_tracker WHERE batch_id = 'err-new'$$,
                'no tracker for the rejected batch');
SELECT results_eq(
    $$SELECT disposition::text, essay_id FROM els.essay_content WHERE batch_id = 'err-new'$$,
    $$VALUES ('pending', NULL::text)$$,
    'the rejected batch''s early content is still pending');
SELECT results_eq(
    $$SELECT essay_id, status::text, text_storage_id FROM els.essay_slot WHERE batch_id = 'err-reg' ORDER BY slot_no$$,
    $$VALUES ('ec-1', 'ready_for_processing', 't-1'), ('ec-2', 'uploaded', NULL::text), ('ec-3', 'uploaded', NULL)$$,
    'the conflicting registrations did not touch the registered batch''s slots');
SELECT results_eq(
    $$SELECT essay_ids, course_code, user_id, org_id, class_id FROM els.batch_tracker WHERE batch_id = 'err-reg'$$,
    $$VALUES (ARRAY['ec-1', 'ec-2', 'ec-3'], 'SV1', 'u-9', 'org-1', 'class-1')$$,
    'the conflicting registrations did not touch the registered batch''s identity');

SELECT * FROM finish();
ROLLBACK;
