// Dispatch benchmark: N real agent sessions and a stream of calls against a running stack,
// measuring the time from a call's arrival at the broker to its offer reaching the agent.
//
// The load generator itself must not be the bottleneck, so it does not run a libuv loop per
// session: each agent is one nng pair1 socket whose receive aio callback answers on nng's own
// threads (accept the offer, end the call at once), and callers are plain threads with
// blocking REQ sockets. Only loopback addresses are used.
#include <inttypes.h>
#include <libpq-fe.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rb_config.h"
#include "rb_err.h"
#include "rb_pb.h"
#include "rb_time.h"
#include "ringbid.pb-c.h"

typedef struct bench_agent {
	nng_socket sock;
	nng_aio *aio;
	uint64_t id;
	char token[160];
	atomic_int ready;  // AVAILABLE seen once
	atomic_int retry;  // login refused as busy: send it again
	atomic_int logged; // login answered with a token
	atomic_int held;   // --hold: this agent was offered a call and keeps it
} bench_agent;

static bench_agent *agents;
static size_t n_agents;
static const char *program = "bench";
static uint64_t *sent_us;      // per call sequence: when CallArrived left (monotonic)
static uint64_t *offer_lat_us; // per call sequence: arrival -> offer at the agent
static atomic_uint_fast64_t offers_seen, agents_ready, login_failures, logins_answered;
static size_t n_calls;
static unsigned long long run_id; // call ids of one run never repeat an earlier run's
static atomic_uint_fast64_t calls_ended;
// --hold FILE: agents accept offers and keep the calls, so calls beyond the agents wait; once
// every agent holds one, FILE is created and the run lasts until it is removed (bench/run.sh
// reads each service's memory meanwhile).
static const char *hold_file;
static atomic_uint_fast64_t offers_while_holding; // --hold: offers to an agent holding a call

static int send_agent(bench_agent *a, Ringbid__AgentMsg *m)
{
	nng_msg *msg;

	m->token = a->token;
	if (rb_pb_pack(&m->base, RB_PB_MAX_DEFAULT, &msg) != 0)
		return -1;
	if (nng_sendmsg(a->sock, msg, NNG_FLAG_NONBLOCK) != 0) {
		nng_msg_free(msg);
		return -1;
	}
	return 0;
}

static void on_agent_msg(bench_agent *a, Ringbid__AgentMsg *in)
{
	Ringbid__AgentMsg out = RINGBID__AGENT_MSG__INIT;

	switch (in->body_case) {
	case RINGBID__AGENT_MSG__BODY_STATUS: {
		Ringbid__AgentState st = in->status->state;

		if (in->status->session_token && in->status->session_token[0]) {
			snprintf(a->token, sizeof(a->token), "%s", in->status->session_token);
			if (atomic_exchange(&a->logged, 1) == 0)
				atomic_fetch_add(&logins_answered, 1);
		}
		if (st == RINGBID__AGENT_STATE__AGENT_AVAILABLE) {
			if (atomic_exchange(&a->ready, 1) == 0)
				atomic_fetch_add(&agents_ready, 1);
		} else if (st == RINGBID__AGENT_STATE__AGENT_ON_CALL && in->status->call_id &&
		           in->status->call_id[0]) {
			// A call left connected by an earlier run (the voice leg outlives the
			// session): end it so this agent can take part.
			Ringbid__EndCall end = RINGBID__END_CALL__INIT;

			end.call_id = in->status->call_id;
			out.seq = 5;
			out.body_case = RINGBID__AGENT_MSG__BODY_END_CALL;
			out.end_call = &end;
			send_agent(a, &out);
		} else if ((st == RINGBID__AGENT_STATE__AGENT_NOT_READY ||
		            st == RINGBID__AGENT_STATE__AGENT_WRAP_UP) &&
		           !atomic_load(&a->held)) {
			// In a --hold run an agent takes one call at most and stays out after it,
			// so the calls beyond the agents keep waiting.
			Ringbid__SetState ss = RINGBID__SET_STATE__INIT;

			ss.state = RINGBID__AGENT_STATE__AGENT_AVAILABLE;
			out.seq = 2;
			out.body_case = RINGBID__AGENT_MSG__BODY_SET_STATE;
			out.set_state = &ss;
			send_agent(a, &out);
		}
		break;
	}
	case RINGBID__AGENT_MSG__BODY_OFFER: {
		Ringbid__OfferAnswer ans = RINGBID__OFFER_ANSWER__INIT;
		unsigned long long seq;

		unsigned long long run;

		if (in->offer->call_id &&
		    sscanf(in->offer->call_id, "b%llx-%llu", &run, &seq) == 2 && run == run_id &&
		    seq < n_calls && sent_us[seq] != 0 && offer_lat_us[seq] == 0) {
			offer_lat_us[seq] = rb_mono_us() - sent_us[seq];
			atomic_fetch_add(&offers_seen, 1);
		}
		if (hold_file != NULL && atomic_exchange(&a->held, 1) != 0)
			atomic_fetch_add(&offers_while_holding, 1);
		ans.offer_id = in->offer->offer_id;
		ans.accept = true;
		out.seq = 3;
		out.body_case = RINGBID__AGENT_MSG__BODY_ANSWER;
		out.answer = &ans;
		send_agent(a, &out);
		break;
	}
	case RINGBID__AGENT_MSG__BODY_CALL_EVENT:
		if (in->call_event->kind == RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED &&
		    hold_file == NULL) {
			Ringbid__EndCall end = RINGBID__END_CALL__INIT;

			end.call_id = in->call_event->call_id;
			out.seq = 4;
			out.body_case = RINGBID__AGENT_MSG__BODY_END_CALL;
			out.end_call = &end;
			send_agent(a, &out);
		} else if (in->call_event->kind == RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED) {
			atomic_fetch_add(&calls_ended, 1);
		}
		break;
	case RINGBID__AGENT_MSG__BODY_ERROR:
		// Presence bounds concurrent password checks: busy and slow-down answers are
		// retried; anything else is a real refusal.
		if (in->seq == 1 && in->error &&
		    (in->error->code == RB_EBUSY || in->error->code == RB_ESLOWDOWN))
			atomic_store(&a->retry, 1);
		else if (in->seq == 1)
			atomic_fetch_add(&login_failures, 1);
		break;
	default:
		break;
	}
}

static void agent_recv_cb(void *arg)
{
	bench_agent *a = arg;
	nng_msg *msg;
	Ringbid__AgentMsg *in = NULL;

	if (nng_aio_result(a->aio) != 0)
		return; // socket closed
	msg = nng_aio_get_msg(a->aio);
	if (rb_pb_unpack_msg(&ringbid__agent_msg__descriptor, msg, RB_PB_MAX_DEFAULT,
	                     (ProtobufCMessage **)&in) == 0) {
		on_agent_msg(a, in);
		rb_pb_free(&in->base);
	}
	nng_msg_free(msg);
	nng_recv_aio(a->sock, a->aio);
}

typedef struct span {
	size_t from, to;
	char urls[8][128];
	int n_urls;
	const char *secret;
} span;

static void send_login(bench_agent *a, const char *secret)
{
	Ringbid__AgentMsg m = RINGBID__AGENT_MSG__INIT;
	Ringbid__Login login = RINGBID__LOGIN__INIT;

	login.agent_id = a->id;
	login.secret = (char *)secret;
	m.seq = 1;
	m.body_case = RINGBID__AGENT_MSG__BODY_LOGIN;
	m.login = &login;
	a->token[0] = '\0';
	// The dial completes in the background; the send waits in the socket's queue until then.
	while (send_agent(a, &m) != 0)
		usleep(1000);
}

static atomic_uint_fast64_t logins_sent;

static void *connect_agents(void *arg)
{
	span *s = arg;

	for (size_t i = s->from; i < s->to; i++) {
		bench_agent *a = &agents[i];
		int rv;

		if ((rv = nng_pair1_open(&a->sock)) != 0 ||
		    (rv = nng_socket_set_size(a->sock, NNG_OPT_RECVMAXSZ, RB_PB_MAX_DEFAULT)) !=
		            0 ||
		    (rv = nng_socket_set_int(a->sock, NNG_OPT_SENDBUF, 16)) != 0 ||
		    (rv = nng_dial(a->sock, s->urls[i % (size_t)s->n_urls], NULL,
		                   NNG_FLAG_NONBLOCK)) != 0 ||
		    (rv = nng_aio_alloc(&a->aio, agent_recv_cb, a)) != 0) {
			fprintf(stderr, "agent %" PRIu64 ": %s\n", a->id, nng_strerror(rv));
			exit(1);
		}
		nng_recv_aio(a->sock, a->aio);
		// Keep a bounded number of password checks outstanding at presence.
		while (atomic_load(&logins_sent) - atomic_load(&logins_answered) -
		               atomic_load(&login_failures) >
		       1000)
			usleep(1000);
		atomic_fetch_add(&logins_sent, 1);
		send_login(a, s->secret);
	}
	return NULL;
}

typedef struct caller {
	nng_socket sock;
	size_t from, to, step;
	double rate; // calls per second for this thread; 0: as fast as replies come
	char token[160];
	uint64_t refused;
} caller;

static void *place_calls(void *arg)
{
	caller *c = arg;
	uint64_t start = rb_mono_us();
	size_t k = 0;

	for (size_t seq = c->from; seq < c->to; seq += c->step, k++) {
		Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
		Ringbid__CallArrived arr = RINGBID__CALL_ARRIVED__INIT;
		Ringbid__CallReply *rep = NULL;
		char id[48];
		nng_msg *msg;

		if (c->rate > 0) {
			uint64_t due = start + (uint64_t)((double)k * 1e6 / c->rate);
			uint64_t now = rb_mono_us();

			if (due > now)
				usleep((useconds_t)(due - now));
		}
		snprintf(id, sizeof(id), "b%llx-%zu", run_id, seq);
		arr.call_id = id;
		arr.program = (char *)program;
		req.token = c->token;
		req.body_case = RINGBID__CALL_REQUEST__BODY_ARRIVED;
		req.arrived = &arr;
		if (rb_pb_pack(&req.base, RB_PB_MAX_DEFAULT, &msg) != 0)
			exit(1);
		sent_us[seq] = rb_mono_us();
		if (nng_sendmsg(c->sock, msg, 0) != 0 || nng_recvmsg(c->sock, &msg, 0) != 0) {
			c->refused++;
			continue;
		}
		if (rb_pb_unpack_msg(&ringbid__call_reply__descriptor, msg, RB_PB_MAX_DEFAULT,
		                     (ProtobufCMessage **)&rep) != 0 ||
		    rep->error != NULL)
			c->refused++;
		if (rep)
			rb_pb_free(&rep->base);
		nng_msg_free(msg);
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, size_t n, double p)
{
	size_t i;

	if (n == 0)
		return 0;
	i = (size_t)(p * (double)(n - 1) + 0.5);
	return (double)v[i] / 1000.0;
}

static void die_pq(PGconn *db, const char *what)
{
	fprintf(stderr, "dispatch: %s: %s", what, PQerrorMessage(db));
	exit(1);
}

// Agents get a password hash made with libsodium's minimum limits: the hash string carries
// its own limits, so presence verifies these quickly and logging in 100,000 agents measures
// dispatch, not argon2.
static void make_agents(const char *conninfo, size_t n, const char *secret)
{
	char hash[crypto_pwhash_STRBYTES], count[32];
	const char *params[2] = {hash, count};
	PGconn *db = PQconnectdb(conninfo);
	PGresult *r;

	if (PQstatus(db) != CONNECTION_OK)
		die_pq(db, "connect");
	if (crypto_pwhash_str(hash, secret, strlen(secret), crypto_pwhash_OPSLIMIT_MIN,
	                      crypto_pwhash_MEMLIMIT_MIN) != 0) {
		fprintf(stderr, "dispatch: hashing failed\n");
		exit(1);
	}
	snprintf(count, sizeof(count), "%zu", n);
	r = PQexec(db,
	           "INSERT INTO roster.programs (id, name, ring_timeout_s, wrap_up_s, max_wait_s)"
	           " VALUES ('bench', 'benchmark', 15, 0, 3600) ON CONFLICT (id) DO NOTHING");
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die_pq(db, "program");
	PQclear(r);
	// Scores spread over 0..100 so that the auction's ordering does real work.
	r = PQexecParams(db,
	                 "INSERT INTO roster.agents (id, name, secret_hash, skills, score)"
	                 " SELECT g, 'bench agent ' || g, $1, '{}', (g * 37) % 100"
	                 " FROM generate_series(1, $2::bigint) g"
	                 " ON CONFLICT (id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash,"
	                 " status = 'active'",
	                 2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die_pq(db, "agents");
	PQclear(r);
	PQfinish(db);
}

static void usage(void)
{
	fprintf(stderr, "usage: dispatch --agents N --calls N [--rate CALLS_PER_S] [--callers N]\n"
	                "                [--urls URL,URL...] [--setup-only] [--skip-setup]\n"
	                "                [--hold FILE]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	size_t n_callers = 16;
	double rate = 0;
	char conninfo[1024], broker[256], token[160], urls[1024] = "";
	const char *secret = "bench-secret";
	bool setup_only = false, skip_setup = false;
	pthread_t th[64];
	span spans[64];
	caller callers[64];
	uint64_t t0, t1, *lat;
	size_t nl = 0, refused = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--agents") && i + 1 < argc)
			n_agents = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--calls") && i + 1 < argc)
			n_calls = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--rate") && i + 1 < argc)
			rate = strtod(argv[++i], NULL);
		else if (!strcmp(argv[i], "--callers") && i + 1 < argc)
			n_callers = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--urls") && i + 1 < argc)
			snprintf(urls, sizeof(urls), "%s", argv[++i]);
		else if (!strcmp(argv[i], "--setup-only"))
			setup_only = true;
		else if (!strcmp(argv[i], "--hold") && i + 1 < argc)
			hold_file = argv[++i];
		else if (!strcmp(argv[i], "--skip-setup"))
			skip_setup = true;
		else
			usage();
	}
	if (n_agents == 0 || (!setup_only && n_calls == 0) || n_callers == 0 || n_callers > 64)
		usage();
	if (sodium_init() < 0)
		return 1;
	run_id = (unsigned long long)(rb_now_us() / 1000);
	rb_config_load_home();
	rb_config_conninfo(conninfo, sizeof(conninfo));
	rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, broker, sizeof(broker));
	rb_config_service_token(token, sizeof(token));
	if (!skip_setup)
		make_agents(conninfo, n_agents, secret);
	if (setup_only)
		return 0;
	if (urls[0] == '\0')
		rb_config_url("RINGBID_PRESENCE_URL", RB_PORT_PRESENCE_AGENTS, urls, sizeof(urls));

	agents = calloc(n_agents, sizeof(*agents));
	sent_us = calloc(n_calls, sizeof(*sent_us));
	offer_lat_us = calloc(n_calls, sizeof(*offer_lat_us));
	lat = calloc(n_calls, sizeof(*lat));
	if (!agents || !sent_us || !offer_lat_us || !lat)
		return 1;
	for (size_t i = 0; i < n_agents; i++)
		agents[i].id = i + 1;

	// Log every agent in, spread over the presence listener addresses given.
	t0 = rb_mono_us();
	{
		size_t nt = 8;
		for (size_t t = 0; t < nt; t++) {
			char *save = NULL, list[1024], *u;

			spans[t] = (span){.from = n_agents * t / nt,
			                  .to = n_agents * (t + 1) / nt,
			                  .secret = secret};
			snprintf(list, sizeof(list), "%s", urls);
			for (u = strtok_r(list, ",", &save); u && spans[t].n_urls < 8;
			     u = strtok_r(NULL, ",", &save))
				snprintf(spans[t].urls[spans[t].n_urls++], 128, "%s", u);
			pthread_create(&th[t], NULL, connect_agents, &spans[t]);
		}
		for (size_t t = 0; t < nt; t++)
			pthread_join(th[t], NULL);
	}
	while (atomic_load(&agents_ready) + atomic_load(&login_failures) < n_agents) {
		for (size_t i = 0; i < n_agents; i++)
			if (atomic_exchange(&agents[i].retry, 0))
				send_login(&agents[i], secret);
		if (rb_mono_us() - t0 > 600000000ULL) {
			fprintf(stderr, "dispatch: only %" PRIuFAST64 " of %zu agents ready\n",
			        atomic_load(&agents_ready), n_agents);
			return 1;
		}
		usleep(20000);
	}
	if (atomic_load(&login_failures) > 0) {
		fprintf(stderr, "dispatch: %" PRIuFAST64 " logins refused\n",
		        atomic_load(&login_failures));
		return 1;
	}
	fprintf(stderr, "dispatch: %zu agents available after %.1f s; placing %zu calls\n",
	        n_agents, (double)(rb_mono_us() - t0) / 1e6, n_calls);

	t0 = rb_mono_us();
	for (size_t t = 0; t < n_callers; t++) {
		caller *c = &callers[t];

		*c = (caller){.from = t,
		              .to = n_calls,
		              .step = n_callers,
		              .rate = rate > 0 ? rate / (double)n_callers : 0};
		snprintf(c->token, sizeof(c->token), "%s", token);
		if (nng_req0_open(&c->sock) != 0 ||
		    nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, RB_PB_MAX_DEFAULT) != 0 ||
		    nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, 10000) != 0 ||
		    nng_dial(c->sock, broker, NULL, 0) != 0) {
			fprintf(stderr, "dispatch: cannot reach the broker at %s\n", broker);
			return 1;
		}
		pthread_create(&th[t], NULL, place_calls, c);
	}
	for (size_t t = 0; t < n_callers; t++) {
		pthread_join(th[t], NULL);
		refused += callers[t].refused;
		nng_close(callers[t].sock);
	}
	if (hold_file != NULL) {
		size_t want = n_calls - refused < n_agents ? n_calls - refused : n_agents;
		FILE *f;

		for (int i = 0; i < 3000 && atomic_load(&offers_seen) < want; i++)
			usleep(10000);
		printf("{\"agents\":%zu,\"calls\":%zu,\"refused\":%zu,\"on_call\":%" PRIuFAST64
		       ",\"waiting\":%" PRIuFAST64 ",\"offers_while_holding\":%" PRIuFAST64
		       ",\"calls_ended\":%" PRIuFAST64 "}\n",
		       n_agents, n_calls, refused, atomic_load(&offers_seen),
		       n_calls - refused - atomic_load(&offers_seen),
		       atomic_load(&offers_while_holding), atomic_load(&calls_ended));
		fflush(stdout);
		if ((f = fopen(hold_file, "w")) != NULL)
			fclose(f);
		for (int i = 0; i < 12000 && access(hold_file, F_OK) == 0; i++)
			usleep(10000);
		return atomic_load(&offers_seen) >= want ? 0 : 1;
	}
	// Offers trail the last reply by a few hops.
	for (int i = 0; i < 500 && atomic_load(&offers_seen) + refused < n_calls; i++)
		usleep(10000);
	t1 = rb_mono_us();
	// Let every agent finish its call before the sessions close, so the next run finds
	// them free.
	for (int i = 0; i < 500 && atomic_load(&calls_ended) < atomic_load(&offers_seen); i++)
		usleep(10000);
	for (size_t i = 0; i < n_calls; i++)
		if (offer_lat_us[i])
			lat[nl++] = offer_lat_us[i];
	qsort(lat, nl, sizeof(*lat), cmp_u64);
	printf("{\"agents\":%zu,\"calls\":%zu,\"offered\":%zu,\"refused\":%zu,"
	       "\"seconds\":%.3f,\"calls_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
	       "\"p999_ms\":%.3f,\"max_ms\":%.3f}\n",
	       n_agents, n_calls, nl, refused, (double)(t1 - t0) / 1e6,
	       (double)nl / ((double)(t1 - t0) / 1e6), pct(lat, nl, 0.50), pct(lat, nl, 0.99),
	       pct(lat, nl, 0.999), nl ? (double)lat[nl - 1] / 1000.0 : 0.0);
	for (size_t i = 0; i < n_agents; i++) {
		nng_close(agents[i].sock);
		nng_aio_free(agents[i].aio);
	}
	free(agents);
	free(sent_us);
	free(offer_lat_us);
	free(lat);
	return nl == n_calls - refused && refused == 0 ? 0 : 1;
}
