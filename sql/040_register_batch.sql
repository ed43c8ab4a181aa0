-- els.register_batch(event jsonb): BatchEssaysRegistered -> a tracker and one
-- empty slot per essay id, then reconciliation of whatever content or failures
-- arrived before the registration, then completion if nothing is left empty.
--
-- One call is one atomic step (SPEC section 3): the tracker and its slots are
-- written in the same transaction, so the old failure mode (tracker committed,
-- slots rolled back, retries failing forever on the tracker's key) cannot occur.
-- A tracker found without its slots, or with only some (left by that older
-- writer), is repaired: the missing slots are created now.
--
-- A batch purged by els.purge_history has no tracker any more but a tombstone
-- with its registration identity (SPEC section 10): its redelivered registration
-- is a duplicate (complete, nothing emitted), or ELC01 if the identity differs,
-- so that it can never register, and complete, a second time.

-- The rules are applied by els._apply_events (035_apply_events.sql), the one
-- implementation shared with els.apply_events: a registration is read and checked
-- with its micro-batch (els._read_events, 013_read_events.sql, before any lock), then
-- applied under its batch's lock with the other registrations of its round
-- (els._register_round, 045_register_round.sql). els.register_batch is a call of that
-- core with one event.

-- The DBA- and test-facing call of SPEC 3: the set-based core with one event;
-- a rejection is raised with the SQLSTATE, message and detail the core reports.
CREATE OR REPLACE FUNCTION els.register_batch(event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN els._apply_one('register_batch', event);
END
$fn$;

COMMENT ON FUNCTION els.register_batch(jsonb) IS
    'BatchEssaysRegistered -> tracker + slots, reconciliation of pending items, completion. '
    'Outcomes: registered, duplicate, repaired. Errors: ELV01-ELV06, ELC01, ELC02.';
REVOKE ALL ON FUNCTION els.register_batch(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.register_batch(jsonb) TO els_worker;
