// ringbid-presence: agents' sessions, the agent state machine, and the one link to each
// agent's client; tells the auction who is available and the broker how offers went.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "clients.h"
#include "links.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_svc.h"
#include "rb_time.h"
#include "money.h"
#include "roster.h"

#define URL_MAX  512
#define DRAIN_MS 300 // time for the last offer results to reach the broker at shutdown

static const char usage[] =
        "Usage: ringbid-presence [--help] [--version]\n"
        "\n"
        "Keeps agents' sessions (login, tokens, heartbeats), runs the agent state machine and\n"
        "holds the one connection to each agent's client. Tells the auction who is available\n"
        "and the broker how each offer went.\n"
        "\n"
        "Environment (defaults follow RINGBID_PORT_BASE, 7100):\n"
        "  RINGBID_PRESENCE_URL          agents' clients connect here (tcp://127.0.0.1:7105)\n"
        "  RINGBID_PRESENCE_ID           this instance's number, 0..63, when agents are spread\n"
        "                                over several presence processes (0)\n"
        "  RINGBID_BROKER_PRESENCE_URL   the broker's presence link (tcp://127.0.0.1:7103)\n"
        "  RINGBID_AUCTION_URL           the auction's presence link (tcp://127.0.0.1:7104)\n"
        "  RINGBID_PRESENCE_TLS_CERT     PEM certificate chain for a tls+tcp:// agent link\n"
        "  RINGBID_PRESENCE_TLS_KEY      its PEM private key (ECDSA; not encrypted)\n"
        "  RINGBID_PRESENCE_HTTP         /healthz /readyz /metrics (127.0.0.1:7183)\n"
        "  RINGBID_DATABASE_URL          PostgreSQL (else the PG* variables)\n"
        "  RINGBID_SERVICE_TOKEN[_FILE]  the shared service token\n"
        "  RINGBID_HEARTBEAT_TIMEOUT_MS  client silence that marks an agent OFFLINE (15s)\n"
        "  RINGBID_MAX_MISSED            offers missed in a row before NOT_READY (2)\n"
        "  RINGBID_SESSION_TTL_MS        session token lifetime (12h)\n"
        "  RINGBID_LOGIN_MAX_FAILS       failed logins in a row before slowing down (3)\n"
        "  RINGBID_PAY_TZ                time zone of pay days and periods (UTC)\n"
        "  RINGBID_LOG_LEVEL             debug|info|warn|error (info)\n";

static const char *const state_labels[PRESENCE_NSTATES] = {
        "state=\"offline\"",  "state=\"not_ready\"", "state=\"available\"",
        "state=\"reserved\"", "state=\"on_call\"",   "state=\"wrap_up\"",
};
static const char *const result_labels[5] = {
        "result=\"accepted\"",   "result=\"declined\"", "result=\"timeout\"",
        "result=\"agent_lost\"", "result=\"refused\"",
};

typedef struct presence_main {
	rb_svc svc;
	presence_core *core;
	presence_clients *clients;
	presence_links *links;
	presence_roster *roster;
	presence_money money; // sessions for billing, agents' earnings (db set once roster is up)
	uv_timer_t deadline;
	uv_timer_t drain;
	bool timers_init;
	bool closing;
	bool ready;

	rb_metric *m_agents[PRESENCE_NSTATES];
	rb_metric *m_offers[5];
	rb_metric *m_logins;
	rb_metric *m_login_failures;
	rb_metric *m_refused[3];
	rb_metric *m_clients;
	rb_metric *m_hangups_unconfirmed;
	presence_stats synced;
} presence_main;

// ---------------------------------------------------------------------------------------------
// What the core emits

static void op_client(void *arg, uint32_t pipe, const Ringbid__AgentMsg *m)
{
	presence_main *p = arg;
	if (p->clients != NULL)
		presence_clients_send(p->clients, pipe, m);
}

static void op_broker(void *arg, const Ringbid__Envelope *e)
{
	presence_main *p = arg;
	if (p->links != NULL)
		presence_links_to_broker(p->links, e);
}

static void op_auction(void *arg, const Ringbid__Envelope *e)
{
	presence_main *p = arg;
	if (p->links != NULL)
		presence_links_to_auction(p->links, e);
}

static void deadline_cb(uv_timer_t *t);

static void op_session(void *arg, uint64_t agent_id, const uint8_t hash[RB_TOKEN_HASH],
                       uint64_t expires_us, bool open)
{
	presence_main *p = arg;
	presence_money_session(&p->money, agent_id, hash, expires_us, open);
}

static void on_earnings_query(void *arg, uint32_t pipe, uint64_t seq, uint64_t agent_id)
{
	presence_main *p = arg;
	presence_money_earnings(&p->money, pipe, seq, agent_id);
}

static void op_schedule(void *arg, uint64_t mono_us)
{
	presence_main *p = arg;
	if (!p->timers_init || p->closing)
		return;
	uint64_t now = rb_mono_us();
	uint64_t delay_ms = mono_us > now ? (mono_us - now + 999) / 1000 : 0;
	uv_update_time(&p->svc.loop);
	uv_timer_start(&p->deadline, deadline_cb, delay_ms, 0);
}

// ---------------------------------------------------------------------------------------------
// After every event: metrics and readiness

static void add_delta(rb_metric *m, uint64_t now, uint64_t *seen)
{
	if (now != *seen) {
		rb_metric_add(m, (double)(now - *seen));
		*seen = now;
	}
}

static void sync_metrics(presence_main *p)
{
	const presence_stats *st = presence_core_stats(p->core);
	presence_stats *seen = &p->synced;
	for (int i = 0; i < 5; i++)
		add_delta(p->m_offers[i], st->offers[i], &seen->offers[i]);
	add_delta(p->m_logins, st->logins, &seen->logins);
	add_delta(p->m_login_failures, st->login_failures, &seen->login_failures);
	add_delta(p->m_refused[0], st->refused_agents, &seen->refused_agents);
	add_delta(p->m_refused[1], st->refused_broker, &seen->refused_broker);
	add_delta(p->m_refused[2], st->refused_auction, &seen->refused_auction);
	add_delta(p->m_hangups_unconfirmed, st->hangups_unconfirmed, &seen->hangups_unconfirmed);
	uint32_t counts[PRESENCE_NSTATES];
	presence_core_counts(p->core, counts);
	for (int s = 0; s < PRESENCE_NSTATES; s++)
		rb_metric_set(p->m_agents[s], counts[s]);
	if (p->clients != NULL)
		rb_metric_set(p->m_clients, presence_clients_peers(p->clients));
}

static void update_ready(presence_main *p)
{
	bool ready = !p->closing && presence_core_roster_loaded(p->core) &&
	             presence_roster_connected(p->roster) && p->links != NULL &&
	             presence_links_broker_up(p->links) && presence_links_auction_up(p->links);
	if (ready == p->ready)
		return;
	p->ready = ready;
	rb_http_set_ready(p->svc.http, ready);
	if (ready)
		rb_info("ready: roster loaded, database, broker and auction links up");
	else if (p->closing)
		rb_info("not ready: stopping");
	else
		rb_warn("not ready: roster %s, database %s, broker link %s, auction link %s",
		        presence_core_roster_loaded(p->core) ? "loaded" : "not loaded",
		        presence_roster_connected(p->roster) ? "up" : "down",
		        p->links != NULL && presence_links_broker_up(p->links) ? "up" : "down",
		        p->links != NULL && presence_links_auction_up(p->links) ? "up" : "down");
}

static void after_event(void *arg)
{
	presence_main *p = arg;
	sync_metrics(p);
	update_ready(p);
}

static void deadline_cb(uv_timer_t *t)
{
	presence_main *p = t->data;
	presence_core_tick(p->core);
	after_event(p);
}

static void janitor(rb_svc *svc, void *arg)
{
	(void)svc;
	presence_main *p = arg;
	presence_core_janitor(p->core);
	if (p->clients != NULL)
		presence_clients_janitor(p->clients);
	if (p->links != NULL)
		presence_links_janitor(p->links);
	presence_money_janitor(&p->money);
	after_event(p);
}

// ---------------------------------------------------------------------------------------------
// Stopping

static void close_all(presence_main *p)
{
	uv_timer_stop(&p->deadline);
	uv_close((uv_handle_t *)&p->deadline, NULL);
	uv_close((uv_handle_t *)&p->drain, NULL);
	p->money.db = NULL;
	p->money.clients = NULL;
	presence_clients_free(p->clients);
	p->clients = NULL;
	presence_links_free(p->links);
	p->links = NULL;
	presence_roster_free(p->roster);
	p->roster = NULL;
	rb_svc_close_handles(&p->svc);
}

static void drained(uv_timer_t *t)
{
	close_all(t->data);
}

static void on_stop(rb_svc *svc, void *arg)
{
	(void)svc;
	presence_main *p = arg;
	if (p->closing)
		return;
	rb_info("stopping");
	// Offers ringing now are given back, so the broker re-queues them at once rather than
	// after its own backstop.
	uint32_t n = presence_core_stop(p->core);
	after_event(p);
	p->closing = true;
	update_ready(p);
	if (n > 0) {
		rb_info("%u offers in flight given back to the broker", n);
		uv_timer_stop(&p->deadline);
		uv_timer_start(&p->drain, drained, DRAIN_MS, 0);
		return;
	}
	close_all(p);
}

// ---------------------------------------------------------------------------------------------
// Start

static int register_metrics(presence_main *p)
{
	for (int s = 0; s < PRESENCE_NSTATES; s++) {
		p->m_agents[s] = rb_metrics_gauge("ringbid_agents", state_labels[s],
		                                  "Agents known to presence, by state.");
		if (p->m_agents[s] == NULL)
			return RB_ENOMEM;
	}
	for (int r = 0; r < 5; r++) {
		p->m_offers[r] = rb_metrics_counter("ringbid_offers_total", result_labels[r],
		                                    "Offers settled by presence, by result.");
		if (p->m_offers[r] == NULL)
			return RB_ENOMEM;
	}
	static const char *const links[3] = {"link=\"agents\"", "link=\"broker\"",
	                                     "link=\"auction\""};
	for (int i = 0; i < 3; i++) {
		p->m_refused[i] = rb_metrics_counter("ringbid_messages_refused_total", links[i],
		                                     "Messages refused as bad input, by link.");
		if (p->m_refused[i] == NULL)
			return RB_ENOMEM;
	}
	p->m_logins = rb_metrics_counter("ringbid_logins_total", NULL, "Successful agent logins.");
	p->m_login_failures = rb_metrics_counter("ringbid_login_failures_total", NULL,
	                                         "Agent logins refused for a wrong id or secret.");
	p->m_clients = rb_metrics_gauge("ringbid_agent_connections", NULL,
	                                "Agent clients connected to presence now.");
	p->m_hangups_unconfirmed =
	        rb_metrics_counter("ringbid_hangups_unconfirmed_total", NULL,
	                           "Agents' hang-ups the broker did not answer in time; the agent "
	                           "was made available to the auction anyway.");
	if (p->m_logins == NULL || p->m_login_failures == NULL || p->m_clients == NULL ||
	    p->m_hangups_unconfirmed == NULL)
		return RB_ENOMEM;
	return 0;
}

static int read_config(presence_config *cfg, long long *max_fails)
{
	long long hb, missed, ttl;
	int rv = rb_config_ms("RINGBID_HEARTBEAT_TIMEOUT_MS", 15000, 100, 3600000, &hb);
	if (rv == 0)
		rv = rb_config_int("RINGBID_MAX_MISSED", 2, 1, 1000, &missed);
	if (rv == 0)
		rv = rb_config_ms("RINGBID_SESSION_TTL_MS", 43200000LL, 1000, 30LL * 86400 * 1000,
		                  &ttl);
	if (rv == 0)
		rv = rb_config_int("RINGBID_LOGIN_MAX_FAILS", 3, 1, 1000, max_fails);
	if (rv != 0)
		return rv;
	cfg->heartbeat_timeout_ms = (uint64_t)hb;
	cfg->max_missed = (uint32_t)missed;
	cfg->session_ttl_ms = (uint64_t)ttl;
	return 0;
}

static int start(presence_main *p)
{
	presence_config cfg;
	long long max_fails;
	int rv = read_config(&cfg, &max_fails);
	if (rv != 0) {
		rb_error("configuration not valid: %s", rb_err_str(rv));
		return rv;
	}
	char agents_url[URL_MAX], broker_url[URL_MAX], auction_url[URL_MAX], conninfo[2048];
	rv = rb_config_url("RINGBID_PRESENCE_URL", RB_PORT_PRESENCE_AGENTS, agents_url, URL_MAX);
	if (rv == 0)
		rv = rb_config_url("RINGBID_BROKER_PRESENCE_URL", RB_PORT_BROKER_PRESENCE,
		                   broker_url, URL_MAX);
	if (rv == 0)
		rv = rb_config_url("RINGBID_AUCTION_URL", RB_PORT_AUCTION_PRESENCE, auction_url,
		                   URL_MAX);
	if (rv == 0)
		rv = rb_config_conninfo(conninfo, sizeof(conninfo));
	char tls_cert[URL_MAX], tls_key[URL_MAX];
	long long presence_id = 0;
	if (rv == 0)
		rv = rb_config_int("RINGBID_PRESENCE_ID", 0, 0, PRESENCE_INSTANCE_MAX,
		                   &presence_id);
	if (rv == 0)
		rv = rb_config_str("RINGBID_PRESENCE_TLS_CERT", "", tls_cert, sizeof(tls_cert));
	if (rv == 0)
		rv = rb_config_str("RINGBID_PRESENCE_TLS_KEY", "", tls_key, sizeof(tls_key));
	if (rv != 0) {
		rb_error("configuration not valid: %s", rb_err_str(rv));
		return rv;
	}
	rv = register_metrics(p);
	if (rv != 0)
		return rv;

	presence_ops ops = {
	        .client = op_client,
	        .broker = op_broker,
	        .auction = op_auction,
	        .schedule = op_schedule,
	        .session = op_session,
	        .arg = p,
	};
	rv = presence_core_new(&ops, &cfg, &p->core);
	if (rv != 0)
		return rv;
	uv_timer_init(&p->svc.loop, &p->deadline);
	uv_timer_init(&p->svc.loop, &p->drain);
	p->deadline.data = p;
	p->drain.data = p;
	p->timers_init = true;

	rv = presence_clients_new(&p->svc.loop, p->core, (uint32_t)max_fails, after_event, p,
	                          &p->clients);
	if (rv == 0) {
		rv = presence_clients_listen(p->clients, agents_url, tls_cert, tls_key);
		if (rv != 0)
			rb_error("cannot listen for agents on %s: %s", agents_url, rb_err_str(rv));
	}
	if (rv == 0)
		rv = presence_links_new(&p->svc.loop, p->core, p->svc.token, (uint32_t)presence_id,
		                        after_event, p, &p->links);
	if (rv == 0)
		rv = presence_links_dial(p->links, broker_url, auction_url);
	if (rv == 0)
		rv = presence_roster_new(&p->svc.loop, p->core, conninfo, after_event, p,
		                         &p->roster);
	char tz[PRESENCE_TZ_MAX + 1];
	if (rv == 0)
		rv = rb_config_str("RINGBID_PAY_TZ", "UTC", tz, sizeof(tz));
	if (rv == 0)
		rv = presence_money_init(&p->money, presence_roster_db(p->roster), p->clients, tz);
	if (rv != 0)
		return rv;
	presence_clients_on_earnings(p->clients, on_earnings_query, p);
	rb_info("presence instance %lld: agents on %s, broker at %s, auction at %s; heartbeat "
	        "timeout %llu ms, %u missed offers pause an agent",
	        presence_id, agents_url, broker_url, auction_url,
	        (unsigned long long)cfg.heartbeat_timeout_ms, cfg.max_missed);
	return 0;
}

int main(int argc, char **argv)
{
	static presence_main p;
	int rv = rb_svc_init(&p.svc, "presence", argc, argv, usage, "RINGBID_PRESENCE_HTTP",
	                     RB_PORT_PRESENCE_HTTP);
	if (rv != 0) {
		fprintf(stderr, "ringbid-presence: cannot start: %s\n", rb_err_str(rv));
		return 1;
	}
	p.svc.on_stop = on_stop;
	p.svc.on_janitor = janitor;
	p.svc.janitor_ms = 1000;
	p.svc.arg = &p;

	rv = start(&p);
	if (rv != 0) {
		rb_error("cannot start: %s", rb_err_str(rv));
		p.closing = true;
		if (p.timers_init) {
			uv_close((uv_handle_t *)&p.deadline, NULL);
			uv_close((uv_handle_t *)&p.drain, NULL);
		}
		presence_clients_free(p.clients);
		p.clients = NULL;
		presence_links_free(p.links);
		p.links = NULL;
		presence_roster_free(p.roster);
		p.roster = NULL;
		rb_svc_close_handles(&p.svc);
		uv_run(&p.svc.loop, UV_RUN_DEFAULT);
		presence_core_free(p.core);
		rb_svc_fini(&p.svc);
		return 1;
	}
	rv = rb_svc_run(&p.svc);
	presence_core_free(p.core);
	p.core = NULL;
	rb_svc_fini(&p.svc);
	return rv == 0 ? 0 : 1;
}
