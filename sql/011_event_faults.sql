-- The first fault of each input event (SPEC sections 2 and 4, in the SPEC's order of
-- errors: the envelope, a misrouted event_type, missing fields, each field's type,
-- format and range, then a registration's counts), built from the field checks of
-- 010_validation.sql, and the event as the core applies it once it has none.

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

REVOKE ALL ON FUNCTION els._payload(jsonb),
    els._envelope_type_fault(jsonb, text),
    els._envelope_fault(jsonb, text, text),
    els._correlation_id(jsonb, jsonb),
    els._registration_fault(jsonb, jsonb, bigint, bigint, text),
    els._registration_row(jsonb, jsonb),
    els._content_fault(jsonb, jsonb),
    els._content_row(jsonb, jsonb),
    els._failure_fault(jsonb, jsonb),
    els._failure_row(jsonb, jsonb) FROM PUBLIC;
