-- Roles and privileges (SPEC section 6).
-- els_worker: EXECUTE on the ingest and outbox functions, no table access.
-- els_readonly: read tables and views, call the report functions, nothing that writes.
-- PUBLIC: nothing in els. SECURITY DEFINER functions pin search_path to
-- trusted schemas (pg_temp last), and a caller's hostile search_path cannot
-- redirect anything they do.
BEGIN;
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(97);

-- Runs p_sql as p_role (then returns to the caller's role). Used inside
-- throws_ok/lives_ok so that pgTAP itself keeps running as the test user.
CREATE FUNCTION pg_temp.as_role(p_role text, p_sql text) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', p_role);
    EXECUTE p_sql;
    RESET ROLE;
END
$fn$;

-- ===========================================================================
-- The full EXECUTE matrix: every function in els, for both roles
-- ===========================================================================
SELECT results_eq(
    $$SELECT p.oid::regprocedure::text,
             has_function_privilege('els_worker', p.oid, 'EXECUTE'),
             has_function_privilege('els_readonly', p.oid, 'EXECUTE')
        FROM pg_catalog.pg_proc AS p WHERE p.pronamespace = 'els'::regnamespace
       ORDER BY p.oid::regprocedure::text COLLATE "C"$$,
    $$VALUES ('els._apply_events(text[],jsonb[],jsonb[])', false, false),
             ('els._apply_items(jsonb)', false, false),
             ('els._apply_one(text,jsonb)', false, false),
             ('els._batch_lock_key(text)', false, false),
             ('els._check_delivery_coordinates(bigint[],text[],integer[],bigint[])', false, false),
             ('els._checked_length(text[],jsonb[],jsonb[])', false, false),
             ('els._claim_essays(text[],text[])', false, false),
             ('els._claims_across(text[],text[])', false, false),
             ('els._close_locked_batch(text,boolean)', false, false),
             ('els._complete_batches(text[],text)', false, false),
             ('els._complete_if_done(text,text)', false, false),
             ('els._completion_spec(text,text)', false, false),
             ('els._content_fault(jsonb,jsonb)', false, false),
             ('els._content_ok(jsonb,jsonb)', false, false),
             ('els._content_row(jsonb,jsonb)', false, false),
             ('els._correlation_id(jsonb,jsonb)', false, false),
             ('els._create_slots(text,text[],boolean)', false, false),
             ('els._emit_events(jsonb)', false, false),
             ('els._enum_fault(jsonb,text,text[])', false, false),
             ('els._enum_ok(jsonb,text[])', false, false),
             ('els._envelope(uuid,text,text,jsonb,text)', false, false),
             ('els._envelope_fault(jsonb,text,text)', false, false),
             ('els._envelope_ok(jsonb,text,text)', false, false),
             ('els._envelope_type_fault(jsonb,text)', false, false),
             ('els._essay_id_items(jsonb)', false, false),
             ('els._essay_owner_detail(text,text,boolean)', false, false),
             ('els._essay_owner_elsewhere(text,text[])', false, false),
             ('els._event_digest(text,jsonb)', true, true),
             ('els._event_id(text,jsonb)', true, true),
             ('els._event_timestamp()', false, false),
             ('els._excess_spec(text,text,text,text)', false, false),
             ('els._failure_fault(jsonb,jsonb)', false, false),
             ('els._failure_ok(jsonb,jsonb)', false, false),
             ('els._failure_row(jsonb,jsonb)', false, false),
             ('els._fault(text,text,jsonb)', false, false),
             ('els._integer_fault(jsonb,text,numeric)', false, false),
             ('els._integer_ok(jsonb,numeric)', false, false),
             ('els._item_results(els.item_step[])', false, false),
             ('els._judge_items(jsonb)', false, false),
             ('els._judge_registrations(jsonb)', false, false),
             ('els._lock_batch(text)', false, false),
             ('els._missing_fault(jsonb,text)', false, false),
             ('els._object_fault(jsonb,text)', false, false),
             ('els._object_ok(jsonb)', false, false),
             ('els._payload(jsonb)', false, false),
             ('els._place_items(els.item_step[])', false, false),
             ('els._present(jsonb)', false, false),
             ('els._read_events(text[],jsonb[],boolean[])', false, false),
             ('els._reconcile(text)', false, false),
             ('els._reconcile_content(text[])', false, false),
             ('els._reconcile_failures(text[])', false, false),
             ('els._register_alone(jsonb)', false, false),
             ('els._register_round(jsonb)', false, false),
             ('els._register_set(jsonb)', false, false),
             ('els._registration_fault(jsonb,jsonb,bigint,bigint,text)', false, false),
             ('els._registration_ok(jsonb,jsonb,bigint,bigint,text)', false, false),
             ('els._registration_results(jsonb,jsonb,jsonb)', false, false),
             ('els._registration_row(jsonb,jsonb)', false, false),
             ('els._reject(text,text,jsonb)', false, false),
             ('els._rejection(text,text,text,text)', false, false),
             ('els._release_across(text[],text[])', false, false),
             ('els._settle_batches(text[])', false, false),
             ('els._slot_assigned_spec(text,text,text,text,text,text)', false, false),
             ('els._text_array_fault(jsonb,text,bigint)', false, false),
             ('els._text_fault(jsonb,text,integer)', false, false),
             ('els._text_ok(jsonb,integer)', false, false),
             ('els._timestamp_fault(jsonb,text)', false, false),
             ('els._timestamp_ok(jsonb)', false, false),
             ('els._timestamp_pattern()', false, false),
             ('els._try_lock_batch(text)', false, false),
             ('els._uuid_v3(bytea)', true, true),
             ('els._verdict_across(integer,text,text,bigint)', false, false),
             ('els._write_item_effects(els.item_step[],boolean,boolean,boolean)', false, false),
             ('els._write_item_events(els.item_step[])', false, false),
             ('els._write_item_rows(els.item_step[],boolean,boolean)', false, false),
             ('els._write_registrations(jsonb,jsonb)', false, false),
             ('els.apply_events(jsonb)', true, false),
             ('els.apply_events(text[],text[])', true, false),
             ('els.batch_health(interval)', true, true),
             ('els.batch_report(text)', false, true),
             ('els.claim_essays(text[],text[],integer,bigint)', true, false),
             ('els.claim_outbox(integer)', true, false),
             ('els.claim_verdict(text,text,bigint)', true, false),
             ('els.close_batch(text)', true, false),
             ('els.close_overdue_batches(interval,integer)', true, false),
             ('els.key_hash(text)', true, true),
             ('els.mark_outbox_published(bigint[],text[],integer[],bigint[])', true, false),
             ('els.outbox_backlog()', true, true),
             ('els.outbox_envelopes(bigint[])', true, false),
             ('els.outbox_published_since(interval)', true, false),
             ('els.output_topic(text)', true, true),
             ('els.partition_of(text,integer)', true, true),
             ('els.provision_content(jsonb)', true, false),
             ('els.purge_history(interval)', true, false),
             ('els.purge_outbox(interval)', false, false),
             ('els.reap_claims(interval)', true, false),
             ('els.reconcile_batch(text)', false, false),
             ('els.record_outbox_redelivery(bigint[],text[],integer[],bigint[])', true, false),
             ('els.record_validation_failure(jsonb)', true, false),
             ('els.register_batch(jsonb)', true, false),
             ('els.release_claims(text[],text[],bigint)', true, false),
             ('els.set_aside_outbox(bigint,text)', true, false),
             ('els.stable_event_id(text,text[])', true, true),
             ('els.stuck_batch_list(interval,integer)', true, true)$$,
    'EXECUTE matrix of every els function for els_worker and els_readonly (internal helpers: nobody, but _event_id and its parts behind stable_event_id)');

-- function_privs_are for the public API
SELECT function_privs_are('els', f, ARRAY['jsonb'], 'els_worker', ARRAY['EXECUTE'],
                          format('els_worker may execute els.%s(jsonb)', f))
  FROM unnest(ARRAY['register_batch', 'provision_content', 'record_validation_failure']) AS f;
SELECT function_privs_are('els', f, ARRAY['jsonb'], 'els_readonly', ARRAY[]::text[],
                          format('els_readonly may not execute els.%s(jsonb)', f))
  FROM unnest(ARRAY['register_batch', 'provision_content', 'record_validation_failure']) AS f;
SELECT function_privs_are('els', 'claim_outbox', ARRAY['integer'], 'els_worker', ARRAY['EXECUTE'],
                          'els_worker may execute els.claim_outbox');
SELECT function_privs_are('els', 'mark_outbox_published', ARRAY['bigint[]', 'text[]', 'integer[]', 'bigint[]'], 'els_worker', ARRAY['EXECUTE'],
                          'els_worker may execute els.mark_outbox_published');
SELECT function_privs_are('els', 'purge_outbox', ARRAY['interval'], 'els_worker', ARRAY[]::text[],
                          'els_worker may not purge the outbox (SPEC 6: ingest and relay only)');
SELECT function_privs_are('els', 'set_aside_outbox', ARRAY['bigint', 'text'], 'els_worker', ARRAY['EXECUTE'],
                          'els_worker may set aside an unpublishable outbox row');
SELECT function_privs_are('els', 'set_aside_outbox', ARRAY['bigint', 'text'], 'els_readonly', ARRAY[]::text[],
                          'els_readonly may not set aside outbox rows');
SELECT function_privs_are('els', 'outbox_backlog', ARRAY[]::text[], 'els_worker', ARRAY['EXECUTE'],
                          'els_worker may execute els.outbox_backlog');
SELECT function_privs_are('els', 'claim_outbox', ARRAY['integer'], 'els_readonly', ARRAY[]::text[],
                          'els_readonly may not claim outbox rows');
SELECT function_privs_are('els', 'mark_outbox_published', ARRAY['bigint[]', 'text[]', 'integer[]', 'bigint[]'], 'els_readonly', ARRAY[]::text[],
                          'els_readonly may not mark outbox rows');
SELECT function_privs_are('els', 'purge_outbox', ARRAY['interval'], 'els_readonly', ARRAY[]::text[],
                          'els_readonly may not purge the outbox');
SELECT function_privs_are('els', 'reconcile_batch', ARRAY['text'], 'els_readonly', ARRAY[]::text[],
                          'els_readonly may not re-drive a batch');
SELECT function_privs_are('els', 'batch_report', ARRAY['text'], 'els_readonly', ARRAY['EXECUTE'],
                          'els_readonly may execute els.batch_report');
SELECT function_privs_are('els', 'stuck_batch_list', ARRAY['interval', 'integer'], 'els_readonly', ARRAY['EXECUTE'],
                          'els_readonly may execute els.stuck_batch_list');
SELECT function_privs_are('els', '_emit_events', ARRAY['jsonb'], 'els_worker', ARRAY[]::text[],
                          'els_worker may not write outbox events directly (els._emit_events)');
-- SPEC 8/10: the deadline and retention calls are the worker's (maintenance loop), not els_readonly's
SELECT function_privs_are('els', f.name, f.args, 'els_worker', ARRAY['EXECUTE'],
                          format('els_worker may execute els.%s (SPEC 10)', f.name))
  FROM (VALUES ('close_overdue_batches', ARRAY['interval', 'integer']), ('close_batch', ARRAY['text']),
               ('purge_history', ARRAY['interval'])) AS f(name, args);
SELECT function_privs_are('els', f.name, f.args, 'els_readonly', ARRAY[]::text[],
                          format('els_readonly may not execute els.%s (SPEC 8)', f.name))
  FROM (VALUES ('close_overdue_batches', ARRAY['interval', 'integer']), ('close_batch', ARRAY['text']),
               ('purge_history', ARRAY['interval'])) AS f(name, args);
SELECT function_privs_are('els', 'batch_health', ARRAY['interval'], 'els_worker', ARRAY['EXECUTE'],
                          'els_worker may execute els.batch_health (its gauges)');
SELECT function_privs_are('els', 'batch_health', ARRAY['interval'], 'els_readonly', ARRAY['EXECUTE'],
                          'els_readonly may execute els.batch_health (a report)');
SELECT throws_ok($$SELECT pg_temp.as_role('els_readonly', 'SELECT els.close_batch(''x'')')$$, '42501', NULL,
                 'els_readonly cannot close a batch');
SELECT throws_ok($$SELECT pg_temp.as_role('els_readonly', 'SELECT els.purge_history(''1 day'')')$$, '42501', NULL,
                 'els_readonly cannot purge history');
SELECT lives_ok($$SELECT pg_temp.as_role('els_worker', $q$
    SELECT els.close_overdue_batches(older_than => '1 day', max_batches => 10),
           els.purge_history(older_than => '1 day'), els.batch_health(stuck_after => '1 hour')$q$)$$,
    'els_worker can call the maintenance functions with named arguments (SECURITY DEFINER does the table work)');

-- ===========================================================================
-- PUBLIC: nothing in els
-- ===========================================================================
SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
       WHERE p.pronamespace = 'els'::regnamespace
         AND (p.proacl IS NULL      -- NULL acl = the default, which grants EXECUTE to PUBLIC
              OR EXISTS (SELECT FROM pg_catalog.aclexplode(p.proacl) AS a
                          WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))$$,
    'PUBLIC has EXECUTE on no function in els (aclexplode of every proacl)');
SELECT is_empty(
    $$SELECT c.oid::regclass FROM pg_catalog.pg_class AS c
       WHERE c.relnamespace = 'els'::regnamespace
         AND EXISTS (SELECT FROM pg_catalog.aclexplode(c.relacl) AS a WHERE a.grantee = 0)$$,
    'PUBLIC has no privilege on any table, view or sequence in els');
SELECT ok(NOT EXISTS (SELECT FROM pg_catalog.aclexplode((SELECT nspacl FROM pg_catalog.pg_namespace WHERE nspname = 'els')) AS a
                       WHERE a.grantee = 0),
          'PUBLIC has no privilege on schema els');
SELECT ok(NOT has_schema_privilege('els_worker', 'els', 'CREATE') AND NOT has_schema_privilege('els_readonly', 'els', 'CREATE'),
          'neither els_worker nor els_readonly may create objects in schema els');

CREATE ROLE els_test_nobody NOLOGIN;
SELECT throws_ok($$SELECT pg_temp.as_role('els_test_nobody', 'SELECT els.register_batch(''{}'')')$$, '42501', NULL,
                 'a role with no grant cannot call els.register_batch');
SELECT throws_ok($$SELECT pg_temp.as_role('els_test_nobody', 'SELECT els.batch_report(''x'')')$$, '42501', NULL,
                 'a role with no grant cannot call els.batch_report');
SELECT throws_ok($$SELECT pg_temp.as_role('els_test_nobody', 'SELECT els.stable_event_id(''a'', ''b'')')$$, '42501', NULL,
                 'a role with no grant cannot call even the pure helper els.stable_event_id');

-- ===========================================================================
-- els_worker: no direct table access, but the functions work for it
-- ===========================================================================
SELECT throws_ok(format($$SELECT pg_temp.as_role('els_worker', %L)$$, format('SELECT * FROM %s', t)), '42501', NULL,
                 format('els_worker cannot SELECT from %s', t))
  FROM unnest(ARRAY['els.batch_tracker', 'els.essay_slot', 'els.essay_content', 'els.validation_failure',
                    'els.event_outbox', 'els.stuck_batches', 'els.batch_tombstone']) AS t;
SELECT throws_ok($$SELECT pg_temp.as_role('els_worker',
                     'INSERT INTO els.batch_tracker (batch_id, expected_count, essay_ids, course_code, user_id, correlation_id)
                      VALUES (''w'', 1, ARRAY[''w''], ''ENG5'', ''u'', ''c'')')$$, '42501', NULL,
                 'els_worker cannot INSERT into els.batch_tracker');
SELECT throws_ok($$SELECT pg_temp.as_role('els_worker',
                     'INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
                      VALUES (gen_random_uuid(), ''x'', ''x'', ''x'', ''{}'')')$$, '42501', NULL,
                 'els_worker cannot INSERT into els.event_outbox');
SELECT throws_ok($$SELECT pg_temp.as_role('els_worker', 'UPDATE els.essay_slot SET status = ''uploaded''')$$, '42501', NULL,
                 'els_worker cannot UPDATE els.essay_slot');
SELECT throws_ok($$SELECT pg_temp.as_role('els_worker', 'DELETE FROM els.event_outbox')$$, '42501', NULL,
                 'els_worker cannot DELETE from els.event_outbox');
SELECT throws_ok($$SELECT pg_temp.as_role('els_worker', 'SELECT nextval(''els.arrival_seq'')')$$, '42501', NULL,
                 'els_worker cannot use els.arrival_seq');
SELECT throws_ok($$SELECT pg_temp.as_role('els_worker', 'SELECT els._emit_events(''[]'')')$$, '42501', NULL,
                 'els_worker cannot call the internal els._emit_events');
SELECT is_empty(
    $$SELECT c.oid::regclass FROM pg_catalog.pg_class AS c
       WHERE c.relnamespace = 'els'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
         AND (has_table_privilege('els_worker', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'))$$,
    'els_worker holds no privilege on any relation in els');

SELECT lives_ok($$SELECT pg_temp.as_role('els_worker', $q$
    SELECT els.register_batch('{"entity_id": "priv-w", "expected_essay_count": 2, "essay_ids": ["pw-1", "pw-2"],
                                "course_code": "ENG5", "user_id": "u"}'),
           els.provision_content('{"entity_id": "priv-w", "text_storage_id": "t", "file_upload_id": "f",
                                   "original_file_name": "n"}'),
           els.record_validation_failure('{"entity_id": "priv-w", "file_upload_id": "g", "original_file_name": "n",
                                           "validation_error_code": "EMPTY_CONTENT"}'),
           els.stuck_batch_list(), els.outbox_backlog()$q$)$$,
    'els_worker can call the ingest, stuck-list and outbox functions (SECURITY DEFINER does the table work)');
SELECT throws_ok(format($$SELECT pg_temp.as_role('els_worker', %L)$$, format('SELECT %s', c)), '42501', NULL,
                 format('els_worker cannot call %s (SPEC 6: ingest and relay only)', c))
  FROM unnest(ARRAY['els.batch_report(''priv-w'')', 'els.reconcile_batch(''priv-w'')',
                    'els.purge_outbox(''-1000 years'')']) AS c;
SELECT lives_ok($$SELECT pg_temp.as_role('els_worker', $q$
    SELECT els.mark_outbox_published(array_agg(c.id), array_agg('t'::text), array_agg(0),
                                     array_agg(c.id)) FROM els.claim_outbox(10) AS c$q$)$$,
    'els_worker can claim and mark outbox rows');
SELECT results_eq(
    $$SELECT status::text, count(*)::integer FROM els.essay_slot WHERE batch_id = 'priv-w' GROUP BY 1 ORDER BY 1$$,
    $$VALUES ('content_ingestion_failed', 1), ('ready_for_processing', 1)$$,
    'the calls made as els_worker took effect');
SELECT is((SELECT count(*)::integer FROM els.event_outbox WHERE message_key = 'priv-w' AND published_at IS NULL), 0,
          'the outbox rows claimed and marked as els_worker are published');

-- ===========================================================================
-- els_readonly: reads everything, writes nothing
-- ===========================================================================
SELECT lives_ok(format($$SELECT pg_temp.as_role('els_readonly', %L)$$, format('SELECT count(*) FROM %s', t)),
                format('els_readonly can SELECT from %s', t))
  FROM unnest(ARRAY['els.batch_tracker', 'els.essay_slot', 'els.essay_content', 'els.validation_failure',
                    'els.event_outbox', 'els.stuck_batches', 'els.batch_tombstone']) AS t;
SELECT lives_ok($$SELECT pg_temp.as_role('els_readonly',
                    'SELECT els.batch_report(''priv-w''), els.stuck_batch_list(), els.outbox_backlog()')$$,
                'els_readonly can call batch_report, stuck_batch_list and outbox_backlog');
SELECT throws_ok($$SELECT pg_temp.as_role('els_readonly', 'SELECT els.register_batch(''{}'')')$$, '42501', NULL,
                 'els_readonly cannot call els.register_batch');
SELECT throws_ok($$SELECT pg_temp.as_role('els_readonly', 'SELECT els.provision_content(''{}'')')$$, '42501', NULL,
                 'els_readonly cannot call els.provision_content');
SELECT throws_ok($$SELECT pg_temp.as_role('els_readonly', 'SELECT els.reconcile_batch(''priv-w'')')$$, '42501', NULL,
                 'els_readonly cannot call els.reconcile_batch');
SELECT throws_ok($$SELECT pg_temp.as_role('els_readonly', 'SELECT * FROM els.claim_outbox(1)')$$, '42501', NULL,
                 'els_readonly cannot claim outbox rows');
SELECT throws_ok($$SELECT pg_temp.as_role('els_readonly', 'DELETE FROM els.event_outbox')$$, '42501', NULL,
                 'els_readonly cannot DELETE from els.event_outbox');
SELECT throws_ok($$SELECT pg_temp.as_role('els_readonly', 'UPDATE els.batch_tracker SET completed_at = now()')$$, '42501', NULL,
                 'els_readonly cannot UPDATE els.batch_tracker');
SELECT is_empty(
    $$SELECT c.oid::regclass FROM pg_catalog.pg_class AS c
       WHERE c.relnamespace = 'els'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
         AND (NOT has_table_privilege('els_readonly', c.oid, 'SELECT')
              OR has_table_privilege('els_readonly', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE'))$$,
    'els_readonly may SELECT every table and view in els, and write none');

-- ===========================================================================
-- SECURITY DEFINER functions: owned by els_owner (not a superuser), search_path pinned
-- ===========================================================================
SELECT is_definer('els', f, ARRAY['jsonb'], format('els.%s is SECURITY DEFINER', f))
  FROM unnest(ARRAY['register_batch', 'provision_content', 'record_validation_failure']) AS f;
SELECT is_definer('els', 'reconcile_batch', ARRAY['text'], 'els.reconcile_batch is SECURITY DEFINER');
SELECT is_definer('els', 'batch_report', ARRAY['text'], 'els.batch_report is SECURITY DEFINER');
SELECT is_definer('els', 'claim_outbox', ARRAY['integer'], 'els.claim_outbox is SECURITY DEFINER');
SELECT isnt_definer('els', '_emit_events', ARRAY['jsonb'], 'internal helpers are not SECURITY DEFINER');
SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
       WHERE p.pronamespace = 'els'::regnamespace AND p.proowner <> 'els_owner'::regrole$$,
    'every function in els is owned by els_owner');
SELECT ok(NOT (SELECT rolsuper OR rolbypassrls OR rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = 'els_owner'),
          'els_owner, the role SECURITY DEFINER functions run as, is not a superuser');
SELECT is_empty(
    $$SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
       WHERE p.pronamespace = 'els'::regnamespace AND p.prosecdef
         AND NOT EXISTS (SELECT FROM unnest(p.proconfig) AS c WHERE c LIKE 'search_path=%')$$,
    'every SECURITY DEFINER function sets search_path');
SELECT is_empty(
    $$SELECT p.oid::regprocedure, c
        FROM pg_catalog.pg_proc AS p, unnest(p.proconfig) AS c
       WHERE p.pronamespace = 'els'::regnamespace AND p.prosecdef AND c LIKE 'search_path=%'
         AND EXISTS (SELECT FROM regexp_split_to_table(substr(c, 13), '\s*,\s*') AS s
                      WHERE trim(both '"' from s) NOT IN ('pg_catalog', 'pg_temp', 'els'))$$,
    'SECURITY DEFINER search_paths hold only trusted schemas (no public, no $user)');
SELECT is_empty(
    $$SELECT p.oid::regprocedure, c
        FROM pg_catalog.pg_proc AS p, unnest(p.proconfig) AS c
       WHERE p.pronamespace = 'els'::regnamespace AND p.prosecdef AND c LIKE 'search_path=%'
         AND (SELECT array_agg(trim(both '"' from s)) FROM regexp_split_to_table(substr(c, 13), '\s*,\s*') AS s)[
                 cardinality(regexp_split_to_array(substr(c, 13), '\s*,\s*'))] <> 'pg_temp'$$,
    'SECURITY DEFINER search_paths name pg_temp explicitly, last (else it would be searched first)');
SELECT is(
    (SELECT array_agg(DISTINCT c) FROM pg_catalog.pg_proc AS p, unnest(p.proconfig) AS c
      WHERE p.pronamespace = 'els'::regnamespace AND p.prosecdef),
    ARRAY['search_path=pg_catalog, pg_temp'],
    'every SECURITY DEFINER function uses exactly search_path = pg_catalog, pg_temp');

-- ===========================================================================
-- A hostile caller search_path does not redirect a call
-- ===========================================================================
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE TABLE evil.calls (fn text);
GRANT INSERT, SELECT ON evil.calls TO PUBLIC;
-- look-alike tables, writable by anyone
CREATE TABLE evil.batch_tracker (LIKE els.batch_tracker);
CREATE TABLE evil.essay_slot (LIKE els.essay_slot);
CREATE TABLE evil.essay_content (LIKE els.essay_content);
CREATE TABLE evil.validation_failure (LIKE els.validation_failure);
CREATE TABLE evil.event_outbox (LIKE els.event_outbox);
GRANT ALL ON ALL TABLES IN SCHEMA evil TO PUBLIC;
-- look-alike functions with exact-match signatures, which would win over
-- pg_catalog's if evil came first in the path used to resolve names
CREATE FUNCTION evil.jsonb_typeof(jsonb) RETURNS text LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO evil.calls VALUES ('jsonb_typeof'); RETURN 'object'; END$$;
CREATE FUNCTION evil.jsonb_build_object(text, text) RETURNS jsonb LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO evil.calls VALUES ('jsonb_build_object'); RETURN '{}'; END$$;
CREATE FUNCTION evil.length(text) RETURNS integer LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO evil.calls VALUES ('length'); RETURN 1; END$$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO evil.calls VALUES ('now'); RETURN '2000-01-01'; END$$;
CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO evil.calls VALUES ('gen_random_uuid'); RETURN '00000000-0000-0000-0000-000000000000'; END$$;
CREATE FUNCTION evil.md5(text) RETURNS text LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO evil.calls VALUES ('md5'); RETURN '00000000000000000000000000000000'; END$$;
CREATE FUNCTION evil.cardinality(anyarray) RETURNS integer LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO evil.calls VALUES ('cardinality'); RETURN 2; END$$;
CREATE FUNCTION evil.pg_advisory_xact_lock(bigint) RETURNS void LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO evil.calls VALUES ('pg_advisory_xact_lock'); END$$;
CREATE FUNCTION evil.to_char(timestamp, text) RETURNS text LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO evil.calls VALUES ('to_char'); RETURN 'evil'; END$$;

CREATE TEMP TABLE hostile (name text PRIMARY KEY, value jsonb, error text);
GRANT ALL ON hostile TO els_worker, els_readonly;
-- Runs p_sql with the hostile search_path in force, keeping its result or its
-- error (so that a leak shows as a failed test, not an aborted file). Only the
-- EXECUTEd statement sees the hostile path; this helper's own statements run
-- under its pinned path.
CREATE FUNCTION pg_temp.hostile_call(p_name text, p_sql text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v_result jsonb;
    v_error text;
BEGIN
    BEGIN
        PERFORM pg_catalog.set_config('search_path', 'evil, pg_catalog, public', true);
        EXECUTE p_sql INTO v_result;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    EXCEPTION WHEN OTHERS THEN  -- the subtransaction's rollback restores the pinned path
        GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT;
    END;
    INSERT INTO pg_temp.hostile VALUES (p_name, v_result, v_error);
END
$fn$;

SET LOCAL ROLE els_worker;
SELECT pg_temp.hostile_call('register', $q$SELECT els.register_batch('{"entity_id": "priv-evil", "expected_essay_count": 2,
    "essay_ids": ["pe-1", "pe-2"], "course_code": "ENG5", "user_id": "u"}')$q$);
SELECT pg_temp.hostile_call('content', $q$SELECT els.provision_content('{"entity_id": "priv-evil", "text_storage_id": "t1",
    "file_upload_id": "f1", "original_file_name": "n"}')$q$);
SELECT pg_temp.hostile_call('failure', $q$SELECT els.record_validation_failure('{"entity_id": "priv-evil", "file_upload_id": "f2",
    "original_file_name": "n", "validation_error_code": "EMPTY_CONTENT"}')$q$);
SELECT pg_temp.hostile_call('stable_id', $q$SELECT to_jsonb(els.stable_event_id('BatchContentProvisioningCompleted', 'priv-evil'))$q$);
SELECT pg_temp.hostile_call('backlog', $q$SELECT to_jsonb(b) FROM els.outbox_backlog() AS b$q$);
-- the deadline and retention calls (SPEC 10), as the worker's maintenance loop makes them
SELECT pg_temp.hostile_call('close', $q$SELECT els.close_batch(batch_id => 'priv-evil')$q$);
SELECT pg_temp.hostile_call('overdue', $q$SELECT els.close_overdue_batches(older_than => '0 seconds', max_batches => 10)$q$);
SELECT pg_temp.hostile_call('purge', $q$SELECT els.purge_history(older_than => '1 day')$q$);
SELECT pg_temp.hostile_call('health', $q$SELECT els.batch_health(stuck_after => '1 hour')$q$);
RESET ROLE;
SET LOCAL ROLE els_readonly;
SELECT pg_temp.hostile_call('report', $q$SELECT els.batch_report('priv-evil')$q$);
RESET ROLE;
-- re-driving is the owner's (a DBA's) call; the pinned path must hold for it too
SELECT pg_temp.hostile_call('reconcile', $q$SELECT els.reconcile_batch('priv-evil')$q$);

SELECT is_empty($$SELECT name, error FROM hostile WHERE error IS NOT NULL$$,
                'hostile search_path: no call failed');
SELECT is_empty($$SELECT fn FROM evil.calls$$, 'hostile search_path: no look-alike function was called');
SELECT is_empty(
    $$SELECT 1 FROM evil.batch_tracker UNION ALL SELECT 1 FROM evil.essay_slot UNION ALL SELECT 1 FROM evil.essay_content
      UNION ALL SELECT 1 FROM evil.validation_failure UNION ALL SELECT 1 FROM evil.event_outbox$$,
    'hostile search_path: no look-alike table was written');
SELECT results_eq(
    $$SELECT name, value ->> 'outcome', (value ->> 'complete')::boolean FROM hostile
       WHERE name IN ('register', 'content', 'failure', 'reconcile') ORDER BY name$$,
    $$VALUES ('content', 'assigned', false), ('failure', 'recorded', true),
             ('reconcile', 'unchanged', true), ('register', 'registered', false)$$,
    'hostile search_path: the calls behaved normally');
SELECT results_eq(
    $$SELECT slot_no, essay_id, status::text FROM els.essay_slot WHERE batch_id = 'priv-evil' ORDER BY slot_no$$,
    $$VALUES (1, 'pe-1', 'ready_for_processing'), (2, 'pe-2', 'content_ingestion_failed')$$,
    'hostile search_path: the real els tables got the rows');
SELECT is((SELECT envelope ->> 'event_timestamp' FROM els.event_outbox
            WHERE message_key = 'priv-evil' AND event_type = 'BatchContentProvisioningCompleted'),
          to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
          'hostile search_path: timestamps come from pg_catalog.now/to_char');
SELECT results_eq(
    $$SELECT name, value ->> 'outcome', (value ? 'batches_closed' OR value ? 'batches_purged' OR value ? 'incomplete_batches')
        FROM hostile WHERE name IN ('close', 'overdue', 'purge', 'health') ORDER BY name$$,
    $$VALUES ('close', 'already_complete', false), ('health', NULL, true), ('overdue', NULL, true), ('purge', NULL, true)$$,
    'hostile search_path: the deadline and retention calls behaved normally');
SELECT is((SELECT value #>> '{}' FROM hostile WHERE name = 'stable_id'),
          els.stable_event_id('BatchContentProvisioningCompleted', 'priv-evil')::text,
          'hostile search_path: stable_event_id (not a definer, but a bound SQL body) gives the same id');
SELECT is((SELECT value -> 'tracker' ->> 'class_type' FROM hostile WHERE name = 'report'), 'GUEST',
          'hostile search_path: batch_report reads the real tables');
SELECT is((SELECT (value ->> 'unpublished')::integer FROM hostile WHERE name = 'backlog'),
          (SELECT count(*)::integer FROM els.event_outbox WHERE published_at IS NULL),
          'hostile search_path: outbox_backlog counts the real outbox');

SELECT * FROM finish();
ROLLBACK;
