// Agents' sessions kept in presence.sessions for billing, and an agent's own earnings from SQL.
#include "money.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_err.h"
#include "rb_log.h"
#include "rb_time.h"

int presence_money_init(presence_money *m, rb_db *db, presence_clients *clients, const char *tz)
{
	memset(m, 0, sizeof(*m));
	if (tz == NULL || tz[0] == '\0' || strlen(tz) > PRESENCE_TZ_MAX)
		return RB_EINVAL;
	m->db = db;
	m->clients = clients;
	strcpy(m->tz, tz);
	m->started_us = rb_now_us();
	return 0;
}

static void on_written(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	(void)db;
	(void)res;
	const char *what = arg;
	if (err != 0 && err != RB_ECLOSED)
		rb_logf(RB_LOG_WARN, NULL, 0, "%s not written: %s (sqlstate %s)", what,
		        rb_err_str(err), sqlstate ? sqlstate : "");
}

void presence_money_db_up(presence_money *m)
{
	char since[24];
	if (m->db == NULL || m->swept || !rb_db_connected(m->db))
		return;
	snprintf(since, sizeof(since), "%" PRIu64, m->started_us);
	const char *params[1] = {since};
	if (rb_db_query(m->db,
	                "DELETE FROM presence.sessions WHERE created_at <"
	                " 'epoch'::timestamptz + $1::bigint * interval '1 microsecond'",
	                1, params, on_written, "session sweep") == 0)
		m->swept = true;
}

void presence_money_session(presence_money *m, uint64_t agent_id, const uint8_t hash[RB_TOKEN_HASH],
                            uint64_t expires_us, bool open)
{
	char hex[3 + 2 * RB_TOKEN_HASH] = "\\x", id[24], exp[24];
	int rv;

	if (m->db == NULL)
		return;
	for (int i = 0; i < RB_TOKEN_HASH; i++)
		snprintf(hex + 2 + 2 * i, 3, "%02x", hash[i]);
	if (open) {
		snprintf(id, sizeof(id), "%" PRIu64, agent_id);
		snprintf(exp, sizeof(exp), "%" PRIu64, expires_us);
		const char *params[3] = {hex, id, exp};
		rv = rb_db_query(m->db,
		                 "INSERT INTO presence.sessions (token_hash, agent_id, expires_at)"
		                 " VALUES ($1::bytea, $2::bigint,"
		                 " 'epoch'::timestamptz + $3::bigint * interval '1 microsecond')"
		                 " ON CONFLICT (token_hash) DO NOTHING",
		                 3, params, on_written, "session");
	} else {
		const char *params[1] = {hex};
		rv = rb_db_query(m->db,
		                 "DELETE FROM presence.sessions WHERE token_hash = $1::bytea", 1,
		                 params, on_written, "session end");
	}
	if (rv != 0)
		rb_logf(RB_LOG_WARN, NULL, agent_id, "session %s not queued: %s",
		        open ? "start" : "end", rb_err_str(rv));
}

void presence_money_janitor(presence_money *m)
{
	presence_money_db_up(m);
	if (m->db == NULL || !rb_db_connected(m->db) || rb_db_pending(m->db) > 100)
		return;
	rb_db_query(m->db, "DELETE FROM presence.sessions WHERE expires_at <= now()", 0, NULL,
	            on_written, "session expiry");
}

typedef struct earnings_job {
	presence_money *m;
	uint32_t pipe;
	uint64_t seq;
	uint64_t agent_id;
} earnings_job;

static void on_earnings(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	earnings_job *j = arg;
	(void)db;

	if (err == RB_ECLOSED || j->m->clients == NULL) {
		free(j);
		return;
	}
	if (err != 0 || PQntuples(res) != 1 || PQnfields(res) != 9) {
		rb_logf(RB_LOG_WARN, NULL, j->agent_id, "earnings query failed: %s (sqlstate %s)",
		        rb_err_str(err ? err : RB_EDB), sqlstate ? sqlstate : "");
		presence_clients_earnings_failed(j->m->clients, j->pipe, j->seq, j->agent_id,
		                                 RB_EBUSY, "earnings are not available right now");
		free(j);
		return;
	}
	Ringbid__Earnings e = RINGBID__EARNINGS__INIT;
	e.currency = PQgetvalue(res, 0, 0);
	e.period_start = PQgetvalue(res, 0, 1);
	e.period_end = PQgetvalue(res, 0, 2);
	e.today_calls = (uint32_t)strtoul(PQgetvalue(res, 0, 3), NULL, 10);
	e.today_talk_s = strtoull(PQgetvalue(res, 0, 4), NULL, 10);
	e.today_amount = PQgetvalue(res, 0, 5);
	e.period_calls = (uint32_t)strtoul(PQgetvalue(res, 0, 6), NULL, 10);
	e.period_talk_s = strtoull(PQgetvalue(res, 0, 7), NULL, 10);
	e.period_amount = PQgetvalue(res, 0, 8);
	Ringbid__AgentMsg msg = RINGBID__AGENT_MSG__INIT;
	msg.seq = j->seq;
	msg.body_case = RINGBID__AGENT_MSG__BODY_EARNINGS;
	msg.earnings = &e;
	presence_clients_send(j->m->clients, j->pipe, &msg);
	free(j);
}

void presence_money_earnings(presence_money *m, uint32_t pipe, uint64_t seq, uint64_t agent_id)
{
	earnings_job *j = NULL;
	char id[24];

	if (m->db == NULL || !rb_db_connected(m->db) || (j = calloc(1, sizeof(*j))) == NULL) {
		presence_clients_earnings_failed(m->clients, pipe, seq, agent_id, RB_EBUSY,
		                                 "earnings are not available right now");
		return;
	}
	j->m = m;
	j->pipe = pipe;
	j->seq = seq;
	j->agent_id = agent_id;
	snprintf(id, sizeof(id), "%" PRIu64, agent_id);
	const char *params[2] = {id, m->tz};
	int rv = rb_db_query(m->db,
	                     "SELECT currency, period_start::text, period_end::text, today_calls,"
	                     " today_talk_s, to_char(today_amount, 'FM999999999990.00'),"
	                     " period_calls, period_talk_s,"
	                     " to_char(period_amount, 'FM999999999990.00')"
	                     " FROM billing.agent_earnings($1::bigint, $2)",
	                     2, params, on_earnings, j);
	if (rv != 0) {
		free(j);
		presence_clients_earnings_failed(m->clients, pipe, seq, agent_id, RB_EBUSY,
		                                 "earnings are not available right now");
	}
}
