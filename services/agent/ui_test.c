// Unit tests of the agent's screen: exact JSON field names per event, sentences, commands.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>
#include "ui.h"
#include "rb_err.h"

#define TS_US 1795420800123456ULL // 2026-11-23T08:00:00.123456Z

static agent_event base(agent_event_kind kind)
{
	agent_event ev;
	memset(&ev, 0, sizeof(ev));
	ev.kind = kind;
	ev.reason = ev.call_id = ev.program = ev.message = "";
	return ev;
}

// Formats ev and checks that the object has exactly the keys listed (NULL-terminated), in
// addition to ts, event and agent_id. Returns the parsed object (caller decrefs).
static json_t *check_keys(const agent_event *ev, const char *event, const char *const *keys)
{
	char *line = NULL;
	json_error_t jerr;

	assert_int_equal(agent_ui_json(ev, 42, TS_US, &line), 0);
	assert_null(strchr(line, '\n'));
	json_t *o = json_loads(line, 0, &jerr);
	free(line);
	assert_non_null(o);
	assert_true(json_is_object(o));
	assert_string_equal(json_string_value(json_object_get(o, "event")), event);
	assert_string_equal(json_string_value(json_object_get(o, "ts")),
	                    "2026-11-23T08:00:00.123456Z");
	assert_true(json_is_integer(json_object_get(o, "agent_id")));
	assert_int_equal(json_integer_value(json_object_get(o, "agent_id")), 42);
	size_t n = 3;
	for (const char *const *k = keys; *k; k++, n++)
		assert_non_null(json_object_get(o, *k));
	assert_int_equal(json_object_size(o), n);
	return o;
}

static const char *str(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	assert_true(json_is_string(v));
	return json_string_value(v);
}

static long long num(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	assert_true(json_is_integer(v));
	return json_integer_value(v);
}

static void test_json_link_and_logout(void **state)
{
	static const char *const none[] = {NULL};
	agent_event ev;
	(void)state;

	ev = base(AGENT_EV_LINK_UP);
	json_decref(check_keys(&ev, "link_up", none));
	ev = base(AGENT_EV_LINK_DOWN);
	json_decref(check_keys(&ev, "link_down", none));
	ev = base(AGENT_EV_LOGOUT);
	json_decref(check_keys(&ev, "logout", none));
}

static void test_json_states(void **state)
{
	static const char *const st[] = {"state", NULL};
	static const char *const st_reason[] = {"state", "reason", NULL};
	static const char *const st_call[] = {"state", "call_id", NULL};
	agent_event ev;
	json_t *o;
	(void)state;

	ev = base(AGENT_EV_LOGIN);
	ev.state = RINGBID__AGENT_STATE__AGENT_NOT_READY;
	o = check_keys(&ev, "login", st);
	assert_string_equal(str(o, "state"), "NOT_READY");
	json_decref(o);

	ev = base(AGENT_EV_RESUMED);
	ev.state = RINGBID__AGENT_STATE__AGENT_AVAILABLE;
	o = check_keys(&ev, "resumed", st);
	assert_string_equal(str(o, "state"), "AVAILABLE");
	json_decref(o);
	ev.state = RINGBID__AGENT_STATE__AGENT_ON_CALL;
	ev.call_id = "c-1";
	o = check_keys(&ev, "resumed", st_call);
	assert_string_equal(str(o, "state"), "ON_CALL");
	assert_string_equal(str(o, "call_id"), "c-1");
	json_decref(o);

	ev = base(AGENT_EV_STATE);
	ev.state = RINGBID__AGENT_STATE__AGENT_WRAP_UP;
	o = check_keys(&ev, "state", st);
	assert_string_equal(str(o, "state"), "WRAP_UP");
	json_decref(o);
	ev.state = RINGBID__AGENT_STATE__AGENT_NOT_READY;
	ev.reason = "missed 2 offers";
	o = check_keys(&ev, "state", st_reason);
	assert_string_equal(str(o, "reason"), "missed 2 offers");
	json_decref(o);

	static const struct {
		Ringbid__AgentState s;
		const char *name;
	} names[] = {
	        {RINGBID__AGENT_STATE__AGENT_OFFLINE, "OFFLINE"},
	        {RINGBID__AGENT_STATE__AGENT_NOT_READY, "NOT_READY"},
	        {RINGBID__AGENT_STATE__AGENT_AVAILABLE, "AVAILABLE"},
	        {RINGBID__AGENT_STATE__AGENT_RESERVED, "RESERVED"},
	        {RINGBID__AGENT_STATE__AGENT_ON_CALL, "ON_CALL"},
	        {RINGBID__AGENT_STATE__AGENT_WRAP_UP, "WRAP_UP"},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		assert_string_equal(agent_state_name(names[i].s), names[i].name);
}

static void test_json_offers_and_calls(void **state)
{
	static const char *const offer[] = {"offer_id", "call_id", "program", "wait_ms", NULL};
	static const char *const answered[] = {"offer_id", "call_id", NULL};
	static const char *const connected[] = {"call_id", NULL};
	static const char *const ended[] = {"call_id", "talk_ms", "by", NULL};
	static const char *const withdrawn[] = {"offer_id", "call_id", "reason", NULL};
	agent_event ev;
	json_t *o;
	(void)state;

	ev = base(AGENT_EV_OFFER);
	ev.offer_id = 77;
	ev.call_id = "c-7";
	ev.program = "sales";
	ev.wait_ms = 12000;
	o = check_keys(&ev, "offer", offer);
	assert_int_equal(num(o, "offer_id"), 77);
	assert_string_equal(str(o, "call_id"), "c-7");
	assert_string_equal(str(o, "program"), "sales");
	assert_int_equal(num(o, "wait_ms"), 12000);
	json_decref(o);

	ev = base(AGENT_EV_ACCEPTED);
	ev.offer_id = 77;
	ev.call_id = "c-7";
	o = check_keys(&ev, "accepted", answered);
	assert_int_equal(num(o, "offer_id"), 77);
	json_decref(o);
	ev.kind = AGENT_EV_DECLINED;
	o = check_keys(&ev, "declined", answered);
	assert_string_equal(str(o, "call_id"), "c-7");
	json_decref(o);

	ev = base(AGENT_EV_CALL_CONNECTED);
	ev.call_id = "c-7";
	json_decref(check_keys(&ev, "call_connected", connected));

	ev = base(AGENT_EV_CALL_ENDED);
	ev.call_id = "c-7";
	ev.talk_ms = 61500;
	ev.by_agent = true;
	o = check_keys(&ev, "call_ended", ended);
	assert_int_equal(num(o, "talk_ms"), 61500);
	assert_string_equal(str(o, "by"), "agent");
	json_decref(o);
	ev.by_agent = false;
	o = check_keys(&ev, "call_ended", ended);
	assert_string_equal(str(o, "by"), "caller");
	json_decref(o);

	ev = base(AGENT_EV_OFFER_WITHDRAWN);
	ev.offer_id = 78;
	ev.call_id = "c-8";
	ev.reason = "ring timeout";
	o = check_keys(&ev, "offer_withdrawn", withdrawn);
	assert_string_equal(str(o, "reason"), "ring timeout");
	json_decref(o);
}

static void test_json_error(void **state)
{
	static const char *const keys[] = {"code", "name", "message", NULL};
	agent_event ev = base(AGENT_EV_ERROR);
	json_t *o;
	char *line = NULL;
	(void)state;

	ev.code = RB_EAUTH;
	ev.message = "wrong \"secret\"\n";
	o = check_keys(&ev, "error", keys);
	assert_int_equal(num(o, "code"), RB_EAUTH);
	assert_string_equal(str(o, "name"), "RB_EAUTH");
	assert_string_equal(str(o, "message"), "wrong \"secret\"\n");
	json_decref(o);

	ev.kind = (agent_event_kind)99;
	assert_int_equal(agent_ui_json(&ev, 42, TS_US, &line), RB_EINVAL);
	assert_null(line);
}

static void test_text_lines(void **state)
{
	char line[256];
	agent_event ev = base(AGENT_EV_OFFER);
	(void)state;

	ev.program = "sales";
	ev.call_id = "c-1";
	ev.wait_ms = 12000;
	assert_int_equal(agent_ui_text(&ev, 42, AGENT_OFFERS_ASK, line, sizeof(line)), 0);
	assert_string_equal(line,
	                    "Offer: program sales, caller waited 12 s \xe2\x80\x94 accept? [y/n]");
	assert_int_equal(agent_ui_text(&ev, 42, AGENT_OFFERS_ACCEPT, line, sizeof(line)), 0);
	assert_null(strstr(line, "[y/n]"));

	// Accepted is not connected: the line says the call is connecting.
	ev = base(AGENT_EV_ACCEPTED);
	ev.offer_id = 5;
	ev.call_id = "c-1";
	assert_int_equal(agent_ui_text(&ev, 42, AGENT_OFFERS_ASK, line, sizeof(line)), 0);
	assert_string_equal(line, "Accepted call c-1: connecting...");
	ev = base(AGENT_EV_CALL_CONNECTED);
	ev.call_id = "c-1";
	assert_int_equal(agent_ui_text(&ev, 42, AGENT_OFFERS_ASK, line, sizeof(line)), 0);
	assert_string_equal(line, "Call c-1 connected. Type 'end' to hang up.");

	ev = base(AGENT_EV_CALL_ENDED);
	ev.call_id = "c-1";
	ev.talk_ms = 83000;
	assert_int_equal(agent_ui_text(&ev, 42, AGENT_OFFERS_ACCEPT, line, sizeof(line)), 0);
	assert_string_equal(line, "Call c-1 ended by the caller after 1:23.");

	char dur[32];
	assert_string_equal(agent_ui_duration(0, dur, sizeof(dur)), "0:00");
	assert_string_equal(agent_ui_duration(65999, dur, sizeof(dur)), "1:05");
	assert_string_equal(agent_ui_duration(3723000, dur, sizeof(dur)), "1:02:03");

	for (int k = AGENT_EV_LINK_UP; k <= AGENT_EV_LOGOUT; k++) {
		ev = base((agent_event_kind)k);
		assert_int_equal(agent_ui_text(&ev, 42, AGENT_OFFERS_ASK, line, sizeof(line)), 0);
		assert_true(strlen(line) > 0);
	}
}

static void test_parse_commands(void **state)
{
	static const struct {
		const char *line;
		agent_cmd cmd;
	} ok[] = {
	        {"ready", AGENT_CMD_READY},     {"  Ready \r", AGENT_CMD_READY},
	        {"pause", AGENT_CMD_PAUSE},     {"accept", AGENT_CMD_ACCEPT},
	        {"y", AGENT_CMD_ACCEPT},        {"Y", AGENT_CMD_ACCEPT},
	        {"decline", AGENT_CMD_DECLINE}, {"n", AGENT_CMD_DECLINE},
	        {"end", AGENT_CMD_END},         {"status", AGENT_CMD_STATUS},
	        {"logout", AGENT_CMD_LOGOUT},   {"quit", AGENT_CMD_QUIT},
	        {"", AGENT_CMD_EMPTY},          {"   ", AGENT_CMD_EMPTY},
	};
	agent_cmd cmd;
	(void)state;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_int_equal(agent_ui_parse(ok[i].line, &cmd, NULL), 0);
		assert_int_equal(cmd, ok[i].cmd);
	}
	assert_int_equal(agent_ui_parse("dance", &cmd, NULL), RB_EINVAL);
	assert_int_equal(agent_ui_parse("ready now", &cmd, NULL), RB_EINVAL);
	assert_int_equal(agent_ui_parse("readyreadyreadyreadyreadyreadyready", &cmd, NULL),
	                 RB_EINVAL);
}

static void test_parse_end_marks(void **state)
{
	agent_cmd cmd;
	agent_cmd_args args;
	(void)state;

	assert_int_equal(agent_ui_parse("end", &cmd, &args), 0);
	assert_int_equal(cmd, AGENT_CMD_END);
	assert_false(args.sale);
	assert_false(args.resolved);
	assert_int_equal(agent_ui_parse(" end sale ", &cmd, &args), 0);
	assert_true(args.sale);
	assert_false(args.resolved);
	assert_int_equal(agent_ui_parse("END Resolved", &cmd, &args), 0);
	assert_false(args.sale);
	assert_true(args.resolved);
	assert_int_equal(agent_ui_parse("end sale   resolved", &cmd, &args), 0);
	assert_true(args.sale);
	assert_true(args.resolved);
	assert_int_equal(agent_ui_parse("hangup resolved sale", &cmd, &args), 0);
	assert_true(args.sale && args.resolved);
	assert_int_equal(agent_ui_parse("end sales", &cmd, &args), RB_EINVAL);
	assert_false(args.sale);
	assert_int_equal(agent_ui_parse("end sale maybe", &cmd, &args), RB_EINVAL);
	assert_int_equal(agent_ui_parse("ready sale", &cmd, &args), RB_EINVAL);
	assert_int_equal(agent_ui_parse("earnings", &cmd, &args), 0);
	assert_int_equal(cmd, AGENT_CMD_EARNINGS);
	assert_int_equal(agent_ui_parse("earnings now", &cmd, &args), RB_EINVAL);
}

static void test_earnings_lines(void **state)
{
	Ringbid__Earnings e = RINGBID__EARNINGS__INIT;
	agent_event ev;
	char line[512];
	char *json = NULL;
	(void)state;

	e.currency = "USD";
	e.period_start = "2026-11-16";
	e.period_end = "2026-11-29";
	e.today_calls = 2;
	e.today_talk_s = 75;
	e.today_amount = "0.31";
	e.period_calls = 9;
	e.period_talk_s = 3600;
	e.period_amount = "15.00";
	memset(&ev, 0, sizeof(ev));
	ev.kind = AGENT_EV_EARNINGS;
	ev.earnings = &e;
	assert_int_equal(agent_ui_json(&ev, 7, 0, &json), 0);
	assert_non_null(strstr(json, "\"event\":\"earnings\""));
	assert_non_null(strstr(json, "\"today_talk_s\":75"));
	assert_non_null(strstr(json, "\"period_amount\":\"15.00\""));
	free(json);
	assert_int_equal(agent_ui_text(&ev, 7, AGENT_OFFERS_ASK, line, sizeof(line)), 0);
	assert_non_null(strstr(line, "2 calls, 1:15 talk, 0.31 USD"));
	assert_non_null(strstr(line, "2026-11-16 to 2026-11-29: 9 calls, 1:00:00 talk"));
}

// Output goes to a memory stream; commands run against a client with no link.
static int nop_send(void *arg, const Ringbid__AgentMsg *msg)
{
	(void)arg;
	(void)msg;
	return 0;
}

static void nop_event(void *arg, const agent_event *ev)
{
	(void)arg;
	(void)ev;
}

static void nop_finish(void *arg, int code)
{
	*(int *)arg = code + 100;
}

static uint64_t zero_clock(void *arg)
{
	(void)arg;
	return 0;
}

// A client for agent 42 whose messages go nowhere, on a clock that stands still.
static void client_fixture(agent_client *c, int *finished)
{
	agent_client_config cfg = {.agent_id = 42, .secret = "s", .heartbeat_ms = 1000};
	agent_client_ops ops = {.send = nop_send,
	                        .event = nop_event,
	                        .finish = nop_finish,
	                        .mono_ms = zero_clock,
	                        .wall_us = zero_clock,
	                        .arg = finished};
	assert_int_equal(agent_client_init(c, &cfg, &ops), 0);
}

static void test_commands_run(void **state)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&buf, &len);
	agent_ui ui;
	agent_client c;
	int finished = 0;
	(void)state;

	assert_non_null(out);
	client_fixture(&c, &finished);
	agent_ui_init(&ui, AGENT_UI_JSON, 42, AGENT_OFFERS_ASK, out);
	assert_int_equal(agent_ui_command(&ui, &c, "y"), RB_ENOTFOUND);
	assert_int_equal(agent_ui_command(&ui, &c, "end"), RB_ENOTFOUND);
	assert_int_equal(agent_ui_command(&ui, &c, "bogus"), RB_EINVAL);
	assert_int_equal(agent_ui_command(&ui, &c, "ready"), 0);
	assert_int_equal(agent_ui_command(&ui, &c, "status"), 0);
	assert_int_equal(finished, 0);
	assert_int_equal(agent_ui_command(&ui, &c, "quit"), 0);
	assert_int_equal(finished, 100);
	fflush(out);

	// Every line is one JSON object; refusals are error events.
	int lines = 0, errors = 0, status = 0;
	char *save = NULL;
	for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		json_error_t jerr;
		json_t *o = json_loads(l, 0, &jerr);
		assert_non_null(o);
		const char *event = json_string_value(json_object_get(o, "event"));
		assert_non_null(event);
		errors += strcmp(event, "error") == 0;
		status += strcmp(event, "status") == 0;
		lines++;
		json_decref(o);
	}
	assert_int_equal(errors, 3);
	assert_int_equal(status, 1);
	assert_int_equal(lines, 4);
	agent_ui_fini(&ui);
	agent_client_fini(&c);
	fclose(out);
	free(buf);
}

// Feeds the client one AgentMsg from presence.
static void feed(agent_client *c, uint64_t seq, const Ringbid__AgentStatus *st,
                 const Ringbid__OfferEvent *offer, const Ringbid__CallEvent *ce)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	m.seq = seq;
	if (st != NULL) {
		m.body_case = RINGBID__AGENT_MSG__BODY_STATUS;
		m.status = (Ringbid__AgentStatus *)st;
	} else if (offer != NULL) {
		m.body_case = RINGBID__AGENT_MSG__BODY_OFFER;
		m.offer = (Ringbid__OfferEvent *)offer;
	} else {
		m.body_case = RINGBID__AGENT_MSG__BODY_CALL_EVENT;
		m.call_event = (Ringbid__CallEvent *)ce;
	}
	agent_client_on_msg(c, &m);
}

// After accept and before the broker connects the call: the person sees it connecting, cannot
// decline any more and has no call to end yet.
static void test_commands_while_connecting(void **state)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&buf, &len);
	agent_ui ui;
	agent_client c;
	int finished = 0;
	(void)state;

	assert_non_null(out);
	client_fixture(&c, &finished);
	agent_ui_init(&ui, AGENT_UI_HUMAN, 42, AGENT_OFFERS_ASK, out);
	agent_client_link(&c, true); // Login, seq 1
	Ringbid__AgentStatus st = RINGBID__AGENT_STATUS__INIT;
	st.agent_id = 42;
	st.state = RINGBID__AGENT_STATE__AGENT_AVAILABLE;
	st.session_token = "0123456789abcdef";
	feed(&c, 1, &st, NULL, NULL);
	assert_int_equal(agent_client_phase(&c), AGENT_PHASE_ACTIVE);
	Ringbid__OfferEvent oe = RINGBID__OFFER_EVENT__INIT;
	oe.offer_id = 9;
	oe.call_id = "c-9";
	oe.program = "sales";
	feed(&c, 0, NULL, &oe, NULL);
	assert_int_equal(agent_ui_command(&ui, &c, "y"), 0); // Answer, seq 2
	st.state = RINGBID__AGENT_STATE__AGENT_RESERVED;
	st.session_token = "";
	st.call_id = "c-9";
	st.offer_id = 9;
	feed(&c, 2, &st, NULL, NULL);
	assert_true(agent_client_offer(&c)->accepted);

	fflush(out);
	size_t mark = len;
	assert_int_equal(agent_ui_command(&ui, &c, "y"), 0); // again: nothing to say
	assert_int_equal(agent_ui_command(&ui, &c, "n"), RB_ESTATE);
	assert_int_equal(agent_ui_command(&ui, &c, "end"), RB_ESTATE);
	assert_int_equal(agent_ui_command(&ui, &c, "status"), 0);
	fflush(out);
	const char *said = buf + mark;
	assert_non_null(strstr(said, "The offer is accepted: the call is connecting.\n"));
	assert_non_null(
	        strstr(said, "The call is still connecting: there is nothing to end yet.\n"));
	assert_non_null(strstr(
	        said, "Agent 42: RESERVED, accepted call c-9 (program sales), connecting...\n"));

	// Connected: the call is there to end.
	Ringbid__CallEvent ce = RINGBID__CALL_EVENT__INIT;
	ce.kind = RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED;
	ce.call_id = "c-9";
	ce.offer_id = 9;
	feed(&c, 0, NULL, NULL, &ce);
	assert_non_null(agent_client_call(&c, NULL));
	assert_int_equal(agent_ui_command(&ui, &c, "end"), 0);
	agent_ui_fini(&ui);
	agent_client_fini(&c);
	fclose(out);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_json_link_and_logout),
	        cmocka_unit_test(test_json_states),
	        cmocka_unit_test(test_json_offers_and_calls),
	        cmocka_unit_test(test_json_error),
	        cmocka_unit_test(test_text_lines),
	        cmocka_unit_test(test_parse_commands),
	        cmocka_unit_test(test_parse_end_marks),
	        cmocka_unit_test(test_earnings_lines),
	        cmocka_unit_test(test_commands_run),
	        cmocka_unit_test(test_commands_while_connecting),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
