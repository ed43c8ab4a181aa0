-- els.batch_health (the worker's gauges, SPEC sections 7 and 10): incomplete batches,
-- those incomplete for at least stuck_after ("stuck"), and the age of the oldest
-- incomplete one (0 when none). Cheap: it reads the partial index of incomplete
-- batches, never the completed ones. Time is simulated by moving registered_at back.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(12);

CREATE FUNCTION pg_temp.batch(p_batch text, p_essays text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'expected_essay_count', cardinality(p_essays),
                          'essay_ids', to_jsonb(p_essays), 'course_code', 'ENG5', 'user_id', 'health');
CREATE FUNCTION pg_temp.explain(p_sql text) RETURNS SETOF text LANGUAGE plpgsql AS $fn$
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN ' || p_sql;
END
$fn$;
CREATE FUNCTION pg_temp.registered(p_batch text, p_essays text[], p_age interval) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM els.register_batch(pg_temp.batch(p_batch, p_essays));
    UPDATE els.batch_tracker SET registered_at = now() - p_age WHERE batch_id = p_batch;
END
$fn$;

SELECT is((SELECT count(*) FROM els.batch_tracker), 0::bigint, 'starts from a database without batches');
SELECT is(els.batch_health(stuck_after => interval '1 hour'),
          '{"incomplete_batches": 0, "stuck_batches": 0, "oldest_incomplete_age_seconds": 0}'::jsonb,
          'no batch: zeros (oldest age 0 when none)');

DO $setup$ BEGIN
    PERFORM pg_temp.registered('bh-old', ARRAY['bho-1', 'bho-2'], '2 hours');
    PERFORM pg_temp.registered('bh-mid', ARRAY['bhm-1'], '30 minutes');
    PERFORM pg_temp.registered('bh-new', ARRAY['bhn-1'], '0 seconds');
    -- complete, and older than all: not counted
    PERFORM pg_temp.registered('bh-done', ARRAY['bhd-1'], '1 day');
    PERFORM els.provision_content('{"entity_id": "bh-done", "text_storage_id": "t", "file_upload_id": "f",
                                    "original_file_name": "n"}');
    -- never registered: not a batch yet
    PERFORM els.provision_content('{"entity_id": "bh-pending", "text_storage_id": "t", "file_upload_id": "f",
                                    "original_file_name": "n"}');
END $setup$;
SELECT is(els.batch_health(stuck_after => interval '1 hour'),
          '{"incomplete_batches": 3, "stuck_batches": 1, "oldest_incomplete_age_seconds": 7200}'::jsonb,
          'three incomplete, one of them for at least an hour, the oldest 2 h old');
SELECT is(els.batch_health(interval '10 minutes') -> 'stuck_batches', '2'::jsonb, 'stuck_after 10 min: two stuck');
SELECT is(els.batch_health(interval '30 minutes') -> 'stuck_batches', '2'::jsonb,
          'stuck_after equal to a batch''s age counts it (at least stuck_after)');
SELECT is(els.batch_health(interval '0 seconds') -> 'stuck_batches', '3'::jsonb, 'stuck_after 0: all incomplete');
SELECT is(els.batch_health(interval '1 day') -> 'stuck_batches', '0'::jsonb, 'stuck_after 1 day: none');

SELECT is(els.close_batch('bh-old') ->> 'outcome', 'closed', 'the oldest is closed');
SELECT is(els.batch_health(interval '1 hour'),
          '{"incomplete_batches": 2, "stuck_batches": 0, "oldest_incomplete_age_seconds": 1800}'::jsonb,
          'after closing it: two left, none stuck, the oldest 30 min old');

-- the query behind it can use the partial index of incomplete batches (the planner
-- prefers a sequential scan on tables this small, so that is switched off here)
SET LOCAL enable_seqscan = off;
SELECT ok((SELECT string_agg(p, E'\n') FROM (
              SELECT * FROM pg_temp.explain($$SELECT count(*), min(t.registered_at) FROM els.batch_tracker AS t
                                                WHERE t.completed_at IS NULL$$)) AS e(p))
          ~ 'batch_tracker_incomplete_idx', 'incomplete batches are found through batch_tracker_incomplete_idx');
RESET enable_seqscan;

SELECT volatility_is('els', 'batch_health', ARRAY['interval'], 'stable', 'batch_health only reads (STABLE)');
SELECT is_definer('els', 'batch_health', ARRAY['interval'], 'batch_health is SECURITY DEFINER');

SELECT * FROM finish();
ROLLBACK;
