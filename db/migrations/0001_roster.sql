-- The roster: client programs (queues) and the agents who take their calls.
-- Applied by `ringbid db migrate` inside one transaction; no transaction control here.

CREATE SCHEMA roster;

-- Skills and program ids share the wire format of ids (rb_valid_id): 1-64 of [A-Za-z0-9._:-].
CREATE FUNCTION roster.valid_skills(s text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT coalesce(array_ndims(s), 1) = 1
     AND coalesce(cardinality(s), 0) <= 32
     AND NOT EXISTS (SELECT 1 FROM unnest(s) AS k
                      WHERE k IS NULL OR k !~ '^[A-Za-z0-9._:-]{1,64}$')
$$;

CREATE TABLE roster.programs (
  id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._:-]{1,64}$'),
  name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  required_skills  text[] NOT NULL DEFAULT '{}' CHECK (roster.valid_skills(required_skills)),
  ring_timeout_s   int NOT NULL DEFAULT 15 CHECK (ring_timeout_s BETWEEN 1 AND 300),
  wrap_up_s        int NOT NULL DEFAULT 30 CHECK (wrap_up_s BETWEEN 0 AND 3600),
  max_wait_s       int NOT NULL DEFAULT 600 CHECK (max_wait_s BETWEEN 1 AND 86400),
  max_talk_s       int NOT NULL DEFAULT 7200 CHECK (max_talk_s BETWEEN 1 AND 86400),
  default_rate     numeric(12,4) NOT NULL DEFAULT 0.2500 CHECK (default_rate >= 0),
  rounding         text NOT NULL DEFAULT 'per_second'
                     CHECK (rounding IN ('per_second', 'per_started_minute')),
  sale_commission  numeric(12,4) NOT NULL DEFAULT 0 CHECK (sale_commission >= 0),
  priority         int NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE roster.agents (
  id           bigint PRIMARY KEY CHECK (id > 0),
  name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
  -- argon2id string from rb_secret_hash; never the secret itself.
  secret_hash  text NOT NULL CHECK (secret_hash LIKE '$argon2id$%'),
  skills       text[] NOT NULL DEFAULT '{}' CHECK (roster.valid_skills(skills)),
  score        numeric(5,2) NOT NULL DEFAULT 50 CHECK (score BETWEEN 0 AND 100),
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION roster.touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

CREATE TRIGGER programs_touch BEFORE UPDATE ON roster.programs
  FOR EACH ROW EXECUTE FUNCTION roster.touch();
CREATE TRIGGER agents_touch BEFORE UPDATE ON roster.agents
  FOR EACH ROW EXECUTE FUNCTION roster.touch();

-- Services LISTEN on ringbid_roster and reload the one row named by the payload.
-- A notification is delivered only when the transaction commits, and once per distinct payload.
CREATE FUNCTION roster.notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  kind text := CASE TG_TABLE_NAME WHEN 'agents' THEN 'agent' ELSE 'program' END;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    PERFORM pg_notify('ringbid_roster', kind || ':' || OLD.id::text);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    PERFORM pg_notify('ringbid_roster', kind || ':' || NEW.id::text);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER programs_notify AFTER INSERT OR UPDATE OR DELETE ON roster.programs
  FOR EACH ROW EXECUTE FUNCTION roster.notify_change();
CREATE TRIGGER agents_notify AFTER INSERT OR UPDATE OR DELETE ON roster.agents
  FOR EACH ROW EXECUTE FUNCTION roster.notify_change();
