-- The proxy's answers (SPEC 9, sql/proxy/010_answers.sql), function by function: the
-- routing key of an event, a partition's error raised as one database raises it, and
-- the merge of the partitions' answers to a call over all of them. Loaded here into a
-- scratch els_proxy schema, inside the test's transaction (the proxy database itself is
-- built by worker.py migrate; tests/stack/test_partitions.py runs it whole).
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(16);

CREATE SCHEMA els_proxy;
\ir ../sql/proxy/010_answers.sql

-- event_batch_id: the key a call is routed by
SELECT is(els_proxy.event_batch_id('{"event_id": "e", "data": {"entity_id": "b-1"}}'), 'b-1',
          'an envelope is routed by data.entity_id');
SELECT is(els_proxy.event_batch_id('{"entity_id": "b-2", "essay_ids": []}'), 'b-2',
          'a bare payload by its entity_id');
SELECT is(els_proxy.event_batch_id('[1, 2]'), '', 'a non-object by the empty key');
SELECT is(els_proxy.event_batch_id('{"data": {}}'), '', 'an envelope without entity_id too');

-- raise_as_partition: one database's error, without PL/Proxy's labels
SELECT throws_ok($$SELECT els_proxy.raise_as_partition('ELC02',
                     'els_remote.apply_items(4): [els_part_1] REMOTE ERROR: an essay id already belongs to another batch',
                     'Remote detail: {"field": "essay_ids"}', NULL)$$,
                 'ELC02', 'an essay id already belongs to another batch',
                 'the SQLSTATE kept, the REMOTE ERROR prefix gone');
CREATE FUNCTION pg_temp.diagnostics(p_sql text) RETURNS text[] LANGUAGE plpgsql AS $fn$
DECLARE
    v_state text;
    v_message text;
    v_detail text;
    v_hint text;
BEGIN
    EXECUTE p_sql;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                            v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
    RETURN ARRAY[v_state, v_message, v_detail, v_hint];
END
$fn$;
SELECT is(pg_temp.diagnostics($$SELECT els_proxy.raise_as_partition('ELV03', 'x: [p0] REMOTE ERROR: bad field',
                                  'Remote detail: {"field": "essay_ids"}', 'Remote hint: look')$$),
          ARRAY['ELV03', 'bad field', '{"field": "essay_ids"}', 'look'],
          'DETAIL and HINT without their Remote labels');
SELECT is(pg_temp.diagnostics($$SELECT els_proxy.raise_as_partition('ELV01', 'plain', NULL, NULL)$$),
          ARRAY['ELV01', 'plain', '', ''], 'no DETAIL or HINT stays none (never an empty option)');
SELECT is((pg_temp.diagnostics($$SELECT els_proxy.raise_as_partition('XX000',
                                   'PL/Proxy function els_remote.apply_items(4): could not connect to server', NULL, NULL)$$))[1],
          '08006', 'PL/Proxy''s own XX000 (a partition unreachable) is a connection failure');
SELECT is((pg_temp.diagnostics($$SELECT els_proxy.raise_as_partition('XX000',
                                   'f: [p0] REMOTE ERROR: a real internal error', NULL, NULL)$$))[1],
          'XX000', 'a partition''s own XX000 stays XX000');

-- merge_counts: numbers summed, oldest_* the largest, lists joined in partition order
SELECT is(els_proxy.merge_counts(ARRAY['{"batches_closed": 2, "slots_timed_out": 5}',
                                       '{"batches_closed": 3, "slots_timed_out": 0}']::jsonb[]),
          '{"batches_closed": 5, "slots_timed_out": 5}'::jsonb, 'counts are summed');
SELECT is(els_proxy.merge_counts(ARRAY['{"incomplete_batches": 1, "oldest_incomplete_age_seconds": 40}',
                                       '{"incomplete_batches": 2, "oldest_incomplete_age_seconds": 90.5}']::jsonb[]),
          '{"incomplete_batches": 3, "oldest_incomplete_age_seconds": 90.5}'::jsonb,
          'the oldest age is the largest, not a sum');
SELECT is(els_proxy.merge_counts(ARRAY['{"n": 1, "ids": ["a"]}', '{"n": 0, "ids": ["b", "c"]}']::jsonb[]),
          '{"n": 1, "ids": ["a", "b", "c"]}'::jsonb, 'lists are joined in partition order');
SELECT is(els_proxy.merge_counts(ARRAY[]::jsonb[]), '{}'::jsonb, 'no answer merges to {}');

-- merge_lists: joined in one database's order, at most p_limit
SELECT is(els_proxy.merge_lists(ARRAY['[{"batch_id": "b", "registered_at": "2026-01-02"}]',
                                      '[{"batch_id": "a", "registered_at": "2026-01-03"}, {"batch_id": "c", "registered_at": "2026-01-01"}]']::jsonb[],
                                'registered_at', 10) -> 0 ->> 'batch_id',
          'c', 'the oldest first, whichever partition it came from');
SELECT is(jsonb_array_length(els_proxy.merge_lists(ARRAY['[{"batch_id": "b", "registered_at": "1"}]',
                                                          '[{"batch_id": "a", "registered_at": "2"}, {"batch_id": "c", "registered_at": "3"}]']::jsonb[],
                                                    'registered_at', 2)),
          2, 'at most p_limit items over all partitions');
SELECT is(els_proxy.merge_lists(ARRAY['[]', '[]']::jsonb[], 'registered_at', 5), '[]'::jsonb,
          'empty lists merge to []');

SELECT * FROM finish();
ROLLBACK;
