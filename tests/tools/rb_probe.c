// rb_probe: sends one crafted message to a ringbid socket and prints the answer as one JSON line.
//
// The integration tests use it to feed each listening socket garbage, truncated protobufs,
// oversized messages and wrong tokens, and to read the ErrorReply that comes back. It is a test
// tool, so it uses blocking nng calls.
#include <errno.h>
#include <getopt.h>
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

#include "rb_config.h"
#include "rb_err.h"
#include "rb_log.h"
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
	MODE_CDRS,  // a CdrBatch of the CDRs in a JSON-lines file
	MODE_LOGIN, // an agent's Login, the secret from $RINGBID_AGENT_SECRET_FILE
};

struct probe_opts {
	const char *url;
	bool pair;
	enum probe_mode mode;
	enum probe_kind kind;   // message built (truncated, wrong-token, valid, oversize)
	enum probe_kind answer; // reply type to decode; KIND_NONE: try every type
	const char *hex;
	const char *cdrs_path;
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
	        "and prints the session token presence answers with.\n");
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
		                "--truncated, --wrong-token, --valid, --cdrs\n");
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
	        {"kind", required_argument, NULL, 'k'},
	        {"token", required_argument, NULL, 'T'},
	        {"timeout-ms", required_argument, NULL, 'm'},
	        {"help", no_argument, NULL, 'h'},
	        {NULL, 0, NULL, 0},
	};
	const char *proto = NULL;
	size_t timeout = 2000;
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
	if (o->url == NULL || proto == NULL || o->mode == MODE_NONE) {
		fprintf(stderr, "rb_probe: --url, --proto and one message option are required\n");
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
	uint64_t closed_seen = 0;
	for (;;) {
		uint64_t now = mono_ms();
		if (now >= deadline)
			break;
		// A service that drops the connection will not answer: stop soon after (a REQ
		// socket would only redial and resend the same refused message).
		if (__atomic_load_n(&pp.removed, __ATOMIC_SEQ_CST) > 0) {
			if (closed_seen == 0)
				closed_seen = now;
			else if (now - closed_seen >= 300)
				break;
		}
		uint64_t slice = deadline - now < 100 ? deadline - now : 100;
		nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, (nng_duration)slice);
		nng_msg *in = NULL;
		rv = nng_recvmsg(sock, &in, 0);
		if (rv == NNG_ETIMEDOUT)
			continue;
		if (rv != 0)
			break;
		struct probe_reply cur;
		memset(&cur, 0, sizeof(cur));
		cur.got = true;
		cur.len = nng_msg_len(in);
		bool is_error = decode_reply(o.answer, nng_msg_body(in), cur.len, &cur);
		nng_msg_free(in);
		// A login is answered with a status carrying the token: that is the answer.
		if (!o.pair || is_error || cur.ack != NULL) {
			r = cur;
			break;
		}
		other++;
	}
	print_result(len, &r, &pp, other, mono_ms() - start, NULL);
	// No nng_close: in nng 1.5.2, closing a REQ socket that is still resending a multi-megabyte
	// request into connections the peer keeps dropping can block for good. The probe is done,
	// and the kernel closes its connections.
	fflush(stdout);
	_exit(0);
}
