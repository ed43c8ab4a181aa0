-- els.record_validation_failure(event jsonb): EssayValidationFailed -> the
-- failure closes the batch's lowest-numbered empty slot (status
-- content_ingestion_failed), or waits as pending until the batch is
-- registered, or is kept as excess when no slot is empty (no event: excess
-- failures have no consumer). Idempotent per (batch, file_upload_id).
--
-- A failure for a batch purged by els.purge_history (a tombstone, no slots) is
-- excess, as for any complete batch (SPEC section 10); the tombstone notes the
-- late arrival so that the next purge deletes the row again.

-- The rules are applied set-based by els._apply_items (035_apply_events.sql);
-- els.record_validation_failure is a call of that core with one event.

-- The DBA- and test-facing call of SPEC 3: the set-based core with one event.
CREATE OR REPLACE FUNCTION els.record_validation_failure(event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN els._apply_one('record_validation_failure', event);
END
$fn$;

COMMENT ON FUNCTION els.record_validation_failure(jsonb) IS
    'EssayValidationFailed -> closes the lowest empty slot. Outcomes: pending, recorded, '
    'duplicate, excess. Errors: ELV01-ELV03.';
REVOKE ALL ON FUNCTION els.record_validation_failure(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.record_validation_failure(jsonb) TO els_worker;
