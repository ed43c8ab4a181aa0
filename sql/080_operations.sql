-- Operations for DBAs (SPEC section 8): inspect one batch, list stuck batches,
-- re-drive a batch. All are safe to call at any time: the report and the view
-- only read, and reconcile_batch takes the same per-batch lock as the ingest
-- functions and is idempotent. Closing a batch by its deadline and purging history
-- (SPEC section 10) are in 090_deadlines.sql and 095_retention.sql; the report and
-- the view show their traces (completion_reason, timed-out slots, tombstones).

CREATE OR REPLACE VIEW els.stuck_batches AS
SELECT t.batch_id,
       t.registered_at,
       now() - t.registered_at AS age,
       t.expected_count,
       t.class_type,
       t.course_code,
       count(s.essay_id) AS slots,
       count(s.essay_id) FILTER (WHERE s.status = 'ready_for_processing') AS ready,
       count(s.essay_id) FILTER (WHERE s.status = 'content_ingestion_failed') AS failed,
       count(s.essay_id) FILTER (WHERE s.status = 'uploaded') AS empty,
       (SELECT count(*) FROM els.essay_content AS c
         WHERE c.batch_id = t.batch_id AND c.disposition = 'pending')
     + (SELECT count(*) FROM els.validation_failure AS f
         WHERE f.batch_id = t.batch_id AND f.disposition = 'pending') AS pending_items,
       greatest(t.registered_at, max(s.filled_at)) AS last_activity_at
  FROM els.batch_tracker AS t
  LEFT JOIN els.essay_slot AS s ON s.batch_id = t.batch_id
 WHERE t.completed_at IS NULL
 GROUP BY t.batch_id
 ORDER BY t.registered_at, t.batch_id;
COMMENT ON VIEW els.stuck_batches IS
    'Registered batches that are not complete, oldest first, with their slot counts. '
    'slots = 0 or pending_items > 0 means an older writer left the batch half-done: '
    'run els.reconcile_batch(batch_id). last_activity_at: registration or the last slot filled '
    'or failed. To give up on the missing content: els.close_batch(batch_id) (or let the '
    'deadline, els.close_overdue_batches, do it).';

-- The stuck batches older than p_min_age as one JSON array, for the worker's
-- /health/batches endpoint (the worker role cannot read the view itself).
CREATE OR REPLACE FUNCTION els.stuck_batch_list(p_min_age interval DEFAULT '15 minutes',
                                                p_limit integer DEFAULT 100)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'batch_id', b.batch_id, 'registered_at', b.registered_at,
               'age_seconds', round(extract(epoch FROM b.age)), 'expected_count', b.expected_count,
               'ready', b.ready, 'failed', b.failed, 'empty', b.empty,
               'pending_items', b.pending_items) ORDER BY b.registered_at, b.batch_id), '[]'::jsonb)
      FROM (SELECT * FROM els.stuck_batches AS sb WHERE sb.age >= p_min_age LIMIT p_limit) AS b;
END;

CREATE OR REPLACE FUNCTION els.batch_report(p_batch_id text)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT jsonb_build_object(
        'batch_id', p_batch_id,
        'registered', t.batch_id IS NOT NULL OR b.batch_id IS NOT NULL,
        'purged', b.batch_id IS NOT NULL,
        'tracker', CASE
            WHEN t.batch_id IS NOT NULL THEN jsonb_build_object(
                'expected_count', t.expected_count, 'course_code', t.course_code,
                'user_id', t.user_id, 'org_id', t.org_id, 'class_id', t.class_id,
                'class_type', t.class_type, 'correlation_id', t.correlation_id,
                'registered_at', t.registered_at, 'completed_at', t.completed_at,
                'completion_reason', t.completion_reason)
            WHEN b.batch_id IS NOT NULL THEN jsonb_build_object(
                'expected_count', b.expected_count, 'course_code', b.course_code,
                'user_id', b.user_id, 'org_id', b.org_id, 'class_id', b.class_id,
                'class_type', b.class_type, 'correlation_id', b.correlation_id,
                'registered_at', b.registered_at, 'completed_at', b.completed_at,
                'completion_reason', b.completion_reason) END,
        'complete', t.completed_at IS NOT NULL OR b.batch_id IS NOT NULL,
        'tombstone', CASE WHEN b.batch_id IS NOT NULL THEN jsonb_build_object(
            'purged_at', b.purged_at, 'filled_count', b.filled_count, 'failed_count', b.failed_count,
            'timed_out_count', b.timed_out_count, 'last_late_item_at', b.last_late_item_at) END,
        'slot_counts', (SELECT coalesce(jsonb_object_agg(x.status, x.n), '{}'::jsonb)
                          FROM (SELECT s.status, count(*) AS n FROM els.essay_slot AS s
                                 WHERE s.batch_id = p_batch_id GROUP BY s.status) AS x),
        'slots_timed_out', (SELECT count(*) FROM els.essay_slot AS s
                             WHERE s.batch_id = p_batch_id AND s.failure_code = 'CONTENT_TIMEOUT'),
        'slots', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'slot_no', s.slot_no, 'essay_id', s.essay_id, 'status', s.status,
                      'text_storage_id', s.text_storage_id,
                      'failed_file_upload_id', s.failed_file_upload_id,
                      'failure_code', s.failure_code,
                      'filled_at', s.filled_at) ORDER BY s.slot_no), '[]'::jsonb)
                    FROM els.essay_slot AS s WHERE s.batch_id = p_batch_id),
        'pending_content', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'text_storage_id', c.text_storage_id, 'file_upload_id', c.file_upload_id,
                      'original_file_name', c.original_file_name, 'received_at', c.received_at)
                      ORDER BY c.arrival_seq), '[]'::jsonb)
                    FROM els.essay_content AS c
                   WHERE c.batch_id = p_batch_id AND c.disposition = 'pending'),
        'excess_content', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'text_storage_id', c.text_storage_id, 'file_upload_id', c.file_upload_id,
                      'original_file_name', c.original_file_name, 'received_at', c.received_at)
                      ORDER BY c.arrival_seq), '[]'::jsonb)
                    FROM els.essay_content AS c
                   WHERE c.batch_id = p_batch_id AND c.disposition = 'excess'),
        'failures', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'file_upload_id', f.file_upload_id, 'disposition', f.disposition,
                      'essay_id', f.essay_id, 'original_file_name', f.original_file_name,
                      'validation_error_code', f.validation_error_code,
                      'validation_error_detail', f.validation_error_detail,
                      'received_at', f.received_at) ORDER BY f.arrival_seq), '[]'::jsonb)
                    FROM els.validation_failure AS f WHERE f.batch_id = p_batch_id),
        'outbox', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'id', o.id, 'event_id', o.event_id, 'event_type', o.event_type,
                      'topic', o.topic, 'created_at', o.created_at,
                      'published', o.published_at IS NOT NULL, 'published_at', o.published_at)
                      ORDER BY o.id), '[]'::jsonb)
                    FROM els.event_outbox AS o WHERE o.message_key = p_batch_id))
      FROM (SELECT p_batch_id AS wanted) AS w
      LEFT JOIN els.batch_tracker AS t ON t.batch_id = w.wanted
      LEFT JOIN els.batch_tombstone AS b ON b.batch_id = w.wanted;
END;
COMMENT ON FUNCTION els.batch_report(text) IS
    'Everything known about one batch as one JSON document: tracker (with completion_reason), '
    'slot counts, timed-out slots, slots, pending and excess content, failures, outbox rows and '
    'whether they were published. A purged batch: purged true, tracker and counts from its '
    'tombstone, and only what arrived after the purge.';

-- Re-drives a registered batch: recreates missing slots from the tracker (a
-- tracker left without all its slots by an older writer; ELC02 if an essay id
-- now belongs to another batch), reconciles pending items,
-- completes the batch if nothing is empty. Idempotent: a second call finds
-- nothing to do.
CREATE OR REPLACE FUNCTION els.reconcile_batch(p_batch_id text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_tracker els.batch_tracker;
    v_slots_created integer;
    v_existing_slots bigint;
    v_reconciled record;
    v_completion record;
BEGIN
    PERFORM els._lock_batch(p_batch_id);
    SELECT * INTO v_tracker FROM els.batch_tracker AS t WHERE t.batch_id = p_batch_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('batch_id', p_batch_id, 'outcome', 'not_registered',
                                  'slots_created', 0, 'content_assigned', 0, 'failures_applied', 0,
                                  'excess', 0, 'complete', false, 'events', '[]'::jsonb);
    END IF;

    SELECT count(*) INTO v_existing_slots FROM els.essay_slot AS s WHERE s.batch_id = p_batch_id;
    v_slots_created := CASE WHEN v_existing_slots = v_tracker.expected_count THEN 0
                            ELSE els._create_slots(p_batch_id, v_tracker.essay_ids, v_existing_slots > 0)
                       END;

    v_reconciled := els._reconcile(p_batch_id);
    v_completion := els._complete_if_done(p_batch_id);
    RETURN jsonb_build_object(
        'batch_id', p_batch_id,
        'outcome', CASE WHEN v_slots_created > 0 OR v_reconciled.content_assigned > 0
                             OR v_reconciled.failures_applied > 0 OR v_reconciled.excess > 0
                             OR v_completion.event_id IS NOT NULL
                        THEN 'reconciled' ELSE 'unchanged' END,
        'slots_created', v_slots_created,
        'content_assigned', v_reconciled.content_assigned,
        'failures_applied', v_reconciled.failures_applied,
        'excess', v_reconciled.excess,
        'complete', v_completion.complete,
        'events', to_jsonb(v_reconciled.event_ids
                           || CASE WHEN v_completion.event_id IS NULL THEN '{}'::uuid[]
                                   ELSE ARRAY[v_completion.event_id] END));
END
$fn$;
COMMENT ON FUNCTION els.reconcile_batch(text) IS
    'Re-runs slot creation (if missing), reconciliation and completion for a registered batch.';

REVOKE ALL ON FUNCTION els.stuck_batch_list(interval, integer), els.batch_report(text),
    els.reconcile_batch(text) FROM PUBLIC;
GRANT SELECT ON els.stuck_batches TO els_readonly;
-- SPEC 6: els_worker gets the ingest and relay functions only. stuck_batch_list feeds its
-- /health/batches page (ids and ages, nothing personal); batch_report exposes user, org and
-- class ids, so it is for els_readonly; re-driving a batch is a DBA's act (owner only).
GRANT EXECUTE ON FUNCTION els.stuck_batch_list(interval, integer) TO els_readonly, els_worker;
GRANT EXECUTE ON FUNCTION els.batch_report(text) TO els_readonly;
