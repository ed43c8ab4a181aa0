-- els.provision_content(event jsonb): EssayContentProvisioned -> the text fills
-- the batch's lowest-numbered empty slot, or waits as pending until the batch
-- is registered, or is kept as excess when no slot is empty. Idempotent per
-- (batch, text_storage_id): the content ledger has one row per text, so a
-- redelivery is found with one primary-key probe and changes nothing.
--
-- Content for a batch purged by els.purge_history (a tombstone, no slots) is
-- excess, as for any complete batch (SPEC section 10); the tombstone notes the
-- late arrival so that the next purge deletes the row again.

-- The rules are applied set-based by els._apply_items (035_apply_events.sql) for
-- every content and failure of a micro-batch; els.provision_content is a call of
-- that core with one event.

-- Reads and checks an EssayContentProvisioned event (SPEC 2 and 4); touches no
-- table. Returns the normalized fields the core works with (item_key is the
-- content's identity within its batch: text_storage_id).
CREATE OR REPLACE FUNCTION els._read_content(p_event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_env record;
    v_payload jsonb;
    v_batch_id text;
    v_text_storage_id text;
    v_file_upload_id text;
    v_original_file_name text;
    v_raw_file_storage_id text;
    v_file_size_bytes numeric;
    v_md5 text;
    v_data_correlation_id text;
BEGIN
    v_env := els._unwrap_event(p_event, 'huleedu.file.essay.content.provisioned.v1',
                               'essay.content.provisioned');
    v_payload := v_env.payload;

    PERFORM els._require_fields(v_payload,
        ARRAY['entity_id', 'text_storage_id', 'file_upload_id', 'original_file_name']);
    v_batch_id := els._text_field(v_payload, 'entity_id');
    v_text_storage_id := els._text_field(v_payload, 'text_storage_id');
    v_file_upload_id := els._text_field(v_payload, 'file_upload_id');
    v_original_file_name := els._text_field(v_payload, 'original_file_name', 1024);
    v_raw_file_storage_id := els._text_field(v_payload, 'raw_file_storage_id');
    v_file_size_bytes := els._integer_field(v_payload, 'file_size_bytes', 0);
    v_md5 := els._text_field(v_payload, 'content_md5_hash');
    -- data.correlation_id is validated even when the envelope's wins.
    v_data_correlation_id := els._text_field(v_payload, 'correlation_id');
    RETURN jsonb_build_object(
        'batch_id', v_batch_id, 'item_key', v_text_storage_id,
        'file_upload_id', v_file_upload_id, 'original_file_name', v_original_file_name,
        'raw_file_storage_id', v_raw_file_storage_id, 'file_size_bytes', v_file_size_bytes,
        'content_md5_hash', v_md5,
        'correlation_id', coalesce(v_env.correlation_id, v_data_correlation_id, gen_random_uuid()::text),
        'event_timestamp', els._timestamp_field(v_payload, 'timestamp'),
        'source_event_id', v_env.source_event_id);
END
$fn$;

-- The DBA- and test-facing call of SPEC 3: the set-based core with one event.
CREATE OR REPLACE FUNCTION els.provision_content(event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN els._apply_one('provision_content', event);
END
$fn$;

COMMENT ON FUNCTION els.provision_content(jsonb) IS
    'EssayContentProvisioned -> fills the lowest empty slot. Outcomes: pending, assigned, '
    'duplicate, excess. Errors: ELV01-ELV03.';
REVOKE ALL ON FUNCTION els._read_content(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els.provision_content(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.provision_content(jsonb) TO els_worker;
