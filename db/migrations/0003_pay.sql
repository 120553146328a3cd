-- Pay: rates, weekly pay periods, frozen pay lines traceable to CDRs, and payroll exports.
-- Applied by `ringbid db migrate` inside one transaction; no transaction control here.
-- Every amount is computed here, in numeric; no client ever does arithmetic on money.

-- Pay periods: Monday 00:00 to the next Monday 00:00 in the zone the period was opened in.
-- The zone and both instants are stored, so a closed period never moves.
CREATE TABLE billing.pay_periods (
  start_date  date PRIMARY KEY CHECK (extract(isodow FROM start_date) = 1),
  tz          text NOT NULL,
  starts_at   timestamptz NOT NULL,
  ends_at     timestamptz NOT NULL,
  status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
  closed_at   timestamptz,
  CHECK (ends_at > starts_at),
  CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);

ALTER TABLE billing.cdrs
  ADD COLUMN survey_score smallint CHECK (survey_score BETWEEN 1 AND 5),
  ADD COLUMN resolved boolean,
  -- set when the CDR arrived after the period it was answered in had closed: the open period
  -- that pays it on a LATE line
  ADD COLUMN paid_period date REFERENCES billing.pay_periods (start_date);
CREATE INDEX cdrs_paid_period ON billing.cdrs (paid_period) WHERE paid_period IS NOT NULL;
-- The CDRs a period pays on time, found by answer time without reading other weeks.
CREATE INDEX cdrs_paid_answered ON billing.cdrs (answered_at)
  WHERE disposition = 'completed' AND paid_period IS NULL;

-- Rates per talk minute, effective-dated; agent_id NULL is the program-wide rate.
CREATE TABLE billing.rates (
  id              bigserial PRIMARY KEY,
  agent_id        bigint CHECK (agent_id > 0),
  program         text NOT NULL CHECK (program ~ '^[A-Za-z0-9._:-]{1,64}$'),
  rate            numeric(12,4) NOT NULL CHECK (rate >= 0),
  effective_from  timestamptz NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE NULLS NOT DISTINCT (agent_id, program, effective_from)
);
CREATE INDEX rates_lookup ON billing.rates (program, agent_id, effective_from DESC);

-- One pay line: what an agent earns in a period for a program, an earnings code and a rate.
-- LATE lines (and SALE lines of late CDRs) name the period the calls were answered in.
CREATE TABLE billing.pay_lines (
  period           date NOT NULL REFERENCES billing.pay_periods (start_date),
  agent_id         bigint NOT NULL,
  program          text NOT NULL,
  code             text NOT NULL CHECK (code IN ('TALK', 'SALE', 'LATE')),
  rate             numeric(12,4) NOT NULL,
  quantity         numeric(14,4) NOT NULL,  -- minutes (TALK, LATE) or sales (SALE)
  amount           numeric(12,2) NOT NULL,
  currency         text NOT NULL DEFAULT 'USD',
  original_period  date,
  cdr_count        integer NOT NULL,
  UNIQUE NULLS NOT DISTINCT (period, agent_id, program, code, rate, original_period)
);

-- The CDRs behind each pay line, with each one's exact (unrounded) share: one row per CDR
-- item, written by the million when a period closes and never changed after. So that writing
-- them stays cheap, the key puts the CDR right after the period (one comparison of a fixed-width
-- date, then the CDR id decides), and the references are kept by triggers once per statement
-- instead of foreign keys checked row by row: a row names a stored, open period when it is
-- written (refuse_closed_rows); a period is not deleted while rows name it, and a CDR they name
-- neither goes nor changes its id (refuse_closed_change); the CDR itself is one that
-- close_period has just read.
CREATE TABLE billing.pay_line_cdrs (
  period    date NOT NULL,
  agent_id  bigint NOT NULL,
  program   text NOT NULL,
  code      text NOT NULL,
  rate      numeric(12,4) NOT NULL,
  -- the line's original period (LATE lines and late sales), as the line itself names it
  original_period date,
  cdr_id    text NOT NULL,
  quantity  numeric NOT NULL,
  share     numeric NOT NULL,
  PRIMARY KEY (period, cdr_id, code)
);

-- The lock that keeps CDR ingestion (shared) and period closing (exclusive) apart.
CREATE FUNCTION billing.pay_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 7265637401::bigint $$;

-- Refuses a zone PostgreSQL does not know, with a clear message.
CREATE FUNCTION billing.check_tz(p_tz text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF p_tz IS NULL OR NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = p_tz) THEN
    RAISE EXCEPTION 'unknown time zone "%"', p_tz USING ERRCODE = '22023';
  END IF;
  RETURN p_tz;
END $$;

-- The Monday starting the period that contains instant t in zone tz.
CREATE FUNCTION billing.period_start_of(t timestamptz, p_tz text) RETURNS date
LANGUAGE sql STABLE AS $$ SELECT date_trunc('week', t AT TIME ZONE p_tz)::date $$;

-- A period as the user names it: a Monday 'YYYY-MM-DD', 'current' or 'previous'.
CREATE FUNCTION billing.resolve_period(p text, p_tz text) RETURNS date
LANGUAGE plpgsql STABLE AS $$
DECLARE d date;
BEGIN
  PERFORM billing.check_tz(p_tz);
  IF p = 'current' THEN
    RETURN billing.period_start_of(now(), p_tz);
  ELSIF p = 'previous' THEN
    RETURN billing.period_start_of(now(), p_tz) - 7;
  ELSIF p !~ '^\d{4}-\d{2}-\d{2}$' THEN
    RAISE EXCEPTION 'pay period "%" is not a date (YYYY-MM-DD), current or previous', p
      USING ERRCODE = '22023';
  END IF;
  BEGIN
    d := p::date;
  EXCEPTION WHEN others THEN
    RAISE EXCEPTION 'pay period "%" is not a valid date', p USING ERRCODE = '22023';
  END;
  IF extract(isodow FROM d) <> 1 THEN
    RAISE EXCEPTION 'pay period % is a %, not a Monday: periods start on Mondays (e.g. %)',
      d, trim(to_char(d, 'Day')), date_trunc('week', d)::date USING ERRCODE = '22023';
  END IF;
  RETURN d;
END $$;

-- The stored row of a period, or the row it would get (not stored) in zone p_tz.
CREATE FUNCTION billing.period_row(p_start date, p_tz text) RETURNS billing.pay_periods
LANGUAGE plpgsql STABLE AS $$
DECLARE r billing.pay_periods;
BEGIN
  SELECT * INTO r FROM billing.pay_periods WHERE start_date = p_start;
  IF NOT FOUND THEN
    PERFORM billing.check_tz(p_tz);
    r.start_date := p_start;
    r.tz := p_tz;
    r.starts_at := p_start::timestamp AT TIME ZONE p_tz;
    r.ends_at := (p_start + 7)::timestamp AT TIME ZONE p_tz;
    r.status := 'open';
  END IF;
  RETURN r;
END $$;

-- The stored row of a period, created open if missing.
CREATE FUNCTION billing.ensure_period(p_start date, p_tz text) RETURNS billing.pay_periods
LANGUAGE plpgsql AS $$
DECLARE r billing.pay_periods;
BEGIN
  r := billing.period_row(p_start, p_tz);
  INSERT INTO billing.pay_periods (start_date, tz, starts_at, ends_at)
  VALUES (r.start_date, r.tz, r.starts_at, r.ends_at) ON CONFLICT (start_date) DO NOTHING;
  SELECT * INTO r FROM billing.pay_periods WHERE start_date = p_start;
  RETURN r;
END $$;

-- The rate of a call: the agent's own rate, else the program's, else its default rate.
CREATE FUNCTION billing.rate_at(p_agent bigint, p_program text, p_at timestamptz)
RETURNS numeric(12,4)
LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    (SELECT rate FROM billing.rates WHERE agent_id = p_agent AND program = p_program
        AND effective_from <= p_at ORDER BY effective_from DESC LIMIT 1),
    (SELECT rate FROM billing.rates WHERE agent_id IS NULL AND program = p_program
        AND effective_from <= p_at ORDER BY effective_from DESC LIMIT 1),
    (SELECT default_rate FROM roster.programs WHERE id = p_program))
$$;

-- Every CDR item a period pays, computed from the CDRs as they are now: one talk item per
-- connected call (TALK, or LATE for calls paid after their own period closed) and one SALE item
-- per sale. units / divisor * rate is the item's exact share; a line's amount rounds the sum
-- once, so that per_second pay is round(sum(talk_s) * rate / 60, 2).
-- Set-based, because a period holds millions of CDRs: the rates of each agent (or program) are
-- one row of start times and rates, sorted, and a CDR's rate is the one whose start is the last
-- at or before its answer time (width_bucket), which is what billing.rate_at picks for one call;
-- the joins are on equality alone, so they hash. The period's CDRs come from two index ranges:
-- answered in the period (cdrs_paid_answered) and paid late by it (cdrs_paid_period).
CREATE FUNCTION billing.pay_items_live(p billing.pay_periods)
RETURNS TABLE (agent_id bigint, program text, code text, rate numeric(12,4),
               original_period date, cdr_id text, units numeric, divisor int)
LANGUAGE sql STABLE AS $$
  WITH agent_rates AS (
    SELECT r.agent_id, r.program,
           array_agg(r.effective_from ORDER BY r.effective_from) AS starts,
           array_agg(r.rate ORDER BY r.effective_from) AS rates
    FROM billing.rates r WHERE r.agent_id IS NOT NULL
    GROUP BY r.agent_id, r.program),
  program_rates AS (
    SELECT r.program, array_agg(r.effective_from ORDER BY r.effective_from) AS starts,
           array_agg(r.rate ORDER BY r.effective_from) AS rates
    FROM billing.rates r WHERE r.agent_id IS NULL
    GROUP BY r.program),
  paid AS (
    SELECT c.cdr_id, c.agent_id, c.program, c.answered_at, c.talk_s, c.sale, false AS late,
           NULL::date AS orig
    FROM billing.cdrs c
    WHERE c.answered_at IS NOT NULL AND c.agent_id IS NOT NULL
      AND c.disposition = 'completed' AND c.paid_period IS NULL
      AND c.answered_at >= p.starts_at AND c.answered_at < p.ends_at
    UNION ALL
    SELECT c.cdr_id, c.agent_id, c.program, c.answered_at, c.talk_s, c.sale, true,
           (SELECT o.start_date FROM billing.pay_periods o
             WHERE c.answered_at >= o.starts_at AND c.answered_at < o.ends_at
             ORDER BY o.start_date DESC LIMIT 1)
    FROM billing.cdrs c
    WHERE c.answered_at IS NOT NULL AND c.agent_id IS NOT NULL
      AND c.disposition = 'completed' AND c.paid_period = p.start_date),
  c AS (
    SELECT c.*, pr.rounding, pr.sale_commission,
           coalesce(ar.rates[width_bucket(c.answered_at, ar.starts)],
                    gr.rates[width_bucket(c.answered_at, gr.starts)],
                    pr.default_rate) AS talk_rate
    FROM paid c
    LEFT JOIN roster.programs pr ON pr.id = c.program
    LEFT JOIN agent_rates ar ON ar.agent_id = c.agent_id AND ar.program = c.program
    LEFT JOIN program_rates gr ON gr.program = c.program)
  SELECT c.agent_id, c.program,
         CASE WHEN k.sale THEN 'SALE' WHEN c.late THEN 'LATE' ELSE 'TALK' END,
         CASE WHEN k.sale THEN c.sale_commission ELSE c.talk_rate END,
         c.orig, c.cdr_id,
         CASE WHEN k.sale THEN 1
              WHEN c.rounding = 'per_started_minute' THEN ceil(c.talk_s / 60.0)
              ELSE c.talk_s END,
         CASE WHEN k.sale OR c.rounding = 'per_started_minute' THEN 1 ELSE 60 END
  FROM c JOIN (VALUES (false), (true)) k (sale)
    ON NOT k.sale OR (c.sale AND c.sale_commission > 0)
$$;

-- The lines of a period: the frozen ones once it is closed, else computed live; close_period
-- freezes them with these same sums. The one definition behind export, explain and the period
-- totals.
CREATE FUNCTION billing.pay_lines_for(p_start date, p_tz text)
RETURNS TABLE (agent_id bigint, program text, code text, rate numeric(12,4),
               quantity numeric(14,4), amount numeric(12,2), currency text,
               original_period date, cdr_count integer)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE p billing.pay_periods;
BEGIN
  p := billing.period_row(p_start, p_tz);
  IF p.status = 'closed' THEN
    RETURN QUERY SELECT l.agent_id, l.program, l.code, l.rate, l.quantity, l.amount,
                        l.currency, l.original_period, l.cdr_count
                 FROM billing.pay_lines l WHERE l.period = p_start
                 ORDER BY l.agent_id, l.program, l.original_period NULLS FIRST,
                          array_position(ARRAY['TALK','LATE','SALE'], l.code), l.rate;
    RETURN;
  END IF;
  RETURN QUERY
    SELECT i.agent_id, i.program, i.code, i.rate,
           round(sum(i.units) / min(i.divisor), 4)::numeric(14,4),
           round(sum(i.units) * i.rate / min(i.divisor), 2)::numeric(12,2),
           'USD'::text, i.original_period, count(*)::integer
    FROM billing.pay_items_live(p) i
    GROUP BY i.agent_id, i.program, i.code, i.rate, i.original_period, i.divisor
    ORDER BY 1, 2, 8 NULLS FIRST, array_position(ARRAY['TALK','LATE','SALE'], i.code), 4;
END $$;

-- Each CDR behind each line of a period (frozen or live), with its exact share.
CREATE FUNCTION billing.pay_line_cdrs_for(p_start date, p_tz text)
RETURNS TABLE (agent_id bigint, program text, code text, rate numeric(12,4),
               original_period date, cdr_id text, quantity numeric, share numeric)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE p billing.pay_periods;
BEGIN
  p := billing.period_row(p_start, p_tz);
  IF p.status = 'closed' THEN
    RETURN QUERY
      SELECT x.agent_id, x.program, x.code, x.rate, x.original_period, x.cdr_id, x.quantity,
             x.share
      FROM billing.pay_line_cdrs x
      WHERE x.period = p_start;
    RETURN;
  END IF;
  RETURN QUERY
    SELECT i.agent_id, i.program, i.code, i.rate, i.original_period, i.cdr_id,
           i.units / i.divisor, i.units * i.rate / i.divisor
    FROM billing.pay_items_live(p) i;
END $$;

-- The figures of a period's frozen lines: how many lines, how many CDRs behind them and the
-- total amount. Every CDR a period pays has exactly one TALK or LATE item (a sale adds a SALE
-- item for the same CDR), so the talk lines' cdr_count adds up to the number of distinct CDRs
-- without reading the links.
CREATE FUNCTION billing.frozen_totals(p_start date, OUT lines integer, OUT cdrs integer,
                                      OUT amount numeric(14,2))
LANGUAGE sql STABLE AS $$
  SELECT count(*)::integer,
         coalesce(sum(l.cdr_count) FILTER (WHERE l.code <> 'SALE'), 0)::integer,
         coalesce(sum(l.amount), 0)::numeric(14,2)
  FROM billing.pay_lines l WHERE l.period = p_start
$$;

-- Closes a period: freezes its lines and their CDRs, then marks it closed. Returns what it
-- did: status 'closed' (just now) or 'already_closed', with the number of lines, CDRs and the
-- total amount.
CREATE FUNCTION billing.close_period(p_start date, p_tz text)
RETURNS TABLE (status text, closed_at timestamptz, lines integer, cdrs integer,
               amount numeric(14,2))
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE p billing.pay_periods;
BEGIN
  -- exclusive: no CDR batch is half stored while the period freezes
  PERFORM pg_advisory_xact_lock(billing.pay_lock_key());
  p := billing.period_row(p_start, p_tz);
  IF p.status = 'closed' THEN
    RETURN QUERY SELECT 'already_closed'::text, p.closed_at, t.lines, t.cdrs, t.amount
                 FROM billing.frozen_totals(p_start) t;
    RETURN;
  END IF;
  IF p.ends_at > now() THEN
    RAISE EXCEPTION 'pay period % has not ended yet: it ends at % (%)', p_start,
      to_char(p.ends_at AT TIME ZONE p.tz, 'YYYY-MM-DD HH24:MI'), p.tz
      USING ERRCODE = '55000';
  END IF;
  p := billing.ensure_period(p_start, p_tz);
  -- One pass over the period's CDRs: the items are computed once, frozen as links with their
  -- exact shares, and summed into lines exactly as pay_lines_for sums them live (one rounding
  -- per line, over the unrounded units).
  WITH items AS MATERIALIZED (
    SELECT i.agent_id, i.program, i.code, i.rate, i.original_period, i.cdr_id, i.units,
           i.divisor
    FROM billing.pay_items_live(p) i),
  links AS (
    INSERT INTO billing.pay_line_cdrs (period, agent_id, program, code, rate, original_period,
                                       cdr_id, quantity, share)
    SELECT p_start, i.agent_id, i.program, i.code, i.rate, i.original_period, i.cdr_id,
           i.units / i.divisor, i.units * i.rate / i.divisor
    FROM items i)
  INSERT INTO billing.pay_lines (period, agent_id, program, code, rate, quantity, amount,
                                 currency, original_period, cdr_count)
  SELECT p_start, i.agent_id, i.program, i.code, i.rate,
         round(sum(i.units) / min(i.divisor), 4)::numeric(14,4),
         round(sum(i.units) * i.rate / min(i.divisor), 2)::numeric(12,2),
         'USD', i.original_period, count(*)::integer
  FROM items i
  GROUP BY i.agent_id, i.program, i.code, i.rate, i.original_period, i.divisor;
  UPDATE billing.pay_periods pp SET status = 'closed', closed_at = now()
   WHERE pp.start_date = p_start;
  RETURN QUERY SELECT 'closed'::text, now(), t.lines, t.cdrs, t.amount
               FROM billing.frozen_totals(p_start) t;
END $$;

-- A closed period never changes; neither do the CDRs it paid. A period or a CDR that pay line
-- CDRs name is not deleted (nor given another key) while they do.
CREATE FUNCTION billing.refuse_closed_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE per date;
BEGIN
  IF TG_TABLE_NAME = 'pay_periods' THEN
    IF OLD.status = 'closed' THEN
      RAISE EXCEPTION 'pay period % is closed and cannot change', OLD.start_date
        USING ERRCODE = '55000';
    END IF;
    IF (TG_OP = 'DELETE' OR NEW.start_date <> OLD.start_date)
       AND EXISTS (SELECT 1 FROM billing.pay_line_cdrs x WHERE x.period = OLD.start_date) THEN
      RAISE EXCEPTION 'pay period % is still named by pay line CDRs', OLD.start_date
        USING ERRCODE = '23503';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
  END IF;
  -- A CDR paid late belongs to the period that paid it; any other to every closed period
  -- holding its answer time (zones can make two stored periods overlap by a few hours).
  IF OLD.paid_period IS NOT NULL THEN
    SELECT o.start_date INTO per FROM billing.pay_periods o
     WHERE o.start_date = OLD.paid_period AND o.status = 'closed';
  ELSE
    SELECT o.start_date INTO per FROM billing.pay_periods o
     WHERE OLD.answered_at >= o.starts_at AND OLD.answered_at < o.ends_at
       AND o.status = 'closed'
     ORDER BY o.start_date DESC LIMIT 1;
  END IF;
  IF per IS NOT NULL THEN
    RAISE EXCEPTION 'pay period % is closed: its % cannot change', per, TG_TABLE_NAME
      USING ERRCODE = '55000';
  END IF;
  IF (TG_OP = 'DELETE' OR NEW.cdr_id <> OLD.cdr_id)
     AND EXISTS (SELECT 1 FROM billing.pay_periods o
                  JOIN billing.pay_line_cdrs x ON x.period = o.start_date
                   AND x.cdr_id = OLD.cdr_id) THEN
    RAISE EXCEPTION 'CDR % is behind a pay line: it stays, under its id', OLD.cdr_id
      USING ERRCODE = '23503';
  END IF;
  RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

-- The lines of a closed period and the CDRs behind them never change, a closed period gets no
-- new ones, and every new one names a stored period. A period's close writes millions of
-- links in one statement, so this guard runs once per statement over the rows it touched
-- (transition tables old_rows and new_rows): a statement that touches a row of a closed
-- period, before or after the change, fails whole.
CREATE FUNCTION billing.refuse_closed_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  per date;
  r record;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    SELECT o.start_date INTO per
    FROM (SELECT DISTINCT x.period FROM old_rows x) x
    JOIN billing.pay_periods o ON o.start_date = x.period AND o.status = 'closed'
    ORDER BY o.start_date LIMIT 1;
  END IF;
  IF per IS NULL AND TG_OP IN ('UPDATE', 'INSERT') THEN
    FOR r IN SELECT x.period, o.status
             FROM (SELECT DISTINCT x.period FROM new_rows x) x
             LEFT JOIN billing.pay_periods o ON o.start_date = x.period
             ORDER BY x.period LOOP
      IF r.status IS NULL THEN
        RAISE EXCEPTION 'pay period % is not stored: no % can name it', r.period, TG_TABLE_NAME
          USING ERRCODE = '23503';
      ELSIF r.status = 'closed' THEN
        per := r.period;
        EXIT;
      END IF;
    END LOOP;
  END IF;
  IF per IS NOT NULL THEN
    RAISE EXCEPTION 'pay period % is closed: its % cannot change', per, TG_TABLE_NAME
      USING ERRCODE = '55000';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER pay_periods_frozen BEFORE UPDATE OR DELETE ON billing.pay_periods
  FOR EACH ROW EXECUTE FUNCTION billing.refuse_closed_change();
CREATE TRIGGER pay_lines_frozen_insert AFTER INSERT ON billing.pay_lines
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION billing.refuse_closed_rows();
CREATE TRIGGER pay_lines_frozen_update AFTER UPDATE ON billing.pay_lines
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION billing.refuse_closed_rows();
CREATE TRIGGER pay_lines_frozen_delete AFTER DELETE ON billing.pay_lines
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION billing.refuse_closed_rows();
CREATE TRIGGER pay_line_cdrs_frozen_insert AFTER INSERT ON billing.pay_line_cdrs
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION billing.refuse_closed_rows();
CREATE TRIGGER pay_line_cdrs_frozen_update AFTER UPDATE ON billing.pay_line_cdrs
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION billing.refuse_closed_rows();
CREATE TRIGGER pay_line_cdrs_frozen_delete AFTER DELETE ON billing.pay_line_cdrs
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION billing.refuse_closed_rows();
CREATE TRIGGER cdrs_frozen BEFORE UPDATE OR DELETE ON billing.cdrs
  FOR EACH ROW WHEN (OLD.answered_at IS NOT NULL)
  EXECUTE FUNCTION billing.refuse_closed_change();

-- Stores a batch of CDRs (the JSON array billing builds: one object per CDR, with its payload
-- hash and, when billing refused it, the reason) and returns one row per CDR: outcome 'stored'
-- (also for an identical resend), 'quarantined' (same id stored before with other content)
-- or 'refused' (invalid), with the reason. A CDR answered in a period that has already closed
-- is stored with paid_period = the open period containing now(), which pays it as LATE.
CREATE FUNCTION billing.ingest_cdrs(batch jsonb)
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
  -- identical resend a no-op.
  RETURN QUERY
  WITH input AS (
    SELECT DISTINCT ON (r.cdr_id) r.*,
           'epoch'::timestamptz + r.answered_us * interval '1 microsecond' AS answered_at
    FROM jsonb_to_recordset(batch) AS r(
      cdr_id text, call_id text, program text, agent_id bigint, arrived_us bigint,
      offered_us bigint, answered_us bigint, ended_us bigint, talk_s bigint,
      disposition text, sale boolean, review boolean, resolved boolean, survey_score smallint,
      offers int, hash text, reason text)
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
      resolved, survey_score, paid_period)
    SELECT k.cdr_id, k.call_id, k.program, k.agent_id,
      'epoch'::timestamptz + k.arrived_us * interval '1 microsecond',
      'epoch'::timestamptz + k.offered_us * interval '1 microsecond',
      k.answered_at,
      'epoch'::timestamptz + k.ended_us * interval '1 microsecond',
      k.talk_s, k.disposition, k.sale, k.review, k.offers, decode(k.hash, 'hex'),
      k.resolved, k.survey_score, k.paid_period
    FROM checked k WHERE k.why IS NULL
    ON CONFLICT (cdr_id) DO NOTHING RETURNING 1),
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

-- One cell of a CSV file: a cell that a spreadsheet would run as a formula (= + - @, tab, CR
-- first) gets a leading apostrophe; a cell with a comma, quote, CR or LF is quoted (RFC 4180).
CREATE FUNCTION billing.csv_cell(v text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN w ~ '[",\r\n]' THEN '"' || replace(w, '"', '""') || '"' ELSE w END
  FROM (SELECT CASE WHEN coalesce(v, '') ~ '^[=+\-@\t\r]' THEN '''' || v
                    ELSE coalesce(v, '') END AS w) x
$$;

CREATE FUNCTION billing.csv_line(cells text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(string_agg(billing.csv_cell(c), ',' ORDER BY n), '')
  FROM unnest(cells) WITH ORDINALITY AS u(c, n)
$$;

-- Names split for payroll products that want first and last names: the last word is the
-- last name.
CREATE FUNCTION billing.first_name(n text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN btrim(n) ~ '\s' THEN regexp_replace(btrim(n), '\s+\S+$', '') ELSE btrim(n) END
$$;
CREATE FUNCTION billing.last_name(n text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN btrim(n) ~ '\s' THEN substring(btrim(n) FROM '(\S+)$') ELSE '' END
$$;

-- A period's payroll file, one text line per row, header first. format: csv (ringbid's own),
-- adp, paychex or gusto (docs/payroll.md gives the layouts). The company code of adp and
-- paychex files comes from the setting ringbid.payroll_company.
CREATE FUNCTION billing.payroll_export(p_start date, p_tz text, p_format text)
RETURNS SETOF text
LANGUAGE plpgsql STABLE AS $$
DECLARE
  p billing.pay_periods;
  company text := coalesce(current_setting('ringbid.payroll_company', true), '');
  batch_id text;
BEGIN
  p := billing.period_row(p_start, p_tz);
  batch_id := 'RB' || to_char(p_start, 'YYMMDD');
  IF p_format = 'csv' THEN
    RETURN NEXT billing.csv_line(ARRAY['employee_id', 'name', 'period_start', 'period_end',
      'earnings_code', 'quantity', 'rate', 'amount', 'currency']);
    RETURN QUERY
      SELECT billing.csv_line(ARRAY[l.agent_id::text, a.name, p_start::text,
               (p_start + 6)::text, l.code, l.quantity::text, l.rate::text,
               to_char(l.amount, 'FM9999999999990.00'), l.currency])
      FROM billing.pay_lines_for(p_start, p_tz) l
      LEFT JOIN roster.agents a ON a.id = l.agent_id
      ORDER BY l.agent_id, l.program, l.original_period NULLS FIRST,
               array_position(ARRAY['TALK','LATE','SALE'], l.code), l.rate;
  ELSIF p_format = 'adp' THEN
    -- ADP Workforce Now payroll batch import (EPI): one row per pay line, paid as an
    -- earnings amount (per-minute pay is not hourly pay), hours as memo.
    RETURN NEXT billing.csv_line(ARRAY['Co Code', 'Batch ID', 'File #', 'Reg Hours',
      'O/T Hours', 'Hours 3 Code', 'Hours 3 Amount', 'Earnings 3 Code',
      'Earnings 3 Amount']);
    RETURN QUERY
      SELECT billing.csv_line(ARRAY[company, batch_id, l.agent_id::text, '', '',
               CASE WHEN l.code = 'SALE' THEN '' ELSE 'TLK' END,
               CASE WHEN l.code = 'SALE' THEN '' ELSE to_char(round(l.quantity / 60, 2),
                                                             'FM9999999990.00') END,
               CASE l.code WHEN 'TALK' THEN 'TLK' WHEN 'SALE' THEN 'COM' ELSE 'LAT' END,
               to_char(l.amount, 'FM9999999999990.00')])
      FROM billing.pay_lines_for(p_start, p_tz) l
      ORDER BY l.agent_id, l.program, l.original_period NULLS FIRST,
               array_position(ARRAY['TALK','LATE','SALE'], l.code), l.rate;
  ELSIF p_format = 'paychex' THEN
    -- Paychex Flex payroll import (SPI): one row per pay line.
    RETURN NEXT billing.csv_line(ARRAY['Client ID', 'Worker ID', 'Org', 'Job Number',
      'Pay Component', 'Rate', 'Rate Number', 'Hours', 'Units', 'Line Date', 'Amount',
      'Check Seq Number', 'Override State', 'Override Local', 'Override Local Jurisdiction',
      'Labor Assignment']);
    RETURN QUERY
      SELECT billing.csv_line(ARRAY[company, l.agent_id::text, '', l.program,
               CASE l.code WHEN 'TALK' THEN 'Talk Time' WHEN 'SALE' THEN 'Commission'
                           ELSE 'Late Talk Time' END,
               l.rate::text, '', '', l.quantity::text, to_char(p_start + 6, 'MM/DD/YYYY'),
               to_char(l.amount, 'FM9999999999990.00'), '', '', '', '', ''])
      FROM billing.pay_lines_for(p_start, p_tz) l
      ORDER BY l.agent_id, l.program, l.original_period NULLS FIRST,
               array_position(ARRAY['TALK','LATE','SALE'], l.code), l.rate;
  ELSIF p_format = 'gusto' THEN
    -- Gusto's payroll CSV upload: employees are matched by first_name and last_name, an
    -- employee with several pay rates by title (the job), and custom earning types cannot be
    -- uploaded. So talk pay travels as regular_hours of a job per program whose hourly rate in
    -- Gusto is 60 times the per-minute rate (title program@rate where an agent had several
    -- rates in one program that period), sale commissions as commission, and ringbid's own
    -- amount in personal_note for reconciliation.
    RETURN NEXT billing.csv_line(ARRAY['first_name', 'last_name', 'title', 'regular_hours',
      'commission', 'personal_note']);
    RETURN QUERY
      WITH l AS (SELECT * FROM billing.pay_lines_for(p_start, p_tz)),
      talk AS (
        SELECT agent_id, program, rate, sum(quantity) AS minutes, sum(amount) AS amount
        FROM l WHERE code <> 'SALE' GROUP BY agent_id, program, rate),
      rates AS (SELECT agent_id, program, count(*) AS n FROM talk GROUP BY agent_id, program),
      sale AS (
        SELECT agent_id, program, sum(amount) AS amount
        FROM l WHERE code = 'SALE' GROUP BY agent_id, program),
      r AS (
        SELECT coalesce(t.agent_id, s.agent_id) AS agent_id,
               coalesce(t.program, s.program) AS program, t.rate, t.minutes,
               t.amount AS talk_amount,
               CASE WHEN row_number() OVER (PARTITION BY coalesce(t.agent_id, s.agent_id),
                                            coalesce(t.program, s.program)
                                            ORDER BY t.rate) = 1
                    THEN s.amount END AS commission
        FROM talk t FULL JOIN sale s ON s.agent_id = t.agent_id AND s.program = t.program)
      SELECT billing.csv_line(ARRAY[billing.first_name(coalesce(a.name, '')),
               billing.last_name(coalesce(a.name, '')),
               CASE WHEN coalesce(n.n, 1) > 1 THEN r.program || '@' || r.rate::text
                    ELSE r.program END,
               to_char(round(r.minutes / 60, 6), 'FM9999999990.000000'),
               to_char(r.commission, 'FM9999999999990.00'),
               CASE WHEN r.talk_amount IS NOT NULL
                    THEN 'ringbid ' || r.agent_id::text || ': talk pay '
                         || to_char(r.talk_amount, 'FM9999999999990.00') || ' at '
                         || r.rate::text || ' per minute' END])
      FROM r
      LEFT JOIN rates n ON n.agent_id = r.agent_id AND n.program = r.program
      LEFT JOIN roster.agents a ON a.id = r.agent_id
      ORDER BY r.agent_id, r.program, r.rate NULLS LAST;
  ELSE
    RAISE EXCEPTION 'unknown payroll format "%" (csv, adp, paychex, gusto)', p_format
      USING ERRCODE = '22023';
  END IF;
END $$;
