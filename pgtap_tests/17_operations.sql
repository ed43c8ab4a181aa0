-- Operations (SPEC section 8) and the outbox relay API (SPEC section 5):
-- els.batch_report, the els.stuck_batches view and els.stuck_batch_list,
-- els.reconcile_batch (re-drive; idempotent), and els.claim_outbox,
-- els.mark_outbox_published, els.purge_outbox, els.outbox_backlog.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(67);

-- The outbox assertions below count rows: start from an empty outbox (this
-- file rolls back, so whatever was there is back afterwards).
DELETE FROM els.event_outbox;

CREATE FUNCTION pg_temp.content(p_batch text, p_text text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'text_storage_id', p_text,
                          'file_upload_id', 'upload-' || p_text, 'original_file_name', p_text || '.docx');
CREATE FUNCTION pg_temp.failure(p_batch text, p_upload text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'file_upload_id', p_upload, 'original_file_name', p_upload || '.pdf',
                          'validation_error_code', 'CONTENT_TOO_LONG', 'validation_error_detail', jsonb_build_object('limit', 5000));
CREATE FUNCTION pg_temp.batch(p_batch text, p_essays text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'expected_essay_count', cardinality(p_essays),
                          'essay_ids', to_jsonb(p_essays), 'course_code', 'ENG6', 'user_id', 'teacher',
                          'class_id', 'class-1', 'org_id', 'org-1', 'correlation_id', 'corr-' || p_batch);
CREATE FUNCTION pg_temp.ts() RETURNS jsonb LANGUAGE sql STABLE RETURN to_jsonb(now());
-- what the relay does once each row has its delivery report: topic 't', partition 0,
-- the row's position in p_ids as its offset
CREATE FUNCTION pg_temp.publish(p_ids bigint[]) RETURNS integer LANGUAGE sql VOLATILE
RETURN els.mark_outbox_published(
    p_ids, array_fill('t'::text, ARRAY[coalesce(cardinality(p_ids), 0)]),
    array_fill(0, ARRAY[coalesce(cardinality(p_ids), 0)]),
    ARRAY(SELECT g::bigint FROM generate_series(1, coalesce(cardinality(p_ids), 0)) AS g));
CREATE FUNCTION pg_temp.outbox_json(p_batch text) RETURNS jsonb LANGUAGE sql STABLE
RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', o.id, 'event_id', o.event_id, 'event_type', o.event_type, 'topic', o.topic,
                   'created_at', o.created_at, 'published', o.published_at IS NOT NULL,
                   'published_at', o.published_at) ORDER BY o.id), '[]')
          FROM els.event_outbox AS o WHERE o.message_key = p_batch);

-- ===========================================================================
-- batch_report
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch(pg_temp.batch('ops-report', ARRAY['or-1', 'or-2']));
    PERFORM els.provision_content(pg_temp.content('ops-report', 'rep-t1'));
    PERFORM els.record_validation_failure(pg_temp.failure('ops-report', 'rep-f1'));   -- completes
    PERFORM els.provision_content(pg_temp.content('ops-report', 'rep-t2'));           -- excess
    PERFORM els.record_validation_failure(pg_temp.failure('ops-report', 'rep-f2'));   -- excess
END $setup$;
SELECT is(els.batch_report('ops-report') - 'outbox',
    jsonb_build_object(
        'batch_id', 'ops-report',
        'registered', true,
        'purged', false,
        'tombstone', NULL,
        'slots_timed_out', 0,
        'complete', true,
        'tracker', jsonb_build_object(
            'expected_count', 2, 'course_code', 'ENG6', 'user_id', 'teacher', 'org_id', 'org-1',
            'class_id', 'class-1', 'class_type', 'REGULAR', 'correlation_id', 'corr-ops-report',
            'registered_at', pg_temp.ts(), 'completed_at', pg_temp.ts(),
            'completion_reason', 'all_slots_closed'),
        'slot_counts', '{"ready_for_processing": 1, "content_ingestion_failed": 1}'::jsonb,
        'slots', jsonb_build_array(
            jsonb_build_object('slot_no', 1, 'essay_id', 'or-1', 'status', 'ready_for_processing',
                               'text_storage_id', 'rep-t1', 'failed_file_upload_id', NULL, 'failure_code', NULL,
                               'filled_at', pg_temp.ts()),
            jsonb_build_object('slot_no', 2, 'essay_id', 'or-2', 'status', 'content_ingestion_failed',
                               'text_storage_id', NULL, 'failed_file_upload_id', 'rep-f1', 'failure_code', NULL,
                               'filled_at', pg_temp.ts())),
        'pending_content', '[]'::jsonb,
        'excess_content', jsonb_build_array(
            jsonb_build_object('text_storage_id', 'rep-t2', 'file_upload_id', 'upload-rep-t2',
                               'original_file_name', 'rep-t2.docx', 'received_at', pg_temp.ts())),
        'failures', jsonb_build_array(
            jsonb_build_object('file_upload_id', 'rep-f1', 'disposition', 'assigned', 'essay_id', 'or-2',
                               'original_file_name', 'rep-f1.pdf', 'validation_error_code', 'CONTENT_TOO_LONG',
                               'validation_error_detail', '{"limit": 5000}'::jsonb, 'received_at', pg_temp.ts()),
            jsonb_build_object('file_upload_id', 'rep-f2', 'disposition', 'excess', 'essay_id', NULL,
                               'original_file_name', 'rep-f2.pdf', 'validation_error_code', 'CONTENT_TOO_LONG',
                               'validation_error_detail', '{"limit": 5000}'::jsonb, 'received_at', pg_temp.ts()))),
    'batch_report (registered, complete): tracker, slot counts, slots, pending, excess, failures');
SELECT is(els.batch_report('ops-report') -> 'outbox', pg_temp.outbox_json('ops-report'),
          'batch_report: every outbox row of the batch with whether it was published');
SELECT is((SELECT array_agg(e ->> 'event_type') FROM jsonb_array_elements(els.batch_report('ops-report') -> 'outbox') AS e),
          ARRAY['EssaySlotAssigned', 'BatchContentProvisioningCompleted', 'ExcessContentProvisioned'],
          'batch_report: the outbox rows in order: slot event, completion, excess');

-- unregistered batch with early items
DO $setup$ BEGIN
    PERFORM els.provision_content(pg_temp.content('ops-early', 'early-t1'));
    PERFORM els.record_validation_failure(pg_temp.failure('ops-early', 'early-f1'));
END $setup$;
SELECT is(els.batch_report('ops-early'),
    jsonb_build_object(
        'batch_id', 'ops-early', 'registered', false, 'purged', false, 'tombstone', NULL,
        'slots_timed_out', 0, 'complete', false, 'tracker', NULL,
        'slot_counts', '{}'::jsonb, 'slots', '[]'::jsonb,
        'pending_content', jsonb_build_array(
            jsonb_build_object('text_storage_id', 'early-t1', 'file_upload_id', 'upload-early-t1',
                               'original_file_name', 'early-t1.docx', 'received_at', pg_temp.ts())),
        'excess_content', '[]'::jsonb,
        'failures', jsonb_build_array(
            jsonb_build_object('file_upload_id', 'early-f1', 'disposition', 'pending', 'essay_id', NULL,
                               'original_file_name', 'early-f1.pdf', 'validation_error_code', 'CONTENT_TOO_LONG',
                               'validation_error_detail', '{"limit": 5000}'::jsonb, 'received_at', pg_temp.ts())),
        'outbox', '[]'::jsonb),
    'batch_report (not registered): no tracker, the pending content and failure');
SELECT is(els.batch_report('ops-never-heard-of'),
    '{"batch_id": "ops-never-heard-of", "registered": false, "purged": false, "tombstone": null,
      "slots_timed_out": 0, "complete": false, "tracker": null,
      "slot_counts": {}, "slots": [], "pending_content": [], "excess_content": [], "failures": [], "outbox": []}'::jsonb,
    'batch_report (unknown batch): an empty report, not an error');
SELECT is(els.batch_report(NULL) ->> 'registered', 'false', 'batch_report(NULL): an empty report');
SELECT volatility_is('els', 'batch_report', ARRAY['text'], 'stable', 'batch_report only reads (STABLE)');

-- ===========================================================================
-- stuck_batches and stuck_batch_list
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch(pg_temp.batch('ops-stuck-new', ARRAY['sn-1', 'sn-2', 'sn-3']));
    PERFORM els.provision_content(pg_temp.content('ops-stuck-new', 'sn-t1'));
    PERFORM els.record_validation_failure(pg_temp.failure('ops-stuck-new', 'sn-f1'));
    PERFORM els.register_batch(pg_temp.batch('ops-stuck-old', ARRAY['so-1']));
END $setup$;
-- a tracker left without slots by an older writer, with content waiting for it
INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, class_id, correlation_id, registered_at)
VALUES ('ops-half', 2, ARRAY['oh-1', 'oh-2'], 'SV2', 'teacher', NULL, 'corr-half', now() - interval '3 hours');
SELECT is(els.provision_content(pg_temp.content('ops-half', 'half-t1')) ->> 'outcome', 'pending',
          'content for the slot-less tracker is pending');
SELECT is(els.record_validation_failure(pg_temp.failure('ops-half', 'half-f1')) ->> 'outcome', 'pending',
          'a failure for the slot-less tracker is pending');
UPDATE els.batch_tracker SET registered_at = now() - interval '2 hours' WHERE batch_id = 'ops-stuck-old';
UPDATE els.batch_tracker SET registered_at = now() - interval '5 minutes' WHERE batch_id = 'ops-stuck-new';

SELECT results_eq(
    $$SELECT batch_id, age, expected_count, class_type, course_code, slots, ready, failed, empty, pending_items
        FROM els.stuck_batches WHERE batch_id LIKE 'ops-%'$$,
    $$VALUES ('ops-half', interval '3 hours', 2, 'GUEST', 'SV2', 0::bigint, 0::bigint, 0::bigint, 0::bigint, 2::bigint),
             ('ops-stuck-old', interval '2 hours', 1, 'REGULAR', 'ENG6', 1, 0, 0, 1, 0),
             ('ops-stuck-new', interval '5 minutes', 3, 'REGULAR', 'ENG6', 3, 1, 1, 1, 0)$$,
    'stuck_batches: registered, not complete, oldest first, with slot counts and pending items (complete batches absent)');
SELECT is((SELECT registered_at FROM els.stuck_batches WHERE batch_id = 'ops-stuck-old'), now() - interval '2 hours',
          'stuck_batches: registered_at');
SELECT is(
    (SELECT jsonb_agg(e ORDER BY ord) FROM jsonb_array_elements(els.stuck_batch_list('1 hour')) WITH ORDINALITY AS x(e, ord)
      WHERE e ->> 'batch_id' LIKE 'ops-%'),
    jsonb_build_array(
        jsonb_build_object('batch_id', 'ops-half', 'registered_at', to_jsonb(now() - interval '3 hours'),
                           'age_seconds', 10800, 'expected_count', 2, 'ready', 0, 'failed', 0, 'empty', 0,
                           'pending_items', 2),
        jsonb_build_object('batch_id', 'ops-stuck-old', 'registered_at', to_jsonb(now() - interval '2 hours'),
                           'age_seconds', 7200, 'expected_count', 1, 'ready', 0, 'failed', 0, 'empty', 1,
                           'pending_items', 0)),
    'stuck_batch_list(1 hour): the stuck batches at least that old, oldest first, as JSON');
SELECT is(
    (SELECT count(*)::integer FROM jsonb_array_elements(els.stuck_batch_list('1 minute')) AS e
      WHERE e ->> 'batch_id' LIKE 'ops-%'), 3,
    'stuck_batch_list(1 minute) includes the 5-minute-old batch');
SELECT is(jsonb_array_length(els.stuck_batch_list('0', 1)), 1, 'stuck_batch_list: p_limit caps the list');
SELECT is(els.stuck_batch_list('100 years'), '[]'::jsonb, 'stuck_batch_list: nothing that old -> []');

-- ===========================================================================
-- reconcile_batch
-- ===========================================================================
SELECT is(els.reconcile_batch('ops-nobody'),
    '{"batch_id": "ops-nobody", "outcome": "not_registered", "slots_created": 0, "content_assigned": 0,
      "failures_applied": 0, "excess": 0, "complete": false, "events": []}'::jsonb,
    'reconcile_batch (unknown batch): not_registered, nothing done');
SELECT is(els.reconcile_batch('ops-early') ->> 'outcome', 'not_registered',
          'reconcile_batch (only early items): not_registered, items stay pending');
SELECT is((SELECT count(*)::integer FROM els.essay_content WHERE batch_id = 'ops-early' AND disposition = 'pending'), 1,
          'reconcile_batch (not registered): the early content is still pending');

SELECT is(els.reconcile_batch('ops-half'),
    jsonb_build_object('batch_id', 'ops-half', 'outcome', 'reconciled', 'slots_created', 2, 'content_assigned', 1,
                       'failures_applied', 1, 'excess', 0, 'complete', true,
                       'events', jsonb_build_array(
                           els.stable_event_id('EssaySlotAssigned', 'ops-half', 'oh-1', 'half-t1'),
                           els.stable_event_id('BatchContentProvisioningCompleted', 'ops-half'))),
    'reconcile_batch (tracker without slots): slots created, pending reconciled, batch completed');
SELECT results_eq(
    $$SELECT slot_no, essay_id, status::text, coalesce(text_storage_id, failed_file_upload_id)
        FROM els.essay_slot WHERE batch_id = 'ops-half' ORDER BY slot_no$$,
    $$VALUES (1, 'oh-1', 'ready_for_processing', 'half-t1'), (2, 'oh-2', 'content_ingestion_failed', 'half-f1')$$,
    'reconcile_batch: the repaired slots');
SELECT is(els.reconcile_batch('ops-half'),
    '{"batch_id": "ops-half", "outcome": "unchanged", "slots_created": 0, "content_assigned": 0,
      "failures_applied": 0, "excess": 0, "complete": true, "events": []}'::jsonb,
    'reconcile_batch a second time: unchanged, no event (idempotent)');
SELECT is((SELECT count(*)::integer FROM els.event_outbox WHERE message_key = 'ops-half'
             AND event_type = 'BatchContentProvisioningCompleted'), 1,
          'reconcile_batch: one completion, however often it runs');
SELECT is_empty($$SELECT 1 FROM els.stuck_batches WHERE batch_id = 'ops-half'$$,
                'reconcile_batch: the re-driven batch left stuck_batches');
-- a slot-less tracker whose essay id has meanwhile gone to another batch
INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id)
VALUES ('ops-stolen', 1, ARRAY['oh-1'], 'ENG5', 'teacher', 'corr-stolen');
SELECT throws_ok($$SELECT els.reconcile_batch('ops-stolen')$$, 'ELC02',
                 'an essay id already belongs to another batch',
                 'reconcile_batch: an essay id owned by another batch -> ELC02, as for register_batch');

-- pending rows left on a batch that has its slots (an older writer's leftovers)
INSERT INTO els.essay_content (batch_id, text_storage_id, disposition, file_upload_id, original_file_name, correlation_id)
VALUES ('ops-stuck-old', 'leftover-t1', 'pending', 'leftover-u1', 'leftover.docx', 'corr-leftover'),
       ('ops-stuck-old', 'leftover-t2', 'pending', 'leftover-u2', 'leftover2.docx', 'corr-leftover');
SELECT is((SELECT pending_items FROM els.stuck_batches WHERE batch_id = 'ops-stuck-old'), 2::bigint,
          'stuck_batches shows the leftover pending items');
SELECT is(els.reconcile_batch('ops-stuck-old') - 'events',
    '{"batch_id": "ops-stuck-old", "outcome": "reconciled", "slots_created": 0, "content_assigned": 1,
      "failures_applied": 0, "excess": 1, "complete": true}'::jsonb,
    'reconcile_batch (slots present, leftover pending content): oldest fills the slot, the other is excess');
SELECT results_eq(
    $$SELECT text_storage_id, disposition::text, essay_id FROM els.essay_content
       WHERE batch_id = 'ops-stuck-old' ORDER BY text_storage_id$$,
    $$VALUES ('leftover-t1', 'assigned', 'so-1'), ('leftover-t2', 'excess', NULL::text)$$,
    'reconcile_batch: leftover pending content disposed');
SELECT is(els.reconcile_batch('ops-stuck-old') ->> 'outcome', 'unchanged', 'reconcile_batch again: unchanged');
SELECT is(els.reconcile_batch('ops-stuck-new') - 'events',
    '{"batch_id": "ops-stuck-new", "outcome": "unchanged", "slots_created": 0, "content_assigned": 0,
      "failures_applied": 0, "excess": 0, "complete": false}'::jsonb,
    'reconcile_batch on a healthy incomplete batch: unchanged, still incomplete');
SELECT is(els.reconcile_batch('ops-report') ->> 'outcome', 'unchanged',
          'reconcile_batch on a complete batch: unchanged');

-- ===========================================================================
-- Outbox relay: claim, mark, purge, backlog
-- ===========================================================================
SELECT is((SELECT count(*)::integer FROM els.event_outbox), 9,
          'outbox: nine events were written above (3 ops-report, 1 ops-stuck-new, 2 ops-half, 3 ops-stuck-old)');
CREATE TEMP TABLE first_claim AS SELECT * FROM els.claim_outbox(4);
SELECT results_eq(
    $$SELECT id, event_id, event_type, topic, message_key, envelope, created_at FROM first_claim$$,
    $$SELECT id, event_id, event_type, topic, message_key, envelope, created_at FROM els.event_outbox
       WHERE published_at IS NULL ORDER BY id LIMIT 4$$,
    'claim_outbox(4): the four oldest unpublished rows, in id order, with their envelopes');
-- Row locks are visible with pgrowlocks (contrib); skipped where it is not installed.
DO $ext$ BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_available_extensions WHERE name = 'pgrowlocks') THEN
        CREATE EXTENSION IF NOT EXISTS pgrowlocks;
    END IF;
END $ext$;
SELECT CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pgrowlocks') THEN
    results_eq(
        $$SELECT o.id, l.modes FROM els.event_outbox AS o JOIN pgrowlocks('els.event_outbox') AS l ON l.locked_row = o.ctid
           ORDER BY o.id$$,
        $$SELECT id, ARRAY['For Update'] FROM first_claim ORDER BY id$$,
        'claim_outbox(4) row-locks exactly the four rows it returned, FOR UPDATE (held until commit)')
    ELSE skip('pgrowlocks is not available', 1) END;
SELECT is((SELECT count(*)::integer FROM els.claim_outbox()), 9,
          'claim_outbox(): the default limit covers all nine; rows this transaction already holds stay claimable by it');
SELECT is((SELECT count(*)::integer FROM els.claim_outbox(0)), 0, 'claim_outbox(0): nothing');
SELECT ok(pg_get_functiondef('els.claim_outbox(integer)'::regprocedure) ~* 'FOR\s+UPDATE(\s+OF\s+\w+)?\s+SKIP\s+LOCKED',
          'claim_outbox locks with FOR UPDATE SKIP LOCKED (several relays never wait on each other)');

CREATE TEMP TABLE claimed AS SELECT id FROM els.claim_outbox(3);
SELECT is(pg_temp.publish((SELECT array_agg(id) FROM claimed)), 3, 'mark_outbox_published: marks the three claimed rows');
SELECT is(pg_temp.publish((SELECT array_agg(id) FROM claimed)), 0,
          'mark_outbox_published again: already published rows are not re-stamped (0)');
SELECT is(pg_temp.publish(ARRAY[-1, -2]::bigint[]), 0, 'mark_outbox_published: unknown ids mark nothing');
SELECT is(pg_temp.publish('{}'), 0, 'mark_outbox_published: empty array');
SELECT is_empty($$SELECT id FROM els.event_outbox WHERE id IN (SELECT id FROM claimed) AND published_at IS DISTINCT FROM now()$$,
                'mark_outbox_published: published_at stamped with the transaction time');
SELECT results_eq($$SELECT kafka_topic, kafka_partition, kafka_offset FROM els.event_outbox WHERE id IN (SELECT id FROM claimed) ORDER BY id$$,
                  $$VALUES ('t', 0, 1::bigint), ('t', 0, 2::bigint), ('t', 0, 3::bigint)$$,
                  'mark_outbox_published: each row keeps the topic, partition and offset of its delivery report');
SELECT throws_ok($$SELECT els.mark_outbox_published(ARRAY[(SELECT max(id) FROM els.event_outbox)], ARRAY['t'], ARRAY[0], ARRAY[NULL::bigint])$$,
                 '22023', NULL, 'mark_outbox_published: a report without an offset is no proof: refused');
SELECT throws_ok($$SELECT els.mark_outbox_published(ARRAY[(SELECT max(id) FROM els.event_outbox)], ARRAY['t'], ARRAY[0], ARRAY[-1::bigint])$$,
                 '22023', NULL, 'mark_outbox_published: a negative offset (librdkafka''s "invalid") is refused');
SELECT throws_ok($$SELECT els.mark_outbox_published(ARRAY[(SELECT max(id) FROM els.event_outbox)], ARRAY['t'], '{}', '{}')$$,
                 '22023', NULL, 'mark_outbox_published: arrays of different lengths are refused');
SELECT is((SELECT array_agg(id ORDER BY id) FROM els.claim_outbox(2)),
          (SELECT array_agg(id ORDER BY id) FROM (SELECT id FROM els.event_outbox WHERE published_at IS NULL ORDER BY id LIMIT 2) AS x),
          'claim_outbox after marking: published rows are no longer claimed');
SELECT is(els.batch_report('ops-report') -> 'outbox', pg_temp.outbox_json('ops-report'),
          'batch_report shows the published flags');

SELECT is(els.outbox_backlog(), ROW(6::bigint, 0::double precision, 0::bigint)::record,
          'outbox_backlog: 6 unpublished, the oldest created now (0 seconds), none set aside');
UPDATE els.event_outbox SET created_at = now() - interval '90 seconds'
 WHERE id = (SELECT min(id) FROM els.event_outbox WHERE published_at IS NULL);
SELECT is((SELECT oldest_age_seconds FROM els.outbox_backlog()), 90::double precision,
          'outbox_backlog: age of the oldest unpublished row in seconds');

-- purge: only published rows older than the interval
UPDATE els.event_outbox SET published_at = now() - interval '10 days' WHERE id = (SELECT min(id) FROM claimed);
UPDATE els.event_outbox SET published_at = now() - interval '2 days' WHERE id = (SELECT max(id) FROM claimed);
UPDATE els.event_outbox SET created_at = now() - interval '30 days'
 WHERE id = (SELECT min(id) FROM els.event_outbox WHERE published_at IS NULL);
SELECT is(els.purge_outbox(), 1::bigint, 'purge_outbox() (7 days): deletes the one row published 10 days ago');
SELECT is(els.purge_outbox('1 day'), 1::bigint, 'purge_outbox(1 day): deletes the row published 2 days ago');
SELECT is(els.purge_outbox('1 day'), 0::bigint, 'purge_outbox again: nothing left to purge');
SELECT is(els.purge_outbox('0'), 0::bigint, 'purge_outbox(0): a row published in this very transaction is not older than now(): kept');
SELECT is((SELECT count(*)::integer FROM els.event_outbox WHERE published_at IS NULL), 6,
          'purge_outbox never deletes unpublished rows, even 30 days old');
SELECT is(els.outbox_backlog(), ROW(6::bigint, 2592000::double precision, 0::bigint)::record,
          'outbox_backlog: the 30-day-old unpublished row is still waiting');

-- set_aside_outbox: a refused row steps out of the claim order, with its reason
CREATE TEMP TABLE refused AS SELECT min(id) AS id FROM els.event_outbox WHERE published_at IS NULL;
SELECT is(els.set_aside_outbox((SELECT id FROM refused), 'MSG_SIZE_TOO_LARGE: 70000000 bytes'),
          now() + interval '5 seconds', 'set_aside_outbox: first refusal, retried in 5 seconds');
SELECT ok((SELECT id FROM refused) NOT IN (SELECT id FROM els.claim_outbox(100)),
          'claim_outbox: a row set aside is not claimed before its retry time');
SELECT is((SELECT count(*)::integer FROM els.claim_outbox(100)), 5,
          'claim_outbox: the rows behind the set-aside row are still claimed');
SELECT results_eq($$SELECT publish_attempts, last_error FROM els.outbox_set_aside$$,
                  $$VALUES (1, 'MSG_SIZE_TOO_LARGE: 70000000 bytes')$$,
                  'outbox_set_aside shows the row, its attempts and its reason');
SELECT is(els.set_aside_outbox((SELECT id FROM refused), 'again'), now() + interval '10 seconds',
          'set_aside_outbox: the delay doubles with each refusal');
UPDATE els.event_outbox SET publish_attempts = 40 WHERE id = (SELECT id FROM refused);
SELECT is(els.set_aside_outbox((SELECT id FROM refused), 'again'), now() + interval '1 hour',
          'set_aside_outbox: the delay is capped at one hour');
SELECT is((SELECT set_aside FROM els.outbox_backlog()), 1::bigint, 'outbox_backlog counts the set-aside row');
UPDATE els.event_outbox SET retry_after = now() - interval '1 second' WHERE id = (SELECT id FROM refused);
SELECT ok((SELECT id FROM refused) IN (SELECT id FROM els.claim_outbox(100)),
          'claim_outbox: a set-aside row is claimed again once its retry time has passed');
SELECT is(pg_temp.publish(ARRAY[(SELECT id FROM refused)]), 1, 'a set-aside row can still be published');
SELECT is_empty($$SELECT * FROM els.outbox_set_aside$$, 'outbox_set_aside lists only unpublished rows');
SELECT is(els.set_aside_outbox((SELECT id FROM refused), 'late'), NULL,
          'set_aside_outbox on a published row changes nothing (NULL)');

DELETE FROM els.event_outbox;
SELECT is(els.outbox_backlog(), ROW(0::bigint, 0::double precision, 0::bigint)::record, 'outbox_backlog on an empty outbox: (0, 0, 0)');

SELECT * FROM finish();
ROLLBACK;
