-- Closing a pay period before it ends, when finance asks for it explicitly.
-- Applied by `ringbid db migrate` inside one transaction; no transaction control here.
--
-- billing.close_period keeps its signature (and so the grants 0006 gave it); a caller that
-- sets ringbid.close_early to 'on' for its transaction may close the current week early.
-- billing.ingest_cdrs then pays a call answered later in that week in the first open period
-- after it (the week closed early is no longer "the open period containing now").

CREATE OR REPLACE FUNCTION billing.close_period(p_start date, p_tz text)
RETURNS TABLE (status text, closed_at timestamptz, lines integer, cdrs integer,
               amount numeric(14,2))
LANGUAGE plpgsql
-- As 0006 made it: finance closes periods without the right to write billing's tables.
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
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
  -- Closing early is finance's explicit choice (an off-cycle run, a demo): the caller sets
  -- ringbid.close_early for its transaction. Calls answered later in the same week then
  -- arrive in a closed period and are paid in the next open one on LATE lines (DESIGN §5).
  IF p.ends_at > now()
     AND coalesce(current_setting('ringbid.close_early', true), '') IS DISTINCT FROM 'on' THEN
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
    -- The first period from now on that is still open: normally the current week, the next
    -- one when finance closed the current week early.
    late := billing.period_start_of(now(), tz);
    WHILE EXISTS (SELECT 1 FROM billing.pay_periods o
                   WHERE o.start_date = late AND o.status = 'closed') LOOP
      late := late + 7;
    END LOOP;
    late := (billing.ensure_period(late, tz)).start_date;
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
