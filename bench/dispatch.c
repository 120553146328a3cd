// Dispatch benchmark: real agent sessions and a stream of calls against a running stack,
// measuring the time from a call's arrival at the broker to its offer reaching the agent.
//
// The load generator itself must not be the bottleneck, so it does not run a libuv loop per
// session: each agent is one nng pair1 socket whose receive aio callback answers on nng's own
// threads (accept the offer, end the call the moment presence says it connected), and callers
// are plain threads with blocking REQ sockets. Only loopback addresses are used.
//
// One process holds one TCP connection per agent, so a floor larger than the open-file limit
// is run by a group of processes (--group FILE --procs P), each with its own range of agent ids
// (--first-agent) and its own presence instance (--urls). They share one mapped file: the
// phase, the run id and, per call, when it was sent and how long its offer took, so an offer is
// timed by whichever process's agent receives it and the percentiles are computed once, over
// every raw sample of the group. Exactly one process of a group places the calls (--callers
// above 0; the others pass --callers 0) and prints one JSON line per phase.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rb_config.h"
#include "rb_err.h"
#include "rb_pb.h"
#include "rb_time.h"
#include "ringbid.pb-c.h"

#define MAX_PHASES   8
#define MAX_QUEUES   200 // the auction keeps at most 256 distinct queues
#define GROUP_MAGIC  0x72626469737031ULL
#define LOGIN_WAIT_S 900
#define TRAIL_WAIT_S 5 // after the last call, how long its offers may take to arrive

typedef struct bench_agent {
	nng_socket sock;
	nng_aio *aio;
	uint64_t id;
	char token[160];
	atomic_int ready;  // AVAILABLE seen once
	atomic_int retry;  // login refused as busy: send it again
	atomic_int logged; // login answered with a token
	atomic_int held;   // hold phase: this agent was offered a call and keeps it
} bench_agent;

// What the processes of a group share (a mapped file; one process alone maps it privately).
// Lock-free 64-bit atomics are address-free, so they work across processes.
typedef struct group {
	atomic_uint_fast64_t magic;
	atomic_uint_fast64_t total_calls;   // length of sent_us and lat_us
	atomic_uint_fast64_t agents;        // sum of the processes' agents
	atomic_uint_fast64_t procs_ready;   // processes whose agents are all AVAILABLE
	atomic_uint_fast64_t failed;        // a process gave up: the others stop too
	atomic_uint_fast64_t caller_pid;    // the process placing the calls
	atomic_uint_fast64_t run_id;        // call ids of one run never repeat an earlier run's
	atomic_uint_fast64_t holding;       // the hold phase has begun: agents keep their calls
	atomic_uint_fast64_t finished;      // the caller is done: sessions may close
	atomic_uint_fast64_t offered;       // first offers of this run's calls, all processes
	atomic_uint_fast64_t ended;         // calls seen ended, all processes
	atomic_uint_fast64_t last_offer_us; // monotonic time of the latest first offer
	atomic_uint_fast64_t offers_while_holding;
	atomic_uint_fast64_t pad[3];
	// Then per call sequence number: when CallArrived left, and arrival -> offer (0: none
	// yet), both in microseconds of CLOCK_MONOTONIC, which every process on a host shares.
} group;

typedef struct phase {
	size_t calls;
	double rate; // calls per second; 0: as fast as the broker acknowledges
	bool hold;   // agents keep their calls; the calls beyond them wait
	size_t first_seq;
} phase;

static bench_agent *agents;
static size_t n_agents;
static const char *program = "bench";
static group *grp;
static atomic_uint_fast64_t *sent_us, *lat_us;
static atomic_uint_fast64_t agents_ready, login_failures, logins_answered, logins_sent;
static atomic_uint_fast64_t own_offers, own_ended; // this process's agents only
static size_t n_queues = 1;

static uint64_t splitmix64(uint64_t x)
{
	uint64_t z = x + 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

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

static void send_end(bench_agent *a, char *call_id, uint64_t seq)
{
	Ringbid__AgentMsg out = RINGBID__AGENT_MSG__INIT;
	Ringbid__EndCall end = RINGBID__END_CALL__INIT;

	end.call_id = call_id;
	out.seq = seq;
	out.body_case = RINGBID__AGENT_MSG__BODY_END_CALL;
	out.end_call = &end;
	send_agent(a, &out);
}

// Times an offer of this run's call seq, once per call whichever agent of the group gets it.
static void note_offer(const char *call_id)
{
	unsigned long long run, seq;
	uint64_t now = rb_mono_us(), sent, zero = 0, last;

	if (!call_id || sscanf(call_id, "b%llx-%llu", &run, &seq) != 2 ||
	    run != atomic_load(&grp->run_id) || seq >= atomic_load(&grp->total_calls))
		return;
	sent = atomic_load(&sent_us[seq]);
	if (sent == 0 || now < sent)
		return;
	if (!atomic_compare_exchange_strong(&lat_us[seq], &zero, now - sent + 1))
		return; // a later offer of the same call (after a refusal): the first one counts
	atomic_fetch_add(&grp->offered, 1);
	atomic_fetch_add(&own_offers, 1);
	last = atomic_load(&grp->last_offer_us);
	while (last < now && !atomic_compare_exchange_weak(&grp->last_offer_us, &last, now))
		;
}

static void on_agent_msg(bench_agent *a, Ringbid__AgentMsg *in)
{
	Ringbid__AgentMsg out = RINGBID__AGENT_MSG__INIT;
	bool holding = atomic_load(&grp->holding) != 0;

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
		} else if (st == RINGBID__AGENT_STATE__AGENT_ON_CALL && in->seq == 1 &&
		           in->status->call_id && in->status->call_id[0] &&
		           !atomic_load(&a->held)) {
			// A call left connected by an earlier run (the voice leg outlives the
			// session): end it so this agent can take part. A call of this run is ended
			// on its CALL_EVENT_CONNECTED, which follows the ON_CALL status pushed when
			// the broker confirms the connection.
			send_end(a, in->status->call_id, 5);
		} else if ((st == RINGBID__AGENT_STATE__AGENT_NOT_READY ||
		            st == RINGBID__AGENT_STATE__AGENT_WRAP_UP) &&
		           !atomic_load(&a->held)) {
			// In the hold phase an agent takes one call at most and stays out after it,
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

		note_offer(in->offer->call_id);
		if (holding && atomic_exchange(&a->held, 1) != 0)
			atomic_fetch_add(&grp->offers_while_holding, 1);
		ans.offer_id = in->offer->offer_id;
		ans.accept = true;
		out.seq = 3;
		out.body_case = RINGBID__AGENT_MSG__BODY_ANSWER;
		out.answer = &ans;
		send_agent(a, &out);
		break;
	}
	case RINGBID__AGENT_MSG__BODY_CALL_EVENT:
		// The answer to the accept only says presence took it (the agent stays RESERVED):
		// the call is the agent's, and can be ended, once the broker has connected it.
		if (in->call_event->kind == RINGBID__CALL_EVENT_KIND__CALL_EVENT_CONNECTED &&
		    !atomic_load(&a->held)) {
			send_end(a, in->call_event->call_id, 4);
		} else if (in->call_event->kind == RINGBID__CALL_EVENT_KIND__CALL_EVENT_ENDED) {
			atomic_fetch_add(&own_ended, 1);
			atomic_fetch_add(&grp->ended, 1);
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
			fprintf(stderr, "dispatch: agent %" PRIu64 ": %s\n", a->id,
			        nng_strerror(rv));
			atomic_store(&grp->failed, 1);
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
	// Paced: the phase's start and when this thread's first call is due after it, so that the
	// threads' calls interleave evenly instead of leaving together in bursts of n_callers.
	uint64_t start_us;
	double offset_us;
	char token[160];
	uint64_t refused;
} caller;

static void *place_calls(void *arg)
{
	caller *c = arg;
	uint64_t start = c->start_us;
	unsigned long long run = atomic_load(&grp->run_id);
	size_t k = 0;

	for (size_t seq = c->from; seq < c->to; seq += c->step, k++) {
		Ringbid__CallRequest req = RINGBID__CALL_REQUEST__INIT;
		Ringbid__CallArrived arr = RINGBID__CALL_ARRIVED__INIT;
		Ringbid__CallReply *rep = NULL;
		char id[48], skill[32], *skills[1] = {skill};
		nng_msg *msg;

		if (c->rate > 0) {
			uint64_t due = start + (uint64_t)(c->offset_us + (double)k * 1e6 / c->rate);
			uint64_t now = rb_mono_us();

			if (due > now)
				usleep((useconds_t)(due - now));
		}
		snprintf(id, sizeof(id), "b%llx-%zu", run, seq);
		// Each call requires one queue's skill, chosen uniformly (and the same for the same
		// sequence number in every run).
		snprintf(skill, sizeof(skill), "q%" PRIu64, splitmix64(seq) % n_queues);
		arr.call_id = id;
		arr.program = (char *)program;
		arr.n_skills = 1;
		arr.skills = skills;
		req.token = c->token;
		req.body_case = RINGBID__CALL_REQUEST__BODY_ARRIVED;
		req.arrived = &arr;
		if (rb_pb_pack(&req.base, RB_PB_MAX_DEFAULT, &msg) != 0)
			exit(1);
		atomic_store(&sent_us[seq], rb_mono_us());
		if (nng_sendmsg(c->sock, msg, 0) != 0) {
			nng_msg_free(msg);
			c->refused++;
			continue;
		}
		if (nng_recvmsg(c->sock, &msg, 0) != 0) {
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

// The p-quantile of sorted v (nearest rank) in milliseconds as JSON text: null when it falls
// among the calls never offered (UINT64_MAX).
static const char *pct(const uint64_t *v, size_t n, double p, char out[32])
{
	size_t i;

	if (n == 0)
		return "null";
	i = (size_t)(p * (double)(n - 1) + 0.5);
	if (v[i] == UINT64_MAX)
		return "null";
	snprintf(out, 32, "%.3f", (double)v[i] / 1000.0);
	return out;
}

static void die_pq(PGconn *db, const char *what)
{
	fprintf(stderr, "dispatch: %s: %s", what, PQerrorMessage(db));
	exit(1);
}

// Agents first..first+n-1 get a password hash made with libsodium's minimum limits: the hash
// string carries its own limits, so presence verifies these quickly and logging in 100,000
// agents measures dispatch, not argon2. Skills: with q queues, q0..q{q-1}; agent g covers
// q(g mod q) and, when q > 1, a second queue spread over the others, so each queue has about
// 2n/q eligible agents and the queues' agent sets overlap in varied ways.
static void make_agents(const char *conninfo, uint64_t first, size_t n, size_t q,
                        const char *secret)
{
	char hash[crypto_pwhash_STRBYTES], count[32], from[32], queues[32];
	const char *params[4] = {hash, count, queues, from};
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
	snprintf(queues, sizeof(queues), "%zu", q);
	snprintf(from, sizeof(from), "%" PRIu64, first);
	r = PQexec(db,
	           "INSERT INTO roster.programs (id, name, ring_timeout_s, wrap_up_s, max_wait_s)"
	           " VALUES ('bench', 'benchmark', 15, 0, 3600) ON CONFLICT (id) DO NOTHING");
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die_pq(db, "program");
	PQclear(r);
	// Scores spread over 0..100 so that the auction's ordering does real work.
	r = PQexecParams(
	        db,
	        "INSERT INTO roster.agents (id, name, secret_hash, skills, score)"
	        " SELECT g, 'bench agent ' || g, $1,"
	        "  CASE WHEN $3::int = 1 THEN ARRAY['q0']"
	        "  ELSE ARRAY['q' || (g % $3::int),"
	        "   'q' || ((g % $3::int + 1 + (g / $3::int) % ($3::int - 1)) % $3::int)] END,"
	        "  (g * 37) % 100"
	        " FROM generate_series($4::bigint, $4::bigint + $2::bigint - 1) g"
	        " ON CONFLICT (id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash,"
	        " skills = EXCLUDED.skills, status = 'active'",
	        4, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die_pq(db, "agents");
	PQclear(r);
	PQfinish(db);
}

// Maps the group's shared state: the file when path is given (every process of the group
// passes the same path and the same total), else private memory.
static void group_map(const char *path, size_t total)
{
	size_t size = sizeof(group) + 2 * total * sizeof(atomic_uint_fast64_t);
	void *p;
	uint64_t zero = 0;

	if (path == NULL) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	} else {
		int fd = open(path, O_RDWR | O_CREAT, 0600);
		struct stat st;

		if (fd < 0 || fstat(fd, &st) != 0 ||
		    (st.st_size != 0 && (size_t)st.st_size != size) ||
		    (st.st_size == 0 && ftruncate(fd, (off_t)size) != 0)) {
			fprintf(stderr, "dispatch: group file %s: %s\n", path,
			        fd < 0 ? strerror(errno) : "not this group's (size differs)");
			exit(1);
		}
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
	}
	if (p == MAP_FAILED) {
		fprintf(stderr, "dispatch: mapping the group's state: %s\n", strerror(errno));
		exit(1);
	}
	grp = p;
	if (!atomic_compare_exchange_strong(&grp->magic, &zero, GROUP_MAGIC) &&
	    zero != GROUP_MAGIC) {
		fprintf(stderr, "dispatch: group file %s is not a dispatch group\n", path);
		exit(1);
	}
	atomic_store(&grp->total_calls, total);
	sent_us = (atomic_uint_fast64_t *)(grp + 1);
	lat_us = sent_us + total;
}

// CPU time (user + system, clock ticks) of each service whose pid file is in run_dir, summed
// over the instances of one service ("presence-3" counts as presence). Order: broker, auction,
// presence, billing.
// CPU time per process: the four services (every presence instance summed, from the pid
// files in run_dir) and PostgreSQL (the postmaster of run_dir/../pg and every process it
// started: the services' backends, the WAL writer, the checkpointer).
#define N_CPU 5
static const char *svc_names[N_CPU] = {"broker", "auction", "presence", "billing", "postgres"};

// utime + stime of pid in clock ticks, and its parent; 0 when it is gone.
static uint64_t proc_cpu(long pid, long *ppid)
{
	char path[64], buf[1024], *p;
	unsigned long long utime, stime;
	long parent = 0;
	uint64_t t = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	if ((f = fopen(path, "r")) == NULL)
		return 0;
	// Fields after the command name, which may hold spaces: state is field 3, utime 14.
	if (fgets(buf, sizeof(buf), f) != NULL && (p = strrchr(buf, ')')) != NULL &&
	    sscanf(p + 2, "%*c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &parent, &utime,
	           &stime) == 3)
		t = utime + stime;
	fclose(f);
	if (ppid != NULL)
		*ppid = parent;
	return t;
}

static long pid_from(const char *path)
{
	long pid = 0;
	FILE *f = fopen(path, "r");

	if (f == NULL)
		return 0;
	if (fscanf(f, "%ld", &pid) != 1)
		pid = 0;
	fclose(f);
	return pid;
}

static void svc_cpu(const char *run_dir, uint64_t out[N_CPU])
{
	DIR *d = run_dir ? opendir(run_dir) : NULL;
	struct dirent *e;
	char path[4096];
	long pm;

	memset(out, 0, N_CPU * sizeof(*out));
	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		int k;

		if (strstr(e->d_name, ".pid") == NULL)
			continue;
		for (k = 0; k < N_CPU - 1; k++)
			if (!strncmp(e->d_name, svc_names[k], strlen(svc_names[k])))
				break;
		if (k == N_CPU - 1)
			continue;
		snprintf(path, sizeof(path), "%s/%s", run_dir, e->d_name);
		long pid = pid_from(path);
		if (pid > 0)
			out[k] += proc_cpu(pid, NULL);
	}
	closedir(d);
	snprintf(path, sizeof(path), "%s/../pg/postmaster.pid", run_dir);
	if ((pm = pid_from(path)) <= 0 || (d = opendir("/proc")) == NULL)
		return;
	out[N_CPU - 1] += proc_cpu(pm, NULL);
	while ((e = readdir(d)) != NULL) {
		long pid = strtol(e->d_name, NULL, 10), parent = 0;
		uint64_t t;

		if (pid <= 0)
			continue;
		t = proc_cpu(pid, &parent);
		if (parent == pm)
			out[N_CPU - 1] += t;
	}
	closedir(d);
}

static bool caller_alive(void)
{
	pid_t pid = (pid_t)atomic_load(&grp->caller_pid);

	return pid == 0 || kill(pid, 0) == 0 || errno != ESRCH;
}

// Waits until every agent of this process is AVAILABLE, sending again the logins presence
// answered as busy. Returns 0, or -1 when a login was refused or the wait ran out.
static int login_all(const char *secret, uint64_t t0)
{
	while (atomic_load(&agents_ready) + atomic_load(&login_failures) < n_agents) {
		for (size_t i = 0; i < n_agents; i++)
			if (atomic_exchange(&agents[i].retry, 0))
				send_login(&agents[i], secret);
		if (atomic_load(&grp->failed))
			return -1;
		if (rb_mono_us() - t0 > LOGIN_WAIT_S * 1000000ULL) {
			fprintf(stderr, "dispatch: only %" PRIuFAST64 " of %zu agents ready\n",
			        atomic_load(&agents_ready), n_agents);
			return -1;
		}
		usleep(20000);
	}
	if (atomic_load(&login_failures) > 0) {
		fprintf(stderr, "dispatch: %" PRIuFAST64 " logins refused\n",
		        atomic_load(&login_failures));
		return -1;
	}
	return 0;
}

static int parse_phase(const char *text, phase *p)
{
	char *end;

	*p = (phase){.calls = strtoull(text, &end, 10)};
	if (end == text || p->calls == 0)
		return -1;
	if (*end == '\0')
		return 0;
	if (*end != '@')
		return -1;
	if (!strcmp(end + 1, "hold")) {
		p->hold = true;
		return 0;
	}
	p->rate = strtod(end + 1, &end);
	return *end == '\0' && p->rate > 0 ? 0 : -1;
}

// --samples FILE: every call of every phase, appended as "phase seq sent_ms latency_ms" (sent
// from the phase's start; latency -1 when not offered), to see when the slow calls came.
static const char *samples_file;

static void write_samples(const phase *ph, uint64_t t0)
{
	static size_t phase_no;
	FILE *f = fopen(samples_file, "a");
	if (f == NULL) {
		fprintf(stderr, "dispatch: cannot open %s\n", samples_file);
		return;
	}
	for (size_t s = ph->first_seq; s < ph->first_seq + ph->calls; s++) {
		uint64_t sent = atomic_load(&sent_us[s]), l = atomic_load(&lat_us[s]);
		fprintf(f, "%zu %zu %.3f %.3f\n", phase_no, s - ph->first_seq,
		        sent > t0 ? (double)(sent - t0) / 1000.0 : 0.0,
		        l ? (double)(l - 1) / 1000.0 : -1.0);
	}
	fclose(f);
	phase_no++;
}

// One phase of calls placed by n_callers threads; prints its JSON line. Returns 0 when every
// call was accepted by the broker and offered (hold: every agent got one).
static int run_phase(const phase *ph, caller *callers, size_t n_callers, const char *run_dir,
                     double login_s, const char *hold_file)
{
	pthread_t th[64];
	uint64_t t0, t1, cpu0[N_CPU], cpu1[N_CPU], *lat;
	size_t nl = 0, n_all, refused = 0, end = ph->first_seq + ph->calls;
	char p50[32], p99[32], p999[32];
	size_t group_agents = atomic_load(&grp->agents);
	uint_fast64_t offered0 = atomic_load(&grp->offered);
	long hz = sysconf(_SC_CLK_TCK);
	char cpu[256] = "";
	int rc = 0;

	svc_cpu(run_dir, cpu0);
	atomic_store(&grp->holding, ph->hold ? 1 : 0);
	t0 = rb_mono_us();
	for (size_t t = 0; t < n_callers; t++) {
		caller *c = &callers[t];

		c->from = ph->first_seq + t;
		c->to = end;
		c->step = n_callers;
		c->rate = ph->rate > 0 ? ph->rate / (double)n_callers : 0;
		c->start_us = t0;
		c->offset_us = ph->rate > 0 ? (double)t * 1e6 / ph->rate : 0;
		c->refused = 0;
		pthread_create(&th[t], NULL, place_calls, c);
	}
	for (size_t t = 0; t < n_callers; t++) {
		pthread_join(th[t], NULL);
		refused += callers[t].refused;
	}
	if (ph->hold) {
		size_t want =
		        ph->calls - refused < group_agents ? ph->calls - refused : group_agents;
		uint_fast64_t got;
		FILE *f;

		for (int i = 0; i < 2500 && atomic_load(&grp->offered) - offered0 < want; i++)
			usleep(10000);
		got = atomic_load(&grp->offered) - offered0;
		printf("{\"phase\":\"hold\",\"agents\":%zu,\"queues\":%zu,\"calls\":%zu,"
		       "\"refused\":%zu,\"on_call\":%" PRIuFAST64 ",\"waiting\":%zu"
		       ",\"offers_while_holding\":%" PRIuFAST64 ",\"login_s\":%.1f}\n",
		       group_agents, n_queues, ph->calls, refused, got,
		       ph->calls - refused - (size_t)got, atomic_load(&grp->offers_while_holding),
		       login_s);
		fflush(stdout);
		if (hold_file != NULL) {
			if ((f = fopen(hold_file, "w")) != NULL)
				fclose(f);
			for (int i = 0; i < 30000 && access(hold_file, F_OK) == 0; i++)
				usleep(10000);
		}
		return got >= want ? 0 : 1;
	}
	// Offers trail the last reply by a few hops.
	for (int i = 0;
	     i < TRAIL_WAIT_S * 100 && atomic_load(&grp->offered) - offered0 + refused < ph->calls;
	     i++)
		usleep(10000);
	t1 = atomic_load(&grp->last_offer_us);
	svc_cpu(run_dir, cpu1);
	n_all = ph->calls - refused;
	lat = malloc((n_all ? n_all : 1) * sizeof(*lat));
	if (lat == NULL)
		return 1;
	for (size_t s = ph->first_seq; s < end; s++) {
		uint64_t l = atomic_load(&lat_us[s]);

		if (l && nl < n_all)
			lat[nl++] = l - 1;
	}
	qsort(lat, nl, sizeof(*lat), cmp_u64);
	// A call not offered within the wait counts as slower than every offered one: the
	// percentiles are over every call the broker accepted, and one that falls among the
	// missing ones is printed as null (over the wait).
	for (size_t i = nl; i < n_all; i++)
		lat[i] = UINT64_MAX;
	if (t1 <= t0)
		t1 = rb_mono_us();
	if (run_dir != NULL && nl > 0) {
		size_t len = 0;

		for (int k = 0; k < N_CPU; k++)
			len += (size_t)snprintf(cpu + len, sizeof(cpu) - len, "%s\"%s\":%.3f",
			                        k ? "," : "", svc_names[k],
			                        (double)(cpu1[k] - cpu0[k]) * 1000.0 / (double)hz /
			                                (double)nl);
	}
	printf("{\"agents\":%zu,\"queues\":%zu,\"calls\":%zu,\"offered\":%zu,\"refused\":%zu,"
	       "\"not_offered\":%zu,\"complete\":%s,\"seconds\":%.3f,\"calls_per_s\":%.1f,"
	       "\"p50_ms\":%s,\"p99_ms\":%s,\"p999_ms\":%s,\"max_ms\":%.3f,\"wait_s\":%d,"
	       "\"login_s\":%.1f,\"cpu_ms_per_call\":{%s}}\n",
	       group_agents, n_queues, ph->calls, nl, refused, n_all - nl,
	       nl == n_all && refused == 0 ? "true" : "false", (double)(t1 - t0) / 1e6,
	       (double)nl / ((double)(t1 - t0) / 1e6), pct(lat, n_all, 0.50, p50),
	       pct(lat, n_all, 0.99, p99), pct(lat, n_all, 0.999, p999),
	       nl ? (double)lat[nl - 1] / 1000.0 : 0.0, TRAIL_WAIT_S, login_s, cpu);
	fflush(stdout);
	if (nl != ph->calls - refused || refused != 0) {
		// Name a few calls that never reached an agent, for the services' logs.
		int shown = 0;

		fprintf(stderr, "dispatch: %zu calls not offered, e.g.", ph->calls - refused - nl);
		for (size_t s = ph->first_seq; s < end && shown < 5; s++)
			if (atomic_load(&lat_us[s]) == 0 && atomic_load(&sent_us[s]) != 0) {
				fprintf(stderr, " b%llx-%zu",
				        (unsigned long long)atomic_load(&grp->run_id), s);
				shown++;
			}
		fprintf(stderr, "\n");
		rc = 1;
	}
	free(lat);
	if (samples_file != NULL)
		write_samples(ph, t0);
	// Let the agents finish these calls, so the next phase finds them free.
	for (int i = 0; i < 500 && atomic_load(&grp->ended) < atomic_load(&grp->offered); i++)
		usleep(10000);
	return rc;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: dispatch --agents N [--first-agent ID] [--queues Q] [--urls URL,URL...]\n"
	        "                [--calls N [--rate CALLS_PER_S]] [--phase CALLS[@RATE|@hold]]...\n"
	        "                [--callers N] [--group FILE --procs P] [--hold FILE]\n"
	        "                [--run-dir DIR] [--samples FILE] [--setup-only] [--skip-setup]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	size_t n_callers = 16, n_phases = 0, procs = 1, total = 0;
	uint64_t first_agent = 1;
	double rate = 0, login_s;
	char conninfo[1024], broker[256], token[160], urls[1024] = "", run_dir[4096] = "";
	const char *secret = "bench-secret", *group_file = NULL, *hold_file = NULL;
	bool setup_only = false, skip_setup = false;
	pthread_t th[64];
	span spans[64];
	caller callers[64];
	phase phases[MAX_PHASES];
	uint64_t t0;
	int rc = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--agents") && i + 1 < argc)
			n_agents = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--first-agent") && i + 1 < argc)
			first_agent = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--queues") && i + 1 < argc)
			n_queues = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--calls") && i + 1 < argc && n_phases < MAX_PHASES)
			phases[n_phases++] = (phase){.calls = strtoull(argv[++i], NULL, 10)};
		else if (!strcmp(argv[i], "--rate") && i + 1 < argc)
			rate = strtod(argv[++i], NULL);
		else if (!strcmp(argv[i], "--phase") && i + 1 < argc && n_phases < MAX_PHASES) {
			if (parse_phase(argv[++i], &phases[n_phases++]) != 0)
				usage();
		} else if (!strcmp(argv[i], "--callers") && i + 1 < argc)
			n_callers = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--urls") && i + 1 < argc)
			snprintf(urls, sizeof(urls), "%s", argv[++i]);
		else if (!strcmp(argv[i], "--group") && i + 1 < argc)
			group_file = argv[++i];
		else if (!strcmp(argv[i], "--procs") && i + 1 < argc)
			procs = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--hold") && i + 1 < argc)
			hold_file = argv[++i];
		else if (!strcmp(argv[i], "--samples") && i + 1 < argc)
			samples_file = argv[++i];
		else if (!strcmp(argv[i], "--run-dir") && i + 1 < argc)
			snprintf(run_dir, sizeof(run_dir), "%s", argv[++i]);
		else if (!strcmp(argv[i], "--setup-only"))
			setup_only = true;
		else if (!strcmp(argv[i], "--skip-setup"))
			skip_setup = true;
		else
			usage();
	}
	// --calls/--rate is the one-phase form; --hold FILE alone makes that phase a hold.
	if (n_phases == 1 && phases[0].rate == 0 && !phases[0].hold) {
		phases[0].rate = rate;
		phases[0].hold = hold_file != NULL && rate == 0;
	}
	for (size_t p = 0; p < n_phases; p++) {
		if (phases[p].calls == 0 || (phases[p].hold && p + 1 != n_phases))
			usage(); // a hold phase keeps the agents busy: it can only come last
		phases[p].first_seq = total;
		total += phases[p].calls;
	}
	if (n_agents == 0 || first_agent == 0 || n_queues == 0 || n_queues > MAX_QUEUES ||
	    (!setup_only && n_phases == 0) || n_callers > 64 || procs == 0 ||
	    (procs > 1 && group_file == NULL))
		usage();
	if (sodium_init() < 0)
		return 1;
	rb_config_load_home();
	rb_config_conninfo(conninfo, sizeof(conninfo));
	rb_config_url("RINGBID_BROKER_URL", RB_PORT_BROKER_CALLS, broker, sizeof(broker));
	rb_config_service_token(token, sizeof(token));
	if (!skip_setup)
		make_agents(conninfo, first_agent, n_agents, n_queues, secret);
	if (setup_only)
		return 0;
	if (urls[0] == '\0')
		rb_config_url("RINGBID_PRESENCE_URL", RB_PORT_PRESENCE_AGENTS, urls, sizeof(urls));
	if (run_dir[0] == '\0' && getenv("RINGBID_HOME") != NULL)
		snprintf(run_dir, sizeof(run_dir), "%s/run", getenv("RINGBID_HOME"));

	group_map(group_file, total);
	atomic_fetch_add(&grp->agents, n_agents);
	if (n_callers > 0)
		atomic_store(&grp->caller_pid, (uint64_t)getpid());
	agents = calloc(n_agents, sizeof(*agents));
	if (!agents)
		return 1;
	for (size_t i = 0; i < n_agents; i++)
		agents[i].id = first_agent + i;

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
	if (login_all(secret, t0) != 0) {
		atomic_store(&grp->failed, 1);
		return 1;
	}
	atomic_fetch_add(&grp->procs_ready, 1);
	fprintf(stderr, "dispatch: agents %" PRIu64 "..%" PRIu64 " available after %.1f s\n",
	        first_agent, first_agent + n_agents - 1, (double)(rb_mono_us() - t0) / 1e6);

	if (n_callers == 0) {
		// Only answering: until the caller is done (or gone).
		while (!atomic_load(&grp->finished) && !atomic_load(&grp->failed) && caller_alive())
			usleep(20000);
		rc = atomic_load(&grp->finished) ? 0 : 1;
	} else {
		while (atomic_load(&grp->procs_ready) < procs && !atomic_load(&grp->failed) &&
		       rb_mono_us() - t0 < LOGIN_WAIT_S * 1000000ULL)
			usleep(20000);
		if (atomic_load(&grp->procs_ready) < procs) {
			fprintf(stderr, "dispatch: only %" PRIuFAST64 " of %zu processes ready\n",
			        atomic_load(&grp->procs_ready), procs);
			atomic_store(&grp->failed, 1);
			return 1;
		}
		login_s = (double)(rb_mono_us() - t0) / 1e6;
		atomic_store(&grp->run_id, (uint64_t)(rb_now_us() / 1000));
		fprintf(stderr, "dispatch: %" PRIuFAST64 " agents available after %.1f s\n",
		        atomic_load(&grp->agents), login_s);
		for (size_t t = 0; t < n_callers; t++) {
			caller *c = &callers[t];

			*c = (caller){0};
			snprintf(c->token, sizeof(c->token), "%s", token);
			if (nng_req0_open(&c->sock) != 0 ||
			    nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, RB_PB_MAX_DEFAULT) !=
			            0 ||
			    nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, 10000) != 0 ||
			    nng_dial(c->sock, broker, NULL, 0) != 0) {
				fprintf(stderr, "dispatch: cannot reach the broker at %s\n",
				        broker);
				atomic_store(&grp->failed, 1);
				return 1;
			}
		}
		for (size_t p = 0; p < n_phases; p++) {
			if (phases[p].hold)
				fprintf(stderr, "dispatch: %zu calls, agents keeping theirs\n",
				        phases[p].calls);
			else if (phases[p].rate > 0)
				fprintf(stderr, "dispatch: %zu calls at %.0f calls/s\n",
				        phases[p].calls, phases[p].rate);
			else
				fprintf(stderr,
				        "dispatch: %zu calls as fast as the broker acknowledges\n",
				        phases[p].calls);
			if (run_phase(&phases[p], callers, n_callers, run_dir[0] ? run_dir : NULL,
			              login_s, hold_file) != 0)
				rc = 1;
		}
		for (size_t t = 0; t < n_callers; t++)
			nng_close(callers[t].sock);
		atomic_store(&grp->finished, 1);
	}
	// Let every agent finish its call before the sessions close, so the next run finds them
	// free (held calls stay connected: the next login ends them).
	if (!atomic_load(&grp->holding))
		for (int i = 0; i < 500 && atomic_load(&own_ended) < atomic_load(&own_offers); i++)
			usleep(10000);
	for (size_t i = 0; i < n_agents; i++) {
		nng_close(agents[i].sock);
		nng_aio_free(agents[i].aio);
	}
	free(agents);
	return rc;
}
