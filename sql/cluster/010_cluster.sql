-- The PL/Proxy cluster of the partitions (SPEC 9), in every partition and in the proxy:
-- the SQL/MED server els_partitions (one connection string per partition, in partition
-- order) and, for the essay-id claims of sql/046_essay_claims.sql, the remote calls a
-- partition makes to its peers. Loaded by worker.py migrate (els_worker/partitions.py)
-- as a superuser: PL/Proxy is an untrusted language, and a server needs its wrapper.

-- (Re)defines the server: p_connstrs[i] is partition i - 1 (libpq keyword form,
-- without user and password, which go into the user mapping), and grants its use to
-- els_owner, whose SECURITY DEFINER functions make the calls.
CREATE OR REPLACE FUNCTION els_cluster.define(p_connstrs text[], p_user text, p_password text)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    DROP SERVER IF EXISTS els_partitions CASCADE;
    EXECUTE format('CREATE SERVER els_partitions FOREIGN DATA WRAPPER plproxy OPTIONS (%s)',
                   (SELECT string_agg(format('p%s %L', c.i - 1, c.connstr), ', ' ORDER BY c.i)
                      FROM unnest(p_connstrs) WITH ORDINALITY AS c(connstr, i)));
    EXECUTE format('CREATE USER MAPPING FOR PUBLIC SERVER els_partitions OPTIONS (%s)',
                   concat_ws(', ', format('user %L', p_user),
                             CASE WHEN p_password IS NOT NULL THEN format('password %L', p_password) END));
    GRANT USAGE ON FOREIGN SERVER els_partitions TO els_owner;
END
$fn$;

-- The claims of a registration on the partitions its essay ids map to.
CREATE OR REPLACE FUNCTION els_cluster.claim_essays(batch_ids text[], essay_ids text[],
                                                    owner_partition integer, owner_xid bigint)
RETURNS TABLE (essay_id text, batch_id text, verdict text, owner_batch_id text, purged boolean)
LANGUAGE plproxy AS $fn$
    CLUSTER 'els_partitions';
    SPLIT batch_ids, essay_ids;
    RUN ON els.key_hash(essay_ids);
    TARGET els.claim_essays;
$fn$;

-- The verdict on a claim, asked of the partition that registered it.
CREATE OR REPLACE FUNCTION els_cluster.claim_verdict(owner_partition integer, batch_id text,
                                                     essay_id text, owner_xid bigint)
RETURNS TABLE (verdict text, purged boolean)
LANGUAGE plproxy AS $fn$
    CLUSTER 'els_partitions';
    RUN ON owner_partition;
    SELECT * FROM els.claim_verdict(batch_id, essay_id, owner_xid);
$fn$;

-- Releases a rejected registration's claims where they are.
CREATE OR REPLACE FUNCTION els_cluster.release_claims(batch_ids text[], essay_ids text[], owner_xid bigint)
RETURNS SETOF integer
LANGUAGE plproxy AS $fn$
    CLUSTER 'els_partitions';
    SPLIT batch_ids, essay_ids;
    RUN ON els.key_hash(essay_ids);
    TARGET els.release_claims;
$fn$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA els_cluster FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA els_cluster TO els_owner;
