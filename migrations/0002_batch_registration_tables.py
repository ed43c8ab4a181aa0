"""Tables of batch registration: trackers, slots, content and failure ledgers, outbox.

Invariants of SPEC section 3 are constraints here, so that even a buggy caller
(or a DBA with a stray UPDATE) cannot break them:

- one tracker per batch, one slot per essay id (across all batches), slot
  numbers unique per batch;
- every content item of a batch is in exactly one ledger row whose
  disposition is pending, assigned or excess: a text_storage_id cannot be in
  two of these states because it has only one row;
- a slot holds at most one content and one content fills at most one slot,
  checked in both directions by foreign keys;
- a slot's status agrees with what fills it (check constraint);
- one completion event per batch, and event ids are unique.

Essay statuses exist once, as the enum els.essay_status (SPEC rule 6).
"""

from yoyo import step

__depends__ = {"0001_roles_and_schema"}

CREATE = r"""
SET LOCAL ROLE els_owner;

CREATE TYPE els.essay_status AS ENUM ('uploaded', 'ready_for_processing', 'content_ingestion_failed');
COMMENT ON TYPE els.essay_status IS
    'The one definition of essay slot statuses. uploaded = empty slot; ready_for_processing = '
    'filled with extracted text; content_ingestion_failed = closed by a validation failure.';

CREATE TYPE els.item_disposition AS ENUM ('pending', 'assigned', 'excess');
COMMENT ON TYPE els.item_disposition IS
    'Where a received content or failure stands: waiting for its batch, in a slot, or without one.';

-- Arrival order of content and failures: reconciliation takes each ledger's
-- pending items oldest first (content, then failures) and reports them so.
CREATE SEQUENCE els.arrival_seq AS bigint;

CREATE TABLE els.batch_tracker (
    batch_id            text        PRIMARY KEY CHECK (length(batch_id) BETWEEN 1 AND 255),
    expected_count      integer     NOT NULL CHECK (expected_count BETWEEN 1 AND 10000),
    essay_ids           text[]      NOT NULL CHECK (cardinality(essay_ids) = expected_count),
    course_code         text        NOT NULL
        CHECK (course_code IN ('ENG5', 'ENG6', 'ENG7', 'SV1', 'SV2', 'SV3')),
    user_id             text        NOT NULL,
    org_id              text,
    class_id            text,
    class_type          text        GENERATED ALWAYS AS
        (CASE WHEN class_id IS NULL THEN 'GUEST' ELSE 'REGULAR' END) STORED,
    student_prompt_ref  jsonb,
    metadata            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    correlation_id      text        NOT NULL,
    registration_event_id text,
    registered_at       timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz
);
COMMENT ON TABLE els.batch_tracker IS
    'One row per registered batch: its identity (batch id, ordered essay ids, count, course, '
    'user, org, class) and when it completed.';

CREATE TABLE els.essay_slot (
    essay_id            text        PRIMARY KEY CHECK (length(essay_id) BETWEEN 1 AND 255),
    batch_id            text        NOT NULL REFERENCES els.batch_tracker (batch_id),
    slot_no             integer     NOT NULL CHECK (slot_no >= 1),
    status              els.essay_status NOT NULL DEFAULT 'uploaded',
    text_storage_id     text,
    failed_file_upload_id text,
    filled_at           timestamptz,
    CONSTRAINT essay_slot_batch_slot_no_key UNIQUE (batch_id, slot_no),
    CONSTRAINT essay_slot_status_matches_filling CHECK (
        CASE status
            WHEN 'uploaded' THEN text_storage_id IS NULL AND failed_file_upload_id IS NULL
            WHEN 'ready_for_processing' THEN text_storage_id IS NOT NULL AND failed_file_upload_id IS NULL
            WHEN 'content_ingestion_failed' THEN text_storage_id IS NULL AND failed_file_upload_id IS NOT NULL
        END)
);
COMMENT ON TABLE els.essay_slot IS
    'One slot per essay id of a registered batch, numbered by the order of essay_ids.';
-- Finds a batch's lowest empty slot, and whether any is left, with one index probe.
CREATE INDEX essay_slot_empty_idx ON els.essay_slot (batch_id, slot_no) WHERE status = 'uploaded';

CREATE TABLE els.essay_content (
    batch_id            text        NOT NULL CHECK (length(batch_id) BETWEEN 1 AND 255),
    text_storage_id     text        NOT NULL CHECK (length(text_storage_id) BETWEEN 1 AND 255),
    disposition         els.item_disposition NOT NULL,
    essay_id            text,
    file_upload_id      text        NOT NULL,
    original_file_name  text        NOT NULL,
    raw_file_storage_id text,
    file_size_bytes     bigint      CHECK (file_size_bytes >= 0),
    content_md5_hash    text,
    correlation_id      text        NOT NULL,
    source_event_id     text,
    event_timestamp     text,
    arrival_seq         bigint      NOT NULL DEFAULT nextval('els.arrival_seq'),
    received_at         timestamptz NOT NULL DEFAULT now(),
    disposed_at         timestamptz,
    PRIMARY KEY (batch_id, text_storage_id),
    CONSTRAINT essay_content_one_per_slot UNIQUE (essay_id),
    CONSTRAINT essay_content_slot_fk FOREIGN KEY (essay_id) REFERENCES els.essay_slot (essay_id),
    CONSTRAINT essay_content_assigned_has_slot CHECK ((disposition = 'assigned') = (essay_id IS NOT NULL))
);
COMMENT ON TABLE els.essay_content IS
    'Every extracted text received for a batch, once per text_storage_id: pending (batch not '
    'registered yet), assigned (in slot essay_id) or excess (no empty slot).';
CREATE INDEX essay_content_pending_idx ON els.essay_content (batch_id, arrival_seq)
    WHERE disposition = 'pending';

ALTER TABLE els.essay_slot
    ADD CONSTRAINT essay_slot_content_fk FOREIGN KEY (batch_id, text_storage_id)
        REFERENCES els.essay_content (batch_id, text_storage_id);
-- A text fills at most one slot of its batch. Partial, so that registering a
-- batch does not write an index entry per (still empty) slot.
CREATE UNIQUE INDEX essay_slot_text_storage_id_key ON els.essay_slot (batch_id, text_storage_id)
    WHERE text_storage_id IS NOT NULL;

CREATE TABLE els.validation_failure (
    batch_id            text        NOT NULL CHECK (length(batch_id) BETWEEN 1 AND 255),
    file_upload_id      text        NOT NULL CHECK (length(file_upload_id) BETWEEN 1 AND 255),
    disposition         els.item_disposition NOT NULL,
    essay_id            text,
    original_file_name  text        NOT NULL,
    validation_error_code text      NOT NULL CHECK (validation_error_code IN (
        'EMPTY_CONTENT', 'CONTENT_TOO_SHORT', 'CONTENT_TOO_LONG', 'RAW_STORAGE_FAILED',
        'TEXT_EXTRACTION_FAILED', 'ENCRYPTED_FILE_UNSUPPORTED', 'UNKNOWN_VALIDATION_ERROR')),
    validation_error_detail jsonb,
    raw_file_storage_id text,
    file_size_bytes     bigint      CHECK (file_size_bytes >= 0),
    correlation_id      text        NOT NULL,
    source_event_id     text,
    event_timestamp     text,
    arrival_seq         bigint      NOT NULL DEFAULT nextval('els.arrival_seq'),
    received_at         timestamptz NOT NULL DEFAULT now(),
    disposed_at         timestamptz,
    PRIMARY KEY (batch_id, file_upload_id),
    CONSTRAINT validation_failure_one_per_slot UNIQUE (essay_id),
    CONSTRAINT validation_failure_slot_fk FOREIGN KEY (essay_id) REFERENCES els.essay_slot (essay_id),
    CONSTRAINT validation_failure_assigned_has_slot CHECK ((disposition = 'assigned') = (essay_id IS NOT NULL))
);
COMMENT ON TABLE els.validation_failure IS
    'Every validation failure received for a batch, once per file_upload_id: pending, assigned '
    '(closed slot essay_id) or excess (no empty slot to close).';
CREATE INDEX validation_failure_pending_idx ON els.validation_failure (batch_id, arrival_seq)
    WHERE disposition = 'pending';

ALTER TABLE els.essay_slot
    ADD CONSTRAINT essay_slot_failure_fk FOREIGN KEY (batch_id, failed_file_upload_id)
        REFERENCES els.validation_failure (batch_id, file_upload_id);

CREATE TABLE els.event_outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    topic           text        NOT NULL,
    message_key     text        NOT NULL,
    envelope        jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
COMMENT ON TABLE els.event_outbox IS
    'Transactional outbox: events written with the state change that caused them; the '
    'worker relay publishes them to Kafka and stamps published_at after delivery.';
CREATE INDEX event_outbox_unpublished_idx ON els.event_outbox (id) WHERE published_at IS NULL;
CREATE INDEX event_outbox_key_idx ON els.event_outbox (message_key);
CREATE UNIQUE INDEX event_outbox_one_completion_per_batch ON els.event_outbox (message_key)
    WHERE event_type = 'BatchContentProvisioningCompleted';

REVOKE ALL ON ALL TABLES IN SCHEMA els FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA els FROM PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA els TO els_readonly;
"""

DROP = """
SET LOCAL ROLE els_owner;
DROP TABLE els.event_outbox CASCADE;
ALTER TABLE els.essay_slot DROP CONSTRAINT essay_slot_content_fk, DROP CONSTRAINT essay_slot_failure_fk;
DROP TABLE els.validation_failure CASCADE;
DROP TABLE els.essay_content CASCADE;
DROP TABLE els.essay_slot CASCADE;
DROP TABLE els.batch_tracker CASCADE;
DROP SEQUENCE els.arrival_seq;
DROP TYPE els.item_disposition CASCADE;
DROP TYPE els.essay_status CASCADE;
"""

steps = [step(CREATE, DROP)]
