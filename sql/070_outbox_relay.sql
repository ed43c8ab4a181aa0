-- Outbox relay API for the worker (role els_worker), which has no table access.
--
-- The relay calls claim_outbox and mark_outbox_published in ONE transaction:
-- claim locks the rows (FOR UPDATE SKIP LOCKED, so several relays share the
-- work without waiting on each other), the relay produces them to Kafka and
-- waits for every delivery report, then marks them and commits. A crash in
-- between rolls the claim back; the rows are produced again later with the
-- same event_id, which consumers deduplicate on.

CREATE OR REPLACE FUNCTION els.claim_outbox(p_limit integer DEFAULT 500)
RETURNS TABLE (id bigint, event_id uuid, event_type text, topic text, message_key text,
               envelope jsonb, created_at timestamptz)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT o.id, o.event_id, o.event_type, o.topic, o.message_key, o.envelope, o.created_at
      FROM els.event_outbox AS o
     WHERE o.published_at IS NULL
     ORDER BY o.id
     LIMIT p_limit
       FOR UPDATE SKIP LOCKED;
END;
COMMENT ON FUNCTION els.claim_outbox(integer) IS
    'Locks and returns up to p_limit unpublished outbox rows, oldest first, skipping rows '
    'another relay holds. Call in the same transaction as mark_outbox_published.';

CREATE OR REPLACE FUNCTION els.mark_outbox_published(p_ids bigint[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_marked integer;
BEGIN
    UPDATE els.event_outbox AS o
       SET published_at = now()
     WHERE o.id = ANY (p_ids) AND o.published_at IS NULL;
    GET DIAGNOSTICS v_marked = ROW_COUNT;
    RETURN v_marked;
END
$fn$;
COMMENT ON FUNCTION els.mark_outbox_published(bigint[]) IS
    'Stamps outbox rows as published, after Kafka confirmed their delivery.';

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

-- For the worker's metrics: how many rows wait, and how old the oldest is.
CREATE OR REPLACE FUNCTION els.outbox_backlog(OUT unpublished bigint, OUT oldest_age_seconds double precision)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT count(*), coalesce(extract(epoch FROM now() - min(o.created_at))::double precision, 0)
      FROM els.event_outbox AS o
     WHERE o.published_at IS NULL;
END;

REVOKE ALL ON FUNCTION els.claim_outbox(integer), els.mark_outbox_published(bigint[]),
    els.purge_outbox(interval), els.outbox_backlog() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.claim_outbox(integer), els.mark_outbox_published(bigint[]),
    els.purge_outbox(interval), els.outbox_backlog() TO els_worker;
GRANT EXECUTE ON FUNCTION els.outbox_backlog() TO els_readonly;
