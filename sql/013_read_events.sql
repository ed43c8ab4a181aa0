-- Reading a micro-batch: every event checked by its screen (012_screens.sql) and, only
-- when it fails it, by its fault function (011_event_faults.sql), in one statement per
-- kind of event; no table is touched.

-- essay_ids' items, read once: the 1-based position of the first that is not a
-- 1..255-character string, how many there are, and the first id (by first
-- occurrence) that occurs twice (no items when essay_ids is not an array). A
-- set-returning SQL function of one row, so that the planner inlines it into the
-- statement that reads a micro-batch.
CREATE OR REPLACE FUNCTION els._essay_id_items(p_essay_ids jsonb)
RETURNS TABLE (bad_ord bigint, item_count bigint, duplicate_id text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$
    SELECT min(x.ord) FILTER (WHERE jsonb_typeof(x.item) <> 'string'
                                 OR length(x.item #>> '{}') NOT BETWEEN 1 AND 255),
           count(*),
           (SELECT d.id
              FROM (SELECT y.item #>> '{}' AS id, min(y.ord) AS first_ord
                      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_essay_ids) = 'array'
                                                     THEN p_essay_ids END) WITH ORDINALITY AS y(item, ord)
                     GROUP BY 1 HAVING count(*) > 1) AS d
             ORDER BY d.first_ord LIMIT 1)
      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_essay_ids) = 'array' THEN p_essay_ids END)
           WITH ORDINALITY AS x(item, ord)
$fn$;

-- Reads and checks a micro-batch of events (p_kinds[i]: register_batch,
-- provision_content or record_validation_failure); touches no table. One row per
-- event (p_skip[i] set: left out, its result is known already): ord, kind, fault
-- (the first failed check, or NULL) and, when it passed, event_row (the event as the
-- core applies it). One statement per kind, run only when the micro-batch has
-- events of that kind (a per-event call initializes one kind's expressions).
CREATE OR REPLACE FUNCTION els._read_events(p_kinds text[], p_events jsonb[], p_skip boolean[])
RETURNS TABLE (ord integer, kind text, fault jsonb, event_row jsonb)
-- PL/pgSQL: its plans are kept for the session (a SQL function's would be made anew
-- for each call of the statement that calls it); generic plans, made once
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $fn$
BEGIN
    IF 'register_batch' = ANY (p_kinds) THEN
        RETURN QUERY
        SELECT c.ord, 'register_batch', c.fault,
               CASE WHEN c.fault IS NULL THEN els._registration_row(c.event, c.payload) END
          FROM (SELECT v.ord, v.event, v.payload,
                       CASE WHEN els._registration_ok(v.event, v.payload, i.bad_ord, i.item_count, i.duplicate_id)
                            THEN NULL
                            ELSE els._registration_fault(v.event, v.payload, i.bad_ord, i.item_count,
                                                         i.duplicate_id) END AS fault
                  FROM (SELECT u.ord::integer AS ord, u.event, els._payload(u.event) AS payload
                          FROM unnest(p_kinds, p_events) WITH ORDINALITY AS u(kind, event, ord)
                         WHERE u.kind = 'register_batch' AND p_skip[u.ord::integer] IS NOT TRUE
                        OFFSET 0) AS v
                  CROSS JOIN LATERAL els._essay_id_items(v.payload -> 'essay_ids') AS i
                OFFSET 0) AS c;
    END IF;
    IF 'provision_content' = ANY (p_kinds) THEN
        RETURN QUERY
        SELECT c.ord, 'provision_content', c.fault,
               CASE WHEN c.fault IS NULL THEN els._content_row(c.event, c.payload) END
          FROM (SELECT v.ord, v.event, v.payload,
                       CASE WHEN els._content_ok(v.event, v.payload) THEN NULL
                            ELSE els._content_fault(v.event, v.payload) END AS fault
                  FROM (SELECT u.ord::integer AS ord, u.event, els._payload(u.event) AS payload
                          FROM unnest(p_kinds, p_events) WITH ORDINALITY AS u(kind, event, ord)
                         WHERE u.kind = 'provision_content' AND p_skip[u.ord::integer] IS NOT TRUE
                        OFFSET 0) AS v
                OFFSET 0) AS c;
    END IF;
    IF 'record_validation_failure' = ANY (p_kinds) THEN
        RETURN QUERY
        SELECT c.ord, 'record_validation_failure', c.fault,
               CASE WHEN c.fault IS NULL THEN els._failure_row(c.event, c.payload) END
          FROM (SELECT v.ord, v.event, v.payload,
                       CASE WHEN els._failure_ok(v.event, v.payload) THEN NULL
                            ELSE els._failure_fault(v.event, v.payload) END AS fault
                  FROM (SELECT u.ord::integer AS ord, u.event, els._payload(u.event) AS payload
                          FROM unnest(p_kinds, p_events) WITH ORDINALITY AS u(kind, event, ord)
                         WHERE u.kind = 'record_validation_failure' AND p_skip[u.ord::integer] IS NOT TRUE
                        OFFSET 0) AS v
                OFFSET 0) AS c;
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION els._essay_id_items(jsonb),
    els._read_events(text[], jsonb[], boolean[]) FROM PUBLIC;
