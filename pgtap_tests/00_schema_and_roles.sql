-- Schema, roles and privileges of SPEC section 6.
BEGIN;
SELECT plan(12);

SELECT has_schema('els', 'schema els exists');
SELECT has_role('els_worker', 'role els_worker exists');
SELECT has_role('els_readonly', 'role els_readonly exists');

SELECT has_function('els', 'register_batch', ARRAY['jsonb'], 'els.register_batch(jsonb) exists');
SELECT has_function('els', 'provision_content', ARRAY['jsonb'], 'els.provision_content(jsonb) exists');
SELECT has_function('els', 'record_validation_failure', ARRAY['jsonb'],
                    'els.record_validation_failure(jsonb) exists');
SELECT function_returns('els', 'register_batch', ARRAY['jsonb'], 'jsonb',
                        'register_batch returns jsonb');
SELECT has_table('els', 'event_outbox', 'outbox table els.event_outbox exists');

SELECT ok(has_function_privilege('els_worker', 'els.register_batch(jsonb)', 'EXECUTE'),
          'els_worker may execute register_batch');
SELECT ok(NOT has_function_privilege('els_readonly', 'els.register_batch(jsonb)', 'EXECUTE'),
          'els_readonly may not execute register_batch');

-- PUBLIC may execute nothing in els
SELECT is_empty($$
    SELECT p.oid::regprocedure::text
    FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'els'
      AND (p.proacl IS NULL
           OR EXISTS (SELECT FROM pg_catalog.aclexplode(p.proacl) a
                      WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
$$, 'PUBLIC has EXECUTE on no function in els');

-- no table access for the worker role
SELECT is_empty($$
    SELECT c.oid::regclass::text
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'els' AND c.relkind IN ('r', 'p', 'v', 'm')
      AND (has_table_privilege('els_worker', c.oid, 'SELECT')
           OR has_table_privilege('els_worker', c.oid, 'INSERT')
           OR has_table_privilege('els_worker', c.oid, 'UPDATE')
           OR has_table_privilege('els_worker', c.oid, 'DELETE'))
$$, 'els_worker has no direct access to tables or views in els');

SELECT * FROM finish();
ROLLBACK;
