-- Outgoing events: stable ids, envelopes, and the one way rows enter the outbox.
--
-- An event id is a name-based UUID (RFC 4122 version 3) of the event type and
-- the logical identity of the event (the batch for a completion, batch + essay +
-- text for a slot assignment, batch + text for excess). Republishing a row or
-- recomputing the same logical event therefore yields the same id, which is what
-- lets consumers deduplicate; and the outbox's unique index on event_id makes a
-- second copy of the same logical event impossible.

--
-- The id is the MD5 digest of 'els:<type>:<identity>' with the version nibble
-- set to 3 and the variant bits to 10. Written as one expression (no subquery)
-- so that the planner inlines it into the statement that calls it: a SQL
-- function with a subquery is run through the function executor on every call,
-- which costs far more per emitted event than the inlined expression (docs/BENCHMARKS.md).
CREATE OR REPLACE FUNCTION els._event_digest(p_event_type text, p_identity jsonb)
RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN decode(md5('els:' || p_event_type || ':' || p_identity::text), 'hex');

-- The UUID (version 3, RFC 4122 variant) of a digest of _event_digest. A set-based
-- caller computes the digest once per row and passes it as a column: inlined, an
-- expression argument would be computed for each of its three uses.
CREATE OR REPLACE FUNCTION els._uuid_v3(p_digest bytea)
RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN encode(
    set_byte(set_byte(p_digest, 6, (get_byte(p_digest, 6) & 15) | 48),
             8, (get_byte(p_digest, 8) & 63) | 128),
    'hex')::uuid;

CREATE OR REPLACE FUNCTION els._event_id(p_event_type text, p_identity jsonb)
RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN els._uuid_v3(els._event_digest(p_event_type, p_identity));
COMMENT ON FUNCTION els._event_id(text, jsonb) IS
    'Name-based UUID v3 of an event type and its identity (a JSON array of ids, whose text '
    'form is unambiguous even when ids contain separators).';

-- For DBAs and consumers: the id of a logical event from its type and ids, e.g.
-- els.stable_event_id('EssaySlotAssigned', 'batch-1', 'essay-3', 'text-9').
CREATE OR REPLACE FUNCTION els.stable_event_id(p_event_type text, VARIADIC p_ids text[])
RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN els._event_id(p_event_type, to_jsonb(p_ids));
COMMENT ON FUNCTION els.stable_event_id(text, text[]) IS
    'Deterministic event id of an event type and its logical identity: the batch id for '
    'BatchContentProvisioningCompleted; batch, essay and text ids for EssaySlotAssigned; batch '
    'and text ids for ExcessContentProvisioned.';

-- Topic names of the events we emit (SPEC section 5). The relay may map them
-- to other topics by configuration; the envelope keeps the canonical name.
-- Not STRICT: the planner refuses to inline a STRICT function whose body (a
-- CASE) is not itself strict; NULL in still gives NULL out.
CREATE OR REPLACE FUNCTION els.output_topic(p_event_type text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE p_event_type
    WHEN 'BatchContentProvisioningCompleted' THEN 'huleedu.batch.content.provisioning.completed.v1'
    WHEN 'EssaySlotAssigned' THEN 'huleedu.els.essay.slot.assigned.v1'
    WHEN 'ExcessContentProvisioned' THEN 'huleedu.els.excess.content.provisioned.v1'
END;

-- The envelope of an outgoing event (SPEC sections 2 and 5), the one place its
-- shape is written. A plain SQL expression, so the planner inlines it into the
-- statements of _emit_events.
CREATE OR REPLACE FUNCTION els._envelope(p_event_id uuid, p_event_type text, p_correlation_id text,
                                         p_data jsonb, p_timestamp text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN jsonb_build_object(
    'event_id', p_event_id,
    'event_type', els.output_topic(p_event_type),
    'event_timestamp', p_timestamp,
    'source_service', 'essay_lifecycle_service',
    'schema_version', 1,
    'correlation_id', p_correlation_id,
    'data', p_data || jsonb_build_object('correlation_id', p_correlation_id,
                                         'timestamp', p_timestamp),
    'metadata', '{}'::jsonb);

-- The timestamp of the events a transaction emits (its start, UTC, ISO-8601 with
-- microseconds): the same for every event of the transaction.
CREATE OR REPLACE FUNCTION els._event_timestamp()
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

-- Appends events to the outbox, set-based: one row of p_events per event, each
-- {"event_type", "key" (message key = batch id), "identity", "correlation_id",
-- "data"}. "identity" is a JSON array of the ids that name the logical event
-- (its text form is unambiguous even when ids contain separators). An item may
-- carry its "event_id" already (els._event_id of the same type and identity,
-- computed by a caller that needs it anyway): then it is not computed again.
-- Returns the new event ids in input order. (The other writer of outbox rows is
-- els._apply_items, which builds them with the same _envelope, _event_id and
-- output_topic from its plan's columns.)
CREATE OR REPLACE FUNCTION els._emit_events(p_events jsonb)
RETURNS uuid[]
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_timestamp text := els._event_timestamp();
    v_ids uuid[];
    v_item jsonb;
    v_id uuid;
BEGIN
    -- One event (every provision_content and completion): the same row, by a
    -- plain INSERT ... VALUES, which skips the set-based statement's function
    -- scan, sort and aggregate (a third of this function's cost).
    IF jsonb_array_length(p_events) = 1 THEN
        v_item := p_events -> 0;
        v_id := coalesce((v_item ->> 'event_id')::uuid,
                         els._event_id(v_item ->> 'event_type', v_item -> 'identity'));
        INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
        VALUES (v_id, v_item ->> 'event_type', els.output_topic(v_item ->> 'event_type'),
                v_item ->> 'key',
                els._envelope(v_id, v_item ->> 'event_type', v_item ->> 'correlation_id',
                              v_item -> 'data', v_timestamp));
        RETURN ARRAY[v_id];
    END IF;
    WITH input AS (
        SELECT e.ord,
               e.item ->> 'event_type' AS event_type,
               e.item ->> 'key' AS message_key,
               e.item ->> 'correlation_id' AS correlation_id,
               e.item -> 'data' AS data,
               coalesce((e.item ->> 'event_id')::uuid,
                        els._event_id(e.item ->> 'event_type', e.item -> 'identity')) AS event_id
        FROM jsonb_array_elements(p_events) WITH ORDINALITY AS e(item, ord)
    ), inserted AS (
        INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
        SELECT i.event_id, i.event_type, els.output_topic(i.event_type), i.message_key,
               els._envelope(i.event_id, i.event_type, i.correlation_id, i.data, v_timestamp)
        FROM input AS i
        ORDER BY i.ord
        RETURNING event_outbox.id, event_outbox.event_id
    )
    SELECT array_agg(inserted.event_id ORDER BY inserted.id) INTO v_ids FROM inserted;
    RETURN coalesce(v_ids, '{}'::uuid[]);
END
$fn$;

REVOKE ALL ON FUNCTION els._event_digest(text, jsonb), els._uuid_v3(bytea),
    els._event_id(text, jsonb), els.stable_event_id(text, text[]),
    els.output_topic(text), els._envelope(uuid, text, text, jsonb, text), els._event_timestamp(),
    els._emit_events(jsonb) FROM PUBLIC;
-- the parts of _event_id too: inlined, its body is checked against the caller
GRANT EXECUTE ON FUNCTION els._event_digest(text, jsonb), els._uuid_v3(bytea), els._event_id(text, jsonb),
    els.stable_event_id(text, text[]), els.output_topic(text)
    TO els_worker, els_readonly;
