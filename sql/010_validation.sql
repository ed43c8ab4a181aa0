-- Input validation of the three input events (SPEC sections 2 and 4), in one
-- implementation that reads a whole micro-batch in one statement.
--
-- Every rejection has the same shape, whoever asks: a custom SQLSTATE from SPEC
-- section 4, a one-line MESSAGE, and a DETAIL that is a JSON object with at least
-- "field" and "reason". A check is an expression that is NULL when the check passes
-- and the fault ({"sqlstate", "message", "detail"}) when it does not; an event's
-- checks are one coalesce() in the SPEC's order of errors (the envelope, then a
-- misrouted event_type, then missing fields, then each field's type, format and
-- range in the order of SPEC section 2, then the registration's counts), so the
-- first fault is the one reported and the checks after it are not evaluated: its
-- kind's fault function (_registration_fault, _content_fault, _failure_fault).
--
-- Those are the authority, but a well-formed event never reaches them: the
-- statement that reads a micro-batch (els._read_events) first evaluates each event's
-- screen (_registration_ok, _content_ok, _failure_ok, further down), boolean SQL
-- expressions the planner inlines, and calls the fault function only for an event
-- that fails it. The SQL functions here are single expressions without a subquery so
-- that they can be inlined; the arguments they are given are columns or
-- `column -> 'key'` (an argument used more than once that costs more would stop
-- the inlining). essay_ids' items are read by _essay_id_items, a one-row
-- set-returning function inlined into the same statement. None of these functions
-- touches a table or is SECURITY DEFINER.

-- Raises a structured rejection (for the per-event functions and the DBA calls).
CREATE OR REPLACE FUNCTION els._reject(p_sqlstate text, p_message text, p_detail jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
    RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, DETAIL = p_detail::text;
END
$fn$;
COMMENT ON FUNCTION els._reject(text, text, jsonb) IS
    'Raises a structured rejection: custom SQLSTATE, one-line message, JSON detail.';

-- A failed check: what els._reject raises, as a value.
CREATE OR REPLACE FUNCTION els._fault(p_sqlstate text, p_message text, p_detail jsonb)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN jsonb_build_object('sqlstate', p_sqlstate, 'message', p_message, 'detail', p_detail);

-- ELV02: a required field absent or JSON null.
CREATE OR REPLACE FUNCTION els._missing_fault(p_value jsonb, p_field text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN p_value IS NULL OR jsonb_typeof(p_value) = 'null' THEN
    els._fault('ELV02', format('required field %s is missing or null', p_field),
               jsonb_build_object('field', p_field, 'reason', 'missing'))
END;

-- ELV03: a present, non-null value that is not a string of 1..p_max characters.
CREATE OR REPLACE FUNCTION els._text_fault(p_value jsonb, p_field text, p_max integer DEFAULT 255)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
    WHEN p_value IS NULL OR jsonb_typeof(p_value) = 'null' THEN NULL
    WHEN jsonb_typeof(p_value) <> 'string' THEN
        els._fault('ELV03', format('field %s must be a string', p_field),
                   jsonb_build_object('field', p_field, 'reason', 'wrong_type',
                                      'expected', 'string', 'actual', jsonb_typeof(p_value)))
    WHEN length(p_value #>> '{}') NOT BETWEEN 1 AND p_max THEN
        els._fault('ELV03', format('field %s must be 1..%s characters', p_field, p_max),
                   jsonb_build_object('field', p_field, 'reason', 'bad_length',
                                      'min', 1, 'max', p_max, 'actual', length(p_value #>> '{}')))
END;

-- ELV03: a string (as _text_fault) that is not one of p_allowed.
CREATE OR REPLACE FUNCTION els._enum_fault(p_value jsonb, p_field text, p_allowed text[])
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN coalesce(
    els._text_fault(p_value, p_field),
    CASE WHEN jsonb_typeof(p_value) = 'string' AND NOT (p_value #>> '{}') = ANY (p_allowed) THEN
        els._fault('ELV03', format('field %s has an unknown value', p_field),
                   jsonb_build_object('field', p_field, 'reason', 'not_in_enum',
                                      'allowed', to_jsonb(p_allowed), 'actual', p_value #>> '{}'))
    END);

-- ELV03: not an integer (no fraction, no exponent form) of at least p_min and at
-- most 2^63-1. The upper bounds of a field's own (ELV06) come later, in the SPEC's order.
CREATE OR REPLACE FUNCTION els._integer_fault(p_value jsonb, p_field text, p_min numeric)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
    WHEN p_value IS NULL OR jsonb_typeof(p_value) = 'null' THEN NULL
    WHEN jsonb_typeof(p_value) <> 'number' THEN
        els._fault('ELV03', format('field %s must be an integer', p_field),
                   jsonb_build_object('field', p_field, 'reason', 'wrong_type',
                                      'expected', 'integer', 'actual', jsonb_typeof(p_value)))
    WHEN (p_value #>> '{}') ~ '[.eE]' THEN
        els._fault('ELV03', format('field %s must be an integer', p_field),
                   jsonb_build_object('field', p_field, 'reason', 'not_an_integer', 'actual', p_value))
    WHEN (p_value #>> '{}')::numeric < p_min OR (p_value #>> '{}')::numeric > 9223372036854775807 THEN
        els._fault('ELV03', format('field %s is out of range', p_field),
                   jsonb_build_object('field', p_field, 'reason', 'out_of_range',
                                      'min', p_min, 'actual', p_value))
END;

-- ELV03: a present, non-null value that is not a JSON object.
CREATE OR REPLACE FUNCTION els._object_fault(p_value jsonb, p_field text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN jsonb_typeof(p_value) NOT IN ('object', 'null') THEN
    els._fault('ELV03', format('field %s must be an object', p_field),
               jsonb_build_object('field', p_field, 'reason', 'wrong_type',
                                  'expected', 'object', 'actual', jsonb_typeof(p_value)))
END;

-- ISO-8601 timestamps as producers send them: a date, optionally a time with
-- fraction, optionally a zone, each part within its range. Checked by pattern,
-- not by a cast, so that no cast can raise an unstructured error (a day 31 in a
-- 30-day month passes: the field is informational and stored as sent).
CREATE OR REPLACE FUNCTION els._timestamp_pattern()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])'
       '([T ]([01]\d|2[0-3]):[0-5]\d(:([0-5]\d|60)(\.\d{1,9})?)?)?'
       '(Z|z|[+-]([01]\d|2[0-3])(:?[0-5]\d)?)?$';

CREATE OR REPLACE FUNCTION els._timestamp_fault(p_value jsonb, p_field text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN coalesce(
    els._text_fault(p_value, p_field),
    CASE WHEN jsonb_typeof(p_value) = 'string' AND (p_value #>> '{}') !~ els._timestamp_pattern() THEN
        els._fault('ELV03', format('field %s must be an ISO-8601 timestamp', p_field),
                   jsonb_build_object('field', p_field, 'reason', 'bad_format', 'expected', 'ISO-8601'))
    END);

-- ELV03 of an array of 1..255-character strings; p_bad_ord is the 1-based position
-- of its first item that is not one (computed by the caller, which reads the items).
CREATE OR REPLACE FUNCTION els._text_array_fault(p_value jsonb, p_field text, p_bad_ord bigint)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
    WHEN p_value IS NULL OR jsonb_typeof(p_value) = 'null' THEN NULL
    WHEN jsonb_typeof(p_value) <> 'array' THEN
        els._fault('ELV03', format('field %s must be an array of strings', p_field),
                   jsonb_build_object('field', p_field, 'reason', 'wrong_type',
                                      'expected', 'array', 'actual', jsonb_typeof(p_value)))
    WHEN p_bad_ord IS NOT NULL THEN
        els._fault('ELV03', format('field %s must hold strings of 1..255 characters', p_field),
                   jsonb_build_object('field', p_field, 'reason', 'bad_item', 'index', p_bad_ord - 1,
                                      'item', left((p_value -> (p_bad_ord::integer - 1))::text, 300)))
END;

-- The payload of an event: its envelope's data, or the event itself when bare.
CREATE OR REPLACE FUNCTION els._payload(p_event jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN jsonb_typeof(p_event) = 'object' AND p_event ? 'data' THEN p_event -> 'data'
            ELSE p_event END;

-- ELV01 of an envelope field that must be a string (or null).
CREATE OR REPLACE FUNCTION els._envelope_type_fault(p_event jsonb, p_field text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN els._fault('ELV01', format('envelope field %s is not a string', p_field),
                  jsonb_build_object('field', p_field, 'reason', 'wrong_type', 'expected', 'string',
                                     'actual', jsonb_typeof(p_event -> p_field)));

-- ELV01: not an object, or an envelope (an object with data) that is malformed;
-- then ELV03 for an event_type that names another event (misrouted). A bare
-- payload's event_type is checked too.
CREATE OR REPLACE FUNCTION els._envelope_fault(p_event jsonb, p_topic text, p_short_name text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
    WHEN p_event IS NULL OR jsonb_typeof(p_event) <> 'object' THEN
        els._fault('ELV01', 'event is not a JSON object',
                   jsonb_build_object('field', NULL, 'reason', 'not_an_object',
                                      'actual', coalesce(jsonb_typeof(p_event), 'null')))
    WHEN p_event ? 'data' AND jsonb_typeof(p_event -> 'data') <> 'object' THEN
        els._fault('ELV01', 'envelope field data is not a JSON object',
                   jsonb_build_object('field', 'data', 'reason', 'not_an_object',
                                      'actual', jsonb_typeof(p_event -> 'data')))
    WHEN p_event ? 'data' AND jsonb_typeof(p_event -> 'event_id') NOT IN ('string', 'null') THEN
        els._envelope_type_fault(p_event, 'event_id')
    WHEN p_event ? 'data' AND jsonb_typeof(p_event -> 'event_type') NOT IN ('string', 'null') THEN
        els._envelope_type_fault(p_event, 'event_type')
    WHEN p_event ? 'data' AND jsonb_typeof(p_event -> 'event_timestamp') NOT IN ('string', 'null') THEN
        els._envelope_type_fault(p_event, 'event_timestamp')
    WHEN p_event ? 'data' AND jsonb_typeof(p_event -> 'source_service') NOT IN ('string', 'null') THEN
        els._envelope_type_fault(p_event, 'source_service')
    WHEN p_event ? 'data' AND jsonb_typeof(p_event -> 'correlation_id') NOT IN ('string', 'null') THEN
        els._envelope_type_fault(p_event, 'correlation_id')
    WHEN p_event ? 'data' AND jsonb_typeof(p_event -> 'metadata') NOT IN ('object', 'null') THEN
        els._fault('ELV01', 'envelope field metadata is not a JSON object',
                   jsonb_build_object('field', 'metadata', 'reason', 'wrong_type', 'expected', 'object',
                                      'actual', jsonb_typeof(p_event -> 'metadata')))
    WHEN p_event ? 'data' AND jsonb_typeof(p_event -> 'schema_version') NOT IN ('number', 'null') THEN
        els._fault('ELV01', 'envelope field schema_version is not a number',
                   jsonb_build_object('field', 'schema_version', 'reason', 'wrong_type',
                                      'expected', 'integer',
                                      'actual', jsonb_typeof(p_event -> 'schema_version')))
    WHEN p_event ? 'data' AND length(p_event ->> 'correlation_id') NOT BETWEEN 1 AND 255 THEN
        els._fault('ELV01', 'envelope field correlation_id must be 1..255 characters',
                   jsonb_build_object('field', 'correlation_id', 'reason', 'bad_length', 'min', 1,
                                      'max', 255, 'actual', length(p_event ->> 'correlation_id')))
    WHEN jsonb_typeof(p_event -> 'event_type') NOT IN ('string', 'null') THEN
        els._fault('ELV01', 'event_type is not a string',
                   jsonb_build_object('field', 'event_type', 'reason', 'wrong_type', 'expected', 'string',
                                      'actual', jsonb_typeof(p_event -> 'event_type')))
    WHEN (p_event ->> 'event_type') NOT IN (p_topic, p_short_name) THEN
        els._fault('ELV03', 'event_type names another event (misrouted)',
                   jsonb_build_object('field', 'event_type', 'reason', 'misrouted',
                                      'expected', jsonb_build_array(p_topic, p_short_name),
                                      'actual', left(p_event ->> 'event_type', 300)))
END;

-- The correlation id of an event: the envelope's, else data.correlation_id, else a
-- new one (so that every event we emit can be traced).
CREATE OR REPLACE FUNCTION els._correlation_id(p_event jsonb, p_payload jsonb)
RETURNS text
LANGUAGE sql VOLATILE PARALLEL SAFE
RETURN coalesce(CASE WHEN p_event ? 'data' THEN p_event ->> 'correlation_id' END,
                p_payload ->> 'correlation_id', gen_random_uuid()::text);

-- The first fault of a BatchEssaysRegistered event (NULL: none). p_bad_ord,
-- p_item_count and p_duplicate_id describe essay_ids' items (when an array): the
-- first item that is not a 1..255-character string, how many there are, the first
-- id (by first occurrence) that occurs twice.
CREATE OR REPLACE FUNCTION els._registration_fault(
    p_event jsonb, p_payload jsonb, p_bad_ord bigint, p_item_count bigint, p_duplicate_id text)
RETURNS jsonb
-- PL/pgSQL, not inlined: only an event that fails its screen comes here
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $fn$
BEGIN
    RETURN coalesce(
        els._envelope_fault(p_event, 'huleedu.batch.essays.registered.v1', 'batch.essays.registered'),
        els._missing_fault(p_payload -> 'entity_id', 'entity_id'),
        els._missing_fault(p_payload -> 'expected_essay_count', 'expected_essay_count'),
        els._missing_fault(p_payload -> 'essay_ids', 'essay_ids'),
        els._missing_fault(p_payload -> 'course_code', 'course_code'),
        els._missing_fault(p_payload -> 'user_id', 'user_id'),
        els._text_fault(p_payload -> 'entity_id', 'entity_id'),
        els._integer_fault(p_payload -> 'expected_essay_count', 'expected_essay_count', 1),
        els._text_array_fault(p_payload -> 'essay_ids', 'essay_ids', p_bad_ord),
        els._enum_fault(p_payload -> 'course_code', 'course_code',
                        ARRAY['ENG5', 'ENG6', 'ENG7', 'SV1', 'SV2', 'SV3']),
        els._text_fault(p_payload -> 'user_id', 'user_id'),
        els._text_fault(p_payload -> 'org_id', 'org_id'),
        els._text_fault(p_payload -> 'class_id', 'class_id'),
        els._object_fault(p_payload -> 'student_prompt_ref', 'student_prompt_ref'),
        els._object_fault(p_payload -> 'metadata', 'metadata'),
        -- data.correlation_id is validated even when the envelope's wins
        els._text_fault(p_payload -> 'correlation_id', 'correlation_id'),
        CASE WHEN p_item_count <> (p_payload ->> 'expected_essay_count')::numeric THEN
            els._fault('ELV04', 'expected_essay_count differs from the number of essay_ids',
                       jsonb_build_object('field', 'expected_essay_count', 'reason', 'count_mismatch',
                                          'expected_essay_count', (p_payload ->> 'expected_essay_count')::numeric,
                                          'essay_ids_count', p_item_count))
        END,
        CASE WHEN p_duplicate_id IS NOT NULL THEN
            els._fault('ELV05', 'essay_ids contains duplicates',
                       jsonb_build_object('field', 'essay_ids', 'reason', 'duplicate_item',
                                          'essay_id', p_duplicate_id))
        END,
        CASE WHEN (p_payload ->> 'expected_essay_count')::numeric > 10000 THEN
            els._fault('ELV06', 'batch too large: more than 10000 essays',
                       jsonb_build_object('field', 'expected_essay_count', 'reason', 'too_large',
                                          'max', 10000, 'actual', (p_payload ->> 'expected_essay_count')::numeric))
        END);
END
$fn$;

-- The registration as the core applies it (p_payload has passed _registration_fault).
CREATE OR REPLACE FUNCTION els._registration_row(p_event jsonb, p_payload jsonb)
RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL SAFE
RETURN jsonb_build_object(
    'batch_id', p_payload ->> 'entity_id',
    'expected_count', (p_payload ->> 'expected_essay_count')::integer,
    'essay_ids', p_payload -> 'essay_ids', 'course_code', p_payload ->> 'course_code',
    'user_id', p_payload ->> 'user_id', 'org_id', p_payload ->> 'org_id',
    'class_id', p_payload ->> 'class_id',
    'student_prompt_ref', nullif(p_payload -> 'student_prompt_ref', 'null'::jsonb),
    'metadata', coalesce(nullif(p_payload -> 'metadata', 'null'::jsonb), '{}'::jsonb),
    'correlation_id', els._correlation_id(p_event, p_payload),
    'source_event_id', CASE WHEN p_event ? 'data' THEN p_event ->> 'event_id' END);

-- The first fault of an EssayContentProvisioned event (NULL: none).
CREATE OR REPLACE FUNCTION els._content_fault(p_event jsonb, p_payload jsonb)
RETURNS jsonb
-- PL/pgSQL, not inlined: only an event that fails its screen comes here
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $fn$
BEGIN
    RETURN coalesce(
        els._envelope_fault(p_event, 'huleedu.file.essay.content.provisioned.v1', 'essay.content.provisioned'),
        els._missing_fault(p_payload -> 'entity_id', 'entity_id'),
        els._missing_fault(p_payload -> 'text_storage_id', 'text_storage_id'),
        els._missing_fault(p_payload -> 'file_upload_id', 'file_upload_id'),
        els._missing_fault(p_payload -> 'original_file_name', 'original_file_name'),
        els._text_fault(p_payload -> 'entity_id', 'entity_id'),
        els._text_fault(p_payload -> 'text_storage_id', 'text_storage_id'),
        els._text_fault(p_payload -> 'file_upload_id', 'file_upload_id'),
        els._text_fault(p_payload -> 'original_file_name', 'original_file_name', 1024),
        els._text_fault(p_payload -> 'raw_file_storage_id', 'raw_file_storage_id'),
        els._integer_fault(p_payload -> 'file_size_bytes', 'file_size_bytes', 0),
        els._text_fault(p_payload -> 'content_md5_hash', 'content_md5_hash'),
        els._text_fault(p_payload -> 'correlation_id', 'correlation_id'),
        els._timestamp_fault(p_payload -> 'timestamp', 'timestamp'));
END
$fn$;

-- The content as the core applies it (item_key: its identity within its batch).
CREATE OR REPLACE FUNCTION els._content_row(p_event jsonb, p_payload jsonb)
RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL SAFE
RETURN jsonb_build_object(
    'batch_id', p_payload ->> 'entity_id', 'item_key', p_payload ->> 'text_storage_id',
    'file_upload_id', p_payload ->> 'file_upload_id',
    'original_file_name', p_payload ->> 'original_file_name',
    'raw_file_storage_id', p_payload ->> 'raw_file_storage_id',
    'file_size_bytes', (p_payload ->> 'file_size_bytes')::numeric,
    'content_md5_hash', p_payload ->> 'content_md5_hash',
    'correlation_id', els._correlation_id(p_event, p_payload),
    'event_timestamp', p_payload ->> 'timestamp',
    'source_event_id', CASE WHEN p_event ? 'data' THEN p_event ->> 'event_id' END);

-- The first fault of an EssayValidationFailed event (NULL: none).
CREATE OR REPLACE FUNCTION els._failure_fault(p_event jsonb, p_payload jsonb)
RETURNS jsonb
-- PL/pgSQL, not inlined: only an event that fails its screen comes here
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $fn$
BEGIN
    RETURN coalesce(
        els._envelope_fault(p_event, 'huleedu.file.essay.validation.failed.v1', 'essay.validation.failed'),
        els._missing_fault(p_payload -> 'entity_id', 'entity_id'),
        els._missing_fault(p_payload -> 'file_upload_id', 'file_upload_id'),
        els._missing_fault(p_payload -> 'original_file_name', 'original_file_name'),
        els._missing_fault(p_payload -> 'validation_error_code', 'validation_error_code'),
        els._text_fault(p_payload -> 'entity_id', 'entity_id'),
        els._text_fault(p_payload -> 'file_upload_id', 'file_upload_id'),
        els._text_fault(p_payload -> 'original_file_name', 'original_file_name', 1024),
        els._enum_fault(p_payload -> 'validation_error_code', 'validation_error_code',
                        ARRAY['EMPTY_CONTENT', 'CONTENT_TOO_SHORT', 'CONTENT_TOO_LONG', 'RAW_STORAGE_FAILED',
                              'TEXT_EXTRACTION_FAILED', 'ENCRYPTED_FILE_UNSUPPORTED',
                              'UNKNOWN_VALIDATION_ERROR']),
        els._object_fault(p_payload -> 'validation_error_detail', 'validation_error_detail'),
        els._text_fault(p_payload -> 'raw_file_storage_id', 'raw_file_storage_id'),
        els._integer_fault(p_payload -> 'file_size_bytes', 'file_size_bytes', 0),
        els._text_fault(p_payload -> 'correlation_id', 'correlation_id'),
        els._timestamp_fault(p_payload -> 'timestamp', 'timestamp'));
END
$fn$;

-- The failure as the core applies it (item_key: its identity within its batch).
CREATE OR REPLACE FUNCTION els._failure_row(p_event jsonb, p_payload jsonb)
RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL SAFE
RETURN jsonb_build_object(
    'batch_id', p_payload ->> 'entity_id', 'item_key', p_payload ->> 'file_upload_id',
    'file_upload_id', p_payload ->> 'file_upload_id',
    'original_file_name', p_payload ->> 'original_file_name',
    'validation_error_code', p_payload ->> 'validation_error_code',
    'validation_error_detail', nullif(p_payload -> 'validation_error_detail', 'null'::jsonb),
    'raw_file_storage_id', p_payload ->> 'raw_file_storage_id',
    'file_size_bytes', (p_payload ->> 'file_size_bytes')::numeric,
    'correlation_id', els._correlation_id(p_event, p_payload),
    'event_timestamp', p_payload ->> 'timestamp',
    'source_event_id', CASE WHEN p_event ? 'data' THEN p_event ->> 'event_id' END);

-- The screens: an event that passes its screen has no fault (the screen implies
-- it: tests/test_bad_input_corpus.py checks every variant of the corpus, and the
-- valid events, against the fault functions above), so only an event that fails
-- it is given to its kind's fault function, which finds and describes the first
-- fault (or none: a screen may be stricter than the rules, never looser). Each is a
-- boolean expression that the planner inlines; the fault functions are not inlined,
-- and the statement that reads a micro-batch initializes only the screens' small
-- expressions: initializing every fault's message and detail on every call cost
-- ~300 µs, more than the rest of a per-event call's reading.

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

-- essay_ids' items, read once: the 1-based position of the first that is not a
-- 1..255-character string, how many there are, and the first id (by first
-- occurrence) that occurs twice (no items when essay_ids is not an array). A
-- set-returning SQL function of one row, so that the planner inlines it into the
-- statement that reads a micro-batch.
CREATE OR REPLACE FUNCTION els._essay_id_items(p_essay_ids jsonb)
RETURNS TABLE (bad_ord bigint, item_count bigint, duplicate_id text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$
    SELECT min(x.ord) FILTER (WHERE jsonb_typeof(x.item) <> 'string'
                                 OR length(x.item #>> '{}') NOT BETWEEN 1 AND 255),
           count(*),
           (SELECT d.id
              FROM (SELECT y.item #>> '{}' AS id, min(y.ord) AS first_ord
                      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_essay_ids) = 'array'
                                                     THEN p_essay_ids END) WITH ORDINALITY AS y(item, ord)
                     GROUP BY 1 HAVING count(*) > 1) AS d
             ORDER BY d.first_ord LIMIT 1)
      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_essay_ids) = 'array' THEN p_essay_ids END)
           WITH ORDINALITY AS x(item, ord)
$fn$;

-- Reads and checks a micro-batch of events (p_kinds[i]: register_batch,
-- provision_content or record_validation_failure); touches no table. One row per
-- event (p_skip[i] set: left out, its result is known already): ord, kind, fault
-- (the first failed check, or NULL) and, when it passed, event_row (the event as the
-- core applies it). One statement per kind, run only when the micro-batch has
-- events of that kind (a per-event call initializes one kind's expressions).
CREATE OR REPLACE FUNCTION els._read_events(p_kinds text[], p_events jsonb[], p_skip boolean[])
RETURNS TABLE (ord integer, kind text, fault jsonb, event_row jsonb)
-- PL/pgSQL: its plans are kept for the session (a SQL function's would be made anew
-- for each call of the statement that calls it); generic plans, made once
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    IF 'register_batch' = ANY (p_kinds) THEN
        RETURN QUERY
        SELECT c.ord, 'register_batch', c.fault,
               CASE WHEN c.fault IS NULL THEN els._registration_row(c.event, c.payload) END
          FROM (SELECT v.ord, v.event, v.payload,
                       CASE WHEN els._registration_ok(v.event, v.payload, i.bad_ord, i.item_count, i.duplicate_id)
                            THEN NULL
                            ELSE els._registration_fault(v.event, v.payload, i.bad_ord, i.item_count,
                                                         i.duplicate_id) END AS fault
                  FROM (SELECT u.ord::integer AS ord, u.event, els._payload(u.event) AS payload
                          FROM unnest(p_kinds, p_events) WITH ORDINALITY AS u(kind, event, ord)
                         WHERE u.kind = 'register_batch' AND p_skip[u.ord::integer] IS NOT TRUE
                        OFFSET 0) AS v
                  CROSS JOIN LATERAL els._essay_id_items(v.payload -> 'essay_ids') AS i
                OFFSET 0) AS c;
    END IF;
    IF 'provision_content' = ANY (p_kinds) THEN
        RETURN QUERY
        SELECT c.ord, 'provision_content', c.fault,
               CASE WHEN c.fault IS NULL THEN els._content_row(c.event, c.payload) END
          FROM (SELECT v.ord, v.event, v.payload,
                       CASE WHEN els._content_ok(v.event, v.payload) THEN NULL
                            ELSE els._content_fault(v.event, v.payload) END AS fault
                  FROM (SELECT u.ord::integer AS ord, u.event, els._payload(u.event) AS payload
                          FROM unnest(p_kinds, p_events) WITH ORDINALITY AS u(kind, event, ord)
                         WHERE u.kind = 'provision_content' AND p_skip[u.ord::integer] IS NOT TRUE
                        OFFSET 0) AS v
                OFFSET 0) AS c;
    END IF;
    IF 'record_validation_failure' = ANY (p_kinds) THEN
        RETURN QUERY
        SELECT c.ord, 'record_validation_failure', c.fault,
               CASE WHEN c.fault IS NULL THEN els._failure_row(c.event, c.payload) END
          FROM (SELECT v.ord, v.event, v.payload,
                       CASE WHEN els._failure_ok(v.event, v.payload) THEN NULL
                            ELSE els._failure_fault(v.event, v.payload) END AS fault
                  FROM (SELECT u.ord::integer AS ord, u.event, els._payload(u.event) AS payload
                          FROM unnest(p_kinds, p_events) WITH ORDINALITY AS u(kind, event, ord)
                         WHERE u.kind = 'record_validation_failure' AND p_skip[u.ord::integer] IS NOT TRUE
                        OFFSET 0) AS v
                OFFSET 0) AS c;
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION els._reject(text, text, jsonb), els._fault(text, text, jsonb),
    els._missing_fault(jsonb, text), els._text_fault(jsonb, text, integer),
    els._enum_fault(jsonb, text, text[]), els._integer_fault(jsonb, text, numeric),
    els._object_fault(jsonb, text), els._timestamp_pattern(), els._timestamp_fault(jsonb, text),
    els._text_array_fault(jsonb, text, bigint), els._payload(jsonb),
    els._envelope_fault(jsonb, text, text), els._envelope_type_fault(jsonb, text),
    els._correlation_id(jsonb, jsonb),
    els._registration_fault(jsonb, jsonb, bigint, bigint, text), els._registration_row(jsonb, jsonb),
    els._content_fault(jsonb, jsonb), els._content_row(jsonb, jsonb),
    els._failure_fault(jsonb, jsonb), els._failure_row(jsonb, jsonb),
    els._text_ok(jsonb, integer), els._present(jsonb), els._enum_ok(jsonb, text[]),
    els._integer_ok(jsonb, numeric), els._object_ok(jsonb), els._timestamp_ok(jsonb),
    els._envelope_ok(jsonb, text, text),
    els._registration_ok(jsonb, jsonb, bigint, bigint, text), els._content_ok(jsonb, jsonb),
    els._failure_ok(jsonb, jsonb), els._essay_id_items(jsonb),
    els._read_events(text[], jsonb[], boolean[]) FROM PUBLIC;
