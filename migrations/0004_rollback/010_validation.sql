-- Input validation shared by the ingest functions.
--
-- Every rejection goes through els._reject so that callers (the worker, a DBA in
-- psql, external tests) always get the same shape: a custom SQLSTATE from SPEC
-- section 4, a one-line MESSAGE, and a DETAIL that is a JSON object with at least
-- "field" and "reason". Field readers check presence (ELV02) separately from type
-- (ELV03) so that each function can report missing fields before wrong ones, as
-- the SPEC orders them. None of these functions is SECURITY DEFINER: they touch
-- no table and are only called from the definer functions.

CREATE OR REPLACE FUNCTION els._reject(p_sqlstate text, p_message text, p_detail jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
    RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, DETAIL = p_detail::text;
END
$fn$;
COMMENT ON FUNCTION els._reject(text, text, jsonb) IS
    'Raises a structured rejection: custom SQLSTATE, one-line message, JSON detail.';

-- The first required field that is absent or JSON null raises ELV02.
CREATE OR REPLACE FUNCTION els._require_fields(p_payload jsonb, p_fields text[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    v_field text;
BEGIN
    FOREACH v_field IN ARRAY p_fields LOOP
        IF p_payload -> v_field IS NULL OR jsonb_typeof(p_payload -> v_field) = 'null' THEN
            PERFORM els._reject('ELV02', format('required field %s is missing or null', v_field),
                jsonb_build_object('field', v_field, 'reason', 'missing'));
        END IF;
    END LOOP;
END
$fn$;

-- A string field of p_min..p_max characters; NULL when absent or JSON null
-- (presence of required fields is checked before, by _require_fields).
CREATE OR REPLACE FUNCTION els._text_field(p_payload jsonb, p_field text, p_max integer DEFAULT 255)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    v_value jsonb := p_payload -> p_field;
    v_text text;
BEGIN
    IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_value) <> 'string' THEN
        PERFORM els._reject('ELV03', format('field %s must be a string', p_field),
            jsonb_build_object('field', p_field, 'reason', 'wrong_type',
                               'expected', 'string', 'actual', jsonb_typeof(v_value)));
    END IF;
    v_text := v_value #>> '{}';
    IF length(v_text) NOT BETWEEN 1 AND p_max THEN
        PERFORM els._reject('ELV03', format('field %s must be 1..%s characters', p_field, p_max),
            jsonb_build_object('field', p_field, 'reason', 'bad_length',
                               'min', 1, 'max', p_max, 'actual', length(v_text)));
    END IF;
    RETURN v_text;
END
$fn$;

CREATE OR REPLACE FUNCTION els._enum_field(p_payload jsonb, p_field text, p_allowed text[])
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    v_text text := els._text_field(p_payload, p_field);
BEGIN
    IF v_text IS NOT NULL AND NOT v_text = ANY (p_allowed) THEN
        PERFORM els._reject('ELV03', format('field %s has an unknown value', p_field),
            jsonb_build_object('field', p_field, 'reason', 'not_in_enum',
                               'allowed', to_jsonb(p_allowed), 'actual', v_text));
    END IF;
    RETURN v_text;
END
$fn$;

-- An integer (no fraction, no exponent form that is not integral) of at least
-- p_min. Returned as numeric so that callers can apply their own upper bounds
-- (expected_essay_count's ELV06 comes after ELV04/ELV05 in the SPEC's order).
CREATE OR REPLACE FUNCTION els._integer_field(p_payload jsonb, p_field text, p_min numeric)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    v_value jsonb := p_payload -> p_field;
    v_number numeric;
BEGIN
    IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_value) <> 'number' THEN
        PERFORM els._reject('ELV03', format('field %s must be an integer', p_field),
            jsonb_build_object('field', p_field, 'reason', 'wrong_type',
                               'expected', 'integer', 'actual', jsonb_typeof(v_value)));
    END IF;
    v_number := (v_value #>> '{}')::numeric;
    IF v_number <> trunc(v_number) OR (v_value #>> '{}') ~ '[.eE]' THEN
        PERFORM els._reject('ELV03', format('field %s must be an integer', p_field),
            jsonb_build_object('field', p_field, 'reason', 'not_an_integer', 'actual', v_value));
    END IF;
    IF v_number < p_min OR v_number > 9223372036854775807 THEN
        PERFORM els._reject('ELV03', format('field %s is out of range', p_field),
            jsonb_build_object('field', p_field, 'reason', 'out_of_range',
                               'min', p_min, 'actual', v_value));
    END IF;
    RETURN v_number;
END
$fn$;

CREATE OR REPLACE FUNCTION els._object_field(p_payload jsonb, p_field text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    v_value jsonb := p_payload -> p_field;
BEGIN
    IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_value) <> 'object' THEN
        PERFORM els._reject('ELV03', format('field %s must be an object', p_field),
            jsonb_build_object('field', p_field, 'reason', 'wrong_type',
                               'expected', 'object', 'actual', jsonb_typeof(v_value)));
    END IF;
    RETURN v_value;
END
$fn$;

-- ISO-8601 timestamps as producers send them: a date, optionally a time with
-- fraction, optionally a zone, each part within its range. Checked by pattern,
-- not by a cast, so that no cast can raise an unstructured error (a day 31 in a
-- 30-day month passes: the field is informational and stored as sent).
CREATE OR REPLACE FUNCTION els._timestamp_field(p_payload jsonb, p_field text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    v_text text := els._text_field(p_payload, p_field);
BEGIN
    IF v_text IS NOT NULL AND v_text !~
        '^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])'
        '([T ]([01]\d|2[0-3]):[0-5]\d(:([0-5]\d|60)(\.\d{1,9})?)?)?'
        '(Z|z|[+-]([01]\d|2[0-3])(:?[0-5]\d)?)?$' THEN
        PERFORM els._reject('ELV03', format('field %s must be an ISO-8601 timestamp', p_field),
            jsonb_build_object('field', p_field, 'reason', 'bad_format', 'expected', 'ISO-8601'));
    END IF;
    RETURN v_text;
END
$fn$;

-- essay_ids: a JSON array of 1..255-character strings, read in one pass.
CREATE OR REPLACE FUNCTION els._text_array_field(p_payload jsonb, p_field text)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    v_value jsonb := p_payload -> p_field;
    v_items text[];
    v_bad_index bigint;
BEGIN
    IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_value) <> 'array' THEN
        PERFORM els._reject('ELV03', format('field %s must be an array of strings', p_field),
            jsonb_build_object('field', p_field, 'reason', 'wrong_type',
                               'expected', 'array', 'actual', jsonb_typeof(v_value)));
    END IF;
    SELECT array_agg(e.item #>> '{}' ORDER BY e.ord),
           min(e.ord) FILTER (WHERE jsonb_typeof(e.item) <> 'string'
                                 OR length(e.item #>> '{}') NOT BETWEEN 1 AND 255)
      INTO v_items, v_bad_index
      FROM jsonb_array_elements(v_value) WITH ORDINALITY AS e(item, ord);
    IF v_bad_index IS NOT NULL THEN
        PERFORM els._reject('ELV03',
            format('field %s must hold strings of 1..255 characters', p_field),
            jsonb_build_object('field', p_field, 'reason', 'bad_item', 'index', v_bad_index - 1,
                               'item', left((v_value -> (v_bad_index::integer - 1))::text, 300)));
    END IF;
    RETURN coalesce(v_items, '{}'::text[]);
END
$fn$;

-- Unwraps an envelope (or accepts a bare payload) and checks the envelope
-- (ELV01) and its event_type (ELV03) before anything in the payload.
-- correlation_id is the envelope's (NULL for a bare payload); callers fall back
-- to data.correlation_id, validated with the payload, and then generate one, so
-- every event we emit can be traced.
CREATE OR REPLACE FUNCTION els._unwrap_event(
    p_event jsonb, p_topic text, p_short_name text,
    OUT payload jsonb, OUT correlation_id text, OUT source_event_id text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    v_field text;
BEGIN
    IF p_event IS NULL OR jsonb_typeof(p_event) <> 'object' THEN
        PERFORM els._reject('ELV01', 'event is not a JSON object',
            jsonb_build_object('field', NULL, 'reason', 'not_an_object',
                               'actual', coalesce(jsonb_typeof(p_event), 'null')));
    END IF;
    IF p_event ? 'data' THEN
        IF jsonb_typeof(p_event -> 'data') <> 'object' THEN
            PERFORM els._reject('ELV01', 'envelope field data is not a JSON object',
                jsonb_build_object('field', 'data', 'reason', 'not_an_object',
                                   'actual', jsonb_typeof(p_event -> 'data')));
        END IF;
        FOREACH v_field IN ARRAY ARRAY['event_id', 'event_type', 'event_timestamp',
                                       'source_service', 'correlation_id'] LOOP
            IF jsonb_typeof(p_event -> v_field) NOT IN ('string', 'null') THEN
                PERFORM els._reject('ELV01', format('envelope field %s is not a string', v_field),
                    jsonb_build_object('field', v_field, 'reason', 'wrong_type',
                                       'expected', 'string', 'actual', jsonb_typeof(p_event -> v_field)));
            END IF;
        END LOOP;
        IF jsonb_typeof(p_event -> 'metadata') NOT IN ('object', 'null') THEN
            PERFORM els._reject('ELV01', 'envelope field metadata is not a JSON object',
                jsonb_build_object('field', 'metadata', 'reason', 'wrong_type',
                                   'expected', 'object', 'actual', jsonb_typeof(p_event -> 'metadata')));
        END IF;
        IF jsonb_typeof(p_event -> 'schema_version') NOT IN ('number', 'null') THEN
            PERFORM els._reject('ELV01', 'envelope field schema_version is not a number',
                jsonb_build_object('field', 'schema_version', 'reason', 'wrong_type',
                                   'expected', 'integer', 'actual', jsonb_typeof(p_event -> 'schema_version')));
        END IF;
        payload := p_event -> 'data';
        correlation_id := p_event ->> 'correlation_id';
        IF length(correlation_id) NOT BETWEEN 1 AND 255 THEN
            PERFORM els._reject('ELV01', 'envelope field correlation_id must be 1..255 characters',
                jsonb_build_object('field', 'correlation_id', 'reason', 'bad_length',
                                   'min', 1, 'max', 255, 'actual', length(correlation_id)));
        END IF;
        source_event_id := p_event ->> 'event_id';
    ELSE
        payload := p_event;
    END IF;
    IF p_event ? 'event_type' AND jsonb_typeof(p_event -> 'event_type') <> 'null' THEN
        IF jsonb_typeof(p_event -> 'event_type') <> 'string' THEN
            PERFORM els._reject('ELV01', 'event_type is not a string',
                jsonb_build_object('field', 'event_type', 'reason', 'wrong_type',
                                   'expected', 'string', 'actual', jsonb_typeof(p_event -> 'event_type')));
        END IF;
        IF (p_event ->> 'event_type') NOT IN (p_topic, p_short_name) THEN
            PERFORM els._reject('ELV03', 'event_type names another event (misrouted)',
                jsonb_build_object('field', 'event_type', 'reason', 'misrouted',
                                   'expected', jsonb_build_array(p_topic, p_short_name),
                                   'actual', left(p_event ->> 'event_type', 300)));
        END IF;
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION els._reject(text, text, jsonb), els._require_fields(jsonb, text[]),
    els._text_field(jsonb, text, integer), els._enum_field(jsonb, text, text[]),
    els._integer_field(jsonb, text, numeric), els._object_field(jsonb, text),
    els._timestamp_field(jsonb, text), els._text_array_field(jsonb, text),
    els._unwrap_event(jsonb, text, text) FROM PUBLIC;
