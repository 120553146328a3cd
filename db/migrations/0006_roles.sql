-- Database roles: each service, supervisors and finance hold only the privileges they need.
-- Applied by `ringbid db migrate` inside one transaction; no transaction control here.
--
-- Group roles (NOLOGIN; logins are made members of them, see docs/security-access.md):
--   ringbid_broker      reads programs and the agents' public columns (routing, wallboard)
--   ringbid_presence    reads agents with their secret hashes (login) and the routing scores,
--                       keeps presence.sessions, and reads one agent's earnings through
--                       billing.agent_earnings
--   ringbid_billing     stores CDRs, offers, outcomes and quarantined CDRs, opens pay periods,
--                       recomputes scores (billing.agent_scores, roster.agents.score), answers
--                       finance's downloads and tokens; never changes a stored CDR or pay line
--   ringbid_supervisor  keeps programs, agents and rates; reads CDRs, outcomes and scores;
--                       no pay period, pay line, payroll export or token
--   ringbid_finance     reads CDRs, rates, pay periods, pay lines and their CDRs; closes a
--                       period only through billing.close_period; writes nothing else
--   ringbid_agent       nothing: agents reach their own session and earnings only through
--                       presence, which asks for the session's own agent
-- The auction never touches the database and has no role. The login that runs migrations owns
-- every object and keeps every privilege; run every migration as that same login, since the
-- default privileges below belong to it.
--
-- What a new migration must do:
--   * a new table or view: GRANT exactly what each role's SQL does on it (SELECT, INSERT,
--     UPDATE, DELETE; column lists where a role must not see a column, as roster.agents does
--     for secret_hash) and USAGE on its sequences to the roles that insert. Billing's tables
--     are readable by ringbid_billing, and presence's by ringbid_presence, by default; nothing
--     else is. tests/integration/test_roles.py holds the expected privileges of every table
--     and fails on a table it does not know.
--   * a new column that a role reads where that role has column privileges only
--     (roster.agents): GRANT SELECT (column) to it.
--   * a new function: nothing while it is SECURITY INVOKER (the caller's own privileges
--     apply); a SECURITY DEFINER function gets SET search_path = pg_catalog, pg_temp,
--     REVOKE EXECUTE ... FROM PUBLIC and an EXECUTE grant to the roles that call it.
--   * CREATE OR REPLACE of billing.agent_earnings or billing.close_period: restate
--     SECURITY DEFINER and SET search_path = pg_catalog, pg_temp (a replacement drops both;
--     the grants stay).

DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['ringbid_broker', 'ringbid_presence', 'ringbid_billing',
                           'ringbid_supervisor', 'ringbid_finance', 'ringbid_agent'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      BEGIN
        EXECUTE format('CREATE ROLE %I NOLOGIN', r);
      EXCEPTION WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'cannot create role %: the migrating login needs CREATEROLE', r
          USING ERRCODE = '42501',
                HINT = 'or have an administrator create the NOLOGIN roles ringbid_broker, '
                       'ringbid_presence, ringbid_billing, ringbid_supervisor, '
                       'ringbid_finance and ringbid_agent first';
      END;
    END IF;
  END LOOP;
END $$;

-- Only ringbid's roles (and the owner) may connect. The database's owner decides that; a
-- migrating login that does not own the database leaves it to the administrator.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_database d
              WHERE d.datname = current_database() AND pg_has_role(d.datdba, 'USAGE')) THEN
    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO ringbid_broker, ringbid_presence, '
                   'ringbid_billing, ringbid_supervisor, ringbid_finance', current_database());
  ELSE
    RAISE NOTICE 'database % is not owned by the migrating login: grant CONNECT on it to '
                 'ringbid''s roles yourself', current_database();
  END IF;
END $$;

-- Nobody but the roles below reaches ringbid's schemas.
REVOKE ALL ON SCHEMA roster, billing, presence FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA roster, billing, presence FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA roster, billing, presence FROM PUBLIC;

-- The two functions that do what their caller could not do itself. Each runs with its owner's
-- rights, so its search path is pinned and only the named roles may call it.
-- billing.agent_earnings: presence (and billing's /me/earnings) show one agent its own pay,
-- which needs pay lines, CDRs and rates that neither may read itself.
ALTER FUNCTION billing.agent_earnings(bigint, text)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION billing.agent_earnings(bigint, text) FROM PUBLIC;
-- billing.close_period: finance freezes a period's pay lines without the right to write any
-- billing table.
ALTER FUNCTION billing.close_period(date, text)
  SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION billing.close_period(date, text) FROM PUBLIC;

-- ringbid_broker ---------------------------------------------------------------------------
GRANT USAGE ON SCHEMA roster TO ringbid_broker;
GRANT SELECT ON roster.programs TO ringbid_broker;
GRANT SELECT (id, name, status, skills, score) ON roster.agents TO ringbid_broker;

-- ringbid_presence -------------------------------------------------------------------------
GRANT USAGE ON SCHEMA roster, billing, presence TO ringbid_presence;
GRANT SELECT (id, name, status, secret_hash, skills, score) ON roster.agents
  TO ringbid_presence;
GRANT SELECT ON billing.presence_scores TO ringbid_presence;
GRANT SELECT, INSERT, DELETE ON presence.sessions TO ringbid_presence;
GRANT EXECUTE ON FUNCTION billing.agent_earnings(bigint, text) TO ringbid_presence;

-- ringbid_billing --------------------------------------------------------------------------
GRANT USAGE ON SCHEMA roster, billing, presence TO ringbid_billing;
GRANT SELECT ON roster.programs TO ringbid_billing;
GRANT SELECT (id, name, status, skills, score, score_pinned) ON roster.agents
  TO ringbid_billing;
-- the score recompute writes the overall score of unpinned agents, nothing else of the roster
GRANT UPDATE (score) ON roster.agents TO ringbid_billing;
GRANT SELECT, INSERT ON billing.cdrs, billing.cdr_offers, billing.outcomes TO ringbid_billing;
-- (an INSERT ... ON CONFLICT reads the conflict columns: SELECT too)
GRANT SELECT, INSERT ON billing.cdr_quarantine TO ringbid_billing;
GRANT USAGE ON SEQUENCE billing.cdr_quarantine_id_seq TO ringbid_billing;
-- ingestion opens the period that pays a late CDR; closing is finance's
GRANT SELECT, INSERT ON billing.pay_periods TO ringbid_billing;
GRANT SELECT ON billing.pay_lines, billing.rates, billing.api_tokens TO ringbid_billing;
GRANT SELECT, INSERT, UPDATE, DELETE ON billing.agent_scores TO ringbid_billing;
GRANT SELECT ON presence.sessions TO ringbid_billing;
GRANT EXECUTE ON FUNCTION billing.agent_earnings(bigint, text) TO ringbid_billing;

-- ringbid_supervisor -----------------------------------------------------------------------
GRANT USAGE ON SCHEMA roster, billing TO ringbid_supervisor;
GRANT SELECT, INSERT, UPDATE, DELETE ON roster.programs TO ringbid_supervisor;
-- a supervisor sets an agent's secret but never reads the hash back; xmax tells `ringbid agent
-- import` an added agent from an updated one
GRANT SELECT (id, name, status, skills, score, score_pinned, created_at, updated_at, xmax)
  ON roster.agents TO ringbid_supervisor;
GRANT INSERT, UPDATE, DELETE ON roster.agents TO ringbid_supervisor;
GRANT SELECT, INSERT, UPDATE ON billing.rates TO ringbid_supervisor;
GRANT USAGE ON SEQUENCE billing.rates_id_seq TO ringbid_supervisor;
GRANT SELECT ON billing.cdrs, billing.cdr_offers, billing.outcomes, billing.agent_scores,
  billing.presence_scores TO ringbid_supervisor;

-- ringbid_finance --------------------------------------------------------------------------
GRANT USAGE ON SCHEMA roster, billing TO ringbid_finance;
GRANT SELECT ON roster.programs TO ringbid_finance;
GRANT SELECT (id, name, status) ON roster.agents TO ringbid_finance;
GRANT SELECT ON billing.cdrs, billing.rates, billing.pay_periods, billing.pay_lines,
  billing.pay_line_cdrs TO ringbid_finance;
GRANT EXECUTE ON FUNCTION billing.close_period(date, text) TO ringbid_finance;

-- ringbid_agent: no grant at all.

-- Tables made by later migrations: each service reads its own schema's new tables; every other
-- privilege is granted by the migration that makes the table.
ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT SELECT ON TABLES TO ringbid_billing;
ALTER DEFAULT PRIVILEGES IN SCHEMA presence GRANT SELECT ON TABLES TO ringbid_presence;
