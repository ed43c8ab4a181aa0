-- The one implementation of the ingest rules (SPEC 3), applied to a micro-batch of
-- events of any of the three kinds, in arrival order, in a few set-based statements.
--
-- els.apply_events (the worker's fast path) and the per-event functions
-- els.register_batch, els.provision_content and els.record_validation_failure (the
-- DBA- and test-facing API, each a call of the core with one event) all go
-- through els._apply_events:
--
-- 1. every event is read and checked, by one statement per kind of event
--    (els._read_events, 010_validation.sql: no table is touched); a rejected event gets its error
--    (SQLSTATE, message, JSON detail) as its result and changes nothing;
-- 2. the advisory locks of all the batches of the micro-batch are taken at once,
--    in ascending key order, so that two workers can never deadlock on them;
-- 3. the events are applied in rounds that keep each batch's order: the events
--    of a batch up to its first registration, its first registration, the events
--    up to its second registration, and so on. Batches are independent of each
--    other (every rule touches one batch), so a round holds the same stage of
--    every batch: a round of content and failures is applied set-based by
--    _apply_items (slots assigned by window functions, items, failures, slot
--    updates and outbox rows written in one statement each); a round of
--    registrations applies each one (its slots set-based, as before). The one
--    thing shared between batches is the essay id: when two registrations of
--    different batches in one micro-batch share an essay id (the second gets
--    ELC02, whichever comes first wins), every event is its own round.
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

-- One round of content and failures (any batches; a batch's items in arrival
-- order, none of its registrations in between), as a sequence of calls would
-- apply them, computed from the state before the round:
--   * an item whose key (text_storage_id, file_upload_id) its batch's ledger
--     already holds, or that an earlier item of the round carries, is a duplicate:
--     nothing changes; essay_id names the slot the first one took;
--   * the other items of a batch that has slots take its empty slots in order: the
--     k-th new item the k-th empty slot by slot number; those beyond are excess;
--     the item that takes the last empty slot completes the batch (when all its
--     expected slots exist), and items after it see the batch complete;
--   * a batch without slots keeps them pending (or excess when it was purged).
-- Then the writes: content rows, failure rows, slot updates, tombstone and
-- tracker stamps, outbox rows, one statement each. Returns [{"ord", "done"}], done
-- being the event's result as _apply_events returns it ({"ok": true, "result"}).
-- Each step of the plan is a MATERIALIZED CTE: planned on its own (inlined, the steps
-- made one join problem whose planning cost milliseconds), and each runs once. The
-- plan reaches the write statements as one array per column, each statement
-- unnesting only the columns it writes (as a JSON document, building it and reading
-- it back in every statement cost more than the writes themselves: bench/profile.py).
CREATE OR REPLACE FUNCTION els._apply_items(p_items jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
-- one plan per session for its statements: the plan statement is large, and planning it
-- for each call (custom plans) cost more than running it for one event
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    -- the plan, a column each (the new items: duplicates change nothing)
    p_ord integer[];
    p_kind text[];
    p_batch text[];
    p_key text[];
    p_upload text[];
    p_name text[];
    p_raw text[];
    p_size bigint[];
    p_md5 text[];
    p_corr text[];
    p_source text[];
    p_stamp text[];
    p_code text[];
    p_detail jsonb[];
    p_outcome text[];
    p_slot text[];
    p_purged boolean[];
    p_announced boolean[];
    p_completing boolean[];
    p_event uuid[];
    v_results jsonb;
    v_content boolean;
    v_failures boolean;
    v_fills boolean;
    v_purged boolean;
    v_completes boolean;
BEGIN
    WITH item AS MATERIALIZED (
        SELECT x.* FROM jsonb_to_recordset(p_items) AS x(
            ord integer, kind text, batch_id text, item_key text, file_upload_id text,
            original_file_name text, raw_file_storage_id text, file_size_bytes bigint,
            content_md5_hash text, correlation_id text, source_event_id text, event_timestamp text,
            validation_error_code text, validation_error_detail jsonb)
    ), seen AS MATERIALIZED (
        -- LATERAL: one primary-key probe per item, whatever the planner guesses of
        -- the input's size (a hash join would read the whole ledger)
        SELECT i.*,
               k.item_key IS NOT NULL AS in_ledger,
               k.essay_id AS known_essay_id,
               row_number() OVER (PARTITION BY i.batch_id, i.kind, i.item_key ORDER BY i.ord) AS occurrence
          FROM item AS i
          LEFT JOIN LATERAL (
                SELECT c.text_storage_id AS item_key, c.essay_id FROM els.essay_content AS c
                 WHERE i.kind = 'provision_content' AND c.batch_id = i.batch_id
                   AND c.text_storage_id = i.item_key
                UNION ALL
                SELECT f.file_upload_id, f.essay_id FROM els.validation_failure AS f
                 WHERE i.kind = 'record_validation_failure' AND f.batch_id = i.batch_id
                   AND f.file_upload_id = i.item_key
                 LIMIT 1) AS k ON true
    ), fresh AS MATERIALIZED (
        SELECT s.*, (s.in_ledger OR s.occurrence > 1) AS duplicate,
               CASE WHEN NOT (s.in_ledger OR s.occurrence > 1) THEN
                   row_number() OVER (PARTITION BY s.batch_id, (s.in_ledger OR s.occurrence > 1)
                                      ORDER BY s.ord) END AS take_no
          FROM seen AS s
    ), batch AS MATERIALIZED (
        SELECT b.batch_id, b.new_items,
               t.batch_id IS NOT NULL AS tracked,
               coalesce(t.completed_at IS NOT NULL, false) AS was_complete,
               t.expected_count,
               sl.batch_id IS NOT NULL AS has_slots,
               bt.batch_id IS NOT NULL AS purged
          FROM (SELECT f.batch_id, count(*) FILTER (WHERE NOT f.duplicate) AS new_items
                  FROM fresh AS f GROUP BY f.batch_id) AS b
          -- LIMIT 1 (primary keys): kept as per-batch probes, never flattened into a
          -- join that could read the table
          LEFT JOIN LATERAL (SELECT t.batch_id, t.completed_at, t.expected_count
                               FROM els.batch_tracker AS t WHERE t.batch_id = b.batch_id
                              LIMIT 1) AS t ON true
          LEFT JOIN LATERAL (SELECT x.batch_id FROM els.batch_tombstone AS x
                              WHERE x.batch_id = b.batch_id LIMIT 1) AS bt ON true
          -- a probe of essay_slot_batch_slot_no_key per batch: as EXISTS, the planner
          -- hashed every slot of the table (a SubPlan), and each call grew with it
          LEFT JOIN LATERAL (SELECT s.batch_id FROM els.essay_slot AS s
                              WHERE s.batch_id = b.batch_id LIMIT 1) AS sl ON true
    ), empty_slot AS MATERIALIZED (
        -- the first empty slots of each batch, one more than it has new items (to
        -- tell whether the round closes them all)
        SELECT b.batch_id, e.essay_id,
               row_number() OVER (PARTITION BY b.batch_id ORDER BY e.slot_no) AS take_no
          FROM batch AS b
         CROSS JOIN LATERAL (
                SELECT s.essay_id, s.slot_no FROM els.essay_slot AS s
                 WHERE s.batch_id = b.batch_id AND s.status = 'uploaded'
                 ORDER BY s.slot_no LIMIT b.new_items + 1) AS e
         WHERE b.has_slots AND b.new_items > 0
    ), closing AS MATERIALIZED (
        -- the new item that leaves its batch without an empty slot completes it
        -- (the first one when none was left: as _complete_if_done would)
        SELECT b.batch_id, greatest(count(e.essay_id), 1) AS completing_take
          FROM batch AS b
          LEFT JOIN empty_slot AS e ON e.batch_id = b.batch_id
         WHERE b.has_slots AND NOT b.was_complete AND b.new_items > 0
         GROUP BY b.batch_id, b.new_items, b.expected_count
        HAVING count(e.essay_id) <= b.new_items
           AND (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = b.batch_id) = b.expected_count
    ), placed AS MATERIALIZED (
        SELECT f.*, b.tracked, b.was_complete, b.has_slots, b.purged,
               e.essay_id AS slot_essay_id,
               coalesce(f.take_no = cl.completing_take, false) AS completing
          FROM fresh AS f
          JOIN batch AS b ON b.batch_id = f.batch_id
          LEFT JOIN empty_slot AS e ON e.batch_id = f.batch_id AND e.take_no = f.take_no
          LEFT JOIN closing AS cl ON cl.batch_id = f.batch_id
    ), judged AS MATERIALIZED (
        SELECT p.*,
               max(p.ord) FILTER (WHERE p.completing) OVER (PARTITION BY p.batch_id) AS completing_ord,
               CASE WHEN p.duplicate THEN 'duplicate'
                    WHEN p.has_slots THEN
                        CASE WHEN p.slot_essay_id IS NULL THEN 'excess'
                             WHEN p.kind = 'provision_content' THEN 'assigned'
                             ELSE 'recorded' END
                    WHEN p.purged THEN 'excess'
                    ELSE 'pending' END AS outcome,
               CASE WHEN p.in_ledger THEN p.known_essay_id
                    ELSE first_value(p.slot_essay_id) OVER (
                             PARTITION BY p.batch_id, p.kind, p.item_key ORDER BY p.ord) END AS result_essay_id
          FROM placed AS p
    ), decided AS MATERIALIZED (
        SELECT j.*,
               CASE WHEN j.duplicate THEN
                        j.purged OR (j.tracked AND (j.was_complete OR coalesce(j.completing_ord < j.ord, false)))
                    WHEN j.has_slots THEN j.was_complete OR coalesce(j.ord >= j.completing_ord, false)
                    ELSE j.purged END AS complete,
               -- a late item of a purged batch: its excess event may be in the outbox already
               (j.kind = 'provision_content' AND NOT j.duplicate AND NOT j.has_slots AND j.purged
                AND EXISTS (SELECT FROM els.event_outbox AS o
                             WHERE o.event_id = els._event_id('ExcessContentProvisioned',
                                                              jsonb_build_array(j.batch_id, j.item_key))))
                   AS announced
          FROM judged AS j
    ), digested AS MATERIALIZED (
        -- the digest of the item's own event, computed once (its own step: els._event_id
        -- inlined would compute it three times)
        SELECT d.*,
               CASE WHEN d.kind <> 'provision_content' OR d.outcome NOT IN ('assigned', 'excess')
                         OR d.announced THEN NULL
                    WHEN d.outcome = 'assigned' THEN
                        els._event_digest('EssaySlotAssigned',
                                          jsonb_build_array(d.batch_id, d.slot_essay_id, d.item_key))
                    ELSE els._event_digest('ExcessContentProvisioned',
                                           jsonb_build_array(d.batch_id, d.item_key))
               END AS own_digest
          FROM decided AS d
    ), evented AS MATERIALIZED (
        SELECT d.*, els._uuid_v3(d.own_digest) AS own_event_id
          FROM digested AS d
    )
    -- the plan's columns: no ORDER BY, each would sort on its own; the arrays of one
    -- aggregate node are aligned (the same rows in the same order), and every write
    -- statement orders by ord where the order matters
    SELECT array_agg(e.ord) FILTER (WHERE NOT e.duplicate),
           array_agg(e.kind) FILTER (WHERE NOT e.duplicate),
           array_agg(e.batch_id) FILTER (WHERE NOT e.duplicate),
           array_agg(e.item_key) FILTER (WHERE NOT e.duplicate),
           array_agg(e.file_upload_id) FILTER (WHERE NOT e.duplicate),
           array_agg(e.original_file_name) FILTER (WHERE NOT e.duplicate),
           array_agg(e.raw_file_storage_id) FILTER (WHERE NOT e.duplicate),
           array_agg(e.file_size_bytes) FILTER (WHERE NOT e.duplicate),
           array_agg(e.content_md5_hash) FILTER (WHERE NOT e.duplicate),
           array_agg(e.correlation_id) FILTER (WHERE NOT e.duplicate),
           array_agg(e.source_event_id) FILTER (WHERE NOT e.duplicate),
           array_agg(e.event_timestamp) FILTER (WHERE NOT e.duplicate),
           array_agg(e.validation_error_code) FILTER (WHERE NOT e.duplicate),
           array_agg(e.validation_error_detail) FILTER (WHERE NOT e.duplicate),
           array_agg(e.outcome) FILTER (WHERE NOT e.duplicate),
           array_agg(e.slot_essay_id) FILTER (WHERE NOT e.duplicate),
           array_agg(e.purged) FILTER (WHERE NOT e.duplicate),
           array_agg(e.announced) FILTER (WHERE NOT e.duplicate),
           array_agg(e.completing) FILTER (WHERE NOT e.duplicate),
           array_agg(e.own_event_id) FILTER (WHERE NOT e.duplicate),
           jsonb_agg(jsonb_build_object('ord', e.ord, 'done', jsonb_build_object('ok', true, 'result', jsonb_build_object(
               'batch_id', e.batch_id, 'outcome', e.outcome, 'essay_id', e.result_essay_id,
               'complete', e.complete,
               -- as the per-event functions always reported: content that is excess
               -- lists its own event only
               'events', to_jsonb(array_remove(ARRAY[
                   e.own_event_id,
                   CASE WHEN e.completing AND NOT (e.kind = 'provision_content' AND e.outcome = 'excess')
                        THEN els._event_id('BatchContentProvisioningCompleted', jsonb_build_array(e.batch_id))
                   END], NULL)))))),
           coalesce(bool_or(e.kind = 'provision_content' AND NOT e.duplicate), false),
           coalesce(bool_or(e.kind = 'record_validation_failure' AND NOT e.duplicate), false),
           coalesce(bool_or(e.outcome IN ('assigned', 'recorded')), false),
           coalesce(bool_or(NOT e.duplicate AND e.purged AND NOT e.has_slots), false),
           coalesce(bool_or(e.completing), false)
      INTO p_ord, p_kind, p_batch, p_key, p_upload, p_name, p_raw, p_size, p_md5, p_corr, p_source, p_stamp, p_code, p_detail, p_outcome, p_slot, p_purged, p_announced, p_completing, p_event,
           v_results, v_content, v_failures, v_fills, v_purged, v_completes
      FROM evented AS e;

    IF v_content THEN
        INSERT INTO els.essay_content (
            batch_id, text_storage_id, disposition, essay_id, file_upload_id, original_file_name,
            raw_file_storage_id, file_size_bytes, content_md5_hash, correlation_id,
            source_event_id, event_timestamp, disposed_at)
        SELECT p.batch_id, p.item_key, p.outcome::els.item_disposition, p.slot_essay_id,
               p.file_upload_id, p.original_file_name, p.raw_file_storage_id, p.file_size_bytes,
               p.content_md5_hash, p.correlation_id, p.source_event_id, p.event_timestamp,
               CASE WHEN p.outcome <> 'pending' THEN now() END
          FROM unnest(p_ord, p_kind, p_batch, p_key, p_outcome, p_slot, p_upload, p_name, p_raw,
                      p_size, p_md5, p_corr, p_source, p_stamp)
                AS p(ord, kind, batch_id, item_key, outcome, slot_essay_id, file_upload_id,
                     original_file_name, raw_file_storage_id, file_size_bytes, content_md5_hash,
                     correlation_id, source_event_id, event_timestamp)
         WHERE p.kind = 'provision_content'
         ORDER BY p.ord;
    END IF;
    IF v_failures THEN
        INSERT INTO els.validation_failure (
            batch_id, file_upload_id, disposition, essay_id, original_file_name,
            validation_error_code, validation_error_detail, raw_file_storage_id, file_size_bytes,
            correlation_id, source_event_id, event_timestamp, disposed_at)
        SELECT p.batch_id, p.item_key,
               (CASE p.outcome WHEN 'recorded' THEN 'assigned' ELSE p.outcome END)::els.item_disposition,
               p.slot_essay_id, p.original_file_name, p.validation_error_code,
               p.validation_error_detail, p.raw_file_storage_id, p.file_size_bytes,
               p.correlation_id, p.source_event_id, p.event_timestamp,
               CASE WHEN p.outcome <> 'pending' THEN now() END
          FROM unnest(p_ord, p_kind, p_batch, p_key, p_outcome, p_slot, p_name, p_code, p_detail,
                      p_raw, p_size, p_corr, p_source, p_stamp)
                AS p(ord, kind, batch_id, item_key, outcome, slot_essay_id, original_file_name,
                     validation_error_code, validation_error_detail, raw_file_storage_id,
                     file_size_bytes, correlation_id, source_event_id, event_timestamp)
         WHERE p.kind = 'record_validation_failure'
         ORDER BY p.ord;
    END IF;
    IF v_fills THEN
        UPDATE els.essay_slot AS s
           SET status = CASE WHEN p.kind = 'provision_content' THEN 'ready_for_processing'
                             ELSE 'content_ingestion_failed' END::els.essay_status,
               text_storage_id = CASE WHEN p.kind = 'provision_content' THEN p.item_key END,
               failed_file_upload_id = CASE WHEN p.kind = 'record_validation_failure' THEN p.item_key END,
               filled_at = now()
          FROM unnest(p_kind, p_key, p_outcome, p_slot) AS p(kind, item_key, outcome, slot_essay_id)
         WHERE p.outcome IN ('assigned', 'recorded') AND s.essay_id = p.slot_essay_id;
    END IF;
    IF v_purged THEN
        -- the next purge deletes these late rows again (SPEC 10)
        UPDATE els.batch_tombstone AS b SET last_late_item_at = now()
         WHERE b.batch_id IN (SELECT p.batch_id FROM unnest(p_batch, p_purged) AS p(batch_id, purged)
                               WHERE p.purged);
    END IF;
    IF v_completes THEN
        UPDATE els.batch_tracker AS t SET completed_at = now(), completion_reason = 'all_slots_closed'
         WHERE t.batch_id IN (SELECT p.batch_id FROM unnest(p_batch, p_completing) AS p(batch_id, completing)
                               WHERE p.completing);
    END IF;
    IF v_content OR v_completes THEN
        -- The round's outbox rows, as els._emit_events writes them (the same envelope,
        -- id and topic functions) but in one statement with the plan's columns: built
        -- as a JSON list for _emit_events, they cost twice as much. In arrival order,
        -- each completion right after the event of the item that completed it; a
        -- completion's data is read after the slot updates above.
        INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
        SELECT x.event_id, x.spec ->> 'event_type', els.output_topic(x.spec ->> 'event_type'),
               x.spec ->> 'key',
               els._envelope(x.event_id, x.spec ->> 'event_type', x.spec ->> 'correlation_id',
                             x.spec -> 'data', els._event_timestamp())
          FROM (SELECT p.ord, 0 AS sub, p.own_event_id AS event_id,
                       CASE WHEN p.outcome = 'assigned' THEN
                                els._slot_assigned_spec(p.batch_id, p.slot_essay_id, p.file_upload_id,
                                                        p.item_key, p.original_file_name, p.correlation_id)
                            ELSE els._excess_spec(p.batch_id, p.original_file_name, p.item_key,
                                                  p.correlation_id) END AS spec
                  FROM unnest(p_ord, p_kind, p_batch, p_key, p_outcome, p_slot, p_upload, p_name,
                              p_corr, p_announced, p_event)
                        AS p(ord, kind, batch_id, item_key, outcome, slot_essay_id, file_upload_id,
                             original_file_name, correlation_id, announced, own_event_id)
                 WHERE p.kind = 'provision_content' AND p.outcome IN ('assigned', 'excess')
                   AND NOT p.announced
                UNION ALL
                SELECT p.ord, 1,
                       els._event_id('BatchContentProvisioningCompleted', jsonb_build_array(p.batch_id)),
                       els._completion_spec(p.batch_id, 'all_slots_closed')
                  FROM unnest(p_ord, p_batch, p_completing) AS p(ord, batch_id, completing)
                 WHERE p.completing) AS x
         ORDER BY x.ord, x.sub;
    END IF;
    RETURN v_results;
END
$fn$;

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
    v_n integer := coalesce(cardinality(p_kinds), 0);
    v_done jsonb;       -- [{"ord", "done"}]: the events' results, rejections first
    v_rows jsonb;       -- the checked events, each with its ord, kind and round
    v_count integer;
    v_sequential boolean := false;
    v_items jsonb[];    -- per round, its content and failures ...
    v_regs jsonb[];     -- ... and its registrations
    v_row jsonb;
    v_key bigint;
BEGIN
    PERFORM els._check_kinds(p_kinds, p_events, p_refused);
    -- 1. every event read and checked (els._read_events: one statement per kind, no table
    --    touched); its round: 2 x (registrations of its batch before it), + 1 for a
    --    registration
    WITH r AS MATERIALIZED (
        SELECT r.ord, r.kind, r.fault, r.event_row, r.event_row ->> 'batch_id' AS batch_id
          FROM els._read_events(p_kinds, p_events, (SELECT array_agg(f.result IS NOT NULL)
                                                      FROM unnest(p_refused) AS f(result))) AS r
    ), rounds AS (
        SELECT r.*, 2 * count(*) FILTER (WHERE r.kind = 'register_batch') OVER (
                   PARTITION BY r.batch_id ORDER BY r.ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                   + CASE WHEN r.kind = 'register_batch' THEN 1 ELSE 0 END AS round
          FROM r WHERE r.fault IS NULL
    )
    SELECT (SELECT coalesce(jsonb_agg(jsonb_build_object('ord', r.ord, 'done', els._rejection(
                       r.fault ->> 'sqlstate', r.fault ->> 'message', (r.fault -> 'detail')::text,
                       'els._read_events: event ' || r.ord || ' of the micro-batch')) ORDER BY r.ord), '[]')
              FROM r WHERE r.fault IS NOT NULL),
           jsonb_agg(x.event_row || jsonb_build_object('ord', x.ord, 'kind', x.kind, 'round', x.round)
                     ORDER BY x.ord),
           count(*)
      INTO v_done, v_rows, v_count
      FROM rounds AS x;
    -- one event (every per-event call): its lock and its one round, directly
    IF v_count = 1 THEN
        v_row := v_rows -> 0;
        PERFORM els._lock_batch(v_row ->> 'batch_id');
        v_done := v_done || CASE WHEN v_row ->> 'kind' = 'register_batch' THEN els._register_round(v_rows)
                                 ELSE els._apply_items(v_rows) END;
    ELSIF v_count > 1 THEN
        v_sequential := els._registrations_share_essays(v_rows);
        -- 2. the locks of every batch, in ascending key order
        FOR v_key IN SELECT DISTINCT els._batch_lock_key(r.j ->> 'batch_id')
                       FROM jsonb_array_elements(v_rows) AS r(j) ORDER BY 1 LOOP
            PERFORM pg_advisory_xact_lock(v_key);
        END LOOP;
        -- 3. the rounds, in order: a round's content and failures, then its registrations
        SELECT array_agg(g.items ORDER BY g.round), array_agg(g.regs ORDER BY g.round)
          INTO v_items, v_regs
          FROM (SELECT x.round,
                       jsonb_agg(x.j ORDER BY x.ord) FILTER (WHERE x.kind <> 'register_batch') AS items,
                       jsonb_agg(x.j ORDER BY x.ord) FILTER (WHERE x.kind = 'register_batch') AS regs
                  FROM (SELECT e.j, (e.j ->> 'ord')::integer AS ord, e.j ->> 'kind' AS kind,
                               CASE WHEN v_sequential THEN (e.j ->> 'ord')::integer
                                    ELSE (e.j ->> 'round')::integer END AS round
                          FROM jsonb_array_elements(v_rows) AS e(j)) AS x
                 GROUP BY x.round) AS g;
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

-- Refuses (22023, a caller's bug) kinds and events of different lengths and a kind
-- that is not one of the three, unless that event was refused already.
CREATE OR REPLACE FUNCTION els._check_kinds(p_kinds text[], p_events jsonb[], p_refused jsonb[])
RETURNS void
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
END
$fn$;

-- Whether two registrations of different batches among p_rows share an essay id: then
-- the order between batches matters (ELC02 for the later one), and _apply_events gives
-- every event its own round.
CREATE OR REPLACE FUNCTION els._registrations_share_essays(p_rows jsonb)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    -- each registration's batch id and essay ids read once (OFFSET 0: not per essay)
    RETURN EXISTS (
        SELECT FROM (SELECT r.j ->> 'batch_id' AS batch_id, r.j -> 'essay_ids' AS essay_ids
                       FROM jsonb_array_elements(p_rows) AS r(j)
                      WHERE r.j ->> 'kind' = 'register_batch' OFFSET 0) AS g
         CROSS JOIN LATERAL jsonb_array_elements_text(g.essay_ids) AS e(id)
         GROUP BY e.id HAVING count(DISTINCT g.batch_id) > 1);
END
$fn$;

-- One event through the core, for the per-event functions of SPEC 3: its result,
-- or its rejection raised with the same SQLSTATE, message and detail.
CREATE OR REPLACE FUNCTION els._apply_one(p_kind text, p_event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_result jsonb := (els._apply_events(ARRAY[p_kind], ARRAY[p_event]))[1];
BEGIN
    IF NOT (v_result ->> 'ok')::boolean THEN
        PERFORM els._reject(v_result ->> 'sqlstate', v_result ->> 'message', v_result -> 'detail');
    END IF;
    RETURN v_result -> 'result';
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
-- JSON). The worker's usual form: one jsonb parameter costs the client ~2 µs per
-- event where a text[] of 500 values costs ~65 µs per element to send; when
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

REVOKE ALL ON FUNCTION els._rejection(text, text, text, text), els._apply_items(jsonb),
    els._apply_events(text[], jsonb[], jsonb[]), els._check_kinds(text[], jsonb[], jsonb[]),
    els._registrations_share_essays(jsonb), els._apply_one(text, jsonb),
    els.apply_events(text[], text[]), els.apply_events(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.apply_events(text[], text[]), els.apply_events(jsonb) TO els_worker;
