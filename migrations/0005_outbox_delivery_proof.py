"""Proof of delivery (SPEC section 5): a published outbox row keeps where the broker
stored it.

``kafka_topic``, ``kafka_partition`` and ``kafka_offset`` are the coordinates the
delivery report gave for the row, set in the transaction that stamps ``published_at``
(``els.mark_outbox_published``), and again when ``worker.py audit`` found the row
missing from its topic and produced it again (``els.record_outbox_redelivery``, which
also stamps ``redelivered_at``). A delivery report without an offset is no proof, so
the relay never marks a row without one; rows published before this migration have
none, and the audit reports them as unproven instead of guessing where they are.

The columns carry no index and no index predicate names them, so stamping them never
adds an index entry of its own (the partial index on ``published_at`` still does:
making the publish update HOT is the performance work that follows). The topic is
kept because ``ELS_TOPIC_OUT_*`` may send a row elsewhere than ``topic`` says, and may
change between the publish and the audit.

``els.mark_outbox_published`` changes its signature (the coordinates are required):
an older relay calls the one-argument version, which no longer exists, and waits
(42883 is a deployment fault) instead of marking rows without proof. The rollback
brings that version back.
"""

from yoyo import step

__depends__ = {"0004_deadlines_and_retention"}

CREATE = """
SET LOCAL ROLE els_owner;
ALTER TABLE els.event_outbox
    ADD COLUMN kafka_topic text,
    ADD COLUMN kafka_partition integer,
    ADD COLUMN kafka_offset bigint,
    ADD COLUMN redelivered_at timestamptz,
    ADD CONSTRAINT event_outbox_delivery_coordinates CHECK (
        (kafka_topic IS NULL) = (kafka_offset IS NULL)
        AND (kafka_partition IS NULL) = (kafka_offset IS NULL)
        AND (kafka_offset IS NULL OR (published_at IS NOT NULL AND kafka_partition >= 0
                                      AND kafka_offset >= 0)));
COMMENT ON COLUMN els.event_outbox.kafka_topic IS
    'Topic the broker stored the published row in (its delivery report); NULL when '
    'unpublished or published before offsets were kept.';
COMMENT ON COLUMN els.event_outbox.kafka_partition IS
    'Partition the broker stored the published row in (its delivery report).';
COMMENT ON COLUMN els.event_outbox.kafka_offset IS
    'Offset the broker stored the published row at (its delivery report): the proof of '
    'delivery that worker.py audit reads back.';
COMMENT ON COLUMN els.event_outbox.redelivered_at IS
    'When worker.py audit last found the row missing from its topic and produced it again.';
"""

DROP = """
SET LOCAL ROLE els_owner;
DROP FUNCTION IF EXISTS els.mark_outbox_published(bigint[], text[], integer[], bigint[]);
DROP FUNCTION IF EXISTS els.record_outbox_redelivery(bigint[], text[], integer[], bigint[]);
DROP FUNCTION IF EXISTS els.outbox_published_since(interval);
DROP FUNCTION IF EXISTS els.outbox_envelopes(bigint[]);
DROP FUNCTION IF EXISTS els._check_delivery_coordinates(bigint[], text[], integer[], bigint[]);
-- the previous release's relay marks rows without coordinates
CREATE FUNCTION els.mark_outbox_published(p_ids bigint[])
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
REVOKE ALL ON FUNCTION els.mark_outbox_published(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.mark_outbox_published(bigint[]) TO els_worker;
ALTER TABLE els.event_outbox
    DROP CONSTRAINT event_outbox_delivery_coordinates,
    DROP COLUMN kafka_topic, DROP COLUMN kafka_partition, DROP COLUMN kafka_offset,
    DROP COLUMN redelivered_at;
"""

steps = [step(CREATE, DROP)]
