-- els.register_batch: idempotency, repair and reconciliation (SPEC section 3).
-- duplicate: a redelivery with the same identity (whatever the envelope,
--   metadata, correlation id or prompt reference) changes nothing;
-- repaired: a tracker left without slots by an older, non-atomic writer gets
--   its slots and its pending items now;
-- reconciliation: content and failures that arrived before the registration
--   fill the slots oldest first (arrival order, then text_storage_id); what
--   finds no slot is excess.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(72);

CREATE FUNCTION pg_temp.content(p_batch text, p_text text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'text_storage_id', p_text,
                          'file_upload_id', 'upload-' || p_text, 'original_file_name', p_text || '.docx');
CREATE FUNCTION pg_temp.failure(p_batch text, p_upload text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'file_upload_id', p_upload,
                          'original_file_name', p_upload || '.pdf', 'validation_error_code', 'EMPTY_CONTENT');
CREATE FUNCTION pg_temp.batch(p_batch text, p_essays text[]) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'expected_essay_count', cardinality(p_essays),
                          'essay_ids', to_jsonb(p_essays), 'course_code', 'ENG7', 'user_id', 'teacher');

CREATE TEMP TABLE result (name text PRIMARY KEY, value jsonb);

-- ===========================================================================
-- duplicate
-- ===========================================================================
INSERT INTO result VALUES ('dup-first', els.register_batch('{
    "event_id": "aaaaaaaa-0000-4000-8000-000000000001",
    "event_type": "huleedu.batch.essays.registered.v1",
    "correlation_id": "corr-first", "metadata": {"attempt": 1},
    "data": {"entity_id": "idem-dup", "expected_essay_count": 2, "essay_ids": ["dup-1", "dup-2"],
             "course_code": "SV3", "user_id": "teacher", "org_id": "org", "class_id": "class",
             "student_prompt_ref": {"ref": "first"}, "metadata": {"m": "first"}}}'));
SELECT is((SELECT value ->> 'outcome' FROM result WHERE name = 'dup-first'), 'registered',
          'duplicate: the first delivery registers');
CREATE TEMP TABLE state_before_dup AS SELECT pg_temp.els_state() AS state;

SELECT is(els.register_batch('{
    "event_id": "aaaaaaaa-0000-4000-8000-000000000002",
    "event_type": "batch.essays.registered",
    "event_timestamp": "2030-01-01T00:00:00Z", "source_service": "replayer",
    "correlation_id": "corr-second", "metadata": {"attempt": 2},
    "data": {"entity_id": "idem-dup", "expected_essay_count": 2, "essay_ids": ["dup-1", "dup-2"],
             "course_code": "SV3", "user_id": "teacher", "org_id": "org", "class_id": "class",
             "student_prompt_ref": {"ref": "second"}, "metadata": {"m": "second"},
             "correlation_id": "corr-data", "extra": 1}}'),
    '{"batch_id": "idem-dup", "outcome": "duplicate", "class_type": "REGULAR", "expected_count": 2,
      "slots_created": 0, "content_assigned": 0, "failures_applied": 0, "excess": 0,
      "complete": false, "events": []}'::jsonb,
    'duplicate: other envelope, event id, correlation, metadata and prompt ref -> duplicate, counts 0, events []');
SELECT is(els.register_batch('{"entity_id": "idem-dup", "expected_essay_count": 2, "essay_ids": ["dup-1", "dup-2"],
                               "course_code": "SV3", "user_id": "teacher", "org_id": "org", "class_id": "class"}') ->> 'outcome',
          'duplicate', 'duplicate: the same registration as a bare payload without prompt ref or metadata');
SELECT is(pg_temp.els_state(), (SELECT state FROM state_before_dup),
          'duplicate: no row of any els table changed (tracker keeps the first correlation, prompt ref, metadata)');
SELECT results_eq(
    $$SELECT correlation_id, registration_event_id, student_prompt_ref, metadata FROM els.batch_tracker
       WHERE batch_id = 'idem-dup'$$,
    $$VALUES ('corr-first', 'aaaaaaaa-0000-4000-8000-000000000001', '{"ref": "first"}'::jsonb, '{"m": "first"}'::jsonb)$$,
    'duplicate: the tracker is the first registration''s');

-- duplicate of a complete batch says complete and emits nothing
SELECT is(els.provision_content(pg_temp.content('idem-dup', 'dup-t1')) ->> 'outcome', 'assigned',
          'duplicate: content fills a slot of the registered batch');
SELECT is(els.record_validation_failure(pg_temp.failure('idem-dup', 'dup-f1')) ->> 'complete', 'true',
          'duplicate: the batch completes (one content, one failure)');
CREATE TEMP TABLE state_complete AS SELECT pg_temp.els_state() AS state;
SELECT is(els.register_batch(pg_temp.batch('idem-dup', ARRAY['dup-1', 'dup-2'])
                             || '{"course_code": "SV3", "org_id": "org", "class_id": "class"}'),
    '{"batch_id": "idem-dup", "outcome": "duplicate", "class_type": "REGULAR", "expected_count": 2,
      "slots_created": 0, "content_assigned": 0, "failures_applied": 0, "excess": 0,
      "complete": true, "events": []}'::jsonb,
    'duplicate of a complete batch: complete true, events []');
SELECT is(pg_temp.els_state(), (SELECT state FROM state_complete),
          'duplicate of a complete batch: nothing changed, no second completion');

-- ===========================================================================
-- repaired: a tracker without slots, as the old non-atomic writer left it
-- ===========================================================================
INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, org_id, class_id,
                               correlation_id, registered_at)
VALUES ('idem-half', 3, ARRAY['half-1', 'half-2', 'half-3'], 'ENG5', 'teacher', NULL, NULL,
        'corr-old-writer', now() - interval '2 hours');
-- content and a failure arrive while the slots are missing: they wait
SELECT is(els.provision_content(pg_temp.content('idem-half', 'half-t1')),
          '{"batch_id": "idem-half", "outcome": "pending", "essay_id": null, "complete": false, "events": []}'::jsonb,
          'repair: content for a tracker without slots is pending');
SELECT is(els.record_validation_failure(pg_temp.failure('idem-half', 'half-f1')) ->> 'outcome', 'pending',
          'repair: a failure for a tracker without slots is pending');

INSERT INTO result VALUES ('repaired', els.register_batch(pg_temp.batch('idem-half', ARRAY['half-1', 'half-2', 'half-3'])
                                                          || '{"course_code": "ENG5"}'));
SELECT is((SELECT value - 'events' FROM result WHERE name = 'repaired'),
    '{"batch_id": "idem-half", "outcome": "repaired", "class_type": "GUEST", "expected_count": 3,
      "slots_created": 3, "content_assigned": 1, "failures_applied": 1, "excess": 0,
      "complete": false}'::jsonb,
    'repair: outcome repaired, slots created, pending content and failure reconciled');
SELECT is((SELECT value -> 'events' FROM result WHERE name = 'repaired'), pg_temp.outbox_ids('idem-half'),
          'repair: events = the outbox rows written (one EssaySlotAssigned)');
SELECT results_eq(
    $$SELECT slot_no, essay_id, status::text, text_storage_id, failed_file_upload_id
        FROM els.essay_slot WHERE batch_id = 'idem-half' ORDER BY slot_no$$,
    $$VALUES (1, 'half-1', 'ready_for_processing', 'half-t1', NULL::text),
             (2, 'half-2', 'content_ingestion_failed', NULL, 'half-f1'),
             (3, 'half-3', 'uploaded', NULL, NULL)$$,
    'repair: slots in essay_ids order; pending content, then pending failure, took the lowest slots');
SELECT results_eq(
    $$SELECT correlation_id, registered_at FROM els.batch_tracker WHERE batch_id = 'idem-half'$$,
    $$VALUES ('corr-old-writer', now() - interval '2 hours')$$,
    'repair: the existing tracker row is kept as it was');
SELECT is(els.register_batch(pg_temp.batch('idem-half', ARRAY['half-1', 'half-2', 'half-3']) || '{"course_code": "ENG5"}') ->> 'outcome',
          'duplicate', 'repair: registering again afterwards is a duplicate');
SELECT is(els.provision_content(pg_temp.content('idem-half', 'half-t1')) ->> 'essay_id', 'half-1',
          'repair: the reconciled content redelivered is a duplicate naming its slot');

-- a slot-less tracker whose redelivery differs in identity is a conflict, not a repair
INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id)
VALUES ('idem-half-conflict', 1, ARRAY['hc-1'], 'ENG5', 'teacher', 'corr');
SELECT throws_ok($$SELECT els.register_batch(pg_temp.batch('idem-half-conflict', ARRAY['hc-1']) || '{"user_id": "other"}')$$,
                 'ELC01', 'batch already registered with a different identity',
                 'repair: a slot-less tracker with another identity -> ELC01');
SELECT is_empty($$SELECT 1 FROM els.essay_slot WHERE batch_id = 'idem-half-conflict'$$,
                'repair: ELC01 created no slot');

-- a slot-less tracker that becomes complete on repair (all items were pending)
INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id)
VALUES ('idem-half-full', 1, ARRAY['hf-1'], 'SV1', 'teacher', 'corr-hf');
SELECT is(els.provision_content(pg_temp.content('idem-half-full', 'hf-t1')) ->> 'outcome', 'pending',
          'repair: content for the slot-less tracker waits');
INSERT INTO result VALUES ('repaired-full', els.register_batch(pg_temp.batch('idem-half-full', ARRAY['hf-1']) || '{"course_code": "SV1"}'));
SELECT is((SELECT value - 'events' FROM result WHERE name = 'repaired-full'),
    '{"batch_id": "idem-half-full", "outcome": "repaired", "class_type": "GUEST", "expected_count": 1,
      "slots_created": 1, "content_assigned": 1, "failures_applied": 0, "excess": 0, "complete": true}'::jsonb,
    'repair that completes the batch: complete true');
SELECT is((SELECT value -> 'events' FROM result WHERE name = 'repaired-full'), pg_temp.outbox_ids('idem-half-full'),
          'repair that completes: events = EssaySlotAssigned + completion, as in the outbox');
SELECT is((SELECT array_agg(event_type ORDER BY id) FROM els.event_outbox WHERE message_key = 'idem-half-full'),
          ARRAY['EssaySlotAssigned', 'BatchContentProvisioningCompleted'],
          'repair that completes: slot event first, then the completion');

-- a tracker with only some of its slots (an older writer died half-way): the
-- batch is not complete even when those slots are filled, and registering
-- again repairs it by creating just the missing slots
INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id)
VALUES ('idem-partial', 3, ARRAY['part-1', 'part-2', 'part-3'], 'ENG7', 'teacher', 'corr-part');
INSERT INTO els.essay_slot (essay_id, batch_id, slot_no) VALUES ('part-1', 'idem-partial', 1);
SELECT is(els.provision_content(pg_temp.content('idem-partial', 'part-t1')) - 'events',
          '{"batch_id": "idem-partial", "outcome": "assigned", "essay_id": "part-1", "complete": false}'::jsonb,
          'partial slots: content fills the one slot there, but the batch is not complete');
SELECT is(els.register_batch(pg_temp.batch('idem-partial', ARRAY['part-1', 'part-2', 'part-3'])) - 'events',
    '{"batch_id": "idem-partial", "outcome": "repaired", "class_type": "GUEST", "expected_count": 3,
      "slots_created": 2, "content_assigned": 0, "failures_applied": 0, "excess": 0,
      "complete": false}'::jsonb,
    'partial slots: registering again repairs, creating only the two missing slots');
SELECT results_eq(
    $$SELECT slot_no, essay_id, status::text FROM els.essay_slot WHERE batch_id = 'idem-partial' ORDER BY slot_no$$,
    $$VALUES (1, 'part-1', 'ready_for_processing'), (2, 'part-2', 'uploaded'), (3, 'part-3', 'uploaded')$$,
    'partial slots: all three slots exist, the filled one kept');
SELECT is(els.register_batch(pg_temp.batch('idem-partial', ARRAY['part-1', 'part-2', 'part-3'])) ->> 'outcome',
          'duplicate', 'partial slots: once repaired, registering again is a duplicate');

-- ===========================================================================
-- reconciliation: content before registration
-- ===========================================================================
SELECT is(els.provision_content(pg_temp.content('idem-early', 'early-b')) ->> 'outcome', 'pending',
          'early content: first text before registration -> pending');
SELECT is(els.provision_content(pg_temp.content('idem-early', 'early-a')) ->> 'outcome', 'pending',
          'early content: second text before registration -> pending');
SELECT results_eq(
    $$SELECT text_storage_id, disposition::text, essay_id FROM els.essay_content
       WHERE batch_id = 'idem-early' ORDER BY arrival_seq$$,
    $$VALUES ('early-b', 'pending', NULL::text), ('early-a', 'pending', NULL)$$,
    'early content: kept as pending, in arrival order');
SELECT is(els.provision_content(pg_temp.content('idem-early', 'early-b')) ->> 'outcome', 'duplicate',
          'early content: redelivered before registration -> duplicate (still one pending row)');
INSERT INTO result VALUES ('early', els.register_batch(pg_temp.batch('idem-early', ARRAY['ea-1', 'ea-2', 'ea-3'])));
SELECT is((SELECT value - 'events' FROM result WHERE name = 'early'),
    '{"batch_id": "idem-early", "outcome": "registered", "class_type": "GUEST", "expected_count": 3,
      "slots_created": 3, "content_assigned": 2, "failures_applied": 0, "excess": 0, "complete": false}'::jsonb,
    'early content: registration assigns both pending contents');
SELECT results_eq(
    $$SELECT slot_no, status::text, text_storage_id FROM els.essay_slot WHERE batch_id = 'idem-early' ORDER BY slot_no$$,
    $$VALUES (1, 'ready_for_processing', 'early-b'), (2, 'ready_for_processing', 'early-a'), (3, 'uploaded', NULL::text)$$,
    'early content: oldest arrival first (early-b arrived before early-a), lowest slots first');
SELECT results_eq(
    $$SELECT text_storage_id, disposition::text, essay_id, disposed_at IS NOT NULL FROM els.essay_content
       WHERE batch_id = 'idem-early' ORDER BY arrival_seq$$,
    $$VALUES ('early-b', 'assigned', 'ea-1', true), ('early-a', 'assigned', 'ea-2', true)$$,
    'early content: ledger rows now assigned to their slots');
SELECT is((SELECT value -> 'events' FROM result WHERE name = 'early'), pg_temp.outbox_ids('idem-early'),
          'early content: result events are the outbox rows, in order');
SELECT results_eq(
    $$SELECT event_type, envelope -> 'data' ->> 'essay_id', envelope -> 'data' ->> 'text_storage_id'
        FROM els.event_outbox WHERE message_key = 'idem-early' ORDER BY id$$,
    $$VALUES ('EssaySlotAssigned', 'ea-1', 'early-b'), ('EssaySlotAssigned', 'ea-2', 'early-a')$$,
    'early content: one EssaySlotAssigned per filled slot, in reconciliation order');

-- ties in arrival order are broken by text_storage_id (rows as a replayed
-- ledger could hold them: same arrival_seq)
INSERT INTO els.essay_content (batch_id, text_storage_id, disposition, file_upload_id, original_file_name,
                               correlation_id, arrival_seq)
VALUES ('idem-tie', 'tie-z', 'pending', 'u-z', 'z.txt', 'c', 900000001),
       ('idem-tie', 'tie-a', 'pending', 'u-a', 'a.txt', 'c', 900000001),
       ('idem-tie', 'tie-m', 'pending', 'u-m', 'm.txt', 'c', 900000000);
SELECT is(els.register_batch(pg_temp.batch('idem-tie', ARRAY['ti-1', 'ti-2', 'ti-3', 'ti-4'])) ->> 'content_assigned',
          '3', 'tie: the three pending texts are assigned');
SELECT results_eq(
    $$SELECT slot_no, text_storage_id FROM els.essay_slot WHERE batch_id = 'idem-tie' ORDER BY slot_no$$,
    $$VALUES (1, 'tie-m'), (2, 'tie-a'), (3, 'tie-z'), (4, NULL::text)$$,
    'reconciliation order: arrival first (tie-m), then text_storage_id for equal arrival (tie-a before tie-z)');

-- ===========================================================================
-- reconciliation: failures before registration
-- ===========================================================================
SELECT is(els.record_validation_failure(pg_temp.failure('idem-fail', 'fail-2')) ->> 'outcome', 'pending',
          'early failure: first failure before registration -> pending');
SELECT is(els.record_validation_failure(pg_temp.failure('idem-fail', 'fail-1')) ->> 'outcome', 'pending',
          'early failure: second failure before registration -> pending');
SELECT is(els.record_validation_failure(pg_temp.failure('idem-fail', 'fail-2')) ->> 'outcome', 'duplicate',
          'early failure: redelivered before registration -> duplicate');
INSERT INTO result VALUES ('fail', els.register_batch(pg_temp.batch('idem-fail', ARRAY['fa-1', 'fa-2', 'fa-3'])));
SELECT is((SELECT value FROM result WHERE name = 'fail'),
    '{"batch_id": "idem-fail", "outcome": "registered", "class_type": "GUEST", "expected_count": 3,
      "slots_created": 3, "content_assigned": 0, "failures_applied": 2, "excess": 0, "complete": false,
      "events": []}'::jsonb,
    'early failures: applied to slots, no event (failures emit none until completion)');
SELECT results_eq(
    $$SELECT slot_no, status::text, failed_file_upload_id FROM els.essay_slot WHERE batch_id = 'idem-fail' ORDER BY slot_no$$,
    $$VALUES (1, 'content_ingestion_failed', 'fail-2'), (2, 'content_ingestion_failed', 'fail-1'), (3, 'uploaded', NULL::text)$$,
    'early failures: oldest first into the lowest slots');
SELECT results_eq(
    $$SELECT file_upload_id, disposition::text, essay_id FROM els.validation_failure
       WHERE batch_id = 'idem-fail' ORDER BY arrival_seq$$,
    $$VALUES ('fail-2', 'assigned', 'fa-1'), ('fail-1', 'assigned', 'fa-2')$$,
    'early failures: ledger rows now assigned to their slots');

-- ===========================================================================
-- reconciliation: content and failures before, fitting exactly -> complete
-- ===========================================================================
SELECT is(ARRAY[els.record_validation_failure(pg_temp.failure('idem-mix', 'mix-f1')) ->> 'outcome',
                els.provision_content(pg_temp.content('idem-mix', 'mix-t1')) ->> 'outcome',
                els.provision_content(pg_temp.content('idem-mix', 'mix-t2')) ->> 'outcome'],
          ARRAY['pending', 'pending', 'pending'], 'mix: a failure and two contents before registration are pending');
INSERT INTO result VALUES ('mix', els.register_batch(pg_temp.batch('idem-mix', ARRAY['mx-1', 'mx-2', 'mx-3'])));
SELECT is((SELECT value - 'events' FROM result WHERE name = 'mix'),
    '{"batch_id": "idem-mix", "outcome": "registered", "class_type": "GUEST", "expected_count": 3,
      "slots_created": 3, "content_assigned": 2, "failures_applied": 1, "excess": 0, "complete": true}'::jsonb,
    'content and failures before: everything fits, the registration completes the batch');
SELECT is((SELECT array_agg(event_type ORDER BY id) FROM els.event_outbox WHERE message_key = 'idem-mix'),
          ARRAY['EssaySlotAssigned', 'EssaySlotAssigned', 'BatchContentProvisioningCompleted'],
          'content and failures before: two slot events and the completion');
SELECT is((SELECT value -> 'events' FROM result WHERE name = 'mix'), pg_temp.outbox_ids('idem-mix'),
          'content and failures before: result events = outbox rows, completion last');
SELECT results_eq(
    $$SELECT slot_no, status::text, coalesce(text_storage_id, failed_file_upload_id)
        FROM els.essay_slot WHERE batch_id = 'idem-mix' ORDER BY slot_no$$,
    $$VALUES (1, 'ready_for_processing', 'mix-t1'), (2, 'ready_for_processing', 'mix-t2'),
             (3, 'content_ingestion_failed', 'mix-f1')$$,
    'content and failures before: pending content is reconciled before pending failures');

-- ===========================================================================
-- reconciliation: more pending than slots -> excess
-- ===========================================================================
SELECT is(els.provision_content(pg_temp.content('idem-over', 'over-3')) ->> 'outcome', 'pending', 'over: 1st text pending');
SELECT is(els.provision_content(pg_temp.content('idem-over', 'over-1')) ->> 'outcome', 'pending', 'over: 2nd text pending');
SELECT is(els.provision_content(pg_temp.content('idem-over', 'over-2')) ->> 'outcome', 'pending', 'over: 3rd text pending');
INSERT INTO result VALUES ('over', els.register_batch(pg_temp.batch('idem-over', ARRAY['ov-1', 'ov-2'])));
SELECT is((SELECT value - 'events' FROM result WHERE name = 'over'),
    '{"batch_id": "idem-over", "outcome": "registered", "class_type": "GUEST", "expected_count": 2,
      "slots_created": 2, "content_assigned": 2, "failures_applied": 0, "excess": 1, "complete": true}'::jsonb,
    'more content than slots: two assigned, one excess, batch complete');
SELECT results_eq(
    $$SELECT text_storage_id, disposition::text, essay_id FROM els.essay_content
       WHERE batch_id = 'idem-over' ORDER BY arrival_seq$$,
    $$VALUES ('over-3', 'assigned', 'ov-1'), ('over-1', 'assigned', 'ov-2'), ('over-2', 'excess', NULL::text)$$,
    'more content than slots: the oldest two get slots, the newest is excess');
SELECT results_eq(
    $$SELECT event_type, envelope -> 'data' ->> 'text_storage_id' FROM els.event_outbox
       WHERE message_key = 'idem-over' ORDER BY id$$,
    $$VALUES ('EssaySlotAssigned', 'over-3'), ('EssaySlotAssigned', 'over-1'),
             ('ExcessContentProvisioned', 'over-2'), ('BatchContentProvisioningCompleted', NULL::text)$$,
    'more content than slots: slot events, one ExcessContentProvisioned, then the completion');
SELECT is((SELECT value -> 'events' FROM result WHERE name = 'over'), pg_temp.outbox_ids('idem-over'),
          'more content than slots: result events = outbox rows in order');
SELECT is(els.provision_content(pg_temp.content('idem-over', 'over-2')),
          '{"batch_id": "idem-over", "outcome": "duplicate", "essay_id": null, "complete": true, "events": []}'::jsonb,
          'the excess content redelivered: duplicate, essay_id null');

SELECT is(els.record_validation_failure(pg_temp.failure('idem-over-f', 'of-1')) ->> 'outcome', 'pending', 'over-f: 1st failure pending');
SELECT is(els.record_validation_failure(pg_temp.failure('idem-over-f', 'of-2')) ->> 'outcome', 'pending', 'over-f: 2nd failure pending');
SELECT is(els.record_validation_failure(pg_temp.failure('idem-over-f', 'of-3')) ->> 'outcome', 'pending', 'over-f: 3rd failure pending');
INSERT INTO result VALUES ('over-f', els.register_batch(pg_temp.batch('idem-over-f', ARRAY['of-a', 'of-b'])));
SELECT is((SELECT value - 'events' FROM result WHERE name = 'over-f'),
    '{"batch_id": "idem-over-f", "outcome": "registered", "class_type": "GUEST", "expected_count": 2,
      "slots_created": 2, "content_assigned": 0, "failures_applied": 2, "excess": 1, "complete": true}'::jsonb,
    'more failures than slots: two applied, one excess, complete');
SELECT results_eq(
    $$SELECT file_upload_id, disposition::text, essay_id FROM els.validation_failure
       WHERE batch_id = 'idem-over-f' ORDER BY arrival_seq$$,
    $$VALUES ('of-1', 'assigned', 'of-a'), ('of-2', 'assigned', 'of-b'), ('of-3', 'excess', NULL::text)$$,
    'more failures than slots: the newest failure is excess');
SELECT is((SELECT array_agg(event_type ORDER BY id) FROM els.event_outbox WHERE message_key = 'idem-over-f'),
          ARRAY['BatchContentProvisioningCompleted'],
          'more failures than slots: no event for excess failures, only the completion');

-- content and failures competing for too few slots: content is served first
SELECT is(ARRAY[els.record_validation_failure(pg_temp.failure('idem-compete', 'cmp-f1')) ->> 'outcome',
                els.provision_content(pg_temp.content('idem-compete', 'cmp-t1')) ->> 'outcome',
                els.provision_content(pg_temp.content('idem-compete', 'cmp-t2')) ->> 'outcome'],
          ARRAY['pending', 'pending', 'pending'], 'compete: the failure (first) and two contents are pending');
SELECT is(els.register_batch(pg_temp.batch('idem-compete', ARRAY['cp-1', 'cp-2'])) - 'events',
    '{"batch_id": "idem-compete", "outcome": "registered", "class_type": "GUEST", "expected_count": 2,
      "slots_created": 2, "content_assigned": 2, "failures_applied": 0, "excess": 1, "complete": true}'::jsonb,
    'content and failures for too few slots: pending content fills the slots, the failure is excess');

-- ===========================================================================
-- invariants after all of it (SPEC rule 3)
-- ===========================================================================
SELECT is_empty(
    $$SELECT batch_id FROM els.essay_content WHERE disposition = 'pending' AND batch_id LIKE 'idem-%'
      UNION ALL
      SELECT batch_id FROM els.validation_failure WHERE disposition = 'pending' AND batch_id LIKE 'idem-%'$$,
    'nothing is pending once its batch is registered');
SELECT is_empty(
    $$SELECT t.batch_id FROM els.batch_tracker AS t WHERE t.batch_id LIKE 'idem-%'
         AND t.batch_id <> 'idem-half-conflict'
         AND (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = t.batch_id) <> t.expected_count$$,
    'filled + failed + empty slots = expected count for every batch');
SELECT is_empty(
    $$SELECT t.batch_id FROM els.batch_tracker AS t WHERE t.batch_id LIKE 'idem-%'
         AND (t.completed_at IS NOT NULL) <> (EXISTS (SELECT FROM els.essay_slot AS s WHERE s.batch_id = t.batch_id)
                                              AND NOT EXISTS (SELECT FROM els.essay_slot AS s
                                                               WHERE s.batch_id = t.batch_id AND s.status = 'uploaded'))$$,
    'a batch is complete exactly when it has slots and none is empty');
SELECT is_empty(
    $$SELECT t.batch_id FROM els.batch_tracker AS t WHERE t.batch_id LIKE 'idem-%'
         AND (t.completed_at IS NOT NULL)
          <> (SELECT count(*) = 1 FROM els.event_outbox AS o
               WHERE o.message_key = t.batch_id AND o.event_type = 'BatchContentProvisioningCompleted')$$,
    'exactly one completion event per complete batch, none for the others');
SELECT is_empty(
    $$SELECT c.batch_id, c.text_storage_id FROM els.essay_content AS c
       WHERE c.batch_id LIKE 'idem-%' AND (c.disposition = 'assigned') <> EXISTS (
             SELECT FROM els.essay_slot AS s WHERE s.batch_id = c.batch_id AND s.text_storage_id = c.text_storage_id
                                               AND s.essay_id = c.essay_id)$$,
    'a text is in a slot exactly when its ledger row says assigned, and in that slot');
SELECT is(
    (SELECT count(*)::integer FROM els.event_outbox WHERE message_key LIKE 'idem-%' AND event_type = 'EssaySlotAssigned'),
    (SELECT count(*)::integer FROM els.essay_slot WHERE batch_id LIKE 'idem-%' AND status = 'ready_for_processing'),
    'one EssaySlotAssigned per filled slot');
SELECT is(
    (SELECT count(*)::integer FROM els.event_outbox WHERE message_key LIKE 'idem-%' AND event_type = 'ExcessContentProvisioned'),
    (SELECT count(*)::integer FROM els.essay_content WHERE batch_id LIKE 'idem-%' AND disposition = 'excess'),
    'one ExcessContentProvisioned per excess content');

SELECT * FROM finish();
ROLLBACK;
