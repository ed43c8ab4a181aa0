-- One round of content and failures applied: its plan (034_item_plan.sql), then its
-- writes, one statement each and only when the round has rows for it: content rows,
-- failure rows, slot updates, tombstone and tracker stamps, outbox rows. Each write
-- unnests the plan (els.item_step[]) and reads the columns it writes; duplicates change
-- nothing.

-- The new content and failure rows, each in its disposition (pending, assigned, excess);
-- returns how many. (The writers return a count so that _apply_items calls them as
-- expressions: a PERFORM is a statement of its own, which a per-event call pays for.)
CREATE OR REPLACE FUNCTION els._write_item_rows(p_steps els.item_step[], p_content boolean, p_failures boolean)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_content integer := 0;
    v_failures integer := 0;
BEGIN
    IF p_content THEN
        INSERT INTO els.essay_content (
            batch_id, text_storage_id, disposition, essay_id, file_upload_id, original_file_name,
            raw_file_storage_id, file_size_bytes, content_md5_hash, correlation_id,
            source_event_id, event_timestamp, disposed_at)
        SELECT p.batch_id, p.item_key, p.outcome::els.item_disposition, p.slot_essay_id,
               p.file_upload_id, p.original_file_name, p.raw_file_storage_id, p.file_size_bytes,
               p.content_md5_hash, p.correlation_id, p.source_event_id, p.event_timestamp,
               CASE WHEN p.outcome <> 'pending' THEN now() END
          FROM unnest(p_steps) AS p
         WHERE p.kind = 'provision_content' AND NOT p.duplicate
         ORDER BY p.ord;
        GET DIAGNOSTICS v_content = ROW_COUNT;
    END IF;
    IF p_failures THEN
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
          FROM unnest(p_steps) AS p
         WHERE p.kind = 'record_validation_failure' AND NOT p.duplicate
         ORDER BY p.ord;
        GET DIAGNOSTICS v_failures = ROW_COUNT;
    END IF;
    RETURN v_content + v_failures;
END
$fn$;

-- The slots the round filled or closed; the late mark of purged batches that got items
-- (the next purge deletes these rows again, SPEC 10); the completion stamp of the
-- batches the round completed. Returns the number of slots filled or closed.
CREATE OR REPLACE FUNCTION els._write_item_effects(p_steps els.item_step[], p_fills boolean,
                                                   p_purged boolean, p_completes boolean)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_slots integer := 0;
BEGIN
    IF p_fills THEN
        UPDATE els.essay_slot AS s
           SET status = CASE WHEN p.kind = 'provision_content' THEN 'ready_for_processing'
                             ELSE 'content_ingestion_failed' END::els.essay_status,
               text_storage_id = CASE WHEN p.kind = 'provision_content' THEN p.item_key END,
               failed_file_upload_id = CASE WHEN p.kind = 'record_validation_failure' THEN p.item_key END,
               filled_at = now()
          FROM unnest(p_steps) AS p
         WHERE p.outcome IN ('assigned', 'recorded') AND s.essay_id = p.slot_essay_id;
        GET DIAGNOSTICS v_slots = ROW_COUNT;
    END IF;
    IF p_purged THEN
        UPDATE els.batch_tombstone AS b SET last_late_item_at = now()
         WHERE b.batch_id IN (SELECT p.batch_id FROM unnest(p_steps) AS p
                               WHERE p.purged AND NOT p.duplicate AND NOT p.has_slots);
    END IF;
    IF p_completes THEN
        UPDATE els.batch_tracker AS t SET completed_at = now(), completion_reason = 'all_slots_closed'
         WHERE t.batch_id IN (SELECT p.batch_id FROM unnest(p_steps) AS p WHERE p.completing);
    END IF;
    RETURN v_slots;
END
$fn$;

-- The round's outbox rows, as els._emit_events writes them (the same envelope, id and
-- topic functions) but in one statement from the plan: in arrival order, each
-- completion right after the event of the item that completed it; a completion's data
-- is read after the slot updates. Returns the number of rows.
CREATE OR REPLACE FUNCTION els._write_item_events(p_steps els.item_step[])
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_rows integer;
BEGIN
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
              FROM unnest(p_steps) AS p
             WHERE p.own_event_id IS NOT NULL
            UNION ALL
            SELECT p.ord, 1, els._event_id('BatchContentProvisioningCompleted', jsonb_build_array(p.batch_id)),
                   els._completion_spec(p.batch_id, 'all_slots_closed')
              FROM unnest(p_steps) AS p
             WHERE p.completing) AS x
     ORDER BY x.ord, x.sub;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$fn$;

-- Each item's result as its per-event function returns it: [{"ord", "done": {"ok":
-- true, "result"}}]; content that is excess lists its own event only, as the
-- per-event functions always reported.
CREATE OR REPLACE FUNCTION els._item_results(p_steps els.item_step[])
RETURNS jsonb
-- PL/pgSQL: its plan is kept for the session (a SQL function's is made again in every
-- transaction, which a per-event call pays each time)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    RETURN (
        SELECT jsonb_agg(jsonb_build_object('ord', p.ord, 'done', jsonb_build_object('ok', true, 'result',
                   jsonb_build_object(
                       'batch_id', p.batch_id, 'outcome', p.outcome, 'essay_id', p.result_essay_id,
                       'complete', p.complete,
                       'events', to_jsonb(array_remove(ARRAY[
                           p.own_event_id,
                           CASE WHEN p.completing AND NOT (p.kind = 'provision_content' AND p.outcome = 'excess')
                                THEN els._event_id('BatchContentProvisioningCompleted', jsonb_build_array(p.batch_id))
                           END], NULL))))))
          FROM unnest(p_steps) AS p);
END
$fn$;

-- One round of content and failures (see 034_item_plan.sql): planned, written, and
-- each item's result, [{"ord", "done"}].
CREATE OR REPLACE FUNCTION els._apply_items(p_items jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_steps els.item_step[] := els._place_items(els._judge_items(p_items));
    v_content boolean;
    v_failures boolean;
    v_purged boolean;
    v_completes boolean;
    v_new integer;      -- rows the plan adds to the ledgers ...
    v_fills integer;    -- ... slots it fills or closes ...
    v_events integer;   -- ... and outbox rows it writes
BEGIN
    SELECT coalesce(bool_or(p.kind = 'provision_content' AND NOT p.duplicate), false),
           coalesce(bool_or(p.kind = 'record_validation_failure' AND NOT p.duplicate), false),
           coalesce(bool_or(NOT p.duplicate AND p.purged AND NOT p.has_slots), false),
           coalesce(bool_or(p.completing), false),
           count(*) FILTER (WHERE NOT p.duplicate),
           count(*) FILTER (WHERE p.outcome IN ('assigned', 'recorded')),
           count(p.own_event_id) + count(*) FILTER (WHERE p.completing)
      INTO v_content, v_failures, v_purged, v_completes, v_new, v_fills, v_events
      FROM unnest(v_steps) AS p;
    -- The writes in this order (a slot names its content row, a completion reads the
    -- slots), as expressions (a PERFORM is a statement of its own, which a per-event call
    -- pays for), each checked against the plan: under the batches' locks nothing else
    -- changes these rows, so a difference is a bug, and the round fails whole.
    v_new := v_new - els._write_item_rows(v_steps, v_content, v_failures);
    v_fills := v_fills - els._write_item_effects(v_steps, v_fills > 0, v_purged, v_completes);
    v_events := v_events - CASE WHEN v_events > 0 THEN els._write_item_events(v_steps) ELSE 0 END;
    IF v_new <> 0 OR v_fills <> 0 OR v_events <> 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = 'a round of content and failures wrote other rows than its plan',
            DETAIL = format('rows %s, slots %s, events %s more than written', v_new, v_fills, v_events);
    END IF;
    RETURN els._item_results(v_steps);
END
$fn$;

REVOKE ALL ON FUNCTION els._write_item_rows(els.item_step[], boolean, boolean),
    els._write_item_effects(els.item_step[], boolean, boolean, boolean),
    els._write_item_events(els.item_step[]), els._item_results(els.item_step[]),
    els._apply_items(jsonb) FROM PUBLIC;
