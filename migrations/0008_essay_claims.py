"""Partitions past one primary (SPEC 9): which partition a database is, and the essay-id
claim registry that keeps one batch per essay id across partitions.

``els.partition_self`` is empty in a single database. In a partition it holds its
number and the partition count (a power of two), written by ``worker.py migrate`` when
it builds the proxy (``els_worker/partitions.py``); registration asks for claims on
other partitions only when it holds a row.

``els.essay_claim`` holds, on the partition ``els.key_hash(essay_id)`` maps an essay id
to, the batch that owns it. A claim is *pending* while ``owner_xid`` names the
registering transaction on partition ``owner_partition``, and *held* (``owner_xid``
NULL) once that transaction is known to have committed the batch's slot. Claims are
never purged: one batch per essay id, forever (SPEC 10). The partial index finds the
pending ones for ``els.reap_claims``.
"""

from yoyo import step

__depends__ = {"0007_item_step_type"}

CREATE = """
SET LOCAL ROLE els_owner;
CREATE TABLE els.partition_self (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partition_no integer NOT NULL,
    partition_count integer NOT NULL,
    CONSTRAINT partition_self_power_of_two
        CHECK (partition_count > 0 AND partition_count & (partition_count - 1) = 0),
    CONSTRAINT partition_self_in_range CHECK (partition_no >= 0 AND partition_no < partition_count));
COMMENT ON TABLE els.partition_self IS
    'Empty in a single database; in a partition behind the PL/Proxy proxy, its number and the count.';
CREATE TABLE els.essay_claim (
    essay_id text PRIMARY KEY,
    batch_id text NOT NULL,
    owner_partition integer NOT NULL,
    owner_xid xid8,
    claimed_at timestamptz NOT NULL DEFAULT now());
COMMENT ON TABLE els.essay_claim IS
    'The batch that owns an essay id (on the partition the id maps to): pending while owner_xid '
    'names the registering transaction, held when NULL. Never purged.';
CREATE INDEX essay_claim_pending_idx ON els.essay_claim (claimed_at) WHERE owner_xid IS NOT NULL;
GRANT SELECT ON els.partition_self, els.essay_claim TO els_readonly;
"""

DROP = """
SET LOCAL ROLE els_owner;
DROP TABLE els.essay_claim;
DROP TABLE els.partition_self;
"""

steps = [step(CREATE, DROP)]
