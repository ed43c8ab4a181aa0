-- The audit's database side (SPEC 5, proof of delivery): els.outbox_published_since,
-- els.outbox_envelopes, els.record_outbox_redelivery, and the coordinate check they
-- share with els.mark_outbox_published.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(14);

DELETE FROM els.event_outbox;
INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
SELECT gen_random_uuid(), 'EssaySlotAssigned', 'slots', 'b-' || g, jsonb_build_object('n', g)
  FROM generate_series(1, 5) AS g;
CREATE TEMP TABLE ids AS SELECT id, row_number() OVER (ORDER BY id) AS n FROM els.event_outbox;

-- rows 1-3 published to partitions 1, 0, 0; row 4 published before offsets were kept
-- (a day ago); row 5 unpublished
SELECT is(els.mark_outbox_published(
              (SELECT array_agg(id ORDER BY n) FROM ids WHERE n <= 3),
              ARRAY['out', 'out', 'out'], ARRAY[1, 0, 0], ARRAY[7, 9, 4]::bigint[]), 3,
          'mark_outbox_published marks three rows with their coordinates');
UPDATE els.event_outbox SET published_at = now() - interval '2 days'
 WHERE id = (SELECT id FROM ids WHERE n = 4);

SELECT results_eq(
    $$SELECT i.n::integer, p.kafka_topic, p.kafka_partition, p.kafka_offset
        FROM els.outbox_published_since('1 hour') WITH ORDINALITY AS p JOIN ids AS i USING (id) ORDER BY p.ordinality$$,
    $$VALUES (3, 'out', 0, 4::bigint), (2, 'out', 0, 9::bigint), (1, 'out', 1, 7::bigint)$$,
    'outbox_published_since: the rows published in the window, by topic, partition, offset; never unpublished ones');
SELECT results_eq(
    $$SELECT i.n::integer, p.kafka_offset FROM els.outbox_published_since('3 days') WITH ORDINALITY AS p
        JOIN ids AS i USING (id) ORDER BY p.ordinality$$,
    $$VALUES (3, 4::bigint), (2, 9::bigint), (1, 7::bigint), (4, NULL::bigint)$$,
    'outbox_published_since: a row published before offsets were kept comes last, without coordinates');
SELECT is((SELECT count(*)::integer FROM els.outbox_published_since()), 3,
          'outbox_published_since(): the default window is 24 hours');

SELECT results_eq(
    $$SELECT i.n::integer, e.topic, e.message_key, e.envelope FROM els.outbox_envelopes(
          (SELECT array_agg(id) FROM ids WHERE n IN (2, 5))) AS e JOIN ids AS i USING (id)$$,
    $$VALUES (2, 'slots', 'b-2', '{"n": 2}'::jsonb)$$,
    'outbox_envelopes: what the audit produces again, for published rows only');

SELECT is(els.record_outbox_redelivery(
              (SELECT array_agg(id ORDER BY n) FROM ids WHERE n IN (2, 5)),
              ARRAY['out', 'out'], ARRAY[2, 2], ARRAY[11, 12]::bigint[]), 1,
          'record_outbox_redelivery: records the published row, ignores the unpublished one');
SELECT results_eq(
    $$SELECT kafka_topic, kafka_partition, kafka_offset, redelivered_at = now(), published_at = now()
        FROM els.event_outbox WHERE id = (SELECT id FROM ids WHERE n = 2)$$,
    $$VALUES ('out', 2, 11::bigint, true, true)$$,
    'record_outbox_redelivery: the row points at the new copy, stamps redelivered_at, keeps published_at');
SELECT is((SELECT published_at FROM els.event_outbox WHERE id = (SELECT id FROM ids WHERE n = 5)), NULL,
          'record_outbox_redelivery never publishes an unpublished row');

SELECT throws_ok($$SELECT els.record_outbox_redelivery(ARRAY[1::bigint], ARRAY['out'], ARRAY[0], ARRAY[NULL::bigint])$$,
                 '22023', NULL, 'record_outbox_redelivery: a NULL offset is refused');
SELECT throws_ok($$SELECT els.record_outbox_redelivery(ARRAY[1::bigint], ARRAY[NULL::text], ARRAY[0], ARRAY[1::bigint])$$,
                 '22023', NULL, 'record_outbox_redelivery: a NULL topic is refused');
SELECT throws_ok($$SELECT els.record_outbox_redelivery(ARRAY[1::bigint, 2], ARRAY['out'], ARRAY[0], ARRAY[1::bigint])$$,
                 '22023', NULL, 'record_outbox_redelivery: arrays of different lengths are refused');
SELECT lives_ok($$SELECT els._check_delivery_coordinates('{}', '{}', '{}', '{}')$$,
                '_check_delivery_coordinates: empty arrays are fine');

SELECT throws_ok($$UPDATE els.event_outbox SET kafka_offset = 3 WHERE id = (SELECT id FROM ids WHERE n = 5)$$,
                 '23514', NULL, 'the table refuses an offset without a topic and partition');
SELECT throws_ok($$UPDATE els.event_outbox SET kafka_topic = 'x', kafka_partition = 0, kafka_offset = 3
                    WHERE id = (SELECT id FROM ids WHERE n = 5)$$,
                 '23514', NULL, 'the table refuses coordinates on an unpublished row');

SELECT * FROM finish();
ROLLBACK;
