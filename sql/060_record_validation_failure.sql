-- els.record_validation_failure(event jsonb): EssayValidationFailed -> the
-- failure closes the batch's lowest-numbered empty slot (status
-- content_ingestion_failed), or waits as pending until the batch is
-- registered, or is kept as excess when no slot is empty (no event: excess
-- failures have no consumer). Idempotent per (batch, file_upload_id).
--
-- A failure for a batch purged by els.purge_history (a tombstone, no slots) is
-- excess, as for any complete batch (SPEC section 10); the tombstone notes the
-- late arrival so that the next purge deletes the row again.

-- The rules are applied set-based by els._apply_items (035_apply_events.sql);
-- els.record_validation_failure is a call of that core with one event.

-- Reads and checks an EssayValidationFailed event (SPEC 2 and 4); touches no
-- table. item_key is the failure's identity within its batch: file_upload_id.
CREATE OR REPLACE FUNCTION els._read_failure(p_event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_env record;
    v_payload jsonb;
    v_batch_id text;
    v_file_upload_id text;
    v_original_file_name text;
    v_error_code text;
    v_error_detail jsonb;
    v_raw_file_storage_id text;
    v_file_size_bytes numeric;
    v_data_correlation_id text;
BEGIN
    v_env := els._unwrap_event(p_event, 'huleedu.file.essay.validation.failed.v1',
                               'essay.validation.failed');
    v_payload := v_env.payload;

    PERFORM els._require_fields(v_payload,
        ARRAY['entity_id', 'file_upload_id', 'original_file_name', 'validation_error_code']);
    v_batch_id := els._text_field(v_payload, 'entity_id');
    v_file_upload_id := els._text_field(v_payload, 'file_upload_id');
    v_original_file_name := els._text_field(v_payload, 'original_file_name', 1024);
    v_error_code := els._enum_field(v_payload, 'validation_error_code',
        ARRAY['EMPTY_CONTENT', 'CONTENT_TOO_SHORT', 'CONTENT_TOO_LONG', 'RAW_STORAGE_FAILED',
              'TEXT_EXTRACTION_FAILED', 'ENCRYPTED_FILE_UNSUPPORTED', 'UNKNOWN_VALIDATION_ERROR']);
    v_error_detail := els._object_field(v_payload, 'validation_error_detail');
    v_raw_file_storage_id := els._text_field(v_payload, 'raw_file_storage_id');
    v_file_size_bytes := els._integer_field(v_payload, 'file_size_bytes', 0);
    -- data.correlation_id is validated even when the envelope's wins.
    v_data_correlation_id := els._text_field(v_payload, 'correlation_id');
    RETURN jsonb_build_object(
        'batch_id', v_batch_id, 'item_key', v_file_upload_id,
        'file_upload_id', v_file_upload_id, 'original_file_name', v_original_file_name,
        'validation_error_code', v_error_code, 'validation_error_detail', v_error_detail,
        'raw_file_storage_id', v_raw_file_storage_id, 'file_size_bytes', v_file_size_bytes,
        'correlation_id', coalesce(v_env.correlation_id, v_data_correlation_id, gen_random_uuid()::text),
        'event_timestamp', els._timestamp_field(v_payload, 'timestamp'),
        'source_event_id', v_env.source_event_id);
END
$fn$;

-- The DBA- and test-facing call of SPEC 3: the set-based core with one event.
CREATE OR REPLACE FUNCTION els.record_validation_failure(event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN els._apply_one('record_validation_failure', event);
END
$fn$;

COMMENT ON FUNCTION els.record_validation_failure(jsonb) IS
    'EssayValidationFailed -> closes the lowest empty slot. Outcomes: pending, recorded, '
    'duplicate, excess. Errors: ELV01-ELV03.';
REVOKE ALL ON FUNCTION els._read_failure(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els.record_validation_failure(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.record_validation_failure(jsonb) TO els_worker;
