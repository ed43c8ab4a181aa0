-- els.provision_content(event jsonb): EssayContentProvisioned -> the text fills
-- the batch's lowest-numbered empty slot, or waits as pending until the batch
-- is registered, or is kept as excess when no slot is empty. Idempotent per
-- (batch, text_storage_id): the content ledger has one row per text, so a
-- redelivery is found with one primary-key probe and changes nothing.

CREATE OR REPLACE FUNCTION els.provision_content(event jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
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
    v_timestamp text;
    v_correlation_id text;
    v_data_correlation_id text;
    v_known record;
    v_essay_id text;
    v_outcome text;
    v_events uuid[];
    v_complete boolean := false;
    v_completion_event uuid;
    v_completion record;
BEGIN
    v_env := els._unwrap_event(event, 'huleedu.file.essay.content.provisioned.v1',
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
    v_data_correlation_id := els._text_field(v_payload, 'correlation_id');
    -- data.correlation_id is validated even when the envelope's wins.
    v_correlation_id := coalesce(v_env.correlation_id, v_data_correlation_id, gen_random_uuid()::text);
    v_timestamp := els._timestamp_field(v_payload, 'timestamp');

    PERFORM els._lock_batch(v_batch_id);

    SELECT c.essay_id INTO v_known
      FROM els.essay_content AS c
     WHERE c.batch_id = v_batch_id AND c.text_storage_id = v_text_storage_id;
    IF FOUND THEN
        RETURN jsonb_build_object(
            'batch_id', v_batch_id, 'outcome', 'duplicate', 'essay_id', v_known.essay_id,
            'complete', EXISTS (SELECT FROM els.batch_tracker AS t
                                 WHERE t.batch_id = v_batch_id AND t.completed_at IS NOT NULL),
            'events', '[]'::jsonb);
    END IF;

    -- A batch counts as registered once it has slots: content for a tracker
    -- left without slots by an older writer waits as pending for the repair.
    SELECT s.essay_id INTO v_essay_id
      FROM els.essay_slot AS s
     WHERE s.batch_id = v_batch_id AND s.status = 'uploaded'
     ORDER BY s.slot_no
     LIMIT 1;
    v_outcome := CASE
        WHEN v_essay_id IS NOT NULL THEN 'assigned'
        WHEN EXISTS (SELECT FROM els.essay_slot AS s WHERE s.batch_id = v_batch_id) THEN 'excess'
        ELSE 'pending'
    END;

    INSERT INTO els.essay_content (
        batch_id, text_storage_id, disposition, essay_id, file_upload_id, original_file_name,
        raw_file_storage_id, file_size_bytes, content_md5_hash, correlation_id,
        source_event_id, event_timestamp, disposed_at)
    VALUES (
        v_batch_id, v_text_storage_id, v_outcome::els.item_disposition, v_essay_id,
        v_file_upload_id, v_original_file_name, v_raw_file_storage_id, v_file_size_bytes::bigint,
        v_md5, v_correlation_id, v_env.source_event_id, v_timestamp,
        CASE WHEN v_outcome <> 'pending' THEN now() END);

    IF v_outcome = 'assigned' THEN
        UPDATE els.essay_slot AS s
           SET status = 'ready_for_processing', text_storage_id = v_text_storage_id, filled_at = now()
         WHERE s.essay_id = v_essay_id;
        v_events := els._emit_events(jsonb_build_array(jsonb_build_object(
            'event_type', 'EssaySlotAssigned', 'key', v_batch_id,
            'identity', jsonb_build_array(v_batch_id, v_essay_id, v_text_storage_id),
            'correlation_id', v_correlation_id,
            'data', jsonb_build_object(
                'batch_id', v_batch_id, 'essay_id', v_essay_id,
                'file_upload_id', v_file_upload_id, 'text_storage_id', v_text_storage_id,
                'original_file_name', v_original_file_name))));
        -- assigned, not SELECT ... FROM: a function in FROM goes through a tuplestore
        v_completion := els._complete_if_done(v_batch_id);
        v_complete := v_completion.complete;
        v_completion_event := v_completion.event_id;
        IF v_completion_event IS NOT NULL THEN
            v_events := v_events || v_completion_event;
        END IF;
    ELSIF v_outcome = 'excess' THEN
        v_events := els._emit_events(jsonb_build_array(jsonb_build_object(
            'event_type', 'ExcessContentProvisioned', 'key', v_batch_id,
            'identity', jsonb_build_array(v_batch_id, v_text_storage_id),
            'correlation_id', v_correlation_id,
            'data', jsonb_build_object(
                'batch_id', v_batch_id, 'original_file_name', v_original_file_name,
                'text_storage_id', v_text_storage_id, 'reason', 'NO_AVAILABLE_SLOT'))));
        v_completion := els._complete_if_done(v_batch_id);
        v_complete := v_completion.complete;
    END IF;

    RETURN jsonb_build_object(
        'batch_id', v_batch_id,
        'outcome', v_outcome,
        'essay_id', v_essay_id,
        'complete', v_complete,
        'events', to_jsonb(coalesce(v_events, '{}'::uuid[])));
END
$fn$;

COMMENT ON FUNCTION els.provision_content(jsonb) IS
    'EssayContentProvisioned -> fills the lowest empty slot. Outcomes: pending, assigned, '
    'duplicate, excess. Errors: ELV01-ELV03.';
REVOKE ALL ON FUNCTION els.provision_content(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION els.provision_content(jsonb) TO els_worker;
