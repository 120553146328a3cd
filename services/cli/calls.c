// `ringbid call`, `hangup`, `call-info`, `status` and `explain`: the broker's call API over REQ.
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <sodium.h>

#include "cli.h"
#include "rb_names.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_pb.h"
#include "rb_time.h"

#define REQUEST_TIMEOUT_MS 10000
#define POLL_MAX_MS        5000  // one long poll; well inside the request timeout
#define HANGUP_SETTLE_MS   10000 // how long to follow a hung-up call until it shows ENDED

// ---------------------------------------------------------------------------------------------
// Names and JSON (pure)

static uint64_t span_ms(uint64_t from_us, uint64_t to_us)
{
	return to_us > from_us ? (to_us - from_us) / 1000 : 0;
}

uint64_t cli_call_wait_ms(const Ringbid__CallInfo *ci, uint64_t now_us)
{
	if (!ci->arrived_us)
		return 0;
	if (ci->answered_us)
		return span_ms(ci->arrived_us, ci->answered_us);
	if (ci->ended_us)
		return span_ms(ci->arrived_us, ci->ended_us);
	return span_ms(ci->arrived_us, now_us);
}

uint64_t cli_call_talk_ms(const Ringbid__CallInfo *ci)
{
	if (!ci->answered_us || !ci->ended_us)
		return 0;
	return span_ms(ci->answered_us, ci->ended_us);
}

static void lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

// Text from the broker is printed only when it is plain printable text.
static const char *safe(const char *s)
{
	return s && rb_valid_text(s, 1024) ? s : "?";
}

static json_t *time_json(uint64_t us)
{
	char buf[40];

	return us ? json_string(rb_time_iso(us, buf, sizeof buf)) : json_null();
}

json_t *cli_call_json(const Ringbid__CallInfo *ci, bool full, uint64_t now_us)
{
	char state[16];
	json_t *o = json_object();

	if (!o)
		return NULL;
	snprintf(state, sizeof state, "%s", rb_call_state_name(ci->state));
	lower(state);
	json_object_set_new(o, "call_id", json_string(safe(ci->call_id)));
	json_object_set_new(o, "program", json_string(safe(ci->program)));
	json_object_set_new(o, "state", json_string(state));
	json_object_set_new(o, "disposition", json_string(rb_disposition_name(ci->disposition)));
	json_object_set_new(o, "agent_id", json_integer((json_int_t)ci->agent_id));
	json_object_set_new(o, "wait_ms", json_integer((json_int_t)cli_call_wait_ms(ci, now_us)));
	json_object_set_new(o, "talk_ms", json_integer((json_int_t)cli_call_talk_ms(ci)));
	json_object_set_new(o, "offers", json_integer(ci->offers));
	json_object_set_new(o, "review", json_boolean(ci->review));
	if (full) {
		json_t *skills = json_array();

		for (size_t i = 0; i < ci->n_skills && skills; i++)
			json_array_append_new(skills, json_string(safe(ci->skills[i])));
		json_object_set_new(o, "priority", json_integer(ci->priority));
		json_object_set_new(o, "skills", skills ? skills : json_null());
		json_object_set_new(o, "version", json_integer((json_int_t)ci->version));
		json_object_set_new(o, "arrived_at", time_json(ci->arrived_us));
		json_object_set_new(o, "offered_at", time_json(ci->offered_us));
		json_object_set_new(o, "answered_at", time_json(ci->answered_us));
		json_object_set_new(o, "ended_at", time_json(ci->ended_us));
	}
	return o;
}

json_t *cli_kpis_json(const Ringbid__Kpis *k)
{
	json_t *o = json_object(), *agents = json_object();

	if (!o || !agents) {
		json_decref(o);
		json_decref(agents);
		return NULL;
	}
	json_object_set_new(o, "calls_waiting", json_integer(k->calls_waiting));
	json_object_set_new(o, "longest_wait_ms", json_integer((json_int_t)k->longest_wait_ms));
	json_object_set_new(o, "calls_offered", json_integer((json_int_t)k->calls_offered));
	json_object_set_new(o, "calls_answered", json_integer((json_int_t)k->calls_answered));
	json_object_set_new(o, "answered_within_20s",
	                    json_integer((json_int_t)k->answered_within_20s));
	json_object_set_new(o, "calls_abandoned", json_integer((json_int_t)k->calls_abandoned));
	json_object_set_new(o, "calls_overflow", json_integer((json_int_t)k->calls_overflow));
	json_object_set_new(o, "calls_completed", json_integer((json_int_t)k->calls_completed));
	json_object_set_new(o, "asa_ms", json_integer((json_int_t)k->asa_ms));
	json_object_set_new(o, "calls_offering", json_integer(k->calls_offering));
	json_object_set_new(o, "calls_connected", json_integer(k->calls_connected));
	json_object_set_new(o, "cdr_outbox", json_integer(k->cdr_outbox));
	// Every state is listed, zero when presence reported none in it.
	for (int s = RINGBID__AGENT_STATE__AGENT_OFFLINE; s <= RINGBID__AGENT_STATE__AGENT_WRAP_UP;
	     s++)
		json_object_set_new(agents, rb_agent_state_name(s), json_integer(0));
	for (size_t i = 0; i < k->n_agents; i++) {
		const char *name = rb_agent_state_name(k->agents[i]->state);
		json_t *cur;

		if (!name)
			continue;
		cur = json_object_get(agents, name);
		json_integer_set(cur, json_integer_value(cur) + k->agents[i]->count);
	}
	json_object_set_new(o, "agents", agents);
	return o;
}

// Which score the auction compared: "program" (the agent's score in the call's program) or
// "overall"; "" when the auction did not say (an auction older than program scores).
static const char *basis(const char *b)
{
	if (b && (strcmp(b, "program") == 0 || strcmp(b, "overall") == 0))
		return b;
	return "";
}

json_t *cli_explain_json(const Ringbid__ExplainReply *e, uint64_t now_us)
{
	Ringbid__CallInfo empty = RINGBID__CALL_INFO__INIT;
	json_t *o = json_object(), *decisions = json_array(), *excluded = json_array();

	if (!o || !decisions || !excluded) {
		json_decref(o);
		json_decref(decisions);
		json_decref(excluded);
		return NULL;
	}
	json_object_set_new(o, "call", cli_call_json(e->call ? e->call : &empty, true, now_us));
	for (size_t i = 0; i < e->n_decisions; i++) {
		const Ringbid__Decision *d = e->decisions[i];
		json_t *j = json_object();

		if (!j)
			break;
		json_object_set_new(j, "agent_id", json_integer((json_int_t)d->agent_id));
		json_object_set_new(j, "score", json_real(d->score));
		json_object_set_new(j, "score_basis", json_string(basis(d->score_basis)));
		json_object_set_new(j, "runner_up_id", json_integer((json_int_t)d->runner_up_id));
		json_object_set_new(j, "runner_up_score", json_real(d->runner_up_score));
		json_object_set_new(j, "runner_up_basis",
		                    json_string(d->runner_up_id ? basis(d->runner_up_basis) : ""));
		json_object_set_new(j, "eligible", json_integer(d->eligible));
		json_object_set_new(j, "reason", json_string(safe(d->reason)));
		json_object_set_new(j, "exploratory", json_boolean(d->exploratory));
		json_object_set_new(j, "at", time_json(d->at_us));
		json_object_set_new(j, "available_since", time_json(d->available_since_us));
		json_array_append_new(decisions, j);
	}
	for (size_t i = 0; i < e->n_excluded; i++)
		json_array_append_new(excluded, json_integer((json_int_t)e->excluded[i]));
	json_object_set_new(o, "decisions", decisions);
	json_object_set_new(o, "excluded", excluded);
	return o;
}

static void print_json(json_t *j, size_t flags)
{
	// Scores and weights are numeric(5,2) and numeric(4,3) in PostgreSQL: 15 significant
	// digits print them as stored (0.3, not 0.29999999999999999).
	char *s = j ? json_dumps(j, flags | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15)) : NULL;

	if (s) {
		puts(s);
		free(s);
	}
	fflush(stdout);
	json_decref(j);
}

// ---------------------------------------------------------------------------------------------
// The broker connection

int cli_broker_open(cli_broker *b)
{
	int rv;

	if (rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, b->url, sizeof b->url) < 0)
		return cli_fail("RINGBID_BROKER_URL is not valid");
	if (rb_config_service_token(b->token, sizeof b->token) < 0)
		return cli_fail("cannot read the service token (RINGBID_SERVICE_TOKEN)");
	if ((rv = nng_req0_open(&b->sock)) != 0)
		return cli_fail("cannot open a socket: %s", nng_strerror(rv));
	// The limit is set before dialing so no reply can make nng allocate more than it.
	if ((rv = nng_socket_set_size(b->sock, NNG_OPT_RECVMAXSZ, RB_PB_MAX_DEFAULT)) != 0 ||
	    (rv = nng_socket_set_ms(b->sock, NNG_OPT_SENDTIMEO, REQUEST_TIMEOUT_MS)) != 0) {
		nng_close(b->sock);
		return cli_fail("cannot set up the socket: %s", nng_strerror(rv));
	}
	// A blocking dial fails at once when nothing listens, which makes the clearest message.
	if ((rv = nng_dial(b->sock, b->url, NULL, 0)) != 0) {
		nng_close(b->sock);
		cli_fail("cannot reach the broker at %s: %s", b->url, nng_strerror(rv));
		fputs("ringbid: hint: is the stack running? ('ringbid up')\n", stderr);
		return CLI_EXIT_ERR;
	}
	return 0;
}

void cli_broker_close(cli_broker *b)
{
	nng_close(b->sock);
	explicit_bzero(b->token, sizeof b->token);
}

int cli_broker_call(cli_broker *b, Ringbid__CallRequest *req, uint32_t extra_wait_ms,
                    const char *refused, Ringbid__CallReply **out)
{
	ProtobufCMessage *m = NULL;
	nng_msg *msg;
	int rc, rv;

	*out = NULL;
	req->token = b->token;
	rc = rb_pb_pack(&req->base, RB_PB_MAX_DEFAULT, &msg);
	if (rc < 0)
		return cli_fail("cannot encode the request: %s", rb_err_str(rc));
	nng_socket_set_ms(b->sock, NNG_OPT_RECVTIMEO,
	                  (nng_duration)(REQUEST_TIMEOUT_MS + extra_wait_ms));
	if ((rv = nng_sendmsg(b->sock, msg, 0)) != 0) {
		nng_msg_free(msg);
		return cli_fail("cannot send to the broker at %s: %s", b->url, nng_strerror(rv));
	}
	if ((rv = nng_recvmsg(b->sock, &msg, 0)) != 0) {
		if (rv == NNG_ETIMEDOUT)
			return cli_fail("the broker at %s did not answer within %d s", b->url,
			                REQUEST_TIMEOUT_MS / 1000);
		return cli_fail("no answer from the broker at %s: %s", b->url, nng_strerror(rv));
	}
	rc = rb_pb_unpack_msg(&ringbid__call_reply__descriptor, msg, RB_PB_MAX_DEFAULT, &m);
	nng_msg_free(msg);
	if (rc < 0)
		return cli_fail("the broker's answer is not readable: %s", rb_err_str(rc));
	*out = (Ringbid__CallReply *)m;
	if ((*out)->error) {
		const Ringbid__ErrorReply *e = (*out)->error;
		int code = e->code < 0 && e->code >= RB_ECODE_MIN ? e->code : RB_EINVAL;

		cli_fail("%s: %s (%s)", refused ? refused : "the broker refused",
		         e->message && *e->message ? safe(e->message) : rb_err_str(code),
		         rb_err_name(code));
		if (code == RB_EAUTH)
			fputs("ringbid: hint: RINGBID_SERVICE_TOKEN must match the services' "
			      "(see $RINGBID_HOME/env)\n",
			      stderr);
		rb_pb_free(m);
		*out = NULL;
		return CLI_EXIT_ERR;
	}
	return 0;
}

// A reply that must carry a call.
static int call_reply(cli_broker *b, Ringbid__CallRequest *req, uint32_t extra_wait_ms,
                      Ringbid__CallReply **out)
{
	int rc = cli_broker_call(b, req, extra_wait_ms, NULL, out);

	if (rc == 0 && !(*out)->call) {
		rb_pb_free(&(*out)->base);
		*out = NULL;
		return cli_fail("the broker answered without the call");
	}
	return rc;
}

static int query_call(cli_broker *b, const char *call_id, uint64_t after_version, uint32_t wait_ms,
                      Ringbid__CallReply **out)
{
	Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
	Ringbid__CallQuery q = RINGBID__CALL_QUERY__INIT;

	q.call_id = (char *)call_id;
	q.after_version = after_version;
	q.wait_ms = wait_ms;
	req.body_case = RINGBID__CALL_REQUEST__BODY_QUERY;
	req.query = &q;
	return call_reply(b, &req, wait_ms, out);
}

static int hangup_call(cli_broker *b, const char *call_id, Ringbid__CallReply **out)
{
	Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
	Ringbid__CallHangup h = RINGBID__CALL_HANGUP__INIT;

	h.call_id = (char *)call_id;
	h.side = RINGBID__HANGUP_SIDE__SIDE_CALLER;
	req.body_case = RINGBID__CALL_REQUEST__BODY_HANGUP;
	req.hangup = &h;
	return call_reply(b, &req, 0, out);
}

// ---------------------------------------------------------------------------------------------
// Human output

static void print_connected(const Ringbid__CallInfo *ci)
{
	printf("call %s -> agent %llu after %.1f s (offers: %u)\n", safe(ci->call_id),
	       (unsigned long long)ci->agent_id, (double)cli_call_wait_ms(ci, 0) / 1000.0,
	       ci->offers);
}

static void print_ended(const Ringbid__CallInfo *ci)
{
	const char *review = ci->review ? " [closed at maximum talk time: flagged for review]" : "";

	switch (ci->disposition) {
	case RINGBID__DISPOSITION__DISP_COMPLETED:
		printf("call %s with agent %llu completed after %.1f s of talk%s\n",
		       safe(ci->call_id), (unsigned long long)ci->agent_id,
		       (double)cli_call_talk_ms(ci) / 1000.0, review);
		break;
	case RINGBID__DISPOSITION__DISP_ABANDONED:
		printf("call %s abandoned after %.1f s (offers: %u)\n", safe(ci->call_id),
		       (double)cli_call_wait_ms(ci, 0) / 1000.0, ci->offers);
		break;
	case RINGBID__DISPOSITION__DISP_OVERFLOW:
		printf("call %s overflowed after %.1f s without an agent (offers: %u)\n",
		       safe(ci->call_id), (double)cli_call_wait_ms(ci, 0) / 1000.0, ci->offers);
		break;
	default:
		printf("call %s ended\n", safe(ci->call_id));
		break;
	}
}

static void print_time(const char *label, uint64_t us)
{
	char buf[40];

	printf("%-10s %s\n", label, us ? rb_time_iso(us, buf, sizeof buf) : "-");
}

static void print_call_info(const Ringbid__CallInfo *ci)
{
	uint64_t now = rb_now_us();
	const char *disp = rb_disposition_name(ci->disposition);

	printf("%-10s %s\n", "call", safe(ci->call_id));
	printf("%-10s %s\n", "program", safe(ci->program));
	printf("%-10s %s%s%s%s\n", "state", rb_call_state_name(ci->state), *disp ? " (" : "", disp,
	       *disp ? ")" : "");
	if (ci->agent_id)
		printf("%-10s %llu\n", "agent", (unsigned long long)ci->agent_id);
	else
		printf("%-10s -\n", "agent");
	printf("%-10s %d\n", "priority", ci->priority);
	printf("%-10s ", "skills");
	for (size_t i = 0; i < ci->n_skills; i++)
		printf("%s%s", i ? "," : "", safe(ci->skills[i]));
	printf("%s\n", ci->n_skills ? "" : "-");
	print_time("arrived", ci->arrived_us);
	print_time("offered", ci->offered_us);
	print_time("answered", ci->answered_us);
	print_time("ended", ci->ended_us);
	printf("%-10s %.1f s\n", "wait", (double)cli_call_wait_ms(ci, now) / 1000.0);
	printf("%-10s %.1f s\n", "talk", (double)cli_call_talk_ms(ci) / 1000.0);
	printf("%-10s %u\n", "offers", ci->offers);
	printf("%-10s %s\n", "review", ci->review ? "yes (closed at maximum talk time)" : "no");
}

// ---------------------------------------------------------------------------------------------
// ringbid call

static const char call_usage[] =
        "usage: ringbid call PROGRAM [options]\n"
        "\n"
        "Places a call to PROGRAM the way telephony would, then follows it: who it was offered\n"
        "to, when it was connected, how it ended.\n"
        "\n"
        "options:\n"
        "  --skills a,b          skills this call needs besides the program's\n"
        "  --talk S              once connected, talk S seconds, then hang up as the caller\n"
        "                        (without it: return once connected; the agent ends the call)\n"
        "  --priority N          served before lower priorities among waiting calls (-1000..1000)\n"
        "  --id CALL_ID          the call's id (default: a new random one)\n"
        "  --caller NUMBER       caller number (masked in logs)\n"
        "  --abandon-after S     hang up as the caller if not connected after S seconds\n"
        "  --timeout S           stop following if not connected after S seconds (default 60);\n"
        "                        the call stays\n"
        "  --json                one JSON object at the end\n"
        "\n"
        "Seconds may have decimals (0.5). Exit status: 0 connected (or completed), 4 abandoned,\n"
        "overflow or timed out, 1 error.\n";

static bool valid_caller(const char *s)
{
	size_t n = 0;

	if (*s == '+')
		s++;
	for (; s[n]; n++) {
		if (s[n] < '0' || s[n] > '9')
			return false;
	}
	return n >= 1 && n <= 31;
}

// A fresh call id: the CLI picks it, so that a resent CallArrived cannot make a second call.
static void new_call_id(char *out, size_t n)
{
	unsigned char rnd[6];
	char hex[sizeof rnd * 2 + 1];

	randombytes_buf(rnd, sizeof rnd);
	sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
	snprintf(out, n, "c%s", hex);
}

typedef struct call_opts {
	const char *program;
	char call_id[72];
	char **skills;
	size_t nskills;
	long long priority;
	const char *caller;
	int64_t talk_ms;    // -1: return once connected
	int64_t abandon_ms; // -1: never
	int64_t timeout_ms;
	bool json;
} call_opts;

static int call_parse(int argc, char **argv, call_opts *co)
{
	cli_opt opts[] = {
	        {.name = "skills", .has_arg = true},   {.name = "talk", .has_arg = true},
	        {.name = "priority", .has_arg = true}, {.name = "id", .has_arg = true},
	        {.name = "caller", .has_arg = true},   {.name = "abandon-after", .has_arg = true},
	        {.name = "timeout", .has_arg = true},  {.name = "json"},
	};
	const size_t nopts = sizeof opts / sizeof opts[0];
	const char *pos[1], *v;
	size_t npos;
	char err[256];
	int rc = cli_args_parse(argc, argv, opts, nopts, pos, 1, &npos, err, sizeof err);

	if (rc == CLI_ARGS_HELP) {
		fputs(call_usage, stdout);
		return CLI_ARGS_HELP;
	}
	if (rc < 0)
		return cli_usage_error("call", "%s", err);
	if (npos != 1)
		return cli_usage_error("call", "expected a PROGRAM");
	co->program = pos[0];
	if (!rb_valid_id(co->program, 64))
		return cli_usage_error("call", "bad program '%.64s'", co->program);
	if ((v = cli_opt_get(opts, nopts, "skills"))) {
		rc = cli_list_parse(v, ',', &co->skills, &co->nskills, err, sizeof err);
		if (rc == RB_EINVAL)
			return cli_usage_error("call", "--skills: %s", err);
		if (rc < 0)
			return cli_fail("out of memory");
	}
	co->priority = 0;
	if ((v = cli_opt_get(opts, nopts, "priority")) &&
	    cli_parse_int(v, -CLI_PRIORITY_MAX, CLI_PRIORITY_MAX, &co->priority) < 0)
		return cli_usage_error("call", "--priority must be a whole number from %d to %d",
		                       -CLI_PRIORITY_MAX, CLI_PRIORITY_MAX);
	if ((v = cli_opt_get(opts, nopts, "id"))) {
		if (!rb_valid_id(v, 64))
			return cli_usage_error(
			        "call", "bad call id '%.64s' (1-64 of A-Z a-z 0-9 . _ : -)", v);
		snprintf(co->call_id, sizeof co->call_id, "%s", v);
	} else {
		new_call_id(co->call_id, sizeof co->call_id);
	}
	co->caller = cli_opt_get(opts, nopts, "caller");
	if (co->caller && !valid_caller(co->caller))
		return cli_usage_error("call",
		                       "--caller must be a phone number: digits, optional +");
	co->talk_ms = -1;
	if ((v = cli_opt_get(opts, nopts, "talk")) &&
	    cli_parse_seconds_ms(v, 86400000, &co->talk_ms) < 0)
		return cli_usage_error("call", "--talk must be seconds (0 to 86400)");
	co->abandon_ms = -1;
	if ((v = cli_opt_get(opts, nopts, "abandon-after")) &&
	    cli_parse_seconds_ms(v, 86400000, &co->abandon_ms) < 0)
		return cli_usage_error("call", "--abandon-after must be seconds (0 to 86400)");
	co->timeout_ms = 60000;
	if ((v = cli_opt_get(opts, nopts, "timeout")) &&
	    cli_parse_seconds_ms(v, 86400000, &co->timeout_ms) < 0)
		return cli_usage_error("call", "--timeout must be seconds (0 to 86400)");
	// Abandoning is part of following: without its own --timeout the call is followed that
	// long.
	if (!cli_opt_has(opts, nopts, "timeout") && co->abandon_ms > co->timeout_ms)
		co->timeout_ms = co->abandon_ms;
	co->json = cli_opt_has(opts, nopts, "json");
	return 0;
}

static int64_t mono_ms(void)
{
	return (int64_t)(rb_mono_us() / 1000);
}

// How the following of a call came out.
typedef enum {
	FOLLOW_CONNECTED,
	FOLLOW_ENDED,
	FOLLOW_GAVE_UP
} follow_end;

// Follows the call from *cur (replaced as new versions arrive) until it is connected (and,
// with talk, talked and hung up), ends, or the deadlines pass. Returns 0 or an exit status.
static int follow(cli_broker *b, const call_opts *co, Ringbid__CallReply **cur, follow_end *how)
{
	const int64_t start = mono_ms();
	int64_t talk_end = -1, settle_end = -1;
	bool reported = false, hung_up = false;

	for (;;) {
		const Ringbid__CallInfo *ci = (*cur)->call;
		int64_t now = mono_ms(), deadline;
		Ringbid__CallReply *next;
		int rc;

		if (ci->state == RINGBID__CALL_STATE__CALL_ENDED) {
			if (!co->json && ci->answered_us && !reported)
				print_connected(ci);
			*how = FOLLOW_ENDED;
			return 0;
		}
		if (ci->state == RINGBID__CALL_STATE__CALL_CONNECTED && !reported) {
			reported = true;
			if (!co->json) {
				print_connected(ci);
				fflush(stdout);
			}
			if (co->talk_ms < 0) {
				*how = FOLLOW_CONNECTED;
				return 0;
			}
			talk_end = now + co->talk_ms;
		}
		if (hung_up) {
			deadline = settle_end;
		} else if (reported) {
			deadline = talk_end;
		} else {
			deadline = start + co->timeout_ms;
			if (co->abandon_ms >= 0 && start + co->abandon_ms < deadline)
				deadline = start + co->abandon_ms;
		}
		if (now >= deadline) {
			if (hung_up)
				return cli_fail(
				        "call %s: the broker did not end the call after the "
				        "hang-up",
				        co->call_id);
			if (!reported &&
			    !(co->abandon_ms >= 0 && co->abandon_ms <= co->timeout_ms)) {
				*how = FOLLOW_GAVE_UP;
				return 0;
			}
			// The talk is over, or the caller's patience is: hang up as the caller.
			rc = hangup_call(b, co->call_id, &next);
			if (rc)
				return rc;
			rb_pb_free(&(*cur)->base);
			*cur = next;
			hung_up = true;
			settle_end = mono_ms() + HANGUP_SETTLE_MS;
			continue;
		}
		int64_t wait = deadline - now;

		rc = query_call(b, co->call_id, ci->version,
		                (uint32_t)(wait < POLL_MAX_MS ? wait : POLL_MAX_MS), &next);
		if (rc)
			return rc;
		rb_pb_free(&(*cur)->base);
		*cur = next;
	}
}

int cli_cmd_call(int argc, char **argv)
{
	call_opts co = {0};
	cli_broker b;
	Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
	Ringbid__CallArrived arr = RINGBID__CALL_ARRIVED__INIT;
	Ringbid__CallReply *reply = NULL;
	follow_end how = FOLLOW_GAVE_UP;
	int rc = call_parse(argc, argv, &co);

	if (rc == CLI_ARGS_HELP) {
		cli_list_free(co.skills, co.nskills);
		return CLI_EXIT_OK;
	}
	if (rc) {
		cli_list_free(co.skills, co.nskills);
		return rc;
	}
	rc = cli_broker_open(&b);
	if (rc) {
		cli_list_free(co.skills, co.nskills);
		return rc;
	}
	arr.call_id = co.call_id;
	arr.program = (char *)co.program;
	arr.skills = co.skills;
	arr.n_skills = co.nskills;
	arr.priority = (int32_t)co.priority;
	arr.caller = co.caller ? (char *)co.caller : (char *)"";
	req.body_case = RINGBID__CALL_REQUEST__BODY_ARRIVED;
	req.arrived = &arr;
	rc = call_reply(&b, &req, 0, &reply);
	if (rc == 0)
		rc = follow(&b, &co, &reply, &how);
	if (rc == 0) {
		const Ringbid__CallInfo *ci = reply->call;
		bool served = how == FOLLOW_CONNECTED ||
		              (how == FOLLOW_ENDED &&
		               ci->disposition == RINGBID__DISPOSITION__DISP_COMPLETED);

		if (co.json) {
			print_json(cli_call_json(ci, false, rb_now_us()), JSON_COMPACT);
		} else if (how == FOLLOW_ENDED) {
			print_ended(ci);
		} else if (how == FOLLOW_GAVE_UP) {
			printf("call %s still %s after %.1f s: stopped following (the call stays; "
			       "see 'ringbid call-info %s')\n",
			       co.call_id, rb_call_state_name(ci->state),
			       (double)co.timeout_ms / 1000.0, co.call_id);
		}
		rc = served ? CLI_EXIT_OK : CLI_EXIT_UNSERVED;
	}
	fflush(stdout);
	rb_pb_free(reply ? &reply->base : NULL);
	cli_broker_close(&b);
	cli_list_free(co.skills, co.nskills);
	return rc;
}

// ---------------------------------------------------------------------------------------------
// hangup, call-info, status, explain

// Parses "CMD CALL_ID [--json]" (no id for status). Returns 0, CLI_ARGS_HELP or an exit status.
static int parse_simple(const char *cmd, const char *usage, bool want_id, int argc, char **argv,
                        const char **id, bool *json)
{
	cli_opt opts[] = {{.name = "json"}};
	const char *pos[1];
	size_t npos;
	char err[256];
	int rc = cli_args_parse(argc, argv, opts, 1, pos, 1, &npos, err, sizeof err);

	if (rc == CLI_ARGS_HELP) {
		fputs(usage, stdout);
		return CLI_ARGS_HELP;
	}
	if (rc < 0)
		return cli_usage_error(cmd, "%s", err);
	if (want_id && npos != 1)
		return cli_usage_error(cmd, "expected a CALL_ID");
	if (!want_id && npos != 0)
		return cli_usage_error(cmd, "unexpected argument '%s'", pos[0]);
	if (want_id && !rb_valid_id(pos[0], 64))
		return cli_usage_error(cmd, "bad call id '%.64s'", pos[0]);
	*id = want_id ? pos[0] : NULL;
	*json = cli_opt_has(opts, 1, "json");
	return 0;
}

static const char hangup_usage[] = "usage: ringbid hangup CALL_ID [--json]\n"
                                   "\n"
                                   "Hangs up a call as its caller: a waiting or ringing call is "
                                   "abandoned, a connected one completed.\n";

int cli_cmd_hangup(int argc, char **argv)
{
	const char *id;
	bool json;
	cli_broker b;
	Ringbid__CallReply *reply;
	int rc = parse_simple("hangup", hangup_usage, true, argc, argv, &id, &json);

	if (rc)
		return rc == CLI_ARGS_HELP ? CLI_EXIT_OK : rc;
	if ((rc = cli_broker_open(&b)) != 0)
		return rc;
	rc = hangup_call(&b, id, &reply);
	if (rc == 0) {
		if (json)
			print_json(cli_call_json(reply->call, false, rb_now_us()), JSON_COMPACT);
		else if (reply->call->state == RINGBID__CALL_STATE__CALL_ENDED)
			print_ended(reply->call);
		else
			printf("call %s is %s\n", safe(reply->call->call_id),
			       rb_call_state_name(reply->call->state));
		rb_pb_free(&reply->base);
	}
	cli_broker_close(&b);
	return rc;
}

static const char call_info_usage[] = "usage: ringbid call-info CALL_ID [--json]\n"
                                      "\n"
                                      "Shows a call as the broker has it now.\n";

int cli_cmd_call_info(int argc, char **argv)
{
	const char *id;
	bool json;
	cli_broker b;
	Ringbid__CallReply *reply;
	int rc = parse_simple("call-info", call_info_usage, true, argc, argv, &id, &json);

	if (rc)
		return rc == CLI_ARGS_HELP ? CLI_EXIT_OK : rc;
	if ((rc = cli_broker_open(&b)) != 0)
		return rc;
	rc = query_call(&b, id, 0, 0, &reply);
	if (rc == 0) {
		if (json)
			print_json(cli_call_json(reply->call, true, rb_now_us()), JSON_COMPACT);
		else
			print_call_info(reply->call);
		rb_pb_free(&reply->base);
	}
	cli_broker_close(&b);
	return rc;
}

static const char status_usage[] =
        "usage: ringbid status [--json]\n"
        "\n"
        "The wallboard: agents by state, calls waiting and the longest wait, calls offered,\n"
        "answered, abandoned and overflowed, service level (answered within 20 s) and ASA.\n";

static void print_status(const Ringbid__Kpis *k)
{
	uint32_t counts[6] = {0}, online = 0;

	for (size_t i = 0; i < k->n_agents; i++) {
		unsigned s = (unsigned)k->agents[i]->state;

		if (s < 6)
			counts[s] += k->agents[i]->count;
	}
	for (int s = 1; s < 6; s++)
		online += counts[s];
	printf("agents     %u online: %u available, %u ringing, %u on a call, %u in wrap-up, "
	       "%u not ready (%u offline)\n",
	       online, counts[RINGBID__AGENT_STATE__AGENT_AVAILABLE],
	       counts[RINGBID__AGENT_STATE__AGENT_RESERVED],
	       counts[RINGBID__AGENT_STATE__AGENT_ON_CALL],
	       counts[RINGBID__AGENT_STATE__AGENT_WRAP_UP],
	       counts[RINGBID__AGENT_STATE__AGENT_NOT_READY],
	       counts[RINGBID__AGENT_STATE__AGENT_OFFLINE]);
	printf("now        %u waiting (longest %.1f s), %u ringing, %u connected\n",
	       k->calls_waiting, (double)k->longest_wait_ms / 1000.0, k->calls_offering,
	       k->calls_connected);
	printf("calls      %llu offered, %llu answered, %llu abandoned, %llu overflow, %llu "
	       "completed\n",
	       (unsigned long long)k->calls_offered, (unsigned long long)k->calls_answered,
	       (unsigned long long)k->calls_abandoned, (unsigned long long)k->calls_overflow,
	       (unsigned long long)k->calls_completed);
	if (k->calls_answered > 0)
		printf("service    %.1f %% answered within 20 s (%llu of %llu), ASA %.1f s\n",
		       100.0 * (double)k->answered_within_20s / (double)k->calls_answered,
		       (unsigned long long)k->answered_within_20s,
		       (unsigned long long)k->calls_answered, (double)k->asa_ms / 1000.0);
	else
		printf("service    no call answered yet\n");
	printf("billing    %u CDRs waiting for billing\n", k->cdr_outbox);
}

int cli_cmd_status(int argc, char **argv)
{
	const char *id;
	bool json;
	cli_broker b;
	Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
	Ringbid__StatusQuery q = RINGBID__STATUS_QUERY__INIT;
	Ringbid__CallReply *reply;
	int rc = parse_simple("status", status_usage, false, argc, argv, &id, &json);

	if (rc)
		return rc == CLI_ARGS_HELP ? CLI_EXIT_OK : rc;
	if ((rc = cli_broker_open(&b)) != 0)
		return rc;
	req.body_case = RINGBID__CALL_REQUEST__BODY_STATUS;
	req.status = &q;
	rc = cli_broker_call(&b, &req, 0, NULL, &reply);
	if (rc == 0 && !reply->kpis) {
		rb_pb_free(&reply->base);
		rc = cli_fail("the broker answered without figures");
	} else if (rc == 0) {
		if (json)
			print_json(cli_kpis_json(reply->kpis), JSON_INDENT(2));
		else
			print_status(reply->kpis);
		rb_pb_free(&reply->base);
	}
	cli_broker_close(&b);
	return rc;
}

static const char explain_usage[] =
        "usage: ringbid explain CALL_ID [--json]\n"
        "\n"
        "Why a call went where it went: for each offer the winner and the score the auction\n"
        "compared (the agent's program score, or its overall score where it has none in the\n"
        "call's program), the runner-up and its score, how many agents were eligible and the\n"
        "reason; exploratory offers (the program's exploration share sent the call to the\n"
        "longest-available agent) are marked. Then the agents excluded (declined or missed)\n"
        "and the outcome.\n";

static void print_explain(const Ringbid__ExplainReply *e)
{
	const Ringbid__CallInfo *ci = e->call;
	char at[40];

	printf("call %s, program %s: %s", safe(ci->call_id), safe(ci->program),
	       rb_call_state_name(ci->state));
	if (*rb_disposition_name(ci->disposition))
		printf(" (%s)", rb_disposition_name(ci->disposition));
	printf(", %u offer%s\n", ci->offers, ci->offers == 1 ? "" : "s");
	if (e->n_decisions == 0)
		printf("  no offer was made\n");
	for (size_t i = 0; i < e->n_decisions; i++) {
		const Ringbid__Decision *d = e->decisions[i];

		printf("  offer %zu at %s: agent %llu, score %.2f", i + 1,
		       rb_time_iso(d->at_us, at, sizeof at), (unsigned long long)d->agent_id,
		       d->score);
		if (*basis(d->score_basis))
			printf(" (%s score)", basis(d->score_basis));
		if (d->runner_up_id) {
			printf("; runner-up agent %llu, score %.2f",
			       (unsigned long long)d->runner_up_id, d->runner_up_score);
			if (*basis(d->runner_up_basis))
				printf(" (%s score)", basis(d->runner_up_basis));
		} else
			printf("; no runner-up");
		printf("; %u eligible; %s%s\n", d->eligible, safe(d->reason),
		       d->exploratory ? " [exploratory: longest-available agent]" : "");
	}
	if (e->n_excluded > 0) {
		printf("  excluded (declined or missed): ");
		for (size_t i = 0; i < e->n_excluded; i++)
			printf("%s%llu", i ? ", " : "", (unsigned long long)e->excluded[i]);
		putchar('\n');
	}
	printf("  outcome: ");
	if (ci->answered_us)
		printf("connected to agent %llu after %.1f s", (unsigned long long)ci->agent_id,
		       (double)cli_call_wait_ms(ci, 0) / 1000.0);
	else if (ci->state != RINGBID__CALL_STATE__CALL_ENDED)
		printf("%s, waiting %.1f s so far", rb_call_state_name(ci->state),
		       (double)cli_call_wait_ms(ci, rb_now_us()) / 1000.0);
	else
		printf("never connected");
	if (ci->state == RINGBID__CALL_STATE__CALL_ENDED)
		printf("; ended %s%s", rb_disposition_name(ci->disposition),
		       ci->review ? " (flagged for review)" : "");
	if (ci->ended_us && ci->answered_us)
		printf(" after %.1f s of talk", (double)cli_call_talk_ms(ci) / 1000.0);
	putchar('\n');
}

int cli_cmd_explain(int argc, char **argv)
{
	const char *id;
	bool json;
	cli_broker b;
	Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
	Ringbid__ExplainQuery q = RINGBID__EXPLAIN_QUERY__INIT;
	Ringbid__CallReply *reply;
	int rc = parse_simple("explain", explain_usage, true, argc, argv, &id, &json);

	if (rc)
		return rc == CLI_ARGS_HELP ? CLI_EXIT_OK : rc;
	if ((rc = cli_broker_open(&b)) != 0)
		return rc;
	q.call_id = (char *)id;
	req.body_case = RINGBID__CALL_REQUEST__BODY_EXPLAIN;
	req.explain = &q;
	rc = cli_broker_call(&b, &req, 0, NULL, &reply);
	if (rc == 0 && (!reply->explain || !reply->explain->call)) {
		rb_pb_free(&reply->base);
		rc = cli_fail("the broker answered without an explanation");
	} else if (rc == 0) {
		if (json)
			print_json(cli_explain_json(reply->explain, rb_now_us()), JSON_INDENT(2));
		else
			print_explain(reply->explain);
		rb_pb_free(&reply->base);
	}
	cli_broker_close(&b);
	return rc;
}
