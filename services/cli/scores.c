// `ringbid outcome`, `ringbid scores recompute`, `ringbid agent score` and `ringbid report lift`.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "rb_err.h"
#include "rb_names.h"
#include "rb_pb.h"
#include "rb_time.h"

// The broker refuses outcomes recorded earlier than this or later than now + RECORDED_AHEAD_US;
// checked here as well so that an operator's typo gets its reason at once.
#define RECORDED_BACK_US  (400ull * 86400 * 1000000)
#define RECORDED_AHEAD_US (5ull * 60 * 1000000)

#define WINDOW_DAYS_DEFAULT 30
#define WINDOW_DAYS_MAX     400 // billing refuses longer windows
#define MIN_CALLS_DEFAULT   20
#define MIN_CALLS_MAX       100000

#define TS_UTC(c) "to_char(" c " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static void print_json(json_t *j, size_t flags)
{
	// Scores and weights are numeric(5,2) and numeric(4,3) in PostgreSQL: 15 significant
	// digits print them as stored (0.3, not 0.29999999999999999).
	char *s = j ? json_dumps(j, flags | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15)) : NULL;

	if (s) {
		puts(s);
		free(s);
	} else {
		cli_fail("out of memory");
	}
	fflush(stdout);
	json_decref(j);
}

// A numeric from PostgreSQL as a JSON number; SQL NULL (or junk) as null.
static json_t *num_json(const char *text)
{
	char *end;
	double v;

	if (!text || !*text)
		return json_null();
	v = strtod(text, &end);
	if (*end != '\0' || !isfinite(v))
		return json_null();
	return json_real(v);
}

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

// ---------------------------------------------------------------------------------------------
// ringbid outcome

const char *cli_outcome_kind_name(int kind)
{
	const char *name = rb_outcome_kind_name(kind);
	return name != NULL ? name : "";
}

static const char outcome_usage[] =
        "usage: ringbid outcome CALL_ID [--survey 1-5] [--resolved yes|no] [--sale yes|no]\n"
        "                       [--qa 0-100 --reviewer ID] [--at TIME] [--json]\n"
        "\n"
        "Records what happened after a call, as telephony or a supervisor would: the caller's\n"
        "post-call survey (1-5), whether the issue was resolved, whether it sold, a QA review\n"
        "(0-100) by a supervisor. They go through the broker to billing, which stores them\n"
        "beside the call's record and uses them for the agents' performance scores. Give at\n"
        "least one. Recording the same value again changes nothing; a different value for an\n"
        "outcome already recorded is refused (each reviewer's QA review counts once).\n"
        "\n"
        "options:\n"
        "  --survey N        post-call survey score, 1 to 5\n"
        "  --resolved yes|no the caller's issue was resolved\n"
        "  --sale yes|no     the call sold\n"
        "  --qa N            QA review score, 0 to 100; needs --reviewer\n"
        "  --reviewer ID     the reviewing supervisor (1-64 of A-Z a-z 0-9 . _ : -)\n"
        "  --at TIME         when it was recorded, ISO 8601 (e.g. 2026-11-23T10:15:00Z; no zone:\n"
        "                    UTC); at most 400 days back. Default: now\n"
        "  --json            print the result as JSON\n";

static int outcome_bad(char *err, size_t errlen, const char *msg)
{
	snprintf(err, errlen, "%s", msg);
	return RB_EINVAL;
}

static Ringbid__Outcome *outcome_add(cli_outcome_req *req, int kind, int value)
{
	Ringbid__Outcome *o = &req->items[req->n++];

	ringbid__outcome__init(o);
	o->call_id = (char *)req->call_id;
	o->kind = kind;
	o->value = value;
	return o;
}

int cli_outcome_parse(int argc, char **argv, uint64_t now_us, cli_outcome_req *req, char *err,
                      size_t errlen)
{
	cli_opt opts[] = {
	        {.name = "survey", .has_arg = true},
	        {.name = "resolved", .has_arg = true},
	        {.name = "sale", .has_arg = true},
	        {.name = "qa", .has_arg = true},
	        {.name = "reviewer", .has_arg = true},
	        {.name = "at", .has_arg = true},
	        {.name = "json"},
	};
	const size_t nopts = sizeof opts / sizeof opts[0];
	const char *pos[1], *v, *reviewer;
	uint64_t at = 0;
	size_t npos;
	long long num;
	bool yes;
	int rc;

	memset(req, 0, sizeof *req);
	rc = cli_args_parse(argc, argv, opts, nopts, pos, 1, &npos, err, errlen);
	if (rc != 0)
		return rc;
	if (npos != 1)
		return outcome_bad(err, errlen, "expected a CALL_ID");
	if (!rb_valid_id(pos[0], 64)) {
		snprintf(err, errlen, "bad call id '%.64s' (1-64 of A-Z a-z 0-9 . _ : -)", pos[0]);
		return RB_EINVAL;
	}
	req->call_id = pos[0];
	req->json = cli_opt_has(opts, nopts, "json");
	if ((v = cli_opt_get(opts, nopts, "at"))) {
		if (cli_parse_iso_us(v, &at) < 0) {
			snprintf(err, errlen,
			         "bad time '%.40s' for --at (ISO 8601, e.g. 2026-11-23T10:15:00Z)",
			         v);
			return RB_EINVAL;
		}
		if (at + RECORDED_BACK_US < now_us)
			return outcome_bad(err, errlen, "--at is more than 400 days ago");
		if (at > now_us + RECORDED_AHEAD_US)
			return outcome_bad(err, errlen, "--at is in the future");
	}
	if ((v = cli_opt_get(opts, nopts, "survey"))) {
		if (cli_parse_int(v, 1, 5, &num) < 0)
			return outcome_bad(err, errlen, "survey score must be 1-5");
		outcome_add(req, RINGBID__OUTCOME_KIND__OUTCOME_SURVEY, (int)num);
	}
	if ((v = cli_opt_get(opts, nopts, "resolved"))) {
		if (cli_parse_yes_no(v, &yes) < 0)
			return outcome_bad(err, errlen, "--resolved must be yes or no");
		outcome_add(req, RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED, yes);
	}
	if ((v = cli_opt_get(opts, nopts, "sale"))) {
		if (cli_parse_yes_no(v, &yes) < 0)
			return outcome_bad(err, errlen, "--sale must be yes or no");
		outcome_add(req, RINGBID__OUTCOME_KIND__OUTCOME_SALE, yes);
	}
	reviewer = cli_opt_get(opts, nopts, "reviewer");
	if ((v = cli_opt_get(opts, nopts, "qa"))) {
		Ringbid__Outcome *o;

		if (cli_parse_int(v, 0, 100, &num) < 0)
			return outcome_bad(err, errlen, "QA score must be 0-100");
		if (!reviewer)
			return outcome_bad(err, errlen,
			                   "--qa needs --reviewer ID (the reviewing supervisor)");
		if (!rb_valid_id(reviewer, 64)) {
			snprintf(err, errlen, "bad reviewer '%.64s' (1-64 of A-Z a-z 0-9 . _ : -)",
			         reviewer);
			return RB_EINVAL;
		}
		o = outcome_add(req, RINGBID__OUTCOME_KIND__OUTCOME_QA, (int)num);
		o->reviewer = (char *)reviewer;
	} else if (reviewer) {
		return outcome_bad(err, errlen, "--reviewer goes with --qa");
	}
	if (req->n == 0)
		return outcome_bad(err, errlen,
		                   "nothing to record: give --survey, --resolved, --sale or --qa");
	for (size_t i = 0; i < req->n; i++)
		req->items[i].recorded_us = at;
	return 0;
}

// The ack of item i: the broker answers in request order, but a matching kind and reviewer
// is what proves which outcome an ack is about.
static const Ringbid__OutcomeAck *ack_for(const Ringbid__CallReply *reply,
                                          const Ringbid__Outcome *o, size_t i)
{
	const char *rv = o->reviewer ? o->reviewer : "";

	if (!reply)
		return NULL;
	if (i < reply->n_outcomes && (int)reply->outcomes[i]->kind == (int)o->kind &&
	    strcmp(reply->outcomes[i]->reviewer ? reply->outcomes[i]->reviewer : "", rv) == 0)
		return reply->outcomes[i];
	for (size_t k = 0; k < reply->n_outcomes; k++) {
		const Ringbid__OutcomeAck *a = reply->outcomes[k];

		if ((int)a->kind == (int)o->kind && strcmp(a->reviewer ? a->reviewer : "", rv) == 0)
			return a;
	}
	return NULL;
}

json_t *cli_outcome_json(const cli_outcome_req *req, const Ringbid__CallReply *reply)
{
	json_t *o = json_object(), *list = json_array();

	if (!o || !list) {
		json_decref(o);
		json_decref(list);
		return NULL;
	}
	json_object_set_new(o, "call_id", json_string(req->call_id));
	for (size_t i = 0; i < req->n; i++) {
		const Ringbid__Outcome *it = &req->items[i];
		const Ringbid__OutcomeAck *ack = ack_for(reply, it, i);
		json_t *j = json_object();

		if (!j)
			break;
		json_object_set_new(j, "kind", json_string(cli_outcome_kind_name(it->kind)));
		json_object_set_new(j, "value", json_integer(it->value));
		json_object_set_new(j, "reviewer", json_string(it->reviewer ? it->reviewer : ""));
		json_object_set_new(j, "duplicate", json_boolean(ack && ack->duplicate));
		json_array_append_new(list, j);
	}
	json_object_set_new(o, "outcomes", list);
	return o;
}

static void outcome_print(const cli_outcome_req *req, const Ringbid__CallReply *reply)
{
	for (size_t i = 0; i < req->n; i++) {
		const Ringbid__Outcome *it = &req->items[i];
		const Ringbid__OutcomeAck *ack = ack_for(reply, it, i);
		char what[128];

		switch (it->kind) {
		case RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED:
		case RINGBID__OUTCOME_KIND__OUTCOME_SALE:
			snprintf(what, sizeof what, "%s %s", cli_outcome_kind_name(it->kind),
			         it->value ? "yes" : "no");
			break;
		case RINGBID__OUTCOME_KIND__OUTCOME_QA:
			snprintf(what, sizeof what, "QA %d by %s", it->value, it->reviewer);
			break;
		default:
			snprintf(what, sizeof what, "%s %d", cli_outcome_kind_name(it->kind),
			         it->value);
			break;
		}
		printf("call %s: %s %s\n", req->call_id, what,
		       ack && ack->duplicate ? "was already recorded (nothing changed)"
		                             : "recorded");
	}
}

int cli_cmd_outcome(int argc, char **argv)
{
	cli_outcome_req req;
	Ringbid__CallRequest cr = RINGBID__CALL_REQUEST__INIT;
	Ringbid__RecordOutcomes rec = RINGBID__RECORD_OUTCOMES__INIT;
	Ringbid__Outcome *items[CLI_OUTCOMES_MAX];
	Ringbid__CallReply *reply = NULL;
	cli_broker b;
	char err[256];
	int rc = cli_outcome_parse(argc, argv, rb_now_us(), &req, err, sizeof err);

	if (rc == CLI_ARGS_HELP) {
		fputs(outcome_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error("outcome", "%s", err);
	for (size_t i = 0; i < req.n; i++)
		items[i] = &req.items[i];
	rec.outcomes = items;
	rec.n_outcomes = req.n;
	cr.body_case = RINGBID__CALL_REQUEST__BODY_OUTCOMES;
	cr.outcomes = &rec;
	if ((rc = cli_broker_open(&b)) != 0)
		return rc;
	rc = cli_broker_call(&b, &cr, 0, "outcome refused", &reply);
	if (rc == 0) {
		if (req.json)
			print_json(cli_outcome_json(&req, reply), JSON_COMPACT);
		else
			outcome_print(&req, reply);
		rb_pb_free(&reply->base);
	}
	cli_broker_close(&b);
	return rc;
}

// ---------------------------------------------------------------------------------------------
// The score settings shared with billing's scheduled recompute

// A whole-number setting from the environment, or def when unset. Returns 0 or the exit
// status after printing why.
static int env_int(const char *name, long long def, long long max, long long *out)
{
	const char *v = getenv(name);

	*out = def;
	if (!v || !*v)
		return 0;
	if (cli_parse_int(v, 1, max, out) < 0)
		return cli_fail("%s must be a whole number from 1 to %lld (it is '%.32s')", name,
		                max, v);
	return 0;
}

// The scores' tables and functions come with migration 0005.
static bool schema_missing(const PGresult *res)
{
	const char *st = cli_db_sqlstate(res);

	return strcmp(st, "42883") == 0 || strcmp(st, "42P01") == 0 || strcmp(st, "3F000") == 0 ||
	       strcmp(st, "42703") == 0;
}

static int query_fail(PGconn *conn, const PGresult *res, const char *what)
{
	if (schema_missing(res))
		return cli_fail("the database has no performance scores yet: run 'ringbid db "
		                "migrate'");
	return cli_db_fail(conn, res, what);
}

// ---------------------------------------------------------------------------------------------
// ringbid scores recompute

static const char scores_usage[] =
        "usage: ringbid scores recompute [--json]\n"
        "\n"
        "Recomputes every active agent's performance score now, from the outcomes and calls of\n"
        "the trailing window, and pushes the new scores to the auction (no restart: the next\n"
        "call routes by them). Billing also does this on a schedule (RINGBID_SCORE_INTERVAL_S,\n"
        "default every 300 s). Agents whose score was pinned by hand keep it.\n"
        "\n"
        "settings (the same as billing's):\n"
        "  RINGBID_SCORE_WINDOW_DAYS   the trailing window in days (default 30)\n"
        "  RINGBID_SCORE_MIN_CALLS     calls an agent needs for a computed overall score\n"
        "                              (default 20); fewer: a provisional score\n";

int cli_cmd_scores(int argc, char **argv)
{
	cli_opt opts[] = {{.name = "json"}};
	const char *pos[1], *params[2];
	char err[256], days_text[24], min_text[24];
	long long days, min_calls;
	size_t npos;
	PGconn *conn;
	PGresult *res;
	long long changed;
	int rc = cli_args_parse(argc, argv, opts, 1, pos, 1, &npos, err, sizeof err);

	if (rc == CLI_ARGS_HELP || (argc == 0)) {
		fputs(scores_usage, argc == 0 ? stderr : stdout);
		return argc == 0 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error("scores", "%s", err);
	if (npos != 1 || strcmp(pos[0], "recompute") != 0)
		return cli_usage_error("scores", "expected 'recompute'");
	if (env_int("RINGBID_SCORE_WINDOW_DAYS", WINDOW_DAYS_DEFAULT, WINDOW_DAYS_MAX, &days) ||
	    env_int("RINGBID_SCORE_MIN_CALLS", MIN_CALLS_DEFAULT, MIN_CALLS_MAX, &min_calls))
		return CLI_EXIT_ERR;
	snprintf(days_text, sizeof days_text, "%lld", days);
	snprintf(min_text, sizeof min_text, "%lld", min_calls);
	params[0] = days_text;
	params[1] = min_text;
	if (cli_db_connect(&conn) < 0)
		return CLI_EXIT_ERR;
	rc = cli_db_exec(conn,
	                 "SELECT billing.recompute_scores(make_interval(days => $1::int), now(), "
	                 "$2::int)",
	                 2, params, &res);
	if (rc < 0) {
		rc = query_fail(conn, res, "cannot recompute the scores");
		PQclear(res);
		PQfinish(conn);
		return rc;
	}
	changed = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
	PQclear(res);
	PQfinish(conn);
	if (cli_opt_has(opts, 1, "json")) {
		json_t *o = json_object();

		if (o) {
			json_object_set_new(o, "changed", json_integer(changed));
			json_object_set_new(o, "window_days", json_integer(days));
			json_object_set_new(o, "min_calls", json_integer(min_calls));
		}
		print_json(o, JSON_COMPACT);
	} else {
		printf("scores recomputed over the last %lld days: %lld agent%s changed\n", days,
		       changed, changed == 1 ? "" : "s");
	}
	return CLI_EXIT_OK;
}

// ---------------------------------------------------------------------------------------------
// ringbid agent score

// The parts as billing stored them (jsonb orders keys its own way), keys in reading order:
// part, program (overall score only), raw, normalised, weight, n; other keys after them.
static json_t *parts_json(const char *text)
{
	static const char *const order[] = {"part", "program", "raw", "normalised", "weight", "n"};
	json_t *in = text ? json_loads(text, 0, NULL) : NULL;
	json_t *out = json_array(), *p;
	size_t i;

	if (!out || !json_is_array(in)) {
		json_decref(in);
		return out;
	}
	json_array_foreach(in, i, p)
	{
		json_t *o = json_object(), *v;
		const char *key;

		if (!o || !json_is_object(p)) {
			json_decref(o);
			continue;
		}
		for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
			if ((v = json_object_get(p, order[k])))
				json_object_set(o, order[k], v);
		}
		json_object_foreach(p, key, v)
		{
			if (!json_object_get(o, key))
				json_object_set(o, key, v);
		}
		json_array_append_new(out, o);
	}
	json_decref(in);
	return out;
}

static json_t *score_row_json(const cli_score_row *r)
{
	json_t *o = json_object();
	json_t *parts = parts_json(r->parts);

	if (!o || !parts) {
		json_decref(o);
		json_decref(parts);
		return NULL;
	}
	json_object_set_new(o, "program", json_string(r->program));
	json_object_set_new(o, "score", num_json(r->score));
	json_object_set_new(o, "provisional", json_boolean(r->provisional));
	json_object_set_new(o, "calls", json_integer(r->calls));
	json_object_set_new(o, "parts", parts);
	json_object_set_new(o, "window_start", str_or_null(r->window_start));
	json_object_set_new(o, "window_end", str_or_null(r->window_end));
	json_object_set_new(o, "computed_at", str_or_null(r->computed_at));
	return o;
}

json_t *cli_agent_scores_json(const cli_agent_scores *s)
{
	json_t *o = json_object(), *programs = json_array(), *overall = NULL;

	if (!o || !programs) {
		json_decref(o);
		json_decref(programs);
		return NULL;
	}
	for (size_t i = 0; i < s->nrows; i++) {
		if (s->rows[i].program[0] == '\0' && !overall)
			overall = score_row_json(&s->rows[i]);
		else if (s->rows[i].program[0] != '\0')
			json_array_append_new(programs, score_row_json(&s->rows[i]));
	}
	json_object_set_new(o, "agent_id", json_integer((json_int_t)s->agent_id));
	json_object_set_new(o, "name", json_string(s->name ? s->name : ""));
	json_object_set_new(o, "score", num_json(s->score));
	json_object_set_new(o, "pinned", json_boolean(s->pinned));
	json_object_set_new(o, "overall", overall ? overall : json_null());
	json_object_set_new(o, "programs", programs);
	return o;
}

// A part's raw value in its own unit: survey points, shares, seconds, QA points.
static void raw_text(const char *part, const json_t *raw, char *out, size_t n)
{
	double v;

	if (!json_is_number(raw)) {
		snprintf(out, n, "-");
		return;
	}
	v = json_number_value(raw);
	if (strcmp(part, "handle_time") == 0)
		snprintf(out, n, "%.1f s", v);
	else if (strcmp(part, "satisfaction") == 0 || strcmp(part, "qa") == 0)
		snprintf(out, n, "%.2f", v);
	else
		snprintf(out, n, "%.3f", v);
}

static void num3_text(const json_t *v, char *out, size_t n)
{
	if (json_is_number(v))
		snprintf(out, n, "%.3f", json_number_value(v));
	else
		snprintf(out, n, "-");
}

// The parts of one score; the overall score's parts are its programs' parts, each naming its
// program.
static void print_parts(FILE *f, const char *parts_text)
{
	json_t *parts = parts_text ? json_loads(parts_text, 0, NULL) : NULL;
	bool by_program = false;
	size_t i;
	json_t *p;

	if (!json_is_array(parts) || json_array_size(parts) == 0) {
		fprintf(f, "  no outcomes, offers or calls in the window yet\n");
		json_decref(parts);
		return;
	}
	json_array_foreach(parts, i, p)
	{
		by_program |= json_is_string(json_object_get(p, "program"));
	}
	fprintf(f, "  %-*s%-14s %10s %11s %7s %6s\n", by_program ? 20 : 0,
	        by_program ? "PROGRAM" : "", "PART", "RAW", "NORMALISED", "WEIGHT", "N");
	json_array_foreach(parts, i, p)
	{
		const json_t *jn = json_object_get(p, "part"), *jp = json_object_get(p, "program");
		const char *name = json_is_string(jn) ? json_string_value(jn) : "?";
		const char *prog = json_is_string(jp) ? json_string_value(jp) : "";
		char raw[32], norm[32], weight[32];
		json_int_t cnt = json_integer_value(json_object_get(p, "n"));

		if (!rb_valid_id(name, 64))
			name = "?";
		if (*prog && !rb_valid_id(prog, 64))
			prog = "?";
		raw_text(name, json_object_get(p, "raw"), raw, sizeof raw);
		num3_text(json_object_get(p, "normalised"), norm, sizeof norm);
		num3_text(json_object_get(p, "weight"), weight, sizeof weight);
		fprintf(f, "  %-*s%-14s %10s %11s %7s %6lld%s\n", by_program ? 20 : 0,
		        by_program ? prog : "", name, raw, norm, weight, (long long)cnt,
		        json_is_number(json_object_get(p, "normalised")) ? ""
		                                                         : "  no data: left out");
	}
	json_decref(parts);
}

static const char *or_dash(const char *s)
{
	return s && *s ? s : "-";
}

void cli_agent_scores_print(FILE *f, const cli_agent_scores *s)
{
	const cli_score_row *first = s->nrows > 0 ? &s->rows[0] : NULL;

	fprintf(f, "agent %llu (%s)\n", (unsigned long long)s->agent_id, or_dash(s->name));
	if (s->pinned)
		fprintf(f,
		        "score    %s, pinned by a supervisor: the recompute leaves it alone "
		        "('ringbid agent set %llu --score auto' hands it back)\n",
		        or_dash(s->score), (unsigned long long)s->agent_id);
	else
		fprintf(f, "score    %s, computed from outcomes%s\n", or_dash(s->score),
		        s->nrows > 1 ? " (a program score below is used for that program's calls)"
		                     : "");
	if (!first) {
		fprintf(f, "no score computed yet: run 'ringbid scores recompute' or wait for the "
		           "scheduled recompute\n");
		return;
	}
	fprintf(f, "window   %s to %s (computed %s)\n", or_dash(first->window_start),
	        or_dash(first->window_end), or_dash(first->computed_at));
	for (size_t i = 0; i < s->nrows; i++) {
		const cli_score_row *r = &s->rows[i];
		bool overall = r->program[0] == '\0';

		fputc('\n', f);
		if (overall)
			fprintf(f, "overall  %s from %lld call%s", or_dash(r->score), r->calls,
			        r->calls == 1 ? "" : "s");
		else
			fprintf(f, "program %s  %s from %lld call%s", r->program, or_dash(r->score),
			        r->calls, r->calls == 1 ? "" : "s");
		if (r->provisional)
			fprintf(f, ": provisional, too few calls for a computed score%s",
			        overall ? "" : " in this program");
		else if (overall && s->pinned)
			fprintf(f, " (computed; not used while the score is pinned)");
		fputc('\n', f);
		print_parts(f, r->parts);
	}
}

static const char score_rows_sql[] =
        "SELECT program, score::text, provisional, calls, parts::text, " TS_UTC(
                "window_start") ", " TS_UTC("window_end") ", " TS_UTC("computed_at") " FROM "
                                                                                     "billing."
                                                                                     "agent_score_"
                                                                                     "parts($1::"
                                                                                     "bigint) "
                                                                                     "ORDER BY "
                                                                                     "program";

static const char agent_score_usage[] =
        "usage: ringbid agent score ID [--json]\n"
        "\n"
        "The agent's performance score as the last recompute left it: the overall score and a\n"
        "score per program where the agent has enough calls there (the auction compares the\n"
        "program score for that program's calls, else the overall score). Each computed score\n"
        "lists its parts: the raw value (mean survey 1-5, shares 0-1, mean talk seconds, mean\n"
        "QA score), the normalised value (0-1), the weight, and how many observations; a part\n"
        "without data is left out. A provisional score (too few calls) and a score pinned by a\n"
        "supervisor are said so.\n";

int cli_agent_score(int argc, char **argv)
{
	cli_opt opts[] = {{.name = "json"}};
	const char *pos[1], *params[1];
	char err[256];
	size_t npos;
	uint64_t id;
	PGconn *conn;
	PGresult *agent = NULL, *res = NULL;
	cli_score_row *rows = NULL;
	cli_agent_scores s = {0};
	int rc = cli_args_parse(argc, argv, opts, 1, pos, 1, &npos, err, sizeof err);

	if (rc == CLI_ARGS_HELP) {
		fputs(agent_score_usage, stdout);
		return CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error("agent score", "%s", err);
	if (npos != 1)
		return cli_usage_error("agent score", "expected an agent ID");
	if (cli_parse_agent_id(pos[0], &id) < 0)
		return cli_usage_error("agent score",
		                       "bad agent ID '%.32s' (a whole number from 1)", pos[0]);
	params[0] = pos[0];
	if (cli_db_connect(&conn) < 0)
		return CLI_EXIT_ERR;
	if (cli_db_exec(conn,
	                "SELECT name, score::text, score_pinned FROM roster.agents "
	                "WHERE id = $1::bigint",
	                1, params, &agent) < 0) {
		rc = query_fail(conn, agent, "cannot read the agent");
		goto out;
	}
	if (PQntuples(agent) == 0) {
		rc = cli_fail("no agent '%s'", pos[0]);
		goto out;
	}
	if (cli_db_exec(conn, score_rows_sql, 1, params, &res) < 0) {
		rc = query_fail(conn, res, "cannot read the agent's scores");
		goto out;
	}
	rows = calloc((size_t)PQntuples(res) + 1, sizeof *rows);
	if (!rows) {
		rc = cli_fail("out of memory");
		goto out;
	}
	for (int r = 0; r < PQntuples(res); r++) {
		cli_score_row *row = &rows[r];

#define COL(c) (PQgetisnull(res, r, (c)) ? NULL : PQgetvalue(res, r, (c)))
		row->program = PQgetvalue(res, r, 0);
		row->score = COL(1);
		row->provisional = strcmp(PQgetvalue(res, r, 2), "t") == 0;
		row->calls = strtoll(PQgetvalue(res, r, 3), NULL, 10);
		row->parts = COL(4);
		row->window_start = COL(5);
		row->window_end = COL(6);
		row->computed_at = COL(7);
#undef COL
	}
	s.agent_id = id;
	s.name = PQgetvalue(agent, 0, 0);
	s.score = PQgetvalue(agent, 0, 1);
	s.pinned = strcmp(PQgetvalue(agent, 0, 2), "t") == 0;
	s.rows = rows;
	s.nrows = (size_t)PQntuples(res);
	if (cli_opt_has(opts, 1, "json"))
		print_json(cli_agent_scores_json(&s), JSON_INDENT(2));
	else
		cli_agent_scores_print(stdout, &s);
	rc = CLI_EXIT_OK;
out:
	free(rows);
	PQclear(res);
	PQclear(agent);
	PQfinish(conn);
	return rc;
}

// ---------------------------------------------------------------------------------------------
// ringbid report lift

static bool num_value(const char *text, double *out)
{
	char *end;

	if (!text || !*text)
		return false;
	*out = strtod(text, &end);
	return *end == '\0' && isfinite(*out);
}

static json_t *group_json(const cli_lift_group *g)
{
	json_t *o = json_object();

	if (!o)
		return NULL;
	json_object_set_new(o, "calls", json_integer(g->calls));
	json_object_set_new(o, "surveyed", json_integer(g->surveyed));
	json_object_set_new(o, "satisfaction", num_json(g->satisfaction));
	json_object_set_new(o, "resolved_share", num_json(g->resolved_share));
	json_object_set_new(o, "sale_share", num_json(g->sale_share));
	json_object_set_new(o, "avg_handle_s", num_json(g->avg_handle_s));
	return o;
}

// auction - exploration, or null when either side has no value.
static json_t *diff_json(const char *a, const char *e)
{
	double x, y;

	if (!num_value(a, &x) || !num_value(e, &y))
		return json_null();
	return json_real(x - y);
}

json_t *cli_lift_json(const char *program, long long days, const cli_lift_group *auction,
                      const cli_lift_group *exploration)
{
	json_t *o = json_object(), *lift = json_object();

	if (!o || !lift) {
		json_decref(o);
		json_decref(lift);
		return NULL;
	}
	json_object_set_new(o, "program", json_string(program));
	json_object_set_new(o, "days", json_integer(days));
	json_object_set_new(o, "auction", group_json(auction));
	json_object_set_new(o, "exploration", group_json(exploration));
	json_object_set_new(lift, "satisfaction",
	                    diff_json(auction->satisfaction, exploration->satisfaction));
	json_object_set_new(lift, "resolved_share",
	                    diff_json(auction->resolved_share, exploration->resolved_share));
	json_object_set_new(lift, "sale_share",
	                    diff_json(auction->sale_share, exploration->sale_share));
	json_object_set_new(lift, "avg_handle_s",
	                    diff_json(auction->avg_handle_s, exploration->avg_handle_s));
	json_object_set_new(o, "lift", lift);
	return o;
}

// How a lift figure is shown: mean survey points, a share as a percentage, seconds.
typedef enum {
	SHOW_POINTS,
	SHOW_SHARE,
	SHOW_SECONDS,
} show_kind;

static void show_value(double v, show_kind k, bool diff, char *out, size_t n)
{
	switch (k) {
	case SHOW_POINTS:
		snprintf(out, n, diff ? "%+.2f" : "%.2f", v);
		break;
	case SHOW_SHARE:
		if (diff)
			snprintf(out, n, "%+.1f pt", v * 100);
		else
			snprintf(out, n, "%.1f %%", v * 100);
		break;
	case SHOW_SECONDS:
		snprintf(out, n, diff ? "%+.1f s" : "%.1f s", v);
		break;
	}
}

static void value_text(const char *text, show_kind k, char *out, size_t n)
{
	double v;

	if (num_value(text, &v))
		show_value(v, k, false, out, n);
	else
		snprintf(out, n, "-");
}

static void diff_text(const char *a, const char *e, show_kind k, char *out, size_t n)
{
	double x, y;

	if (num_value(a, &x) && num_value(e, &y))
		show_value(x - y, k, true, out, n);
	else
		snprintf(out, n, "-");
}

static void print_group(FILE *f, const char *route, const cli_lift_group *g)
{
	char sat[32], res[32], sale[32], handle[32];

	value_text(g->satisfaction, SHOW_POINTS, sat, sizeof sat);
	value_text(g->resolved_share, SHOW_SHARE, res, sizeof res);
	value_text(g->sale_share, SHOW_SHARE, sale, sizeof sale);
	value_text(g->avg_handle_s, SHOW_SECONDS, handle, sizeof handle);
	fprintf(f, "%-12s %7lld %9lld %13s %9s %9s %11s\n", route, g->calls, g->surveyed, sat, res,
	        sale, handle);
}

void cli_lift_print(FILE *f, const char *program, long long days, const cli_lift_group *auction,
                    const cli_lift_group *exploration)
{
	char sat[32], res[32], sale[32], handle[32];

	fprintf(f,
	        "program %s: completed calls answered in the last %lld day%s, by how they were "
	        "routed\n",
	        program, days, days == 1 ? "" : "s");
	fprintf(f, "%-12s %7s %9s %13s %9s %9s %11s\n", "ROUTE", "CALLS", "SURVEYED",
	        "SATISFACTION", "RESOLVED", "SALES", "AVG HANDLE");
	print_group(f, "auction", auction);
	print_group(f, "exploration", exploration);
	diff_text(auction->satisfaction, exploration->satisfaction, SHOW_POINTS, sat, sizeof sat);
	diff_text(auction->resolved_share, exploration->resolved_share, SHOW_SHARE, res,
	          sizeof res);
	diff_text(auction->sale_share, exploration->sale_share, SHOW_SHARE, sale, sizeof sale);
	diff_text(auction->avg_handle_s, exploration->avg_handle_s, SHOW_SECONDS, handle,
	          sizeof handle);
	fprintf(f, "%-12s %7s %9s %13s %9s %9s %11s\n", "lift", "", "", sat, res, sale, handle);
	if (exploration->calls == 0)
		fprintf(f,
		        "no exploratory calls in the window: give the program an exploration "
		        "share ('ringbid program set %s --explore-share 0.1') to measure lift\n",
		        program);
}

static const char report_usage[] =
        "usage: ringbid report lift PROGRAM [--days N] [--json]\n"
        "\n"
        "The lift of score routing: the completed calls of PROGRAM answered in the last N days\n"
        "(default RINGBID_SCORE_WINDOW_DAYS, else 30), split into calls the auction routed by\n"
        "score and calls the program's exploration share sent to the longest-available agent,\n"
        "with each group's mean survey score (of the calls surveyed), share resolved, share\n"
        "sold and mean talk time, and the difference (auction minus exploration).\n";

int cli_cmd_report(int argc, char **argv)
{
	cli_opt opts[] = {{.name = "days", .has_arg = true}, {.name = "json"}};
	const char *pos[2], *params[2];
	char err[256], days_text[24];
	cli_lift_group groups[2] = {{0}, {0}};
	long long days;
	size_t npos;
	PGconn *conn;
	PGresult *res = NULL;
	int rc = cli_args_parse(argc, argv, opts, 2, pos, 2, &npos, err, sizeof err);

	if (rc == CLI_ARGS_HELP || argc == 0) {
		fputs(report_usage, argc == 0 ? stderr : stdout);
		return argc == 0 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
	}
	if (rc < 0)
		return cli_usage_error("report", "%s", err);
	if (npos < 1 || strcmp(pos[0], "lift") != 0)
		return cli_usage_error("report", "expected 'lift PROGRAM'");
	if (npos != 2)
		return cli_usage_error("report lift", "expected a PROGRAM");
	if (!rb_valid_id(pos[1], 64))
		return cli_usage_error("report lift",
		                       "bad program '%.64s' (1-64 of A-Z a-z 0-9 . _ : -)", pos[1]);
	if (cli_opt_has(opts, 2, "days")) {
		if (cli_parse_int(cli_opt_get(opts, 2, "days"), 1, WINDOW_DAYS_MAX, &days) < 0)
			return cli_usage_error("report lift",
			                       "--days must be a whole number from 1 to %d",
			                       WINDOW_DAYS_MAX);
	} else if (env_int("RINGBID_SCORE_WINDOW_DAYS", WINDOW_DAYS_DEFAULT, WINDOW_DAYS_MAX,
	                   &days)) {
		return CLI_EXIT_ERR;
	}
	snprintf(days_text, sizeof days_text, "%lld", days);
	params[0] = pos[1];
	params[1] = days_text;
	if (cli_db_connect(&conn) < 0)
		return CLI_EXIT_ERR;
	if (cli_db_exec(conn, "SELECT 1 FROM roster.programs WHERE id = $1", 1, params, &res) < 0) {
		rc = query_fail(conn, res, "cannot read the programs");
		goto out;
	}
	if (PQntuples(res) == 0) {
		rc = cli_fail("no program '%s'", pos[1]);
		goto out;
	}
	PQclear(res);
	if (cli_db_exec(conn,
	                "SELECT route, calls, surveyed, satisfaction::text, resolved_share::text, "
	                "sale_share::text, avg_handle_s::text FROM billing.lift_report($1, "
	                "make_interval(days => $2::int))",
	                2, params, &res) < 0) {
		rc = query_fail(conn, res, "cannot compute the lift report");
		goto out;
	}
	for (int r = 0; r < PQntuples(res); r++) {
		const char *route = PQgetvalue(res, r, 0);
		cli_lift_group *g = strcmp(route, "auction") == 0       ? &groups[0]
		                    : strcmp(route, "exploration") == 0 ? &groups[1]
		                                                        : NULL;

		if (!g)
			continue;
#define COL(c) (PQgetisnull(res, r, (c)) ? NULL : PQgetvalue(res, r, (c)))
		g->calls = strtoll(PQgetvalue(res, r, 1), NULL, 10);
		g->surveyed = strtoll(PQgetvalue(res, r, 2), NULL, 10);
		g->satisfaction = COL(3);
		g->resolved_share = COL(4);
		g->sale_share = COL(5);
		g->avg_handle_s = COL(6);
#undef COL
	}
	if (cli_opt_has(opts, 2, "json"))
		print_json(cli_lift_json(pos[1], days, &groups[0], &groups[1]), JSON_INDENT(2));
	else
		cli_lift_print(stdout, pos[1], days, &groups[0], &groups[1]);
	rc = CLI_EXIT_OK;
out:
	PQclear(res);
	PQfinish(conn);
	return rc;
}
