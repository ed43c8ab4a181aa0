-- The one implementation of the ingest rules (SPEC 3), applied to a micro-batch of
-- events of any of the three kinds, in arrival order, in a few set-based statements.
--
-- els.apply_events (the worker's fast path) and the per-event functions
-- els.register_batch, els.provision_content and els.record_validation_failure (the
-- DBA- and test-facing API, each a call of the core with one event) all go
-- through els._apply_events:
--
-- 1. every event is read and checked, by one statement per kind of event
--    (els._read_events, 013_read_events.sql: no table is touched); a rejected event gets its error
--    (SQLSTATE, message, JSON detail) as its result and changes nothing;
-- 2. the advisory locks of all the batches of the micro-batch are taken at once,
--    in ascending key order, so that two workers can never deadlock on them;
-- 3. the events are applied in rounds that keep each batch's order: the events
--    of a batch up to its first registration, its first registration, the events
--    up to its second registration, and so on. Batches are independent of each
--    other (every rule touches one batch), so a round holds the same stage of
--    every batch: a round of content and failures is applied set-based by
--    _apply_items (036_item_writes.sql: a plan of two statements, 034_item_plan.sql,
--    then one statement per kind of row written); a round of registrations by
--    _register_round (045_register_round.sql: one statement judges them, one writes
--    their trackers and slots, reconciliation and completion set-based over all of
--    them). The one thing shared between batches is the essay id: when two
--    registrations of different batches in one micro-batch share an essay id (the
--    second gets ELC02, whichever comes first wins), every event is its own round.
--
-- The result of event i is {"ok": true, "result": <what the per-event function
-- returns>} or {"ok": false, "sqlstate", "message", "detail", "detail_text"} (what
-- it raises: detail as JSON, and as the text of the error's DETAIL).

-- A rejection as a per-event result (the detail of every ELV/ELC error is JSON;
-- detail_text is the DETAIL exactly as the per-event function raises it, which the
-- worker puts in the dead letter's header; context where it was raised, for its log).
CREATE OR REPLACE FUNCTION els._rejection(p_sqlstate text, p_message text, p_detail text,
                                          p_context text)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN jsonb_build_object('ok', false, 'sqlstate', p_sqlstate, 'message', p_message,
                          'detail', p_detail::jsonb, 'detail_text', p_detail,
                          'context', p_context);

-- The core: applies p_events (p_kinds[i] names the per-event function of event
-- i: register_batch, provision_content or record_validation_failure) in arrival
-- order, as that sequence of calls would, and returns one result per event (see
-- the top of this file). p_refused[i], when set, is already event i's result (a
-- value PostgreSQL refused as jsonb, see els.apply_events). Only rejections
-- (ELV*, ELC*) become results; any other error aborts the whole call, so that the
-- caller retries or investigates the micro-batch as a whole.
CREATE OR REPLACE FUNCTION els._apply_events(p_kinds text[], p_events jsonb[], p_refused jsonb[] DEFAULT NULL)
RETURNS jsonb[]
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    -- the checks of the arrays, as an expression (PERFORM would be a statement, which a
    -- per-event call pays for)
    v_n integer := els._checked_length(p_kinds, p_events, p_refused);
    v_done jsonb;       -- [{"ord", "done"}]: the events' results, rejections first
    v_count integer;    -- the events that passed their checks
    v_keys bigint[];    -- their batches' lock keys, ascending
    v_items jsonb[];    -- per round, its content and failures ...
    v_regs jsonb[];     -- ... and its registrations
BEGIN
    -- 1. every event read and checked (els._read_events: one statement per kind, no table
    --    touched), and the checked ones grouped in rounds: 2 x (registrations of its batch
    --    before it), + 1 for a registration; every event its own round when two
    --    registrations of different batches share an essay id
    WITH r AS MATERIALIZED (
        SELECT r.ord, r.kind, r.fault, r.event_row, r.event_row ->> 'batch_id' AS batch_id
          FROM els._read_events(p_kinds, p_events, (SELECT array_agg(f.result IS NOT NULL)
                                                      FROM unnest(p_refused) AS f(result))) AS r
    ), checked AS MATERIALIZED (
        SELECT r.ord, r.kind, r.batch_id, r.event_row || jsonb_build_object('ord', r.ord, 'kind', r.kind) AS j,
               2 * count(*) FILTER (WHERE r.kind = 'register_batch') OVER (
                   PARTITION BY r.batch_id ORDER BY r.ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                   + CASE WHEN r.kind = 'register_batch' THEN 1 ELSE 0 END AS round
          FROM r WHERE r.fault IS NULL
    ), sequential AS (
        SELECT EXISTS (SELECT FROM (SELECT c.batch_id, c.j -> 'essay_ids' AS essay_ids FROM checked AS c
                                     WHERE c.kind = 'register_batch' OFFSET 0) AS g
                        CROSS JOIN LATERAL jsonb_array_elements_text(g.essay_ids) AS e(id)
                        GROUP BY e.id HAVING count(DISTINCT g.batch_id) > 1) AS yes
    ), rounds AS (
        SELECT CASE WHEN q.yes THEN c.ord ELSE c.round END AS round,
               jsonb_agg(c.j ORDER BY c.ord) FILTER (WHERE c.kind <> 'register_batch') AS items,
               jsonb_agg(c.j ORDER BY c.ord) FILTER (WHERE c.kind = 'register_batch') AS regs
          FROM checked AS c, sequential AS q
         GROUP BY 1
    )
    SELECT (SELECT coalesce(jsonb_agg(jsonb_build_object('ord', r.ord, 'done', els._rejection(
                       r.fault ->> 'sqlstate', r.fault ->> 'message', (r.fault -> 'detail')::text,
                       'els._read_events: event ' || r.ord || ' of the micro-batch')) ORDER BY r.ord), '[]')
              FROM r WHERE r.fault IS NOT NULL),
           (SELECT count(*) FROM checked),
           (SELECT array_agg(DISTINCT els._batch_lock_key(c.batch_id) ORDER BY els._batch_lock_key(c.batch_id))
              FROM checked AS c),
           array_agg(g.items ORDER BY g.round), array_agg(g.regs ORDER BY g.round)
      INTO v_done, v_count, v_keys, v_items, v_regs
      FROM rounds AS g;
    IF v_count > 0 THEN
        -- 2. the locks of every batch, in ascending key order (two workers never deadlock)
        PERFORM pg_advisory_xact_lock(k.key) FROM unnest(v_keys) AS k(key);
        -- 3. the rounds, in order: a round's content and failures, then its registrations
        FOR i IN 1 .. cardinality(v_items) LOOP
            IF v_items[i] IS NOT NULL THEN
                v_done := v_done || els._apply_items(v_items[i]);
            END IF;
            IF v_regs[i] IS NOT NULL THEN
                v_done := v_done || els._register_round(v_regs[i]);
            END IF;
        END LOOP;
    END IF;
    -- the results in place, in one pass
    RETURN (SELECT coalesce(array_agg(coalesce(d.done, p_refused[g.i]) ORDER BY g.i), '{}'::jsonb[])
              FROM generate_series(1, v_n) AS g(i)
              LEFT JOIN jsonb_to_recordset(v_done) AS d(ord integer, done jsonb) ON d.ord = g.i);
END
$fn$;

-- The number of events, after refusing (22023, a caller's bug) kinds and events of
-- different lengths and a kind that is not one of the three, unless that event was
-- refused already.
CREATE OR REPLACE FUNCTION els._checked_length(p_kinds text[], p_events jsonb[], p_refused jsonb[])
RETURNS integer
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_unknown text;
BEGIN
    IF coalesce(cardinality(p_events), 0) <> coalesce(cardinality(p_kinds), 0)
       OR (p_refused IS NOT NULL AND cardinality(p_refused) <> cardinality(p_kinds)) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'kinds and events differ in length';
    END IF;
    -- an expression first (no statement): the query only when a kind is unknown or NULL
    IF array_position(p_kinds, NULL) IS NOT NULL
       OR NOT p_kinds <@ ARRAY['register_batch', 'provision_content', 'record_validation_failure'] THEN
        SELECT coalesce(u.kind, 'NULL') INTO v_unknown
          FROM unnest(p_kinds) WITH ORDINALITY AS u(kind, ord)
         WHERE (p_refused IS NULL OR p_refused[u.ord::integer] IS NULL)
           AND (u.kind IS NULL OR u.kind NOT IN ('register_batch', 'provision_content', 'record_validation_failure'))
         ORDER BY u.ord LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown event kind %s', v_unknown);
        END IF;
    END IF;
    RETURN coalesce(cardinality(p_kinds), 0);
END
$fn$;

-- One event through the core, for the per-event functions of SPEC 3: its result,
-- or its rejection raised with the same SQLSTATE, message and detail. The steps of
-- _apply_events for one event, without the statements that group a micro-batch in
-- rounds (a per-event call pays for every statement it runs).
CREATE OR REPLACE FUNCTION els._apply_one(p_kind text, p_event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_read record;
    v_row jsonb;
    v_done jsonb;
BEGIN
    SELECT r.fault, r.event_row INTO v_read
      FROM els._read_events(ARRAY[p_kind], ARRAY[p_event], NULL) AS r;
    IF v_read.fault IS NOT NULL THEN
        PERFORM els._reject(v_read.fault ->> 'sqlstate', v_read.fault ->> 'message', v_read.fault -> 'detail');
    END IF;
    v_row := v_read.event_row || jsonb_build_object('ord', 1, 'kind', p_kind);
    PERFORM els._lock_batch(v_row ->> 'batch_id');
    v_done := CASE WHEN p_kind = 'register_batch' THEN els._register_round(jsonb_build_array(v_row))
                   ELSE els._apply_items(jsonb_build_array(v_row)) END -> 0 -> 'done';
    IF NOT (v_done ->> 'ok')::boolean THEN
        PERFORM els._reject(v_done ->> 'sqlstate', v_done ->> 'message', v_done -> 'detail');
    END IF;
    RETURN v_done -> 'result';
END
$fn$;

-- els.apply_events(kinds, events): the worker's micro-batch, message values as
-- text (kinds[i] is the function of event i's topic). A value PostgreSQL cannot
-- take as jsonb (e.g. \u0000) is that event's result: {"ok": false,
-- "refused_value": true, "sqlstate", "message", "pg_detail", "context"}, which the
-- worker reports as ELV01 (SPEC 4), as when the per-event call's cast refuses it.
-- Returns a JSON array of per-event results in input order.
CREATE OR REPLACE FUNCTION els.apply_events(kinds text[], events text[])
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_n integer := coalesce(cardinality(events), 0);
    v_json jsonb[];
    v_refused jsonb[];
    v_state text;
    v_message text;
    v_detail text;
    v_context text;
BEGIN
    -- every value at once; one by one only when one of them is refused
    BEGIN
        v_json := events::jsonb[];
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
        v_json := array_fill(NULL::jsonb, ARRAY[v_n]);
        v_refused := array_fill(NULL::jsonb, ARRAY[v_n]);
        FOR i IN 1 .. v_n LOOP
            BEGIN
                v_json[i] := events[i]::jsonb;
            EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                        v_detail = PG_EXCEPTION_DETAIL, v_context = PG_EXCEPTION_CONTEXT;
                v_refused[i] := jsonb_build_object('ok', false, 'refused_value', true,
                    'sqlstate', v_state, 'message', v_message, 'pg_detail', v_detail,
                    'context', v_context);
            END;
        END LOOP;
    END;
    RETURN to_jsonb(els._apply_events(kinds, coalesce(v_json, '{}'::jsonb[]), v_refused));
END
$fn$;
COMMENT ON FUNCTION els.apply_events(text[], text[]) IS
    'A micro-batch of input events in arrival order (kinds[i]: register_batch, provision_content '
    'or record_validation_failure) applied set-based by the same core as the per-event functions; '
    'one result per event: {ok: true, result} or {ok: false, sqlstate, message, detail}. '
    'Rejected events change nothing; the others are applied.';

-- els.apply_events(events): the same micro-batch as one JSON array of
-- {"kind", "event"} in arrival order (kind as kinds[i] above, event the value as
-- JSON). The worker's usual form: one jsonb parameter costs the client far less to
-- send than a text[] of 500 values (docs/BENCHMARKS.md); when
-- PostgreSQL refuses the array (one value it cannot take as jsonb), the worker sends
-- the text[] form, which reports that value alone.
CREATE OR REPLACE FUNCTION els.apply_events(events jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_kinds text[];
    v_events jsonb[];
BEGIN
    IF jsonb_typeof(events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'events must be a JSON array of {kind, event}';
    END IF;
    SELECT coalesce(array_agg(e.item ->> 'kind' ORDER BY e.ord), '{}'::text[]),
           coalesce(array_agg(e.item -> 'event' ORDER BY e.ord), '{}'::jsonb[])
      INTO v_kinds, v_events
      FROM jsonb_array_elements(events) WITH ORDINALITY AS e(item, ord);
    RETURN to_jsonb(els._apply_events(v_kinds, v_events));
END
$fn$;
COMMENT ON FUNCTION els.apply_events(jsonb) IS
    'A micro-batch of input events as one JSON array of {kind, event} in arrival order, '
    'applied as els.apply_events(text[], text[]) does; one result per event.';

REVOKE ALL ON FUNCTION els._rejection(text, text, text, text),
    els._apply_events(text[], jsonb[], jsonb[]), els._checked_length(text[], jsonb[], jsonb[]),
    els._apply_one(text, jsonb),
    els.apply_events(text[], text[]), els.apply_events(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.apply_events(text[], text[]), els.apply_events(jsonb) TO els_worker;
