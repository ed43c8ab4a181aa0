-- els.record_validation_failure(event jsonb): EssayValidationFailed -> the
-- failure closes the batch's lowest-numbered empty slot (status
-- content_ingestion_failed), or waits as pending until the batch is
-- registered, or is kept as excess when no slot is empty (no event: excess
-- failures have no consumer). Idempotent per (batch, file_upload_id).
--
-- A failure for a batch purged by els.purge_history (a tombstone, no slots) is
-- excess, as for any complete batch (SPEC section 10); the tombstone notes the
-- late arrival so that the next purge deletes the row again.

CREATE OR REPLACE FUNCTION els.record_validation_failure(event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
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
    v_timestamp text;
    v_correlation_id text;
    v_data_correlation_id text;
    v_known record;
    v_essay_id text;
    v_outcome text;
    v_complete boolean := false;
    v_completion_event uuid;
    v_completion record;
    v_purged boolean := false;
BEGIN
    v_env := els._unwrap_event(event, 'huleedu.file.essay.validation.failed.v1',
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
    v_data_correlation_id := els._text_field(v_payload, 'correlation_id');
    -- data.correlation_id is validated even when the envelope's wins.
    v_correlation_id := coalesce(v_env.correlation_id, v_data_correlation_id, gen_random_uuid()::text);
    v_timestamp := els._timestamp_field(v_payload, 'timestamp');

    PERFORM els._lock_batch(v_batch_id);

    SELECT f.essay_id INTO v_known
      FROM els.validation_failure AS f
     WHERE f.batch_id = v_batch_id AND f.file_upload_id = v_file_upload_id;
    IF FOUND THEN
        RETURN jsonb_build_object(
            'batch_id', v_batch_id, 'outcome', 'duplicate', 'essay_id', v_known.essay_id,
            'complete', EXISTS (SELECT FROM els.batch_tracker AS t
                                 WHERE t.batch_id = v_batch_id AND t.completed_at IS NOT NULL)
                        OR EXISTS (SELECT FROM els.batch_tombstone AS b WHERE b.batch_id = v_batch_id),
            'events', '[]'::jsonb);
    END IF;

    -- Registered means "has slots", as in provision_content.
    SELECT s.essay_id INTO v_essay_id
      FROM els.essay_slot AS s
     WHERE s.batch_id = v_batch_id AND s.status = 'uploaded'
     ORDER BY s.slot_no
     LIMIT 1;
    v_outcome := CASE
        WHEN v_essay_id IS NOT NULL THEN 'recorded'
        WHEN EXISTS (SELECT FROM els.essay_slot AS s WHERE s.batch_id = v_batch_id) THEN 'excess'
        ELSE 'pending'
    END;
    -- No slot at all: not registered yet, or purged.
    IF v_outcome = 'pending' THEN
        UPDATE els.batch_tombstone AS b SET last_late_item_at = now() WHERE b.batch_id = v_batch_id;
        v_purged := FOUND;
        IF v_purged THEN
            v_outcome := 'excess';
        END IF;
    END IF;

    INSERT INTO els.validation_failure (
        batch_id, file_upload_id, disposition, essay_id, original_file_name,
        validation_error_code, validation_error_detail, raw_file_storage_id, file_size_bytes,
        correlation_id, source_event_id, event_timestamp, disposed_at)
    VALUES (
        v_batch_id, v_file_upload_id,
        (CASE v_outcome WHEN 'recorded' THEN 'assigned' ELSE v_outcome END)::els.item_disposition,
        v_essay_id, v_original_file_name, v_error_code, v_error_detail, v_raw_file_storage_id,
        v_file_size_bytes::bigint, v_correlation_id, v_env.source_event_id, v_timestamp,
        CASE WHEN v_outcome <> 'pending' THEN now() END);

    IF v_outcome = 'recorded' THEN
        UPDATE els.essay_slot AS s
           SET status = 'content_ingestion_failed', failed_file_upload_id = v_file_upload_id,
               filled_at = now()
         WHERE s.essay_id = v_essay_id;
    END IF;
    IF v_purged THEN
        v_complete := true;
    ELSIF v_outcome <> 'pending' THEN
        v_completion := els._complete_if_done(v_batch_id);
        v_complete := v_completion.complete;
        v_completion_event := v_completion.event_id;
    END IF;

    RETURN jsonb_build_object(
        'batch_id', v_batch_id,
        'outcome', v_outcome,
        'essay_id', v_essay_id,
        'complete', v_complete,
        'events', CASE WHEN v_completion_event IS NULL THEN '[]'::jsonb
                       ELSE jsonb_build_array(v_completion_event) END);
END
$fn$;

COMMENT ON FUNCTION els.record_validation_failure(jsonb) IS
    'EssayValidationFailed -> closes the lowest empty slot. Outcomes: pending, recorded, '
    'duplicate, excess. Errors: ELV01-ELV03.';
REVOKE ALL ON FUNCTION els.record_validation_failure(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.record_validation_failure(jsonb) TO els_worker;
