-- els.provision_content(event jsonb): EssayContentProvisioned -> the text fills
-- the batch's lowest-numbered empty slot, or waits as pending until the batch
-- is registered, or is kept as excess when no slot is empty. Idempotent per
-- (batch, text_storage_id): the content ledger has one row per text, so a
-- redelivery is found with one primary-key probe and changes nothing.
--
-- Content for a batch purged by els.purge_history (a tombstone, no slots) is
-- excess, as for any complete batch (SPEC section 10); the tombstone notes the
-- late arrival so that the next purge deletes the row again.

-- The rules are applied set-based by els._apply_items (035_apply_events.sql) for
-- every content and failure of a micro-batch; els.provision_content is a call of
-- that core with one event.

-- The DBA- and test-facing call of SPEC 3: the set-based core with one event.
CREATE OR REPLACE FUNCTION els.provision_content(event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN els._apply_one('provision_content', event);
END
$fn$;

COMMENT ON FUNCTION els.provision_content(jsonb) IS
    'EssayContentProvisioned -> fills the lowest empty slot. Outcomes: pending, assigned, '
    'duplicate, excess. Errors: ELV01-ELV03.';
REVOKE ALL ON FUNCTION els.provision_content(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.provision_content(jsonb) TO els_worker;
