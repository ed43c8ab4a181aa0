"""The essay ids of purged batches by a btree (SPEC 10: one batch per essay id, forever).

Registration asks, after writing its slots, whether any of its ids belonged to a purged
batch. Asked of ``batch_tombstone.essay_ids`` through its GIN index (0006), a probe with
the registration's ids as keys costs ~6 µs per key even on an empty index (59 ms of a
10,000-essay registration, docs/BENCHMARKS.md); ``els.retired_essay`` answers the same
question with one primary-key probe per id, as it does for the DETAIL of ELC02.
``els.purge_history`` writes a row per slot it deletes, in the statement that writes
the tombstone (which keeps its array: the batch's identity). The GIN index goes: nothing
asks it any more. The rows of existing tombstones are written here.
"""

from yoyo import step

__depends__ = {"0008_essay_claims"}

CREATE = """
SET LOCAL ROLE els_owner;
CREATE TABLE els.retired_essay (
    essay_id text PRIMARY KEY,
    batch_id text NOT NULL);
COMMENT ON TABLE els.retired_essay IS
    'The essay ids of purged batches (one row per slot purge_history deleted): never reused.';
INSERT INTO els.retired_essay (essay_id, batch_id)
SELECT DISTINCT ON (e.essay_id) e.essay_id, b.batch_id
  FROM els.batch_tombstone AS b CROSS JOIN LATERAL unnest(b.essay_ids) AS e(essay_id)
 ORDER BY e.essay_id, b.purged_at;
GRANT SELECT ON els.retired_essay TO els_readonly;
DROP INDEX els.batch_tombstone_essay_ids_idx;
"""

DROP = """
SET LOCAL ROLE els_owner;
CREATE INDEX batch_tombstone_essay_ids_idx ON els.batch_tombstone USING gin (essay_ids);
DROP TABLE els.retired_essay;
"""

steps = [step(CREATE, DROP)]
