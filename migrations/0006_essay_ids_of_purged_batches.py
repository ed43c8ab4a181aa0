"""One batch per essay id, forever (SPEC 10): the essay ids of purged batches are found
by an index.

``els.purge_history`` deletes a complete batch's slots and keeps its registration
identity, essay ids included, in ``els.batch_tombstone``. Until this migration nothing
looked there when another batch named one of those ids: the slot's primary key, the one
guard of ELC02, was gone with the slot, and the second batch registered. Registration
now also asks the tombstones (``els._essay_ids_purged_elsewhere``); this GIN index
answers ``essay_ids && <the new batch's ids>`` without reading the table. It grows only
when a batch is purged, never on the ingest path.
"""

from yoyo import step

__depends__ = {"0005_outbox_delivery_proof"}

CREATE = """
SET LOCAL ROLE els_owner;
CREATE INDEX batch_tombstone_essay_ids_idx ON els.batch_tombstone USING gin (essay_ids);
"""

DROP = """
SET LOCAL ROLE els_owner;
DROP INDEX els.batch_tombstone_essay_ids_idx;
"""

steps = [step(CREATE, DROP)]
