-- Input validation of the three input events (SPEC sections 2 and 4), in one
-- implementation that reads a whole micro-batch in one statement: the field checks
-- (this file), each event's first fault (011_event_faults.sql), the screens
-- (012_screens.sql) and the statement that reads a micro-batch (013_read_events.sql).
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
-- screen (_registration_ok, _content_ok, _failure_ok, 012_screens.sql), boolean SQL
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

REVOKE ALL ON FUNCTION els._reject(text, text, jsonb),
    els._fault(text, text, jsonb),
    els._missing_fault(jsonb, text),
    els._text_fault(jsonb, text, integer),
    els._enum_fault(jsonb, text, text[]),
    els._integer_fault(jsonb, text, numeric),
    els._object_fault(jsonb, text),
    els._timestamp_pattern(),
    els._timestamp_fault(jsonb, text),
    els._text_array_fault(jsonb, text, bigint) FROM PUBLIC;
