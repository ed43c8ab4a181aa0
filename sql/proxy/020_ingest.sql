-- Ingest through the proxy: the worker's micro-batch entry and the three per-event
-- functions of SPEC 3, all over one route. The events are split by batch id
-- (els.key_hash), each partition applies its share with its own els.apply_events (in
-- arrival order: a batch's events all go to one partition, in order), and the results
-- are put back in input order. A partition answers rejections as results, never as
-- errors, so PL/Proxy keeps its connection (a remote error makes it drop it).
-- The partitions commit their shares independently: when one fails, the call fails,
-- and its retry finds the others' events applied (duplicates, which change nothing).

-- The remote halves (PL/Proxy).
CREATE OR REPLACE FUNCTION els_remote.apply_items(keys text[], ords integer[], items jsonb[])
RETURNS TABLE (ord integer, result jsonb)
LANGUAGE plproxy AS $fn$
    CLUSTER 'els_partitions';
    SPLIT keys, ords, items;
    RUN ON els.key_hash(keys);
    SELECT o.ord::integer, r.result
      FROM unnest(ords) WITH ORDINALITY AS o(ord, i)
      JOIN jsonb_array_elements(els.apply_events(to_jsonb(items))) WITH ORDINALITY AS r(result, i)
        USING (i);
$fn$;

CREATE OR REPLACE FUNCTION els_remote.apply_texts(keys text[], ords integer[], kinds text[], events text[])
RETURNS TABLE (ord integer, result jsonb)
LANGUAGE plproxy AS $fn$
    CLUSTER 'els_partitions';
    SPLIT keys, ords, kinds, events;
    RUN ON els.key_hash(keys);
    SELECT o.ord::integer, r.result
      FROM unnest(ords) WITH ORDINALITY AS o(ord, i)
      JOIN jsonb_array_elements(els.apply_events(kinds, events)) WITH ORDINALITY AS r(result, i)
        USING (i);
$fn$;

-- The micro-batch as one JSON array of {kind, event} (els.apply_events(jsonb) of a
-- partition): one result per event, in input order.
CREATE OR REPLACE FUNCTION els.apply_events(events jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_state text;
    v_message text;
    v_detail text;
    v_hint text;
BEGIN
    IF jsonb_typeof(events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'events must be a JSON array of {kind, event}';
    END IF;
    IF jsonb_array_length(events) = 0 THEN
        RETURN '[]'::jsonb;
    END IF;
    RETURN (SELECT jsonb_agg(r.result ORDER BY r.ord)
              FROM els_remote.apply_items(
                       ARRAY(SELECT els_proxy.event_batch_id(e.item -> 'event')
                               FROM jsonb_array_elements(events) WITH ORDINALITY AS e(item, n) ORDER BY e.n),
                       ARRAY(SELECT e.n::integer
                               FROM jsonb_array_elements(events) WITH ORDINALITY AS e(item, n) ORDER BY e.n),
                       ARRAY(SELECT e.item
                               FROM jsonb_array_elements(events) WITH ORDINALITY AS e(item, n) ORDER BY e.n))
                   AS r);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                            v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
    PERFORM els_proxy.raise_as_partition(v_state, v_message, v_detail, v_hint);
    RAISE;  -- not reached: raise_as_partition raises
END
$fn$;

-- The micro-batch as text values (a value PostgreSQL refuses as jsonb is that event's
-- ELV01 result, from its partition: here it is routed by '' , as unreadable).
CREATE OR REPLACE FUNCTION els.apply_events(kinds text[], events text[])
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_keys text[] := '{}'::text[];
    v_state text;
    v_message text;
    v_detail text;
    v_hint text;
BEGIN
    IF coalesce(cardinality(events), 0) = 0 THEN
        RETURN '[]'::jsonb;
    END IF;
    FOR i IN 1 .. cardinality(events) LOOP
        BEGIN
            v_keys[i] := els_proxy.event_batch_id(events[i]::jsonb);
        EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
            v_keys[i] := '';
        END;
    END LOOP;
    RETURN (SELECT jsonb_agg(r.result ORDER BY r.ord)
              FROM els_remote.apply_texts(v_keys, ARRAY(SELECT generate_series(1, cardinality(events))),
                                          kinds, events) AS r);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                            v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
    PERFORM els_proxy.raise_as_partition(v_state, v_message, v_detail, v_hint);
    RAISE;  -- not reached: raise_as_partition raises
END
$fn$;

-- One event of kind p_kind, as the per-event function of one database answers it: its
-- result, or its rejection raised with the same SQLSTATE, MESSAGE and DETAIL.
CREATE OR REPLACE FUNCTION els_proxy.apply_one(p_kind text, p_event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_answer jsonb := els.apply_events(jsonb_build_array(
                          jsonb_build_object('kind', p_kind, 'event', p_event))) -> 0;
BEGIN
    IF (v_answer ->> 'ok')::boolean THEN
        RETURN v_answer -> 'result';
    END IF;
    PERFORM els_proxy.raise_as_partition(v_answer ->> 'sqlstate', v_answer ->> 'message',
                                         v_answer ->> 'detail_text', NULL);
    RETURN NULL;  -- not reached: raise_as_partition raises
END
$fn$;

CREATE OR REPLACE FUNCTION els.register_batch(event jsonb)
RETURNS jsonb
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN els_proxy.apply_one('register_batch', event);

CREATE OR REPLACE FUNCTION els.provision_content(event jsonb)
RETURNS jsonb
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN els_proxy.apply_one('provision_content', event);

CREATE OR REPLACE FUNCTION els.record_validation_failure(event jsonb)
RETURNS jsonb
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
RETURN els_proxy.apply_one('record_validation_failure', event);
