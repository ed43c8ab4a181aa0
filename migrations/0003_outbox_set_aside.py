"""Outbox rows Kafka refuses are set aside, so they never block the rows behind them.

A row whose delivery failed for a reason of its own (too large for the topic, a topic
that refuses it) gets a reason, an attempt count and a time before which the relay does
not claim it again; the rows behind it keep flowing, and it is retried later with a
growing delay (``els.set_aside_outbox``). ``els.outbox_backlog`` gains a column, so the
old function is dropped here and recreated by the post-apply reload of sql/.
"""

from yoyo import step

__depends__ = {"0002_batch_registration_tables"}

CREATE = """
SET LOCAL ROLE els_owner;
ALTER TABLE els.event_outbox
    ADD COLUMN publish_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN retry_after timestamptz;
COMMENT ON COLUMN els.event_outbox.last_error IS
    'Why Kafka refused the row the last time (set by els.set_aside_outbox); NULL when never refused.';
COMMENT ON COLUMN els.event_outbox.retry_after IS
    'A set-aside row is not claimed again before this time.';
DROP FUNCTION IF EXISTS els.outbox_backlog();
"""

DROP = """
SET LOCAL ROLE els_owner;
DROP FUNCTION IF EXISTS els.outbox_backlog();
DROP FUNCTION IF EXISTS els.set_aside_outbox(bigint, text);
-- the previous release's two-column outbox_backlog, so that its worker runs again
CREATE FUNCTION els.outbox_backlog(OUT unpublished bigint, OUT oldest_age_seconds double precision)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT count(*), coalesce(extract(epoch FROM now() - min(o.created_at))::double precision, 0)
      FROM els.event_outbox AS o
     WHERE o.published_at IS NULL;
END;
REVOKE ALL ON FUNCTION els.outbox_backlog() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.outbox_backlog() TO els_worker, els_readonly;
-- and its claim_outbox, which does not read retry_after (a BEGIN ATOMIC body depends on it)
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
DROP VIEW IF EXISTS els.outbox_set_aside;
ALTER TABLE els.event_outbox
    DROP COLUMN publish_attempts, DROP COLUMN last_error, DROP COLUMN retry_after;
"""

steps = [step(CREATE, DROP)]
