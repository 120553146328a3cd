// ringbid-broker: owns calls, their timers and journal, the CDR outbox and the live KPIs.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "wallboard.h"

static const char usage[] =
        "Owns calls: takes them from telephony, has the auction match them, offers them to\n"
        "agents through presence, journals every change, and sends CDRs and call outcomes\n"
        "to billing.\n"
        "\n"
        "Environment (defaults follow RINGBID_PORT_BASE, 7100):\n"
        "  RINGBID_BROKER_URL           call API, req/rep      (tcp://127.0.0.1:7101)\n"
        "  RINGBID_BROKER_AUCTION_URL   auction link, pair1    (tcp://127.0.0.1:7102)\n"
        "  RINGBID_BROKER_PRESENCE_URL  presence link, pair1   (tcp://127.0.0.1:7103)\n"
        "  RINGBID_PRESENCE_INSTANCES   presence processes (1..64, default 1)\n"
        "  RINGBID_BROKER_PRESENCE_URLS with several: one presence-link address per\n"
        "                               instance, comma-separated, instance 0 first\n"
        "  RINGBID_BILLING_URL          billing, dialled       (tcp://127.0.0.1:7106)\n"
        "  RINGBID_BROKER_HTTP          /healthz /readyz /metrics /status (127.0.0.1:7181)\n"
        "  RINGBID_BROKER_JOURNAL       journal file ($RINGBID_HOME/broker/journal)\n"
        "  RINGBID_BROKER_JOURNAL_MAX   bytes before compaction (67108864)\n"
        "  RINGBID_OFFER_GRACE_MS       backstop beyond the ring timeout (5000)\n"
        "  RINGBID_DATABASE_URL         PostgreSQL (else the PG* variables)\n"
        "  RINGBID_SERVICE_TOKEN[_FILE] shared service token\n";

static void on_stop(rb_svc *svc, void *arg)
{
	(void)svc;
	broker_stop(arg);
}

static void on_janitor(rb_svc *svc, void *arg)
{
	(void)svc;
	broker_janitor(arg);
}

static void on_journal_health(bool ok, void *arg)
{
	broker *b = arg;
	b->journal_ok = ok;
	broker_update_gauges(b);
	broker_refresh_ready(b);
}

static void on_programs(broker_programs *p, const char *id, void *arg)
{
	(void)p;
	(void)id;
	broker_refresh_ready(arg);
}

static int configure(broker *b, char *calls_url, char *auction_url, char *presence_url,
                     char *billing_url, size_t n, unsigned long long *journal_max)
{
	long long grace = 0, max = 0;
	char home[PATH_MAX - 32];
	char def[PATH_MAX];
	int rc = rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, calls_url, n);
	if (rc == 0)
		rc = rb_config_url("RINGBID_BROKER_AUCTION_URL", RB_PORT_BROKER_AUCTION,
		                   auction_url, n);
	if (rc == 0)
		rc = rb_config_url("RINGBID_BROKER_PRESENCE_URL", RB_PORT_BROKER_PRESENCE,
		                   presence_url, n);
	if (rc == 0)
		rc = rb_config_url("RINGBID_BILLING_URL", RB_PORT_BILLING_CDRS, billing_url, n);
	if (rc != 0) {
		rb_error("bad link URL: %s", rb_err_str(rc));
		return rc;
	}
	if ((rc = rb_config_ms("RINGBID_OFFER_GRACE_MS", 5000, 0, 600000, &grace)) != 0) {
		rb_error("RINGBID_OFFER_GRACE_MS must be a duration up to 10 minutes");
		return rc;
	}
	b->grace_ms = (uint64_t)grace;
	if ((rc = rb_config_int("RINGBID_BROKER_JOURNAL_MAX", (long long)BROKER_JOURNAL_MAX_DEFAULT,
	                        64 * 1024, 1LL << 40, &max)) != 0) {
		rb_error("RINGBID_BROKER_JOURNAL_MAX must be a byte count from 65536");
		return rc;
	}
	*journal_max = (unsigned long long)max;
	if ((rc = rb_config_home(home, sizeof(home))) != 0) {
		rb_error("bad RINGBID_HOME: %s", rb_err_str(rc));
		return rc;
	}
	snprintf(def, sizeof(def), "%s/broker/journal", home);
	rc = rb_config_str("RINGBID_BROKER_JOURNAL", def, b->journal_path, sizeof(b->journal_path));
	if (rc != 0 || b->journal_path[0] == '\0') {
		rb_error("bad RINGBID_BROKER_JOURNAL");
		return rc ? rc : RB_ECONFIG;
	}
	return 0;
}

static int open_journal(broker *b, unsigned long long max)
{
	broker_journal_replay st;
	int rc = broker_journal_open(b->journal_path, max, broker_core_replay, b, &st, &b->journal);
	if (rc != 0) {
		rb_error("cannot open the journal %s: %s", b->journal_path, rb_err_str(rc));
		return rc;
	}
	broker_journal_on_snapshot(b->journal, broker_core_snapshot, b);
	broker_journal_on_health(b->journal, on_journal_health, b);
	broker_core_replayed(b);
	rb_info("journal %s replayed: %llu records, %llu bytes%s; %u calls live, %u ended, "
	        "%zu CDRs to send",
	        b->journal_path, (unsigned long long)st.records, (unsigned long long)st.bytes,
	        st.cut_bytes ? " (tail cut)" : "",
	        b->book.count[BROKER_CALL_QUEUED] + b->book.count[BROKER_CALL_OFFERED] +
	                b->book.count[BROKER_CALL_CONNECTED],
	        b->book.count[BROKER_CALL_ENDED], broker_outbox_count(&b->outbox));
	return 0;
}

int main(int argc, char **argv)
{
	static broker b;
	b.svc.on_stop = on_stop;
	b.svc.on_janitor = on_janitor;
	b.svc.arg = &b;
	b.svc.janitor_ms = 1000;
	int rc = rb_svc_init(&b.svc, "broker", argc, argv, usage, "RINGBID_BROKER_HTTP",
	                     RB_PORT_BROKER_HTTP);
	if (rc != 0)
		return 1;

	char calls_url[256], auction_url[256], presence_url[256], billing_url[256];
	char conninfo[1024];
	unsigned long long journal_max = 0;
	rc = broker_core_init(&b);
	if (rc == 0)
		rc = configure(&b, calls_url, auction_url, presence_url, billing_url,
		               sizeof(calls_url), &journal_max);
	if (rc == 0)
		rc = rb_config_conninfo(conninfo, sizeof(conninfo));
	if (rc == 0)
		rc = open_journal(&b, journal_max);
	if (rc == 0)
		rc = broker_core_start(&b);
	if (rc == 0) {
		broker_programs_on_change(&b.programs, on_programs, &b);
		rc = broker_programs_start(&b.programs, &b.svc.loop, conninfo);
		if (rc != 0)
			rb_error("cannot set up the database connection: %s", rb_err_str(rc));
	}
	if (rc == 0)
		rc = broker_links_start(&b, auction_url, presence_url, billing_url);
	if (rc == 0)
		rc = broker_api_start(&b, calls_url);
	if (rc == 0 && b.svc.http != NULL)
		rc = rb_http_route(b.svc.http, "GET", "/status", broker_api_status_http, &b);
	if (rc == 0)
		rc = broker_wallboard_start(&b);
	if (rc == 0) {
		broker_refresh_ready(&b);
		rc = rb_svc_run(&b.svc);
		if (rc != 0)
			broker_close(&b);
	} else {
		broker_close(&b);
	}
	// Closing callbacks (buses, journal, timers) finish here.
	uv_run(&b.svc.loop, UV_RUN_DEFAULT);
	broker_fini(&b);
	rb_svc_fini(&b.svc);
	return rc == 0 ? 0 : 1;
}
