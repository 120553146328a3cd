// rb_probe: sends crafted messages to a ringbid socket and prints every answer as a JSON line.
//
// The integration tests use it to feed each listening socket garbage, truncated protobufs,
// oversized messages and wrong tokens, and to read the ErrorReply that comes back; and, with
// --agent-script, to play hostile agents on the agent link (other agents' offers and calls,
// forged, foreign, replayed and expired session tokens, floods of wrong secrets). It is a test
// tool, so it uses blocking nng calls.
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/protocol/reqrep0/req.h>
#include <sodium.h>

#include "rb_bus.h"
#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_secret.h"
#include "ringbid.pb-c.h"

enum probe_kind {
	KIND_NONE = 0,
	KIND_CALL,     // CallRequest{StatusQuery}, answered with CallReply
	KIND_ENVELOPE, // Envelope{SnapshotRequest}, answered with Envelope
	KIND_AGENT,    // AgentMsg{Heartbeat}, answered with AgentMsg
	KIND_CDR,      // CdrBatch{}, answered with CdrAck
};

enum probe_mode {
	MODE_NONE = 0,
	MODE_HEX,
	MODE_GARBAGE,
	MODE_OVERSIZE,
	MODE_TRUNCATED,
	MODE_WRONG_TOKEN,
	MODE_VALID,
	MODE_CDRS,   // a CdrBatch of the CDRs in a JSON-lines file
	MODE_LOGIN,  // an agent's Login, the secret from $RINGBID_AGENT_SECRET_FILE
	MODE_SCRIPT, // agent sessions driven by JSON lines (--agent-script)
};

struct probe_opts {
	const char *url;
	bool pair;
	enum probe_mode mode;
	enum probe_kind kind;   // message built (truncated, wrong-token, valid, oversize)
	enum probe_kind answer; // reply type to decode; KIND_NONE: try every type
	const char *hex;
	const char *cdrs_path;
	const char *script_path;
	int heartbeat_ms; // --agent-script: keepalive period of a logged-in connection, 0 none
	uint64_t login_agent;
	size_t size;
	int timeout_ms;
	const char *token;
};

struct probe_reply {
	bool got;
	size_t len;
	enum probe_kind decoded;
	int error_code;
	char error_message[512];
	char *ack; // a CdrAck's lists as JSON members (",\"stored\":[...]..."), or NULL
};

// Pipe events arrive on nng's threads; the flags are only read after the exchange.
struct probe_pipes {
	volatile int added;
	volatile int removed;
};

static const char *const kind_names[] = {NULL, "call", "envelope", "agent", "cdr"};

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: rb_probe --url URL --proto req|pair\n"
	        "                (--send-hex HEX | --garbage N | --oversize N |\n"
	        "                 --truncated KIND | --wrong-token KIND | --valid KIND |\n"
	        "                 --cdrs FILE)\n"
	        "                [--kind KIND] [--token TOKEN] [--timeout-ms N]\n"
	        "KIND: call (CallRequest with StatusQuery), envelope (Envelope with\n"
	        "SnapshotRequest), agent (AgentMsg with Heartbeat), cdr (empty CdrBatch).\n"
	        "--kind names the reply type to decode (and, with --oversize, pads a message of\n"
	        "that kind instead of sending raw bytes). --token defaults to the service token\n"
	        "(RINGBID_SERVICE_TOKEN, or $RINGBID_HOME/env).\n"
	        "Prints one JSON line: sent, reply (none|bytes), len, decoded, error_code,\n"
	        "error_name, error_message, closed, other, elapsed_ms. Exit 0 when the message\n"
	        "was sent, 1 when it could not be, 2 on usage errors.\n"
	        "--cdrs FILE ('-': stdin) sends one CdrBatch of the CDRs in FILE, one JSON object\n"
	        "a line: cdr_id, call_id (default cdr_id), program, agent_id, arrived_us,\n"
	        "offered_us, answered_us, ended_us, talk_s, disposition (completed, abandoned,\n"
	        "overflow), sale, review, resolved, offers; the result adds the CdrAck's stored,\n"
	        "quarantined and refused ids.\n"
	        "--login AGENT_ID logs in as that agent (secret from $RINGBID_AGENT_SECRET_FILE)\n"
	        "and prints the session token presence answers with.\n"
	        "--agent-script FILE ('-': stdin, read as lines arrive) plays agents' clients\n"
	        "on the agent link (--proto pair, implied), one JSON step a line (the steps are\n"
	        "described under \"Scripted agent sessions\" in tests/tools/rb_probe.c).\n"
	        "--heartbeat-ms N (default 1000, 0: never) keeps each logged-in connection's\n"
	        "session alive between steps; --timeout-ms is a step's default wait for its\n"
	        "answer.\n");
}

static enum probe_kind parse_kind(const char *s)
{
	for (size_t i = 1; i < sizeof(kind_names) / sizeof(kind_names[0]); i++) {
		if (strcmp(s, kind_names[i]) == 0)
			return (enum probe_kind)i;
	}
	return KIND_NONE;
}

static int parse_size(const char *s, size_t *out)
{
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v > (64ULL << 20))
		return RB_EINVAL;
	*out = (size_t)v;
	return 0;
}

static int set_mode(struct probe_opts *o, enum probe_mode m)
{
	if (o->mode != MODE_NONE) {
		fprintf(stderr, "rb_probe: give only one of --send-hex, --garbage, --oversize, "
		                "--truncated, --wrong-token, --valid, --cdrs, --login, "
		                "--agent-script\n");
		return RB_EINVAL;
	}
	o->mode = m;
	return 0;
}

static int kind_arg(const char *s, enum probe_kind *out)
{
	*out = parse_kind(s);
	if (*out == KIND_NONE) {
		fprintf(stderr, "rb_probe: unknown kind '%s' (call, envelope, agent, cdr)\n", s);
		return RB_EINVAL;
	}
	return 0;
}

static int parse_args(int argc, char **argv, struct probe_opts *o)
{
	static const struct option longopts[] = {
	        {"url", required_argument, NULL, 'u'},
	        {"proto", required_argument, NULL, 'p'},
	        {"send-hex", required_argument, NULL, 'x'},
	        {"garbage", required_argument, NULL, 'g'},
	        {"oversize", required_argument, NULL, 'o'},
	        {"truncated", required_argument, NULL, 't'},
	        {"wrong-token", required_argument, NULL, 'w'},
	        {"valid", required_argument, NULL, 'v'},
	        {"cdrs", required_argument, NULL, 'c'},
	        {"login", required_argument, NULL, 'L'},
	        {"agent-script", required_argument, NULL, 'S'},
	        {"heartbeat-ms", required_argument, NULL, 'H'},
	        {"kind", required_argument, NULL, 'k'},
	        {"token", required_argument, NULL, 'T'},
	        {"timeout-ms", required_argument, NULL, 'm'},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	const char *proto = NULL;
	size_t timeout = 2000, heartbeat = 1000;
	int c;

	memset(o, 0, sizeof(*o));
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		int rv = 0;
		switch (c) {
		case 'u':
			o->url = optarg;
			break;
		case 'p':
			proto = optarg;
			break;
		case 'x':
			rv = set_mode(o, MODE_HEX);
			o->hex = optarg;
			break;
		case 'g':
			rv = set_mode(o, MODE_GARBAGE);
			if (rv == 0)
				rv = parse_size(optarg, &o->size);
			break;
		case 'o':
			rv = set_mode(o, MODE_OVERSIZE);
			if (rv == 0)
				rv = parse_size(optarg, &o->size);
			break;
		case 't':
			rv = set_mode(o, MODE_TRUNCATED);
			if (rv == 0)
				rv = kind_arg(optarg, &o->kind);
			break;
		case 'w':
			rv = set_mode(o, MODE_WRONG_TOKEN);
			if (rv == 0)
				rv = kind_arg(optarg, &o->kind);
			break;
		case 'v':
			rv = set_mode(o, MODE_VALID);
			if (rv == 0)
				rv = kind_arg(optarg, &o->kind);
			break;
		case 'c':
			rv = set_mode(o, MODE_CDRS);
			o->cdrs_path = optarg;
			o->kind = KIND_CDR;
			break;
		case 'L': {
			char *end = NULL;

			rv = set_mode(o, MODE_LOGIN);
			o->login_agent = strtoull(optarg, &end, 10);
			if (rv == 0 && (end == optarg || *end != '\0' || o->login_agent == 0))
				rv = RB_EINVAL;
			o->kind = KIND_AGENT;
			break;
		}
		case 'S':
			rv = set_mode(o, MODE_SCRIPT);
			o->script_path = optarg;
			o->kind = KIND_AGENT;
			break;
		case 'H':
			rv = parse_size(optarg, &heartbeat);
			if (rv == 0 && heartbeat > 600000)
				rv = RB_EINVAL;
			break;
		case 'k':
			rv = kind_arg(optarg, &o->answer);
			break;
		case 'T':
			o->token = optarg;
			break;
		case 'm':
			rv = parse_size(optarg, &timeout);
			if (rv == 0 && (timeout < 1 || timeout > 600000))
				rv = RB_EINVAL;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			fprintf(stderr, "rb_probe: unknown option or missing value: %s\n",
			        argv[optind - 1]);
			return RB_EINVAL;
		}
		if (rv != 0) {
			fprintf(stderr, "rb_probe: bad value '%s' for %s\n", optarg,
			        argv[optind - 1]);
			return RB_EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "rb_probe: unexpected argument '%s'\n", argv[optind]);
		return RB_EINVAL;
	}
	if (o->mode == MODE_SCRIPT && proto == NULL)
		proto = "pair";
	if (o->url == NULL || proto == NULL || o->mode == MODE_NONE) {
		fprintf(stderr, "rb_probe: --url, --proto and one message option are required\n");
		return RB_EINVAL;
	}
	if (o->mode == MODE_SCRIPT && strcmp(proto, "pair") != 0) {
		fprintf(stderr, "rb_probe: --agent-script speaks the agent link: --proto pair\n");
		return RB_EINVAL;
	}
	if (strcmp(proto, "pair") == 0) {
		o->pair = true;
	} else if (strcmp(proto, "req") != 0) {
		fprintf(stderr, "rb_probe: --proto must be req or pair\n");
		return RB_EINVAL;
	}
	if (o->mode == MODE_OVERSIZE && o->answer != KIND_NONE)
		o->kind = o->answer;
	if (o->answer == KIND_NONE)
		o->answer = o->kind;
	o->timeout_ms = (int)timeout;
	o->heartbeat_ms = (int)heartbeat;
	return 0;
}

static const ProtobufCMessageDescriptor *reply_descriptor(enum probe_kind k)
{
	switch (k) {
	case KIND_CALL:
		return &ringbid__call_reply__descriptor;
	case KIND_ENVELOPE:
		return &ringbid__envelope__descriptor;
	case KIND_AGENT:
		return &ringbid__agent_msg__descriptor;
	case KIND_CDR:
		return &ringbid__cdr_ack__descriptor;
	default:
		return NULL;
	}
}

static const ProtobufCMessageDescriptor *request_descriptor(enum probe_kind k)
{
	switch (k) {
	case KIND_CALL:
		return &ringbid__call_request__descriptor;
	case KIND_ENVELOPE:
		return &ringbid__envelope__descriptor;
	case KIND_AGENT:
		return &ringbid__agent_msg__descriptor;
	case KIND_CDR:
		return &ringbid__cdr_batch__descriptor;
	default:
		return NULL;
	}
}

// Packs a well-formed message of kind k carrying token. On success *out (malloc'd) is the
// caller's to free.
static int build_message(enum probe_kind k, const char *token, uint8_t **out, size_t *out_len)
{
	Ringbid__CallRequest call = RINGBID__CALL_REQUEST__INIT;
	Ringbid__StatusQuery status = RINGBID__STATUS_QUERY__INIT;
	Ringbid__Envelope env = RINGBID__ENVELOPE__INIT;
	Ringbid__SnapshotRequest snap = RINGBID__SNAPSHOT_REQUEST__INIT;
	Ringbid__AgentMsg agent = RINGBID__AGENT_MSG__INIT;
	Ringbid__Heartbeat hb = RINGBID__HEARTBEAT__INIT;
	Ringbid__CdrBatch batch = RINGBID__CDR_BATCH__INIT;
	const ProtobufCMessage *m = NULL;
	char *tok = (char *)token;

	switch (k) {
	case KIND_CALL:
		call.token = tok;
		call.body_case = RINGBID__CALL_REQUEST__BODY_STATUS;
		call.status = &status;
		m = &call.base;
		break;
	case KIND_ENVELOPE:
		env.token = tok;
		env.body_case = RINGBID__ENVELOPE__BODY_SNAPSHOT_REQUEST;
		env.snapshot_request = &snap;
		m = &env.base;
		break;
	case KIND_AGENT:
		agent.seq = 1;
		agent.token = tok;
		agent.body_case = RINGBID__AGENT_MSG__BODY_HEARTBEAT;
		agent.heartbeat = &hb;
		m = &agent.base;
		break;
	case KIND_CDR:
		batch.token = tok;
		m = &batch.base;
		break;
	default:
		return RB_EINVAL;
	}
	size_t len = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(len > 0 ? len : 1);
	if (buf == NULL)
		return RB_ENOMEM;
	protobuf_c_message_pack(m, buf);
	*out = buf;
	*out_len = len;
	return 0;
}

static uint64_t json_u64(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	return json_is_integer(v) ? (uint64_t)json_integer_value(v) : 0;
}

static char *json_str(const json_t *o, const char *key, const char *dflt)
{
	const json_t *v = json_object_get(o, key);

	return (char *)(json_is_string(v) ? json_string_value(v) : dflt);
}

static Ringbid__Disposition disposition_of(const char *s)
{
	if (strcmp(s, "completed") == 0)
		return RINGBID__DISPOSITION__DISP_COMPLETED;
	if (strcmp(s, "abandoned") == 0)
		return RINGBID__DISPOSITION__DISP_ABANDONED;
	if (strcmp(s, "overflow") == 0)
		return RINGBID__DISPOSITION__DISP_OVERFLOW;
	return (Ringbid__Disposition)atoi(s);
}

// A CdrBatch of the CDRs in path (JSON lines; '-' reads stdin), packed into *out (caller's).
static int build_cdr_batch(const char *path, const char *token, uint8_t **out, size_t *out_len)
{
	Ringbid__CdrBatch batch = RINGBID__CDR_BATCH__INIT;
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	json_t *objs = json_array();
	char *line = NULL;
	size_t cap = 0;
	int rv = 0;

	if (f == NULL || objs == NULL) {
		fprintf(stderr, "rb_probe: cannot read %s\n", path);
		json_decref(objs);
		return RB_EIO;
	}
	while (getline(&line, &cap, f) > 0) {
		json_error_t jerr;
		json_t *o;

		if (strspn(line, " \t\r\n") == strlen(line))
			continue;
		o = json_loads(line, 0, &jerr);
		if (!json_is_object(o)) {
			fprintf(stderr, "rb_probe: %s: not a JSON object: %s\n", path, jerr.text);
			json_decref(o);
			rv = RB_EINVAL;
			break;
		}
		json_array_append_new(objs, o);
	}
	free(line);
	if (f != stdin)
		fclose(f);
	size_t n = json_array_size(objs);
	Ringbid__Cdr *cdrs = calloc(n ? n : 1, sizeof(*cdrs));
	Ringbid__Cdr **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
	if (rv == 0 && (cdrs == NULL || ptrs == NULL))
		rv = RB_ENOMEM;
	for (size_t i = 0; rv == 0 && i < n; i++) {
		const json_t *o = json_array_get(objs, i);
		Ringbid__Cdr *c = &cdrs[i];

		ringbid__cdr__init(c);
		c->cdr_id = json_str(o, "cdr_id", "");
		c->call_id = json_str(o, "call_id", c->cdr_id);
		c->program = json_str(o, "program", "");
		c->agent_id = json_u64(o, "agent_id");
		c->arrived_us = json_u64(o, "arrived_us");
		c->offered_us = json_u64(o, "offered_us");
		c->answered_us = json_u64(o, "answered_us");
		c->ended_us = json_u64(o, "ended_us");
		c->talk_s = json_u64(o, "talk_s");
		c->disposition = disposition_of(json_str(o, "disposition", "completed"));
		c->sale = json_is_true(json_object_get(o, "sale"));
		c->review = json_is_true(json_object_get(o, "review"));
		c->resolved = json_is_true(json_object_get(o, "resolved"));
		c->offers = (uint32_t)json_u64(o, "offers");
		ptrs[i] = c;
	}
	if (rv == 0) {
		batch.token = (char *)token;
		batch.n_cdrs = n;
		batch.cdrs = ptrs;
		*out_len = ringbid__cdr_batch__get_packed_size(&batch);
		*out = malloc(*out_len ? *out_len : 1);
		if (*out == NULL)
			rv = RB_ENOMEM;
		else
			ringbid__cdr_batch__pack(&batch, *out);
	}
	free(cdrs);
	free(ptrs);
	json_decref(objs);
	return rv;
}

// Cuts a packed message of kind k short, at the longest prefix that no longer decodes.
static int truncate_message(enum probe_kind k, uint8_t *buf, size_t len, size_t *out_len)
{
	const ProtobufCMessageDescriptor *d = request_descriptor(k);
	for (size_t cut = len / 2; cut > 0; cut--) {
		ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, cut, buf);
		if (m == NULL) {
			*out_len = cut;
			return 0;
		}
		protobuf_c_message_free_unpacked(m, NULL);
	}
	return RB_EINVAL;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int decode_hex(const char *hex, uint8_t **out, size_t *out_len)
{
	size_t n = strlen(hex);
	if (n % 2 != 0)
		return RB_EINVAL;
	uint8_t *buf = malloc(n / 2 + 1);
	if (buf == NULL)
		return RB_ENOMEM;
	for (size_t i = 0; i < n / 2; i++) {
		int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			free(buf);
			return RB_EINVAL;
		}
		buf[i] = (uint8_t)(hi << 4 | lo);
	}
	*out = buf;
	*out_len = n / 2;
	return 0;
}

// Bytes that never decode as protobuf: a run of 0xff is a varint longer than ten bytes (or,
// when shorter, one cut off), then a fixed pseudo-random tail so the size is exact.
static int make_garbage(size_t n, uint8_t **out, size_t *out_len)
{
	uint8_t *buf = malloc(n > 0 ? n : 1);
	if (buf == NULL)
		return RB_ENOMEM;
	uint32_t x = 2463534242u;
	for (size_t i = 0; i < n; i++) {
		if (i < 16) {
			buf[i] = 0xff;
			continue;
		}
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (uint8_t)x;
	}
	*out = buf;
	*out_len = n;
	return 0;
}

// A message of kind k whose token field is padded so that the whole is about n bytes: well
// formed, so only the size limit can refuse it.
static int make_oversize(enum probe_kind k, size_t n, uint8_t **out, size_t *out_len)
{
	if (k == KIND_NONE)
		return make_garbage(n, out, out_len);
	char *pad = malloc(n + 1);
	if (pad == NULL)
		return RB_ENOMEM;
	memset(pad, 'x', n);
	pad[n] = '\0';
	int rv = build_message(k, pad, out, out_len);
	free(pad);
	return rv;
}

static bool error_of(enum probe_kind k, const ProtobufCMessage *m, int *code, const char **text)
{
	const Ringbid__ErrorReply *e = NULL;
	switch (k) {
	case KIND_CALL:
		e = ((const Ringbid__CallReply *)m)->error;
		break;
	case KIND_ENVELOPE: {
		const Ringbid__Envelope *env = (const Ringbid__Envelope *)m;
		if (env->body_case == RINGBID__ENVELOPE__BODY_ERROR)
			e = env->error;
		break;
	}
	case KIND_AGENT: {
		const Ringbid__AgentMsg *a = (const Ringbid__AgentMsg *)m;
		if (a->body_case == RINGBID__AGENT_MSG__BODY_ERROR)
			e = a->error;
		break;
	}
	case KIND_CDR:
		e = ((const Ringbid__CdrAck *)m)->error;
		break;
	default:
		break;
	}
	if (e == NULL)
		return false;
	*code = e->code;
	*text = e->message != NULL ? e->message : "";
	return true;
}

static void append_ids(json_t *o, const char *key, char **ids, size_t n)
{
	json_t *a = json_array();

	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(ids[i] ? ids[i] : ""));
	json_object_set_new(o, key, a);
}

// The lists of a CdrAck as JSON object members to splice into the result line.
static char *ack_lists(const Ringbid__CdrAck *ack)
{
	json_t *o = json_object();
	char *text, *out = NULL;

	append_ids(o, "stored", ack->stored, ack->n_stored);
	append_ids(o, "quarantined", ack->quarantined, ack->n_quarantined);
	append_ids(o, "refused", ack->refused, ack->n_refused);
	text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
	json_decref(o);
	if (text != NULL && strlen(text) > 2 &&
	    asprintf(&out, ",%.*s", (int)strlen(text) - 2, text + 1) < 0)
		out = NULL;
	free(text);
	return out;
}

// Decodes a reply as kind k (or, with KIND_NONE, as the first type that decodes with an error
// in it, else the first type that decodes at all). Fills r; returns true when it carried an
// ErrorReply.
// The session token of a Login's answer as a JSON member (",\"session_token\":\"...\""), or
// NULL. Tokens are hex, so they need no escaping; anything else is not printed.
static char *session_token_of(const Ringbid__AgentMsg *a)
{
	const char *t;
	char *out;

	if (a->body_case != RINGBID__AGENT_MSG__BODY_STATUS || a->status->session_token == NULL)
		return NULL;
	t = a->status->session_token;
	if (t[0] == '\0' || strspn(t, "0123456789abcdef") != strlen(t) || strlen(t) > 128)
		return NULL;
	out = malloc(strlen(t) + 24);
	if (out != NULL)
		sprintf(out, ",\"session_token\":\"%s\"", t);
	return out;
}

static bool decode_reply(enum probe_kind k, const uint8_t *buf, size_t len, struct probe_reply *r)
{
	enum probe_kind first = KIND_NONE;
	enum probe_kind lo = k == KIND_NONE ? KIND_CALL : k, hi = k == KIND_NONE ? KIND_CDR : k;

	r->decoded = KIND_NONE;
	r->error_code = 0;
	r->error_message[0] = '\0';
	for (int i = (int)lo; i <= (int)hi; i++) {
		ProtobufCMessage *m = protobuf_c_message_unpack(
		        reply_descriptor((enum probe_kind)i), NULL, len, buf);
		if (m == NULL)
			continue;
		int code = 0;
		const char *text = NULL;
		bool is_error = error_of((enum probe_kind)i, m, &code, &text);
		if (i == KIND_CDR && k == KIND_CDR && !is_error)
			r->ack = ack_lists((const Ringbid__CdrAck *)m);
		if (i == KIND_AGENT && k == KIND_AGENT && !is_error)
			r->ack = session_token_of((const Ringbid__AgentMsg *)m);
		if (is_error) {
			r->decoded = (enum probe_kind)i;
			r->error_code = code;
			snprintf(r->error_message, sizeof(r->error_message), "%s", text);
		}
		protobuf_c_message_free_unpacked(m, NULL);
		if (is_error)
			return true;
		if (first == KIND_NONE)
			first = (enum probe_kind)i;
	}
	r->decoded = first;
	return false;
}

static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	struct probe_pipes *pp = arg;
	(void)p;
	if (ev == NNG_PIPE_EV_ADD_POST)
		__atomic_add_fetch(&pp->added, 1, __ATOMIC_SEQ_CST);
	else if (ev == NNG_PIPE_EV_REM_POST)
		__atomic_add_fetch(&pp->removed, 1, __ATOMIC_SEQ_CST);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

// JSON string body: printable ASCII as is, everything else escaped, so the line is valid JSON
// whatever bytes a service put in its message.
static void print_json_string(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20 || *p >= 0x7f)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

static void print_result(size_t sent, const struct probe_reply *r, const struct probe_pipes *pp,
                         int other, uint64_t elapsed_ms, const char *failure)
{
	printf("{\"sent\":%zu,\"reply\":\"%s\",\"len\":%zu,\"decoded\":", sent,
	       r->got ? "bytes" : "none", r->got ? r->len : 0);
	if (r->got && r->decoded != KIND_NONE)
		print_json_string(kind_names[r->decoded]);
	else
		fputs("null", stdout);
	printf(",\"error_code\":%d,\"error_name\":", r->error_code);
	print_json_string(r->error_code != 0 ? rb_err_name(r->error_code) : "");
	fputs(",\"error_message\":", stdout);
	print_json_string(r->error_message);
	printf(",\"connected\":%s,\"closed\":%s,\"other\":%d,\"elapsed_ms\":%llu",
	       pp->added > 0 ? "true" : "false", pp->removed > 0 ? "true" : "false", other,
	       (unsigned long long)elapsed_ms);
	if (r->ack != NULL)
		fputs(r->ack, stdout);
	if (failure != NULL) {
		fputs(",\"failure\":", stdout);
		print_json_string(failure);
	}
	fputs("}\n", stdout);
	fflush(stdout);
}

// An agent's Login as its client sends it, so a test can hold a real session token.
static int build_login(uint64_t agent_id, uint8_t **out, size_t *out_len)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__Login login = RINGBID__LOGIN__INIT;
	char secret[1024] = "";
	const char *path = getenv("RINGBID_AGENT_SECRET_FILE");
	FILE *f = path != NULL ? fopen(path, "re") : NULL;

	if (f == NULL)
		return RB_ENOTFOUND;
	if (fgets(secret, sizeof(secret), f) == NULL)
		secret[0] = '\0';
	fclose(f);
	secret[strcspn(secret, "\r\n")] = '\0';
	login.agent_id = agent_id;
	login.secret = secret;
	m.seq = 1;
	m.body_case = RINGBID__AGENT_MSG__BODY_LOGIN;
	m.login = &login;
	*out_len = ringbid__agent_msg__get_packed_size(&m);
	*out = malloc(*out_len > 0 ? *out_len : 1);
	if (*out == NULL)
		return RB_ENOMEM;
	ringbid__agent_msg__pack(&m, *out);
	return 0;
}

static int make_payload(const struct probe_opts *o, const char *token, uint8_t **buf, size_t *len)
{
	switch (o->mode) {
	case MODE_HEX:
		return decode_hex(o->hex, buf, len);
	case MODE_GARBAGE:
		return make_garbage(o->size, buf, len);
	case MODE_OVERSIZE:
		return make_oversize(o->kind, o->size, buf, len);
	case MODE_VALID:
		return build_message(o->kind, token, buf, len);
	case MODE_CDRS:
		return build_cdr_batch(o->cdrs_path, token, buf, len);
	case MODE_LOGIN:
		return build_login(o->login_agent, buf, len);
	case MODE_WRONG_TOKEN:
		// Well formed (64 lowercase hex, like a real token) and still wrong.
		return build_message(o->kind,
		                     "0123456789abcdef0123456789abcdef"
		                     "0123456789abcdef0123456789abcdef",
		                     buf, len);
	case MODE_TRUNCATED: {
		// A long token puts the cut inside a string field whatever the kind.
		const char *t = strlen(token) >= 32
		                        ? token
		                        : "probe-token-probe-token-probe-token-probe-token";
		int rv = build_message(o->kind, t, buf, len);
		if (rv == 0)
			rv = truncate_message(o->kind, *buf, *len, len);
		return rv;
	}
	default:
		return RB_EINVAL;
	}
}

// ---------------------------------------------------------------------------------------------
// Scripted agent sessions (--agent-script FILE)
//
// Each line of FILE is one JSON object, a step, run in order; with FILE '-' steps are read from
// stdin as they arrive, so a test can choose its next step from what it has seen. Every step
// prints one result line {"step":N,"op":...}; every message presence pushes (seq 0) and anything
// else that is not an awaited answer prints an event line {"event":...,"conn":...}; at the end
// {"done":true,"steps":N}. Members of a step:
//   op        login, resume, set_state, heartbeat, answer, end_call, logout, earnings (a request,
//             answered by presence), wait, sleep, oversize, garbage, connect, close.
//   conn      the connection (any name; default "main"), dialled at its first use. Each
//             connection is a client of its own, as presence sees it.
//   token     for requests after login: "session" (default: the token of the last login on
//             this connection), "forged" (a fresh random token, never issued), "none" (empty),
//             or a name given to a login with "as". token_hex: a literal token, sent as is.
//   timeout_ms  how long to wait for the answer (default --timeout-ms).
//   login:    agent, secret (the text) or secret_file, as (a name for the token; default the
//             agent id), keepalive (default true: heartbeats every --heartbeat-ms while idle).
//   resume:   agent.       set_state: state (AVAILABLE, NOT_READY, any state name or number).
//   answer:   offer_id, accept (default true).    end_call: call_id, sale, resolved.
//   wait:     event (offer, call_event, status, error, earnings, closed) and optional filters
//             kind (connected, ended, offer_withdrawn), call_id, offer_id, state, code; matches
//             the oldest unconsumed event of the connection, including ones already printed.
//   sleep:    ms (presence's pushes and keepalives are handled meanwhile).
//   oversize: bytes (a well-formed Heartbeat padded to that size); garbage: bytes.
// A result carries reply ("status", "error", "earnings", "none") and the answer's fields:
// agent_id, state, call_id, offer_id, missed_offers, reason, token_expires_us, session_token
// (login only), error_code, error_name, error_message; and closed (the connection is gone),
// elapsed_ms, failure (the step could not be carried out).

#define SCRIPT_CONNS_MAX  64
#define SCRIPT_TOKENS_MAX 1024
#define SCRIPT_EVENTS_MAX 512
#define SCRIPT_LINE_MAX   (1024 * 1024)

struct script_conn {
	char name[64];
	nng_socket sock;
	int recv_fd;
	bool open;            // dialled and not closed by a step
	bool closed_reported; // the "closed" event was printed
	struct probe_pipes pipes;
	char token[RB_TOKEN_HEX]; // the session of the last login here; "" none
	bool keepalive;
	uint64_t keepalive_seq; // the last keepalive heartbeat's seq, 0 none
	uint64_t next_keepalive_ms;
	json_t *events; // events not yet consumed by a wait, oldest first
};

struct script_token {
	char name[64];
	char hex[RB_TOKEN_HEX];
};

struct script {
	const struct probe_opts *o;
	uint64_t seq;
	unsigned steps;
	struct script_conn conns[SCRIPT_CONNS_MAX];
	size_t nconns;
	struct script_token tokens[SCRIPT_TOKENS_MAX];
	size_t ntokens;
};

// What a pump waits for: the answer to seq on conn, or an event matching filter on conn.
struct script_await {
	struct script_conn *conn;
	uint64_t seq;         // 0: not awaiting an answer
	const json_t *filter; // NULL: not awaiting an event
	json_t *got;          // the answer or the event (owned) once it came
};

static const char *const state_names[] = {"OFFLINE",  "NOT_READY", "AVAILABLE",
                                          "RESERVED", "ON_CALL",   "WRAP_UP"};

static const char *state_name(int s)
{
	return s >= 0 && s < 6 ? state_names[s] : "UNKNOWN";
}

// Whatever bytes presence sent, as a JSON string: printable ASCII kept, anything else '?'.
static json_t *json_text(const char *s)
{
	if (s == NULL)
		return json_string("");
	size_t n = strlen(s);
	char *t = malloc(n + 1);
	if (t == NULL)
		return json_string("");
	for (size_t i = 0; i < n; i++)
		t[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	t[n] = '\0';
	json_t *j = json_string(t);
	free(t);
	return j;
}

static void json_print(json_t *o)
{
	char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
	if (text != NULL) {
		puts(text);
		free(text);
	}
	fflush(stdout);
}

static void set_u64(json_t *o, const char *key, uint64_t v)
{
	json_object_set_new(o, key, json_integer((json_int_t)v));
}

static void set_error(json_t *o, int code, const char *text)
{
	json_object_set_new(o, "error_code", json_integer(code));
	json_object_set_new(o, "error_name", json_string(rb_err_name(code)));
	json_object_set_new(o, "error_message", json_text(text));
}

static const char *event_kind_name(Ringbid__CallEventKind k)
{
	switch (k) {
	case RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED:
		return "connected";
	case RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED:
		return "ended";
	case RINGBID__CALL_EVENT_KIND__CALL_EVENT_OFFER_WITHDRAWN:
		return "offer_withdrawn";
	default:
		return "none";
	}
}

// The members of an AgentMsg from presence, under "type" (status, offer, call_event, error,
// earnings, other) and the body's fields.
static void msg_fields(json_t *o, const char *type_key, const Ringbid__AgentMsg *m)
{
	switch (m->body_case) {
	case RINGBID__AGENT_MSG__BODY_STATUS: {
		const Ringbid__AgentStatus *st = m->status;
		json_object_set_new(o, type_key, json_string("status"));
		set_u64(o, "agent_id", st->agent_id);
		json_object_set_new(o, "state", json_string(state_name((int)st->state)));
		json_object_set_new(o, "call_id", json_text(st->call_id));
		set_u64(o, "offer_id", st->offer_id);
		json_object_set_new(o, "missed_offers", json_integer(st->missed_offers));
		json_object_set_new(o, "reason", json_text(st->reason));
		set_u64(o, "token_expires_us", st->token_expires_us);
		const char *t = st->session_token;
		if (t != NULL && t[0] != '\0' && strlen(t) < RB_TOKEN_HEX)
			json_object_set_new(o, "session_token", json_text(t));
		break;
	}
	case RINGBID__AGENT_MSG__BODY_OFFER: {
		const Ringbid__OfferEvent *e = m->offer;
		json_object_set_new(o, type_key, json_string("offer"));
		set_u64(o, "offer_id", e->offer_id);
		json_object_set_new(o, "call_id", json_text(e->call_id));
		json_object_set_new(o, "program", json_text(e->program));
		json_object_set_new(o, "wait_ms", json_integer(e->wait_ms));
		json_object_set_new(o, "ring_timeout_ms", json_integer(e->ring_timeout_ms));
		break;
	}
	case RINGBID__AGENT_MSG__BODY_CALL_EVENT: {
		const Ringbid__CallEvent *e = m->call_event;
		json_object_set_new(o, type_key, json_string("call_event"));
		json_object_set_new(o, "kind", json_string(event_kind_name(e->kind)));
		json_object_set_new(o, "call_id", json_text(e->call_id));
		set_u64(o, "offer_id", e->offer_id);
		json_object_set_new(o, "wrap_up_s", json_integer(e->wrap_up_s));
		json_object_set_new(o, "reason", json_text(e->reason));
		break;
	}
	case RINGBID__AGENT_MSG__BODY_ERROR:
		json_object_set_new(o, type_key, json_string("error"));
		set_error(o, m->error->code, m->error->message);
		break;
	case RINGBID__AGENT_MSG__BODY_EARNINGS: {
		const Ringbid__Earnings *e = m->earnings;
		json_object_set_new(o, type_key, json_string("earnings"));
		json_object_set_new(o, "today_calls", json_integer(e->today_calls));
		set_u64(o, "today_talk_s", e->today_talk_s);
		json_object_set_new(o, "today_amount", json_text(e->today_amount));
		json_object_set_new(o, "period_calls", json_integer(e->period_calls));
		break;
	}
	default:
		json_object_set_new(o, type_key, json_string("other"));
		json_object_set_new(o, "body_case", json_integer((int)m->body_case));
		break;
	}
}

static void queue_event(struct script_conn *c, json_t *ev)
{
	if (json_array_size(c->events) >= SCRIPT_EVENTS_MAX)
		json_array_remove(c->events, 0);
	json_array_append(c->events, ev);
}

static bool event_matches(const json_t *ev, const json_t *filter)
{
	static const char *const keys[] = {"kind", "call_id", "offer_id", "state", "code"};
	const json_t *want = json_object_get(filter, "event");
	if (json_is_string(want) && !json_equal(json_object_get(ev, "event"), (json_t *)want))
		return false;
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		const json_t *w = json_object_get(filter, keys[i]);
		const char *k = strcmp(keys[i], "code") == 0 ? "error_code" : keys[i];
		if (w != NULL && !json_equal(json_object_get(ev, k), (json_t *)w))
			return false;
	}
	return true;
}

// Looks for the oldest queued event of c matching filter: takes it (and drops the older ones).
static json_t *take_event(struct script_conn *c, const json_t *filter)
{
	for (size_t i = 0; i < json_array_size(c->events); i++) {
		json_t *ev = json_array_get(c->events, i);
		if (!event_matches(ev, filter))
			continue;
		json_incref(ev);
		for (size_t j = 0; j <= i; j++)
			json_array_remove(c->events, 0);
		return ev;
	}
	return NULL;
}

static void print_event(struct script_conn *c, json_t *ev)
{
	json_print(ev);
	queue_event(c, ev);
}

static void note_closed(struct script_conn *c)
{
	if (c->closed_reported || __atomic_load_n(&c->pipes.removed, __ATOMIC_SEQ_CST) == 0)
		return;
	c->closed_reported = true;
	json_t *ev = json_object();
	json_object_set_new(ev, "event", json_string("closed"));
	json_object_set_new(ev, "conn", json_string(c->name));
	print_event(c, ev);
	json_decref(ev);
}

static int send_bytes(struct script_conn *c, const uint8_t *buf, size_t len)
{
	nng_msg *msg = NULL;
	int rv = nng_msg_alloc(&msg, 0);
	if (rv == 0)
		rv = nng_msg_append(msg, buf, len);
	if (rv == 0)
		rv = nng_sendmsg(c->sock, msg, 0);
	if (rv != 0)
		nng_msg_free(msg);
	return rv;
}

static int send_agent_msg(struct script_conn *c, const Ringbid__AgentMsg *m)
{
	size_t len = ringbid__agent_msg__get_packed_size(m);
	uint8_t *buf = malloc(len > 0 ? len : 1);
	if (buf == NULL)
		return NNG_ENOMEM;
	ringbid__agent_msg__pack(m, buf);
	int rv = send_bytes(c, buf, len);
	free(buf);
	return rv;
}

static void send_keepalive(struct script *s, struct script_conn *c, uint64_t now)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__Heartbeat hb = RINGBID__HEARTBEAT__INIT;
	m.seq = ++s->seq;
	m.token = c->token;
	m.body_case = RINGBID__AGENT_MSG__BODY_HEARTBEAT;
	m.heartbeat = &hb;
	c->next_keepalive_ms = now + (uint64_t)s->o->heartbeat_ms;
	if (send_agent_msg(c, &m) == 0)
		c->keepalive_seq = m.seq;
}

// One message from presence on c: the awaited answer goes to w, a refused keepalive ends the
// keepalives of c, anything else is printed as an event.
static void on_message(struct script_conn *c, nng_msg *in, struct script_await *w)
{
	ProtobufCMessage *pm = protobuf_c_message_unpack(&ringbid__agent_msg__descriptor, NULL,
	                                                 nng_msg_len(in), nng_msg_body(in));
	json_t *ev = json_object();
	if (pm == NULL) {
		json_object_set_new(ev, "event", json_string("undecodable"));
		json_object_set_new(ev, "conn", json_string(c->name));
		set_u64(ev, "len", nng_msg_len(in));
		print_event(c, ev);
		json_decref(ev);
		return;
	}
	const Ringbid__AgentMsg *m = (const Ringbid__AgentMsg *)pm;
	if (w != NULL && w->conn == c && w->seq != 0 && m->seq == w->seq && w->got == NULL) {
		json_object_set_new(ev, "seq", json_integer((json_int_t)m->seq));
		msg_fields(ev, "reply", m);
		w->got = ev;
		protobuf_c_message_free_unpacked(pm, NULL);
		return;
	}
	if (m->seq != 0 && m->seq == c->keepalive_seq) {
		c->keepalive_seq = 0;
		if (m->body_case == RINGBID__AGENT_MSG__BODY_STATUS) {
			json_decref(ev);
			protobuf_c_message_free_unpacked(pm, NULL);
			return;
		}
		// The session is over for presence: the keepalives stop, and the test hears why.
		c->token[0] = '\0';
		json_object_set_new(ev, "event", json_string("keepalive_refused"));
	} else {
		json_object_set_new(ev, "event", json_string(m->seq != 0 ? "late_reply" : "push"));
	}
	json_object_set_new(ev, "conn", json_string(c->name));
	json_object_set_new(ev, "seq", json_integer((json_int_t)m->seq));
	if (m->seq == 0) {
		// A push is named by its type: offer, call_event, status, error.
		json_object_del(ev, "event");
		msg_fields(ev, "event", m);
	} else {
		msg_fields(ev, "type", m);
	}
	print_event(c, ev);
	if (w != NULL && w->conn == c && w->filter != NULL && w->got == NULL &&
	    event_matches(ev, w->filter))
		w->got = take_event(c, w->filter);
	json_decref(ev);
	protobuf_c_message_free_unpacked(pm, NULL);
}

static void drain(struct script_conn *c, struct script_await *w)
{
	for (;;) {
		nng_msg *in = NULL;
		if (nng_recvmsg(c->sock, &in, NNG_FLAG_NONBLOCK) != 0)
			return;
		on_message(c, in, w);
		nng_msg_free(in);
	}
}

// Runs the agent link until w is satisfied (true), the deadline passes, or (with input_fd >= 0)
// input_fd is readable (false). Pushes are printed and keepalives sent all along.
static bool pump(struct script *s, struct script_await *w, uint64_t deadline, int input_fd)
{
	struct pollfd fds[SCRIPT_CONNS_MAX + 1];

	for (;;) {
		uint64_t now = mono_ms(), wake = deadline;
		size_t n = 0;
		for (size_t i = 0; i < s->nconns; i++) {
			struct script_conn *c = &s->conns[i];
			if (!c->open)
				continue;
			drain(c, w);
			note_closed(c);
			if (w != NULL && w->conn == c && w->filter != NULL && w->got == NULL &&
			    json_is_string(json_object_get(w->filter, "event")) &&
			    strcmp(json_string_value(json_object_get(w->filter, "event")),
			           "closed") == 0)
				w->got = take_event(c, w->filter);
			if (c->token[0] != '\0' && c->keepalive && s->o->heartbeat_ms > 0 &&
			    !c->closed_reported) {
				if (c->next_keepalive_ms <= now)
					send_keepalive(s, c, now);
				if (c->next_keepalive_ms < wake)
					wake = c->next_keepalive_ms;
			}
			fds[n] = (struct pollfd){.fd = c->recv_fd, .events = POLLIN};
			n++;
		}
		if (w != NULL && w->got != NULL)
			return true;
		if (now >= deadline)
			return false;
		if (input_fd >= 0) {
			fds[n] = (struct pollfd){.fd = input_fd, .events = POLLIN};
			n++;
		}
		// Closed connections are seen through pipe callbacks, not descriptors: look often.
		uint64_t slice = wake > now ? wake - now : 0;
		if (slice > 50)
			slice = 50;
		int k = poll(fds, n, (int)slice);
		if (k > 0 && input_fd >= 0 && (fds[n - 1].revents & (POLLIN | POLLHUP | POLLERR)))
			return false;
	}
}

static struct script_conn *conn_get(struct script *s, const char *name, const char **why)
{
	for (size_t i = 0; i < s->nconns; i++) {
		if (strcmp(s->conns[i].name, name) == 0 && s->conns[i].open)
			return &s->conns[i];
	}
	struct script_conn *c = NULL;
	for (size_t i = 0; i < s->nconns; i++) {
		if (strcmp(s->conns[i].name, name) == 0)
			c = &s->conns[i]; // closed by a step: dial it again
	}
	if (c == NULL) {
		if (s->nconns == SCRIPT_CONNS_MAX || strlen(name) >= sizeof(c->name)) {
			*why = "too many connections or name too long";
			return NULL;
		}
		c = &s->conns[s->nconns++];
		memset(c, 0, sizeof(*c));
		snprintf(c->name, sizeof(c->name), "%s", name);
		c->events = json_array();
	}
	c->token[0] = '\0';
	c->keepalive_seq = 0;
	c->closed_reported = false;
	__atomic_store_n(&c->pipes.added, 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&c->pipes.removed, 0, __ATOMIC_SEQ_CST);
	int rv = nng_pair1_open(&c->sock);
	if (rv != 0) {
		*why = nng_strerror(rv);
		return NULL;
	}
	nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, 64u << 20);
	nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO, s->o->timeout_ms);
	nng_pipe_notify(c->sock, NNG_PIPE_EV_ADD_POST, pipe_event, &c->pipes);
	nng_pipe_notify(c->sock, NNG_PIPE_EV_REM_POST, pipe_event, &c->pipes);
	if ((rv = nng_dial(c->sock, s->o->url, NULL, 0)) != 0 ||
	    (rv = nng_socket_get_int(c->sock, NNG_OPT_RECVFD, &c->recv_fd)) != 0) {
		*why = nng_strerror(rv);
		nng_close(c->sock);
		return NULL;
	}
	c->open = true;
	return c;
}

static struct script_token *token_find(struct script *s, const char *name)
{
	for (size_t i = 0; i < s->ntokens; i++) {
		if (strcmp(s->tokens[i].name, name) == 0)
			return &s->tokens[i];
	}
	return NULL;
}

static void token_keep(struct script *s, const char *name, const char *hex)
{
	struct script_token *t = token_find(s, name);
	if (t == NULL && s->ntokens < SCRIPT_TOKENS_MAX) {
		t = &s->tokens[s->ntokens++];
		snprintf(t->name, sizeof(t->name), "%s", name);
	}
	if (t != NULL)
		snprintf(t->hex, sizeof(t->hex), "%s", hex);
}

// The token a request step carries, into buf (RB_TOKEN_HEX). NULL with *why on a bad spec.
static const char *step_token(struct script *s, const struct script_conn *c, const json_t *step,
                              char *buf, size_t n, const char **why)
{
	const json_t *lit = json_object_get(step, "token_hex");
	if (json_is_string(lit))
		return json_string_value(lit);
	const char *spec = json_str(step, "token", "session");
	if (strcmp(spec, "session") == 0) {
		snprintf(buf, n, "%s", c->token);
	} else if (strcmp(spec, "forged") == 0) {
		uint8_t hash[RB_TOKEN_HASH];
		rb_token_new(buf, hash);
	} else if (strcmp(spec, "none") == 0) {
		buf[0] = '\0';
	} else {
		const struct script_token *t = token_find(s, spec);
		if (t == NULL) {
			*why = "no token of that name";
			return NULL;
		}
		snprintf(buf, n, "%s", t->hex);
	}
	return buf;
}

static int parse_state(const json_t *v, Ringbid__AgentState *out)
{
	if (json_is_integer(v)) {
		*out = (Ringbid__AgentState)json_integer_value(v);
		return 0;
	}
	const char *name = json_is_string(v) ? json_string_value(v) : "";
	for (int i = 0; i < 6; i++) {
		if (strcmp(name, state_names[i]) == 0) {
			*out = (Ringbid__AgentState)i;
			return 0;
		}
	}
	return RB_EINVAL;
}

// Reads a secret for a login step: "secret", else the first line of "secret_file".
static int step_secret(const json_t *step, char *out, size_t n)
{
	const json_t *v = json_object_get(step, "secret");
	if (json_is_string(v)) {
		snprintf(out, n, "%s", json_string_value(v));
		return 0;
	}
	const char *path = json_str(step, "secret_file", NULL);
	FILE *f = path != NULL ? fopen(path, "re") : NULL;
	if (f == NULL)
		return RB_ENOTFOUND;
	if (fgets(out, (int)n, f) == NULL)
		out[0] = '\0';
	fclose(f);
	out[strcspn(out, "\r\n")] = '\0';
	return 0;
}

// Builds and sends the request of step on c, then waits for its answer into res.
static void run_request(struct script *s, struct script_conn *c, const char *op, const json_t *step,
                        json_t *res)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__Login login = RINGBID__LOGIN__INIT;
	Ringbid__Resume resume = RINGBID__RESUME__INIT;
	Ringbid__SetState set_state = RINGBID__SET_STATE__INIT;
	Ringbid__Heartbeat hb = RINGBID__HEARTBEAT__INIT;
	Ringbid__OfferAnswer answer = RINGBID__OFFER_ANSWER__INIT;
	Ringbid__EndCall end_call = RINGBID__END_CALL__INIT;
	Ringbid__Logout logout = RINGBID__LOGOUT__INIT;
	Ringbid__EarningsQuery earnings = RINGBID__EARNINGS_QUERY__INIT;
	char secret[1100] = "", tokbuf[RB_TOKEN_HEX] = "";
	const char *why = NULL;
	int timeout = (int)json_u64(step, "timeout_ms");

	if (timeout <= 0)
		timeout = s->o->timeout_ms;
	if (strcmp(op, "login") == 0) {
		m.body_case = RINGBID__AGENT_MSG__BODY_LOGIN;
		m.login = &login;
		login.agent_id = json_u64(step, "agent");
		login.secret = secret;
		if (step_secret(step, secret, sizeof(secret)) != 0)
			why = "login needs secret or a readable secret_file";
	} else {
		m.token = (char *)step_token(s, c, step, tokbuf, sizeof(tokbuf), &why);
		if (strcmp(op, "resume") == 0) {
			m.body_case = RINGBID__AGENT_MSG__BODY_RESUME;
			m.resume = &resume;
			resume.agent_id = json_u64(step, "agent");
		} else if (strcmp(op, "set_state") == 0) {
			m.body_case = RINGBID__AGENT_MSG__BODY_SET_STATE;
			m.set_state = &set_state;
			if (parse_state(json_object_get(step, "state"), &set_state.state) != 0)
				why = "set_state needs a state";
		} else if (strcmp(op, "heartbeat") == 0) {
			m.body_case = RINGBID__AGENT_MSG__BODY_HEARTBEAT;
			m.heartbeat = &hb;
		} else if (strcmp(op, "answer") == 0) {
			m.body_case = RINGBID__AGENT_MSG__BODY_ANSWER;
			m.answer = &answer;
			answer.offer_id = json_u64(step, "offer_id");
			const json_t *acc = json_object_get(step, "accept");
			answer.accept = acc == NULL || json_is_true(acc);
		} else if (strcmp(op, "end_call") == 0) {
			m.body_case = RINGBID__AGENT_MSG__BODY_END_CALL;
			m.end_call = &end_call;
			end_call.call_id = json_str(step, "call_id", "");
			end_call.sale = json_is_true(json_object_get(step, "sale"));
			end_call.resolved = json_is_true(json_object_get(step, "resolved"));
		} else if (strcmp(op, "logout") == 0) {
			m.body_case = RINGBID__AGENT_MSG__BODY_LOGOUT;
			m.logout = &logout;
		} else {
			m.body_case = RINGBID__AGENT_MSG__BODY_EARNINGS_QUERY;
			m.earnings_query = &earnings;
		}
	}
	if (why != NULL) {
		json_object_set_new(res, "failure", json_string(why));
		return;
	}
	m.seq = ++s->seq;
	json_object_set_new(res, "seq", json_integer((json_int_t)m.seq));
	uint64_t start = mono_ms();
	int rv = send_agent_msg(c, &m);
	sodium_memzero(secret, sizeof(secret));
	if (rv != 0) {
		json_object_set_new(res, "reply", json_string("none"));
		json_object_set_new(res, "failure", json_string(nng_strerror(rv)));
		return;
	}
	struct script_await w = {.conn = c, .seq = m.seq};
	if (!pump(s, &w, start + (uint64_t)timeout, -1)) {
		json_object_set_new(res, "reply", json_string("none"));
	} else {
		json_object_update(res, w.got);
		json_decref(w.got);
	}
	set_u64(res, "elapsed_ms", mono_ms() - start);
	const char *reply = json_str(res, "reply", "");
	if (strcmp(op, "login") == 0 && strcmp(reply, "status") == 0) {
		const char *tok = json_str(res, "session_token", "");
		char name[32];
		snprintf(name, sizeof(name), "%llu", (unsigned long long)login.agent_id);
		token_keep(s, json_str(step, "as", name), tok);
		snprintf(c->token, sizeof(c->token), "%s", tok);
		const json_t *ka = json_object_get(step, "keepalive");
		c->keepalive = ka == NULL || json_is_true(ka);
		c->next_keepalive_ms = mono_ms() + (uint64_t)s->o->heartbeat_ms;
	} else if (strcmp(op, "logout") == 0 && strcmp(reply, "status") == 0 &&
	           strcmp(m.token, c->token) == 0) {
		c->token[0] = '\0';
	}
}

static void run_step(struct script *s, const json_t *step)
{
	json_t *res = json_object();
	const char *op = json_str(step, "op", "");
	const char *conn = json_str(step, "conn", "main");
	const char *why = NULL;

	json_object_set_new(res, "step", json_integer(++s->steps));
	json_object_set_new(res, "op", json_text(op));
	json_object_set_new(res, "conn", json_text(conn));
	if (strcmp(op, "sleep") == 0) {
		pump(s, NULL, mono_ms() + json_u64(step, "ms"), -1);
		goto done;
	}
	if (strcmp(op, "close") == 0) {
		for (size_t i = 0; i < s->nconns; i++) {
			struct script_conn *c = &s->conns[i];
			if (strcmp(c->name, conn) == 0 && c->open) {
				nng_close(c->sock);
				c->open = false;
				c->token[0] = '\0';
			}
		}
		goto done;
	}
	static const char *const known[] = {"login",  "resume",   "set_state", "heartbeat",
	                                    "answer", "end_call", "logout",    "earnings",
	                                    "wait",   "oversize", "garbage",   "connect"};
	bool ok = false;
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		ok = ok || strcmp(op, known[i]) == 0;
	if (!ok) {
		json_object_set_new(res, "failure", json_string("unknown op"));
		goto done;
	}
	struct script_conn *c = conn_get(s, conn, &why);
	if (c == NULL) {
		json_object_set_new(res, "failure", json_text(why));
		goto done;
	}
	if (strcmp(op, "connect") == 0) {
		// The dial returned once the connection was up.
	} else if (strcmp(op, "wait") == 0) {
		int timeout = (int)json_u64(step, "timeout_ms");
		struct script_await w = {.conn = c, .filter = step};
		w.got = take_event(c, step);
		if (w.got == NULL)
			pump(s, &w,
			     mono_ms() + (uint64_t)(timeout > 0 ? timeout : s->o->timeout_ms), -1);
		json_object_set_new(res, "found", json_boolean(w.got != NULL));
		if (w.got != NULL)
			json_object_set_new(res, "event", w.got);
	} else if (strcmp(op, "oversize") == 0 || strcmp(op, "garbage") == 0) {
		uint8_t *buf = NULL;
		size_t len = 0;
		size_t n = json_u64(step, "bytes");
		int rv = strcmp(op, "oversize") == 0 ? make_oversize(KIND_AGENT, n, &buf, &len)
		                                     : make_garbage(n, &buf, &len);
		if (rv == 0 && (rv = send_bytes(c, buf, len)) != 0)
			json_object_set_new(res, "failure", json_string(nng_strerror(rv)));
		else if (rv != 0)
			json_object_set_new(res, "failure", json_string(rb_err_str(rv)));
		else
			set_u64(res, "sent", len);
		free(buf);
		// An answer to garbage (an ErrorReply with seq 0) shows up as an event.
		pump(s, NULL, mono_ms() + 200, -1);
	} else {
		run_request(s, c, op, step, res);
	}
	json_object_set_new(res, "closed",
	                    json_boolean(__atomic_load_n(&c->pipes.removed, __ATOMIC_SEQ_CST) > 0));
done:
	json_print(res);
	json_decref(res);
}

// Runs the steps of o->script_path; between steps (stdin) the connections are kept alive.
static int run_script(const struct probe_opts *o)
{
	struct script *s = calloc(1, sizeof(*s));
	bool from_stdin = strcmp(o->script_path, "-") == 0;
	int fd = from_stdin ? 0 : open(o->script_path, O_RDONLY | O_CLOEXEC);
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);

	if (s == NULL || buf == NULL || fd < 0 || sodium_init() < 0) {
		fprintf(stderr, "rb_probe: cannot read %s\n", o->script_path);
		free(s);
		free(buf);
		return 2;
	}
	s->o = o;
	bool eof = false;
	for (;;) {
		char *nl = memchr(buf, '\n', len);
		if (nl == NULL && eof && len > 0)
			nl = buf + len; // a last line without a line break
		if (nl != NULL) {
			size_t n = (size_t)(nl - buf);
			json_error_t jerr;
			json_t *step = json_loadb(buf, n, 0, &jerr);
			size_t used = n < len ? n + 1 : n;
			bool blank = strspn(buf, " \t\r") >= n;
			memmove(buf, buf + used, len - used);
			len -= used;
			if (blank) {
				json_decref(step);
				continue;
			}
			if (!json_is_object(step)) {
				json_t *res = json_object();
				json_object_set_new(res, "step", json_integer(++s->steps));
				json_object_set_new(res, "failure",
				                    json_text("step is not a JSON object"));
				json_print(res);
				json_decref(res);
			} else {
				run_step(s, step);
			}
			json_decref(step);
			continue;
		}
		if (eof)
			break;
		if (len == cap) {
			if (cap >= SCRIPT_LINE_MAX) {
				fprintf(stderr, "rb_probe: a step is longer than %d bytes\n",
				        SCRIPT_LINE_MAX);
				break;
			}
			char *bigger = realloc(buf, cap * 2);
			if (bigger == NULL)
				break;
			buf = bigger;
			cap *= 2;
		}
		// Waiting for the next step: keep the sessions alive and print what presence
		// pushes.
		if (from_stdin)
			pump(s, NULL, UINT64_MAX, fd);
		ssize_t r = read(fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			eof = true;
		else
			len += (size_t)r;
	}
	printf("{\"done\":true,\"steps\":%u}\n", s->steps);
	fflush(stdout);
	// As in the single-message modes: the kernel closes the connections.
	_exit(0);
}

static void recv_done(void *arg)
{
	__atomic_store_n((int *)arg, 1, __ATOMIC_SEQ_CST);
}

// One receive, until deadline (mono_ms) or 300 ms after the peer dropped the connection (a
// service that drops it will not answer, and a REQ socket would only redial and resend the
// same refused message). One operation with all the time left, not a series of short ones: a
// REQ socket abandons its request when a receive times out or is cancelled.
static int recv_until(nng_socket sock, uint64_t deadline, const struct probe_pipes *pp,
                      nng_msg **out)
{
	uint64_t now = mono_ms(), closed_seen = 0;
	int done = 0, rv;
	nng_aio *aio;

	if (now >= deadline)
		return NNG_ETIMEDOUT;
	if ((rv = nng_aio_alloc(&aio, recv_done, &done)) != 0)
		return rv;
	nng_aio_set_timeout(aio, (nng_duration)(deadline - now));
	nng_recv_aio(sock, aio);
	while (!__atomic_load_n(&done, __ATOMIC_SEQ_CST)) {
		now = mono_ms();
		if (__atomic_load_n(&pp->removed, __ATOMIC_SEQ_CST) > 0) {
			if (closed_seen == 0)
				closed_seen = now;
			else if (now - closed_seen >= 300)
				nng_aio_cancel(aio);
		}
		usleep(5000);
	}
	rv = nng_aio_result(aio);
	if (rv == 0)
		*out = nng_aio_get_msg(aio);
	nng_aio_free(aio);
	return rv;
}

struct probe_read {
	enum probe_kind answer;
	bool pair;
	bool done; // reply holds the answer
	struct probe_reply reply;
	int other; // messages read that were not the answer
};

static bool read_part(const void *part, size_t len, void *arg)
{
	struct probe_read *pr = arg;
	struct probe_reply cur;

	memset(&cur, 0, sizeof(cur));
	cur.got = true;
	cur.len = len;
	bool is_error = decode_reply(pr->answer, part, len, &cur);
	// A login is answered with a status carrying the token: that is the answer.
	if (!pr->pair || is_error || cur.ack != NULL) {
		pr->reply = cur;
		pr->done = true;
		return false;
	}
	pr->other++;
	return true;
}

int main(int argc, char **argv)
{
	struct probe_opts o;
	struct probe_reply r;
	struct probe_pipes pp = {0, 0};
	char token[256] = "";
	uint8_t *buf = NULL;
	size_t len = 0;
	nng_socket sock;
	nng_msg *msg = NULL;
	int other = 0, rv;

	memset(&r, 0, sizeof(r));
	if (parse_args(argc, argv, &o) != 0) {
		usage(stderr);
		return 2;
	}
	rb_log_init("probe");
	rb_log_set_level(RB_LOG_ERROR);
	rb_config_load_home();
	if (o.mode == MODE_SCRIPT)
		return run_script(&o);
	if (o.token != NULL)
		snprintf(token, sizeof(token), "%s", o.token);
	else if (rb_config_service_token(token, sizeof(token)) != 0)
		token[0] = '\0';
	if ((rv = make_payload(&o, token, &buf, &len)) != 0) {
		fprintf(stderr, "rb_probe: cannot build the message: %s\n", rb_err_str(rv));
		return 2;
	}

	uint64_t start = mono_ms();
	rv = o.pair ? nng_pair1_open(&sock) : nng_req0_open(&sock);
	if (rv != 0) {
		print_result(0, &r, &pp, 0, 0, nng_strerror(rv));
		free(buf);
		return 1;
	}
	// Big enough for any reply; the probe is not what is under test.
	nng_socket_set_size(sock, NNG_OPT_RECVMAXSZ, 64u << 20);
	nng_socket_set_ms(sock, NNG_OPT_SENDTIMEO, o.timeout_ms);
	if (!o.pair) // no resend within the probe's wait: one request, one answer
		nng_socket_set_ms(sock, NNG_OPT_REQ_RESENDTIME, (nng_duration)o.timeout_ms * 10);
	nng_pipe_notify(sock, NNG_PIPE_EV_ADD_POST, pipe_event, &pp);
	nng_pipe_notify(sock, NNG_PIPE_EV_REM_POST, pipe_event, &pp);

	if ((rv = nng_dial(sock, o.url, NULL, 0)) != 0) {
		char why[300];
		snprintf(why, sizeof(why), "dial %s: %s", o.url, nng_strerror(rv));
		print_result(0, &r, &pp, 0, mono_ms() - start, why);
		nng_close(sock);
		free(buf);
		return 1;
	}
	if ((rv = nng_msg_alloc(&msg, 0)) != 0 || (rv = nng_msg_append(msg, buf, len)) != 0 ||
	    (rv = nng_sendmsg(sock, msg, 0)) != 0) {
		nng_msg_free(msg);
		print_result(0, &r, &pp, 0, mono_ms() - start, nng_strerror(rv));
		nng_close(sock);
		free(buf);
		return 1;
	}
	free(buf);

	// A pair peer may speak first (a broker sends CallSync, an auction SnapshotRequest, to
	// whoever connects): keep reading until an ErrorReply or the deadline.
	uint64_t deadline = start + (uint64_t)o.timeout_ms;
	for (;;) {
		nng_msg *in = NULL;
		rv = recv_until(sock, deadline, &pp, &in);
		if (rv != 0)
			break;
		// A service link may pack several messages in one (rb_bus_unpack); each is read.
		struct probe_read pr = {.answer = o.answer, .pair = o.pair};
		int parts = rb_bus_unpack(nng_msg_body(in), nng_msg_len(in), read_part, &pr);
		nng_msg_free(in);
		other += pr.other;
		if (parts < 0) {
			fprintf(stderr, "rb_probe: a malformed batch frame arrived\n");
			other++;
		}
		if (pr.done) {
			r = pr.reply;
			break;
		}
	}
	print_result(len, &r, &pp, other, mono_ms() - start, NULL);
	// No nng_close: in nng 1.5.2, closing a REQ socket that is still resending a multi-megabyte
	// request into connections the peer keeps dropping can block for good. The probe is done,
	// and the kernel closes its connections.
	fflush(stdout);
	_exit(0);
}
