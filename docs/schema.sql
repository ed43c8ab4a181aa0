CREATE SCHEMA els;
ALTER SCHEMA els OWNER TO els_owner;
CREATE TYPE els.essay_status AS ENUM (
    'uploaded',
    'ready_for_processing',
    'content_ingestion_failed'
);
ALTER TYPE els.essay_status OWNER TO els_owner;
COMMENT ON TYPE els.essay_status IS 'The one definition of essay slot statuses. uploaded = empty slot; ready_for_processing = filled with extracted text; content_ingestion_failed = closed by a validation failure.';
CREATE TYPE els.item_disposition AS ENUM (
    'pending',
    'assigned',
    'excess'
);
ALTER TYPE els.item_disposition OWNER TO els_owner;
COMMENT ON TYPE els.item_disposition IS 'Where a received content or failure stands: waiting for its batch, in a slot, or without one.';
CREATE TYPE els.item_step AS (
	ord integer,
	kind text,
	batch_id text,
	item_key text,
	file_upload_id text,
	original_file_name text,
	raw_file_storage_id text,
	file_size_bytes bigint,
	content_md5_hash text,
	correlation_id text,
	source_event_id text,
	event_timestamp text,
	validation_error_code text,
	validation_error_detail jsonb,
	duplicate boolean,
	in_ledger boolean,
	known_essay_id text,
	take_no bigint,
	new_items bigint,
	tracked boolean,
	was_complete boolean,
	expected_count integer,
	has_slots boolean,
	purged boolean,
	outcome text,
	slot_essay_id text,
	result_essay_id text,
	completing boolean,
	complete boolean,
	announced boolean,
	own_event_id uuid
);
ALTER TYPE els.item_step OWNER TO els_owner;
COMMENT ON TYPE els.item_step IS 'One content or failure of a round of els._apply_items: the item, its judgement and its place.';
CREATE FUNCTION els._apply_events(p_kinds text[], p_events jsonb[], p_refused jsonb[] DEFAULT NULL::jsonb[]) RETURNS jsonb[]
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    -- the checks of the arrays, as an expression (PERFORM would be a statement, which a
    -- per-event call pays for)
    v_n integer := els._checked_length(p_kinds, p_events, p_refused);
    v_done jsonb;       -- [{"ord", "done"}]: the events' results, rejections first
    v_count integer;    -- the events that passed their checks
    v_keys bigint[];    -- their batches' lock keys, ascending
    v_items jsonb[];    -- per round, its content and failures ...
    v_regs jsonb[];     -- ... and its registrations
BEGIN
    -- 1. every event read and checked (els._read_events: one statement per kind, no table
    --    touched), and the checked ones grouped in rounds: 2 x (registrations of its batch
    --    before it), + 1 for a registration; every event its own round when two
    --    registrations of different batches share an essay id
    WITH r AS MATERIALIZED (
        SELECT r.ord, r.kind, r.fault, r.event_row, r.event_row ->> 'batch_id' AS batch_id
          FROM els._read_events(p_kinds, p_events, (SELECT array_agg(f.result IS NOT NULL)
                                                      FROM unnest(p_refused) AS f(result))) AS r
    ), checked AS MATERIALIZED (
        SELECT r.ord, r.kind, r.batch_id, r.event_row || jsonb_build_object('ord', r.ord, 'kind', r.kind) AS j,
               2 * count(*) FILTER (WHERE r.kind = 'register_batch') OVER (
                   PARTITION BY r.batch_id ORDER BY r.ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                   + CASE WHEN r.kind = 'register_batch' THEN 1 ELSE 0 END AS round
          FROM r WHERE r.fault IS NULL
    ), sequential AS (
        SELECT EXISTS (SELECT FROM (SELECT c.batch_id, c.j -> 'essay_ids' AS essay_ids FROM checked AS c
                                     WHERE c.kind = 'register_batch' OFFSET 0) AS g
                        CROSS JOIN LATERAL jsonb_array_elements_text(g.essay_ids) AS e(id)
                        GROUP BY e.id HAVING count(DISTINCT g.batch_id) > 1) AS yes
    ), rounds AS (
        SELECT CASE WHEN q.yes THEN c.ord ELSE c.round END AS round,
               jsonb_agg(c.j ORDER BY c.ord) FILTER (WHERE c.kind <> 'register_batch') AS items,
               jsonb_agg(c.j ORDER BY c.ord) FILTER (WHERE c.kind = 'register_batch') AS regs
          FROM checked AS c, sequential AS q
         GROUP BY 1
    )
    SELECT (SELECT coalesce(jsonb_agg(jsonb_build_object('ord', r.ord, 'done', els._rejection(
                       r.fault ->> 'sqlstate', r.fault ->> 'message', (r.fault -> 'detail')::text,
                       'els._read_events: event ' || r.ord || ' of the micro-batch')) ORDER BY r.ord), '[]')
              FROM r WHERE r.fault IS NOT NULL),
           (SELECT count(*) FROM checked),
           (SELECT array_agg(DISTINCT els._batch_lock_key(c.batch_id) ORDER BY els._batch_lock_key(c.batch_id))
              FROM checked AS c),
           array_agg(g.items ORDER BY g.round), array_agg(g.regs ORDER BY g.round)
      INTO v_done, v_count, v_keys, v_items, v_regs
      FROM rounds AS g;
    IF v_count > 0 THEN
        -- 2. the locks of every batch, in ascending key order (two workers never deadlock)
        PERFORM pg_advisory_xact_lock(k.key) FROM unnest(v_keys) AS k(key);
        -- 3. the rounds, in order: a round's content and failures, then its registrations
        FOR i IN 1 .. cardinality(v_items) LOOP
            IF v_items[i] IS NOT NULL THEN
                v_done := v_done || els._apply_items(v_items[i]);
            END IF;
            IF v_regs[i] IS NOT NULL THEN
                v_done := v_done || els._register_round(v_regs[i]);
            END IF;
        END LOOP;
    END IF;
    -- the results in place, in one pass
    RETURN (SELECT coalesce(array_agg(coalesce(d.done, p_refused[g.i]) ORDER BY g.i), '{}'::jsonb[])
              FROM generate_series(1, v_n) AS g(i)
              LEFT JOIN jsonb_to_recordset(v_done) AS d(ord integer, done jsonb) ON d.ord = g.i);
END
$$;
ALTER FUNCTION els._apply_events(p_kinds text[], p_events jsonb[], p_refused jsonb[]) OWNER TO els_owner;
CREATE FUNCTION els._apply_items(p_items jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_steps els.item_step[] := els._place_items(els._judge_items(p_items));
    v_content boolean;
    v_failures boolean;
    v_purged boolean;
    v_completes boolean;
    v_new integer;      -- rows the plan adds to the ledgers ...
    v_fills integer;    -- ... slots it fills or closes ...
    v_events integer;   -- ... and outbox rows it writes
BEGIN
    SELECT coalesce(bool_or(p.kind = 'provision_content' AND NOT p.duplicate), false),
           coalesce(bool_or(p.kind = 'record_validation_failure' AND NOT p.duplicate), false),
           coalesce(bool_or(NOT p.duplicate AND p.purged AND NOT p.has_slots), false),
           coalesce(bool_or(p.completing), false),
           count(*) FILTER (WHERE NOT p.duplicate),
           count(*) FILTER (WHERE p.outcome IN ('assigned', 'recorded')),
           count(p.own_event_id) + count(*) FILTER (WHERE p.completing)
      INTO v_content, v_failures, v_purged, v_completes, v_new, v_fills, v_events
      FROM unnest(v_steps) AS p;
    -- The writes in this order (a slot names its content row, a completion reads the
    -- slots), as expressions (a PERFORM is a statement of its own, which a per-event call
    -- pays for), each checked against the plan: under the batches' locks nothing else
    -- changes these rows, so a difference is a bug, and the round fails whole.
    v_new := v_new - els._write_item_rows(v_steps, v_content, v_failures);
    v_fills := v_fills - els._write_item_effects(v_steps, v_fills > 0, v_purged, v_completes);
    v_events := v_events - CASE WHEN v_events > 0 THEN els._write_item_events(v_steps) ELSE 0 END;
    IF v_new <> 0 OR v_fills <> 0 OR v_events <> 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = 'a round of content and failures wrote other rows than its plan',
            DETAIL = format('rows %s, slots %s, events %s more than written', v_new, v_fills, v_events);
    END IF;
    RETURN els._item_results(v_steps);
END
$$;
ALTER FUNCTION els._apply_items(p_items jsonb) OWNER TO els_owner;
CREATE FUNCTION els._apply_one(p_kind text, p_event jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_read record;
    v_row jsonb;
    v_done jsonb;
BEGIN
    SELECT r.fault, r.event_row INTO v_read
      FROM els._read_events(ARRAY[p_kind], ARRAY[p_event], NULL) AS r;
    IF v_read.fault IS NOT NULL THEN
        PERFORM els._reject(v_read.fault ->> 'sqlstate', v_read.fault ->> 'message', v_read.fault -> 'detail');
    END IF;
    v_row := v_read.event_row || jsonb_build_object('ord', 1, 'kind', p_kind);
    PERFORM els._lock_batch(v_row ->> 'batch_id');
    v_done := CASE WHEN p_kind = 'register_batch' THEN els._register_round(jsonb_build_array(v_row))
                   ELSE els._apply_items(jsonb_build_array(v_row)) END -> 0 -> 'done';
    IF NOT (v_done ->> 'ok')::boolean THEN
        PERFORM els._reject(v_done ->> 'sqlstate', v_done ->> 'message', v_done -> 'detail');
    END IF;
    RETURN v_done -> 'result';
END
$$;
ALTER FUNCTION els._apply_one(p_kind text, p_event jsonb) OWNER TO els_owner;
CREATE FUNCTION els._batch_lock_key(p_batch_id text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN hashtextextended(('els.batch:'::text || p_batch_id), (0)::bigint);
ALTER FUNCTION els._batch_lock_key(p_batch_id text) OWNER TO els_owner;
COMMENT ON FUNCTION els._batch_lock_key(p_batch_id text) IS 'The advisory lock key of a batch: the one definition used by _lock_batch, _try_lock_batch and els._apply_events (which takes the keys of a micro-batch in ascending order).';
CREATE FUNCTION els._check_delivery_coordinates(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF cardinality(p_ids) IS DISTINCT FROM cardinality(p_topics)
       OR cardinality(p_ids) IS DISTINCT FROM cardinality(p_partitions)
       OR cardinality(p_ids) IS DISTINCT FROM cardinality(p_offsets) THEN
        RAISE EXCEPTION 'delivery coordinates: % ids, % topics, % partitions, % offsets',
            cardinality(p_ids), cardinality(p_topics), cardinality(p_partitions),
            cardinality(p_offsets)
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT FROM unnest(p_ids, p_topics, p_partitions, p_offsets) AS d (i, t, p, o)
                WHERE i IS NULL OR t IS NULL OR p IS NULL OR o IS NULL OR p < 0 OR o < 0) THEN
        RAISE EXCEPTION 'delivery coordinates: a NULL or negative partition or offset is no '
                        'proof of delivery'
            USING ERRCODE = '22023';
    END IF;
END
$$;
ALTER FUNCTION els._check_delivery_coordinates(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) OWNER TO els_owner;
CREATE FUNCTION els._checked_length(p_kinds text[], p_events jsonb[], p_refused jsonb[]) RETURNS integer
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    v_unknown text;
BEGIN
    IF coalesce(cardinality(p_events), 0) <> coalesce(cardinality(p_kinds), 0)
       OR (p_refused IS NOT NULL AND cardinality(p_refused) <> cardinality(p_kinds)) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'kinds and events differ in length';
    END IF;
    -- an expression first (no statement): the query only when a kind is unknown or NULL
    IF array_position(p_kinds, NULL) IS NOT NULL
       OR NOT p_kinds <@ ARRAY['register_batch', 'provision_content', 'record_validation_failure'] THEN
        SELECT coalesce(u.kind, 'NULL') INTO v_unknown
          FROM unnest(p_kinds) WITH ORDINALITY AS u(kind, ord)
         WHERE (p_refused IS NULL OR p_refused[u.ord::integer] IS NULL)
           AND (u.kind IS NULL OR u.kind NOT IN ('register_batch', 'provision_content', 'record_validation_failure'))
         ORDER BY u.ord LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('unknown event kind %s', v_unknown);
        END IF;
    END IF;
    RETURN coalesce(cardinality(p_kinds), 0);
END
$$;
ALTER FUNCTION els._checked_length(p_kinds text[], p_events jsonb[], p_refused jsonb[]) OWNER TO els_owner;
CREATE FUNCTION els._claim_essays(p_batch_ids text[], p_essay_ids text[]) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_conflict record;
BEGIN
    IF NOT EXISTS (SELECT FROM els.partition_self) THEN
        RETURN;
    END IF;
    SELECT c.essay_id, c.verdict, c.owner_batch_id, c.purged INTO v_conflict
      FROM jsonb_to_recordset(els._claims_across(p_batch_ids, p_essay_ids))
           AS c(essay_id text, verdict text, owner_batch_id text, purged boolean)
     WHERE c.verdict IN ('held', 'busy')
     ORDER BY c.verdict = 'busy', c.essay_id
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM els._release_across(p_batch_ids, p_essay_ids);
    IF v_conflict.verdict = 'busy' THEN
        RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
            MESSAGE = format('essay id %s is being registered by batch %s; retry',
                             v_conflict.essay_id, v_conflict.owner_batch_id);
    END IF;
    PERFORM els._reject('ELC02', 'an essay id already belongs to another batch',
                        els._essay_owner_detail(v_conflict.essay_id, v_conflict.owner_batch_id,
                                                v_conflict.purged));
END
$$;
ALTER FUNCTION els._claim_essays(p_batch_ids text[], p_essay_ids text[]) OWNER TO els_owner;
CREATE FUNCTION els._claims_across(p_batch_ids text[], p_essay_ids text[]) RETURNS jsonb
    LANGUAGE plpgsql
    AS $_$
DECLARE
    v_claims jsonb;
BEGIN
    PERFORM 'PRAGMA:disable:check';  -- els_cluster exists in partitions only
    EXECUTE 'SELECT coalesce(jsonb_agg(to_jsonb(c)), ''[]'') FROM els_cluster.claim_essays($1, $2, $3, $4) AS c'
       INTO v_claims
      USING p_batch_ids, p_essay_ids, (SELECT p.partition_no FROM els.partition_self AS p),
            pg_current_xact_id()::text::bigint;
    RETURN v_claims;
END
$_$;
ALTER FUNCTION els._claims_across(p_batch_ids text[], p_essay_ids text[]) OWNER TO els_owner;
CREATE FUNCTION els._close_locked_batch(p_batch_id text, p_raise boolean, OUT outcome text, OUT slots_timed_out integer, OUT event_ids uuid[]) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_tracker record;
    v_existing bigint;
    v_essay_ids text[];
    v_reconciled record;
    v_completion record;
BEGIN
    slots_timed_out := 0;
    event_ids := '{}'::uuid[];
    SELECT t.completed_at, t.expected_count INTO v_tracker
      FROM els.batch_tracker AS t WHERE t.batch_id = p_batch_id;
    IF NOT FOUND THEN
        outcome := CASE WHEN EXISTS (SELECT FROM els.batch_tombstone AS b WHERE b.batch_id = p_batch_id)
                        THEN 'already_complete' ELSE 'unknown' END;
        RETURN;
    END IF;
    IF v_tracker.completed_at IS NOT NULL THEN
        outcome := 'already_complete';
        RETURN;
    END IF;
    SELECT count(*) INTO v_existing FROM els.essay_slot AS s WHERE s.batch_id = p_batch_id;
    IF v_existing <> v_tracker.expected_count THEN
        SELECT t.essay_ids INTO v_essay_ids FROM els.batch_tracker AS t WHERE t.batch_id = p_batch_id;
        IF p_raise THEN
            PERFORM els._create_slots(p_batch_id, v_essay_ids, v_existing > 0);
        ELSE
            BEGIN
                PERFORM els._create_slots(p_batch_id, v_essay_ids, v_existing > 0);
            EXCEPTION WHEN SQLSTATE 'ELC02' THEN
                RAISE WARNING 'batch % not closed: its missing slots cannot be created (an essay id '
                              'belongs to another batch); see els.batch_report', p_batch_id;
                outcome := 'unrepairable';
                RETURN;
            END;
        END IF;
    END IF;
    v_reconciled := els._reconcile(p_batch_id);
    UPDATE els.essay_slot AS s
       SET status = 'content_ingestion_failed', failure_code = 'CONTENT_TIMEOUT', filled_at = now()
     WHERE s.batch_id = p_batch_id AND s.status = 'uploaded';
    GET DIAGNOSTICS slots_timed_out = ROW_COUNT;
    -- re-driving alone may have closed the last slot: then the last item completed it
    v_completion := els._complete_if_done(
        p_batch_id, CASE WHEN slots_timed_out > 0 THEN 'deadline' ELSE 'all_slots_closed' END);
    event_ids := v_reconciled.event_ids
                 || CASE WHEN v_completion.event_id IS NULL THEN '{}'::uuid[]
                         ELSE ARRAY[v_completion.event_id] END;
    outcome := 'closed';
END
$$;
ALTER FUNCTION els._close_locked_batch(p_batch_id text, p_raise boolean, OUT outcome text, OUT slots_timed_out integer, OUT event_ids uuid[]) OWNER TO els_owner;
CREATE FUNCTION els._complete_batches(p_batch_ids text[], p_reason text) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_result jsonb;
BEGIN
    WITH state AS MATERIALIZED (
        -- one probe of the empty-slot index per batch answers most of them; only the
        -- columns needed from the tracker (a whole row would detoast essay_ids)
        SELECT b.batch_id, t.completed_at IS NOT NULL AS was_complete,
               t.batch_id IS NOT NULL AND t.completed_at IS NULL
               AND NOT EXISTS (SELECT FROM els.essay_slot AS s
                                WHERE s.batch_id = b.batch_id AND s.status = 'uploaded')
               AND (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = b.batch_id)
                   = t.expected_count AS closing
          FROM unnest(p_batch_ids) AS b(batch_id)
          LEFT JOIN LATERAL (SELECT x.batch_id, x.completed_at, x.expected_count FROM els.batch_tracker AS x
                              WHERE x.batch_id = b.batch_id OFFSET 0) AS t ON true
    ), stamped AS (
        UPDATE els.batch_tracker AS t SET completed_at = now(), completion_reason = p_reason
          FROM state AS s
         WHERE s.closing AND t.batch_id = s.batch_id
    )
    SELECT jsonb_object_agg(s.batch_id, s.closing) INTO v_result
      FROM state AS s WHERE s.was_complete OR s.closing;
    RETURN coalesce(v_result, '{}'::jsonb);
END
$$;
ALTER FUNCTION els._complete_batches(p_batch_ids text[], p_reason text) OWNER TO els_owner;
CREATE FUNCTION els._complete_if_done(p_batch_id text, p_reason text DEFAULT 'all_slots_closed'::text, OUT complete boolean, OUT event_id uuid) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_completed boolean := (els._complete_batches(ARRAY[p_batch_id], p_reason) ->> p_batch_id)::boolean;
BEGIN
    complete := v_completed IS NOT NULL;
    IF v_completed THEN
        event_id := (els._emit_events(jsonb_build_array(els._completion_spec(p_batch_id, p_reason))))[1];
    END IF;
END
$$;
ALTER FUNCTION els._complete_if_done(p_batch_id text, p_reason text, OUT complete boolean, OUT event_id uuid) OWNER TO els_owner;
CREATE FUNCTION els._completion_spec(p_batch_id text, p_reason text) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'event_type', 'BatchContentProvisioningCompleted', 'key', p_batch_id,
            'identity', jsonb_build_array(p_batch_id),
            'correlation_id', t.correlation_id,
            'data', jsonb_build_object(
                'batch_id', p_batch_id,
                'provisioned_count', r.ready_count,
                'expected_count', t.expected_count,
                'course_code', t.course_code,
                'user_id', t.user_id,
                'class_type', t.class_type,
                'essays_for_processing', r.ready,
                'completion_reason', p_reason))
          FROM els.batch_tracker AS t
         CROSS JOIN LATERAL (
            SELECT coalesce(jsonb_agg(jsonb_build_object('essay_id', s.essay_id,
                                                         'text_storage_id', s.text_storage_id)
                                      ORDER BY s.slot_no), '[]'::jsonb) AS ready,
                   count(*)::integer AS ready_count
              FROM els.essay_slot AS s
             WHERE s.batch_id = p_batch_id AND s.status = 'ready_for_processing') AS r
         WHERE t.batch_id = p_batch_id);
END
$$;
ALTER FUNCTION els._completion_spec(p_batch_id text, p_reason text) OWNER TO els_owner;
CREATE FUNCTION els._content_fault(p_event jsonb, p_payload jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    AS $$
BEGIN
    RETURN coalesce(
        els._envelope_fault(p_event, 'huleedu.file.essay.content.provisioned.v1', 'essay.content.provisioned'),
        els._missing_fault(p_payload -> 'entity_id', 'entity_id'),
        els._missing_fault(p_payload -> 'text_storage_id', 'text_storage_id'),
        els._missing_fault(p_payload -> 'file_upload_id', 'file_upload_id'),
        els._missing_fault(p_payload -> 'original_file_name', 'original_file_name'),
        els._text_fault(p_payload -> 'entity_id', 'entity_id'),
        els._text_fault(p_payload -> 'text_storage_id', 'text_storage_id'),
        els._text_fault(p_payload -> 'file_upload_id', 'file_upload_id'),
        els._text_fault(p_payload -> 'original_file_name', 'original_file_name', 1024),
        els._text_fault(p_payload -> 'raw_file_storage_id', 'raw_file_storage_id'),
        els._integer_fault(p_payload -> 'file_size_bytes', 'file_size_bytes', 0),
        els._text_fault(p_payload -> 'content_md5_hash', 'content_md5_hash'),
        els._text_fault(p_payload -> 'correlation_id', 'correlation_id'),
        els._timestamp_fault(p_payload -> 'timestamp', 'timestamp'));
END
$$;
ALTER FUNCTION els._content_fault(p_event jsonb, p_payload jsonb) OWNER TO els_owner;
CREATE FUNCTION els._text_ok(p_value jsonb, p_max integer DEFAULT 255) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE jsonb_typeof(p_value) WHEN 'string'::text THEN ((length((p_value #>> '{}'::text[])) >= 1) AND (length((p_value #>> '{}'::text[])) <= p_max)) WHEN 'null'::text THEN true ELSE (p_value IS NULL) END;
ALTER FUNCTION els._text_ok(p_value jsonb, p_max integer) OWNER TO els_owner;
CREATE FUNCTION els._envelope_ok(p_event jsonb, p_topic text, p_short_name text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (CASE WHEN (jsonb_typeof(p_event) IS DISTINCT FROM 'object'::text) THEN false WHEN (NOT (p_event ? 'data'::text)) THEN true ELSE ((jsonb_typeof((p_event -> 'data'::text)) = 'object'::text) AND COALESCE((jsonb_typeof((p_event -> 'event_id'::text)) = ANY (ARRAY['string'::text, 'null'::text])), true) AND COALESCE((jsonb_typeof((p_event -> 'event_timestamp'::text)) = ANY (ARRAY['string'::text, 'null'::text])), true) AND COALESCE((jsonb_typeof((p_event -> 'source_service'::text)) = ANY (ARRAY['string'::text, 'null'::text])), true) AND COALESCE((jsonb_typeof((p_event -> 'metadata'::text)) = ANY (ARRAY['object'::text, 'null'::text])), true) AND COALESCE((jsonb_typeof((p_event -> 'schema_version'::text)) = ANY (ARRAY['number'::text, 'null'::text])), true) AND els._text_ok((p_event -> 'correlation_id'::text))) END AND COALESCE(((jsonb_typeof((p_event -> 'event_type'::text)) = 'null'::text) OR ((p_event ->> 'event_type'::text) = ANY (ARRAY[p_topic, p_short_name]))), true));
ALTER FUNCTION els._envelope_ok(p_event jsonb, p_topic text, p_short_name text) OWNER TO els_owner;
CREATE FUNCTION els._integer_ok(p_value jsonb, p_min numeric) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE jsonb_typeof(p_value) WHEN 'number'::text THEN CASE WHEN ((p_value #>> '{}'::text[]) ~ '[.eE]'::text) THEN false ELSE ((((p_value #>> '{}'::text[]))::numeric >= p_min) AND (((p_value #>> '{}'::text[]))::numeric <= ('9223372036854775807'::bigint)::numeric)) END WHEN 'null'::text THEN true ELSE (p_value IS NULL) END;
ALTER FUNCTION els._integer_ok(p_value jsonb, p_min numeric) OWNER TO els_owner;
CREATE FUNCTION els._present(p_value jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN COALESCE((jsonb_typeof(p_value) <> 'null'::text), false);
ALTER FUNCTION els._present(p_value jsonb) OWNER TO els_owner;
CREATE FUNCTION els._timestamp_pattern() RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])([T ]([01]\d|2[0-3]):[0-5]\d(:([0-5]\d|60)(\.\d{1,9})?)?)?(Z|z|[+-]([01]\d|2[0-3])(:?[0-5]\d)?)?$'::text;
ALTER FUNCTION els._timestamp_pattern() OWNER TO els_owner;
CREATE FUNCTION els._timestamp_ok(p_value jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE jsonb_typeof(p_value) WHEN 'string'::text THEN (((length((p_value #>> '{}'::text[])) >= 1) AND (length((p_value #>> '{}'::text[])) <= 255)) AND ((p_value #>> '{}'::text[]) ~ els._timestamp_pattern())) WHEN 'null'::text THEN true ELSE (p_value IS NULL) END;
ALTER FUNCTION els._timestamp_ok(p_value jsonb) OWNER TO els_owner;
CREATE FUNCTION els._content_ok(p_event jsonb, p_payload jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (els._envelope_ok(p_event, 'huleedu.file.essay.content.provisioned.v1'::text, 'essay.content.provisioned'::text) AND els._present((p_payload -> 'entity_id'::text)) AND els._text_ok((p_payload -> 'entity_id'::text)) AND els._present((p_payload -> 'text_storage_id'::text)) AND els._text_ok((p_payload -> 'text_storage_id'::text)) AND els._present((p_payload -> 'file_upload_id'::text)) AND els._text_ok((p_payload -> 'file_upload_id'::text)) AND els._present((p_payload -> 'original_file_name'::text)) AND els._text_ok((p_payload -> 'original_file_name'::text), 1024) AND els._text_ok((p_payload -> 'raw_file_storage_id'::text)) AND els._integer_ok((p_payload -> 'file_size_bytes'::text), (0)::numeric) AND els._text_ok((p_payload -> 'content_md5_hash'::text)) AND els._text_ok((p_payload -> 'correlation_id'::text)) AND els._timestamp_ok((p_payload -> 'timestamp'::text)));
ALTER FUNCTION els._content_ok(p_event jsonb, p_payload jsonb) OWNER TO els_owner;
CREATE FUNCTION els._correlation_id(p_event jsonb, p_payload jsonb) RETURNS text
    LANGUAGE sql PARALLEL SAFE
    RETURN COALESCE(CASE WHEN (p_event ? 'data'::text) THEN (p_event ->> 'correlation_id'::text) ELSE NULL::text END, (p_payload ->> 'correlation_id'::text), (gen_random_uuid())::text);
ALTER FUNCTION els._correlation_id(p_event jsonb, p_payload jsonb) OWNER TO els_owner;
CREATE FUNCTION els._content_row(p_event jsonb, p_payload jsonb) RETURNS jsonb
    LANGUAGE sql PARALLEL SAFE
    RETURN jsonb_build_object('batch_id', (p_payload ->> 'entity_id'::text), 'item_key', (p_payload ->> 'text_storage_id'::text), 'file_upload_id', (p_payload ->> 'file_upload_id'::text), 'original_file_name', (p_payload ->> 'original_file_name'::text), 'raw_file_storage_id', (p_payload ->> 'raw_file_storage_id'::text), 'file_size_bytes', ((p_payload ->> 'file_size_bytes'::text))::numeric, 'content_md5_hash', (p_payload ->> 'content_md5_hash'::text), 'correlation_id', els._correlation_id(p_event, p_payload), 'event_timestamp', (p_payload ->> 'timestamp'::text), 'source_event_id', CASE WHEN (p_event ? 'data'::text) THEN (p_event ->> 'event_id'::text) ELSE NULL::text END);
ALTER FUNCTION els._content_row(p_event jsonb, p_payload jsonb) OWNER TO els_owner;
CREATE FUNCTION els._create_slots(p_batch_id text, p_essay_ids text[], p_some_exist boolean) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_created integer;
    v_owner record;
BEGIN
    BEGIN
        INSERT INTO els.essay_slot (essay_id, batch_id, slot_no)
        SELECT u.id, p_batch_id, u.ord
          FROM unnest(p_essay_ids) WITH ORDINALITY AS u(id, ord)
         WHERE NOT p_some_exist
            OR NOT EXISTS (SELECT FROM els.essay_slot AS s
                            WHERE s.essay_id = u.id AND s.batch_id = p_batch_id)
         ORDER BY u.id;
        GET DIAGNOSTICS v_created = ROW_COUNT;
    EXCEPTION WHEN unique_violation THEN
        v_created := NULL;
    END;
    SELECT o.essay_id, o.batch_id, o.purged INTO v_owner
      FROM els._essay_owner_elsewhere(p_batch_id, p_essay_ids) AS o;
    IF FOUND THEN
        PERFORM els._reject('ELC02', 'an essay id already belongs to another batch',
                            els._essay_owner_detail(v_owner.essay_id, v_owner.batch_id, v_owner.purged));
    ELSIF v_created IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'unique_violation',
            MESSAGE = format('slots of batch %s: a unique violation without another owner', p_batch_id);
    END IF;
    IF v_created > 0 THEN
        -- behind the proxy: the claims on the other partitions (046_essay_claims.sql)
        PERFORM els._claim_essays(array_fill(p_batch_id, ARRAY[cardinality(p_essay_ids)]), p_essay_ids);
    END IF;
    RETURN v_created;
END
$$;
ALTER FUNCTION els._create_slots(p_batch_id text, p_essay_ids text[], p_some_exist boolean) OWNER TO els_owner;
CREATE FUNCTION els._emit_events(p_events jsonb) RETURNS uuid[]
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_timestamp text := els._event_timestamp();
    v_ids uuid[];
    v_item jsonb;
    v_id uuid;
BEGIN
    -- One event (every provision_content and completion): the same row, by a
    -- plain INSERT ... VALUES, which skips the set-based statement's function
    -- scan, sort and aggregate (a third of this function's cost).
    IF jsonb_array_length(p_events) = 1 THEN
        v_item := p_events -> 0;
        v_id := coalesce((v_item ->> 'event_id')::uuid,
                         els._event_id(v_item ->> 'event_type', v_item -> 'identity'));
        INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
        VALUES (v_id, v_item ->> 'event_type', els.output_topic(v_item ->> 'event_type'),
                v_item ->> 'key',
                els._envelope(v_id, v_item ->> 'event_type', v_item ->> 'correlation_id',
                              v_item -> 'data', v_timestamp));
        RETURN ARRAY[v_id];
    END IF;
    WITH input AS (
        SELECT e.ord,
               e.item ->> 'event_type' AS event_type,
               e.item ->> 'key' AS message_key,
               e.item ->> 'correlation_id' AS correlation_id,
               e.item -> 'data' AS data,
               coalesce((e.item ->> 'event_id')::uuid,
                        els._event_id(e.item ->> 'event_type', e.item -> 'identity')) AS event_id
        FROM jsonb_array_elements(p_events) WITH ORDINALITY AS e(item, ord)
    ), inserted AS (
        INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
        SELECT i.event_id, i.event_type, els.output_topic(i.event_type), i.message_key,
               els._envelope(i.event_id, i.event_type, i.correlation_id, i.data, v_timestamp)
        FROM input AS i
        ORDER BY i.ord
        RETURNING event_outbox.id, event_outbox.event_id
    )
    SELECT array_agg(inserted.event_id ORDER BY inserted.id) INTO v_ids FROM inserted;
    RETURN coalesce(v_ids, '{}'::uuid[]);
END
$$;
ALTER FUNCTION els._emit_events(p_events jsonb) OWNER TO els_owner;
CREATE FUNCTION els._fault(p_sqlstate text, p_message text, p_detail jsonb) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN jsonb_build_object('sqlstate', p_sqlstate, 'message', p_message, 'detail', p_detail);
ALTER FUNCTION els._fault(p_sqlstate text, p_message text, p_detail jsonb) OWNER TO els_owner;
CREATE FUNCTION els._text_fault(p_value jsonb, p_field text, p_max integer DEFAULT 255) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN ((p_value IS NULL) OR (jsonb_typeof(p_value) = 'null'::text)) THEN NULL::jsonb WHEN (jsonb_typeof(p_value) <> 'string'::text) THEN els._fault('ELV03'::text, format('field %s must be a string'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'wrong_type', 'expected', 'string', 'actual', jsonb_typeof(p_value))) WHEN ((length((p_value #>> '{}'::text[])) < 1) OR (length((p_value #>> '{}'::text[])) > p_max)) THEN els._fault('ELV03'::text, format('field %s must be 1..%s characters'::text, p_field, p_max), jsonb_build_object('field', p_field, 'reason', 'bad_length', 'min', 1, 'max', p_max, 'actual', length((p_value #>> '{}'::text[])))) ELSE NULL::jsonb END;
ALTER FUNCTION els._text_fault(p_value jsonb, p_field text, p_max integer) OWNER TO els_owner;
CREATE FUNCTION els._enum_fault(p_value jsonb, p_field text, p_allowed text[]) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN COALESCE(els._text_fault(p_value, p_field), CASE WHEN ((jsonb_typeof(p_value) = 'string'::text) AND (NOT ((p_value #>> '{}'::text[]) = ANY (p_allowed)))) THEN els._fault('ELV03'::text, format('field %s has an unknown value'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'not_in_enum', 'allowed', to_jsonb(p_allowed), 'actual', (p_value #>> '{}'::text[]))) ELSE NULL::jsonb END);
ALTER FUNCTION els._enum_fault(p_value jsonb, p_field text, p_allowed text[]) OWNER TO els_owner;
CREATE FUNCTION els._enum_ok(p_value jsonb, p_allowed text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE jsonb_typeof(p_value) WHEN 'string'::text THEN ((p_value #>> '{}'::text[]) = ANY (p_allowed)) WHEN 'null'::text THEN true ELSE (p_value IS NULL) END;
ALTER FUNCTION els._enum_ok(p_value jsonb, p_allowed text[]) OWNER TO els_owner;
CREATE FUNCTION els.output_topic(p_event_type text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE p_event_type WHEN 'BatchContentProvisioningCompleted'::text THEN 'huleedu.batch.content.provisioning.completed.v1'::text WHEN 'EssaySlotAssigned'::text THEN 'huleedu.els.essay.slot.assigned.v1'::text WHEN 'ExcessContentProvisioned'::text THEN 'huleedu.els.excess.content.provisioned.v1'::text ELSE NULL::text END;
ALTER FUNCTION els.output_topic(p_event_type text) OWNER TO els_owner;
CREATE FUNCTION els._envelope(p_event_id uuid, p_event_type text, p_correlation_id text, p_data jsonb, p_timestamp text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN jsonb_build_object('event_id', p_event_id, 'event_type', els.output_topic(p_event_type), 'event_timestamp', p_timestamp, 'source_service', 'essay_lifecycle_service', 'schema_version', 1, 'correlation_id', p_correlation_id, 'data', (p_data || jsonb_build_object('correlation_id', p_correlation_id, 'timestamp', p_timestamp)), 'metadata', '{}'::jsonb);
ALTER FUNCTION els._envelope(p_event_id uuid, p_event_type text, p_correlation_id text, p_data jsonb, p_timestamp text) OWNER TO els_owner;
CREATE FUNCTION els._envelope_type_fault(p_event jsonb, p_field text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN els._fault('ELV01'::text, format('envelope field %s is not a string'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'wrong_type', 'expected', 'string', 'actual', jsonb_typeof((p_event -> p_field))));
ALTER FUNCTION els._envelope_type_fault(p_event jsonb, p_field text) OWNER TO els_owner;
CREATE FUNCTION els._envelope_fault(p_event jsonb, p_topic text, p_short_name text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN ((p_event IS NULL) OR (jsonb_typeof(p_event) <> 'object'::text)) THEN els._fault('ELV01'::text, 'event is not a JSON object'::text, jsonb_build_object('field', NULL::unknown, 'reason', 'not_an_object', 'actual', COALESCE(jsonb_typeof(p_event), 'null'::text))) WHEN ((p_event ? 'data'::text) AND (jsonb_typeof((p_event -> 'data'::text)) <> 'object'::text)) THEN els._fault('ELV01'::text, 'envelope field data is not a JSON object'::text, jsonb_build_object('field', 'data', 'reason', 'not_an_object', 'actual', jsonb_typeof((p_event -> 'data'::text)))) WHEN ((p_event ? 'data'::text) AND (jsonb_typeof((p_event -> 'event_id'::text)) <> ALL (ARRAY['string'::text, 'null'::text]))) THEN els._envelope_type_fault(p_event, 'event_id'::text) WHEN ((p_event ? 'data'::text) AND (jsonb_typeof((p_event -> 'event_type'::text)) <> ALL (ARRAY['string'::text, 'null'::text]))) THEN els._envelope_type_fault(p_event, 'event_type'::text) WHEN ((p_event ? 'data'::text) AND (jsonb_typeof((p_event -> 'event_timestamp'::text)) <> ALL (ARRAY['string'::text, 'null'::text]))) THEN els._envelope_type_fault(p_event, 'event_timestamp'::text) WHEN ((p_event ? 'data'::text) AND (jsonb_typeof((p_event -> 'source_service'::text)) <> ALL (ARRAY['string'::text, 'null'::text]))) THEN els._envelope_type_fault(p_event, 'source_service'::text) WHEN ((p_event ? 'data'::text) AND (jsonb_typeof((p_event -> 'correlation_id'::text)) <> ALL (ARRAY['string'::text, 'null'::text]))) THEN els._envelope_type_fault(p_event, 'correlation_id'::text) WHEN ((p_event ? 'data'::text) AND (jsonb_typeof((p_event -> 'metadata'::text)) <> ALL (ARRAY['object'::text, 'null'::text]))) THEN els._fault('ELV01'::text, 'envelope field metadata is not a JSON object'::text, jsonb_build_object('field', 'metadata', 'reason', 'wrong_type', 'expected', 'object', 'actual', jsonb_typeof((p_event -> 'metadata'::text)))) WHEN ((p_event ? 'data'::text) AND (jsonb_typeof((p_event -> 'schema_version'::text)) <> ALL (ARRAY['number'::text, 'null'::text]))) THEN els._fault('ELV01'::text, 'envelope field schema_version is not a number'::text, jsonb_build_object('field', 'schema_version', 'reason', 'wrong_type', 'expected', 'integer', 'actual', jsonb_typeof((p_event -> 'schema_version'::text)))) WHEN ((p_event ? 'data'::text) AND ((length((p_event ->> 'correlation_id'::text)) < 1) OR (length((p_event ->> 'correlation_id'::text)) > 255))) THEN els._fault('ELV01'::text, 'envelope field correlation_id must be 1..255 characters'::text, jsonb_build_object('field', 'correlation_id', 'reason', 'bad_length', 'min', 1, 'max', 255, 'actual', length((p_event ->> 'correlation_id'::text)))) WHEN (jsonb_typeof((p_event -> 'event_type'::text)) <> ALL (ARRAY['string'::text, 'null'::text])) THEN els._fault('ELV01'::text, 'event_type is not a string'::text, jsonb_build_object('field', 'event_type', 'reason', 'wrong_type', 'expected', 'string', 'actual', jsonb_typeof((p_event -> 'event_type'::text)))) WHEN ((p_event ->> 'event_type'::text) <> ALL (ARRAY[p_topic, p_short_name])) THEN els._fault('ELV03'::text, 'event_type names another event (misrouted)'::text, jsonb_build_object('field', 'event_type', 'reason', 'misrouted', 'expected', jsonb_build_array(p_topic, p_short_name), 'actual', "left"((p_event ->> 'event_type'::text), 300))) ELSE NULL::jsonb END;
ALTER FUNCTION els._envelope_fault(p_event jsonb, p_topic text, p_short_name text) OWNER TO els_owner;
CREATE FUNCTION els._essay_id_items(p_essay_ids jsonb) RETURNS TABLE(bad_ord bigint, item_count bigint, duplicate_id text)
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT min(x.ord) FILTER (WHERE jsonb_typeof(x.item) <> 'string'
                                 OR length(x.item #>> '{}') NOT BETWEEN 1 AND 255),
           count(*),
           (SELECT d.id
              FROM (SELECT y.item #>> '{}' AS id, min(y.ord) AS first_ord
                      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_essay_ids) = 'array'
                                                     THEN p_essay_ids END) WITH ORDINALITY AS y(item, ord)
                     GROUP BY 1 HAVING count(*) > 1) AS d
             ORDER BY d.first_ord LIMIT 1)
      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_essay_ids) = 'array' THEN p_essay_ids END)
           WITH ORDINALITY AS x(item, ord)
$$;
ALTER FUNCTION els._essay_id_items(p_essay_ids jsonb) OWNER TO els_owner;
CREATE FUNCTION els._essay_owner_detail(p_essay_id text, p_owner_batch_id text, p_purged boolean) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (jsonb_build_object('field', 'essay_ids', 'reason', 'essay_owned_by_other_batch', 'essay_id', p_essay_id, 'owner_batch_id', p_owner_batch_id) || CASE WHEN p_purged THEN '{"purged": true}'::jsonb ELSE '{}'::jsonb END);
ALTER FUNCTION els._essay_owner_detail(p_essay_id text, p_owner_batch_id text, p_purged boolean) OWNER TO els_owner;
CREATE FUNCTION els._essay_owner_elsewhere(p_batch_id text, p_essay_ids text[]) RETURNS TABLE(essay_id text, batch_id text, purged boolean)
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
    RETURN QUERY
    SELECT o.essay_id, o.batch_id, o.purged
      FROM (SELECT s.essay_id, s.batch_id, false AS purged
              FROM els.essay_slot AS s
             WHERE s.essay_id = ANY (p_essay_ids) AND s.batch_id <> p_batch_id
            UNION ALL
            -- a purged batch's ids (migration 0009): a primary-key probe each
            SELECT r.essay_id, r.batch_id, true
              FROM els.retired_essay AS r
             WHERE r.essay_id = ANY (p_essay_ids) AND r.batch_id <> p_batch_id) AS o
     ORDER BY o.purged, o.essay_id
     LIMIT 1;
END
$$;
ALTER FUNCTION els._essay_owner_elsewhere(p_batch_id text, p_essay_ids text[]) OWNER TO els_owner;
CREATE FUNCTION els._event_digest(p_event_type text, p_identity jsonb) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN decode(md5(((('els:'::text || p_event_type) || ':'::text) || (p_identity)::text)), 'hex'::text);
ALTER FUNCTION els._event_digest(p_event_type text, p_identity jsonb) OWNER TO els_owner;
CREATE FUNCTION els._uuid_v3(p_digest bytea) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (encode(set_byte(set_byte(p_digest, 6, ((get_byte(p_digest, 6) & 15) | 48)), 8, ((get_byte(p_digest, 8) & 63) | 128)), 'hex'::text))::uuid;
ALTER FUNCTION els._uuid_v3(p_digest bytea) OWNER TO els_owner;
CREATE FUNCTION els._event_id(p_event_type text, p_identity jsonb) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN els._uuid_v3(els._event_digest(p_event_type, p_identity));
ALTER FUNCTION els._event_id(p_event_type text, p_identity jsonb) OWNER TO els_owner;
COMMENT ON FUNCTION els._event_id(p_event_type text, p_identity jsonb) IS 'Name-based UUID v3 of an event type and its identity (a JSON array of ids, whose text form is unambiguous even when ids contain separators).';
CREATE FUNCTION els._event_timestamp() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN to_char((now() AT TIME ZONE 'UTC'::text), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'::text);
ALTER FUNCTION els._event_timestamp() OWNER TO els_owner;
CREATE FUNCTION els._excess_spec(p_batch_id text, p_original_file_name text, p_text_storage_id text, p_correlation_id text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN jsonb_build_object('event_type', 'ExcessContentProvisioned', 'key', p_batch_id, 'identity', jsonb_build_array(p_batch_id, p_text_storage_id), 'correlation_id', p_correlation_id, 'data', jsonb_build_object('batch_id', p_batch_id, 'original_file_name', p_original_file_name, 'text_storage_id', p_text_storage_id, 'reason', 'NO_AVAILABLE_SLOT'));
ALTER FUNCTION els._excess_spec(p_batch_id text, p_original_file_name text, p_text_storage_id text, p_correlation_id text) OWNER TO els_owner;
CREATE FUNCTION els._failure_fault(p_event jsonb, p_payload jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    AS $$
BEGIN
    RETURN coalesce(
        els._envelope_fault(p_event, 'huleedu.file.essay.validation.failed.v1', 'essay.validation.failed'),
        els._missing_fault(p_payload -> 'entity_id', 'entity_id'),
        els._missing_fault(p_payload -> 'file_upload_id', 'file_upload_id'),
        els._missing_fault(p_payload -> 'original_file_name', 'original_file_name'),
        els._missing_fault(p_payload -> 'validation_error_code', 'validation_error_code'),
        els._text_fault(p_payload -> 'entity_id', 'entity_id'),
        els._text_fault(p_payload -> 'file_upload_id', 'file_upload_id'),
        els._text_fault(p_payload -> 'original_file_name', 'original_file_name', 1024),
        els._enum_fault(p_payload -> 'validation_error_code', 'validation_error_code',
                        ARRAY['EMPTY_CONTENT', 'CONTENT_TOO_SHORT', 'CONTENT_TOO_LONG', 'RAW_STORAGE_FAILED',
                              'TEXT_EXTRACTION_FAILED', 'ENCRYPTED_FILE_UNSUPPORTED',
                              'UNKNOWN_VALIDATION_ERROR']),
        els._object_fault(p_payload -> 'validation_error_detail', 'validation_error_detail'),
        els._text_fault(p_payload -> 'raw_file_storage_id', 'raw_file_storage_id'),
        els._integer_fault(p_payload -> 'file_size_bytes', 'file_size_bytes', 0),
        els._text_fault(p_payload -> 'correlation_id', 'correlation_id'),
        els._timestamp_fault(p_payload -> 'timestamp', 'timestamp'));
END
$$;
ALTER FUNCTION els._failure_fault(p_event jsonb, p_payload jsonb) OWNER TO els_owner;
CREATE FUNCTION els._object_ok(p_value jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN COALESCE((jsonb_typeof(p_value) = ANY (ARRAY['object'::text, 'null'::text])), true);
ALTER FUNCTION els._object_ok(p_value jsonb) OWNER TO els_owner;
CREATE FUNCTION els._failure_ok(p_event jsonb, p_payload jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (els._envelope_ok(p_event, 'huleedu.file.essay.validation.failed.v1'::text, 'essay.validation.failed'::text) AND els._present((p_payload -> 'entity_id'::text)) AND els._text_ok((p_payload -> 'entity_id'::text)) AND els._present((p_payload -> 'file_upload_id'::text)) AND els._text_ok((p_payload -> 'file_upload_id'::text)) AND els._present((p_payload -> 'original_file_name'::text)) AND els._text_ok((p_payload -> 'original_file_name'::text), 1024) AND els._present((p_payload -> 'validation_error_code'::text)) AND els._enum_ok((p_payload -> 'validation_error_code'::text), ARRAY['EMPTY_CONTENT'::text, 'CONTENT_TOO_SHORT'::text, 'CONTENT_TOO_LONG'::text, 'RAW_STORAGE_FAILED'::text, 'TEXT_EXTRACTION_FAILED'::text, 'ENCRYPTED_FILE_UNSUPPORTED'::text, 'UNKNOWN_VALIDATION_ERROR'::text]) AND els._object_ok((p_payload -> 'validation_error_detail'::text)) AND els._text_ok((p_payload -> 'raw_file_storage_id'::text)) AND els._integer_ok((p_payload -> 'file_size_bytes'::text), (0)::numeric) AND els._text_ok((p_payload -> 'correlation_id'::text)) AND els._timestamp_ok((p_payload -> 'timestamp'::text)));
ALTER FUNCTION els._failure_ok(p_event jsonb, p_payload jsonb) OWNER TO els_owner;
CREATE FUNCTION els._failure_row(p_event jsonb, p_payload jsonb) RETURNS jsonb
    LANGUAGE sql PARALLEL SAFE
    RETURN jsonb_build_object('batch_id', (p_payload ->> 'entity_id'::text), 'item_key', (p_payload ->> 'file_upload_id'::text), 'file_upload_id', (p_payload ->> 'file_upload_id'::text), 'original_file_name', (p_payload ->> 'original_file_name'::text), 'validation_error_code', (p_payload ->> 'validation_error_code'::text), 'validation_error_detail', NULLIF((p_payload -> 'validation_error_detail'::text), 'null'::jsonb), 'raw_file_storage_id', (p_payload ->> 'raw_file_storage_id'::text), 'file_size_bytes', ((p_payload ->> 'file_size_bytes'::text))::numeric, 'correlation_id', els._correlation_id(p_event, p_payload), 'event_timestamp', (p_payload ->> 'timestamp'::text), 'source_event_id', CASE WHEN (p_event ? 'data'::text) THEN (p_event ->> 'event_id'::text) ELSE NULL::text END);
ALTER FUNCTION els._failure_row(p_event jsonb, p_payload jsonb) OWNER TO els_owner;
CREATE FUNCTION els._integer_fault(p_value jsonb, p_field text, p_min numeric) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN ((p_value IS NULL) OR (jsonb_typeof(p_value) = 'null'::text)) THEN NULL::jsonb WHEN (jsonb_typeof(p_value) <> 'number'::text) THEN els._fault('ELV03'::text, format('field %s must be an integer'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'wrong_type', 'expected', 'integer', 'actual', jsonb_typeof(p_value))) WHEN ((p_value #>> '{}'::text[]) ~ '[.eE]'::text) THEN els._fault('ELV03'::text, format('field %s must be an integer'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'not_an_integer', 'actual', p_value)) WHEN ((((p_value #>> '{}'::text[]))::numeric < p_min) OR (((p_value #>> '{}'::text[]))::numeric > ('9223372036854775807'::bigint)::numeric)) THEN els._fault('ELV03'::text, format('field %s is out of range'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'out_of_range', 'min', p_min, 'actual', p_value)) ELSE NULL::jsonb END;
ALTER FUNCTION els._integer_fault(p_value jsonb, p_field text, p_min numeric) OWNER TO els_owner;
CREATE FUNCTION els._item_results(p_steps els.item_step[]) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
BEGIN
    RETURN (
        SELECT jsonb_agg(jsonb_build_object('ord', p.ord, 'done', jsonb_build_object('ok', true, 'result',
                   jsonb_build_object(
                       'batch_id', p.batch_id, 'outcome', p.outcome, 'essay_id', p.result_essay_id,
                       'complete', p.complete,
                       'events', to_jsonb(array_remove(ARRAY[
                           p.own_event_id,
                           CASE WHEN p.completing AND NOT (p.kind = 'provision_content' AND p.outcome = 'excess')
                                THEN els._event_id('BatchContentProvisioningCompleted', jsonb_build_array(p.batch_id))
                           END], NULL))))))
          FROM unnest(p_steps) AS p);
END
$$;
ALTER FUNCTION els._item_results(p_steps els.item_step[]) OWNER TO els_owner;
CREATE FUNCTION els._judge_items(p_items jsonb) RETURNS els.item_step[]
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_steps els.item_step[];
BEGIN
    WITH item AS MATERIALIZED (
        SELECT x.* FROM jsonb_to_recordset(p_items) AS x(
            ord integer, kind text, batch_id text, item_key text, file_upload_id text,
            original_file_name text, raw_file_storage_id text, file_size_bytes bigint,
            content_md5_hash text, correlation_id text, source_event_id text, event_timestamp text,
            validation_error_code text, validation_error_detail jsonb)
    ), seen AS MATERIALIZED (
        -- LATERAL: one primary-key probe per item, whatever the planner guesses of the
        -- input's size (a hash join would read the whole ledger)
        SELECT i.*, k.item_key IS NOT NULL AS in_ledger, k.essay_id AS known_essay_id,
               k.item_key IS NOT NULL
               OR row_number() OVER (PARTITION BY i.batch_id, i.kind, i.item_key ORDER BY i.ord) > 1 AS duplicate
          FROM item AS i
          LEFT JOIN LATERAL (
                SELECT c.text_storage_id AS item_key, c.essay_id FROM els.essay_content AS c
                 WHERE i.kind = 'provision_content' AND c.batch_id = i.batch_id
                   AND c.text_storage_id = i.item_key
                UNION ALL
                SELECT f.file_upload_id, f.essay_id FROM els.validation_failure AS f
                 WHERE i.kind = 'record_validation_failure' AND f.batch_id = i.batch_id
                   AND f.file_upload_id = i.item_key
                 LIMIT 1) AS k ON true
    ), fresh AS MATERIALIZED (
        SELECT s.*, CASE WHEN NOT s.duplicate THEN
                        row_number() OVER (PARTITION BY s.batch_id, s.duplicate ORDER BY s.ord) END AS take_no
          FROM seen AS s
    ), batch AS MATERIALIZED (
        SELECT b.batch_id, b.new_items, t.batch_id IS NOT NULL AS tracked,
               coalesce(t.completed_at IS NOT NULL, false) AS was_complete, t.expected_count,
               sl.batch_id IS NOT NULL AS has_slots, bt.batch_id IS NOT NULL AS purged
          FROM (SELECT s.batch_id, count(*) FILTER (WHERE NOT s.duplicate) AS new_items
                  FROM fresh AS s GROUP BY s.batch_id) AS b
          -- LIMIT 1 (primary keys): per-batch probes, never flattened into a join that
          -- could read the table; the slot probe as EXISTS hashed every slot of the table
          LEFT JOIN LATERAL (SELECT t.batch_id, t.completed_at, t.expected_count
                               FROM els.batch_tracker AS t WHERE t.batch_id = b.batch_id LIMIT 1) AS t ON true
          LEFT JOIN LATERAL (SELECT x.batch_id FROM els.batch_tombstone AS x
                              WHERE x.batch_id = b.batch_id LIMIT 1) AS bt ON true
          LEFT JOIN LATERAL (SELECT s.batch_id FROM els.essay_slot AS s
                              WHERE s.batch_id = b.batch_id LIMIT 1) AS sl ON true
    )
    SELECT array_agg(ROW(
               s.ord, s.kind, s.batch_id, s.item_key, s.file_upload_id, s.original_file_name,
               s.raw_file_storage_id, s.file_size_bytes, s.content_md5_hash, s.correlation_id,
               s.source_event_id, s.event_timestamp, s.validation_error_code, s.validation_error_detail,
               s.duplicate, s.in_ledger, s.known_essay_id, s.take_no, b.new_items, b.tracked, b.was_complete, b.expected_count, b.has_slots, b.purged,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL)::els.item_step)
      INTO v_steps
      FROM fresh AS s JOIN batch AS b ON b.batch_id = s.batch_id;
    RETURN v_steps;
END
$$;
ALTER FUNCTION els._judge_items(p_items jsonb) OWNER TO els_owner;
CREATE FUNCTION els._judge_registrations(p_regs jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_judged jsonb;
BEGIN
    SELECT jsonb_agg(jsonb_build_object(
               'ord', j.ord, 'batch_id', j.batch_id, 'purged', j.purged,
               'outcome', CASE WHEN j.conflict IS NOT NULL THEN 'conflict'
                               WHEN j.purged OR j.existing = j.known_count THEN 'duplicate'
                               WHEN j.known_count IS NOT NULL THEN 'repaired'
                               ELSE 'registered' END,
               'conflict', j.conflict, 'existing', j.existing,
               'class_type', coalesce(j.known_class_type,
                                      CASE WHEN j.class_id IS NULL THEN 'GUEST' ELSE 'REGULAR' END),
               'expected_count', coalesce(j.known_count, j.expected_count),
               'complete', j.purged OR j.known_complete))
      INTO v_judged
      FROM (SELECT r.ord, r.batch_id, r.class_id, r.expected_count, k.purged,
                   k.expected_count AS known_count, k.class_type AS known_class_type,
                   k.complete AS known_complete,
                   CASE WHEN k.batch_id IS NULL THEN NULL
                        WHEN k.essay_ids IS DISTINCT FROM ARRAY(SELECT jsonb_array_elements_text(r.essay_ids))
                            THEN 'essay_ids'
                        WHEN k.expected_count IS DISTINCT FROM r.expected_count THEN 'expected_essay_count'
                        WHEN k.course_code IS DISTINCT FROM r.course_code THEN 'course_code'
                        WHEN k.user_id IS DISTINCT FROM r.user_id THEN 'user_id'
                        WHEN k.org_id IS DISTINCT FROM r.org_id THEN 'org_id'
                        WHEN k.class_id IS DISTINCT FROM r.class_id THEN 'class_id'
                   END AS conflict,
                   CASE WHEN k.batch_id IS NOT NULL AND NOT k.purged THEN
                        (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = r.batch_id) END AS existing
              FROM jsonb_to_recordset(p_regs) AS r(ord integer, batch_id text, expected_count integer,
                                                   essay_ids jsonb, course_code text, user_id text,
                                                   org_id text, class_id text)
              -- the tracker, else the tombstone: one primary-key probe each
              LEFT JOIN LATERAL (
                    SELECT t.batch_id, t.essay_ids, t.expected_count, t.course_code, t.user_id,
                           t.org_id, t.class_id, t.class_type, t.completed_at IS NOT NULL AS complete,
                           false AS purged
                      FROM els.batch_tracker AS t WHERE t.batch_id = r.batch_id
                    UNION ALL
                    SELECT b.batch_id, b.essay_ids, b.expected_count, b.course_code, b.user_id,
                           b.org_id, b.class_id, b.class_type, true, true
                      FROM els.batch_tombstone AS b WHERE b.batch_id = r.batch_id
                     LIMIT 1) AS k ON true
            OFFSET 0) AS j;
    RETURN v_judged;
END
$$;
ALTER FUNCTION els._judge_registrations(p_regs jsonb) OWNER TO els_owner;
CREATE FUNCTION els._lock_batch(p_batch_id text) RETURNS void
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT pg_advisory_xact_lock(els._batch_lock_key(p_batch_id)) AS pg_advisory_xact_lock;
END;
ALTER FUNCTION els._lock_batch(p_batch_id text) OWNER TO els_owner;
CREATE FUNCTION els._missing_fault(p_value jsonb, p_field text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN ((p_value IS NULL) OR (jsonb_typeof(p_value) = 'null'::text)) THEN els._fault('ELV02'::text, format('required field %s is missing or null'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'missing')) ELSE NULL::jsonb END;
ALTER FUNCTION els._missing_fault(p_value jsonb, p_field text) OWNER TO els_owner;
CREATE FUNCTION els._object_fault(p_value jsonb, p_field text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN (jsonb_typeof(p_value) <> ALL (ARRAY['object'::text, 'null'::text])) THEN els._fault('ELV03'::text, format('field %s must be an object'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'wrong_type', 'expected', 'object', 'actual', jsonb_typeof(p_value))) ELSE NULL::jsonb END;
ALTER FUNCTION els._object_fault(p_value jsonb, p_field text) OWNER TO els_owner;
CREATE FUNCTION els._payload(p_event jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN ((jsonb_typeof(p_event) = 'object'::text) AND (p_event ? 'data'::text)) THEN (p_event -> 'data'::text) ELSE p_event END;
ALTER FUNCTION els._payload(p_event jsonb) OWNER TO els_owner;
CREATE FUNCTION els._place_items(p_steps els.item_step[]) RETURNS els.item_step[]
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_steps els.item_step[];
BEGIN
    WITH step AS MATERIALIZED (
        SELECT * FROM unnest(p_steps)
    ), batch AS MATERIALIZED (
        SELECT DISTINCT s.batch_id, s.new_items, s.was_complete, s.expected_count
          FROM step AS s WHERE s.has_slots AND s.new_items > 0
    ), empty_slot AS MATERIALIZED (
        -- the first empty slots of each batch, one more than it has new items (to tell
        -- whether the round closes them all)
        SELECT b.batch_id, e.essay_id, row_number() OVER (PARTITION BY b.batch_id ORDER BY e.slot_no) AS take_no
          FROM batch AS b
         CROSS JOIN LATERAL (SELECT s.essay_id, s.slot_no FROM els.essay_slot AS s
                              WHERE s.batch_id = b.batch_id AND s.status = 'uploaded'
                              ORDER BY s.slot_no LIMIT b.new_items + 1) AS e
    ), closing AS MATERIALIZED (
        -- the new item that leaves its batch without an empty slot completes it (the
        -- first one when none was left)
        SELECT b.batch_id, greatest(count(e.essay_id), 1) AS completing_take
          FROM batch AS b LEFT JOIN empty_slot AS e ON e.batch_id = b.batch_id
         WHERE NOT b.was_complete
         GROUP BY b.batch_id, b.new_items, b.expected_count
        HAVING count(e.essay_id) <= b.new_items
           AND (SELECT count(*) FROM els.essay_slot AS s WHERE s.batch_id = b.batch_id) = b.expected_count
    ), placed AS MATERIALIZED (
        SELECT s.*, e.essay_id AS slot, coalesce(s.take_no = cl.completing_take, false) AS closes,
               CASE WHEN s.duplicate THEN 'duplicate'
                    WHEN s.has_slots THEN CASE WHEN e.essay_id IS NULL THEN 'excess'
                                               WHEN s.kind = 'provision_content' THEN 'assigned'
                                               ELSE 'recorded' END
                    WHEN s.purged THEN 'excess'
                    ELSE 'pending' END AS placed_outcome
          FROM step AS s
          LEFT JOIN empty_slot AS e ON e.batch_id = s.batch_id AND e.take_no = s.take_no
          LEFT JOIN closing AS cl ON cl.batch_id = s.batch_id
    ), judged AS MATERIALIZED (
        SELECT p.*,
               max(p.ord) FILTER (WHERE p.closes) OVER (PARTITION BY p.batch_id) AS completing_ord,
               CASE WHEN p.in_ledger THEN p.known_essay_id
                    ELSE first_value(p.slot) OVER (PARTITION BY p.batch_id, p.kind, p.item_key ORDER BY p.ord)
               END AS result_essay
          FROM placed AS p
    ), decided AS MATERIALIZED (
        SELECT j.*,
               CASE WHEN j.duplicate THEN
                        j.purged OR (j.tracked AND (j.was_complete OR coalesce(j.completing_ord < j.ord, false)))
                    WHEN j.has_slots THEN j.was_complete OR coalesce(j.ord >= j.completing_ord, false)
                    ELSE j.purged END AS is_complete,
               (j.kind = 'provision_content' AND NOT j.duplicate AND NOT j.has_slots AND j.purged
                AND EXISTS (SELECT FROM els.event_outbox AS o
                             WHERE o.event_id = els._event_id('ExcessContentProvisioned',
                                                              jsonb_build_array(j.batch_id, j.item_key))))
                   AS is_announced
          FROM judged AS j
    ), digested AS MATERIALIZED (
        -- the digest of the item's own event, its own step (an argument of els._uuid_v3,
        -- which uses it three times, a column keeps it inlined)
        SELECT d.*,
               CASE WHEN d.kind <> 'provision_content' OR d.is_announced
                         OR d.placed_outcome NOT IN ('assigned', 'excess') THEN NULL
                    WHEN d.placed_outcome = 'assigned' THEN
                        els._event_digest('EssaySlotAssigned', jsonb_build_array(d.batch_id, d.slot, d.item_key))
                    ELSE els._event_digest('ExcessContentProvisioned', jsonb_build_array(d.batch_id, d.item_key))
               END AS digest
          FROM decided AS d
    )
    SELECT array_agg(ROW(
               d.ord, d.kind, d.batch_id, d.item_key, d.file_upload_id, d.original_file_name,
               d.raw_file_storage_id, d.file_size_bytes, d.content_md5_hash, d.correlation_id,
               d.source_event_id, d.event_timestamp, d.validation_error_code, d.validation_error_detail,
               d.duplicate, d.in_ledger, d.known_essay_id, d.take_no, d.new_items, d.tracked,
               d.was_complete, d.expected_count, d.has_slots, d.purged,
               d.placed_outcome, d.slot, d.result_essay, d.closes, d.is_complete, d.is_announced,
               els._uuid_v3(d.digest))::els.item_step)
      INTO v_steps
      FROM digested AS d;
    RETURN v_steps;
END
$$;
ALTER FUNCTION els._place_items(p_steps els.item_step[]) OWNER TO els_owner;
CREATE FUNCTION els._read_events(p_kinds text[], p_events jsonb[], p_skip boolean[]) RETURNS TABLE(ord integer, kind text, fault jsonb, event_row jsonb)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
BEGIN
    IF 'register_batch' = ANY (p_kinds) THEN
        RETURN QUERY
        SELECT c.ord, 'register_batch', c.fault,
               CASE WHEN c.fault IS NULL THEN els._registration_row(c.event, c.payload) END
          FROM (SELECT v.ord, v.event, v.payload,
                       CASE WHEN els._registration_ok(v.event, v.payload, i.bad_ord, i.item_count, i.duplicate_id)
                            THEN NULL
                            ELSE els._registration_fault(v.event, v.payload, i.bad_ord, i.item_count,
                                                         i.duplicate_id) END AS fault
                  FROM (SELECT u.ord::integer AS ord, u.event, els._payload(u.event) AS payload
                          FROM unnest(p_kinds, p_events) WITH ORDINALITY AS u(kind, event, ord)
                         WHERE u.kind = 'register_batch' AND p_skip[u.ord::integer] IS NOT TRUE
                        OFFSET 0) AS v
                  CROSS JOIN LATERAL els._essay_id_items(v.payload -> 'essay_ids') AS i
                OFFSET 0) AS c;
    END IF;
    IF 'provision_content' = ANY (p_kinds) THEN
        RETURN QUERY
        SELECT c.ord, 'provision_content', c.fault,
               CASE WHEN c.fault IS NULL THEN els._content_row(c.event, c.payload) END
          FROM (SELECT v.ord, v.event, v.payload,
                       CASE WHEN els._content_ok(v.event, v.payload) THEN NULL
                            ELSE els._content_fault(v.event, v.payload) END AS fault
                  FROM (SELECT u.ord::integer AS ord, u.event, els._payload(u.event) AS payload
                          FROM unnest(p_kinds, p_events) WITH ORDINALITY AS u(kind, event, ord)
                         WHERE u.kind = 'provision_content' AND p_skip[u.ord::integer] IS NOT TRUE
                        OFFSET 0) AS v
                OFFSET 0) AS c;
    END IF;
    IF 'record_validation_failure' = ANY (p_kinds) THEN
        RETURN QUERY
        SELECT c.ord, 'record_validation_failure', c.fault,
               CASE WHEN c.fault IS NULL THEN els._failure_row(c.event, c.payload) END
          FROM (SELECT v.ord, v.event, v.payload,
                       CASE WHEN els._failure_ok(v.event, v.payload) THEN NULL
                            ELSE els._failure_fault(v.event, v.payload) END AS fault
                  FROM (SELECT u.ord::integer AS ord, u.event, els._payload(u.event) AS payload
                          FROM unnest(p_kinds, p_events) WITH ORDINALITY AS u(kind, event, ord)
                         WHERE u.kind = 'record_validation_failure' AND p_skip[u.ord::integer] IS NOT TRUE
                        OFFSET 0) AS v
                OFFSET 0) AS c;
    END IF;
END
$$;
ALTER FUNCTION els._read_events(p_kinds text[], p_events jsonb[], p_skip boolean[]) OWNER TO els_owner;
CREATE FUNCTION els._reconcile(p_batch_id text, OUT content_assigned integer, OUT failures_applied integer, OUT excess integer, OUT event_ids uuid[]) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_content jsonb := els._reconcile_content(ARRAY[p_batch_id]) -> p_batch_id;
    v_failures jsonb := els._reconcile_failures(ARRAY[p_batch_id]) -> p_batch_id;
BEGIN
    content_assigned := coalesce((v_content ->> 'assigned')::integer, 0);
    failures_applied := coalesce((v_failures ->> 'applied')::integer, 0);
    excess := coalesce((v_content ->> 'excess')::integer, 0) + coalesce((v_failures ->> 'excess')::integer, 0);
    event_ids := CASE WHEN v_content IS NULL THEN '{}'::uuid[] ELSE els._emit_events(v_content -> 'specs') END;
END
$$;
ALTER FUNCTION els._reconcile(p_batch_id text, OUT content_assigned integer, OUT failures_applied integer, OUT excess integer, OUT event_ids uuid[]) OWNER TO els_owner;
CREATE FUNCTION els._reconcile_content(p_batch_ids text[]) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_pending text[];
    v_result jsonb;
BEGIN
    -- a probe of the pending index per batch: most registrations find nothing
    SELECT array_agg(b.batch_id) INTO v_pending
      FROM unnest(p_batch_ids) AS b(batch_id)
     WHERE EXISTS (SELECT FROM els.essay_content AS c
                    WHERE c.batch_id = b.batch_id AND c.disposition = 'pending');
    IF v_pending IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    WITH placed AS MATERIALIZED (
        -- per batch (LATERAL), its k-th pending content and its k-th empty slot: paired
        -- across the round's batches at once, a join of every pending row with every
        -- empty slot
        SELECT b.batch_id, a.text_storage_id, a.essay_id
          FROM unnest(v_pending) AS b(batch_id)
         CROSS JOIN LATERAL (
                SELECT p.text_storage_id, e.essay_id
                  FROM (SELECT x.text_storage_id,
                               row_number() OVER (ORDER BY x.arrival_seq, x.text_storage_id) AS rn
                          FROM els.essay_content AS x
                         WHERE x.batch_id = b.batch_id AND x.disposition = 'pending') AS p
                  LEFT JOIN (SELECT x.essay_id, row_number() OVER (ORDER BY x.slot_no) AS rn
                               FROM els.essay_slot AS x
                              WHERE x.batch_id = b.batch_id AND x.status = 'uploaded') AS e ON e.rn = p.rn) AS a
    ), disposed AS (
        UPDATE els.essay_content AS c
           SET disposition = CASE WHEN e.essay_id IS NULL THEN 'excess' ELSE 'assigned' END::els.item_disposition,
               essay_id = e.essay_id, disposed_at = now()
          FROM placed AS e
         WHERE c.batch_id = e.batch_id AND c.text_storage_id = e.text_storage_id
        RETURNING c.*
    ), filled AS (
        UPDATE els.essay_slot AS s
           SET status = 'ready_for_processing', text_storage_id = d.text_storage_id, filled_at = now()
          FROM disposed AS d
         WHERE d.essay_id IS NOT NULL AND s.essay_id = d.essay_id
    )
    SELECT jsonb_object_agg(x.batch_id, jsonb_build_object('assigned', x.assigned, 'excess', x.excess,
                                                           'specs', x.specs))
      INTO v_result
      FROM (SELECT d.batch_id, count(d.essay_id) AS assigned, count(*) - count(d.essay_id) AS excess,
                   jsonb_agg(CASE WHEN d.essay_id IS NOT NULL THEN
                                 els._slot_assigned_spec(d.batch_id, d.essay_id, d.file_upload_id,
                                                         d.text_storage_id, d.original_file_name,
                                                         d.correlation_id)
                             ELSE els._excess_spec(d.batch_id, d.original_file_name, d.text_storage_id,
                                                   d.correlation_id)
                             END ORDER BY d.arrival_seq, d.text_storage_id) AS specs
              FROM disposed AS d GROUP BY d.batch_id) AS x;
    RETURN coalesce(v_result, '{}'::jsonb);
END
$$;
ALTER FUNCTION els._reconcile_content(p_batch_ids text[]) OWNER TO els_owner;
CREATE FUNCTION els._reconcile_failures(p_batch_ids text[]) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_pending text[];
    v_result jsonb;
BEGIN
    SELECT array_agg(b.batch_id) INTO v_pending
      FROM unnest(p_batch_ids) AS b(batch_id)
     WHERE EXISTS (SELECT FROM els.validation_failure AS f
                    WHERE f.batch_id = b.batch_id AND f.disposition = 'pending');
    IF v_pending IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    WITH placed AS MATERIALIZED (
        -- per batch, as for content
        SELECT b.batch_id, a.file_upload_id, a.essay_id
          FROM unnest(v_pending) AS b(batch_id)
         CROSS JOIN LATERAL (
                SELECT p.file_upload_id, e.essay_id
                  FROM (SELECT x.file_upload_id,
                               row_number() OVER (ORDER BY x.arrival_seq, x.file_upload_id) AS rn
                          FROM els.validation_failure AS x
                         WHERE x.batch_id = b.batch_id AND x.disposition = 'pending') AS p
                  LEFT JOIN (SELECT x.essay_id, row_number() OVER (ORDER BY x.slot_no) AS rn
                               FROM els.essay_slot AS x
                              WHERE x.batch_id = b.batch_id AND x.status = 'uploaded') AS e ON e.rn = p.rn) AS a
    ), disposed AS (
        UPDATE els.validation_failure AS f
           SET disposition = CASE WHEN e.essay_id IS NULL THEN 'excess' ELSE 'assigned' END::els.item_disposition,
               essay_id = e.essay_id, disposed_at = now()
          FROM placed AS e
         WHERE f.batch_id = e.batch_id AND f.file_upload_id = e.file_upload_id
        RETURNING f.batch_id, f.essay_id, f.file_upload_id
    ), closed AS (
        UPDATE els.essay_slot AS s
           SET status = 'content_ingestion_failed', failed_file_upload_id = d.file_upload_id, filled_at = now()
          FROM disposed AS d
         WHERE d.essay_id IS NOT NULL AND s.essay_id = d.essay_id
    )
    SELECT jsonb_object_agg(x.batch_id, jsonb_build_object('applied', x.applied, 'excess', x.excess))
      INTO v_result
      FROM (SELECT d.batch_id, count(d.essay_id) AS applied, count(*) - count(d.essay_id) AS excess
              FROM disposed AS d GROUP BY d.batch_id) AS x;
    RETURN coalesce(v_result, '{}'::jsonb);
END
$$;
ALTER FUNCTION els._reconcile_failures(p_batch_ids text[]) OWNER TO els_owner;
CREATE FUNCTION els._register_alone(p_reg jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_owner record;
    v_detail text;
BEGIN
    RETURN els._register_set(jsonb_build_array(p_reg)) -> 0;
EXCEPTION WHEN unique_violation OR SQLSTATE 'ELC02' THEN
    -- an owner on another partition comes in the DETAIL of the claims' ELC02
    GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
    SELECT o.essay_id, o.batch_id, o.purged INTO v_owner
      FROM els._essay_owner_elsewhere(p_reg ->> 'batch_id',
                                      ARRAY(SELECT jsonb_array_elements_text(p_reg -> 'essay_ids'))) AS o;
    IF FOUND THEN
        v_detail := els._essay_owner_detail(v_owner.essay_id, v_owner.batch_id, v_owner.purged)::text;
    ELSIF coalesce(v_detail, '') = '' THEN
        RAISE;
    END IF;
    RETURN jsonb_build_object('ord', p_reg -> 'ord', 'done', els._rejection(
        'ELC02', 'an essay id already belongs to another batch', v_detail,
        'els._register_alone: event ' || (p_reg ->> 'ord') || ' of the micro-batch'));
END
$$;
ALTER FUNCTION els._register_alone(p_reg jsonb) OWNER TO els_owner;
CREATE FUNCTION els._register_round(p_regs jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF jsonb_array_length(p_regs) = 1 THEN
        RETURN jsonb_build_array(els._register_alone(p_regs -> 0));
    END IF;
    BEGIN
        RETURN els._register_set(p_regs);
    EXCEPTION WHEN unique_violation OR SQLSTATE 'ELC02' THEN
        RETURN (SELECT jsonb_agg(els._register_alone(r.reg) ORDER BY (r.reg ->> 'ord')::integer)
                  FROM jsonb_array_elements(p_regs) AS r(reg));
    END;
END
$$;
ALTER FUNCTION els._register_round(p_regs jsonb) OWNER TO els_owner;
CREATE FUNCTION els._register_set(p_regs jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $_$
DECLARE
    v_judged jsonb := els._judge_registrations(p_regs);
    v_created jsonb := '{}'::jsonb;
    v_batches text[];
BEGIN
    IF jsonb_path_exists(v_judged, '$[*] ? (@.outcome == "registered" || @.outcome == "repaired")') THEN
        v_created := els._write_registrations(p_regs, v_judged);
        SELECT array_agg(j.batch_id ORDER BY j.ord) INTO v_batches
          FROM jsonb_to_recordset(v_judged) AS j(ord integer, batch_id text)
         WHERE v_created ? j.batch_id;
    END IF;
    RETURN els._registration_results(
        v_judged, v_created, CASE WHEN v_batches IS NULL THEN '{}'::jsonb ELSE els._settle_batches(v_batches) END);
END
$_$;
ALTER FUNCTION els._register_set(p_regs jsonb) OWNER TO els_owner;
CREATE FUNCTION els._registration_fault(p_event jsonb, p_payload jsonb, p_bad_ord bigint, p_item_count bigint, p_duplicate_id text) RETURNS jsonb
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    AS $$
BEGIN
    RETURN coalesce(
        els._envelope_fault(p_event, 'huleedu.batch.essays.registered.v1', 'batch.essays.registered'),
        els._missing_fault(p_payload -> 'entity_id', 'entity_id'),
        els._missing_fault(p_payload -> 'expected_essay_count', 'expected_essay_count'),
        els._missing_fault(p_payload -> 'essay_ids', 'essay_ids'),
        els._missing_fault(p_payload -> 'course_code', 'course_code'),
        els._missing_fault(p_payload -> 'user_id', 'user_id'),
        els._text_fault(p_payload -> 'entity_id', 'entity_id'),
        els._integer_fault(p_payload -> 'expected_essay_count', 'expected_essay_count', 1),
        els._text_array_fault(p_payload -> 'essay_ids', 'essay_ids', p_bad_ord),
        els._enum_fault(p_payload -> 'course_code', 'course_code',
                        ARRAY['ENG5', 'ENG6', 'ENG7', 'SV1', 'SV2', 'SV3']),
        els._text_fault(p_payload -> 'user_id', 'user_id'),
        els._text_fault(p_payload -> 'org_id', 'org_id'),
        els._text_fault(p_payload -> 'class_id', 'class_id'),
        els._object_fault(p_payload -> 'student_prompt_ref', 'student_prompt_ref'),
        els._object_fault(p_payload -> 'metadata', 'metadata'),
        -- data.correlation_id is validated even when the envelope's wins
        els._text_fault(p_payload -> 'correlation_id', 'correlation_id'),
        CASE WHEN p_item_count <> (p_payload ->> 'expected_essay_count')::numeric THEN
            els._fault('ELV04', 'expected_essay_count differs from the number of essay_ids',
                       jsonb_build_object('field', 'expected_essay_count', 'reason', 'count_mismatch',
                                          'expected_essay_count', (p_payload ->> 'expected_essay_count')::numeric,
                                          'essay_ids_count', p_item_count))
        END,
        CASE WHEN p_duplicate_id IS NOT NULL THEN
            els._fault('ELV05', 'essay_ids contains duplicates',
                       jsonb_build_object('field', 'essay_ids', 'reason', 'duplicate_item',
                                          'essay_id', p_duplicate_id))
        END,
        CASE WHEN (p_payload ->> 'expected_essay_count')::numeric > 10000 THEN
            els._fault('ELV06', 'batch too large: more than 10000 essays',
                       jsonb_build_object('field', 'expected_essay_count', 'reason', 'too_large',
                                          'max', 10000, 'actual', (p_payload ->> 'expected_essay_count')::numeric))
        END);
END
$$;
ALTER FUNCTION els._registration_fault(p_event jsonb, p_payload jsonb, p_bad_ord bigint, p_item_count bigint, p_duplicate_id text) OWNER TO els_owner;
CREATE FUNCTION els._registration_ok(p_event jsonb, p_payload jsonb, p_bad_ord bigint, p_item_count bigint, p_duplicate_id text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN (els._envelope_ok(p_event, 'huleedu.batch.essays.registered.v1'::text, 'batch.essays.registered'::text) AND els._present((p_payload -> 'entity_id'::text)) AND els._text_ok((p_payload -> 'entity_id'::text)) AND (jsonb_typeof((p_payload -> 'expected_essay_count'::text)) = 'number'::text) AND els._integer_ok((p_payload -> 'expected_essay_count'::text), (1)::numeric) AND (jsonb_typeof((p_payload -> 'essay_ids'::text)) = 'array'::text) AND (p_bad_ord IS NULL) AND els._present((p_payload -> 'course_code'::text)) AND els._enum_ok((p_payload -> 'course_code'::text), ARRAY['ENG5'::text, 'ENG6'::text, 'ENG7'::text, 'SV1'::text, 'SV2'::text, 'SV3'::text]) AND els._present((p_payload -> 'user_id'::text)) AND els._text_ok((p_payload -> 'user_id'::text)) AND els._text_ok((p_payload -> 'org_id'::text)) AND els._text_ok((p_payload -> 'class_id'::text)) AND els._object_ok((p_payload -> 'student_prompt_ref'::text)) AND els._object_ok((p_payload -> 'metadata'::text)) AND els._text_ok((p_payload -> 'correlation_id'::text))) THEN (((p_item_count)::numeric = ((p_payload ->> 'expected_essay_count'::text))::numeric) AND (p_duplicate_id IS NULL) AND (((p_payload ->> 'expected_essay_count'::text))::numeric <= (10000)::numeric)) ELSE false END;
ALTER FUNCTION els._registration_ok(p_event jsonb, p_payload jsonb, p_bad_ord bigint, p_item_count bigint, p_duplicate_id text) OWNER TO els_owner;
CREATE FUNCTION els._registration_results(p_judged jsonb, p_created jsonb, p_settled jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
BEGIN
    RETURN (
        SELECT jsonb_agg(jsonb_build_object('ord', j.ord, 'done', CASE
                   WHEN j.outcome = 'conflict' THEN els._rejection(
                       'ELC01', 'batch already registered with a different identity',
                       (jsonb_build_object('field', j.conflict, 'reason', 'identity_conflict',
                                           'batch_id', j.batch_id)
                        || CASE WHEN j.purged THEN '{"purged": true}'::jsonb ELSE '{}'::jsonb END)::text,
                       'els._register_set: event ' || j.ord || ' of the micro-batch')
                   ELSE jsonb_build_object('ok', true, 'result', jsonb_build_object(
                       'batch_id', j.batch_id,
                       'outcome', j.outcome,
                       'class_type', j.class_type,
                       'expected_count', j.expected_count,
                       'slots_created', coalesce((p_created ->> j.batch_id)::integer, 0),
                       'content_assigned', coalesce((s.v ->> 'content_assigned')::integer, 0),
                       'failures_applied', coalesce((s.v ->> 'failures_applied')::integer, 0),
                       'excess', coalesce((s.v ->> 'excess')::integer, 0),
                       'complete', coalesce((s.v ->> 'complete')::boolean, j.complete, false),
                       'events', coalesce(s.v -> 'events', '[]'::jsonb)))
               END) ORDER BY j.ord)
          FROM jsonb_to_recordset(p_judged) AS j(ord integer, batch_id text, outcome text, conflict text,
                                                 purged boolean, class_type text, expected_count integer,
                                                 complete boolean)
          LEFT JOIN LATERAL (SELECT p_settled -> j.batch_id AS v) AS s ON true);
END
$$;
ALTER FUNCTION els._registration_results(p_judged jsonb, p_created jsonb, p_settled jsonb) OWNER TO els_owner;
CREATE FUNCTION els._registration_row(p_event jsonb, p_payload jsonb) RETURNS jsonb
    LANGUAGE sql PARALLEL SAFE
    RETURN jsonb_build_object('batch_id', (p_payload ->> 'entity_id'::text), 'expected_count', ((p_payload ->> 'expected_essay_count'::text))::integer, 'essay_ids', (p_payload -> 'essay_ids'::text), 'course_code', (p_payload ->> 'course_code'::text), 'user_id', (p_payload ->> 'user_id'::text), 'org_id', (p_payload ->> 'org_id'::text), 'class_id', (p_payload ->> 'class_id'::text), 'student_prompt_ref', NULLIF((p_payload -> 'student_prompt_ref'::text), 'null'::jsonb), 'metadata', COALESCE(NULLIF((p_payload -> 'metadata'::text), 'null'::jsonb), '{}'::jsonb), 'correlation_id', els._correlation_id(p_event, p_payload), 'source_event_id', CASE WHEN (p_event ? 'data'::text) THEN (p_event ->> 'event_id'::text) ELSE NULL::text END);
ALTER FUNCTION els._registration_row(p_event jsonb, p_payload jsonb) OWNER TO els_owner;
CREATE FUNCTION els._reject(p_sqlstate text, p_message text, p_detail jsonb) RETURNS void
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, DETAIL = p_detail::text;
END
$$;
ALTER FUNCTION els._reject(p_sqlstate text, p_message text, p_detail jsonb) OWNER TO els_owner;
COMMENT ON FUNCTION els._reject(p_sqlstate text, p_message text, p_detail jsonb) IS 'Raises a structured rejection: custom SQLSTATE, one-line message, JSON detail.';
CREATE FUNCTION els._rejection(p_sqlstate text, p_message text, p_detail text, p_context text) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN jsonb_build_object('ok', false, 'sqlstate', p_sqlstate, 'message', p_message, 'detail', (p_detail)::jsonb, 'detail_text', p_detail, 'context', p_context);
ALTER FUNCTION els._rejection(p_sqlstate text, p_message text, p_detail text, p_context text) OWNER TO els_owner;
CREATE FUNCTION els._release_across(p_batch_ids text[], p_essay_ids text[]) RETURNS void
    LANGUAGE plpgsql
    AS $_$
BEGIN
    PERFORM 'PRAGMA:disable:check';  -- els_cluster exists in partitions only
    EXECUTE 'SELECT sum(n) FROM els_cluster.release_claims($1, $2, $3) AS n'
        USING p_batch_ids, p_essay_ids, pg_current_xact_id()::text::bigint;
END
$_$;
ALTER FUNCTION els._release_across(p_batch_ids text[], p_essay_ids text[]) OWNER TO els_owner;
CREATE FUNCTION els._settle_batches(p_batch_ids text[]) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_content jsonb := els._reconcile_content(p_batch_ids);
    v_failures jsonb := els._reconcile_failures(p_batch_ids);
    v_complete jsonb := els._complete_batches(p_batch_ids, 'all_slots_closed');
    v_events jsonb;
BEGIN
    SELECT jsonb_agg(e.spec || jsonb_build_object('event_id', els._event_id(e.spec ->> 'event_type',
                                                                            e.spec -> 'identity'))
                     ORDER BY e.batch_ord, e.sub, e.n)
      INTO v_events
      FROM (SELECT b.ord AS batch_ord, 0 AS sub, x.n, x.spec
              FROM unnest(p_batch_ids) WITH ORDINALITY AS b(batch_id, ord)
             CROSS JOIN LATERAL jsonb_array_elements(v_content -> b.batch_id -> 'specs')
                   WITH ORDINALITY AS x(spec, n)
            UNION ALL
            SELECT b.ord, 1, 1, els._completion_spec(b.batch_id, 'all_slots_closed')
              FROM unnest(p_batch_ids) WITH ORDINALITY AS b(batch_id, ord)
             WHERE (v_complete ->> b.batch_id)::boolean) AS e;
    IF v_events IS NOT NULL THEN
        PERFORM els._emit_events(v_events);
    END IF;
    RETURN (
        SELECT jsonb_object_agg(b.batch_id, jsonb_build_object(
                   'content_assigned', coalesce((v_content -> b.batch_id ->> 'assigned')::integer, 0),
                   'failures_applied', coalesce((v_failures -> b.batch_id ->> 'applied')::integer, 0),
                   'excess', coalesce((v_content -> b.batch_id ->> 'excess')::integer, 0)
                             + coalesce((v_failures -> b.batch_id ->> 'excess')::integer, 0),
                   'complete', v_complete ? b.batch_id,
                   'events', coalesce((SELECT jsonb_agg(e.ev -> 'event_id')
                                         FROM jsonb_array_elements(v_events) AS e(ev)
                                        WHERE e.ev ->> 'key' = b.batch_id), '[]'::jsonb)))
          FROM unnest(p_batch_ids) AS b(batch_id));
END
$$;
ALTER FUNCTION els._settle_batches(p_batch_ids text[]) OWNER TO els_owner;
CREATE FUNCTION els._slot_assigned_spec(p_batch_id text, p_essay_id text, p_file_upload_id text, p_text_storage_id text, p_original_file_name text, p_correlation_id text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN jsonb_build_object('event_type', 'EssaySlotAssigned', 'key', p_batch_id, 'identity', jsonb_build_array(p_batch_id, p_essay_id, p_text_storage_id), 'correlation_id', p_correlation_id, 'data', jsonb_build_object('batch_id', p_batch_id, 'essay_id', p_essay_id, 'file_upload_id', p_file_upload_id, 'text_storage_id', p_text_storage_id, 'original_file_name', p_original_file_name));
ALTER FUNCTION els._slot_assigned_spec(p_batch_id text, p_essay_id text, p_file_upload_id text, p_text_storage_id text, p_original_file_name text, p_correlation_id text) OWNER TO els_owner;
CREATE FUNCTION els._text_array_fault(p_value jsonb, p_field text, p_bad_ord bigint) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN ((p_value IS NULL) OR (jsonb_typeof(p_value) = 'null'::text)) THEN NULL::jsonb WHEN (jsonb_typeof(p_value) <> 'array'::text) THEN els._fault('ELV03'::text, format('field %s must be an array of strings'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'wrong_type', 'expected', 'array', 'actual', jsonb_typeof(p_value))) WHEN (p_bad_ord IS NOT NULL) THEN els._fault('ELV03'::text, format('field %s must hold strings of 1..255 characters'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'bad_item', 'index', (p_bad_ord - 1), 'item', "left"(((p_value -> ((p_bad_ord)::integer - 1)))::text, 300))) ELSE NULL::jsonb END;
ALTER FUNCTION els._text_array_fault(p_value jsonb, p_field text, p_bad_ord bigint) OWNER TO els_owner;
CREATE FUNCTION els._timestamp_fault(p_value jsonb, p_field text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN COALESCE(els._text_fault(p_value, p_field), CASE WHEN ((jsonb_typeof(p_value) = 'string'::text) AND ((p_value #>> '{}'::text[]) !~ els._timestamp_pattern())) THEN els._fault('ELV03'::text, format('field %s must be an ISO-8601 timestamp'::text, p_field), jsonb_build_object('field', p_field, 'reason', 'bad_format', 'expected', 'ISO-8601')) ELSE NULL::jsonb END);
ALTER FUNCTION els._timestamp_fault(p_value jsonb, p_field text) OWNER TO els_owner;
CREATE FUNCTION els._try_lock_batch(p_batch_id text) RETURNS boolean
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT pg_try_advisory_xact_lock(els._batch_lock_key(p_batch_id)) AS pg_try_advisory_xact_lock;
END;
ALTER FUNCTION els._try_lock_batch(p_batch_id text) OWNER TO els_owner;
CREATE FUNCTION els._verdict_across(p_owner_partition integer, p_batch_id text, p_essay_id text, p_owner_xid bigint) RETURNS jsonb
    LANGUAGE plpgsql
    AS $_$
DECLARE
    v_verdict jsonb;
BEGIN
    PERFORM 'PRAGMA:disable:check';  -- els_cluster exists in partitions only
    EXECUTE 'SELECT to_jsonb(v) FROM els_cluster.claim_verdict($1, $2, $3, $4) AS v'
       INTO v_verdict USING p_owner_partition, p_batch_id, p_essay_id, p_owner_xid;
    RETURN v_verdict;
END
$_$;
ALTER FUNCTION els._verdict_across(p_owner_partition integer, p_batch_id text, p_essay_id text, p_owner_xid bigint) OWNER TO els_owner;
CREATE FUNCTION els._write_item_effects(p_steps els.item_step[], p_fills boolean, p_purged boolean, p_completes boolean) RETURNS integer
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_slots integer := 0;
BEGIN
    IF p_fills THEN
        UPDATE els.essay_slot AS s
           SET status = CASE WHEN p.kind = 'provision_content' THEN 'ready_for_processing'
                             ELSE 'content_ingestion_failed' END::els.essay_status,
               text_storage_id = CASE WHEN p.kind = 'provision_content' THEN p.item_key END,
               failed_file_upload_id = CASE WHEN p.kind = 'record_validation_failure' THEN p.item_key END,
               filled_at = now()
          FROM unnest(p_steps) AS p
         WHERE p.outcome IN ('assigned', 'recorded') AND s.essay_id = p.slot_essay_id;
        GET DIAGNOSTICS v_slots = ROW_COUNT;
    END IF;
    IF p_purged THEN
        UPDATE els.batch_tombstone AS b SET last_late_item_at = now()
         WHERE b.batch_id IN (SELECT p.batch_id FROM unnest(p_steps) AS p
                               WHERE p.purged AND NOT p.duplicate AND NOT p.has_slots);
    END IF;
    IF p_completes THEN
        UPDATE els.batch_tracker AS t SET completed_at = now(), completion_reason = 'all_slots_closed'
         WHERE t.batch_id IN (SELECT p.batch_id FROM unnest(p_steps) AS p WHERE p.completing);
    END IF;
    RETURN v_slots;
END
$$;
ALTER FUNCTION els._write_item_effects(p_steps els.item_step[], p_fills boolean, p_purged boolean, p_completes boolean) OWNER TO els_owner;
CREATE FUNCTION els._write_item_events(p_steps els.item_step[]) RETURNS integer
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_rows integer;
BEGIN
    INSERT INTO els.event_outbox (event_id, event_type, topic, message_key, envelope)
    SELECT x.event_id, x.spec ->> 'event_type', els.output_topic(x.spec ->> 'event_type'),
           x.spec ->> 'key',
           els._envelope(x.event_id, x.spec ->> 'event_type', x.spec ->> 'correlation_id',
                         x.spec -> 'data', els._event_timestamp())
      FROM (SELECT p.ord, 0 AS sub, p.own_event_id AS event_id,
                   CASE WHEN p.outcome = 'assigned' THEN
                            els._slot_assigned_spec(p.batch_id, p.slot_essay_id, p.file_upload_id,
                                                    p.item_key, p.original_file_name, p.correlation_id)
                        ELSE els._excess_spec(p.batch_id, p.original_file_name, p.item_key,
                                              p.correlation_id) END AS spec
              FROM unnest(p_steps) AS p
             WHERE p.own_event_id IS NOT NULL
            UNION ALL
            SELECT p.ord, 1, els._event_id('BatchContentProvisioningCompleted', jsonb_build_array(p.batch_id)),
                   els._completion_spec(p.batch_id, 'all_slots_closed')
              FROM unnest(p_steps) AS p
             WHERE p.completing) AS x
     ORDER BY x.ord, x.sub;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;
ALTER FUNCTION els._write_item_events(p_steps els.item_step[]) OWNER TO els_owner;
CREATE FUNCTION els._write_item_rows(p_steps els.item_step[], p_content boolean, p_failures boolean) RETURNS integer
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_content integer := 0;
    v_failures integer := 0;
BEGIN
    IF p_content THEN
        INSERT INTO els.essay_content (
            batch_id, text_storage_id, disposition, essay_id, file_upload_id, original_file_name,
            raw_file_storage_id, file_size_bytes, content_md5_hash, correlation_id,
            source_event_id, event_timestamp, disposed_at)
        SELECT p.batch_id, p.item_key, p.outcome::els.item_disposition, p.slot_essay_id,
               p.file_upload_id, p.original_file_name, p.raw_file_storage_id, p.file_size_bytes,
               p.content_md5_hash, p.correlation_id, p.source_event_id, p.event_timestamp,
               CASE WHEN p.outcome <> 'pending' THEN now() END
          FROM unnest(p_steps) AS p
         WHERE p.kind = 'provision_content' AND NOT p.duplicate
         ORDER BY p.ord;
        GET DIAGNOSTICS v_content = ROW_COUNT;
    END IF;
    IF p_failures THEN
        INSERT INTO els.validation_failure (
            batch_id, file_upload_id, disposition, essay_id, original_file_name,
            validation_error_code, validation_error_detail, raw_file_storage_id, file_size_bytes,
            correlation_id, source_event_id, event_timestamp, disposed_at)
        SELECT p.batch_id, p.item_key,
               (CASE p.outcome WHEN 'recorded' THEN 'assigned' ELSE p.outcome END)::els.item_disposition,
               p.slot_essay_id, p.original_file_name, p.validation_error_code,
               p.validation_error_detail, p.raw_file_storage_id, p.file_size_bytes,
               p.correlation_id, p.source_event_id, p.event_timestamp,
               CASE WHEN p.outcome <> 'pending' THEN now() END
          FROM unnest(p_steps) AS p
         WHERE p.kind = 'record_validation_failure' AND NOT p.duplicate
         ORDER BY p.ord;
        GET DIAGNOSTICS v_failures = ROW_COUNT;
    END IF;
    RETURN v_content + v_failures;
END
$$;
ALTER FUNCTION els._write_item_rows(p_steps els.item_step[], p_content boolean, p_failures boolean) OWNER TO els_owner;
CREATE FUNCTION els._write_registrations(p_regs jsonb, p_judged jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
DECLARE
    v_created jsonb;
BEGIN
    WITH todo AS MATERIALIZED (
        SELECT r.*, j.outcome, j.existing
          FROM jsonb_to_recordset(p_regs) AS r(ord integer, batch_id text, expected_count integer,
                   essay_ids jsonb, course_code text, user_id text, org_id text, class_id text,
                   student_prompt_ref jsonb, metadata jsonb, correlation_id text, source_event_id text)
          JOIN jsonb_to_recordset(p_judged) AS j(ord integer, outcome text, existing bigint)
            ON j.ord = r.ord
         WHERE j.outcome IN ('registered', 'repaired')
    ), trackers AS (
        INSERT INTO els.batch_tracker (
            batch_id, expected_count, essay_ids, course_code, user_id, org_id, class_id,
            student_prompt_ref, metadata, correlation_id, registration_event_id)
        SELECT t.batch_id, t.expected_count, ARRAY(SELECT jsonb_array_elements_text(t.essay_ids)),
               t.course_code, t.user_id, t.org_id, t.class_id, t.student_prompt_ref, t.metadata,
               t.correlation_id, t.source_event_id
          FROM todo AS t WHERE t.outcome = 'registered'
    ), slots AS (
        INSERT INTO els.essay_slot (essay_id, batch_id, slot_no)
        SELECT e.id, t.batch_id, e.ord
          FROM todo AS t
         CROSS JOIN LATERAL jsonb_array_elements_text(t.essay_ids) WITH ORDINALITY AS e(id, ord)
         -- a repaired batch's existing slots: a probe each (LIMIT 1), never a hashed
         -- subplan of every slot of the table, which an OR NOT EXISTS became
          LEFT JOIN LATERAL (SELECT s.essay_id FROM els.essay_slot AS s
                              WHERE t.outcome = 'repaired' AND s.essay_id = e.id AND s.batch_id = t.batch_id
                              LIMIT 1) AS x ON true
         WHERE x.essay_id IS NULL
         ORDER BY e.id
        RETURNING essay_slot.batch_id
    )
    SELECT coalesce(jsonb_object_agg(c.batch_id, c.n), '{}'::jsonb) INTO v_created
      FROM (SELECT s.batch_id, count(*) AS n FROM slots AS s GROUP BY s.batch_id) AS c;
    -- after the slots: a purge that deleted a slot these ids waited for has committed;
    -- one primary-key probe per id of the purged batches' ids (migration 0009)
    IF EXISTS (SELECT FROM jsonb_to_recordset(p_regs) AS r(batch_id text, essay_ids jsonb)
                CROSS JOIN LATERAL jsonb_array_elements_text(r.essay_ids) AS e(id)
                JOIN els.retired_essay AS x ON x.essay_id = e.id
               WHERE v_created ? r.batch_id AND x.batch_id <> r.batch_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'ELC02', MESSAGE = 'an essay id already belongs to another batch';
    END IF;
    -- behind the proxy: the claims on the other partitions (046_essay_claims.sql)
    IF v_created <> '{}'::jsonb AND EXISTS (SELECT FROM els.partition_self) THEN
        PERFORM els._claim_essays(array_agg(r.batch_id), array_agg(e.id))
           FROM jsonb_to_recordset(p_regs) AS r(batch_id text, essay_ids jsonb)
          CROSS JOIN LATERAL jsonb_array_elements_text(r.essay_ids) AS e(id)
          WHERE v_created ? r.batch_id;
    END IF;
    RETURN v_created;
END
$$;
ALTER FUNCTION els._write_registrations(p_regs jsonb, p_judged jsonb) OWNER TO els_owner;
CREATE FUNCTION els.apply_events(events jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_kinds text[];
    v_events jsonb[];
BEGIN
    IF jsonb_typeof(events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'events must be a JSON array of {kind, event}';
    END IF;
    SELECT coalesce(array_agg(e.item ->> 'kind' ORDER BY e.ord), '{}'::text[]),
           coalesce(array_agg(e.item -> 'event' ORDER BY e.ord), '{}'::jsonb[])
      INTO v_kinds, v_events
      FROM jsonb_array_elements(events) WITH ORDINALITY AS e(item, ord);
    RETURN to_jsonb(els._apply_events(v_kinds, v_events));
END
$$;
ALTER FUNCTION els.apply_events(events jsonb) OWNER TO els_owner;
COMMENT ON FUNCTION els.apply_events(events jsonb) IS 'A micro-batch of input events as one JSON array of {kind, event} in arrival order, applied as els.apply_events(text[], text[]) does; one result per event.';
CREATE FUNCTION els.apply_events(kinds text[], events text[]) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_n integer := coalesce(cardinality(events), 0);
    v_json jsonb[];
    v_refused jsonb[];
    v_state text;
    v_message text;
    v_detail text;
    v_context text;
BEGIN
    -- every value at once; one by one only when one of them is refused
    BEGIN
        v_json := events::jsonb[];
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
        v_json := array_fill(NULL::jsonb, ARRAY[v_n]);
        v_refused := array_fill(NULL::jsonb, ARRAY[v_n]);
        FOR i IN 1 .. v_n LOOP
            BEGIN
                v_json[i] := events[i]::jsonb;
            EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                        v_detail = PG_EXCEPTION_DETAIL, v_context = PG_EXCEPTION_CONTEXT;
                v_refused[i] := jsonb_build_object('ok', false, 'refused_value', true,
                    'sqlstate', v_state, 'message', v_message, 'pg_detail', v_detail,
                    'context', v_context);
            END;
        END LOOP;
    END;
    RETURN to_jsonb(els._apply_events(kinds, coalesce(v_json, '{}'::jsonb[]), v_refused));
END
$$;
ALTER FUNCTION els.apply_events(kinds text[], events text[]) OWNER TO els_owner;
COMMENT ON FUNCTION els.apply_events(kinds text[], events text[]) IS 'A micro-batch of input events in arrival order (kinds[i]: register_batch, provision_content or record_validation_failure) applied set-based by the same core as the per-event functions; one result per event: {ok: true, result} or {ok: false, sqlstate, message, detail}. Rejected events change nothing; the others are applied.';
CREATE TABLE els.batch_tracker (
    batch_id text NOT NULL,
    expected_count integer NOT NULL,
    essay_ids text[] NOT NULL,
    course_code text NOT NULL,
    user_id text NOT NULL,
    org_id text,
    class_id text,
    class_type text GENERATED ALWAYS AS (
CASE
    WHEN (class_id IS NULL) THEN 'GUEST'::text
    ELSE 'REGULAR'::text
END) STORED,
    student_prompt_ref jsonb,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    correlation_id text NOT NULL,
    registration_event_id text,
    registered_at timestamp with time zone DEFAULT now() NOT NULL,
    completed_at timestamp with time zone,
    completion_reason text,
    CONSTRAINT batch_tracker_batch_id_check CHECK (((length(batch_id) >= 1) AND (length(batch_id) <= 255))),
    CONSTRAINT batch_tracker_check CHECK ((cardinality(essay_ids) = expected_count)),
    CONSTRAINT batch_tracker_completion_has_reason CHECK (((completed_at IS NULL) = (completion_reason IS NULL))),
    CONSTRAINT batch_tracker_completion_reason_check CHECK ((completion_reason = ANY (ARRAY['all_slots_closed'::text, 'deadline'::text]))),
    CONSTRAINT batch_tracker_course_code_check CHECK ((course_code = ANY (ARRAY['ENG5'::text, 'ENG6'::text, 'ENG7'::text, 'SV1'::text, 'SV2'::text, 'SV3'::text]))),
    CONSTRAINT batch_tracker_expected_count_check CHECK (((expected_count >= 1) AND (expected_count <= 10000)))
);
ALTER TABLE els.batch_tracker OWNER TO els_owner;
COMMENT ON TABLE els.batch_tracker IS 'One row per registered batch: its identity (batch id, ordered essay ids, count, course, user, org, class) and when it completed.';
COMMENT ON COLUMN els.batch_tracker.completion_reason IS 'Why the batch completed: all_slots_closed (its last item) or deadline (els.close_batch, els.close_overdue_batches). NULL while incomplete.';
CREATE FUNCTION els.batch_health(stuck_after interval) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    BEGIN ATOMIC
 SELECT jsonb_build_object('incomplete_batches', count(*), 'stuck_batches', count(*) FILTER (WHERE (t.registered_at <= (now() - batch_health.stuck_after))), 'oldest_incomplete_age_seconds', COALESCE(round(EXTRACT(epoch FROM (now() - min(t.registered_at))), 3), (0)::numeric)) AS jsonb_build_object
    FROM els.batch_tracker t
   WHERE (t.completed_at IS NULL);
END;
ALTER FUNCTION els.batch_health(stuck_after interval) OWNER TO els_owner;
COMMENT ON FUNCTION els.batch_health(stuck_after interval) IS 'incomplete_batches, stuck_batches (incomplete, registered at least stuck_after ago) and oldest_incomplete_age_seconds (0 when none), from the index of incomplete batches.';
CREATE SEQUENCE els.arrival_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER TABLE els.arrival_seq OWNER TO els_owner;
CREATE TABLE els.batch_tombstone (
    batch_id text NOT NULL,
    expected_count integer NOT NULL,
    essay_ids text[] NOT NULL,
    course_code text NOT NULL,
    user_id text NOT NULL,
    org_id text,
    class_id text,
    class_type text NOT NULL,
    correlation_id text NOT NULL,
    registered_at timestamp with time zone NOT NULL,
    completed_at timestamp with time zone NOT NULL,
    completion_reason text NOT NULL,
    filled_count integer NOT NULL,
    failed_count integer NOT NULL,
    timed_out_count integer NOT NULL,
    purged_at timestamp with time zone DEFAULT now() NOT NULL,
    last_late_item_at timestamp with time zone,
    CONSTRAINT batch_tombstone_completion_reason_check CHECK ((completion_reason = ANY (ARRAY['all_slots_closed'::text, 'deadline'::text])))
);
ALTER TABLE els.batch_tombstone OWNER TO els_owner;
COMMENT ON TABLE els.batch_tombstone IS 'One row per batch purged by els.purge_history: its registration identity and final counts, kept forever so that a redelivered registration is a duplicate (ELC01 if it differs) and late content or failures are excess.';
COMMENT ON COLUMN els.batch_tombstone.last_late_item_at IS 'When content or a failure last arrived for the batch after its purge (kept as excess); the next purge older than this deletes those rows and clears it.';
CREATE TABLE els.essay_content (
    batch_id text NOT NULL,
    text_storage_id text NOT NULL,
    disposition els.item_disposition NOT NULL,
    essay_id text,
    file_upload_id text NOT NULL,
    original_file_name text NOT NULL,
    raw_file_storage_id text,
    file_size_bytes bigint,
    content_md5_hash text,
    correlation_id text NOT NULL,
    source_event_id text,
    event_timestamp text,
    arrival_seq bigint DEFAULT nextval('els.arrival_seq'::regclass) NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    disposed_at timestamp with time zone,
    CONSTRAINT essay_content_assigned_has_slot CHECK (((disposition = 'assigned'::els.item_disposition) = (essay_id IS NOT NULL))),
    CONSTRAINT essay_content_batch_id_check CHECK (((length(batch_id) >= 1) AND (length(batch_id) <= 255))),
    CONSTRAINT essay_content_file_size_bytes_check CHECK ((file_size_bytes >= 0)),
    CONSTRAINT essay_content_text_storage_id_check CHECK (((length(text_storage_id) >= 1) AND (length(text_storage_id) <= 255)))
);
ALTER TABLE els.essay_content OWNER TO els_owner;
COMMENT ON TABLE els.essay_content IS 'Every extracted text received for a batch, once per text_storage_id: pending (batch not registered yet), assigned (in slot essay_id) or excess (no empty slot).';
CREATE TABLE els.essay_slot (
    essay_id text NOT NULL,
    batch_id text NOT NULL,
    slot_no integer NOT NULL,
    status els.essay_status DEFAULT 'uploaded'::els.essay_status NOT NULL,
    text_storage_id text,
    failed_file_upload_id text,
    filled_at timestamp with time zone,
    failure_code text,
    CONSTRAINT essay_slot_essay_id_check CHECK (((length(essay_id) >= 1) AND (length(essay_id) <= 255))),
    CONSTRAINT essay_slot_failure_code_check CHECK ((failure_code = 'CONTENT_TIMEOUT'::text)),
    CONSTRAINT essay_slot_slot_no_check CHECK ((slot_no >= 1)),
    CONSTRAINT essay_slot_status_matches_filling CHECK (
CASE status
    WHEN 'uploaded'::els.essay_status THEN ((text_storage_id IS NULL) AND (failed_file_upload_id IS NULL) AND (failure_code IS NULL))
    WHEN 'ready_for_processing'::els.essay_status THEN ((text_storage_id IS NOT NULL) AND (failed_file_upload_id IS NULL) AND (failure_code IS NULL))
    WHEN 'content_ingestion_failed'::els.essay_status THEN ((text_storage_id IS NULL) AND ((failed_file_upload_id IS NULL) <> (failure_code IS NULL)))
    ELSE NULL::boolean
END)
);
ALTER TABLE els.essay_slot OWNER TO els_owner;
COMMENT ON TABLE els.essay_slot IS 'One slot per essay id of a registered batch, numbered by the order of essay_ids.';
COMMENT ON COLUMN els.essay_slot.failure_code IS 'Set when the database itself closed the slot: CONTENT_TIMEOUT (the batch was closed by its deadline). Not an incoming validation_error_code: no event can set it.';
CREATE TABLE els.event_outbox (
    id bigint NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    topic text NOT NULL,
    message_key text NOT NULL,
    envelope jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    published_at timestamp with time zone,
    publish_attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    retry_after timestamp with time zone,
    kafka_topic text,
    kafka_partition integer,
    kafka_offset bigint,
    redelivered_at timestamp with time zone,
    CONSTRAINT event_outbox_delivery_coordinates CHECK ((((kafka_topic IS NULL) = (kafka_offset IS NULL)) AND ((kafka_partition IS NULL) = (kafka_offset IS NULL)) AND ((kafka_offset IS NULL) OR ((published_at IS NOT NULL) AND (kafka_partition >= 0) AND (kafka_offset >= 0)))))
);
ALTER TABLE els.event_outbox OWNER TO els_owner;
COMMENT ON TABLE els.event_outbox IS 'Transactional outbox: events written with the state change that caused them; the worker relay publishes them to Kafka and stamps published_at after delivery.';
COMMENT ON COLUMN els.event_outbox.last_error IS 'Why Kafka refused the row the last time (set by els.set_aside_outbox); NULL when never refused.';
COMMENT ON COLUMN els.event_outbox.retry_after IS 'A set-aside row is not claimed again before this time.';
COMMENT ON COLUMN els.event_outbox.kafka_topic IS 'Topic the broker stored the published row in (its delivery report); NULL when unpublished or published before offsets were kept.';
COMMENT ON COLUMN els.event_outbox.kafka_partition IS 'Partition the broker stored the published row in (its delivery report).';
COMMENT ON COLUMN els.event_outbox.kafka_offset IS 'Offset the broker stored the published row at (its delivery report): the proof of delivery that worker.py audit reads back.';
COMMENT ON COLUMN els.event_outbox.redelivered_at IS 'When worker.py audit last found the row missing from its topic and produced it again.';
CREATE TABLE els.validation_failure (
    batch_id text NOT NULL,
    file_upload_id text NOT NULL,
    disposition els.item_disposition NOT NULL,
    essay_id text,
    original_file_name text NOT NULL,
    validation_error_code text NOT NULL,
    validation_error_detail jsonb,
    raw_file_storage_id text,
    file_size_bytes bigint,
    correlation_id text NOT NULL,
    source_event_id text,
    event_timestamp text,
    arrival_seq bigint DEFAULT nextval('els.arrival_seq'::regclass) NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    disposed_at timestamp with time zone,
    CONSTRAINT validation_failure_assigned_has_slot CHECK (((disposition = 'assigned'::els.item_disposition) = (essay_id IS NOT NULL))),
    CONSTRAINT validation_failure_batch_id_check CHECK (((length(batch_id) >= 1) AND (length(batch_id) <= 255))),
    CONSTRAINT validation_failure_file_size_bytes_check CHECK ((file_size_bytes >= 0)),
    CONSTRAINT validation_failure_file_upload_id_check CHECK (((length(file_upload_id) >= 1) AND (length(file_upload_id) <= 255))),
    CONSTRAINT validation_failure_validation_error_code_check CHECK ((validation_error_code = ANY (ARRAY['EMPTY_CONTENT'::text, 'CONTENT_TOO_SHORT'::text, 'CONTENT_TOO_LONG'::text, 'RAW_STORAGE_FAILED'::text, 'TEXT_EXTRACTION_FAILED'::text, 'ENCRYPTED_FILE_UNSUPPORTED'::text, 'UNKNOWN_VALIDATION_ERROR'::text])))
);
ALTER TABLE els.validation_failure OWNER TO els_owner;
COMMENT ON TABLE els.validation_failure IS 'Every validation failure received for a batch, once per file_upload_id: pending, assigned (closed slot essay_id) or excess (no empty slot to close).';
CREATE FUNCTION els.batch_report(p_batch_id text) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    BEGIN ATOMIC
 SELECT jsonb_build_object('batch_id', batch_report.p_batch_id, 'registered', ((t.batch_id IS NOT NULL) OR (b.batch_id IS NOT NULL)), 'purged', (b.batch_id IS NOT NULL), 'tracker',
         CASE
             WHEN (t.batch_id IS NOT NULL) THEN jsonb_build_object('expected_count', t.expected_count, 'course_code', t.course_code, 'user_id', t.user_id, 'org_id', t.org_id, 'class_id', t.class_id, 'class_type', t.class_type, 'correlation_id', t.correlation_id, 'registered_at', t.registered_at, 'completed_at', t.completed_at, 'completion_reason', t.completion_reason)
             WHEN (b.batch_id IS NOT NULL) THEN jsonb_build_object('expected_count', b.expected_count, 'course_code', b.course_code, 'user_id', b.user_id, 'org_id', b.org_id, 'class_id', b.class_id, 'class_type', b.class_type, 'correlation_id', b.correlation_id, 'registered_at', b.registered_at, 'completed_at', b.completed_at, 'completion_reason', b.completion_reason)
             ELSE NULL::jsonb
         END, 'complete', ((t.completed_at IS NOT NULL) OR (b.batch_id IS NOT NULL)), 'tombstone',
         CASE
             WHEN (b.batch_id IS NOT NULL) THEN jsonb_build_object('purged_at', b.purged_at, 'filled_count', b.filled_count, 'failed_count', b.failed_count, 'timed_out_count', b.timed_out_count, 'last_late_item_at', b.last_late_item_at)
             ELSE NULL::jsonb
         END, 'slot_counts', ( SELECT COALESCE(jsonb_object_agg(x.status, x.n), '{}'::jsonb) AS "coalesce"
            FROM ( SELECT s.status,
                     count(*) AS n
                    FROM els.essay_slot s
                   WHERE (s.batch_id = batch_report.p_batch_id)
                   GROUP BY s.status) x), 'slots_timed_out', ( SELECT count(*) AS count
            FROM els.essay_slot s
           WHERE ((s.batch_id = batch_report.p_batch_id) AND (s.failure_code = 'CONTENT_TIMEOUT'::text))), 'slots', ( SELECT COALESCE(jsonb_agg(jsonb_build_object('slot_no', s.slot_no, 'essay_id', s.essay_id, 'status', s.status, 'text_storage_id', s.text_storage_id, 'failed_file_upload_id', s.failed_file_upload_id, 'failure_code', s.failure_code, 'filled_at', s.filled_at) ORDER BY s.slot_no), '[]'::jsonb) AS "coalesce"
            FROM els.essay_slot s
           WHERE (s.batch_id = batch_report.p_batch_id)), 'pending_content', ( SELECT COALESCE(jsonb_agg(jsonb_build_object('text_storage_id', c.text_storage_id, 'file_upload_id', c.file_upload_id, 'original_file_name', c.original_file_name, 'received_at', c.received_at) ORDER BY c.arrival_seq), '[]'::jsonb) AS "coalesce"
            FROM els.essay_content c
           WHERE ((c.batch_id = batch_report.p_batch_id) AND (c.disposition = 'pending'::els.item_disposition))), 'excess_content', ( SELECT COALESCE(jsonb_agg(jsonb_build_object('text_storage_id', c.text_storage_id, 'file_upload_id', c.file_upload_id, 'original_file_name', c.original_file_name, 'received_at', c.received_at) ORDER BY c.arrival_seq), '[]'::jsonb) AS "coalesce"
            FROM els.essay_content c
           WHERE ((c.batch_id = batch_report.p_batch_id) AND (c.disposition = 'excess'::els.item_disposition))), 'failures', ( SELECT COALESCE(jsonb_agg(jsonb_build_object('file_upload_id', f.file_upload_id, 'disposition', f.disposition, 'essay_id', f.essay_id, 'original_file_name', f.original_file_name, 'validation_error_code', f.validation_error_code, 'validation_error_detail', f.validation_error_detail, 'received_at', f.received_at) ORDER BY f.arrival_seq), '[]'::jsonb) AS "coalesce"
            FROM els.validation_failure f
           WHERE (f.batch_id = batch_report.p_batch_id)), 'outbox', ( SELECT COALESCE(jsonb_agg(jsonb_build_object('id', o.id, 'event_id', o.event_id, 'event_type', o.event_type, 'topic', o.topic, 'created_at', o.created_at, 'published', (o.published_at IS NOT NULL), 'published_at', o.published_at) ORDER BY o.id), '[]'::jsonb) AS "coalesce"
            FROM els.event_outbox o
           WHERE (o.message_key = batch_report.p_batch_id))) AS jsonb_build_object
    FROM ((( SELECT batch_report.p_batch_id AS wanted) w
      LEFT JOIN els.batch_tracker t ON ((t.batch_id = w.wanted)))
      LEFT JOIN els.batch_tombstone b ON ((b.batch_id = w.wanted)));
END;
ALTER FUNCTION els.batch_report(p_batch_id text) OWNER TO els_owner;
COMMENT ON FUNCTION els.batch_report(p_batch_id text) IS 'Everything known about one batch as one JSON document: tracker (with completion_reason), slot counts, timed-out slots, slots, pending and excess content, failures, outbox rows and whether they were published. A purged batch: purged true, tracker and counts from its tombstone, and only what arrived after the purge.';
CREATE FUNCTION els.claim_essays(batch_ids text[], essay_ids text[], owner_partition integer, owner_xid bigint) RETURNS TABLE(essay_id text, batch_id text, verdict text, owner_batch_id text, purged boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_xid xid8 := owner_xid::text::xid8;
    v_new text[];
    v_claim record;
    v_verdict jsonb;
BEGIN
    WITH ins AS (
        INSERT INTO els.essay_claim AS c (essay_id, batch_id, owner_partition, owner_xid)
        SELECT w.essay_id, w.batch_id, claim_essays.owner_partition, v_xid
          FROM unnest(batch_ids, essay_ids) AS w(batch_id, essay_id)
         ORDER BY w.essay_id
        ON CONFLICT DO NOTHING
        RETURNING c.essay_id)
    SELECT coalesce(array_agg(ins.essay_id), '{}') INTO v_new FROM ins;
    RETURN QUERY SELECT n.id, w.batch_id, 'claimed'::text, w.batch_id, false
                   FROM unnest(v_new) AS n(id)
                   JOIN unnest(batch_ids, essay_ids) AS w(batch_id, essay_id) ON w.essay_id = n.id;
    FOR v_claim IN
        SELECT w.batch_id AS wanted_by, c.essay_id, c.batch_id, c.owner_partition, c.owner_xid
          FROM unnest(batch_ids, essay_ids) AS w(batch_id, essay_id)
          JOIN els.essay_claim AS c ON c.essay_id = w.essay_id
         WHERE w.essay_id <> ALL (v_new)
         ORDER BY c.essay_id
           FOR UPDATE OF c
    LOOP
        IF v_claim.batch_id = v_claim.wanted_by THEN
            -- this batch's: an earlier attempt (a redelivery after a crash) or a repair
            UPDATE els.essay_claim AS c
               SET owner_partition = claim_essays.owner_partition, owner_xid = v_xid
             WHERE c.essay_id = v_claim.essay_id AND c.owner_xid IS NOT NULL;
            RETURN QUERY SELECT v_claim.essay_id, v_claim.wanted_by, 'own'::text, v_claim.batch_id, false;
            CONTINUE;
        END IF;
        IF v_claim.owner_xid = v_xid AND v_claim.owner_partition = claim_essays.owner_partition THEN
            -- an earlier registration of the same transaction took it first
            v_verdict := '{"verdict": "held", "purged": false}';
        ELSE
            v_verdict := els._verdict_across(v_claim.owner_partition, v_claim.batch_id,
                                             v_claim.essay_id, v_claim.owner_xid::text::bigint);
        END IF;
        IF v_verdict ->> 'verdict' = 'stale' AND v_claim.owner_xid IS NOT NULL THEN
            UPDATE els.essay_claim AS c
               SET batch_id = v_claim.wanted_by, owner_partition = claim_essays.owner_partition,
                   owner_xid = v_xid, claimed_at = now()
             WHERE c.essay_id = v_claim.essay_id;
            RETURN QUERY SELECT v_claim.essay_id, v_claim.wanted_by, 'claimed'::text,
                                v_claim.wanted_by, false;
        ELSIF v_verdict ->> 'verdict' = 'busy' THEN
            RETURN QUERY SELECT v_claim.essay_id, v_claim.wanted_by, 'busy'::text, v_claim.batch_id, false;
        ELSE
            UPDATE els.essay_claim AS c SET owner_xid = NULL
             WHERE c.essay_id = v_claim.essay_id AND c.owner_xid IS NOT NULL;
            RETURN QUERY SELECT v_claim.essay_id, v_claim.wanted_by, 'held'::text, v_claim.batch_id,
                                coalesce((v_verdict ->> 'purged')::boolean, false);
        END IF;
    END LOOP;
END
$$;
ALTER FUNCTION els.claim_essays(batch_ids text[], essay_ids text[], owner_partition integer, owner_xid bigint) OWNER TO els_owner;
COMMENT ON FUNCTION els.claim_essays(batch_ids text[], essay_ids text[], owner_partition integer, owner_xid bigint) IS 'Claims essay ids (this partition''s share) for registering batches; per id: claimed, own, held (another batch owns it) or busy (another registration is in flight). Called through PL/Proxy.';
CREATE FUNCTION els.claim_outbox(p_limit integer DEFAULT 500) RETURNS TABLE(id bigint, event_id uuid, event_type text, topic text, message_key text, envelope jsonb, created_at timestamp with time zone)
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    BEGIN ATOMIC
 SELECT o.id,
     o.event_id,
     o.event_type,
     o.topic,
     o.message_key,
     o.envelope,
     o.created_at
    FROM els.event_outbox o
   WHERE ((o.published_at IS NULL) AND ((o.retry_after IS NULL) OR (o.retry_after <= now())))
   ORDER BY o.id
  LIMIT claim_outbox.p_limit
  FOR UPDATE OF o SKIP LOCKED;
END;
ALTER FUNCTION els.claim_outbox(p_limit integer) OWNER TO els_owner;
COMMENT ON FUNCTION els.claim_outbox(p_limit integer) IS 'Locks and returns up to p_limit unpublished outbox rows, oldest first, skipping rows another relay holds and rows set aside until later. Call in the same transaction as mark_outbox_published and set_aside_outbox.';
CREATE FUNCTION els.claim_verdict(batch_id text, essay_id text, owner_xid bigint) RETURNS TABLE(verdict text, purged boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_status text := CASE WHEN owner_xid IS NULL THEN 'committed'
                          ELSE pg_xact_status(owner_xid::text::xid8) END;
BEGIN
    IF v_status = 'in progress' THEN
        RETURN QUERY SELECT 'busy'::text, false;
    ELSIF EXISTS (SELECT FROM els.essay_slot AS s
                   WHERE s.essay_id = claim_verdict.essay_id AND s.batch_id = claim_verdict.batch_id) THEN
        RETURN QUERY SELECT 'held'::text, false;
    ELSIF EXISTS (SELECT FROM els.batch_tombstone AS b
                   WHERE b.batch_id = claim_verdict.batch_id
                     AND claim_verdict.essay_id = ANY (b.essay_ids)) THEN
        RETURN QUERY SELECT 'held'::text, true;
    ELSE
        RETURN QUERY SELECT 'stale'::text, false;
    END IF;
END
$$;
ALTER FUNCTION els.claim_verdict(batch_id text, essay_id text, owner_xid bigint) OWNER TO els_owner;
COMMENT ON FUNCTION els.claim_verdict(batch_id text, essay_id text, owner_xid bigint) IS 'On a batch''s partition: its claim on an essay id is held, busy (its transaction runs) or stale.';
CREATE FUNCTION els.close_batch(batch_id text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_batch_id text := close_batch.batch_id;
    v_closed record;
BEGIN
    IF v_batch_id IS NULL THEN
        PERFORM els._reject('ELV02', 'required argument batch_id is null',
            jsonb_build_object('field', 'batch_id', 'reason', 'missing'));
    END IF;
    PERFORM els._lock_batch(v_batch_id);
    v_closed := els._close_locked_batch(v_batch_id, true);
    IF v_closed.outcome = 'unknown' THEN
        PERFORM els._reject('ELV03', 'unknown batch: no batch with this id was registered',
            jsonb_build_object('field', 'batch_id', 'reason', 'unknown_batch',
                               'batch_id', left(v_batch_id, 300)));
    END IF;
    RETURN jsonb_build_object(
        'batch_id', v_batch_id,
        'outcome', v_closed.outcome,
        'slots_timed_out', v_closed.slots_timed_out,
        'events', to_jsonb(v_closed.event_ids));
END
$$;
ALTER FUNCTION els.close_batch(batch_id text) OWNER TO els_owner;
COMMENT ON FUNCTION els.close_batch(batch_id text) IS 'Closes one batch now: empty slots -> content_ingestion_failed (CONTENT_TIMEOUT), completion with completion_reason deadline. Outcomes: closed, already_complete. Unknown batch: ELV03.';
CREATE FUNCTION els.close_overdue_batches(older_than interval, max_batches integer DEFAULT 1000) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_batch_id text;
    v_closed record;
    v_batches integer := 0;
    v_slots integer := 0;
    v_events uuid[] := '{}'::uuid[];
BEGIN
    IF older_than IS NULL THEN
        PERFORM els._reject('ELV02', 'required argument older_than is null',
            jsonb_build_object('field', 'older_than', 'reason', 'missing'));
    END IF;
    IF older_than < interval '0' THEN
        PERFORM els._reject('ELV03', 'older_than must not be negative',
            jsonb_build_object('field', 'older_than', 'reason', 'out_of_range', 'actual', older_than::text));
    END IF;
    IF max_batches IS NULL OR max_batches < 0 THEN
        PERFORM els._reject('ELV03', 'max_batches must be an integer >= 0',
            jsonb_build_object('field', 'max_batches', 'reason', 'out_of_range', 'actual', max_batches));
    END IF;
    FOR v_batch_id IN
        SELECT t.batch_id
          FROM els.batch_tracker AS t
         WHERE t.completed_at IS NULL AND t.registered_at <= now() - older_than
         ORDER BY t.registered_at, t.batch_id
         LIMIT max_batches
    LOOP
        PERFORM els._lock_batch(v_batch_id);
        v_closed := els._close_locked_batch(v_batch_id, false);
        IF v_closed.outcome = 'closed' THEN
            v_batches := v_batches + 1;
            v_slots := v_slots + v_closed.slots_timed_out;
            v_events := v_events || v_closed.event_ids;
        END IF;
    END LOOP;
    RETURN jsonb_build_object('batches_closed', v_batches, 'slots_timed_out', v_slots,
                              'events', to_jsonb(v_events));
END
$$;
ALTER FUNCTION els.close_overdue_batches(older_than interval, max_batches integer) OWNER TO els_owner;
COMMENT ON FUNCTION els.close_overdue_batches(older_than interval, max_batches integer) IS 'Closes (as els.close_batch) every incomplete batch registered at least older_than ago, oldest first, at most max_batches. Returns batches_closed, slots_timed_out, events.';
CREATE FUNCTION els.key_hash(key text) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ((('x'::text || substr(md5(key), 1, 8)))::bit(32))::integer;
ALTER FUNCTION els.key_hash(key text) OWNER TO els_owner;
COMMENT ON FUNCTION els.key_hash(key text) IS 'The partition mapping (SPEC 9): key_hash(batch_id) & (partition_count - 1) is the batch''s partition.';
CREATE FUNCTION els.mark_outbox_published(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_marked integer;
BEGIN
    PERFORM els._check_delivery_coordinates(p_ids, p_topics, p_partitions, p_offsets);
    UPDATE els.event_outbox AS o
       SET published_at = now(), kafka_topic = d.topic, kafka_partition = d.kafka_partition,
           kafka_offset = d.kafka_offset
      FROM unnest(p_ids, p_topics, p_partitions, p_offsets)
               AS d (id, topic, kafka_partition, kafka_offset)
     WHERE o.id = d.id AND o.published_at IS NULL;
    GET DIAGNOSTICS v_marked = ROW_COUNT;
    RETURN v_marked;
END
$$;
ALTER FUNCTION els.mark_outbox_published(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) OWNER TO els_owner;
COMMENT ON FUNCTION els.mark_outbox_published(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) IS 'Stamps outbox rows as published with the topic, partition and offset the broker stored each at (their delivery reports); rows already published are left alone.';
CREATE FUNCTION els.outbox_backlog(OUT unpublished bigint, OUT oldest_age_seconds double precision, OUT set_aside bigint) RETURNS record
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    BEGIN ATOMIC
 SELECT count(*) AS count,
     COALESCE((EXTRACT(epoch FROM (now() - min(o.created_at))))::double precision, (0)::double precision) AS "coalesce",
     count(*) FILTER (WHERE (o.last_error IS NOT NULL)) AS count
    FROM els.event_outbox o
   WHERE (o.published_at IS NULL);
END;
ALTER FUNCTION els.outbox_backlog(OUT unpublished bigint, OUT oldest_age_seconds double precision, OUT set_aside bigint) OWNER TO els_owner;
CREATE FUNCTION els.outbox_envelopes(p_ids bigint[]) RETURNS TABLE(id bigint, event_id uuid, event_type text, topic text, message_key text, envelope jsonb)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    BEGIN ATOMIC
 SELECT o.id,
     o.event_id,
     o.event_type,
     o.topic,
     o.message_key,
     o.envelope
    FROM els.event_outbox o
   WHERE ((o.id = ANY (outbox_envelopes.p_ids)) AND (o.published_at IS NOT NULL))
   ORDER BY o.id;
END;
ALTER FUNCTION els.outbox_envelopes(p_ids bigint[]) OWNER TO els_owner;
COMMENT ON FUNCTION els.outbox_envelopes(p_ids bigint[]) IS 'The published outbox rows of p_ids with their envelopes, for worker.py audit to produce again what it found missing from Kafka.';
CREATE FUNCTION els.outbox_published_since(p_since interval DEFAULT '24:00:00'::interval) RETURNS TABLE(id bigint, event_id uuid, event_type text, kafka_topic text, kafka_partition integer, kafka_offset bigint, published_at timestamp with time zone)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    BEGIN ATOMIC
 SELECT o.id,
     o.event_id,
     o.event_type,
     o.kafka_topic,
     o.kafka_partition,
     o.kafka_offset,
     o.published_at
    FROM els.event_outbox o
   WHERE (o.published_at >= (now() - outbox_published_since.p_since))
   ORDER BY o.kafka_topic, o.kafka_partition, o.kafka_offset, o.id;
END;
ALTER FUNCTION els.outbox_published_since(p_since interval) OWNER TO els_owner;
COMMENT ON FUNCTION els.outbox_published_since(p_since interval) IS 'Outbox rows published in the last p_since with where the broker stored them, in the order worker.py audit reads them back (topic, partition, offset).';
CREATE FUNCTION els.partition_of(key text, partition_count integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (els.key_hash(key) & (partition_count - 1));
ALTER FUNCTION els.partition_of(key text, partition_count integer) OWNER TO els_owner;
COMMENT ON FUNCTION els.partition_of(key text, partition_count integer) IS 'The partition (0 .. partition_count - 1) that a batch id or an essay id maps to.';
CREATE FUNCTION els.provision_content(event jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RETURN els._apply_one('provision_content', event);
END
$$;
ALTER FUNCTION els.provision_content(event jsonb) OWNER TO els_owner;
COMMENT ON FUNCTION els.provision_content(event jsonb) IS 'EssayContentProvisioned -> fills the lowest empty slot. Outcomes: pending, assigned, duplicate, excess. Errors: ELV01-ELV03.';
CREATE FUNCTION els.purge_history(older_than interval) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    c_max_batches constant integer := 1000;
    c_max_slots constant bigint := 100000;
    c_max_outbox constant integer := 100000;
    v_cutoff timestamptz;
    v_batch record;
    v_batch_id text;
    v_locked integer := 0;
    v_slots bigint := 0;
    v_batches integer := 0;
    v_pending bigint := 0;
    v_rows bigint;
    v_outbox bigint;
BEGIN
    IF older_than IS NULL THEN
        PERFORM els._reject('ELV02', 'required argument older_than is null',
            jsonb_build_object('field', 'older_than', 'reason', 'missing'));
    END IF;
    IF older_than < interval '0' THEN
        PERFORM els._reject('ELV03', 'older_than must not be negative',
            jsonb_build_object('field', 'older_than', 'reason', 'out_of_range', 'actual', older_than::text));
    END IF;
    v_cutoff := now() - older_than;
    -- 1. complete batches, oldest completion first (partial index batch_tracker_completed_idx)
    FOR v_batch IN
        SELECT t.batch_id, t.expected_count
          FROM els.batch_tracker AS t
         WHERE t.completed_at IS NOT NULL AND t.completed_at <= v_cutoff
         ORDER BY t.completed_at, t.batch_id
         LIMIT c_max_batches
    LOOP
        EXIT WHEN v_slots >= c_max_slots;
        CONTINUE WHEN NOT els._try_lock_batch(v_batch.batch_id);
        v_locked := v_locked + 1;
        -- under the lock: still there (a concurrent purge may have taken it)? A
        -- complete batch never becomes incomplete again.
        CONTINUE WHEN NOT EXISTS (SELECT FROM els.batch_tracker AS t
                                   WHERE t.batch_id = v_batch.batch_id AND t.completed_at IS NOT NULL);
        -- One statement, so that the foreign keys between slots and ledgers (both
        -- ways) are checked once everything of the batch is gone (a data-modifying
        -- WITH runs to completion whether or not the outer statement reads it).
        WITH slots AS (
            DELETE FROM els.essay_slot AS s WHERE s.batch_id = v_batch.batch_id
            RETURNING s.essay_id, s.status, s.failure_code
        ), retired AS (
            -- its essay ids stay taken (migration 0009): registration probes these
            INSERT INTO els.retired_essay (essay_id, batch_id)
            SELECT s.essay_id, v_batch.batch_id FROM slots AS s
        ), contents AS (
            DELETE FROM els.essay_content AS c WHERE c.batch_id = v_batch.batch_id RETURNING 1
        ), failures AS (
            DELETE FROM els.validation_failure AS f WHERE f.batch_id = v_batch.batch_id RETURNING 1
        ), tracker AS (
            DELETE FROM els.batch_tracker AS t WHERE t.batch_id = v_batch.batch_id
            RETURNING t.*
        )
        INSERT INTO els.batch_tombstone (
            batch_id, expected_count, essay_ids, course_code, user_id, org_id, class_id, class_type,
            correlation_id, registered_at, completed_at, completion_reason,
            filled_count, failed_count, timed_out_count)
        SELECT tr.batch_id, tr.expected_count, tr.essay_ids, tr.course_code, tr.user_id, tr.org_id,
               tr.class_id, tr.class_type, tr.correlation_id, tr.registered_at, tr.completed_at,
               tr.completion_reason,
               (SELECT count(*) FROM slots AS s WHERE s.status = 'ready_for_processing'),
               (SELECT count(*) FROM slots AS s
                 WHERE s.status = 'content_ingestion_failed' AND s.failure_code IS NULL),
               (SELECT count(*) FROM slots AS s WHERE s.failure_code IS NOT NULL)
          FROM tracker AS tr;
        v_batches := v_batches + 1;
        v_slots := v_slots + v_batch.expected_count;
    END LOOP;
    -- 2a. pending items of batches never registered. A registered batch has none,
    -- except a tracker an older writer left without its slots: its pending items wait
    -- for els.reconcile_batch (or a close) and are kept.
    FOR v_batch_id IN
        SELECT p.batch_id FROM (
            SELECT c.batch_id FROM els.essay_content AS c
             WHERE c.disposition = 'pending' AND c.received_at <= v_cutoff
            UNION
            SELECT f.batch_id FROM els.validation_failure AS f
             WHERE f.disposition = 'pending' AND f.received_at <= v_cutoff) AS p
         WHERE NOT EXISTS (SELECT FROM els.batch_tracker AS t WHERE t.batch_id = p.batch_id)
         ORDER BY p.batch_id
         LIMIT greatest(c_max_batches - v_locked, 0)
    LOOP
        CONTINUE WHEN NOT els._try_lock_batch(v_batch_id);
        v_locked := v_locked + 1;
        -- under the lock: registered meanwhile? Then its items are no longer pending
        -- (the registration reconciled them), and a tracker is there to keep them.
        CONTINUE WHEN EXISTS (SELECT FROM els.batch_tracker AS t WHERE t.batch_id = v_batch_id);
        DELETE FROM els.essay_content AS c
         WHERE c.batch_id = v_batch_id AND c.disposition = 'pending' AND c.received_at <= v_cutoff;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_pending := v_pending + v_rows;
        DELETE FROM els.validation_failure AS f
         WHERE f.batch_id = v_batch_id AND f.disposition = 'pending' AND f.received_at <= v_cutoff;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_pending := v_pending + v_rows;
    END LOOP;
    -- 2b. late items of purged batches, once the latest of them is old enough
    FOR v_batch_id IN
        SELECT b.batch_id FROM els.batch_tombstone AS b
         WHERE b.last_late_item_at IS NOT NULL AND b.last_late_item_at <= v_cutoff
         ORDER BY b.last_late_item_at, b.batch_id
         LIMIT greatest(c_max_batches - v_locked, 0)
    LOOP
        CONTINUE WHEN NOT els._try_lock_batch(v_batch_id);
        v_locked := v_locked + 1;
        -- under the lock: a late item may have arrived meanwhile (then it waits for next time)
        CONTINUE WHEN NOT EXISTS (SELECT FROM els.batch_tombstone AS b
                                   WHERE b.batch_id = v_batch_id AND b.last_late_item_at <= v_cutoff);
        DELETE FROM els.essay_content AS c WHERE c.batch_id = v_batch_id;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_pending := v_pending + v_rows;
        DELETE FROM els.validation_failure AS f WHERE f.batch_id = v_batch_id;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_pending := v_pending + v_rows;
        UPDATE els.batch_tombstone AS b SET last_late_item_at = NULL WHERE b.batch_id = v_batch_id;
    END LOOP;
    -- 3. published outbox rows; the relay only ever touches unpublished ones
    DELETE FROM els.event_outbox AS o
     WHERE o.id IN (SELECT o2.id FROM els.event_outbox AS o2
                     WHERE o2.published_at IS NOT NULL AND o2.published_at <= v_cutoff
                     LIMIT c_max_outbox);
    GET DIAGNOSTICS v_outbox = ROW_COUNT;
    RETURN jsonb_build_object('batches_purged', v_batches, 'pending_purged', v_pending,
                              'outbox_purged', v_outbox);
END
$$;
ALTER FUNCTION els.purge_history(older_than interval) OWNER TO els_owner;
COMMENT ON FUNCTION els.purge_history(older_than interval) IS 'Deletes complete batches (keeping a tombstone), pending items of never-registered batches and published outbox rows, each at least older_than old; never unpublished rows nor incomplete batches. Bounded per call (1000 batches, 100,000 outbox rows): call until it returns zeros.';
CREATE FUNCTION els.purge_outbox(p_older_than interval DEFAULT '7 days'::interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_deleted bigint;
BEGIN
    DELETE FROM els.event_outbox AS o
     WHERE o.published_at IS NOT NULL AND o.published_at < now() - p_older_than;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;
ALTER FUNCTION els.purge_outbox(p_older_than interval) OWNER TO els_owner;
COMMENT ON FUNCTION els.purge_outbox(p_older_than interval) IS 'Deletes published outbox rows older than the interval; unpublished rows are never purged.';
CREATE FUNCTION els.reap_claims(older_than interval) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_claim record;
    v_verdict text;
    v_held integer := 0;
    v_released integer := 0;
    v_busy integer := 0;
BEGIN
    FOR v_claim IN
        SELECT c.essay_id, c.batch_id, c.owner_partition, c.owner_xid
          FROM els.essay_claim AS c
         WHERE c.owner_xid IS NOT NULL AND c.claimed_at <= now() - older_than
         ORDER BY c.claimed_at
         LIMIT 10000
    LOOP
        v_verdict := els._verdict_across(v_claim.owner_partition, v_claim.batch_id, v_claim.essay_id,
                                         v_claim.owner_xid::text::bigint) ->> 'verdict';
        IF v_verdict = 'held' THEN
            UPDATE els.essay_claim AS c SET owner_xid = NULL
             WHERE c.essay_id = v_claim.essay_id AND c.owner_xid = v_claim.owner_xid;
            v_held := v_held + 1;
        ELSIF v_verdict = 'stale' THEN
            DELETE FROM els.essay_claim AS c
             WHERE c.essay_id = v_claim.essay_id AND c.owner_xid = v_claim.owner_xid;
            v_released := v_released + 1;
        ELSE
            v_busy := v_busy + 1;
        END IF;
    END LOOP;
    RETURN jsonb_build_object('claims_held', v_held, 'claims_released', v_released,
                              'claims_in_flight', v_busy);
END
$$;
ALTER FUNCTION els.reap_claims(older_than interval) OWNER TO els_owner;
COMMENT ON FUNCTION els.reap_claims(older_than interval) IS 'Resolves essay-id claims pending longer than older_than: held ones kept, stale ones released.';
CREATE FUNCTION els.reconcile_batch(p_batch_id text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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
$$;
ALTER FUNCTION els.reconcile_batch(p_batch_id text) OWNER TO els_owner;
COMMENT ON FUNCTION els.reconcile_batch(p_batch_id text) IS 'Re-runs slot creation (if missing), reconciliation and completion for a registered batch.';
CREATE FUNCTION els.record_outbox_redelivery(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_recorded integer;
BEGIN
    PERFORM els._check_delivery_coordinates(p_ids, p_topics, p_partitions, p_offsets);
    UPDATE els.event_outbox AS o
       SET kafka_topic = d.topic, kafka_partition = d.kafka_partition,
           kafka_offset = d.kafka_offset, redelivered_at = now()
      FROM unnest(p_ids, p_topics, p_partitions, p_offsets)
               AS d (id, topic, kafka_partition, kafka_offset)
     WHERE o.id = d.id AND o.published_at IS NOT NULL;
    GET DIAGNOSTICS v_recorded = ROW_COUNT;
    RETURN v_recorded;
END
$$;
ALTER FUNCTION els.record_outbox_redelivery(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) OWNER TO els_owner;
COMMENT ON FUNCTION els.record_outbox_redelivery(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) IS 'Records where the broker stored published outbox rows that worker.py audit produced again after finding them missing; stamps redelivered_at.';
CREATE FUNCTION els.record_validation_failure(event jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RETURN els._apply_one('record_validation_failure', event);
END
$$;
ALTER FUNCTION els.record_validation_failure(event jsonb) OWNER TO els_owner;
COMMENT ON FUNCTION els.record_validation_failure(event jsonb) IS 'EssayValidationFailed -> closes the lowest empty slot. Outcomes: pending, recorded, duplicate, excess. Errors: ELV01-ELV03.';
CREATE FUNCTION els.register_batch(event jsonb) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RETURN els._apply_one('register_batch', event);
END
$$;
ALTER FUNCTION els.register_batch(event jsonb) OWNER TO els_owner;
COMMENT ON FUNCTION els.register_batch(event jsonb) IS 'BatchEssaysRegistered -> tracker + slots, reconciliation of pending items, completion. Outcomes: registered, duplicate, repaired. Errors: ELV01-ELV06, ELC01, ELC02.';
CREATE FUNCTION els.release_claims(batch_ids text[], essay_ids text[], owner_xid bigint) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_released integer;
BEGIN
    DELETE FROM els.essay_claim AS c
     USING unnest(batch_ids, essay_ids) AS w(batch_id, essay_id)
     WHERE c.essay_id = w.essay_id AND c.batch_id = w.batch_id
       AND c.owner_xid = release_claims.owner_xid::text::xid8;
    GET DIAGNOSTICS v_released = ROW_COUNT;
    RETURN v_released;
END
$$;
ALTER FUNCTION els.release_claims(batch_ids text[], essay_ids text[], owner_xid bigint) OWNER TO els_owner;
COMMENT ON FUNCTION els.release_claims(batch_ids text[], essay_ids text[], owner_xid bigint) IS 'Releases the pending claims a rejected registration took. Called through PL/Proxy.';
CREATE FUNCTION els.set_aside_outbox(p_id bigint, p_reason text) RETURNS timestamp with time zone
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    BEGIN ATOMIC
 UPDATE els.event_outbox o SET publish_attempts = (o.publish_attempts + 1), last_error = "left"(set_aside_outbox.p_reason, 2000), retry_after = (now() + LEAST('01:00:00'::interval, ('00:00:05'::interval * power((2)::double precision, (LEAST(o.publish_attempts, 20))::double precision))))
   WHERE ((o.id = set_aside_outbox.p_id) AND (o.published_at IS NULL))
   RETURNING o.retry_after;
END;
ALTER FUNCTION els.set_aside_outbox(p_id bigint, p_reason text) OWNER TO els_owner;
COMMENT ON FUNCTION els.set_aside_outbox(p_id bigint, p_reason text) IS 'Sets a claimed outbox row aside after Kafka refused it, with the reason; it is retried later and never blocks the rows behind it.';
CREATE FUNCTION els.stable_event_id(p_event_type text, VARIADIC p_ids text[]) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN els._event_id(p_event_type, to_jsonb(p_ids));
ALTER FUNCTION els.stable_event_id(p_event_type text, VARIADIC p_ids text[]) OWNER TO els_owner;
COMMENT ON FUNCTION els.stable_event_id(p_event_type text, VARIADIC p_ids text[]) IS 'Deterministic event id of an event type and its logical identity: the batch id for BatchContentProvisioningCompleted; batch, essay and text ids for EssaySlotAssigned; batch and text ids for ExcessContentProvisioned.';
CREATE VIEW els.stuck_batches AS
SELECT
    NULL::text AS batch_id,
    NULL::timestamp with time zone AS registered_at,
    NULL::interval AS age,
    NULL::integer AS expected_count,
    NULL::text AS class_type,
    NULL::text AS course_code,
    NULL::bigint AS slots,
    NULL::bigint AS ready,
    NULL::bigint AS failed,
    NULL::bigint AS empty,
    NULL::bigint AS pending_items,
    NULL::timestamp with time zone AS last_activity_at;
ALTER TABLE els.stuck_batches OWNER TO els_owner;
COMMENT ON VIEW els.stuck_batches IS 'Registered batches that are not complete, oldest first, with their slot counts. slots = 0 or pending_items > 0 means an older writer left the batch half-done: run els.reconcile_batch(batch_id). last_activity_at: registration or the last slot filled or failed. To give up on the missing content: els.close_batch(batch_id) (or let the deadline, els.close_overdue_batches, do it).';
CREATE FUNCTION els.stuck_batch_list(p_min_age interval DEFAULT '00:15:00'::interval, p_limit integer DEFAULT 100) RETURNS jsonb
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    BEGIN ATOMIC
 SELECT COALESCE(jsonb_agg(jsonb_build_object('batch_id', b.batch_id, 'registered_at', b.registered_at, 'age_seconds', round(EXTRACT(epoch FROM b.age)), 'expected_count', b.expected_count, 'ready', b.ready, 'failed', b.failed, 'empty', b.empty, 'pending_items', b.pending_items) ORDER BY b.registered_at, b.batch_id), '[]'::jsonb) AS "coalesce"
    FROM ( SELECT sb.batch_id,
             sb.registered_at,
             sb.age,
             sb.expected_count,
             sb.class_type,
             sb.course_code,
             sb.slots,
             sb.ready,
             sb.failed,
             sb.empty,
             sb.pending_items,
             sb.last_activity_at
            FROM els.stuck_batches sb
           WHERE (sb.age >= stuck_batch_list.p_min_age)
          LIMIT stuck_batch_list.p_limit) b;
END;
ALTER FUNCTION els.stuck_batch_list(p_min_age interval, p_limit integer) OWNER TO els_owner;
CREATE TABLE els.essay_claim (
    essay_id text NOT NULL,
    batch_id text NOT NULL,
    owner_partition integer NOT NULL,
    owner_xid xid8,
    claimed_at timestamp with time zone DEFAULT now() NOT NULL
);
ALTER TABLE els.essay_claim OWNER TO els_owner;
COMMENT ON TABLE els.essay_claim IS 'The batch that owns an essay id (on the partition the id maps to): pending while owner_xid names the registering transaction, held when NULL. Never purged.';
ALTER TABLE els.event_outbox ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME els.event_outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE VIEW els.outbox_set_aside AS
 SELECT o.id,
    o.event_id,
    o.event_type,
    o.topic,
    o.message_key,
    o.created_at,
    o.publish_attempts,
    o.last_error,
    o.retry_after,
    octet_length((o.envelope)::text) AS envelope_bytes
   FROM els.event_outbox o
  WHERE ((o.published_at IS NULL) AND (o.last_error IS NOT NULL));
ALTER TABLE els.outbox_set_aside OWNER TO els_owner;
COMMENT ON VIEW els.outbox_set_aside IS 'Unpublished outbox rows that Kafka refused at least once, with the reason and the next try.';
CREATE TABLE els.partition_self (
    singleton boolean DEFAULT true NOT NULL,
    partition_no integer NOT NULL,
    partition_count integer NOT NULL,
    CONSTRAINT partition_self_in_range CHECK (((partition_no >= 0) AND (partition_no < partition_count))),
    CONSTRAINT partition_self_power_of_two CHECK (((partition_count > 0) AND ((partition_count & (partition_count - 1)) = 0))),
    CONSTRAINT partition_self_singleton_check CHECK (singleton)
);
ALTER TABLE els.partition_self OWNER TO els_owner;
COMMENT ON TABLE els.partition_self IS 'Empty in a single database; in a partition behind the PL/Proxy proxy, its number and the count.';
CREATE TABLE els.retired_essay (
    essay_id text NOT NULL,
    batch_id text NOT NULL
);
ALTER TABLE els.retired_essay OWNER TO els_owner;
COMMENT ON TABLE els.retired_essay IS 'The essay ids of purged batches (one row per slot purge_history deleted): never reused.';
ALTER TABLE ONLY els.batch_tombstone
    ADD CONSTRAINT batch_tombstone_pkey PRIMARY KEY (batch_id);
ALTER TABLE ONLY els.batch_tracker
    ADD CONSTRAINT batch_tracker_pkey PRIMARY KEY (batch_id);
ALTER TABLE ONLY els.essay_claim
    ADD CONSTRAINT essay_claim_pkey PRIMARY KEY (essay_id);
ALTER TABLE ONLY els.essay_content
    ADD CONSTRAINT essay_content_one_per_slot UNIQUE (essay_id);
ALTER TABLE ONLY els.essay_content
    ADD CONSTRAINT essay_content_pkey PRIMARY KEY (batch_id, text_storage_id);
ALTER TABLE ONLY els.essay_slot
    ADD CONSTRAINT essay_slot_batch_slot_no_key UNIQUE (batch_id, slot_no);
ALTER TABLE ONLY els.essay_slot
    ADD CONSTRAINT essay_slot_pkey PRIMARY KEY (essay_id);
ALTER TABLE ONLY els.event_outbox
    ADD CONSTRAINT event_outbox_event_id_key UNIQUE (event_id);
ALTER TABLE ONLY els.event_outbox
    ADD CONSTRAINT event_outbox_pkey PRIMARY KEY (id);
ALTER TABLE ONLY els.partition_self
    ADD CONSTRAINT partition_self_pkey PRIMARY KEY (singleton);
ALTER TABLE ONLY els.retired_essay
    ADD CONSTRAINT retired_essay_pkey PRIMARY KEY (essay_id);
ALTER TABLE ONLY els.validation_failure
    ADD CONSTRAINT validation_failure_one_per_slot UNIQUE (essay_id);
ALTER TABLE ONLY els.validation_failure
    ADD CONSTRAINT validation_failure_pkey PRIMARY KEY (batch_id, file_upload_id);
CREATE INDEX batch_tombstone_late_idx ON els.batch_tombstone USING btree (last_late_item_at) WHERE (last_late_item_at IS NOT NULL);
CREATE INDEX batch_tracker_completed_idx ON els.batch_tracker USING btree (completed_at, batch_id) WHERE (completed_at IS NOT NULL);
CREATE INDEX batch_tracker_incomplete_idx ON els.batch_tracker USING btree (registered_at, batch_id) WHERE (completed_at IS NULL);
CREATE INDEX essay_claim_pending_idx ON els.essay_claim USING btree (claimed_at) WHERE (owner_xid IS NOT NULL);
CREATE INDEX essay_content_pending_idx ON els.essay_content USING btree (batch_id, arrival_seq) WHERE (disposition = 'pending'::els.item_disposition);
CREATE INDEX essay_slot_empty_idx ON els.essay_slot USING btree (batch_id, slot_no) WHERE (status = 'uploaded'::els.essay_status);
CREATE UNIQUE INDEX essay_slot_text_storage_id_key ON els.essay_slot USING btree (batch_id, text_storage_id) WHERE (text_storage_id IS NOT NULL);
CREATE INDEX event_outbox_key_idx ON els.event_outbox USING btree (message_key);
CREATE UNIQUE INDEX event_outbox_one_completion_per_batch ON els.event_outbox USING btree (message_key) WHERE (event_type = 'BatchContentProvisioningCompleted'::text);
CREATE INDEX event_outbox_unpublished_idx ON els.event_outbox USING btree (id) WHERE (published_at IS NULL);
CREATE INDEX validation_failure_pending_idx ON els.validation_failure USING btree (batch_id, arrival_seq) WHERE (disposition = 'pending'::els.item_disposition);
CREATE OR REPLACE VIEW els.stuck_batches AS
 SELECT t.batch_id,
    t.registered_at,
    (now() - t.registered_at) AS age,
    t.expected_count,
    t.class_type,
    t.course_code,
    count(s.essay_id) AS slots,
    count(s.essay_id) FILTER (WHERE (s.status = 'ready_for_processing'::els.essay_status)) AS ready,
    count(s.essay_id) FILTER (WHERE (s.status = 'content_ingestion_failed'::els.essay_status)) AS failed,
    count(s.essay_id) FILTER (WHERE (s.status = 'uploaded'::els.essay_status)) AS empty,
    (( SELECT count(*) AS count
           FROM els.essay_content c
          WHERE ((c.batch_id = t.batch_id) AND (c.disposition = 'pending'::els.item_disposition))) + ( SELECT count(*) AS count
           FROM els.validation_failure f
          WHERE ((f.batch_id = t.batch_id) AND (f.disposition = 'pending'::els.item_disposition)))) AS pending_items,
    GREATEST(t.registered_at, max(s.filled_at)) AS last_activity_at
   FROM (els.batch_tracker t
     LEFT JOIN els.essay_slot s ON ((s.batch_id = t.batch_id)))
  WHERE (t.completed_at IS NULL)
  GROUP BY t.batch_id
  ORDER BY t.registered_at, t.batch_id;
ALTER TABLE ONLY els.essay_content
    ADD CONSTRAINT essay_content_slot_fk FOREIGN KEY (essay_id) REFERENCES els.essay_slot(essay_id);
ALTER TABLE ONLY els.essay_slot
    ADD CONSTRAINT essay_slot_batch_id_fkey FOREIGN KEY (batch_id) REFERENCES els.batch_tracker(batch_id);
ALTER TABLE ONLY els.essay_slot
    ADD CONSTRAINT essay_slot_content_fk FOREIGN KEY (batch_id, text_storage_id) REFERENCES els.essay_content(batch_id, text_storage_id);
ALTER TABLE ONLY els.essay_slot
    ADD CONSTRAINT essay_slot_failure_fk FOREIGN KEY (batch_id, failed_file_upload_id) REFERENCES els.validation_failure(batch_id, file_upload_id);
ALTER TABLE ONLY els.validation_failure
    ADD CONSTRAINT validation_failure_slot_fk FOREIGN KEY (essay_id) REFERENCES els.essay_slot(essay_id);
GRANT USAGE ON SCHEMA els TO els_worker;
GRANT USAGE ON SCHEMA els TO els_readonly;
REVOKE ALL ON FUNCTION els._apply_events(p_kinds text[], p_events jsonb[], p_refused jsonb[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._apply_items(p_items jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._apply_one(p_kind text, p_event jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._batch_lock_key(p_batch_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._check_delivery_coordinates(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._checked_length(p_kinds text[], p_events jsonb[], p_refused jsonb[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._claim_essays(p_batch_ids text[], p_essay_ids text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._claims_across(p_batch_ids text[], p_essay_ids text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._close_locked_batch(p_batch_id text, p_raise boolean, OUT outcome text, OUT slots_timed_out integer, OUT event_ids uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._complete_batches(p_batch_ids text[], p_reason text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._complete_if_done(p_batch_id text, p_reason text, OUT complete boolean, OUT event_id uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._completion_spec(p_batch_id text, p_reason text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._content_fault(p_event jsonb, p_payload jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._text_ok(p_value jsonb, p_max integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._envelope_ok(p_event jsonb, p_topic text, p_short_name text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._integer_ok(p_value jsonb, p_min numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._present(p_value jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._timestamp_pattern() FROM PUBLIC;
REVOKE ALL ON FUNCTION els._timestamp_ok(p_value jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._content_ok(p_event jsonb, p_payload jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._correlation_id(p_event jsonb, p_payload jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._content_row(p_event jsonb, p_payload jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._create_slots(p_batch_id text, p_essay_ids text[], p_some_exist boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._emit_events(p_events jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._fault(p_sqlstate text, p_message text, p_detail jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._text_fault(p_value jsonb, p_field text, p_max integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._enum_fault(p_value jsonb, p_field text, p_allowed text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._enum_ok(p_value jsonb, p_allowed text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els.output_topic(p_event_type text) FROM PUBLIC;
GRANT ALL ON FUNCTION els.output_topic(p_event_type text) TO els_worker;
GRANT ALL ON FUNCTION els.output_topic(p_event_type text) TO els_readonly;
REVOKE ALL ON FUNCTION els._envelope(p_event_id uuid, p_event_type text, p_correlation_id text, p_data jsonb, p_timestamp text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._envelope_type_fault(p_event jsonb, p_field text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._envelope_fault(p_event jsonb, p_topic text, p_short_name text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._essay_id_items(p_essay_ids jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._essay_owner_detail(p_essay_id text, p_owner_batch_id text, p_purged boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._essay_owner_elsewhere(p_batch_id text, p_essay_ids text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._event_digest(p_event_type text, p_identity jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION els._event_digest(p_event_type text, p_identity jsonb) TO els_worker;
GRANT ALL ON FUNCTION els._event_digest(p_event_type text, p_identity jsonb) TO els_readonly;
REVOKE ALL ON FUNCTION els._uuid_v3(p_digest bytea) FROM PUBLIC;
GRANT ALL ON FUNCTION els._uuid_v3(p_digest bytea) TO els_worker;
GRANT ALL ON FUNCTION els._uuid_v3(p_digest bytea) TO els_readonly;
REVOKE ALL ON FUNCTION els._event_id(p_event_type text, p_identity jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION els._event_id(p_event_type text, p_identity jsonb) TO els_worker;
GRANT ALL ON FUNCTION els._event_id(p_event_type text, p_identity jsonb) TO els_readonly;
REVOKE ALL ON FUNCTION els._event_timestamp() FROM PUBLIC;
REVOKE ALL ON FUNCTION els._excess_spec(p_batch_id text, p_original_file_name text, p_text_storage_id text, p_correlation_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._failure_fault(p_event jsonb, p_payload jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._object_ok(p_value jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._failure_ok(p_event jsonb, p_payload jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._failure_row(p_event jsonb, p_payload jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._integer_fault(p_value jsonb, p_field text, p_min numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._item_results(p_steps els.item_step[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._judge_items(p_items jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._judge_registrations(p_regs jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._lock_batch(p_batch_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._missing_fault(p_value jsonb, p_field text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._object_fault(p_value jsonb, p_field text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._payload(p_event jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._place_items(p_steps els.item_step[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._read_events(p_kinds text[], p_events jsonb[], p_skip boolean[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._reconcile(p_batch_id text, OUT content_assigned integer, OUT failures_applied integer, OUT excess integer, OUT event_ids uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._reconcile_content(p_batch_ids text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._reconcile_failures(p_batch_ids text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._register_alone(p_reg jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._register_round(p_regs jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._register_set(p_regs jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._registration_fault(p_event jsonb, p_payload jsonb, p_bad_ord bigint, p_item_count bigint, p_duplicate_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._registration_ok(p_event jsonb, p_payload jsonb, p_bad_ord bigint, p_item_count bigint, p_duplicate_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._registration_results(p_judged jsonb, p_created jsonb, p_settled jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._registration_row(p_event jsonb, p_payload jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._reject(p_sqlstate text, p_message text, p_detail jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._rejection(p_sqlstate text, p_message text, p_detail text, p_context text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._release_across(p_batch_ids text[], p_essay_ids text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._settle_batches(p_batch_ids text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._slot_assigned_spec(p_batch_id text, p_essay_id text, p_file_upload_id text, p_text_storage_id text, p_original_file_name text, p_correlation_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._text_array_fault(p_value jsonb, p_field text, p_bad_ord bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._timestamp_fault(p_value jsonb, p_field text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._try_lock_batch(p_batch_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._verdict_across(p_owner_partition integer, p_batch_id text, p_essay_id text, p_owner_xid bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._write_item_effects(p_steps els.item_step[], p_fills boolean, p_purged boolean, p_completes boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._write_item_events(p_steps els.item_step[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._write_item_rows(p_steps els.item_step[], p_content boolean, p_failures boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION els._write_registrations(p_regs jsonb, p_judged jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION els.apply_events(events jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION els.apply_events(events jsonb) TO els_worker;
REVOKE ALL ON FUNCTION els.apply_events(kinds text[], events text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION els.apply_events(kinds text[], events text[]) TO els_worker;
GRANT SELECT ON TABLE els.batch_tracker TO els_readonly;
REVOKE ALL ON FUNCTION els.batch_health(stuck_after interval) FROM PUBLIC;
GRANT ALL ON FUNCTION els.batch_health(stuck_after interval) TO els_worker;
GRANT ALL ON FUNCTION els.batch_health(stuck_after interval) TO els_readonly;
GRANT SELECT ON TABLE els.batch_tombstone TO els_readonly;
GRANT SELECT ON TABLE els.essay_content TO els_readonly;
GRANT SELECT ON TABLE els.essay_slot TO els_readonly;
GRANT SELECT ON TABLE els.event_outbox TO els_readonly;
GRANT SELECT ON TABLE els.validation_failure TO els_readonly;
REVOKE ALL ON FUNCTION els.batch_report(p_batch_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION els.batch_report(p_batch_id text) TO els_readonly;
REVOKE ALL ON FUNCTION els.claim_essays(batch_ids text[], essay_ids text[], owner_partition integer, owner_xid bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION els.claim_essays(batch_ids text[], essay_ids text[], owner_partition integer, owner_xid bigint) TO els_worker;
REVOKE ALL ON FUNCTION els.claim_outbox(p_limit integer) FROM PUBLIC;
GRANT ALL ON FUNCTION els.claim_outbox(p_limit integer) TO els_worker;
REVOKE ALL ON FUNCTION els.claim_verdict(batch_id text, essay_id text, owner_xid bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION els.claim_verdict(batch_id text, essay_id text, owner_xid bigint) TO els_worker;
REVOKE ALL ON FUNCTION els.close_batch(batch_id text) FROM PUBLIC;
GRANT ALL ON FUNCTION els.close_batch(batch_id text) TO els_worker;
REVOKE ALL ON FUNCTION els.close_overdue_batches(older_than interval, max_batches integer) FROM PUBLIC;
GRANT ALL ON FUNCTION els.close_overdue_batches(older_than interval, max_batches integer) TO els_worker;
REVOKE ALL ON FUNCTION els.key_hash(key text) FROM PUBLIC;
GRANT ALL ON FUNCTION els.key_hash(key text) TO els_worker;
GRANT ALL ON FUNCTION els.key_hash(key text) TO els_readonly;
REVOKE ALL ON FUNCTION els.mark_outbox_published(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) FROM PUBLIC;
GRANT ALL ON FUNCTION els.mark_outbox_published(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) TO els_worker;
REVOKE ALL ON FUNCTION els.outbox_backlog(OUT unpublished bigint, OUT oldest_age_seconds double precision, OUT set_aside bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION els.outbox_backlog(OUT unpublished bigint, OUT oldest_age_seconds double precision, OUT set_aside bigint) TO els_worker;
GRANT ALL ON FUNCTION els.outbox_backlog(OUT unpublished bigint, OUT oldest_age_seconds double precision, OUT set_aside bigint) TO els_readonly;
REVOKE ALL ON FUNCTION els.outbox_envelopes(p_ids bigint[]) FROM PUBLIC;
GRANT ALL ON FUNCTION els.outbox_envelopes(p_ids bigint[]) TO els_worker;
REVOKE ALL ON FUNCTION els.outbox_published_since(p_since interval) FROM PUBLIC;
GRANT ALL ON FUNCTION els.outbox_published_since(p_since interval) TO els_worker;
REVOKE ALL ON FUNCTION els.partition_of(key text, partition_count integer) FROM PUBLIC;
GRANT ALL ON FUNCTION els.partition_of(key text, partition_count integer) TO els_worker;
GRANT ALL ON FUNCTION els.partition_of(key text, partition_count integer) TO els_readonly;
REVOKE ALL ON FUNCTION els.provision_content(event jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION els.provision_content(event jsonb) TO els_worker;
REVOKE ALL ON FUNCTION els.purge_history(older_than interval) FROM PUBLIC;
GRANT ALL ON FUNCTION els.purge_history(older_than interval) TO els_worker;
REVOKE ALL ON FUNCTION els.purge_outbox(p_older_than interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION els.reap_claims(older_than interval) FROM PUBLIC;
GRANT ALL ON FUNCTION els.reap_claims(older_than interval) TO els_worker;
REVOKE ALL ON FUNCTION els.reconcile_batch(p_batch_id text) FROM PUBLIC;
REVOKE ALL ON FUNCTION els.record_outbox_redelivery(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) FROM PUBLIC;
GRANT ALL ON FUNCTION els.record_outbox_redelivery(p_ids bigint[], p_topics text[], p_partitions integer[], p_offsets bigint[]) TO els_worker;
REVOKE ALL ON FUNCTION els.record_validation_failure(event jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION els.record_validation_failure(event jsonb) TO els_worker;
REVOKE ALL ON FUNCTION els.register_batch(event jsonb) FROM PUBLIC;
GRANT ALL ON FUNCTION els.register_batch(event jsonb) TO els_worker;
REVOKE ALL ON FUNCTION els.release_claims(batch_ids text[], essay_ids text[], owner_xid bigint) FROM PUBLIC;
GRANT ALL ON FUNCTION els.release_claims(batch_ids text[], essay_ids text[], owner_xid bigint) TO els_worker;
REVOKE ALL ON FUNCTION els.set_aside_outbox(p_id bigint, p_reason text) FROM PUBLIC;
GRANT ALL ON FUNCTION els.set_aside_outbox(p_id bigint, p_reason text) TO els_worker;
REVOKE ALL ON FUNCTION els.stable_event_id(p_event_type text, VARIADIC p_ids text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION els.stable_event_id(p_event_type text, VARIADIC p_ids text[]) TO els_worker;
GRANT ALL ON FUNCTION els.stable_event_id(p_event_type text, VARIADIC p_ids text[]) TO els_readonly;
GRANT SELECT ON TABLE els.stuck_batches TO els_readonly;
REVOKE ALL ON FUNCTION els.stuck_batch_list(p_min_age interval, p_limit integer) FROM PUBLIC;
GRANT ALL ON FUNCTION els.stuck_batch_list(p_min_age interval, p_limit integer) TO els_readonly;
GRANT ALL ON FUNCTION els.stuck_batch_list(p_min_age interval, p_limit integer) TO els_worker;
GRANT SELECT ON TABLE els.essay_claim TO els_readonly;
GRANT SELECT ON TABLE els.outbox_set_aside TO els_readonly;
GRANT SELECT ON TABLE els.partition_self TO els_readonly;
GRANT SELECT ON TABLE els.retired_essay TO els_readonly;
ALTER DEFAULT PRIVILEGES FOR ROLE els_owner IN SCHEMA els GRANT SELECT ON TABLES  TO els_readonly;
