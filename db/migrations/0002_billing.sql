-- Billing owns CDRs: one row per ended call, stored once by id; conflicting copies quarantined.
CREATE SCHEMA IF NOT EXISTS billing;

CREATE TABLE billing.cdrs (
	cdr_id       text PRIMARY KEY,
	call_id      text NOT NULL,
	program      text NOT NULL,
	agent_id     bigint,                  -- NULL: the call never reached an agent
	arrived_at   timestamptz NOT NULL,
	offered_at   timestamptz,
	answered_at  timestamptz,
	ended_at     timestamptz NOT NULL,
	talk_s       bigint NOT NULL CHECK (talk_s >= 0),
	disposition  text NOT NULL CHECK (disposition IN ('completed', 'abandoned', 'overflow')),
	sale         boolean NOT NULL DEFAULT false,
	review       boolean NOT NULL DEFAULT false,
	offers       integer NOT NULL DEFAULT 0 CHECK (offers >= 0),
	payload_hash bytea NOT NULL,          -- BLAKE2b of the CDR as the broker sent it
	received_at  timestamptz NOT NULL DEFAULT now(),
	CHECK (ended_at >= arrived_at),
	CHECK (answered_at IS NULL OR (answered_at >= arrived_at AND ended_at >= answered_at)),
	CHECK ((disposition = 'completed') = (answered_at IS NOT NULL AND agent_id IS NOT NULL))
);
CREATE INDEX cdrs_agent_answered ON billing.cdrs (agent_id, answered_at) WHERE answered_at IS NOT NULL;
CREATE INDEX cdrs_program_answered ON billing.cdrs (program, answered_at);

-- A CDR that could not be stored as sent: refused (invalid) or conflicting (same id, other
-- content). Kept with the reason so that operations can look at it; never silently dropped.
CREATE TABLE billing.cdr_quarantine (
	id           bigserial PRIMARY KEY,
	cdr_id       text NOT NULL,
	reason       text NOT NULL,
	payload_hash bytea NOT NULL,
	payload      jsonb NOT NULL,
	received_at  timestamptz NOT NULL DEFAULT now(),
	-- a resent copy of the same refused CDR is recorded once
	UNIQUE (cdr_id, payload_hash)
);
