-- The registrations of one round of els._apply_events (each of a different batch, whose
-- locks the caller holds), applied set-based: one statement judges them all, one writes
-- every new tracker and every missing slot, one reconciles the pending items of all of
-- them and one completes those left without an empty slot (030_batch_state.sql), one
-- writes their outbox rows. A round of one is every DBA's register_batch.
--
-- The rules (SPEC 3 and 10), per registration:
--   * a tracker of the same identity with all its slots: duplicate (nothing changes);
--     with some or none of them (left by an older, non-atomic writer): repaired, the
--     missing slots created and pending items reconciled as for a new one;
--   * a tracker or a tombstone of another identity: ELC01, naming the first field that
--     differs (and purged: true for a tombstone); a tombstone of the same identity:
--     duplicate, complete;
--   * otherwise registered: tracker, slots, reconciliation, completion;
--   * an essay id that another batch holds (a slot) or held (a tombstone), or, behind
--     the proxy, that another partition's batch has claimed (046_essay_claims.sql): ELC02.
-- ELC02 is what concurrency decides (a registration of another batch, under another
-- lock, may insert the same id at any moment), so it is not judged in advance: the slot
-- primary key finds it, and the tombstones are read after the slots are written, so a
-- purge that commits meanwhile is seen. Then the round is applied again one registration
-- at a time, each in its own subtransaction, and the one that conflicts gets its ELC02
-- (_register_alone) while the others apply.

-- The verdict of each registration of p_regs (els._registration_row objects with their
-- "ord"), from its tracker and tombstone: [{ord, batch_id, outcome, conflict, purged,
-- class_type, expected_count, complete, existing}], outcome registered, repaired,
-- duplicate or conflict (ELC01 on the field named by conflict).
CREATE OR REPLACE FUNCTION els._judge_registrations(p_regs jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_judged jsonb;
BEGIN
    SELECT jsonb_agg(jsonb_build_object(
               'ord', j.ord, 'batch_id', j.batch_id, 'purged', j.purged,
               'outcome', CASE WHEN j.conflict IS NOT NULL THEN 'conflict'
                               WHEN j.purged OR j.existing = j.known_count THEN 'duplicate'
                               WHEN j.known_count IS NOT NULL THEN 'repaired'
                               ELSE 'registered' END,
               'conflict', j.conflict, 'existing', j.existing,
               'class_type', coalesce(j.known_class_type,
                                      CASE WHEN j.class_id IS NULL THEN 'GUEST' ELSE 'REGULAR' END),
               'expected_count', coalesce(j.known_count, j.expected_count),
               'complete', j.purged OR j.known_complete))
      INTO v_judged
      FROM (SELECT r.ord, r.batch_id, r.class_id, r.expected_count, k.purged,
                   k.expected_count AS known_count, k.class_type AS known_class_type,
                   k.complete AS known_complete,
                   CASE WHEN k.batch_id IS NULL THEN NULL
                        WHEN k.essay_ids IS DISTINCT FROM ARRAY(SELECT jsonb_array_elements_text(r.essay_ids))
                            THEN 'essay_ids'
                        WHEN k.expected_count IS DISTINCT FROM r.expected_count THEN 'expected_essay_count'
                        WHEN k.course_code IS DISTINCT FROM r.course_code THEN 'course_code'
                        WHEN k.user_id IS DISTINCT FROM r.user_id THEN 'user_id'
                        WHEN k.org_id IS DISTINCT FROM r.org_id THEN 'org_id'
                        WHEN k.class_id IS DISTINCT FROM r.class_id THEN 'class_id'
                   END AS conflict,
                   CASE WHEN k.batch_id IS NOT NULL AND NOT k.purged THEN
                        (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = r.batch_id) END AS existing
              FROM jsonb_to_recordset(p_regs) AS r(ord integer, batch_id text, expected_count integer,
                                                   essay_ids jsonb, course_code text, user_id text,
                                                   org_id text, class_id text)
              -- the tracker, else the tombstone: one primary-key probe each
              LEFT JOIN LATERAL (
                    SELECT t.batch_id, t.essay_ids, t.expected_count, t.course_code, t.user_id,
                           t.org_id, t.class_id, t.class_type, t.completed_at IS NOT NULL AS complete,
                           false AS purged
                      FROM els.batch_tracker AS t WHERE t.batch_id = r.batch_id
                    UNION ALL
                    SELECT b.batch_id, b.essay_ids, b.expected_count, b.course_code, b.user_id,
                           b.org_id, b.class_id, b.class_type, true, true
                      FROM els.batch_tombstone AS b WHERE b.batch_id = r.batch_id
                     LIMIT 1) AS k ON true
            OFFSET 0) AS j;
    RETURN v_judged;
END
$fn$;

-- Writes the trackers of the registrations judged registered and the missing slots of
-- those registered or repaired (slots numbered by the order of essay_ids), in one
-- statement; rows go in essay id order, so that two rounds racing for overlapping ids
-- wait on each other in one order instead of deadlocking. Raises ELC02 (no detail: the
-- round is applied again one by one) when a tombstone holds one of their essay ids.
-- Returns {batch_id: slots created}.
CREATE OR REPLACE FUNCTION els._write_registrations(p_regs jsonb, p_judged jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_created jsonb;
BEGIN
    WITH todo AS MATERIALIZED (
        SELECT r.*, j.outcome, j.existing
          FROM jsonb_to_recordset(p_regs) AS r(ord integer, batch_id text, expected_count integer,
                   essay_ids jsonb, course_code text, user_id text, org_id text, class_id text,
                   student_prompt_ref jsonb, metadata jsonb, correlation_id text, source_event_id text)
          JOIN jsonb_to_recordset(p_judged) AS j(ord integer, outcome text, existing bigint)
            ON j.ord = r.ord
         WHERE j.outcome IN ('registered', 'repaired')
    ), trackers AS (
        INSERT INTO els.batch_tracker (
            batch_id, expected_count, essay_ids, course_code, user_id, org_id, class_id,
            student_prompt_ref, metadata, correlation_id, registration_event_id)
        SELECT t.batch_id, t.expected_count, ARRAY(SELECT jsonb_array_elements_text(t.essay_ids)),
               t.course_code, t.user_id, t.org_id, t.class_id, t.student_prompt_ref, t.metadata,
               t.correlation_id, t.source_event_id
          FROM todo AS t WHERE t.outcome = 'registered'
    ), slots AS (
        INSERT INTO els.essay_slot (essay_id, batch_id, slot_no)
        SELECT e.id, t.batch_id, e.ord
          FROM todo AS t
         CROSS JOIN LATERAL jsonb_array_elements_text(t.essay_ids) WITH ORDINALITY AS e(id, ord)
         -- a repaired batch's existing slots: a probe each (LIMIT 1), never a hashed
         -- subplan of every slot of the table, which an OR NOT EXISTS became
          LEFT JOIN LATERAL (SELECT s.essay_id FROM els.essay_slot AS s
                              WHERE t.outcome = 'repaired' AND s.essay_id = e.id AND s.batch_id = t.batch_id
                              LIMIT 1) AS x ON true
         WHERE x.essay_id IS NULL
         ORDER BY e.id
        RETURNING essay_slot.batch_id
    )
    SELECT coalesce(jsonb_object_agg(c.batch_id, c.n), '{}'::jsonb) INTO v_created
      FROM (SELECT s.batch_id, count(*) AS n FROM slots AS s GROUP BY s.batch_id) AS c;
    -- after the slots: a purge that deleted a slot these ids waited for has committed;
    -- one primary-key probe per id of the purged batches' ids (migration 0009)
    IF EXISTS (SELECT FROM jsonb_to_recordset(p_regs) AS r(batch_id text, essay_ids jsonb)
                CROSS JOIN LATERAL jsonb_array_elements_text(r.essay_ids) AS e(id)
                JOIN els.retired_essay AS x ON x.essay_id = e.id
               WHERE v_created ? r.batch_id AND x.batch_id <> r.batch_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'ELC02', MESSAGE = 'an essay id already belongs to another batch';
    END IF;
    -- behind the proxy: the claims on the other partitions (046_essay_claims.sql)
    IF v_created <> '{}'::jsonb AND EXISTS (SELECT FROM els.partition_self) THEN
        PERFORM els._claim_essays(array_agg(r.batch_id), array_agg(e.id))
           FROM jsonb_to_recordset(p_regs) AS r(batch_id text, essay_ids jsonb)
          CROSS JOIN LATERAL jsonb_array_elements_text(r.essay_ids) AS e(id)
          WHERE v_created ? r.batch_id;
    END IF;
    RETURN v_created;
END
$fn$;

-- The round: verdicts, writes, reconciliation, completion and outbox rows, and each
-- registration's result as register_batch returns it: [{ord, done}]. A round with
-- nothing to write (duplicates, conflicts) writes nothing and runs no write statement.
CREATE OR REPLACE FUNCTION els._register_set(p_regs jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_judged jsonb := els._judge_registrations(p_regs);
    v_created jsonb := '{}'::jsonb;
    v_batches text[];
BEGIN
    IF jsonb_path_exists(v_judged, '$[*] ? (@.outcome == "registered" || @.outcome == "repaired")') THEN
        v_created := els._write_registrations(p_regs, v_judged);
        SELECT array_agg(j.batch_id ORDER BY j.ord) INTO v_batches
          FROM jsonb_to_recordset(v_judged) AS j(ord integer, batch_id text)
         WHERE v_created ? j.batch_id;
    END IF;
    RETURN els._registration_results(
        v_judged, v_created, CASE WHEN v_batches IS NULL THEN '{}'::jsonb ELSE els._settle_batches(v_batches) END);
END
$fn$;

-- Each registration's result from its verdict (_judge_registrations), the slots created
-- per batch and what settling the batches did ({batch_id: {content_assigned,
-- failures_applied, excess, complete, events}}): [{ord, done}].
CREATE OR REPLACE FUNCTION els._registration_results(p_judged jsonb, p_created jsonb, p_settled jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    RETURN (
        SELECT jsonb_agg(jsonb_build_object('ord', j.ord, 'done', CASE
                   WHEN j.outcome = 'conflict' THEN els._rejection(
                       'ELC01', 'batch already registered with a different identity',
                       (jsonb_build_object('field', j.conflict, 'reason', 'identity_conflict',
                                           'batch_id', j.batch_id)
                        || CASE WHEN j.purged THEN '{"purged": true}'::jsonb ELSE '{}'::jsonb END)::text,
                       'els._register_set: event ' || j.ord || ' of the micro-batch')
                   ELSE jsonb_build_object('ok', true, 'result', jsonb_build_object(
                       'batch_id', j.batch_id,
                       'outcome', j.outcome,
                       'class_type', j.class_type,
                       'expected_count', j.expected_count,
                       'slots_created', coalesce((p_created ->> j.batch_id)::integer, 0),
                       'content_assigned', coalesce((s.v ->> 'content_assigned')::integer, 0),
                       'failures_applied', coalesce((s.v ->> 'failures_applied')::integer, 0),
                       'excess', coalesce((s.v ->> 'excess')::integer, 0),
                       'complete', coalesce((s.v ->> 'complete')::boolean, j.complete, false),
                       'events', coalesce(s.v -> 'events', '[]'::jsonb)))
               END) ORDER BY j.ord)
          FROM jsonb_to_recordset(p_judged) AS j(ord integer, batch_id text, outcome text, conflict text,
                                                 purged boolean, class_type text, expected_count integer,
                                                 complete boolean)
          LEFT JOIN LATERAL (SELECT p_settled -> j.batch_id AS v) AS s ON true);
END
$fn$;

-- One registration that the set-based round could not apply with the others: applied
-- alone in a subtransaction, or its ELC02 naming the first essay id (by id) that another
-- batch holds, or that a purged one held, and that batch. Any other unique violation is
-- a bug, raised as it is.
CREATE OR REPLACE FUNCTION els._register_alone(p_reg jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_owner record;
    v_detail text;
BEGIN
    RETURN els._register_set(jsonb_build_array(p_reg)) -> 0;
EXCEPTION WHEN unique_violation OR SQLSTATE 'ELC02' THEN
    -- an owner on another partition comes in the DETAIL of the claims' ELC02
    GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
    SELECT o.essay_id, o.batch_id, o.purged INTO v_owner
      FROM els._essay_owner_elsewhere(p_reg ->> 'batch_id',
                                      ARRAY(SELECT jsonb_array_elements_text(p_reg -> 'essay_ids'))) AS o;
    IF FOUND THEN
        v_detail := els._essay_owner_detail(v_owner.essay_id, v_owner.batch_id, v_owner.purged)::text;
    ELSIF coalesce(v_detail, '') = '' THEN
        RAISE;
    END IF;
    RETURN jsonb_build_object('ord', p_reg -> 'ord', 'done', els._rejection(
        'ELC02', 'an essay id already belongs to another batch', v_detail,
        'els._register_alone: event ' || (p_reg ->> 'ord') || ' of the micro-batch'));
END
$fn$;

-- The registrations of a round: set-based, in a subtransaction; when an essay id turns
-- out to be another batch's, each on its own (_register_alone). [{ord, done}].
CREATE OR REPLACE FUNCTION els._register_round(p_regs jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    IF jsonb_array_length(p_regs) = 1 THEN
        RETURN jsonb_build_array(els._register_alone(p_regs -> 0));
    END IF;
    BEGIN
        RETURN els._register_set(p_regs);
    EXCEPTION WHEN unique_violation OR SQLSTATE 'ELC02' THEN
        RETURN (SELECT jsonb_agg(els._register_alone(r.reg) ORDER BY (r.reg ->> 'ord')::integer)
                  FROM jsonb_array_elements(p_regs) AS r(reg));
    END;
END
$fn$;

REVOKE ALL ON FUNCTION els._judge_registrations(jsonb), els._write_registrations(jsonb, jsonb),
    els._registration_results(jsonb, jsonb, jsonb),
    els._register_set(jsonb), els._register_alone(jsonb), els._register_round(jsonb) FROM PUBLIC;
