"""The row type of a round's plan of content and failures (``els.item_step``).

``els._apply_items`` plans a round in two steps (``els._judge_items``: ledger and batch
state; ``els._place_items``: slots, outcomes, completion, event ids) and writes it in
three (rows, slot effects, outbox), each a function a reader can hold. They hand the
plan on as an array of this type: one value, unnested by each statement that reads it,
where a JSON document would be built and parsed again at every step. A type is schema,
not code (post-apply.py reloads functions and views only), hence this migration; the
functions that use it live in sql/034_item_plan.sql and sql/036_item_writes.sql.
"""

from yoyo import step

__depends__ = {"0006_essay_ids_of_purged_batches"}

CREATE = """
SET LOCAL ROLE els_owner;
CREATE TYPE els.item_step AS (
    -- the item as read (els._content_row, els._failure_row)
    ord integer, kind text, batch_id text, item_key text, file_upload_id text,
    original_file_name text, raw_file_storage_id text, file_size_bytes bigint,
    content_md5_hash text, correlation_id text, source_event_id text, event_timestamp text,
    validation_error_code text, validation_error_detail jsonb,
    -- judged: its ledger, its batch
    duplicate boolean, in_ledger boolean, known_essay_id text, take_no bigint,
    new_items bigint, tracked boolean, was_complete boolean, expected_count integer,
    has_slots boolean, purged boolean,
    -- placed
    outcome text, slot_essay_id text, result_essay_id text, completing boolean,
    complete boolean, announced boolean, own_event_id uuid);
COMMENT ON TYPE els.item_step IS
    'One content or failure of a round of els._apply_items: the item, its judgement and its place.';
"""

# CASCADE: the functions of sql/ that take it go with it; the previous release brings
# its own functions (which do not use it) when it is deployed
DROP = """
SET LOCAL ROLE els_owner;
DROP TYPE els.item_step CASCADE;
"""

steps = [step(CREATE, DROP)]
