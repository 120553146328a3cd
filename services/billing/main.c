// ringbid-billing: stores every CDR and call outcome exactly once in PostgreSQL, acknowledges them
// to the broker, and recomputes agents' scores on a schedule.
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "ingest.h"
#include "scores.h"
#include "rb_bus.h"
#include "rb_config.h"
#include "rb_db.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_names.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_secret.h"
#include "rb_svc.h"
#include "rb_time.h"

static const char USAGE[] =
        "usage: ringbid-billing [--help] [--version]\n"
        "\n"
        "Stores call detail records and call outcomes sent by the broker in PostgreSQL,\n"
        "exactly once each, and acknowledges them only after they are committed. Recomputes\n"
        "agents' performance scores on a schedule (docs/scores.md).\n"
        "\n"
        "environment:\n"
        "  RINGBID_BILLING_URL      CDR socket to listen on (default tcp://127.0.0.1:<base+6>)\n"
        "  RINGBID_BILLING_HTTP     admin HTTP address (default 127.0.0.1:<base+84>)\n"
        "  RINGBID_DATABASE_URL     PostgreSQL connection (else the PG* variables)\n"
        "  RINGBID_SERVICE_TOKEN    shared service token (or RINGBID_SERVICE_TOKEN_FILE)\n"
        "  RINGBID_PORT_BASE        base of the default ports (default 7100)\n"
        "  RINGBID_PAY_TZ           the pay periods' time zone (default UTC)\n"
        "  RINGBID_SCORE_INTERVAL_S seconds between score recomputes (default 300; 0: never)\n"
        "  RINGBID_SCORE_WINDOW_DAYS  days of calls a score covers (default 30)\n"
        "  RINGBID_SCORE_MIN_CALLS  calls in the window before an agent has its own overall\n"
        "                           score rather than a provisional one (default 20)\n"
        "\n"
        "HTTP (Authorization: Bearer <token>):\n"
        "  GET /payroll/export?period=YYYY-MM-DD&format=csv|adp|paychex|gusto   finance tokens\n"
        "  GET /me/earnings                                                   agent sessions\n";

typedef struct billing {
	rb_svc svc;
	rb_bus *cdrs;
	rb_db *db;
	// A recompute can read a month of calls: it gets a connection of its own so that CDR
	// batches and outcomes never wait behind it.
	rb_db *score_db;
	rb_db *http_db; // read only: the payroll download and earnings can change nothing
	billing_http money;
	billing_scores scores;
	bool schema_ok;
	rb_metric *m_stored, *m_quarantined, *m_refused, *m_batches, *m_failed, *m_refused_msgs;
	rb_metric *m_latency;
	rb_metric *m_outcomes, *m_outcome_dups, *m_outcomes_refused, *m_outcomes_failed;
} billing;

// The outcomes of one RecordOutcomes request on their way through PostgreSQL.
typedef struct outcome_req {
	billing *b;
	rb_bus_req *req;
	size_t n;
	char call_id[65];
} outcome_req;

// One batch on its way through PostgreSQL.
typedef struct batch {
	billing *b;
	rb_bus_req *req;
	uint64_t started_us;
	size_t n;
} batch;

static void update_ready(billing *b)
{
	rb_http_set_ready(b->svc.http, b->schema_ok && rb_db_connected(b->db));
}

static void reply_error(rb_bus_req *req, int code, const char *text)
{
	Ringbid__CdrAck ack = RINGBID__CDR_ACK__INIT;
	Ringbid__ErrorReply err = RINGBID__ERROR_REPLY__INIT;
	nng_msg *msg;

	err.code = code;
	err.message = (char *)text;
	ack.error = &err;
	if (rb_pb_pack(&ack.base, RB_PB_MAX_SERVICE, &msg) != 0) {
		rb_bus_reply_drop(req);
		return;
	}
	rb_bus_reply(req, msg);
}

static void on_ingested(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	batch *bt = arg;
	billing *b = bt->b;
	Ringbid__CdrAck ack = RINGBID__CDR_ACK__INIT;
	char **stored = NULL, **quar = NULL, **refused = NULL;
	nng_msg *msg;
	int rows;

	if (err != 0) {
		rb_error("storing a batch of %zu CDRs failed (sqlstate %s): %s; the broker will "
		         "resend",
		         bt->n, sqlstate, res ? PQresultErrorMessage(res) : rb_err_str(err));
		rb_metric_inc(b->m_failed);
		reply_error(bt->req, RB_EDB, "CDRs not stored; send again");
		free(bt);
		update_ready(b);
		return;
	}
	rows = PQntuples(res);
	stored = calloc((size_t)rows + 1, sizeof(char *));
	quar = calloc((size_t)rows + 1, sizeof(char *));
	refused = calloc((size_t)rows + 1, sizeof(char *));
	if (stored == NULL || quar == NULL || refused == NULL) {
		reply_error(bt->req, RB_ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < rows; i++) {
		char *id = PQgetvalue(res, i, 0);
		const char *outcome = PQgetvalue(res, i, 1);
		const char *why = PQgetvalue(res, i, 2);

		if (strcmp(outcome, "stored") == 0) {
			stored[ack.n_stored++] = id;
		} else if (strcmp(outcome, "quarantined") == 0) {
			quar[ack.n_quarantined++] = id;
			rb_logf(RB_LOG_WARN, id, 0, "CDR quarantined: %s", why);
		} else {
			refused[ack.n_refused++] = id;
			rb_logf(RB_LOG_WARN, id, 0, "CDR refused: %s", why);
		}
	}
	ack.stored = stored;
	ack.quarantined = quar;
	ack.refused = refused;
	rb_metric_add(b->m_stored, (double)ack.n_stored);
	rb_metric_add(b->m_quarantined, (double)ack.n_quarantined);
	rb_metric_add(b->m_refused, (double)ack.n_refused);
	rb_metric_inc(b->m_batches);
	rb_metric_observe(b->m_latency, (double)(rb_now_us() - bt->started_us) / 1e6);
	if (rb_pb_pack(&ack.base, RB_PB_MAX_SERVICE, &msg) != 0)
		reply_error(bt->req, RB_ETOOBIG, "acknowledgement too large");
	else
		rb_bus_reply(bt->req, msg);
out:
	free(stored);
	free(quar);
	free(refused);
	free(bt);
}

static void on_outcomes_stored(rb_db *db, int err, const PGresult *res, const char *sqlstate,
                               void *arg)
{
	outcome_req *o = arg;
	billing *b = o->b;
	Ringbid__CdrAck ack = RINGBID__CDR_ACK__INIT;
	Ringbid__OutcomeAck *acks = NULL, **ptrs = NULL;
	nng_msg *msg;
	int rows, code;

	if (err != 0) {
		const char *text = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

		code = billing_outcome_refusal(sqlstate);
		if (code != 0 && text != NULL) {
			rb_metric_inc(b->m_outcomes_refused);
			rb_logf(RB_LOG_WARN, o->call_id, 0, "outcomes refused: %s", text);
			reply_error(o->req, code, text);
		} else {
			rb_metric_inc(b->m_outcomes_failed);
			rb_logf(RB_LOG_ERROR, o->call_id, 0,
			        "storing %zu outcome(s) failed (sqlstate %s): %s; the broker will "
			        "resend",
			        o->n, sqlstate, text ? text : rb_err_str(err));
			reply_error(o->req, RB_EDB, "outcomes not stored; send again");
		}
		free(o);
		update_ready(b);
		return;
	}
	rows = PQntuples(res);
	acks = calloc((size_t)rows + 1, sizeof(*acks));
	ptrs = calloc((size_t)rows + 1, sizeof(*ptrs));
	if (acks == NULL || ptrs == NULL) {
		reply_error(o->req, RB_ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < rows; i++) {
		ringbid__outcome_ack__init(&acks[i]);
		acks[i].call_id = PQgetvalue(res, i, 0);
		acks[i].kind = (Ringbid__OutcomeKind)rb_outcome_kind_of(PQgetvalue(res, i, 1));
		acks[i].reviewer = PQgetvalue(res, i, 2);
		acks[i].duplicate = strcmp(PQgetvalue(res, i, 3), "t") == 0;
		rb_metric_inc(acks[i].duplicate ? b->m_outcome_dups : b->m_outcomes);
		rb_logf(RB_LOG_INFO, o->call_id, 0, "outcome %s%s%s %s", PQgetvalue(res, i, 1),
		        acks[i].reviewer[0] ? " by " : "", acks[i].reviewer,
		        acks[i].duplicate ? "already stored" : "stored");
		ptrs[i] = &acks[i];
	}
	ack.n_outcomes = (size_t)rows;
	ack.outcomes = ptrs;
	if (rb_pb_pack(&ack.base, RB_PB_MAX_SERVICE, &msg) != 0)
		reply_error(o->req, RB_ETOOBIG, "acknowledgement too large");
	else
		rb_bus_reply(o->req, msg);
out:
	free(acks);
	free(ptrs);
	free(o);
}

// A CdrBatch carrying the outcomes of one RecordOutcomes request: checked here, checked again
// and stored (all or none) by billing.record_outcomes.
static void on_outcomes(billing *b, rb_bus_req *req, const Ringbid__CdrBatch *in)
{
	char why[256], *json = NULL;
	outcome_req *o;
	int rv;

	rv = billing_outcomes_check(in->outcomes, in->n_outcomes, rb_now_us(), why, sizeof(why));
	if (rv != 0) {
		rb_metric_inc(b->m_outcomes_refused);
		rb_logf(RB_LOG_WARN,
		        in->outcomes[0] && rb_valid_id(in->outcomes[0]->call_id, 64)
		                ? in->outcomes[0]->call_id
		                : NULL,
		        0, "outcomes refused: %s", why);
		reply_error(req, rv, why);
		return;
	}
	if (!rb_db_connected(b->db)) {
		reply_error(req, RB_EDB, "database unavailable; send again");
		return;
	}
	if (billing_outcomes_json(in->outcomes, in->n_outcomes, &json) != 0 ||
	    (o = calloc(1, sizeof(*o))) == NULL) {
		free(json);
		reply_error(req, RB_ENOMEM, "out of memory");
		return;
	}
	o->b = b;
	o->req = req;
	o->n = in->n_outcomes;
	snprintf(o->call_id, sizeof(o->call_id), "%s", in->outcomes[0]->call_id);
	{
		const char *params[1] = {json};

		rv = rb_db_query(b->db, BILLING_OUTCOMES_SQL, 1, params, on_outcomes_stored, o);
	}
	free(json);
	if (rv != 0) {
		free(o);
		reply_error(req, rv, "could not queue the outcomes");
	}
}

static void on_batch(rb_bus *bus, rb_bus_req *req, nng_msg *msg, void *arg)
{
	billing *b = arg;
	Ringbid__CdrBatch *in = NULL;
	char *json = NULL;
	batch *bt;
	int rv;

	rv = rb_pb_unpack_msg(&ringbid__cdr_batch__descriptor, msg, RB_PB_MAX_SERVICE,
	                      (ProtobufCMessage **)&in);
	nng_msg_free(msg);
	if (rv != 0) {
		rb_metric_inc(b->m_refused_msgs);
		rb_warn("refused a CDR message: %s", rb_err_str(rv));
		reply_error(req, rv, "malformed or oversized CDR batch");
		return;
	}
	if (in->token == NULL || !rb_str_equal_ct(in->token, b->svc.token)) {
		rb_metric_inc(b->m_refused_msgs);
		rb_warn("refused a CDR batch with a wrong service token");
		reply_error(req, RB_EAUTH, "wrong service token");
		goto done;
	}
	if (in->n_cdrs > BILLING_MAX_BATCH) {
		rb_metric_inc(b->m_refused_msgs);
		reply_error(req, RB_ETOOBIG, "too many CDRs in one batch");
		goto done;
	}
	if (in->n_cdrs > 0 && in->n_outcomes > 0) {
		rb_metric_inc(b->m_refused_msgs);
		rb_warn("refused a batch carrying both CDRs and outcomes");
		reply_error(req, RB_EINVAL, "a batch carries CDRs or outcomes, never both");
		goto done;
	}
	if (in->n_outcomes > 0) {
		on_outcomes(b, req, in);
		goto done;
	}
	if (in->n_cdrs == 0) {
		Ringbid__CdrAck ack = RINGBID__CDR_ACK__INIT;
		nng_msg *out;

		if (rb_pb_pack(&ack.base, RB_PB_MAX_SERVICE, &out) == 0)
			rb_bus_reply(req, out);
		else
			rb_bus_reply_drop(req);
		goto done;
	}
	if (!rb_db_connected(b->db)) {
		reply_error(req, RB_EDB, "database unavailable; send again");
		goto done;
	}
	if (billing_batch_json(in->cdrs, in->n_cdrs, &json) != 0 ||
	    (bt = calloc(1, sizeof(*bt))) == NULL) {
		free(json);
		reply_error(req, RB_ENOMEM, "out of memory");
		goto done;
	}
	bt->b = b;
	bt->req = req;
	bt->n = in->n_cdrs;
	bt->started_us = rb_now_us();
	{
		const char *params[1] = {json};

		rv = rb_db_query(b->db, BILLING_INGEST_SQL, 1, params, on_ingested, bt);
	}
	free(json);
	if (rv != 0) {
		free(bt);
		reply_error(req, rv, "could not queue the batch");
	}
done:
	rb_pb_free(&in->base);
}

static void on_schema(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg)
{
	billing *b = arg;

	b->schema_ok = err == 0;
	if (err != 0)
		rb_error("billing tables missing (sqlstate %s): run `ringbid db migrate`",
		         sqlstate);
	update_ready(b);
}

static void on_db_up(rb_db *db, void *arg)
{
	billing *b = arg;

	rb_db_query(db, "SELECT 1 FROM billing.cdrs LIMIT 0", 0, NULL, on_schema, b);
}

static void on_janitor(rb_svc *svc, void *arg)
{
	billing *b = arg;

	if (!b->schema_ok && rb_db_connected(b->db) && rb_db_pending(b->db) == 0)
		on_db_up(b->db, b);
	update_ready(b);
	if (b->schema_ok && !svc->stopping)
		billing_scores_tick(&b->scores, rb_mono_us());
}

static void on_stop(rb_svc *svc, void *arg)
{
	billing *b = arg;

	rb_info("stopping: closing the CDR socket and the database connection");
	rb_bus_free(b->cdrs);
	b->cdrs = NULL;
	rb_db_free(b->db);
	b->db = NULL;
	rb_db_free(b->score_db);
	b->score_db = NULL;
	rb_db_free(b->http_db);
	b->http_db = NULL;
	rb_svc_close_handles(svc);
}

static void make_metrics(billing *b)
{
	static const double lat[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5};

	b->m_stored = rb_metrics_counter("ringbid_cdrs_stored_total", NULL,
	                                 "CDRs acknowledged as stored (including resends)");
	b->m_quarantined = rb_metrics_counter("ringbid_cdrs_quarantined_total", NULL,
	                                      "CDRs whose id was stored before with other content");
	b->m_refused = rb_metrics_counter("ringbid_cdrs_refused_total", NULL,
	                                  "invalid CDRs kept in quarantine with a reason");
	b->m_batches =
	        rb_metrics_counter("ringbid_cdr_batches_total", NULL, "CDR batches committed");
	b->m_failed = rb_metrics_counter("ringbid_cdr_batches_failed_total", NULL,
	                                 "CDR batches that PostgreSQL did not commit");
	b->m_refused_msgs = rb_metrics_counter("ringbid_messages_refused_total", "link=\"cdrs\"",
	                                       "messages refused as malformed or unauthorised");
	b->m_outcomes =
	        rb_metrics_counter("ringbid_outcomes_stored_total", NULL,
	                           "call outcomes stored (surveys, resolutions, sales, QA)");
	b->m_outcome_dups = rb_metrics_counter("ringbid_outcomes_duplicate_total", NULL,
	                                       "call outcomes received again: nothing changed");
	b->m_outcomes_refused =
	        rb_metrics_counter("ringbid_outcomes_refused_total", NULL,
	                           "outcome requests refused (bad field, unknown call, conflict)");
	b->m_outcomes_failed = rb_metrics_counter("ringbid_outcomes_failed_total", NULL,
	                                          "outcome requests PostgreSQL did not commit");
	b->m_latency = rb_metrics_histogram("ringbid_cdr_batch_seconds", NULL,
	                                    "time to commit one CDR batch", lat,
	                                    sizeof(lat) / sizeof(lat[0]));
}

int main(int argc, char **argv)
{
	billing b = {0};
	char url[256], conninfo[1024];
	rb_bus_opts opts = {.recv_max = RB_PB_MAX_SERVICE, .rep_parallel = 8, .name = "cdrs"};
	int rv;

	rv = rb_svc_init(&b.svc, "billing", argc, argv, USAGE, "RINGBID_BILLING_HTTP",
	                 RB_PORT_BILLING_HTTP);
	if (rv != 0)
		return 1;
	make_metrics(&b);
	b.svc.on_stop = on_stop;
	b.svc.on_janitor = on_janitor;
	b.svc.arg = &b;
	b.svc.janitor_ms = 1000;

	if ((rv = rb_config_conninfo(conninfo, sizeof(conninfo))) != 0 ||
	    (rv = rb_db_new(&b.svc.loop, conninfo, &b.db)) != 0) {
		rb_error("cannot set up the database connection: %s", rb_err_str(rv));
		return 1;
	}
	rb_db_on_up(b.db, on_db_up, &b);
	if ((rv = rb_db_new(&b.svc.loop, conninfo, &b.score_db)) != 0 ||
	    (rv = billing_scores_init(&b.scores, &b.score_db, rb_mono_us())) != 0) {
		rb_error("cannot set up the score recompute: %s", rb_err_str(rv));
		return 1;
	}
	if (b.scores.interval_us > 0)
		rb_info("recomputing scores every %llu s over the last %d days",
		        (unsigned long long)(b.scores.interval_us / 1000000), b.scores.window_days);
	else
		rb_info("scheduled score recompute is off (RINGBID_SCORE_INTERVAL_S=0)");

	// The HTTP routes answer finance's downloads and agents' earnings on a connection of their
	// own whose every transaction is READ ONLY: a bug or a hostile request there cannot change
	// a CDR, a rate or a pay line, whatever the service's role may write.
	char ro[sizeof(conninfo) + 64];
	if ((rv = billing_readonly_conninfo(conninfo, ro, sizeof(ro))) != 0 ||
	    (rv = rb_db_new(&b.svc.loop, ro, &b.http_db)) != 0) {
		rb_error("cannot set up the payroll routes' connection: %s", rb_err_str(rv));
		return 1;
	}
	char tz[BILLING_TZ_MAX + 1];
	if ((rv = rb_config_str("RINGBID_PAY_TZ", "UTC", tz, sizeof(tz))) != 0 ||
	    (rv = billing_http_init(&b.money, b.svc.http, &b.http_db, tz)) != 0) {
		rb_error("cannot set up the payroll routes: %s", rb_err_str(rv));
		return 1;
	}

	if ((rv = rb_config_url("RINGBID_BILLING_URL", RB_PORT_BILLING_CDRS, url, sizeof(url))) !=
	            0 ||
	    (rv = rb_bus_new(&b.svc.loop, RB_BUS_REP, &opts, &b.cdrs)) != 0) {
		rb_error("cannot create the CDR socket: %s", rb_err_str(rv));
		return 1;
	}
	rb_bus_on_request(b.cdrs, on_batch, &b);
	if ((rv = rb_bus_listen(b.cdrs, url)) != 0) {
		rb_error("cannot listen on %s: %s", url, rb_err_str(rv));
		return 1;
	}
	rb_info("accepting CDRs on %s", url);
	rv = rb_svc_run(&b.svc);
	rb_svc_fini(&b.svc);
	return rv == 0 ? 0 : 1;
}
