// What the agent sees and types: human-readable lines or JSON lines, and the typed commands.
#include "ui.h"
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>
#include "rb_err.h"
#include "rb_time.h"

void agent_ui_init(agent_ui *ui, agent_ui_mode mode, uint64_t agent_id, agent_offer_policy policy,
                   FILE *out)
{
	memset(ui, 0, sizeof(*ui));
	ui->mode = mode;
	ui->agent_id = agent_id;
	ui->policy = policy;
	ui->out = out;
}

void agent_ui_fini(agent_ui *ui)
{
	if (ui->out)
		fflush(ui->out);
	ui->out = NULL;
}

static const char *event_name(agent_event_kind kind)
{
	switch (kind) {
	case AGENT_EV_LINK_UP:
		return "link_up";
	case AGENT_EV_LINK_DOWN:
		return "link_down";
	case AGENT_EV_LOGIN:
		return "login";
	case AGENT_EV_RESUMED:
		return "resumed";
	case AGENT_EV_STATE:
		return "state";
	case AGENT_EV_OFFER:
		return "offer";
	case AGENT_EV_ACCEPTED:
		return "accepted";
	case AGENT_EV_DECLINED:
		return "declined";
	case AGENT_EV_CALL_CONNECTED:
		return "call_connected";
	case AGENT_EV_CALL_ENDED:
		return "call_ended";
	case AGENT_EV_OFFER_WITHDRAWN:
		return "offer_withdrawn";
	case AGENT_EV_ERROR:
		return "error";
	case AGENT_EV_LOGOUT:
		return "logout";
	case AGENT_EV_EARNINGS:
		return "earnings";
	}
	return NULL;
}

static const char *str_or_empty(const char *s)
{
	return s ? s : "";
}

// json_object_set_new fails only when out of memory; the first failure is remembered.
static void put(json_t *o, const char *key, json_t *v, bool *ok)
{
	if (v == NULL || json_object_set_new(o, key, v) != 0)
		*ok = false;
}

// A JSON object with the fields every line has, or NULL when out of memory.
static json_t *json_head(const char *event, uint64_t agent_id, uint64_t ts_us)
{
	char ts[40];
	bool ok = true;
	json_t *o = json_object();

	if (o == NULL)
		return NULL;
	rb_time_iso(ts_us, ts, sizeof(ts));
	put(o, "ts", json_string(ts), &ok);
	put(o, "event", json_string(event), &ok);
	put(o, "agent_id", json_integer((json_int_t)agent_id), &ok);
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static int json_finish(json_t *o, bool ok, char **out)
{
	char *s = ok ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

	json_decref(o);
	if (s == NULL)
		return RB_ENOMEM;
	*out = s;
	return 0;
}

int agent_ui_json(const agent_event *ev, uint64_t agent_id, uint64_t ts_us, char **out)
{
	const char *name = event_name(ev->kind);
	bool ok = true;
	json_t *o;

	if (name == NULL)
		return RB_EINVAL;
	o = json_head(name, agent_id, ts_us);
	if (o == NULL)
		return RB_ENOMEM;
	switch (ev->kind) {
	case AGENT_EV_LINK_UP:
	case AGENT_EV_LINK_DOWN:
	case AGENT_EV_LOGOUT:
		break;
	case AGENT_EV_LOGIN:
		put(o, "state", json_string(agent_state_name(ev->state)), &ok);
		break;
	case AGENT_EV_RESUMED:
		put(o, "state", json_string(agent_state_name(ev->state)), &ok);
		if (ev->call_id && ev->call_id[0])
			put(o, "call_id", json_string(ev->call_id), &ok);
		break;
	case AGENT_EV_STATE:
		put(o, "state", json_string(agent_state_name(ev->state)), &ok);
		if (ev->reason && ev->reason[0])
			put(o, "reason", json_string(ev->reason), &ok);
		break;
	case AGENT_EV_OFFER:
		put(o, "offer_id", json_integer((json_int_t)ev->offer_id), &ok);
		put(o, "call_id", json_string(str_or_empty(ev->call_id)), &ok);
		put(o, "program", json_string(str_or_empty(ev->program)), &ok);
		put(o, "wait_ms", json_integer((json_int_t)ev->wait_ms), &ok);
		break;
	case AGENT_EV_ACCEPTED:
	case AGENT_EV_DECLINED:
		put(o, "offer_id", json_integer((json_int_t)ev->offer_id), &ok);
		put(o, "call_id", json_string(str_or_empty(ev->call_id)), &ok);
		break;
	case AGENT_EV_CALL_CONNECTED:
		put(o, "call_id", json_string(str_or_empty(ev->call_id)), &ok);
		break;
	case AGENT_EV_CALL_ENDED:
		put(o, "call_id", json_string(str_or_empty(ev->call_id)), &ok);
		put(o, "talk_ms", json_integer((json_int_t)ev->talk_ms), &ok);
		put(o, "by", json_string(ev->by_agent ? "agent" : "caller"), &ok);
		break;
	case AGENT_EV_OFFER_WITHDRAWN:
		put(o, "offer_id", json_integer((json_int_t)ev->offer_id), &ok);
		put(o, "call_id", json_string(str_or_empty(ev->call_id)), &ok);
		put(o, "reason", json_string(str_or_empty(ev->reason)), &ok);
		break;
	case AGENT_EV_ERROR:
		put(o, "code", json_integer(ev->code), &ok);
		put(o, "name", json_string(rb_err_name(ev->code)), &ok);
		put(o, "message", json_string(str_or_empty(ev->message)), &ok);
		break;
	case AGENT_EV_EARNINGS: {
		const Ringbid__Earnings *e = ev->earnings;
		if (e == NULL) {
			ok = false;
			break;
		}
		put(o, "currency", json_string(str_or_empty(e->currency)), &ok);
		put(o, "period_start", json_string(str_or_empty(e->period_start)), &ok);
		put(o, "period_end", json_string(str_or_empty(e->period_end)), &ok);
		put(o, "today_calls", json_integer((json_int_t)e->today_calls), &ok);
		put(o, "today_talk_s", json_integer((json_int_t)(e->today_talk_s & INT64_MAX)),
		    &ok);
		put(o, "today_amount", json_string(str_or_empty(e->today_amount)), &ok);
		put(o, "period_calls", json_integer((json_int_t)e->period_calls), &ok);
		put(o, "period_talk_s", json_integer((json_int_t)(e->period_talk_s & INT64_MAX)),
		    &ok);
		put(o, "period_amount", json_string(str_or_empty(e->period_amount)), &ok);
		break;
	}
	}
	return json_finish(o, ok, out);
}

char *agent_ui_duration(uint64_t ms, char *out, size_t n)
{
	uint64_t s = ms / 1000;

	if (s >= 3600)
		snprintf(out, n, "%" PRIu64 ":%02" PRIu64 ":%02" PRIu64, s / 3600, s / 60 % 60,
		         s % 60);
	else
		snprintf(out, n, "%" PRIu64 ":%02" PRIu64, s / 60, s % 60);
	return out;
}

int agent_ui_text(const agent_event *ev, uint64_t agent_id, agent_offer_policy policy, char *out,
                  size_t n)
{
	char dur[32];
	const char *state = agent_state_name(ev->state);

	switch (ev->kind) {
	case AGENT_EV_LINK_UP:
		snprintf(out, n, "Connected to presence.");
		break;
	case AGENT_EV_LINK_DOWN:
		snprintf(out, n, "Connection to presence lost; reconnecting...");
		break;
	case AGENT_EV_LOGIN:
		if (ev->state == RINGBID__AGENT_STATE__AGENT_NOT_READY &&
		    policy == AGENT_OFFERS_ASK)
			snprintf(out, n,
			         "Logged in as agent %" PRIu64 ": %s. Type 'ready' to take calls.",
			         agent_id, state);
		else
			snprintf(out, n, "Logged in as agent %" PRIu64 ": %s.", agent_id, state);
		break;
	case AGENT_EV_RESUMED:
		if (ev->call_id && ev->call_id[0])
			snprintf(out, n, "Session resumed: %s, call %s.", state, ev->call_id);
		else
			snprintf(out, n, "Session resumed: %s.", state);
		break;
	case AGENT_EV_STATE:
		if (ev->reason && ev->reason[0])
			snprintf(out, n, "State: %s (%s).", state, ev->reason);
		else
			snprintf(out, n, "State: %s.", state);
		break;
	case AGENT_EV_OFFER: {
		const char *tail = " \xe2\x80\x94 accept? [y/n]";
		if (policy == AGENT_OFFERS_ACCEPT)
			tail = " \xe2\x80\x94 accepting.";
		else if (policy == AGENT_OFFERS_DECLINE)
			tail = " \xe2\x80\x94 declining.";
		else if (policy == AGENT_OFFERS_IGNORE)
			tail = " \xe2\x80\x94 not answering.";
		if (ev->program && ev->program[0])
			snprintf(out, n, "Offer: program %s, caller waited %" PRIu64 " s%s",
			         ev->program, (ev->wait_ms + 500) / 1000, tail);
		else
			snprintf(out, n, "Offer: call %s, caller waited %" PRIu64 " s%s",
			         str_or_empty(ev->call_id), (ev->wait_ms + 500) / 1000, tail);
		break;
	}
	case AGENT_EV_ACCEPTED:
		// Not connected yet: the call is the agent's once the broker confirms it.
		snprintf(out, n, "Accepted call %s: connecting...", str_or_empty(ev->call_id));
		break;
	case AGENT_EV_DECLINED:
		snprintf(out, n, "Declined the offer of call %s.", str_or_empty(ev->call_id));
		break;
	case AGENT_EV_CALL_CONNECTED:
		if (policy == AGENT_OFFERS_ASK)
			snprintf(out, n, "Call %s connected. Type 'end' to hang up.",
			         str_or_empty(ev->call_id));
		else
			snprintf(out, n, "Call %s connected.", str_or_empty(ev->call_id));
		break;
	case AGENT_EV_CALL_ENDED:
		agent_ui_duration(ev->talk_ms, dur, sizeof(dur));
		if (ev->wrap_up_s > 0 && policy == AGENT_OFFERS_ASK)
			snprintf(out, n,
			         "Call %s ended by %s after %s. Wrap-up: %" PRIu32
			         " s, or type 'ready' when done.",
			         str_or_empty(ev->call_id), ev->by_agent ? "you" : "the caller",
			         dur, ev->wrap_up_s);
		else
			snprintf(out, n, "Call %s ended by %s after %s.", str_or_empty(ev->call_id),
			         ev->by_agent ? "you" : "the caller", dur);
		break;
	case AGENT_EV_OFFER_WITHDRAWN:
		snprintf(out, n, "Offer of call %s withdrawn: %s.", str_or_empty(ev->call_id),
		         str_or_empty(ev->reason));
		break;
	case AGENT_EV_ERROR:
		snprintf(out, n, "Error: %s (%s).", str_or_empty(ev->message),
		         rb_err_name(ev->code));
		break;
	case AGENT_EV_LOGOUT:
		snprintf(out, n, "Logged out.");
		break;
	case AGENT_EV_EARNINGS: {
		const Ringbid__Earnings *e = ev->earnings;
		char today[32], period[32];
		if (e == NULL)
			return RB_EINVAL;
		agent_ui_duration(e->today_talk_s * 1000, today, sizeof(today));
		agent_ui_duration(e->period_talk_s * 1000, period, sizeof(period));
		snprintf(out, n,
		         "Earnings today: %" PRIu32
		         " calls, %s talk, %s %s. Pay period %s to %s: %" PRIu32
		         " calls, %s talk, %s %s.",
		         e->today_calls, today, str_or_empty(e->today_amount),
		         str_or_empty(e->currency), str_or_empty(e->period_start),
		         str_or_empty(e->period_end), e->period_calls, period,
		         str_or_empty(e->period_amount), str_or_empty(e->currency));
		break;
	}
	default:
		return RB_EINVAL;
	}
	return 0;
}

static void write_line(agent_ui *ui, const char *line)
{
	if (ui->out == NULL)
		return;
	fputs(line, ui->out);
	fputc('\n', ui->out);
	fflush(ui->out);
}

void agent_ui_event(agent_ui *ui, const agent_event *ev)
{
	if (ui->mode == AGENT_UI_JSON) {
		char *s = NULL;
		if (agent_ui_json(ev, ui->agent_id, rb_now_us(), &s) == 0) {
			write_line(ui, s);
			free(s);
		}
		return;
	}
	char line[512];
	if (agent_ui_text(ev, ui->agent_id, ui->policy, line, sizeof(line)) == 0)
		write_line(ui, line);
}

void agent_ui_note(agent_ui *ui, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	if (ui->mode != AGENT_UI_HUMAN)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	write_line(ui, line);
}

static const struct {
	const char *word;
	agent_cmd cmd;
} commands[] = {
        {"ready", AGENT_CMD_READY},     {"r", AGENT_CMD_READY},
        {"pause", AGENT_CMD_PAUSE},     {"accept", AGENT_CMD_ACCEPT},
        {"y", AGENT_CMD_ACCEPT},        {"yes", AGENT_CMD_ACCEPT},
        {"decline", AGENT_CMD_DECLINE}, {"n", AGENT_CMD_DECLINE},
        {"no", AGENT_CMD_DECLINE},      {"end", AGENT_CMD_END},
        {"hangup", AGENT_CMD_END},      {"status", AGENT_CMD_STATUS},
        {"s", AGENT_CMD_STATUS},        {"logout", AGENT_CMD_LOGOUT},
        {"quit", AGENT_CMD_QUIT},       {"exit", AGENT_CMD_QUIT},
        {"q", AGENT_CMD_QUIT},          {"help", AGENT_CMD_HELP},
        {"?", AGENT_CMD_HELP},          {"earnings", AGENT_CMD_EARNINGS},
};

// The words after 'end'; each may appear once or more, in any order.
static int parse_end_args(const char *rest, agent_cmd_args *args)
{
	while (*rest) {
		size_t n = 0;
		while (rest[n] && !isspace((unsigned char)rest[n]))
			n++;
		if (n == 4 && strncasecmp(rest, "sale", 4) == 0)
			args->sale = true;
		else if (n == 8 && strncasecmp(rest, "resolved", 8) == 0)
			args->resolved = true;
		else
			return RB_EINVAL;
		rest += n;
		while (*rest && isspace((unsigned char)*rest))
			rest++;
	}
	return 0;
}

int agent_ui_parse(const char *line, agent_cmd *out, agent_cmd_args *args)
{
	char word[32];
	size_t n = 0;
	agent_cmd_args ignored;

	if (args == NULL)
		args = &ignored;
	memset(args, 0, sizeof(*args));
	while (*line && isspace((unsigned char)*line))
		line++;
	while (line[n] && !isspace((unsigned char)line[n]))
		n++;
	const char *rest = line + n;
	while (*rest && isspace((unsigned char)*rest))
		rest++;
	if (n == 0 && *rest == '\0') {
		*out = AGENT_CMD_EMPTY;
		return 0;
	}
	if (n >= sizeof(word))
		return RB_EINVAL;
	memcpy(word, line, n);
	word[n] = '\0';
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcasecmp(word, commands[i].word) != 0)
			continue;
		if (commands[i].cmd == AGENT_CMD_END) {
			if (parse_end_args(rest, args) != 0) {
				memset(args, 0, sizeof(*args));
				return RB_EINVAL;
			}
		} else if (*rest != '\0') {
			return RB_EINVAL; // the other commands take no words
		}
		*out = commands[i].cmd;
		return 0;
	}
	return RB_EINVAL;
}

// A refused command: a sentence in human mode, an error event in JSON mode.
static void refuse(agent_ui *ui, int code, const char *message)
{
	agent_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.kind = AGENT_EV_ERROR;
	ev.code = code;
	ev.message = message;
	ev.reason = ev.call_id = ev.program = "";
	if (ui->mode == AGENT_UI_JSON)
		agent_ui_event(ui, &ev);
	else
		agent_ui_note(ui, "%s", message);
}

// The agent accepted an offer and waits for the call to connect.
static bool connecting(const agent_client *c)
{
	const agent_offer *o = agent_client_offer(c);

	return o != NULL && o->accepted && agent_client_call(c, NULL) == NULL;
}

static const char help_text[] =
        "Commands: ready, pause, accept (y), decline (n), end [sale] [resolved], earnings, status, "
        "logout, quit.";

int agent_ui_command(agent_ui *ui, agent_client *c, const char *line)
{
	agent_cmd cmd;
	agent_cmd_args args;
	int rv = agent_ui_parse(line, &cmd, &args);
	char text[200];

	if (rv != 0) {
		snprintf(text, sizeof(text), "Unknown command '%.40s'. %s", line, help_text);
		refuse(ui, rv, text);
		return rv;
	}
	switch (cmd) {
	case AGENT_CMD_EMPTY:
		return 0;
	case AGENT_CMD_READY:
		rv = agent_client_set_ready(c, true);
		break;
	case AGENT_CMD_PAUSE:
		rv = agent_client_set_ready(c, false);
		break;
	case AGENT_CMD_ACCEPT:
	case AGENT_CMD_DECLINE:
		rv = agent_client_answer(c, cmd == AGENT_CMD_ACCEPT);
		if (rv == RB_ENOTFOUND) {
			refuse(ui, rv, "There is no offer to answer.");
			return rv;
		}
		if (rv == RB_ESTATE && connecting(c)) {
			refuse(ui, rv, "The offer is accepted: the call is connecting.");
			return rv;
		}
		break;
	case AGENT_CMD_END:
		rv = agent_client_end_call(c, args.sale, args.resolved);
		if (rv == RB_ENOTFOUND) {
			refuse(ui, rv, "There is no call to end.");
			return rv;
		}
		if (rv == RB_ESTATE && connecting(c)) {
			refuse(ui, rv,
			       "The call is still connecting: there is nothing to end yet.");
			return rv;
		}
		break;
	case AGENT_CMD_EARNINGS:
		rv = agent_client_earnings(c);
		break;
	case AGENT_CMD_STATUS:
		agent_ui_status(ui, c);
		return 0;
	case AGENT_CMD_LOGOUT:
	case AGENT_CMD_QUIT:
		return agent_client_logout(c);
	case AGENT_CMD_HELP:
		agent_ui_note(ui, "%s", help_text);
		return 0;
	}
	if (rv != 0) {
		snprintf(text, sizeof(text), "Command refused: %s.", rb_err_str(rv));
		refuse(ui, rv, text);
	}
	return rv;
}

static void status_json(agent_ui *ui, const agent_client *c)
{
	uint64_t talk_ms = 0;
	const agent_call *call = agent_client_call(c, &talk_ms);
	const agent_offer *offer = agent_client_offer(c);
	json_t *o = json_head("status", ui->agent_id, rb_now_us());
	bool ok = true;
	char *s = NULL;

	if (o == NULL)
		return;
	put(o, "state", json_string(agent_state_name(agent_client_state(c))), &ok);
	put(o, "connected", json_boolean(agent_client_phase(c) == AGENT_PHASE_ACTIVE), &ok);
	if (call) {
		put(o, "call_id", json_string(call->call_id), &ok);
		put(o, "talk_ms", json_integer((json_int_t)talk_ms), &ok);
	} else if (offer) {
		put(o, "offer_id", json_integer((json_int_t)offer->offer_id), &ok);
		put(o, "call_id", json_string(offer->call_id), &ok);
		put(o, "connecting", json_boolean(offer->accepted), &ok);
	}
	if (json_finish(o, ok, &s) == 0) {
		write_line(ui, s);
		free(s);
	}
}

void agent_ui_status(agent_ui *ui, const agent_client *c)
{
	uint64_t talk_ms = 0;
	const agent_call *call;
	const agent_offer *offer;
	const char *state = agent_state_name(agent_client_state(c));
	const char *link = "";
	char dur[32];

	if (ui->mode == AGENT_UI_JSON) {
		status_json(ui, c);
		return;
	}
	switch (agent_client_phase(c)) {
	case AGENT_PHASE_ACTIVE:
		break;
	case AGENT_PHASE_WAIT_LINK:
		link = " (not connected to presence)";
		break;
	case AGENT_PHASE_BACKOFF:
		link = " (waiting to log in again)";
		break;
	default:
		link = " (logging in)";
		break;
	}
	call = agent_client_call(c, &talk_ms);
	offer = agent_client_offer(c);
	if (call)
		agent_ui_note(ui, "Agent %" PRIu64 ": %s, call %s, talk time %s%s", ui->agent_id,
		              state, call->call_id, agent_ui_duration(talk_ms, dur, sizeof(dur)),
		              link);
	else if (offer)
		agent_ui_note(ui, "Agent %" PRIu64 ": %s, %s call %s%s%s%s%s%s", ui->agent_id,
		              state, offer->accepted ? "accepted" : "offer of", offer->call_id,
		              offer->program[0] ? " (program " : "",
		              offer->program[0] ? offer->program : "", offer->program[0] ? ")" : "",
		              offer->accepted ? ", connecting..." : "", link);
	else
		agent_ui_note(ui, "Agent %" PRIu64 ": %s%s", ui->agent_id, state, link);
}

void agent_ui_call_time(agent_ui *ui, const agent_client *c)
{
	uint64_t talk_ms = 0;
	const agent_call *call = agent_client_call(c, &talk_ms);
	char dur[32];

	if (call == NULL || ui->mode != AGENT_UI_HUMAN)
		return;
	agent_ui_note(ui, "On call %s: %s", call->call_id,
	              agent_ui_duration(talk_ms, dur, sizeof(dur)));
}
