"""Roles of SPEC section 6 and the els schema.

Roles are cluster-wide, so creating them is idempotent (another database of the
same cluster may already have them) and rollback leaves them in place: dropping
a role that other databases still grant to would fail.

- els_owner    owns the schema and everything in it; SECURITY DEFINER
               functions run as this role, never as a superuser.
- els_worker   may execute the ingest and outbox functions, nothing else.
- els_readonly may read tables and views and call the report functions.

All three are NOLOGIN group roles: deployments grant them to login users.
"""

from yoyo import step

__depends__: set[str] = set()

CREATE_ROLES = """
DO $roles$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['els_owner', 'els_worker', 'els_readonly'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        END IF;
    END LOOP;
END
$roles$;
"""

CREATE_SCHEMA = """
CREATE SCHEMA els AUTHORIZATION els_owner;
REVOKE ALL ON SCHEMA els FROM PUBLIC;
GRANT USAGE ON SCHEMA els TO els_worker, els_readonly;
-- Functions get EXECUTE for PUBLIC by default; nothing in els may be callable by PUBLIC.
ALTER DEFAULT PRIVILEGES FOR ROLE els_owner IN SCHEMA els REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE els_owner IN SCHEMA els GRANT SELECT ON TABLES TO els_readonly;
"""

DROP_SCHEMA = """
ALTER DEFAULT PRIVILEGES FOR ROLE els_owner IN SCHEMA els GRANT EXECUTE ON FUNCTIONS TO PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE els_owner IN SCHEMA els REVOKE SELECT ON TABLES FROM els_readonly;
DROP SCHEMA els CASCADE;
"""

steps = [
    step(CREATE_ROLES),
    step(CREATE_SCHEMA, DROP_SCHEMA),
]
