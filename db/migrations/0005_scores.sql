-- Performance scores: outcomes after calls, the offer log, per-program weights, the scores
-- billing computes from them over a trailing window, and the lift report of exploration.
-- Applied by `ringbid db migrate` inside one transaction; no transaction control here.
-- docs/scores.md states every formula below in words an operations manager reads.

-- Per program: how its parts weigh (they add up to 1), whether it sells, how many calls an
-- agent needs for a program score of its own, the score a newcomer starts from (NULL: the
-- program's median) and the share of calls routed to the longest-available agent instead.
ALTER TABLE roster.programs
  ADD COLUMN w_satisfaction numeric(4,3) NOT NULL DEFAULT 0.300
    CONSTRAINT programs_w_satisfaction_range CHECK (w_satisfaction BETWEEN 0 AND 1),
  ADD COLUMN w_resolution numeric(4,3) NOT NULL DEFAULT 0.250
    CONSTRAINT programs_w_resolution_range CHECK (w_resolution BETWEEN 0 AND 1),
  ADD COLUMN w_conversion numeric(4,3) NOT NULL DEFAULT 0.150
    CONSTRAINT programs_w_conversion_range CHECK (w_conversion BETWEEN 0 AND 1),
  ADD COLUMN w_answer_rate numeric(4,3) NOT NULL DEFAULT 0.150
    CONSTRAINT programs_w_answer_rate_range CHECK (w_answer_rate BETWEEN 0 AND 1),
  ADD COLUMN w_handle_time numeric(4,3) NOT NULL DEFAULT 0.150
    CONSTRAINT programs_w_handle_time_range CHECK (w_handle_time BETWEEN 0 AND 1),
  ADD COLUMN sells boolean NOT NULL DEFAULT false,
  ADD COLUMN min_calls int NOT NULL DEFAULT 20
    CONSTRAINT programs_min_calls_range CHECK (min_calls BETWEEN 1 AND 100000),
  ADD COLUMN provisional_score numeric(5,2)
    CONSTRAINT programs_provisional_score_range CHECK (provisional_score BETWEEN 0 AND 100),
  ADD COLUMN explore_share numeric(4,3) NOT NULL DEFAULT 0
    CONSTRAINT programs_explore_share_range CHECK (explore_share BETWEEN 0 AND 1),
  ADD CONSTRAINT programs_weights_sum
    CHECK (w_satisfaction + w_resolution + w_conversion + w_answer_rate + w_handle_time = 1.000);

-- A supervisor set this agent's score by hand: recompute leaves it alone.
ALTER TABLE roster.agents ADD COLUMN score_pinned boolean NOT NULL DEFAULT false;

-- As before, one notification per changed row, except inside a bulk write (billing's score
-- recompute) that sets ringbid.bulk for its transaction and notifies once itself: a hundred
-- thousand per-row reloads would otherwise follow every recompute.
CREATE OR REPLACE FUNCTION roster.notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  kind text := CASE TG_TABLE_NAME WHEN 'agents' THEN 'agent' ELSE 'program' END;
BEGIN
  IF coalesce(current_setting('ringbid.bulk', true), '') = 'on' THEN
    RETURN NULL;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM pg_notify('ringbid_roster', kind || ':' || OLD.id::text);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM pg_notify('ringbid_roster', kind || ':' || NEW.id::text);
  END IF;
  RETURN NULL;
END
$$;

-- The connected offer was chosen by the program's exploration share (the lift report's
-- baseline group).
ALTER TABLE billing.cdrs ADD COLUMN exploratory boolean NOT NULL DEFAULT false;

-- Every offer of a call and how it ended, from the CDR's offer log: the answer rate.
-- call_id is the CDR's id (billing refuses a CDR whose id differs from its call id).
CREATE TABLE billing.cdr_offers (
  call_id     text NOT NULL,
  seq         int NOT NULL CHECK (seq BETWEEN 1 AND 64),
  agent_id    bigint NOT NULL CHECK (agent_id > 0),
  offered_at  timestamptz NOT NULL,
  result      text NOT NULL
                CHECK (result IN ('accepted', 'declined', 'timeout', 'agent_lost', 'refused')),
  PRIMARY KEY (call_id, seq)
);
CREATE INDEX cdr_offers_offered ON billing.cdr_offers (offered_at);

-- What happened after a call, stored once per (call, kind, reviewer). Only QA reviews carry a
-- reviewer (the supervisor's id); the other kinds are one per call.
CREATE TABLE billing.outcomes (
  call_id      text NOT NULL CHECK (call_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
  kind         text NOT NULL CHECK (kind IN ('survey', 'resolved', 'sale', 'qa')),
  reviewer     text NOT NULL DEFAULT '',
  value        int NOT NULL,
  recorded_at  timestamptz NOT NULL,
  received_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (call_id, kind, reviewer),
  CONSTRAINT outcomes_value_range CHECK (CASE kind WHEN 'survey' THEN value BETWEEN 1 AND 5
                                                   WHEN 'qa' THEN value BETWEEN 0 AND 100
                                                   ELSE value BETWEEN 0 AND 1 END),
  CONSTRAINT outcomes_reviewer CHECK (CASE kind WHEN 'qa'
                                        THEN reviewer ~ '^[A-Za-z0-9._:-]{1,64}$'
                                        ELSE reviewer = '' END)
);

-- The scores of the last recompute: one overall row per active agent (program '') and one
-- per program where the agent has enough calls there, or a provisional one while it is new.
-- parts: [{"part", "raw", "normalised", "weight", "n"}, ...]; the overall row lists every
-- program's parts, each with its "program".
CREATE TABLE billing.agent_scores (
  agent_id      bigint NOT NULL,
  program       text NOT NULL,
  score         numeric(5,2) NOT NULL CHECK (score BETWEEN 0 AND 100),
  provisional   boolean NOT NULL,
  calls         int NOT NULL CHECK (calls >= 0),
  parts         jsonb NOT NULL DEFAULT '[]',
  window_start  timestamptz NOT NULL,
  window_end    timestamptz NOT NULL,
  computed_at   timestamptz NOT NULL,
  PRIMARY KEY (agent_id, program)
);

-- The lock that runs one recompute at a time.
CREATE FUNCTION billing.score_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 7265637402::bigint $$;

-- The exact median of numeric values (the mean of the two middle ones for an even count);
-- NULLs are ignored, no value gives NULL. percentile_cont works in double precision, which
-- could round a median of two scores such as 70.01 and 70.02 the wrong way.
CREATE FUNCTION billing.median_final(vals numeric[]) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT avg(v) FROM (
    SELECT v FROM unnest(vals) AS u(v) WHERE v IS NOT NULL ORDER BY v
    OFFSET (SELECT (count(*) - 1) / 2 FROM unnest(vals) AS c(v) WHERE v IS NOT NULL)
    LIMIT (SELECT 2 - count(*) % 2 FROM unnest(vals) AS c(v) WHERE v IS NOT NULL)) m
$$;
CREATE AGGREGATE billing.median(numeric) (
  SFUNC = array_append, STYPE = numeric[], FINALFUNC = billing.median_final);

-- Stores a batch of CDRs (the JSON array billing builds: one object per CDR, with its payload
-- hash and, when billing refused it, the reason) and returns one row per CDR: outcome 'stored'
-- (also for an identical resend), 'quarantined' (same id stored before with other content)
-- or 'refused' (invalid), with the reason. A CDR answered in a period that has already closed
-- is stored with paid_period = the open period containing now(), which pays it as LATE.
-- A CDR stored now brings its offer log (billing.cdr_offers); a resend brings nothing, and a
-- CDR from a broker that sends no offer log or exploration flag is stored without them.
CREATE OR REPLACE FUNCTION billing.ingest_cdrs(batch jsonb)
RETURNS TABLE (cdr_id text, outcome text, reason text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  late date;
  tz text;
BEGIN
  -- shared: batches run side by side, but never while a period closes
  PERFORM pg_advisory_xact_lock_shared(billing.pay_lock_key());
  IF EXISTS (SELECT 1 FROM jsonb_to_recordset(batch) AS r(answered_us bigint)
               JOIN billing.pay_periods o ON o.status = 'closed'
                AND 'epoch'::timestamptz + r.answered_us * interval '1 microsecond'
                    >= o.starts_at
                AND 'epoch'::timestamptz + r.answered_us * interval '1 microsecond'
                    < o.ends_at
              WHERE r.answered_us IS NOT NULL) THEN
    SELECT o.tz INTO tz FROM billing.pay_periods o ORDER BY o.start_date DESC LIMIT 1;
    late := (billing.ensure_period(billing.period_start_of(now(), tz), tz)).start_date;
  END IF;
  -- One statement: every CTE sees the table as it was before it, so "conflict" means an
  -- earlier stored CDR with the same id and another hash. ON CONFLICT DO NOTHING makes an
  -- identical resend a no-op, and the offer log follows only the rows inserted now.
  RETURN QUERY
  WITH input AS (
    SELECT DISTINCT ON (r.cdr_id) r.*,
           'epoch'::timestamptz + r.answered_us * interval '1 microsecond' AS answered_at
    FROM jsonb_to_recordset(batch) AS r(
      cdr_id text, call_id text, program text, agent_id bigint, arrived_us bigint,
      offered_us bigint, answered_us bigint, ended_us bigint, talk_s bigint,
      disposition text, sale boolean, review boolean, resolved boolean, survey_score smallint,
      offers int, exploratory boolean, offer_log jsonb, hash text, reason text)
    ORDER BY r.cdr_id),
  checked AS (
    SELECT i.*, coalesce(i.reason,
      CASE WHEN p.id IS NULL THEN 'unknown program'
           WHEN i.agent_id IS NOT NULL AND a.id IS NULL THEN 'unknown agent'
           WHEN s.cdr_id IS NOT NULL AND s.payload_hash <> decode(i.hash, 'hex')
             THEN 'same cdr id with different content' END) AS why,
      (i.reason IS NULL AND p.id IS NOT NULL AND (i.agent_id IS NULL OR a.id IS NOT NULL)
       AND s.cdr_id IS NOT NULL AND s.payload_hash <> decode(i.hash, 'hex')) AS conflict,
      CASE WHEN i.answered_us IS NOT NULL AND EXISTS (
             SELECT 1 FROM billing.pay_periods o WHERE o.status = 'closed'
                AND i.answered_at >= o.starts_at AND i.answered_at < o.ends_at)
           THEN late END AS paid_period
    FROM input i
    LEFT JOIN roster.programs p ON p.id = i.program
    LEFT JOIN roster.agents a ON a.id = i.agent_id
    LEFT JOIN billing.cdrs s ON s.cdr_id = i.cdr_id),
  ins AS (
    INSERT INTO billing.cdrs (cdr_id, call_id, program, agent_id, arrived_at, offered_at,
      answered_at, ended_at, talk_s, disposition, sale, review, offers, payload_hash,
      resolved, survey_score, paid_period, exploratory)
    SELECT k.cdr_id, k.call_id, k.program, k.agent_id,
      'epoch'::timestamptz + k.arrived_us * interval '1 microsecond',
      'epoch'::timestamptz + k.offered_us * interval '1 microsecond',
      k.answered_at,
      'epoch'::timestamptz + k.ended_us * interval '1 microsecond',
      k.talk_s, k.disposition, k.sale, k.review, k.offers, decode(k.hash, 'hex'),
      k.resolved, k.survey_score, k.paid_period, coalesce(k.exploratory, false)
    FROM checked k WHERE k.why IS NULL
    ON CONFLICT (cdr_id) DO NOTHING RETURNING billing.cdrs.cdr_id AS new_id),
  offer_rows AS (
    INSERT INTO billing.cdr_offers (call_id, seq, agent_id, offered_at, result)
    SELECT n.new_id, o.seq::int, (o.e ->> 'agent_id')::bigint,
           'epoch'::timestamptz + (o.e ->> 'offered_us')::bigint * interval '1 microsecond',
           o.e ->> 'result'
    FROM ins n
    JOIN checked k ON k.cdr_id = n.new_id
    CROSS JOIN LATERAL jsonb_array_elements(
      CASE WHEN jsonb_typeof(k.offer_log) = 'array' THEN k.offer_log ELSE '[]'::jsonb END)
      WITH ORDINALITY AS o(e, seq)
    ON CONFLICT (call_id, seq) DO NOTHING RETURNING 1),
  quar AS (
    INSERT INTO billing.cdr_quarantine (cdr_id, reason, payload_hash, payload)
    SELECT k.cdr_id, k.why, decode(k.hash, 'hex'),
           to_jsonb(k) - 'why' - 'conflict' - 'answered_at' - 'paid_period'
    FROM checked k WHERE k.why IS NOT NULL
    ON CONFLICT (cdr_id, payload_hash) DO NOTHING RETURNING 1)
  SELECT k.cdr_id, CASE WHEN k.why IS NULL THEN 'stored'
                        WHEN k.conflict THEN 'quarantined' ELSE 'refused' END,
         coalesce(k.why, '')
  FROM checked k ORDER BY k.cdr_id;
END $$;

-- Stores the outcomes of one call (the JSON array billing builds from a RecordOutcomes
-- request: call_id, kind 'survey'|'resolved'|'sale'|'qa', value, reviewer, recorded_us,
-- call_known) all together or not at all, and returns one row per outcome in request order;
-- duplicate: the same outcome was stored before and nothing changed. Refusals are raised, and
-- billing maps their SQLSTATE to an error code:
--   22023 a field out of range ("survey score must be 1-5 (got 6)");
--   P0002 unknown call ("unknown call X": no CDR, and the broker does not know it either);
--   23505 stored before with another value ("survey for call X already recorded as 4").
CREATE FUNCTION billing.record_outcomes(batch jsonb)
RETURNS TABLE (call_id text, kind text, reviewer text, duplicate boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
  r record;
  first_call text;
  known boolean := false;
  stored int;
  at timestamptz;
BEGIN
  IF batch IS NULL OR jsonb_typeof(batch) <> 'array' THEN
    RAISE EXCEPTION 'outcomes must be a JSON array' USING ERRCODE = '22023';
  END IF;
  IF jsonb_array_length(batch) NOT BETWEEN 1 AND 16 THEN
    RAISE EXCEPTION 'between 1 and 16 outcomes per request (got %)', jsonb_array_length(batch)
      USING ERRCODE = '22023';
  END IF;
  -- Every field is checked before anything is stored.
  FOR r IN SELECT x.*, o.n FROM jsonb_array_elements(batch) WITH ORDINALITY AS o(e, n)
           CROSS JOIN LATERAL jsonb_to_record(o.e) AS x(call_id text, kind text, value int,
             reviewer text, recorded_us bigint, call_known boolean)
           ORDER BY o.n LOOP
    IF r.call_id IS NULL OR r.call_id !~ '^[A-Za-z0-9._:-]{1,64}$' THEN
      RAISE EXCEPTION 'outcome %: bad call id', r.n USING ERRCODE = '22023';
    END IF;
    IF first_call IS NULL THEN
      first_call := r.call_id;
    ELSIF r.call_id <> first_call THEN
      RAISE EXCEPTION 'outcome %: all outcomes of one request must be for one call (% and %)',
        r.n, first_call, r.call_id USING ERRCODE = '22023';
    END IF;
    IF r.kind IS NULL OR r.kind NOT IN ('survey', 'resolved', 'sale', 'qa') THEN
      RAISE EXCEPTION 'outcome %: unknown kind "%" (survey, resolved, sale, qa)', r.n,
        coalesce(r.kind, '') USING ERRCODE = '22023';
    END IF;
    IF r.value IS NULL THEN
      RAISE EXCEPTION 'outcome %: % without a value', r.n, r.kind USING ERRCODE = '22023';
    ELSIF r.kind = 'survey' AND r.value NOT BETWEEN 1 AND 5 THEN
      RAISE EXCEPTION 'survey score must be 1-5 (got %)', r.value USING ERRCODE = '22023';
    ELSIF r.kind = 'qa' AND r.value NOT BETWEEN 0 AND 100 THEN
      RAISE EXCEPTION 'QA score must be 0-100 (got %)', r.value USING ERRCODE = '22023';
    ELSIF r.kind IN ('resolved', 'sale') AND r.value NOT BETWEEN 0 AND 1 THEN
      RAISE EXCEPTION '% must be 0 or 1 (got %)', r.kind, r.value USING ERRCODE = '22023';
    END IF;
    IF r.kind = 'qa' AND (r.reviewer IS NULL OR r.reviewer !~ '^[A-Za-z0-9._:-]{1,64}$') THEN
      RAISE EXCEPTION 'a QA review needs a reviewer id (1-64 of A-Z a-z 0-9 . _ : -)'
        USING ERRCODE = '22023';
    ELSIF r.kind <> 'qa' AND coalesce(r.reviewer, '') <> '' THEN
      RAISE EXCEPTION 'only a QA review has a reviewer (% has "%")', r.kind, r.reviewer
        USING ERRCODE = '22023';
    END IF;
    IF r.recorded_us IS NOT NULL AND r.recorded_us <> 0 AND (
         'epoch'::timestamptz + r.recorded_us * interval '1 microsecond'
           < now() - interval '400 days'
         OR 'epoch'::timestamptz + r.recorded_us * interval '1 microsecond'
           > now() + interval '5 minutes') THEN
      RAISE EXCEPTION 'outcome %: recorded time is more than 400 days ago or in the future',
        r.n USING ERRCODE = '22023';
    END IF;
    known := known OR coalesce(r.call_known, false);
  END LOOP;
  IF NOT known AND NOT EXISTS (SELECT 1 FROM billing.cdrs c WHERE c.cdr_id = first_call) THEN
    RAISE EXCEPTION 'unknown call %', first_call USING ERRCODE = 'P0002';
  END IF;
  FOR r IN SELECT x.*, o.n FROM jsonb_array_elements(batch) WITH ORDINALITY AS o(e, n)
           CROSS JOIN LATERAL jsonb_to_record(o.e) AS x(call_id text, kind text, value int,
             reviewer text, recorded_us bigint, call_known boolean)
           ORDER BY o.n LOOP
    at := CASE WHEN coalesce(r.recorded_us, 0) = 0 THEN now()
               ELSE 'epoch'::timestamptz + r.recorded_us * interval '1 microsecond' END;
    INSERT INTO billing.outcomes AS t (call_id, kind, reviewer, value, recorded_at)
    VALUES (r.call_id, r.kind, coalesce(r.reviewer, ''), r.value, at)
    ON CONFLICT ON CONSTRAINT outcomes_pkey DO NOTHING;
    IF FOUND THEN
      call_id := r.call_id; kind := r.kind; reviewer := coalesce(r.reviewer, '');
      duplicate := false;
      RETURN NEXT;
      CONTINUE;
    END IF;
    SELECT t.value INTO stored FROM billing.outcomes t
     WHERE t.call_id = r.call_id AND t.kind = r.kind AND t.reviewer = coalesce(r.reviewer, '');
    IF stored <> r.value THEN
      RAISE EXCEPTION '%', CASE r.kind
          WHEN 'qa' THEN format('QA review by %s for call %s already recorded as %s',
                                r.reviewer, r.call_id, stored)
          WHEN 'survey' THEN format('survey for call %s already recorded as %s',
                                    r.call_id, stored)
          ELSE format('%s for call %s already recorded as %s', r.kind, r.call_id,
                      CASE stored WHEN 1 THEN 'yes' ELSE 'no' END) END
        USING ERRCODE = '23505';
    END IF;
    call_id := r.call_id; kind := r.kind; reviewer := coalesce(r.reviewer, '');
    duplicate := true;
    RETURN NEXT;
  END LOOP;
END $$;

-- The completed calls answered in [p_from, p_to), with their outcomes: the survey, resolution
-- and sale recorded after the call where there is one, else what the CDR says; QA as the mean
-- of the call's reviews. Late CDRs (paid_period set) are read through their own small index, so
-- the window costs two index ranges and never a scan of the whole history.
CREATE FUNCTION billing.scored_calls(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (cdr_id text, agent_id bigint, program text, talk_s bigint, exploratory boolean,
               survey numeric, resolved boolean, sold boolean, qa numeric)
LANGUAGE sql STABLE AS $$
  WITH w AS (
    SELECT c.cdr_id, c.agent_id, c.program, c.talk_s, c.exploratory, c.survey_score,
           c.resolved, c.sale
    FROM billing.cdrs c
    WHERE c.disposition = 'completed' AND c.agent_id IS NOT NULL AND c.paid_period IS NULL
      AND c.answered_at >= p_from AND c.answered_at < p_to
    UNION ALL
    SELECT c.cdr_id, c.agent_id, c.program, c.talk_s, c.exploratory, c.survey_score,
           c.resolved, c.sale
    FROM billing.cdrs c
    WHERE c.disposition = 'completed' AND c.agent_id IS NOT NULL
      AND c.paid_period IS NOT NULL
      AND c.answered_at >= p_from AND c.answered_at < p_to),
  oc AS (
    SELECT o.call_id,
           max(o.value) FILTER (WHERE o.kind = 'survey') AS survey,
           max(o.value) FILTER (WHERE o.kind = 'resolved') AS resolved,
           max(o.value) FILTER (WHERE o.kind = 'sale') AS sale,
           avg(o.value) FILTER (WHERE o.kind = 'qa') AS qa
    FROM billing.outcomes o
    WHERE o.call_id IN (SELECT w.cdr_id FROM w)
    GROUP BY o.call_id)
  SELECT w.cdr_id, w.agent_id, w.program, w.talk_s, w.exploratory,
         coalesce(oc.survey, w.survey_score)::numeric,
         CASE WHEN oc.resolved IS NOT NULL THEN oc.resolved = 1 ELSE w.resolved END,
         CASE WHEN oc.sale IS NOT NULL THEN oc.sale = 1 ELSE w.sale END,
         oc.qa
  FROM w LEFT JOIN oc ON oc.call_id = w.cdr_id
$$;

-- Every active agent's scores as of p_at over the window [p_at - p_window, p_at), computed
-- from the CDRs, outcomes and offers; billing.recompute_scores stores them. docs/scores.md
-- gives the formulas. Agent a, program p:
--   satisfaction  mean survey (1..5), normalised (raw - 1) / 4
--   qa            mean QA review (0..100) of the reviewed calls (a call's reviews averaged
--                 first), normalised raw / 100; shares the satisfaction weight half and half
--                 when both have data (a part without data shows the weight it would have alone)
--   resolution    share resolved, normalised raw
--   conversion    (selling programs) share sold, normalised least(1, raw / (2 * program's
--                 share sold)); no data when the program sold nothing
--   answer_rate   accepted / offered (refused offers not counted), normalised raw
--   handle_time   mean talk seconds, normalised least(1, greatest(0, 2 - raw / program median))
--   program raw score = round(100 * sum(weight * normalised) / sum(weight), 2) over the parts
--   with data.
CREATE FUNCTION billing.score_rows(p_window interval, p_at timestamptz, p_min_calls int)
RETURNS TABLE (agent_id bigint, program text, score numeric(5,2), provisional boolean,
               calls int, parts jsonb)
LANGUAGE sql STABLE AS $$
  WITH
  calls AS MATERIALIZED (SELECT * FROM billing.scored_calls(p_at - p_window, p_at)),
  -- the program-wide norms: share of calls sold, median talk seconds
  norms AS (
    SELECT c.program, avg(c.sold::int) AS sale_mean,
           (percentile_cont(0.5) WITHIN GROUP (ORDER BY c.talk_s))::numeric AS talk_median
    FROM calls c GROUP BY c.program),
  mine AS (
    SELECT c.agent_id, c.program, count(*) AS n_calls,
           avg(c.survey) AS sat, count(c.survey) AS sat_n,
           avg(c.qa) AS qa, count(c.qa) AS qa_n,
           avg(c.resolved::int) AS res, count(c.resolved) AS res_n,
           avg(c.sold::int) AS sold, count(c.sold) AS sold_n,
           avg(c.talk_s) AS talk, count(*) AS talk_n
    FROM calls c GROUP BY c.agent_id, c.program),
  offers AS (
    SELECT o.agent_id, c.program,
           count(*) FILTER (WHERE o.result <> 'refused') AS offered,
           count(*) FILTER (WHERE o.result = 'accepted') AS accepted
    FROM billing.cdr_offers o
    JOIN billing.cdrs c ON c.cdr_id = o.call_id
    WHERE o.offered_at >= p_at - p_window AND o.offered_at < p_at
    GROUP BY o.agent_id, c.program),
  active AS (
    SELECT a.id, a.skills, a.score_pinned FROM roster.agents a WHERE a.status = 'active'),
  pairs AS (
    SELECT coalesce(m.agent_id, f.agent_id) AS agent_id, coalesce(m.program, f.program) AS program,
           coalesce(m.n_calls, 0) AS n_calls, m.sat, coalesce(m.sat_n, 0) AS sat_n,
           m.qa, coalesce(m.qa_n, 0) AS qa_n, m.res, coalesce(m.res_n, 0) AS res_n,
           m.sold, coalesce(m.sold_n, 0) AS sold_n, m.talk, coalesce(m.talk_n, 0) AS talk_n,
           coalesce(f.offered, 0) AS offered, coalesce(f.accepted, 0) AS accepted
    FROM mine m FULL JOIN offers f ON f.agent_id = m.agent_id AND f.program = m.program),
  part_rows AS (
    SELECT x.agent_id, x.program, v.ord, v.part, v.raw, v.norm, v.weight, v.n
    FROM pairs x
    JOIN active a ON a.id = x.agent_id
    JOIN roster.programs p ON p.id = x.program
    LEFT JOIN norms g ON g.program = x.program
    CROSS JOIN LATERAL (VALUES
      (1, 'satisfaction', x.sat, (x.sat - 1) / 4,
       CASE WHEN x.qa_n > 0 AND x.sat_n > 0 THEN round(p.w_satisfaction / 2, 4)
            ELSE p.w_satisfaction END, x.sat_n),
      (2, 'qa', x.qa, x.qa / 100,
       CASE WHEN x.qa_n > 0 AND x.sat_n > 0 THEN round(p.w_satisfaction / 2, 4)
            ELSE p.w_satisfaction END, x.qa_n),
      (3, 'resolution', x.res, x.res, p.w_resolution, x.res_n),
      (4, 'conversion', x.sold,
       CASE WHEN g.sale_mean > 0 THEN least(1, x.sold / (2 * g.sale_mean)) END,
       p.w_conversion, x.sold_n),
      (5, 'answer_rate', CASE WHEN x.offered > 0 THEN x.accepted::numeric / x.offered END,
       CASE WHEN x.offered > 0 THEN x.accepted::numeric / x.offered END,
       p.w_answer_rate, x.offered),
      (6, 'handle_time', x.talk,
       CASE WHEN x.talk IS NULL THEN NULL
            WHEN g.talk_median > 0 THEN least(1, greatest(0, 2 - x.talk / g.talk_median))
            WHEN x.talk = 0 THEN 1 ELSE 0 END,
       p.w_handle_time, x.talk_n)) AS v(ord, part, raw, norm, weight, n)
    WHERE v.part <> 'conversion' OR p.sells),
  program_raw AS (
    SELECT r.agent_id, r.program, x.n_calls,
           CASE WHEN sum(r.weight) FILTER (WHERE r.norm IS NOT NULL) > 0 THEN
             round(100 * sum(r.weight * r.norm) FILTER (WHERE r.norm IS NOT NULL)
                   / sum(r.weight) FILTER (WHERE r.norm IS NOT NULL), 2) END AS score,
           jsonb_agg(jsonb_build_object('part', r.part, 'raw', trim_scale(round(r.raw, 4)),
                                        'normalised', trim_scale(round(r.norm, 4)),
                                        'weight', trim_scale(r.weight), 'n', r.n)
                     ORDER BY r.ord) AS parts
    FROM part_rows r
    JOIN pairs x ON x.agent_id = r.agent_id AND x.program = r.program
    GROUP BY r.agent_id, r.program, x.n_calls),
  -- overall: the calls-weighted mean of the program raw scores, for agents with enough calls
  totals AS (
    SELECT a.id AS agent_id, a.score_pinned,
           coalesce(sum(r.n_calls), 0) AS n_calls,
           round(sum(r.n_calls * r.score) FILTER (WHERE r.score IS NOT NULL)
                 / nullif(sum(r.n_calls) FILTER (WHERE r.score IS NOT NULL), 0), 2) AS score,
           coalesce((SELECT jsonb_agg(e.part || jsonb_build_object('program', q.program)
                                      ORDER BY q.program, e.ord)
                     FROM program_raw q
                     CROSS JOIN LATERAL jsonb_array_elements(q.parts) WITH ORDINALITY
                       AS e(part, ord)
                     WHERE q.agent_id = a.id), '[]') AS parts
    FROM active a
    LEFT JOIN program_raw r ON r.agent_id = a.id
    GROUP BY a.id, a.score_pinned),
  established AS (
    SELECT t.* FROM totals t WHERE t.n_calls >= p_min_calls AND t.score IS NOT NULL),
  overall_median AS (
    SELECT coalesce(round(billing.median(e.score), 2), 50) AS score FROM established e),
  -- program scores of agents with enough calls in the program; pinned agents' count for the
  -- median (pinning changes what the auction uses, not the agent's record) but get no row
  program_real AS (
    SELECT r.* FROM program_raw r
    JOIN roster.programs p ON p.id = r.program
    WHERE r.n_calls >= p.min_calls AND r.score IS NOT NULL),
  program_median AS (
    SELECT p.id AS program,
           coalesce(p.provisional_score, round(billing.median(r.score), 2), 50) AS score
    FROM roster.programs p LEFT JOIN program_real r ON r.program = p.id
    GROUP BY p.id, p.provisional_score)
  -- overall rows: every active agent
  SELECT t.agent_id, ''::text,
         coalesce(e.score, (SELECT m.score FROM overall_median m))::numeric(5,2),
         e.agent_id IS NULL, t.n_calls::int, t.parts
  FROM totals t LEFT JOIN established e ON e.agent_id = t.agent_id
  UNION ALL
  -- program rows with enough calls, of unpinned agents
  SELECT r.agent_id, r.program, r.score::numeric(5,2), false, r.n_calls::int, r.parts
  FROM program_real r JOIN active a ON a.id = r.agent_id AND NOT a.score_pinned
  UNION ALL
  -- a new agent's provisional score in each program it can take calls of
  SELECT a.id, p.id, m.score::numeric(5,2), true, coalesce(r.n_calls, 0)::int,
         coalesce(r.parts, '[]')
  FROM active a
  JOIN totals t ON t.agent_id = a.id
  JOIN roster.programs p ON p.required_skills <@ a.skills
  JOIN program_median m ON m.program = p.id
  LEFT JOIN program_raw r ON r.agent_id = a.id AND r.program = p.id
  WHERE NOT a.score_pinned
    AND NOT EXISTS (SELECT 1 FROM established e WHERE e.agent_id = a.id)
    AND NOT EXISTS (SELECT 1 FROM program_real q WHERE q.agent_id = a.id AND q.program = p.id)
$$;

-- Recomputes every active agent's scores (billing.score_rows) and stores them: the rows in
-- billing.agent_scores, the overall score in roster.agents.score for agents whose score is
-- not pinned. One notification 'scores' on ringbid_roster (when anything changed) tells
-- presence to reload billing.presence_scores, instead of one per agent. Returns how many agents'
-- stored scores changed. One recompute at a time: a second waits for the first.
CREATE FUNCTION billing.recompute_scores(p_window interval DEFAULT '30 days',
                                         p_at timestamptz DEFAULT now(),
                                         p_min_calls int DEFAULT 20)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  changed integer;
  bulk text := current_setting('ringbid.bulk', true);
BEGIN
  IF p_window IS NULL OR p_window <= interval '0' OR p_window > interval '400 days' THEN
    RAISE EXCEPTION 'score window must be more than 0 and at most 400 days (got %)', p_window
      USING ERRCODE = '22023';
  END IF;
  IF p_at IS NULL THEN
    RAISE EXCEPTION 'score time must be given' USING ERRCODE = '22023';
  END IF;
  IF p_min_calls IS NULL OR p_min_calls NOT BETWEEN 1 AND 100000 THEN
    RAISE EXCEPTION 'minimum calls must be 1-100000 (got %)', p_min_calls
      USING ERRCODE = '22023';
  END IF;
  PERFORM pg_advisory_xact_lock(billing.score_lock_key());
  PERFORM set_config('ringbid.bulk', 'on', true);
  WITH fresh AS MATERIALIZED (
    SELECT * FROM billing.score_rows(p_window, p_at, p_min_calls)),
  diff AS (
    SELECT coalesce(f.agent_id, s.agent_id) AS agent_id
    FROM fresh f FULL JOIN billing.agent_scores s
      ON s.agent_id = f.agent_id AND s.program = f.program
    WHERE f.agent_id IS NULL OR s.agent_id IS NULL OR f.score <> s.score
       OR f.provisional <> s.provisional),
  -- every data-modifying CTE runs to completion whether or not the count reads it
  gone AS (
    DELETE FROM billing.agent_scores s
    WHERE NOT EXISTS (SELECT 1 FROM fresh f
                       WHERE f.agent_id = s.agent_id AND f.program = s.program)),
  stored AS (
    INSERT INTO billing.agent_scores AS s (agent_id, program, score, provisional, calls,
                                           parts, window_start, window_end, computed_at)
    SELECT f.agent_id, f.program, f.score, f.provisional, f.calls, f.parts,
           p_at - p_window, p_at, now()
    FROM fresh f
    ON CONFLICT (agent_id, program) DO UPDATE
      SET score = EXCLUDED.score, provisional = EXCLUDED.provisional,
          calls = EXCLUDED.calls, parts = EXCLUDED.parts,
          window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end,
          computed_at = EXCLUDED.computed_at),
  roster_rows AS (
    UPDATE roster.agents a SET score = f.score
    FROM fresh f
    WHERE f.agent_id = a.id AND f.program = '' AND NOT a.score_pinned
      AND a.score IS DISTINCT FROM f.score
    RETURNING a.id)
  SELECT count(*) INTO changed FROM (
    SELECT d.agent_id FROM diff d UNION SELECT r.id FROM roster_rows r) x;
  PERFORM set_config('ringbid.bulk', coalesce(bulk, 'off'), true);
  IF changed > 0 THEN
    PERFORM pg_notify('ringbid_roster', 'scores');
  END IF;
  RETURN changed;
END $$;

-- What presence gives the auction: every agent's overall score (the roster's, pinned or
-- computed) under program '', and the program scores of agents whose score is not pinned.
CREATE VIEW billing.presence_scores AS
  SELECT a.id AS agent_id, ''::text AS program, a.score::numeric AS score
  FROM roster.agents a
  UNION ALL
  SELECT s.agent_id, s.program, s.score::numeric
  FROM billing.agent_scores s
  JOIN roster.agents a ON a.id = s.agent_id AND NOT a.score_pinned
  WHERE s.program <> '';

-- An agent's stored scores for `ringbid agent score`: the overall row first, then one per
-- program, with whether the score is pinned and the score the auction uses overall.
CREATE FUNCTION billing.agent_score_parts(p_agent bigint)
RETURNS TABLE (program text, score numeric(5,2), provisional boolean, calls int, parts jsonb,
               window_start timestamptz, window_end timestamptz, computed_at timestamptz,
               pinned boolean, roster_score numeric(5,2))
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
  IF NOT EXISTS (SELECT 1 FROM roster.agents a WHERE a.id = p_agent) THEN
    RAISE EXCEPTION 'unknown agent %', p_agent USING ERRCODE = 'P0002';
  END IF;
  RETURN QUERY
    SELECT s.program, s.score, s.provisional, s.calls, s.parts, s.window_start, s.window_end,
           s.computed_at, a.score_pinned, a.score
    FROM billing.agent_scores s JOIN roster.agents a ON a.id = s.agent_id
    WHERE s.agent_id = p_agent
    ORDER BY s.program;
END $$;

-- Score routing against the baseline: the program's completed calls answered in the window,
-- split by how the connected offer was chosen ('auction': highest score; 'exploration': the
-- longest-available agent). Both rows always come back; averages are NULL with no data.
--   surveyed        calls with a survey score
--   satisfaction    mean survey score (1..5), 2 places
--   resolved_share  share of calls resolved (of those where it is known), 4 places
--   sale_share      share of calls that sold, 4 places
--   avg_handle_s    mean talk seconds, 1 place
CREATE FUNCTION billing.lift_report(p_program text, p_window interval DEFAULT '30 days',
                                    p_at timestamptz DEFAULT now())
RETURNS TABLE (route text, calls int, surveyed int, satisfaction numeric,
               resolved_share numeric, sale_share numeric, avg_handle_s numeric)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
  IF NOT EXISTS (SELECT 1 FROM roster.programs p WHERE p.id = p_program) THEN
    RAISE EXCEPTION 'unknown program %', p_program USING ERRCODE = 'P0002';
  END IF;
  IF p_window IS NULL OR p_window <= interval '0' OR p_window > interval '400 days' THEN
    RAISE EXCEPTION 'report window must be more than 0 and at most 400 days (got %)',
      p_window USING ERRCODE = '22023';
  END IF;
  RETURN QUERY
    SELECT g.route, count(c.cdr_id)::int, count(c.survey)::int, round(avg(c.survey), 2),
           round(avg(c.resolved::int), 4), round(avg(c.sold::int), 4),
           round(avg(c.talk_s), 1)
    FROM (VALUES ('auction', false), ('exploration', true)) AS g(route, exploratory)
    LEFT JOIN billing.scored_calls(p_at - p_window, p_at) c
      ON c.program = p_program AND c.exploratory = g.exploratory
    GROUP BY g.route
    ORDER BY g.route;
END $$;
