-- Proof of delivery after the fact (SPEC 5): worker.py audit reads every row published in
-- a window back from the topic, partition and offset its delivery report gave, and
-- produces again the rows that are not there. These functions are its database side;
-- the relay's marking (070_outbox_relay.sql) takes the same coordinates.

-- Refuses delivery coordinates that prove nothing: arrays of different lengths, or a
-- NULL or negative partition or offset (librdkafka reports some messages "delivered"
-- without an offset; such a report must never mark a row). 22023: the caller's bug.
CREATE OR REPLACE FUNCTION els._check_delivery_coordinates(
    p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF cardinality(p_ids) IS DISTINCT FROM cardinality(p_topics)
       OR cardinality(p_ids) IS DISTINCT FROM cardinality(p_partitions)
       OR cardinality(p_ids) IS DISTINCT FROM cardinality(p_offsets) THEN
        RAISE EXCEPTION 'delivery coordinates: % ids, % topics, % partitions, % offsets',
            cardinality(p_ids), cardinality(p_topics), cardinality(p_partitions),
            cardinality(p_offsets)
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT FROM unnest(p_ids, p_topics, p_partitions, p_offsets) AS d (i, t, p, o)
                WHERE i IS NULL OR t IS NULL OR p IS NULL OR o IS NULL OR p < 0 OR o < 0) THEN
        RAISE EXCEPTION 'delivery coordinates: a NULL or negative partition or offset is no '
                        'proof of delivery'
            USING ERRCODE = '22023';
    END IF;
END
$fn$;

-- The rows published in the last p_since, ordered as the audit reads them (by topic,
-- partition, offset; rows without coordinates, published before they were kept, last).
-- No envelope: the audit compares event ids, and fetches the envelopes of the few rows
-- it must produce again with outbox_envelopes. A sequential scan is fine: the audit runs
-- seldom, and an index on published_at would make every publish update add an entry.
CREATE OR REPLACE FUNCTION els.outbox_published_since(p_since interval DEFAULT '24 hours')
RETURNS TABLE (id bigint, event_id uuid, event_type text, kafka_topic text,
               kafka_partition integer, kafka_offset bigint, published_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT o.id, o.event_id, o.event_type, o.kafka_topic, o.kafka_partition, o.kafka_offset,
           o.published_at
      FROM els.event_outbox AS o
     WHERE o.published_at >= now() - p_since
     ORDER BY o.kafka_topic, o.kafka_partition, o.kafka_offset, o.id;
END;
COMMENT ON FUNCTION els.outbox_published_since(interval) IS
    'Outbox rows published in the last p_since with where the broker stored them, in the '
    'order worker.py audit reads them back (topic, partition, offset).';

-- What the audit needs to produce a row again: as claim_outbox returns it, without a lock
-- (a published row is never touched by the relay).
CREATE OR REPLACE FUNCTION els.outbox_envelopes(p_ids bigint[])
RETURNS TABLE (id bigint, event_id uuid, event_type text, topic text, message_key text,
               envelope jsonb)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT o.id, o.event_id, o.event_type, o.topic, o.message_key, o.envelope
      FROM els.event_outbox AS o
     WHERE o.id = ANY (p_ids) AND o.published_at IS NOT NULL
     ORDER BY o.id;
END;
COMMENT ON FUNCTION els.outbox_envelopes(bigint[]) IS
    'The published outbox rows of p_ids with their envelopes, for worker.py audit to produce '
    'again what it found missing from Kafka.';

-- The audit produced a published row again (it was not at its recorded coordinates):
-- the row now points where the broker stored the new copy, and says when.
CREATE OR REPLACE FUNCTION els.record_outbox_redelivery(
    p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_recorded integer;
BEGIN
    PERFORM els._check_delivery_coordinates(p_ids, p_topics, p_partitions, p_offsets);
    UPDATE els.event_outbox AS o
       SET kafka_topic = d.topic, kafka_partition = d.kafka_partition,
           kafka_offset = d.kafka_offset, redelivered_at = now()
      FROM unnest(p_ids, p_topics, p_partitions, p_offsets)
               AS d (id, topic, kafka_partition, kafka_offset)
     WHERE o.id = d.id AND o.published_at IS NOT NULL;
    GET DIAGNOSTICS v_recorded = ROW_COUNT;
    RETURN v_recorded;
END
$fn$;
COMMENT ON FUNCTION els.record_outbox_redelivery(bigint[], text[], integer[], bigint[]) IS
    'Records where the broker stored published outbox rows that worker.py audit produced '
    'again after finding them missing; stamps redelivered_at.';

REVOKE ALL ON FUNCTION els._check_delivery_coordinates(bigint[], text[], integer[], bigint[]),
    els.outbox_published_since(interval), els.outbox_envelopes(bigint[]),
    els.record_outbox_redelivery(bigint[], text[], integer[], bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.outbox_published_since(interval), els.outbox_envelopes(bigint[]),
    els.record_outbox_redelivery(bigint[], text[], integer[], bigint[]) TO els_worker;
