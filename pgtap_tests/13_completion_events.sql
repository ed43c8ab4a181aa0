-- Events out (SPEC section 5) and exactly-once completion (SPEC rule 4).
-- Completion from each of the three ingest functions; exactly one
-- BatchContentProvisioningCompleted per batch whatever comes after; its full
-- envelope and data; stable event ids; EssaySlotAssigned per filled slot and
-- ExcessContentProvisioned per excess content, with their data.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
\ir helpers/common.psql
SELECT plan(52);

CREATE FUNCTION pg_temp.content(p_batch text, p_text text, p_correlation text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql VOLATILE
RETURN CASE WHEN p_correlation IS NULL THEN
           jsonb_build_object('entity_id', p_batch, 'text_storage_id', p_text,
                              'file_upload_id', 'upload-' || p_text, 'original_file_name', p_text || '.docx')
       ELSE jsonb_build_object('event_id', gen_random_uuid(),
                               'event_type', 'huleedu.file.essay.content.provisioned.v1',
                               'correlation_id', p_correlation,
                               'data', jsonb_build_object('entity_id', p_batch, 'text_storage_id', p_text,
                                                          'file_upload_id', 'upload-' || p_text,
                                                          'original_file_name', p_text || '.docx'))
       END;
CREATE FUNCTION pg_temp.failure(p_batch text, p_upload text) RETURNS jsonb LANGUAGE sql IMMUTABLE
RETURN jsonb_build_object('entity_id', p_batch, 'file_upload_id', p_upload,
                          'original_file_name', p_upload || '.pdf', 'validation_error_code', 'TEXT_EXTRACTION_FAILED');
CREATE FUNCTION pg_temp.completions(p_batch text) RETURNS integer LANGUAGE sql STABLE
RETURN (SELECT count(*)::integer FROM els.event_outbox AS o
         WHERE o.message_key = p_batch AND o.event_type = 'BatchContentProvisioningCompleted');
CREATE FUNCTION pg_temp.completion(p_batch text) RETURNS jsonb LANGUAGE sql STABLE
RETURN (SELECT o.envelope FROM els.event_outbox AS o
         WHERE o.message_key = p_batch AND o.event_type = 'BatchContentProvisioningCompleted');
-- the envelope's timestamps, which must be this transaction's time in UTC ISO-8601
CREATE FUNCTION pg_temp.utc_now() RETURNS text LANGUAGE sql STABLE
RETURN to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

CREATE TEMP TABLE result (name text PRIMARY KEY, value jsonb);

-- ===========================================================================
-- Completion from provision_content (REGULAR batch; essay ids not in sorted
-- order so that "slot order" is distinguishable from "essay id order")
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch('{"event_id": "11111111-2222-4333-8444-555555555555",
        "event_type": "huleedu.batch.essays.registered.v1", "correlation_id": "corr-registration",
        "data": {"entity_id": "done-p", "expected_essay_count": 3, "essay_ids": ["p-zulu", "p-alpha", "p-mike"],
                 "course_code": "SV2", "user_id": "teacher-p", "org_id": "org-p", "class_id": "class-p"}}');
END $setup$;
SELECT is(els.provision_content(pg_temp.content('done-p', 'text-3', 'corr-c1')) ->> 'essay_id', 'p-zulu',
          'provision: first content -> slot 1');
SELECT is(els.record_validation_failure(pg_temp.failure('done-p', 'bad-upload')) ->> 'essay_id', 'p-alpha',
          'provision: a failure closes slot 2');
SELECT is(pg_temp.completions('done-p'), 0, 'provision: no completion while a slot is empty');
INSERT INTO result VALUES ('p-last', els.provision_content(pg_temp.content('done-p', 'text-1', 'corr-c2')));
SELECT is((SELECT value - 'events' FROM result WHERE name = 'p-last'),
          '{"batch_id": "done-p", "outcome": "assigned", "essay_id": "p-mike", "complete": true}'::jsonb,
          'provision: the content filling the last empty slot reports complete');
SELECT is(pg_temp.completions('done-p'), 1, 'provision: exactly one completion event');
SELECT is((SELECT value -> 'events' FROM result WHERE name = 'p-last'),
          jsonb_build_array(els.stable_event_id('EssaySlotAssigned', 'done-p', 'p-mike', 'text-1'),
                            els.stable_event_id('BatchContentProvisioningCompleted', 'done-p')),
          'provision: events = [its EssaySlotAssigned, the completion]');
SELECT is(pg_temp.completion('done-p'),
    jsonb_build_object(
        'event_id', els.stable_event_id('BatchContentProvisioningCompleted', 'done-p'),
        'event_type', 'huleedu.batch.content.provisioning.completed.v1',
        'event_timestamp', pg_temp.utc_now(),
        'source_service', 'essay_lifecycle_service',
        'schema_version', 1,
        'correlation_id', 'corr-registration',
        'metadata', '{}'::jsonb,
        'data', jsonb_build_object(
            'batch_id', 'done-p',
            'provisioned_count', 2,
            'expected_count', 3,
            'course_code', 'SV2',
            'user_id', 'teacher-p',
            'class_type', 'REGULAR',
            'essays_for_processing', '[{"essay_id": "p-zulu", "text_storage_id": "text-3"},
                                       {"essay_id": "p-mike", "text_storage_id": "text-1"}]'::jsonb,
            'completion_reason', 'all_slots_closed',
            'correlation_id', 'corr-registration',
            'timestamp', pg_temp.utc_now())),
    'provision: the completion envelope and data, exactly (ready essays in slot order, the registration''s correlation)');
SELECT results_eq(
    $$SELECT event_type, topic, message_key, published_at FROM els.event_outbox
       WHERE message_key = 'done-p' AND event_type = 'BatchContentProvisioningCompleted'$$,
    $$VALUES ('BatchContentProvisioningCompleted', 'huleedu.batch.content.provisioning.completed.v1',
              'done-p', NULL::timestamptz)$$,
    'provision: outbox row: event type, topic, message key = batch id, not yet published');
SELECT ok((SELECT completed_at = now() FROM els.batch_tracker WHERE batch_id = 'done-p'),
          'provision: the tracker is stamped complete in the same transaction');

-- ===========================================================================
-- EssaySlotAssigned: one per filled slot, with its data
-- ===========================================================================
SELECT is(
    (SELECT envelope FROM els.event_outbox WHERE event_id = els.stable_event_id('EssaySlotAssigned', 'done-p', 'p-zulu', 'text-3')),
    jsonb_build_object(
        'event_id', els.stable_event_id('EssaySlotAssigned', 'done-p', 'p-zulu', 'text-3'),
        'event_type', 'huleedu.els.essay.slot.assigned.v1',
        'event_timestamp', pg_temp.utc_now(),
        'source_service', 'essay_lifecycle_service',
        'schema_version', 1,
        'correlation_id', 'corr-c1',
        'metadata', '{}'::jsonb,
        'data', jsonb_build_object(
            'batch_id', 'done-p', 'essay_id', 'p-zulu', 'file_upload_id', 'upload-text-3',
            'text_storage_id', 'text-3', 'original_file_name', 'text-3.docx',
            'correlation_id', 'corr-c1', 'timestamp', pg_temp.utc_now())),
    'EssaySlotAssigned: envelope and data exactly, with the content''s correlation id');
SELECT results_eq(
    $$SELECT envelope -> 'data' ->> 'essay_id', envelope ->> 'correlation_id', topic, message_key
        FROM els.event_outbox WHERE message_key = 'done-p' AND event_type = 'EssaySlotAssigned' ORDER BY id$$,
    $$VALUES ('p-zulu', 'corr-c1', 'huleedu.els.essay.slot.assigned.v1', 'done-p'),
             ('p-mike', 'corr-c2', 'huleedu.els.essay.slot.assigned.v1', 'done-p')$$,
    'EssaySlotAssigned: one per filled slot (none for the failed slot)');

-- ===========================================================================
-- Never again: duplicates, excess, re-registration, re-drive
-- ===========================================================================
SELECT is(els.provision_content(pg_temp.content('done-p', 'text-1')),
          '{"batch_id": "done-p", "outcome": "duplicate", "essay_id": "p-mike", "complete": true, "events": []}'::jsonb,
          'after completion: duplicate content -> no event');
INSERT INTO result VALUES ('p-excess', els.provision_content(pg_temp.content('done-p', 'text-9', 'corr-c9')));
SELECT is((SELECT value FROM result WHERE name = 'p-excess'),
          jsonb_build_object('batch_id', 'done-p', 'outcome', 'excess', 'essay_id', NULL, 'complete', true,
                             'events', jsonb_build_array(els.stable_event_id('ExcessContentProvisioned', 'done-p', 'text-9'))),
          'after completion: new content is excess, its only event is ExcessContentProvisioned');
SELECT is(
    (SELECT envelope FROM els.event_outbox WHERE event_id = els.stable_event_id('ExcessContentProvisioned', 'done-p', 'text-9')),
    jsonb_build_object(
        'event_id', els.stable_event_id('ExcessContentProvisioned', 'done-p', 'text-9'),
        'event_type', 'huleedu.els.excess.content.provisioned.v1',
        'event_timestamp', pg_temp.utc_now(),
        'source_service', 'essay_lifecycle_service',
        'schema_version', 1,
        'correlation_id', 'corr-c9',
        'metadata', '{}'::jsonb,
        'data', jsonb_build_object(
            'batch_id', 'done-p', 'original_file_name', 'text-9.docx', 'text_storage_id', 'text-9',
            'reason', 'NO_AVAILABLE_SLOT', 'correlation_id', 'corr-c9', 'timestamp', pg_temp.utc_now())),
    'ExcessContentProvisioned: envelope and data exactly');
SELECT is(els.provision_content(pg_temp.content('done-p', 'text-9')) ->> 'outcome', 'duplicate',
          'after completion: the excess content redelivered is a duplicate');
SELECT is((SELECT count(*)::integer FROM els.event_outbox WHERE message_key = 'done-p' AND event_type = 'ExcessContentProvisioned'),
          1, 'ExcessContentProvisioned: once per excess content, not per delivery');
SELECT is(els.record_validation_failure(pg_temp.failure('done-p', 'bad-upload')),
          '{"batch_id": "done-p", "outcome": "duplicate", "essay_id": "p-alpha", "complete": true, "events": []}'::jsonb,
          'after completion: duplicate failure -> no event');
SELECT is(els.record_validation_failure(pg_temp.failure('done-p', 'late-bad-upload')),
          '{"batch_id": "done-p", "outcome": "excess", "essay_id": null, "complete": true, "events": []}'::jsonb,
          'after completion: a new failure is excess, no event');
SELECT is(els.register_batch('{"entity_id": "done-p", "expected_essay_count": 3, "essay_ids": ["p-zulu", "p-alpha", "p-mike"],
                               "course_code": "SV2", "user_id": "teacher-p", "org_id": "org-p", "class_id": "class-p"}') -> 'events',
          '[]'::jsonb, 'after completion: duplicate registration -> no event');
SELECT is(els.reconcile_batch('done-p') ->> 'outcome', 'unchanged', 'after completion: reconcile_batch changes nothing');
SELECT is(pg_temp.completions('done-p'), 1, 'after all of that: still exactly one completion event');
SELECT throws_ok(
    $$INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
      VALUES (gen_random_uuid(), 'BatchContentProvisioningCompleted', 'x', 'done-p', '{}')$$,
    '23505', NULL, 'a second completion row for a batch is impossible even by hand (unique index)');

-- ===========================================================================
-- Completion from record_validation_failure
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch('{"entity_id": "done-f", "expected_essay_count": 2, "essay_ids": ["f-1", "f-2"],
                                 "course_code": "ENG5", "user_id": "teacher-f", "correlation_id": "corr-reg-f"}');
END $setup$;
SELECT is(els.provision_content(pg_temp.content('done-f', 'ftext-1')) ->> 'complete', 'false',
          'failure: first slot filled, not complete');
INSERT INTO result VALUES ('f-last', els.record_validation_failure(pg_temp.failure('done-f', 'f-bad')));
SELECT is((SELECT value FROM result WHERE name = 'f-last'),
          jsonb_build_object('batch_id', 'done-f', 'outcome', 'recorded', 'essay_id', 'f-2', 'complete', true,
                             'events', jsonb_build_array(els.stable_event_id('BatchContentProvisioningCompleted', 'done-f'))),
          'failure: the failure closing the last slot completes the batch; events = [completion]');
SELECT is(pg_temp.completion('done-f') -> 'data',
          jsonb_build_object('batch_id', 'done-f', 'provisioned_count', 1, 'expected_count', 2,
                             'course_code', 'ENG5', 'user_id', 'teacher-f', 'class_type', 'GUEST',
                             'essays_for_processing', '[{"essay_id": "f-1", "text_storage_id": "ftext-1"}]'::jsonb,
                             'completion_reason', 'all_slots_closed',
                             'correlation_id', 'corr-reg-f', 'timestamp', pg_temp.utc_now()),
          'failure: completion data counts only ready essays (GUEST, registration''s correlation)');
SELECT is(pg_temp.completion('done-f') ->> 'correlation_id', 'corr-reg-f',
          'failure: the envelope correlation id is the registration''s');

-- all slots failed: provisioned_count 0, nothing for processing
DO $setup$ BEGIN
    PERFORM els.register_batch('{"entity_id": "done-allfail", "expected_essay_count": 1, "essay_ids": ["af-1"],
                                 "course_code": "ENG5", "user_id": "t"}');
END $setup$;
SELECT is(els.record_validation_failure(pg_temp.failure('done-allfail', 'af-bad')) ->> 'complete', 'true',
          'all failed: the batch completes');
SELECT is((pg_temp.completion('done-allfail') -> 'data') - 'correlation_id' - 'timestamp',
          '{"batch_id": "done-allfail", "provisioned_count": 0, "expected_count": 1, "course_code": "ENG5",
            "user_id": "t", "class_type": "GUEST", "essays_for_processing": [],
            "completion_reason": "all_slots_closed"}'::jsonb,
          'all failed: provisioned_count 0, essays_for_processing []');

-- ===========================================================================
-- Completion from register_batch (everything arrived before it)
-- ===========================================================================
SELECT is(ARRAY[els.provision_content(pg_temp.content('done-r', 'rtext-b', 'corr-rb')) ->> 'outcome',
                els.record_validation_failure(pg_temp.failure('done-r', 'r-bad')) ->> 'outcome',
                els.provision_content(pg_temp.content('done-r', 'rtext-a', 'corr-ra')) ->> 'outcome'],
          ARRAY['pending', 'pending', 'pending'], 'register: three items arrive before the registration');
INSERT INTO result VALUES ('r', els.register_batch('{"correlation_id": "corr-reg-r", "data": {"entity_id": "done-r",
    "expected_essay_count": 3, "essay_ids": ["r-3", "r-2", "r-1"], "course_code": "ENG6", "user_id": "teacher-r",
    "class_id": "class-r"}}'));
SELECT is((SELECT value FROM result WHERE name = 'r'),
          jsonb_build_object('batch_id', 'done-r', 'outcome', 'registered', 'class_type', 'REGULAR',
                             'expected_count', 3, 'slots_created', 3, 'content_assigned', 2,
                             'failures_applied', 1, 'excess', 0, 'complete', true,
                             'events', jsonb_build_array(
                                 els.stable_event_id('EssaySlotAssigned', 'done-r', 'r-3', 'rtext-b'),
                                 els.stable_event_id('EssaySlotAssigned', 'done-r', 'r-2', 'rtext-a'),
                                 els.stable_event_id('BatchContentProvisioningCompleted', 'done-r'))),
          'register: completes the batch; events = slot events in arrival order, then the completion');
SELECT is((SELECT value -> 'events' FROM result WHERE name = 'r'), pg_temp.outbox_ids('done-r'),
          'register: result events are exactly the batch''s outbox rows, in outbox order');
SELECT is((pg_temp.completion('done-r') -> 'data') - 'timestamp',
          '{"batch_id": "done-r", "provisioned_count": 2, "expected_count": 3, "course_code": "ENG6",
            "user_id": "teacher-r", "class_type": "REGULAR", "correlation_id": "corr-reg-r",
            "completion_reason": "all_slots_closed",
            "essays_for_processing": [{"essay_id": "r-3", "text_storage_id": "rtext-b"},
                                      {"essay_id": "r-2", "text_storage_id": "rtext-a"}]}'::jsonb,
          'register: completion data, ready essays in slot order');
SELECT results_eq(
    $$SELECT envelope ->> 'correlation_id', envelope -> 'data' ->> 'correlation_id'
        FROM els.event_outbox WHERE message_key = 'done-r' AND event_type = 'EssaySlotAssigned' ORDER BY id$$,
    $$VALUES ('corr-rb', 'corr-rb'), ('corr-ra', 'corr-ra')$$,
    'register: reconciled slot events carry each content''s own correlation id');
SELECT is(pg_temp.completions('done-r'), 1, 'register: one completion');

-- ===========================================================================
-- Event ids: stable, deterministic, well-formed, unique
-- ===========================================================================
SELECT is_empty(
    $$SELECT event_id FROM els.event_outbox WHERE message_key LIKE 'done-%' AND event_id <> CASE event_type
          WHEN 'BatchContentProvisioningCompleted' THEN els.stable_event_id(event_type, message_key)
          WHEN 'EssaySlotAssigned' THEN els.stable_event_id(event_type,
              message_key, envelope -> 'data' ->> 'essay_id', envelope -> 'data' ->> 'text_storage_id')
          WHEN 'ExcessContentProvisioned' THEN els.stable_event_id(event_type,
              message_key, envelope -> 'data' ->> 'text_storage_id')
      END$$,
    'every outbox event id is els.stable_event_id of its type and logical identity');
SELECT is_empty(
    $$SELECT event_id FROM els.event_outbox WHERE message_key LIKE 'done-%' AND (envelope ->> 'event_id')::uuid <> event_id$$,
    'the envelope''s event_id is the row''s event_id');
SELECT is(els.stable_event_id('BatchContentProvisioningCompleted', 'done-p'),
          els.stable_event_id('BatchContentProvisioningCompleted', 'done-p'),
          'stable_event_id: recomputation gives the same id');
SELECT isnt(els.stable_event_id('BatchContentProvisioningCompleted', 'done-p'),
            els.stable_event_id('BatchContentProvisioningCompleted', 'done-f'),
            'stable_event_id: another batch, another id');
SELECT isnt(els.stable_event_id('EssaySlotAssigned', 'done-p', 'x', 'y'),
            els.stable_event_id('ExcessContentProvisioned', 'done-p', 'x', 'y'),
            'stable_event_id: another event type, another id');
SELECT is_empty(
    $$SELECT event_id FROM els.event_outbox
       WHERE event_id::text !~ '^[0-9a-f]{8}-[0-9a-f]{4}-3[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'$$,
    'event ids are RFC 4122 name-based (version 3, variant 10) UUIDs');
SELECT volatility_is('els', 'stable_event_id', ARRAY['text', 'text[]'], 'immutable',
                     'stable_event_id is immutable');

-- Ids may contain separators such as '/': two different events whose ids
-- would join to the same string must still get different event ids (the
-- identity is a JSON array), or the second outbox insert would fail forever.
DO $setup$ BEGIN
    PERFORM els.register_batch('{"entity_id": "done-slash", "expected_essay_count": 2, "essay_ids": ["e1", "e1/x"],
                                 "course_code": "ENG5", "user_id": "t"}');
    PERFORM els.provision_content(pg_temp.content('done-slash', 'x/y'));   -- slot e1: identity done-slash/e1/x/y
    PERFORM els.register_batch('{"entity_id": "done-sl", "expected_essay_count": 1, "essay_ids": ["dsl-1"],
                                 "course_code": "ENG5", "user_id": "t"}');
    PERFORM els.register_batch('{"entity_id": "done-sl/a", "expected_essay_count": 1, "essay_ids": ["dsla-1"],
                                 "course_code": "ENG5", "user_id": "t"}');
    PERFORM els.provision_content(pg_temp.content('done-sl', 'fill-1'));
    PERFORM els.provision_content(pg_temp.content('done-sl/a', 'fill-2'));
    PERFORM els.provision_content(pg_temp.content('done-sl', 'a/b'));      -- excess: identity done-sl/a/b
END $setup$;
SELECT lives_ok($$SELECT els.provision_content(pg_temp.content('done-slash', 'y'))$$,
                'slot event ids never collide: text y into slot e1/x (identity done-slash/e1/x/y again)');
SELECT lives_ok($$SELECT els.provision_content(pg_temp.content('done-sl/a', 'b'))$$,
                'excess event ids never collide: text b excess in batch done-sl/a (identity done-sl/a/b again)');

-- Replaying the whole history of a batch from scratch recomputes the same ids.
CREATE TEMP TABLE first_run AS
    SELECT event_type, event_id, (envelope -> 'data') - 'timestamp' AS data FROM els.event_outbox WHERE message_key = 'done-r';
DELETE FROM els.event_outbox WHERE message_key = 'done-r';
UPDATE els.essay_slot SET status = 'uploaded', text_storage_id = NULL, failed_file_upload_id = NULL
 WHERE batch_id = 'done-r';
DELETE FROM els.essay_content WHERE batch_id = 'done-r';
DELETE FROM els.validation_failure WHERE batch_id = 'done-r';
DELETE FROM els.essay_slot WHERE batch_id = 'done-r';
DELETE FROM els.batch_tracker WHERE batch_id = 'done-r';
DO $replay$ BEGIN
    PERFORM els.provision_content(pg_temp.content('done-r', 'rtext-b', 'corr-rb'));
    PERFORM els.record_validation_failure(pg_temp.failure('done-r', 'r-bad'));
    PERFORM els.provision_content(pg_temp.content('done-r', 'rtext-a', 'corr-ra'));
    PERFORM els.register_batch('{"correlation_id": "corr-reg-r", "data": {"entity_id": "done-r",
        "expected_essay_count": 3, "essay_ids": ["r-3", "r-2", "r-1"], "course_code": "ENG6",
        "user_id": "teacher-r", "class_id": "class-r"}}');
END $replay$;
SELECT bag_eq(
    $$SELECT event_type, event_id, (envelope -> 'data') - 'timestamp' FROM els.event_outbox WHERE message_key = 'done-r'$$,
    $$SELECT event_type, event_id, data FROM first_run$$,
    'a replay of the same history emits the same events with the same ids');

-- The same history in another order: other slot assignments, same completion id.
DO $setup$ BEGIN
    PERFORM els.register_batch('{"entity_id": "done-order", "expected_essay_count": 2, "essay_ids": ["o-1", "o-2"],
                                 "course_code": "SV1", "user_id": "t"}');
    PERFORM els.provision_content(pg_temp.content('done-order', 'o-text-b'));
    PERFORM els.provision_content(pg_temp.content('done-order', 'o-text-a'));
END $setup$;
SELECT is(pg_temp.completion('done-order') ->> 'event_id',
          els.stable_event_id('BatchContentProvisioningCompleted', 'done-order')::text,
          'the completion id depends only on the batch, not on the order of events');

-- ===========================================================================
-- Excess via provision_content on a registered batch, one per content
-- ===========================================================================
DO $setup$ BEGIN
    PERFORM els.register_batch('{"entity_id": "done-x", "expected_essay_count": 1, "essay_ids": ["x-1"],
                                 "course_code": "SV3", "user_id": "t"}');
END $setup$;
SELECT is(els.provision_content(pg_temp.content('done-x', 'x-text-1')) -> 'events',
          jsonb_build_array(els.stable_event_id('EssaySlotAssigned', 'done-x', 'x-1', 'x-text-1'),
                            els.stable_event_id('BatchContentProvisioningCompleted', 'done-x')),
          'excess: the first content fills the only slot and completes');
SELECT is(ARRAY[els.provision_content(pg_temp.content('done-x', 'x-text-2')) ->> 'outcome',
                els.provision_content(pg_temp.content('done-x', 'x-text-3')) ->> 'outcome',
                els.provision_content(pg_temp.content('done-x', 'x-text-2')) ->> 'outcome'],
          ARRAY['excess', 'excess', 'duplicate'], 'excess: two more texts are excess, a redelivery a duplicate');
SELECT results_eq(
    $$SELECT envelope -> 'data' ->> 'text_storage_id', envelope -> 'data' ->> 'reason', topic
        FROM els.event_outbox WHERE message_key = 'done-x' AND event_type = 'ExcessContentProvisioned' ORDER BY id$$,
    $$VALUES ('x-text-2', 'NO_AVAILABLE_SLOT', 'huleedu.els.excess.content.provisioned.v1'),
             ('x-text-3', 'NO_AVAILABLE_SLOT', 'huleedu.els.excess.content.provisioned.v1')$$,
    'excess: one ExcessContentProvisioned per excess content, reason NO_AVAILABLE_SLOT');
SELECT is(pg_temp.completions('done-x'), 1, 'excess: still one completion');

-- ===========================================================================
-- Every envelope in the outbox has the SPEC section 2 shape
-- ===========================================================================
SELECT is_empty(
    $$SELECT id FROM els.event_outbox WHERE message_key LIKE 'done-%' AND NOT (
          envelope ?& ARRAY['event_id', 'event_type', 'event_timestamp', 'source_service', 'schema_version',
                            'correlation_id', 'data', 'metadata']
          AND envelope ->> 'source_service' = 'essay_lifecycle_service'
          AND envelope ->> 'event_type' = topic
          AND topic = els.output_topic(event_type)
          AND envelope -> 'schema_version' = '1'
          AND envelope -> 'data' ->> 'batch_id' = message_key
          AND envelope -> 'data' ->> 'correlation_id' = envelope ->> 'correlation_id'
          AND envelope -> 'data' ->> 'timestamp' = envelope ->> 'event_timestamp'
          AND (envelope ->> 'event_timestamp') ~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$')$$,
    'every outbox envelope: all keys, source essay_lifecycle_service, event_type = topic, key = batch id');
SELECT is(
    (SELECT array_agg(DISTINCT topic ORDER BY topic) FROM els.event_outbox WHERE message_key LIKE 'done-%'),
    ARRAY['huleedu.batch.content.provisioning.completed.v1', 'huleedu.els.essay.slot.assigned.v1',
          'huleedu.els.excess.content.provisioned.v1'],
    'the three output topics of SPEC section 5');
SELECT is(
    (SELECT count(*)::integer FROM els.event_outbox WHERE message_key LIKE 'done-%' AND event_type = 'EssaySlotAssigned'),
    (SELECT count(*)::integer FROM els.essay_slot WHERE batch_id LIKE 'done-%' AND status = 'ready_for_processing'),
    'exactly one EssaySlotAssigned per filled slot, across all batches here');

SELECT * FROM finish();
ROLLBACK;
