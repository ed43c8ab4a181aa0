-- Runs once, when the postgres container initialises an empty data directory.
-- Least privilege (SPEC 6): nothing of the application runs as the superuser.
--   els_migrator  runs the migrations: owns database els, may create roles, and is a
--                 member of els_owner (PostgreSQL 15 does not make a role's creator a
--                 member, and the migrations SET ROLE els_owner to own every object).
--   els_app       the worker's login: a member of els_worker only (EXECUTE on the ingest
--                 and relay functions, no table access).
-- The NOLOGIN roles are created here so that els_app can be a member from the start;
-- the migrations create them only when missing. Change the passwords for real use.
CREATE ROLE els_owner NOLOGIN;
CREATE ROLE els_worker NOLOGIN;
CREATE ROLE els_readonly NOLOGIN;
CREATE ROLE els_migrator LOGIN CREATEROLE PASSWORD 'els-migrator' IN ROLE els_owner;
CREATE ROLE els_app LOGIN PASSWORD 'els-app' IN ROLE els_worker;
ALTER DATABASE els OWNER TO els_migrator;
