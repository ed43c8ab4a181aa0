-- Outbox relay API for the worker (role els_worker), which has no table access.
--
-- The relay calls claim_outbox and mark_outbox_published in ONE transaction:
-- claim locks the rows (FOR UPDATE SKIP LOCKED, so several relays share the
-- work without waiting on each other), the relay produces them to Kafka and
-- waits for every delivery report, then marks them and commits. A crash in
-- between rolls the claim back; the rows are produced again later with the
-- same event_id, which consumers deduplicate on.
--
-- Only a report with the partition and offset the broker stored the row at marks it
-- (SPEC 5, proof of delivery): librdkafka can report "delivered" without an offset for
-- a message the broker never stored. The row keeps those coordinates, and worker.py
-- audit reads them back (075_outbox_audit.sql).
--
-- A row Kafka refuses for a reason of its own (too large, a topic that refuses it)
-- must not block the rows behind it: the relay sets it aside (set_aside_outbox) in the
-- same transaction in which it marks the others published. A set-aside row keeps its
-- reason, is visible in els.outbox_set_aside, and is claimed again after a delay that
-- doubles with each attempt (capped at one hour).

CREATE OR REPLACE FUNCTION els.claim_outbox(p_limit integer DEFAULT 500)
RETURNS TABLE (id bigint, event_id uuid, event_type text, topic text, message_key text,
               envelope jsonb, created_at timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT o.id, o.event_id, o.event_type, o.topic, o.message_key, o.envelope, o.created_at
      FROM els.event_outbox AS o
     WHERE o.published_at IS NULL
       AND (o.retry_after IS NULL OR o.retry_after <= now())
     ORDER BY o.id
     LIMIT p_limit
       FOR UPDATE SKIP LOCKED;
END;
COMMENT ON FUNCTION els.claim_outbox(integer) IS
    'Locks and returns up to p_limit unpublished outbox rows, oldest first, skipping rows '
    'another relay holds and rows set aside until later. Call in the same transaction as '
    'mark_outbox_published and set_aside_outbox.';

-- Stamps claimed rows published with where the broker stored each (the arrays are
-- parallel: p_ids[i] went to p_topics[i], partition p_partitions[i], offset
-- p_offsets[i]). Rows already published are left as they are. A NULL or negative
-- coordinate is refused: such a report proves nothing, and the caller has a bug.
CREATE OR REPLACE FUNCTION els.mark_outbox_published(
    p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_marked integer;
BEGIN
    PERFORM els._check_delivery_coordinates(p_ids, p_topics, p_partitions, p_offsets);
    UPDATE els.event_outbox AS o
       SET published_at = now(), kafka_topic = d.topic, kafka_partition = d.kafka_partition,
           kafka_offset = d.kafka_offset
      FROM unnest(p_ids, p_topics, p_partitions, p_offsets)
               AS d (id, topic, kafka_partition, kafka_offset)
     WHERE o.id = d.id AND o.published_at IS NULL;
    GET DIAGNOSTICS v_marked = ROW_COUNT;
    RETURN v_marked;
END
$fn$;
COMMENT ON FUNCTION els.mark_outbox_published(bigint[], text[], integer[], bigint[]) IS
    'Stamps outbox rows as published with the topic, partition and offset the broker stored '
    'each at (their delivery reports); rows already published are left alone.';

CREATE OR REPLACE FUNCTION els.purge_outbox(p_older_than interval DEFAULT '7 days')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_deleted bigint;
BEGIN
    DELETE FROM els.event_outbox AS o
     WHERE o.published_at IS NOT NULL AND o.published_at < now() - p_older_than;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$fn$;
COMMENT ON FUNCTION els.purge_outbox(interval) IS
    'Deletes published outbox rows older than the interval; unpublished rows are never purged.';

-- Records that Kafka refused one claimed row: its reason, one more attempt, and a time
-- before which it is not claimed again (5 s, doubling per attempt, at most one hour).
CREATE OR REPLACE FUNCTION els.set_aside_outbox(p_id bigint, p_reason text)
RETURNS timestamptz
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    UPDATE els.event_outbox AS o
       SET publish_attempts = o.publish_attempts + 1,
           last_error = left(p_reason, 2000),
           retry_after = now() + least(interval '1 hour',
                                       interval '5 seconds' * power(2, least(o.publish_attempts, 20)))
     WHERE o.id = p_id AND o.published_at IS NULL
    RETURNING o.retry_after;
END;
COMMENT ON FUNCTION els.set_aside_outbox(bigint, text) IS
    'Sets a claimed outbox row aside after Kafka refused it, with the reason; it is retried '
    'later and never blocks the rows behind it.';

-- What an operator looks at when els_outbox_unpublishable is not 0.
CREATE OR REPLACE VIEW els.outbox_set_aside AS
SELECT o.id, o.event_id, o.event_type, o.topic, o.message_key, o.created_at,
       o.publish_attempts, o.last_error, o.retry_after,
       octet_length(o.envelope::text) AS envelope_bytes
  FROM els.event_outbox AS o
 WHERE o.published_at IS NULL AND o.last_error IS NOT NULL;
COMMENT ON VIEW els.outbox_set_aside IS
    'Unpublished outbox rows that Kafka refused at least once, with the reason and the next try.';

-- For the worker's metrics: how many rows wait, how old the oldest is, how many are set aside.
CREATE OR REPLACE FUNCTION els.outbox_backlog(OUT unpublished bigint, OUT oldest_age_seconds double precision,
                                              OUT set_aside bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT count(*), coalesce(extract(epoch FROM now() - min(o.created_at))::double precision, 0),
           count(*) FILTER (WHERE o.last_error IS NOT NULL)
      FROM els.event_outbox AS o
     WHERE o.published_at IS NULL;
END;

REVOKE ALL ON FUNCTION els.claim_outbox(integer),
    els.mark_outbox_published(bigint[], text[], integer[], bigint[]),
    els.set_aside_outbox(bigint, text), els.purge_outbox(interval), els.outbox_backlog() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.claim_outbox(integer),
    els.mark_outbox_published(bigint[], text[], integer[], bigint[]),
    els.set_aside_outbox(bigint, text), els.outbox_backlog() TO els_worker;
GRANT EXECUTE ON FUNCTION els.outbox_backlog() TO els_readonly;
GRANT SELECT ON els.outbox_set_aside TO els_readonly;
