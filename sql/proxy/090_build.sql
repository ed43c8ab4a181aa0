-- The proxy's functions, generated from the partitions' own catalog (never copied by
-- hand): every public function of schema els of a partition (name without a leading
-- underscore) has a route below, and els_proxy.build makes the proxy's function of
-- the same signature, comment and grants from it. A function without a route fails the
-- build, so a new function cannot be forgotten.
--
-- Routes:
--   ingest     written in 020_ingest.sql (split by batch id); the build checks it exists
--   batch      about one batch: run on the partition of its first argument (a batch id)
--   counts     on every partition; answers merged by els_proxy.merge_counts
--   list       on every partition; the lists joined by els_proxy.merge_lists
--   any        the same answer everywhere (pure functions): any one partition
--   local      defined in the proxy itself (sql/001_partition_map.sql)
--   partition  a partition's own business (its outbox, its claims): not on the proxy;
--              the worker calls it on each partition (ELS_PARTITION_URLS)
-- A view of a partition becomes a view over the rows of all of them.
CREATE OR REPLACE FUNCTION els_proxy.routes()
RETURNS TABLE (name text, route text)
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    VALUES ('register_batch', 'ingest'), ('provision_content', 'ingest'),
           ('record_validation_failure', 'ingest'), ('apply_events', 'ingest'),
           ('batch_report', 'batch'), ('reconcile_batch', 'batch'), ('close_batch', 'batch'),
           ('close_overdue_batches', 'counts'), ('purge_history', 'counts'),
           ('batch_health', 'counts'), ('reap_claims', 'counts'),
           ('stuck_batch_list', 'list'),
           ('stable_event_id', 'any'), ('output_topic', 'any'),
           ('key_hash', 'local'), ('partition_of', 'local'),
           ('claim_outbox', 'partition'), ('mark_outbox_published', 'partition'),
           ('set_aside_outbox', 'partition'), ('purge_outbox', 'partition'),
           ('outbox_backlog', 'partition'), ('outbox_published_since', 'partition'),
           ('outbox_envelopes', 'partition'), ('record_outbox_redelivery', 'partition'),
           ('claim_essays', 'partition'), ('claim_verdict', 'partition'),
           ('release_claims', 'partition');
END;

-- The call of a function's remote half with the wrapper's own arguments: $1, $2, ...
-- (VARIADIC passed on as such).
CREATE OR REPLACE FUNCTION els_proxy.call_args(p_nargs integer, p_variadic boolean)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN (SELECT coalesce(string_agg(CASE WHEN p_variadic AND i = p_nargs THEN 'VARIADIC ' ELSE '' END
                                   || '$' || i, ', ' ORDER BY i), '')
          FROM generate_series(1, p_nargs) AS i);

-- One function of the partitions' catalog (p_fn: name, args, identity_args, result,
-- nargs, variadic, volatility, description, grantees) on the proxy by its route.
CREATE OR REPLACE FUNCTION els_proxy.build_function(p_fn jsonb, p_route text)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_name text := p_fn ->> 'name';
    v_call text := els_proxy.call_args((p_fn ->> 'nargs')::integer, (p_fn ->> 'variadic')::boolean);
    v_remote_result text := p_fn ->> 'result';
    v_body text;
BEGIN
    IF p_route IN ('counts', 'list') THEN
        v_remote_result := 'SETOF ' || v_remote_result;
    END IF;
    -- PL/Proxy takes no VARIADIC parameter: the remote half takes the array, and its
    -- remote call passes it on as VARIADIC
    EXECUTE format($ddl$CREATE FUNCTION els_remote.%I(%s) RETURNS %s LANGUAGE plproxy AS $body$
        CLUSTER 'els_partitions'; %s %s; $body$$ddl$,
        v_name, replace(p_fn ->> 'identity_args', 'VARIADIC ', ''), v_remote_result,
        CASE p_route WHEN 'batch' THEN 'RUN ON els.key_hash($1);'
                     WHEN 'any' THEN 'RUN ON ANY;' ELSE 'RUN ON ALL;' END,
        CASE WHEN (p_fn ->> 'variadic')::boolean
             THEN format('SELECT els.%I(%s)', v_name,
                         (SELECT string_agg(CASE WHEN a.i = (p_fn ->> 'nargs')::integer
                                                 THEN 'VARIADIC ' ELSE '' END || a.name, ', ' ORDER BY a.i)
                            FROM jsonb_array_elements_text(p_fn -> 'arg_names') WITH ORDINALITY AS a(name, i)))
             ELSE format('TARGET els.%I', v_name) END);
    v_call := replace(v_call, 'VARIADIC ', '');
    v_body := CASE p_route
        WHEN 'counts' THEN format('SELECT els_proxy.merge_counts(array_agg(r)) FROM els_remote.%I(%s) AS r',
                                  v_name, v_call)
        WHEN 'list' THEN format('SELECT els_proxy.merge_lists(array_agg(r), %L, $2) FROM els_remote.%I(%s) AS r',
                                'registered_at', v_name, v_call)
        ELSE format('SELECT els_remote.%I(%s)', v_name, v_call) END;
    EXECUTE format($ddl$CREATE FUNCTION els.%I(%s) RETURNS %s LANGUAGE plpgsql %s SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp AS $body$
        DECLARE v_state text; v_message text; v_detail text; v_hint text;
        BEGIN
            RETURN (%s);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                    v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
            PERFORM els_proxy.raise_as_partition(v_state, v_message, v_detail, v_hint);
            RAISE;  -- not reached: raise_as_partition raises
        END $body$$ddl$,
        v_name, p_fn ->> 'args', p_fn ->> 'result', p_fn ->> 'volatility', v_body);
END
$fn$;

-- A view of the partitions (p_view: name, columns, grantees) as the rows of all of them.
CREATE OR REPLACE FUNCTION els_proxy.build_view(p_view jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_name text := p_view ->> 'name';
BEGIN
    EXECUTE format($ddl$CREATE FUNCTION els_remote.%I() RETURNS TABLE (%s) LANGUAGE plproxy AS $body$
        CLUSTER 'els_partitions'; RUN ON ALL; SELECT * FROM els.%I; $body$$ddl$,
        'view_' || v_name, p_view ->> 'columns', v_name);
    EXECUTE format('CREATE VIEW els.%I AS SELECT * FROM els_remote.%I()', v_name, 'view_' || v_name);
END
$fn$;

-- The grants and comment of a partition's function or view, given to the proxy's.
CREATE OR REPLACE FUNCTION els_proxy.copy_privileges(p_object text, p_item jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN SELECT jsonb_array_elements_text(p_item -> 'grantees') LOOP
        EXECUTE format('GRANT %s ON %s TO %I',
                       CASE WHEN p_object LIKE 'VIEW %' THEN 'SELECT' ELSE 'EXECUTE' END,
                       CASE WHEN p_object LIKE 'VIEW %' THEN substr(p_object, 6) ELSE p_object END,
                       v_role);
    END LOOP;
    IF p_item ->> 'description' IS NOT NULL THEN
        EXECUTE format('COMMENT ON %s IS %L', p_object, p_item ->> 'description');
    END IF;
END
$fn$;

-- Builds schema els of the proxy from the partitions' catalog p_catalog
-- ({"functions": [...], "views": [...]}, read by els_worker/partitions.py from the
-- first partition): ingest functions are checked, the others generated by route; then
-- every function and view gets the owner, grants and comment the partition's has.
CREATE OR REPLACE FUNCTION els_proxy.build(p_catalog jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_fn jsonb;
    v_route text;
    v_object text;
    v_built integer := 0;
BEGIN
    FOR v_fn IN SELECT jsonb_array_elements(p_catalog -> 'functions') LOOP
        SELECT r.route INTO v_route FROM els_proxy.routes() AS r WHERE r.name = v_fn ->> 'name';
        IF v_route IS NULL THEN
            RAISE EXCEPTION 'function els.%(%) of the partitions has no route in els_proxy.routes()',
                v_fn ->> 'name', v_fn ->> 'identity_args';
        END IF;
        CONTINUE WHEN v_route = 'partition';
        v_object := format('FUNCTION els.%I(%s)', v_fn ->> 'name', v_fn ->> 'identity_args');
        IF v_route IN ('ingest', 'local') THEN
            IF to_regprocedure(format('els.%I(%s)', v_fn ->> 'name', v_fn ->> 'arg_types')) IS NULL THEN
                RAISE EXCEPTION 'the proxy lacks % (route %)', v_object, v_route;
            END IF;
        ELSE
            PERFORM els_proxy.build_function(v_fn, v_route);
        END IF;
        PERFORM els_proxy.copy_privileges(v_object, v_fn);
        v_built := v_built + 1;
    END LOOP;
    FOR v_fn IN SELECT jsonb_array_elements(p_catalog -> 'views') LOOP
        PERFORM els_proxy.build_view(v_fn);
        PERFORM els_proxy.copy_privileges(format('VIEW els.%I', v_fn ->> 'name'), v_fn);
        v_built := v_built + 1;
    END LOOP;
    -- owned by the schema owner, as on the partitions: the SECURITY DEFINER functions
    -- run as els_owner, never as the superuser that builds them
    FOR v_object IN
        SELECT format('ALTER %s %s OWNER TO els_owner',
                      CASE c.relkind WHEN 'v' THEN 'VIEW' END, c.oid::regclass)
          FROM pg_catalog.pg_class AS c
         WHERE c.relnamespace = 'els'::regnamespace AND c.relkind = 'v'
        UNION ALL
        SELECT format('ALTER FUNCTION %s OWNER TO els_owner', p.oid::regprocedure)
          FROM pg_catalog.pg_proc AS p
         WHERE p.pronamespace IN ('els'::regnamespace, 'els_remote'::regnamespace,
                                  'els_proxy'::regnamespace)
    LOOP
        EXECUTE v_object;
    END LOOP;
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA els, els_remote, els_proxy FROM PUBLIC;
    RETURN v_built;
END
$fn$;
