-- The mapping of SPEC 9, the one definition: a batch id (and, for the essay-id claims,
-- an essay id) goes to partition key_hash(key) & (partition_count - 1). PL/Proxy's
-- RUN ON applies that mask to the integer this returns. The first 32 bits of the key's
-- MD5 are fixed by the key alone, on every PostgreSQL version and platform (hashtext
-- is not promised to be), so the mapping never changes once data exists; partitions
-- grow as 2^k databases moved whole between servers (docs/SCALING.md).
-- This file is also loaded into the proxy database, so both sides map alike.
CREATE OR REPLACE FUNCTION els.key_hash(key text)
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN ('x' || substr(md5(key), 1, 8))::bit(32)::integer;
COMMENT ON FUNCTION els.key_hash(text) IS
    'The partition mapping (SPEC 9): key_hash(batch_id) & (partition_count - 1) is the batch''s partition.';

-- The partition a key maps to among p_count (a power of two).
CREATE OR REPLACE FUNCTION els.partition_of(key text, partition_count integer)
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN els.key_hash(key) & (partition_count - 1);
COMMENT ON FUNCTION els.partition_of(text, integer) IS
    'The partition (0 .. partition_count - 1) that a batch id or an essay id maps to.';

REVOKE ALL ON FUNCTION els.key_hash(text), els.partition_of(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.key_hash(text), els.partition_of(text, integer)
    TO els_worker, els_readonly;
