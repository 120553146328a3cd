-- Who may see money: API tokens with roles, agents' sessions as presence holds them, and the
-- agent's own earnings (today and the current pay period).
CREATE SCHEMA IF NOT EXISTS billing;
CREATE SCHEMA IF NOT EXISTS presence;

-- Tokens for billing's HTTP routes. Only the BLAKE2b-256 of a token is kept (rb_token_hash):
-- the token itself is shown once, when it is made. An agent token names its agent.
CREATE TABLE billing.api_tokens (
	id          bigserial PRIMARY KEY,
	role        text NOT NULL CHECK (role IN ('finance', 'supervisor', 'agent')),
	agent_id    bigint CHECK (agent_id IS NULL OR agent_id > 0),
	name        text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
	token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
	created_at  timestamptz NOT NULL DEFAULT now(),
	expires_at  timestamptz,              -- NULL: does not expire
	revoked_at  timestamptz,
	CHECK ((role = 'agent') = (agent_id IS NOT NULL)),
	CHECK (expires_at IS NULL OR expires_at > created_at)
);

-- Agents' session tokens, written by presence on login and removed on logout, replacement,
-- suspension and expiry, so that billing recognises a logged-in agent (role agent).
CREATE TABLE presence.sessions (
	token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
	agent_id    bigint NOT NULL CHECK (agent_id > 0),
	created_at  timestamptz NOT NULL DEFAULT now(),
	expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_agent ON presence.sessions (agent_id);

-- The one place a presented token becomes a role: API tokens first, then live agent sessions.
-- Returns no row for an unknown, expired or revoked token (and for a suspended agent's session).
CREATE FUNCTION billing.token_role(hash bytea)
RETURNS TABLE (role text, agent_id bigint, token_id bigint, name text)
LANGUAGE sql STABLE AS $$
	SELECT t.role, t.agent_id, t.id, t.name
	FROM billing.api_tokens t
	WHERE t.token_hash = hash AND t.revoked_at IS NULL
	  AND (t.expires_at IS NULL OR t.expires_at > now())
	  AND (t.agent_id IS NULL OR EXISTS (
	        SELECT 1 FROM roster.agents a WHERE a.id = t.agent_id AND a.status = 'active'))
	UNION ALL
	SELECT 'agent', s.agent_id, NULL::bigint, ''
	FROM presence.sessions s
	JOIN roster.agents a ON a.id = s.agent_id AND a.status = 'active'
	WHERE s.token_hash = hash AND s.expires_at > now()
	LIMIT 1
$$;

-- The agent's own figures: today (the local day in tz) and the pay period that holds today.
-- The period's figures follow billing.pay_items_live/pay_lines_for: the calls the period pays
-- (answered in it, or arrived late and paid by it) and the agent's share of the period's pay
-- lines, so the amount matches the payroll export to the cent. Today's amount is per-second pay
-- of today's connected calls, each at the rate it earns (billing.rate_at), rounded once.
CREATE FUNCTION billing.agent_earnings(agent bigint, tz text)
RETURNS TABLE (currency text, period_start date, period_end date,
               today_calls bigint, today_talk_s bigint, today_amount numeric,
               period_calls bigint, period_talk_s bigint, period_amount numeric)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
	p billing.pay_periods;
	local_today date;
	d_from timestamptz;
	d_to timestamptz;
BEGIN
	IF agent IS NULL OR agent <= 0 THEN
		RAISE EXCEPTION 'agent id must be positive' USING ERRCODE = '22023';
	END IF;
	PERFORM billing.check_tz(tz);
	local_today := (now() AT TIME ZONE tz)::date;
	d_from := local_today::timestamp AT TIME ZONE tz;
	d_to := (local_today + 1)::timestamp AT TIME ZONE tz;
	p := billing.period_row(billing.period_start_of(now(), tz), tz);

	RETURN QUERY
	WITH lines AS (
		SELECT l.amount, l.currency
		FROM billing.pay_lines_for(p.start_date, tz) l
		WHERE l.agent_id = agent
	), paid AS (
		SELECT c.talk_s
		FROM billing.cdrs c
		WHERE c.agent_id = agent AND c.disposition = 'completed' AND c.answered_at IS NOT NULL
		  AND ((c.paid_period IS NULL AND c.answered_at >= p.starts_at
		        AND c.answered_at < p.ends_at)
		       OR c.paid_period = p.start_date)
	), today AS (
		SELECT c.talk_s, billing.rate_at(c.agent_id, c.program, c.answered_at) AS rate
		FROM billing.cdrs c
		WHERE c.agent_id = agent AND c.disposition = 'completed'
		  AND c.answered_at >= d_from AND c.answered_at < d_to
	)
	SELECT coalesce((SELECT min(l.currency) FROM lines l), 'USD'),
	       p.start_date,
	       p.start_date + 6,
	       (SELECT count(*) FROM today),
	       (SELECT coalesce(sum(t.talk_s), 0)::bigint FROM today t),
	       (SELECT round(coalesce(sum(t.talk_s * coalesce(t.rate, 0)), 0) / 60, 2) FROM today t),
	       (SELECT count(*) FROM paid),
	       (SELECT coalesce(sum(x.talk_s), 0)::bigint FROM paid x),
	       (SELECT coalesce(sum(l.amount), 0) FROM lines l);
END
$$;
