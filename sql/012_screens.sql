-- The screens: an event that passes its screen has no fault (the screen implies
-- it: tests/test_bad_input_corpus.py checks every variant of the corpus, and the
-- valid events, against the fault functions of 011_event_faults.sql), so only an event that fails
-- it is given to its kind's fault function, which finds and describes the first
-- fault (or none: a screen may be stricter than the rules, never looser). Each is a
-- boolean expression that the planner inlines; the fault functions are not inlined,
-- and the statement that reads a micro-batch initializes only the screens' small
-- expressions: initializing every fault's message and detail on every call cost more
-- than the rest of a per-event call's reading (docs/BENCHMARKS.md).

-- Absent, JSON null, or a string of 1..p_max characters.
CREATE OR REPLACE FUNCTION els._text_ok(p_value jsonb, p_max integer DEFAULT 255)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE jsonb_typeof(p_value)
    WHEN 'string' THEN length(p_value #>> '{}') BETWEEN 1 AND p_max
    WHEN 'null' THEN true
    ELSE p_value IS NULL
END;

-- Present and not JSON null.
CREATE OR REPLACE FUNCTION els._present(p_value jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(jsonb_typeof(p_value) <> 'null', false);

-- Absent, JSON null, or one of p_allowed (each 1..255 characters).
CREATE OR REPLACE FUNCTION els._enum_ok(p_value jsonb, p_allowed text[])
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE jsonb_typeof(p_value)
    WHEN 'string' THEN (p_value #>> '{}') = ANY (p_allowed)
    WHEN 'null' THEN true
    ELSE p_value IS NULL
END;

-- Absent, JSON null, or an integer in p_min .. 2^63-1 written without fraction or exponent.
CREATE OR REPLACE FUNCTION els._integer_ok(p_value jsonb, p_min numeric)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE jsonb_typeof(p_value)
    WHEN 'number' THEN CASE WHEN (p_value #>> '{}') ~ '[.eE]' THEN false
                            ELSE (p_value #>> '{}')::numeric BETWEEN p_min AND 9223372036854775807 END
    WHEN 'null' THEN true
    ELSE p_value IS NULL
END;

-- Absent, JSON null, or an object.
CREATE OR REPLACE FUNCTION els._object_ok(p_value jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(jsonb_typeof(p_value) IN ('object', 'null'), true);

-- Absent, JSON null, or a string of 1..255 characters that _timestamp_fault accepts.
CREATE OR REPLACE FUNCTION els._timestamp_ok(p_value jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE jsonb_typeof(p_value)
    WHEN 'string' THEN length(p_value #>> '{}') BETWEEN 1 AND 255
                       AND (p_value #>> '{}') ~ els._timestamp_pattern()
    WHEN 'null' THEN true
    ELSE p_value IS NULL
END;

-- An object; when it has data, a well-formed envelope; event_type, when given, names
-- this event (p_topic or p_short_name).
CREATE OR REPLACE FUNCTION els._envelope_ok(p_event jsonb, p_topic text, p_short_name text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN jsonb_typeof(p_event) IS DISTINCT FROM 'object' THEN false
            WHEN NOT p_event ? 'data' THEN true
            ELSE jsonb_typeof(p_event -> 'data') = 'object'
                 AND coalesce(jsonb_typeof(p_event -> 'event_id') IN ('string', 'null'), true)
                 AND coalesce(jsonb_typeof(p_event -> 'event_timestamp') IN ('string', 'null'), true)
                 AND coalesce(jsonb_typeof(p_event -> 'source_service') IN ('string', 'null'), true)
                 AND coalesce(jsonb_typeof(p_event -> 'metadata') IN ('object', 'null'), true)
                 AND coalesce(jsonb_typeof(p_event -> 'schema_version') IN ('number', 'null'), true)
                 AND els._text_ok(p_event -> 'correlation_id')
       END
       AND coalesce(jsonb_typeof(p_event -> 'event_type') = 'null'
                    OR (p_event ->> 'event_type') IN (p_topic, p_short_name), true);

-- A BatchEssaysRegistered event that _registration_fault passes (the arguments as there).
CREATE OR REPLACE FUNCTION els._registration_ok(
    p_event jsonb, p_payload jsonb, p_bad_ord bigint, p_item_count bigint, p_duplicate_id text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN els._envelope_ok(p_event, 'huleedu.batch.essays.registered.v1', 'batch.essays.registered')
                 AND els._present(p_payload -> 'entity_id') AND els._text_ok(p_payload -> 'entity_id')
                 AND jsonb_typeof(p_payload -> 'expected_essay_count') = 'number'
                 AND els._integer_ok(p_payload -> 'expected_essay_count', 1)
                 AND jsonb_typeof(p_payload -> 'essay_ids') = 'array' AND p_bad_ord IS NULL
                 AND els._present(p_payload -> 'course_code')
                 AND els._enum_ok(p_payload -> 'course_code', ARRAY['ENG5', 'ENG6', 'ENG7', 'SV1', 'SV2', 'SV3'])
                 AND els._present(p_payload -> 'user_id') AND els._text_ok(p_payload -> 'user_id')
                 AND els._text_ok(p_payload -> 'org_id') AND els._text_ok(p_payload -> 'class_id')
                 AND els._object_ok(p_payload -> 'student_prompt_ref') AND els._object_ok(p_payload -> 'metadata')
                 AND els._text_ok(p_payload -> 'correlation_id')
            THEN p_item_count = (p_payload ->> 'expected_essay_count')::numeric
                 AND p_duplicate_id IS NULL
                 AND (p_payload ->> 'expected_essay_count')::numeric <= 10000
            ELSE false
       END;

-- An EssayContentProvisioned event that _content_fault passes.
CREATE OR REPLACE FUNCTION els._content_ok(p_event jsonb, p_payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN els._envelope_ok(p_event, 'huleedu.file.essay.content.provisioned.v1', 'essay.content.provisioned')
       AND els._present(p_payload -> 'entity_id') AND els._text_ok(p_payload -> 'entity_id')
       AND els._present(p_payload -> 'text_storage_id') AND els._text_ok(p_payload -> 'text_storage_id')
       AND els._present(p_payload -> 'file_upload_id') AND els._text_ok(p_payload -> 'file_upload_id')
       AND els._present(p_payload -> 'original_file_name') AND els._text_ok(p_payload -> 'original_file_name', 1024)
       AND els._text_ok(p_payload -> 'raw_file_storage_id')
       AND els._integer_ok(p_payload -> 'file_size_bytes', 0)
       AND els._text_ok(p_payload -> 'content_md5_hash')
       AND els._text_ok(p_payload -> 'correlation_id')
       AND els._timestamp_ok(p_payload -> 'timestamp');

-- An EssayValidationFailed event that _failure_fault passes.
CREATE OR REPLACE FUNCTION els._failure_ok(p_event jsonb, p_payload jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN els._envelope_ok(p_event, 'huleedu.file.essay.validation.failed.v1', 'essay.validation.failed')
       AND els._present(p_payload -> 'entity_id') AND els._text_ok(p_payload -> 'entity_id')
       AND els._present(p_payload -> 'file_upload_id') AND els._text_ok(p_payload -> 'file_upload_id')
       AND els._present(p_payload -> 'original_file_name') AND els._text_ok(p_payload -> 'original_file_name', 1024)
       AND els._present(p_payload -> 'validation_error_code')
       AND els._enum_ok(p_payload -> 'validation_error_code',
                        ARRAY['EMPTY_CONTENT', 'CONTENT_TOO_SHORT', 'CONTENT_TOO_LONG', 'RAW_STORAGE_FAILED',
                              'TEXT_EXTRACTION_FAILED', 'ENCRYPTED_FILE_UNSUPPORTED',
                              'UNKNOWN_VALIDATION_ERROR'])
       AND els._object_ok(p_payload -> 'validation_error_detail')
       AND els._text_ok(p_payload -> 'raw_file_storage_id')
       AND els._integer_ok(p_payload -> 'file_size_bytes', 0)
       AND els._text_ok(p_payload -> 'correlation_id')
       AND els._timestamp_ok(p_payload -> 'timestamp');

REVOKE ALL ON FUNCTION els._text_ok(jsonb, integer),
    els._present(jsonb),
    els._enum_ok(jsonb, text[]),
    els._integer_ok(jsonb, numeric),
    els._object_ok(jsonb),
    els._timestamp_ok(jsonb),
    els._envelope_ok(jsonb, text, text),
    els._registration_ok(jsonb, jsonb, bigint, bigint, text),
    els._content_ok(jsonb, jsonb),
    els._failure_ok(jsonb, jsonb) FROM PUBLIC;
