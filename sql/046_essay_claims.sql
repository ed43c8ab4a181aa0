-- One batch per essay id across partitions, and forever (SPEC 9 and 10).
--
-- In one database the slot's primary key and the tombstones decide ELC02 (030, 045).
-- Behind the PL/Proxy proxy a batch's slots live on its own partition, so two
-- partitions could each accept the same essay id. Each essay id therefore has a claim
-- (els.essay_claim) on the partition that els.key_hash(essay_id) maps it to, taken by
-- the registering transaction before it commits:
--
--   * the claim is written by its own short transaction on the claim partition
--     (PL/Proxy commits each remote call), as *pending*, naming the registering
--     transaction (its partition and xid8);
--   * whoever later meets a pending claim of another batch asks the owner's partition
--     (els.claim_verdict): the owner's transaction still running is *busy* (the caller
--     retries: SQLSTATE 40001, an operational fault, as waiting on a row lock would be
--     in one database); committed with the batch's slot or tombstone is *held* (ELC02,
--     and the claim is marked held); anything else (aborted, crashed, or a rejected
--     registration's subtransaction) is *stale*, and the claim passes to the caller;
--   * a registration rejected after claiming releases what it claimed
--     (els.release_claims); a crash leaves a pending claim that the next claimant, or
--     els.reap_claims within its interval, resolves.
-- The claims never decide on their own what one database would decide differently:
-- the owner's commit of its slot, read on its partition, is the only proof of
-- ownership.
--
-- els_cluster.* are PL/Proxy functions that worker.py migrate creates in partitions
-- only (els_worker/partitions.py); the bridges below call them by a constant EXECUTE
-- because a single database has no such schema, and never reaches these calls.

-- The claims of p_batch_ids[i] on p_essay_ids[i] (this partition's share), for the
-- transaction p_owner_xid of partition p_owner_partition. One row per essay id:
-- verdict claimed (new, or passed on from a stale claim), own (this batch's already),
-- held (another batch's: owner_batch_id, purged) or busy (another batch's registration
-- is in flight).
CREATE OR REPLACE FUNCTION els.claim_essays(batch_ids text[], essay_ids text[],
                                            owner_partition integer, owner_xid bigint)
RETURNS TABLE (essay_id text, batch_id text, verdict text, owner_batch_id text, purged boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_xid xid8 := owner_xid::text::xid8;
    v_new text[];
    v_claim record;
    v_verdict jsonb;
BEGIN
    WITH ins AS (
        INSERT INTO els.essay_claim AS c (essay_id, batch_id, owner_partition, owner_xid)
        SELECT w.essay_id, w.batch_id, claim_essays.owner_partition, v_xid
          FROM unnest(batch_ids, essay_ids) AS w(batch_id, essay_id)
         ORDER BY w.essay_id
        ON CONFLICT DO NOTHING
        RETURNING c.essay_id)
    SELECT coalesce(array_agg(ins.essay_id), '{}') INTO v_new FROM ins;
    RETURN QUERY SELECT n.id, w.batch_id, 'claimed'::text, w.batch_id, false
                   FROM unnest(v_new) AS n(id)
                   JOIN unnest(batch_ids, essay_ids) AS w(batch_id, essay_id) ON w.essay_id = n.id;
    FOR v_claim IN
        SELECT w.batch_id AS wanted_by, c.essay_id, c.batch_id, c.owner_partition, c.owner_xid
          FROM unnest(batch_ids, essay_ids) AS w(batch_id, essay_id)
          JOIN els.essay_claim AS c ON c.essay_id = w.essay_id
         WHERE w.essay_id <> ALL (v_new)
         ORDER BY c.essay_id
           FOR UPDATE OF c
    LOOP
        IF v_claim.batch_id = v_claim.wanted_by THEN
            -- this batch's: an earlier attempt (a redelivery after a crash) or a repair
            UPDATE els.essay_claim AS c
               SET owner_partition = claim_essays.owner_partition, owner_xid = v_xid
             WHERE c.essay_id = v_claim.essay_id AND c.owner_xid IS NOT NULL;
            RETURN QUERY SELECT v_claim.essay_id, v_claim.wanted_by, 'own'::text, v_claim.batch_id, false;
            CONTINUE;
        END IF;
        IF v_claim.owner_xid = v_xid AND v_claim.owner_partition = claim_essays.owner_partition THEN
            -- an earlier registration of the same transaction took it first
            v_verdict := '{"verdict": "held", "purged": false}';
        ELSE
            v_verdict := els._verdict_across(v_claim.owner_partition, v_claim.batch_id,
                                             v_claim.essay_id, v_claim.owner_xid::text::bigint);
        END IF;
        IF v_verdict ->> 'verdict' = 'stale' AND v_claim.owner_xid IS NOT NULL THEN
            UPDATE els.essay_claim AS c
               SET batch_id = v_claim.wanted_by, owner_partition = claim_essays.owner_partition,
                   owner_xid = v_xid, claimed_at = now()
             WHERE c.essay_id = v_claim.essay_id;
            RETURN QUERY SELECT v_claim.essay_id, v_claim.wanted_by, 'claimed'::text,
                                v_claim.wanted_by, false;
        ELSIF v_verdict ->> 'verdict' = 'busy' THEN
            RETURN QUERY SELECT v_claim.essay_id, v_claim.wanted_by, 'busy'::text, v_claim.batch_id, false;
        ELSE
            UPDATE els.essay_claim AS c SET owner_xid = NULL
             WHERE c.essay_id = v_claim.essay_id AND c.owner_xid IS NOT NULL;
            RETURN QUERY SELECT v_claim.essay_id, v_claim.wanted_by, 'held'::text, v_claim.batch_id,
                                coalesce((v_verdict ->> 'purged')::boolean, false);
        END IF;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION els.claim_essays(text[], text[], integer, bigint) IS
    'Claims essay ids (this partition''s share) for registering batches; per id: claimed, own, '
    'held (another batch owns it) or busy (another registration is in flight). Called through PL/Proxy.';

-- On the owner's partition: is p_batch_id's claim on p_essay_id, taken by transaction
-- p_owner_xid (NULL: known committed), held (the batch has the slot, or its tombstone
-- the id: purged), busy (the transaction is still running) or stale? The status is read
-- before the rows, each statement with its own snapshot, so a commit in between is
-- seen by the second.
CREATE OR REPLACE FUNCTION els.claim_verdict(batch_id text, essay_id text, owner_xid bigint)
RETURNS TABLE (verdict text, purged boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_status text := CASE WHEN owner_xid IS NULL THEN 'committed'
                          ELSE pg_xact_status(owner_xid::text::xid8) END;
BEGIN
    IF v_status = 'in progress' THEN
        RETURN QUERY SELECT 'busy'::text, false;
    ELSIF EXISTS (SELECT FROM els.essay_slot AS s
                   WHERE s.essay_id = claim_verdict.essay_id AND s.batch_id = claim_verdict.batch_id) THEN
        RETURN QUERY SELECT 'held'::text, false;
    ELSIF EXISTS (SELECT FROM els.batch_tombstone AS b
                   WHERE b.batch_id = claim_verdict.batch_id
                     AND claim_verdict.essay_id = ANY (b.essay_ids)) THEN
        RETURN QUERY SELECT 'held'::text, true;
    ELSE
        RETURN QUERY SELECT 'stale'::text, false;
    END IF;
END
$fn$;
COMMENT ON FUNCTION els.claim_verdict(text, text, bigint) IS
    'On a batch''s partition: its claim on an essay id is held, busy (its transaction runs) or stale.';

-- Drops the claims that transaction p_owner_xid took for p_batch_ids[i] on
-- p_essay_ids[i] and that are still pending (a held claim is never released).
CREATE OR REPLACE FUNCTION els.release_claims(batch_ids text[], essay_ids text[], owner_xid bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_released integer;
BEGIN
    DELETE FROM els.essay_claim AS c
     USING unnest(batch_ids, essay_ids) AS w(batch_id, essay_id)
     WHERE c.essay_id = w.essay_id AND c.batch_id = w.batch_id
       AND c.owner_xid = release_claims.owner_xid::text::xid8;
    GET DIAGNOSTICS v_released = ROW_COUNT;
    RETURN v_released;
END
$fn$;
COMMENT ON FUNCTION els.release_claims(text[], text[], bigint) IS
    'Releases the pending claims a rejected registration took. Called through PL/Proxy.';

-- Resolves this partition's claims pending for at least p_older_than: held ones are
-- marked held, stale ones (their registration crashed or was rejected) deleted, busy
-- ones left. So no claim of a registration that never committed outlives it by more
-- than the interval the worker's maintenance calls this with. Returns
-- {"claims_held", "claims_released", "claims_in_flight"} (all 0 in a single database).
CREATE OR REPLACE FUNCTION els.reap_claims(older_than interval)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_claim record;
    v_verdict text;
    v_held integer := 0;
    v_released integer := 0;
    v_busy integer := 0;
BEGIN
    FOR v_claim IN
        SELECT c.essay_id, c.batch_id, c.owner_partition, c.owner_xid
          FROM els.essay_claim AS c
         WHERE c.owner_xid IS NOT NULL AND c.claimed_at <= now() - older_than
         ORDER BY c.claimed_at
         LIMIT 10000
    LOOP
        v_verdict := els._verdict_across(v_claim.owner_partition, v_claim.batch_id, v_claim.essay_id,
                                         v_claim.owner_xid::text::bigint) ->> 'verdict';
        IF v_verdict = 'held' THEN
            UPDATE els.essay_claim AS c SET owner_xid = NULL
             WHERE c.essay_id = v_claim.essay_id AND c.owner_xid = v_claim.owner_xid;
            v_held := v_held + 1;
        ELSIF v_verdict = 'stale' THEN
            DELETE FROM els.essay_claim AS c
             WHERE c.essay_id = v_claim.essay_id AND c.owner_xid = v_claim.owner_xid;
            v_released := v_released + 1;
        ELSE
            v_busy := v_busy + 1;
        END IF;
    END LOOP;
    RETURN jsonb_build_object('claims_held', v_held, 'claims_released', v_released,
                              'claims_in_flight', v_busy);
END
$fn$;
COMMENT ON FUNCTION els.reap_claims(interval) IS
    'Resolves essay-id claims pending longer than older_than: held ones kept, stale ones released.';

-- The bridges to the other partitions (els_cluster, PL/Proxy): see the top of the file.
-- Each answers JSON, so that the constant EXECUTE has no row type to declare.

-- {"verdict", "purged"} of els.claim_verdict on the owner's partition.
CREATE OR REPLACE FUNCTION els._verdict_across(p_owner_partition integer, p_batch_id text,
                                               p_essay_id text, p_owner_xid bigint)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_verdict jsonb;
BEGIN
    PERFORM 'PRAGMA:disable:check';  -- els_cluster exists in partitions only
    EXECUTE 'SELECT to_jsonb(v) FROM els_cluster.claim_verdict($1, $2, $3, $4) AS v'
       INTO v_verdict USING p_owner_partition, p_batch_id, p_essay_id, p_owner_xid;
    RETURN v_verdict;
END
$fn$;

-- The rows of els.claim_essays on the partitions the essay ids map to, as a JSON array.
CREATE OR REPLACE FUNCTION els._claims_across(p_batch_ids text[], p_essay_ids text[])
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_claims jsonb;
BEGIN
    PERFORM 'PRAGMA:disable:check';  -- els_cluster exists in partitions only
    EXECUTE 'SELECT coalesce(jsonb_agg(to_jsonb(c)), ''[]'') FROM els_cluster.claim_essays($1, $2, $3, $4) AS c'
       INTO v_claims
      USING p_batch_ids, p_essay_ids, (SELECT p.partition_no FROM els.partition_self AS p),
            pg_current_xact_id()::text::bigint;
    RETURN v_claims;
END
$fn$;

CREATE OR REPLACE FUNCTION els._release_across(p_batch_ids text[], p_essay_ids text[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM 'PRAGMA:disable:check';  -- els_cluster exists in partitions only
    EXECUTE 'SELECT sum(n) FROM els_cluster.release_claims($1, $2, $3) AS n'
        USING p_batch_ids, p_essay_ids, pg_current_xact_id()::text::bigint;
END
$fn$;

-- Claims the essay ids of p_batch_ids[i] (p_essay_ids[i]) across the partitions, in a
-- partition (a single database has its slot key and returns at once). Another batch
-- owning one: what was claimed is released and ELC02 raised, its DETAIL naming the
-- first such id (by id) and its owner; another registration in flight: released, and
-- 40001 raised so that the caller retries it as it would a serialization failure.
CREATE OR REPLACE FUNCTION els._claim_essays(p_batch_ids text[], p_essay_ids text[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_conflict record;
BEGIN
    IF NOT EXISTS (SELECT FROM els.partition_self) THEN
        RETURN;
    END IF;
    SELECT c.essay_id, c.verdict, c.owner_batch_id, c.purged INTO v_conflict
      FROM jsonb_to_recordset(els._claims_across(p_batch_ids, p_essay_ids))
           AS c(essay_id text, verdict text, owner_batch_id text, purged boolean)
     WHERE c.verdict IN ('held', 'busy')
     ORDER BY c.verdict = 'busy', c.essay_id
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM els._release_across(p_batch_ids, p_essay_ids);
    IF v_conflict.verdict = 'busy' THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = format('essay id %s is being registered by batch %s; retry',
                             v_conflict.essay_id, v_conflict.owner_batch_id);
    END IF;
    PERFORM els._reject('ELC02', 'an essay id already belongs to another batch',
                        els._essay_owner_detail(v_conflict.essay_id, v_conflict.owner_batch_id,
                                                v_conflict.purged));
END
$fn$;

REVOKE ALL ON FUNCTION els.claim_essays(text[], text[], integer, bigint),
    els.claim_verdict(text, text, bigint), els.release_claims(text[], text[], bigint),
    els.reap_claims(interval), els._verdict_across(integer, text, text, bigint),
    els._claims_across(text[], text[]), els._release_across(text[], text[]),
    els._claim_essays(text[], text[]) FROM PUBLIC;
-- the peers' calls arrive as the role of the proxy's user mapping, a member of els_worker
GRANT EXECUTE ON FUNCTION els.claim_essays(text[], text[], integer, bigint),
    els.claim_verdict(text, text, bigint), els.release_claims(text[], text[], bigint),
    els.reap_claims(interval) TO els_worker;
