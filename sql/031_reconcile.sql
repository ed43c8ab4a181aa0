-- Reconciliation and completion of registered batches, set-based over any number of
-- them (a round of registrations of els._apply_events settles all its batches at once;
-- re-drive and deadlines settle one). The caller holds the batches' locks.
--
-- Reconciliation fills a batch's empty slots with its pending items, oldest first
-- (arrival order, then id): pending content first, then pending failures; what finds no
-- empty slot is excess. Completion stamps a batch complete when it is registered, has
-- all its expected slots, none of them empty, and was not complete yet; the stamp and
-- the outbox's unique index on completions make a second completion impossible.

-- Pending content of p_batch_ids into their empty slots, in one statement for all of
-- them (run only for the batches that have some). Returns {batch_id: {assigned,
-- excess, specs}}, specs the events to emit (EssaySlotAssigned per filled slot,
-- ExcessContentProvisioned per excess content) in the batch's order.
CREATE OR REPLACE FUNCTION els._reconcile_content(p_batch_ids text[])
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_pending text[];
    v_result jsonb;
BEGIN
    -- a probe of the pending index per batch: most registrations find nothing
    SELECT array_agg(b.batch_id) INTO v_pending
      FROM unnest(p_batch_ids) AS b(batch_id)
     WHERE EXISTS (SELECT FROM els.essay_content AS c
                    WHERE c.batch_id = b.batch_id AND c.disposition = 'pending');
    IF v_pending IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    WITH placed AS MATERIALIZED (
        -- per batch (LATERAL), its k-th pending content and its k-th empty slot: paired
        -- across the round's batches at once, a join of every pending row with every
        -- empty slot
        SELECT b.batch_id, a.text_storage_id, a.essay_id
          FROM unnest(v_pending) AS b(batch_id)
         CROSS JOIN LATERAL (
                SELECT p.text_storage_id, e.essay_id
                  FROM (SELECT x.text_storage_id,
                               row_number() OVER (ORDER BY x.arrival_seq, x.text_storage_id) AS rn
                          FROM els.essay_content AS x
                         WHERE x.batch_id = b.batch_id AND x.disposition = 'pending') AS p
                  LEFT JOIN (SELECT x.essay_id, row_number() OVER (ORDER BY x.slot_no) AS rn
                               FROM els.essay_slot AS x
                              WHERE x.batch_id = b.batch_id AND x.status = 'uploaded') AS e ON e.rn = p.rn) AS a
    ), disposed AS (
        UPDATE els.essay_content AS c
           SET disposition = CASE WHEN e.essay_id IS NULL THEN 'excess' ELSE 'assigned' END::els.item_disposition,
               essay_id = e.essay_id, disposed_at = now()
          FROM placed AS e
         WHERE c.batch_id = e.batch_id AND c.text_storage_id = e.text_storage_id
        RETURNING c.*
    ), filled AS (
        UPDATE els.essay_slot AS s
           SET status = 'ready_for_processing', text_storage_id = d.text_storage_id, filled_at = now()
          FROM disposed AS d
         WHERE d.essay_id IS NOT NULL AND s.essay_id = d.essay_id
    )
    SELECT jsonb_object_agg(x.batch_id, jsonb_build_object('assigned', x.assigned, 'excess', x.excess,
                                                           'specs', x.specs))
      INTO v_result
      FROM (SELECT d.batch_id, count(d.essay_id) AS assigned, count(*) - count(d.essay_id) AS excess,
                   jsonb_agg(CASE WHEN d.essay_id IS NOT NULL THEN
                                 els._slot_assigned_spec(d.batch_id, d.essay_id, d.file_upload_id,
                                                         d.text_storage_id, d.original_file_name,
                                                         d.correlation_id)
                             ELSE els._excess_spec(d.batch_id, d.original_file_name, d.text_storage_id,
                                                   d.correlation_id)
                             END ORDER BY d.arrival_seq, d.text_storage_id) AS specs
              FROM disposed AS d GROUP BY d.batch_id) AS x;
    RETURN coalesce(v_result, '{}'::jsonb);
END
$fn$;

-- Pending failures of p_batch_ids into their empty slots (after the content: they see
-- the slots it filled). Returns {batch_id: {applied, excess}}; a failure emits nothing.
CREATE OR REPLACE FUNCTION els._reconcile_failures(p_batch_ids text[])
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_pending text[];
    v_result jsonb;
BEGIN
    SELECT array_agg(b.batch_id) INTO v_pending
      FROM unnest(p_batch_ids) AS b(batch_id)
     WHERE EXISTS (SELECT FROM els.validation_failure AS f
                    WHERE f.batch_id = b.batch_id AND f.disposition = 'pending');
    IF v_pending IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    WITH placed AS MATERIALIZED (
        -- per batch, as for content
        SELECT b.batch_id, a.file_upload_id, a.essay_id
          FROM unnest(v_pending) AS b(batch_id)
         CROSS JOIN LATERAL (
                SELECT p.file_upload_id, e.essay_id
                  FROM (SELECT x.file_upload_id,
                               row_number() OVER (ORDER BY x.arrival_seq, x.file_upload_id) AS rn
                          FROM els.validation_failure AS x
                         WHERE x.batch_id = b.batch_id AND x.disposition = 'pending') AS p
                  LEFT JOIN (SELECT x.essay_id, row_number() OVER (ORDER BY x.slot_no) AS rn
                               FROM els.essay_slot AS x
                              WHERE x.batch_id = b.batch_id AND x.status = 'uploaded') AS e ON e.rn = p.rn) AS a
    ), disposed AS (
        UPDATE els.validation_failure AS f
           SET disposition = CASE WHEN e.essay_id IS NULL THEN 'excess' ELSE 'assigned' END::els.item_disposition,
               essay_id = e.essay_id, disposed_at = now()
          FROM placed AS e
         WHERE f.batch_id = e.batch_id AND f.file_upload_id = e.file_upload_id
        RETURNING f.batch_id, f.essay_id, f.file_upload_id
    ), closed AS (
        UPDATE els.essay_slot AS s
           SET status = 'content_ingestion_failed', failed_file_upload_id = d.file_upload_id, filled_at = now()
          FROM disposed AS d
         WHERE d.essay_id IS NOT NULL AND s.essay_id = d.essay_id
    )
    SELECT jsonb_object_agg(x.batch_id, jsonb_build_object('applied', x.applied, 'excess', x.excess))
      INTO v_result
      FROM (SELECT d.batch_id, count(d.essay_id) AS applied, count(*) - count(d.essay_id) AS excess
              FROM disposed AS d GROUP BY d.batch_id) AS x;
    RETURN coalesce(v_result, '{}'::jsonb);
END
$fn$;

-- Completes those of p_batch_ids that are done (see the top of this file), with
-- completion_reason p_reason. Returns {batch_id: completed by this call} for every one
-- of them that is complete afterwards (false: it was complete already).
CREATE OR REPLACE FUNCTION els._complete_batches(p_batch_ids text[], p_reason text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_result jsonb;
BEGIN
    WITH state AS MATERIALIZED (
        -- one probe of the empty-slot index per batch answers most of them; only the
        -- columns needed from the tracker (a whole row would detoast essay_ids)
        SELECT b.batch_id, t.completed_at IS NOT NULL AS was_complete,
               t.batch_id IS NOT NULL AND t.completed_at IS NULL
               AND NOT EXISTS (SELECT FROM els.essay_slot AS s
                                WHERE s.batch_id = b.batch_id AND s.status = 'uploaded')
               AND (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = b.batch_id)
                   = t.expected_count AS closing
          FROM unnest(p_batch_ids) AS b(batch_id)
          LEFT JOIN LATERAL (SELECT x.batch_id, x.completed_at, x.expected_count FROM els.batch_tracker AS x
                              WHERE x.batch_id = b.batch_id OFFSET 0) AS t ON true
    ), stamped AS (
        UPDATE els.batch_tracker AS t SET completed_at = now(), completion_reason = p_reason
          FROM state AS s
         WHERE s.closing AND t.batch_id = s.batch_id
    )
    SELECT jsonb_object_agg(s.batch_id, s.closing) INTO v_result
      FROM state AS s WHERE s.was_complete OR s.closing;
    RETURN coalesce(v_result, '{}'::jsonb);
END
$fn$;

-- Reconciles and completes p_batch_ids (in the order given) and writes their events:
-- per batch, its reconciled content's events, then its completion. Returns {batch_id:
-- {content_assigned, failures_applied, excess, complete, events}} for each of them.
CREATE OR REPLACE FUNCTION els._settle_batches(p_batch_ids text[])
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_content jsonb := els._reconcile_content(p_batch_ids);
    v_failures jsonb := els._reconcile_failures(p_batch_ids);
    v_complete jsonb := els._complete_batches(p_batch_ids, 'all_slots_closed');
    v_events jsonb;
BEGIN
    SELECT jsonb_agg(e.spec || jsonb_build_object('event_id', els._event_id(e.spec ->> 'event_type',
                                                                            e.spec -> 'identity'))
                     ORDER BY e.batch_ord, e.sub, e.n)
      INTO v_events
      FROM (SELECT b.ord AS batch_ord, 0 AS sub, x.n, x.spec
              FROM unnest(p_batch_ids) WITH ORDINALITY AS b(batch_id, ord)
             CROSS JOIN LATERAL jsonb_array_elements(v_content -> b.batch_id -> 'specs')
                   WITH ORDINALITY AS x(spec, n)
            UNION ALL
            SELECT b.ord, 1, 1, els._completion_spec(b.batch_id, 'all_slots_closed')
              FROM unnest(p_batch_ids) WITH ORDINALITY AS b(batch_id, ord)
             WHERE (v_complete ->> b.batch_id)::boolean) AS e;
    IF v_events IS NOT NULL THEN
        PERFORM els._emit_events(v_events);
    END IF;
    RETURN (
        SELECT jsonb_object_agg(b.batch_id, jsonb_build_object(
                   'content_assigned', coalesce((v_content -> b.batch_id ->> 'assigned')::integer, 0),
                   'failures_applied', coalesce((v_failures -> b.batch_id ->> 'applied')::integer, 0),
                   'excess', coalesce((v_content -> b.batch_id ->> 'excess')::integer, 0)
                             + coalesce((v_failures -> b.batch_id ->> 'excess')::integer, 0),
                   'complete', v_complete ? b.batch_id,
                   'events', coalesce((SELECT jsonb_agg(e.ev -> 'event_id')
                                         FROM jsonb_array_elements(v_events) AS e(ev)
                                        WHERE e.ev ->> 'key' = b.batch_id), '[]'::jsonb)))
          FROM unnest(p_batch_ids) AS b(batch_id));
END
$fn$;

-- Reconciliation of one batch, its events written (re-drive, deadlines).
CREATE OR REPLACE FUNCTION els._reconcile(
    p_batch_id text,
    OUT content_assigned integer, OUT failures_applied integer, OUT excess integer,
    OUT event_ids uuid[])
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_content jsonb := els._reconcile_content(ARRAY[p_batch_id]) -> p_batch_id;
    v_failures jsonb := els._reconcile_failures(ARRAY[p_batch_id]) -> p_batch_id;
BEGIN
    content_assigned := coalesce((v_content ->> 'assigned')::integer, 0);
    failures_applied := coalesce((v_failures ->> 'applied')::integer, 0);
    excess := coalesce((v_content ->> 'excess')::integer, 0) + coalesce((v_failures ->> 'excess')::integer, 0);
    event_ids := CASE WHEN v_content IS NULL THEN '{}'::uuid[] ELSE els._emit_events(v_content -> 'specs') END;
END
$fn$;

-- Completion of one batch (p_reason: all_slots_closed, or deadline when
-- els.close_batch / els.close_overdue_batches timed its empty slots out): whether it
-- is complete after the call, and the event id when this call completed it.
CREATE OR REPLACE FUNCTION els._complete_if_done(
    p_batch_id text, p_reason text DEFAULT 'all_slots_closed', OUT complete boolean, OUT event_id uuid)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_completed boolean := (els._complete_batches(ARRAY[p_batch_id], p_reason) ->> p_batch_id)::boolean;
BEGIN
    complete := v_completed IS NOT NULL;
    IF v_completed THEN
        event_id := (els._emit_events(jsonb_build_array(els._completion_spec(p_batch_id, p_reason))))[1];
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION els._reconcile_content(text[]), els._reconcile_failures(text[]),
    els._complete_batches(text[], text), els._settle_batches(text[]), els._reconcile(text),
    els._complete_if_done(text, text) FROM PUBLIC;
