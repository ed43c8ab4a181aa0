-- The plan of one round of content and failures (any batches; a batch's items in
-- arrival order, none of its registrations in between), as a sequence of calls would
-- apply them, computed from the state before the round:
--   * an item whose key (text_storage_id, file_upload_id) its batch's ledger already
--     holds, or that an earlier item of the round carries, is a duplicate: nothing
--     changes; essay_id names the slot the first one took;
--   * the other items of a batch that has slots take its empty slots in order: the
--     k-th new item the k-th empty slot by slot number; those beyond are excess; the
--     item that takes the last empty slot completes the batch (when all its expected
--     slots exist), and items after it see the batch complete;
--   * a batch without slots keeps them pending (or excess when it was purged).
-- Two steps, each one statement over the round: _judge_items (the ledgers and the
-- batches) and _place_items (the slots and what follows from them). The plan is an
-- array of els.item_step (migration 0007), which the writes (036_item_writes.sql)
-- unnest. Each step of a statement is a MATERIALIZED CTE: planned on its own (inlined,
-- the steps made one join problem whose planning cost more than running it), and
-- each runs once. Generic plans, made once per session.

-- The items of p_items (els._content_row / els._failure_row objects with ord and kind)
-- with their ledger (duplicate, in_ledger, known_essay_id), their place among their
-- batch's new items (take_no) and their batch's state (new_items, tracked,
-- was_complete, expected_count, has_slots, purged).
CREATE OR REPLACE FUNCTION els._judge_items(p_items jsonb)
RETURNS els.item_step[]
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_steps els.item_step[];
BEGIN
    WITH item AS MATERIALIZED (
        SELECT x.* FROM jsonb_to_recordset(p_items) AS x(
            ord integer, kind text, batch_id text, item_key text, file_upload_id text,
            original_file_name text, raw_file_storage_id text, file_size_bytes bigint,
            content_md5_hash text, correlation_id text, source_event_id text, event_timestamp text,
            validation_error_code text, validation_error_detail jsonb)
    ), seen AS MATERIALIZED (
        -- LATERAL: one primary-key probe per item, whatever the planner guesses of the
        -- input's size (a hash join would read the whole ledger)
        SELECT i.*, k.item_key IS NOT NULL AS in_ledger, k.essay_id AS known_essay_id,
               k.item_key IS NOT NULL
               OR row_number() OVER (PARTITION BY i.batch_id, i.kind, i.item_key ORDER BY i.ord) > 1 AS duplicate
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
        SELECT s.*, CASE WHEN NOT s.duplicate THEN
                        row_number() OVER (PARTITION BY s.batch_id, s.duplicate ORDER BY s.ord) END AS take_no
          FROM seen AS s
    ), batch AS MATERIALIZED (
        SELECT b.batch_id, b.new_items, t.batch_id IS NOT NULL AS tracked,
               coalesce(t.completed_at IS NOT NULL, false) AS was_complete, t.expected_count,
               sl.batch_id IS NOT NULL AS has_slots, bt.batch_id IS NOT NULL AS purged
          FROM (SELECT s.batch_id, count(*) FILTER (WHERE NOT s.duplicate) AS new_items
                  FROM fresh AS s GROUP BY s.batch_id) AS b
          -- LIMIT 1 (primary keys): per-batch probes, never flattened into a join that
          -- could read the table; the slot probe as EXISTS hashed every slot of the table
          LEFT JOIN LATERAL (SELECT t.batch_id, t.completed_at, t.expected_count
                               FROM els.batch_tracker AS t WHERE t.batch_id = b.batch_id LIMIT 1) AS t ON true
          LEFT JOIN LATERAL (SELECT x.batch_id FROM els.batch_tombstone AS x
                              WHERE x.batch_id = b.batch_id LIMIT 1) AS bt ON true
          LEFT JOIN LATERAL (SELECT s.batch_id FROM els.essay_slot AS s
                              WHERE s.batch_id = b.batch_id LIMIT 1) AS sl ON true
    )
    SELECT array_agg(ROW(
               s.ord, s.kind, s.batch_id, s.item_key, s.file_upload_id, s.original_file_name,
               s.raw_file_storage_id, s.file_size_bytes, s.content_md5_hash, s.correlation_id,
               s.source_event_id, s.event_timestamp, s.validation_error_code, s.validation_error_detail,
               s.duplicate, s.in_ledger, s.known_essay_id, s.take_no, b.new_items, b.tracked, b.was_complete, b.expected_count, b.has_slots, b.purged,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL)::els.item_step)
      INTO v_steps
      FROM fresh AS s JOIN batch AS b ON b.batch_id = s.batch_id;
    RETURN v_steps;
END
$fn$;

-- The judged items placed: the k-th new item of a batch with slots takes its k-th
-- empty slot (outcome assigned or recorded) or none (excess); the one that leaves no
-- empty slot completes it; a batch without slots keeps them pending (excess when
-- purged). Also each item's result_essay_id and complete (as its result reports them),
-- announced (a late content of a purged batch whose excess event is in the outbox
-- already) and own_event_id (its EssaySlotAssigned or ExcessContentProvisioned).
CREATE OR REPLACE FUNCTION els._place_items(p_steps els.item_step[])
RETURNS els.item_step[]
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_steps els.item_step[];
BEGIN
    WITH step AS MATERIALIZED (
        SELECT * FROM unnest(p_steps)
    ), batch AS MATERIALIZED (
        SELECT DISTINCT s.batch_id, s.new_items, s.was_complete, s.expected_count
          FROM step AS s WHERE s.has_slots AND s.new_items > 0
    ), empty_slot AS MATERIALIZED (
        -- the first empty slots of each batch, one more than it has new items (to tell
        -- whether the round closes them all)
        SELECT b.batch_id, e.essay_id, row_number() OVER (PARTITION BY b.batch_id ORDER BY e.slot_no) AS take_no
          FROM batch AS b
         CROSS JOIN LATERAL (SELECT s.essay_id, s.slot_no FROM els.essay_slot AS s
                              WHERE s.batch_id = b.batch_id AND s.status = 'uploaded'
                              ORDER BY s.slot_no LIMIT b.new_items + 1) AS e
    ), closing AS MATERIALIZED (
        -- the new item that leaves its batch without an empty slot completes it (the
        -- first one when none was left)
        SELECT b.batch_id, greatest(count(e.essay_id), 1) AS completing_take
          FROM batch AS b LEFT JOIN empty_slot AS e ON e.batch_id = b.batch_id
         WHERE NOT b.was_complete
         GROUP BY b.batch_id, b.new_items, b.expected_count
        HAVING count(e.essay_id) <= b.new_items
           AND (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = b.batch_id) = b.expected_count
    ), placed AS MATERIALIZED (
        SELECT s.*, e.essay_id AS slot, coalesce(s.take_no = cl.completing_take, false) AS closes,
               CASE WHEN s.duplicate THEN 'duplicate'
                    WHEN s.has_slots THEN CASE WHEN e.essay_id IS NULL THEN 'excess'
                                               WHEN s.kind = 'provision_content' THEN 'assigned'
                                               ELSE 'recorded' END
                    WHEN s.purged THEN 'excess'
                    ELSE 'pending' END AS placed_outcome
          FROM step AS s
          LEFT JOIN empty_slot AS e ON e.batch_id = s.batch_id AND e.take_no = s.take_no
          LEFT JOIN closing AS cl ON cl.batch_id = s.batch_id
    ), judged AS MATERIALIZED (
        SELECT p.*,
               max(p.ord) FILTER (WHERE p.closes) OVER (PARTITION BY p.batch_id) AS completing_ord,
               CASE WHEN p.in_ledger THEN p.known_essay_id
                    ELSE first_value(p.slot) OVER (PARTITION BY p.batch_id, p.kind, p.item_key ORDER BY p.ord)
               END AS result_essay
          FROM placed AS p
    ), decided AS MATERIALIZED (
        SELECT j.*,
               CASE WHEN j.duplicate THEN
                        j.purged OR (j.tracked AND (j.was_complete OR coalesce(j.completing_ord < j.ord, false)))
                    WHEN j.has_slots THEN j.was_complete OR coalesce(j.ord >= j.completing_ord, false)
                    ELSE j.purged END AS is_complete,
               (j.kind = 'provision_content' AND NOT j.duplicate AND NOT j.has_slots AND j.purged
                AND EXISTS (SELECT FROM els.event_outbox AS o
                             WHERE o.event_id = els._event_id('ExcessContentProvisioned',
                                                              jsonb_build_array(j.batch_id, j.item_key))))
                   AS is_announced
          FROM judged AS j
    ), digested AS MATERIALIZED (
        -- the digest of the item's own event, its own step (an argument of els._uuid_v3,
        -- which uses it three times, a column keeps it inlined)
        SELECT d.*,
               CASE WHEN d.kind <> 'provision_content' OR d.is_announced
                         OR d.placed_outcome NOT IN ('assigned', 'excess') THEN NULL
                    WHEN d.placed_outcome = 'assigned' THEN
                        els._event_digest('EssaySlotAssigned', jsonb_build_array(d.batch_id, d.slot, d.item_key))
                    ELSE els._event_digest('ExcessContentProvisioned', jsonb_build_array(d.batch_id, d.item_key))
               END AS digest
          FROM decided AS d
    )
    SELECT array_agg(ROW(
               d.ord, d.kind, d.batch_id, d.item_key, d.file_upload_id, d.original_file_name,
               d.raw_file_storage_id, d.file_size_bytes, d.content_md5_hash, d.correlation_id,
               d.source_event_id, d.event_timestamp, d.validation_error_code, d.validation_error_detail,
               d.duplicate, d.in_ledger, d.known_essay_id, d.take_no, d.new_items, d.tracked,
               d.was_complete, d.expected_count, d.has_slots, d.purged,
               d.placed_outcome, d.slot, d.result_essay, d.closes, d.is_complete, d.is_announced,
               els._uuid_v3(d.digest))::els.item_step)
      INTO v_steps
      FROM digested AS d;
    RETURN v_steps;
END
$fn$;

REVOKE ALL ON FUNCTION els._judge_items(jsonb), els._place_items(els.item_step[]) FROM PUBLIC;
