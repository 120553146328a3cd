// The baseline ringbid is compared with: a dispatcher built on PostgreSQL alone, agents as rows.
//
// It is what a competent team would write without a market engine: one table of agents with
// their state, skills and score, a partial index in score order over the available ones and a
// GIN index on their skills, and per call one statement that takes the best available agent
// with the call's skills and marks it offered:
//
//   UPDATE agents SET state = 'offered' WHERE id = (SELECT id FROM agents
//     WHERE state = 'available' AND skills @> $1 ORDER BY score DESC, available_since
//     LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id
//
// then, as in the end-to-end benchmark where every agent accepts and ends the call at once, a
// second statement makes the agent available again. Callers are threads with a connection each
// (16, as bench/dispatch uses for ringbid), committing with PostgreSQL's default durability.
//
// Latency is from the start of the dispatch statement to its commit returning: the offer has
// not reached any agent yet, so the baseline is timed to a point before ringbid's (to the
// agent's session), in its favour. Queues are the auction bench's skill sets (a language, or a
// language and a product); agents speak English and one more language and handle two products.
//
//   baseline [--db CONNINFO] [--agents N,N...] [--queues Q,Q...] [--calls N] [--rate R]
//            [--callers N] [--seed S]
// One JSON line per case on stdout, a readable line on stderr. --rate 0 (the default) runs each
// caller back to back; --rate R spreads R calls/s over the callers.
#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_LIST   8
#define N_LANGS    5
#define N_PRODUCTS 4
#define SETS       (N_LANGS + N_LANGS * N_PRODUCTS)

static const char *const langs[N_LANGS] = {"en", "fr", "de", "es", "it"};
static const char *const products[N_PRODUCTS] = {"billing", "tech", "sales", "retention"};

// What the callers of one case share: they connect, then start together, so that a paced run
// places its calls evenly from the first (caller i's calls fall between caller i-1's).
typedef struct start_line {
	pthread_barrier_t ready;
	_Atomic uint64_t start_us;
} start_line;

typedef struct caller {
	pthread_t th;
	start_line *line;
	const char *conninfo;
	size_t from, to, step; // call sequence numbers this caller places
	double rate;           // this caller's calls/s, 0: back to back
	double offset_us;      // paced: when this caller's first call is due, after the start
	size_t n_queues;
	uint64_t seed;
	uint64_t *lat_us; // shared, indexed by sequence number (0: not dispatched)
	size_t dispatched, no_agent, failed;
} caller;

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t rnd(uint64_t *s)
{
	// xorshift64*: reproducible across runs for the same seed
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ull;
}

static void die_pq(PGconn *db, const char *what)
{
	fprintf(stderr, "baseline: %s: %s", what, PQerrorMessage(db));
	exit(1);
}

static void exec_ok(PGconn *db, const char *sql)
{
	PGresult *r = PQexec(db, sql);

	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
		fprintf(stderr, "baseline: %s\n  in: %.200s\n", PQresultErrorMessage(r), sql);
		exit(1);
	}
	PQclear(r);
}

// The queue's skills as a PostgreSQL array literal.
static void queue_skills(size_t q, char *out, size_t n)
{
	size_t s = q % SETS;

	if (s < N_LANGS)
		snprintf(out, n, "{%s}", langs[s]);
	else
		snprintf(out, n, "{%s,%s}", langs[(s - N_LANGS) / N_PRODUCTS],
		         products[(s - N_LANGS) % N_PRODUCTS]);
}

// Creates the agents table with n available agents, indexed and analysed.
static double setup(const char *conninfo, size_t n, uint64_t seed)
{
	PGconn *db = PQconnectdb(conninfo);
	char sql[2048];
	uint64_t t0 = mono_us();

	if (PQstatus(db) != CONNECTION_OK)
		die_pq(db, "connect");
	exec_ok(db, "SET client_min_messages = warning");
	exec_ok(db, "DROP SCHEMA IF EXISTS bench_baseline CASCADE");
	exec_ok(db, "CREATE SCHEMA bench_baseline");
	exec_ok(db, "CREATE TABLE bench_baseline.agents ("
	            " id bigint PRIMARY KEY,"
	            " state text NOT NULL CHECK (state IN ('available', 'offered')),"
	            " skills text[] NOT NULL,"
	            " score numeric(4,1) NOT NULL,"
	            " available_since timestamptz NOT NULL)");
	// Same shape of population as bench/auction: English plus one of four other languages,
	// two products of four, scores spread around 70 with one decimal.
	snprintf(sql, sizeof(sql),
	         "INSERT INTO bench_baseline.agents"
	         " SELECT g, 'available',"
	         "  ARRAY['en', (ARRAY['fr','de','es','it'])[1 + (h %% 4)],"
	         "        (ARRAY['billing','tech','sales','retention'])[1 + (h / 4) %% 4],"
	         "        (ARRAY['billing','tech','sales','retention'])"
	         "          [1 + ((h / 4) %% 4 + 1 + (h / 16) %% 3) %% 4]],"
	         "  round((40 + (h / 48) %% 601 / 10.0)::numeric, 1),"
	         "  now() - make_interval(secs => (h / 28837) %% 600)"
	         " FROM (SELECT g, abs(hashint8(g + %" PRIu64 ")) AS h"
	         "       FROM generate_series(1, %zu) g) s",
	         seed, n);
	exec_ok(db, sql);
	exec_ok(db, "CREATE INDEX agents_best ON bench_baseline.agents"
	            " (score DESC, available_since) WHERE state = 'available'");
	exec_ok(db, "CREATE INDEX agents_skills ON bench_baseline.agents USING gin (skills)"
	            " WHERE state = 'available'");
	exec_ok(db, "VACUUM ANALYZE bench_baseline.agents");
	PQfinish(db);
	return (double)(mono_us() - t0) / 1000.0;
}

static void *place_calls(void *arg)
{
	caller *c = arg;
	PGconn *db = PQconnectdb(c->conninfo);
	uint64_t start, seed = c->seed;
	size_t k = 0;

	if (PQstatus(db) != CONNECTION_OK)
		die_pq(db, "connect");
	PGresult *r = PQprepare(db, "take",
	                        "UPDATE bench_baseline.agents a SET state = 'offered'"
	                        " WHERE a.id = (SELECT id FROM bench_baseline.agents"
	                        "   WHERE state = 'available' AND skills @> $1::text[]"
	                        "   ORDER BY score DESC, available_since"
	                        "   LIMIT 1 FOR UPDATE SKIP LOCKED)"
	                        " RETURNING a.id",
	                        1, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die_pq(db, "prepare take");
	PQclear(r);
	r = PQprepare(db, "free",
	              "UPDATE bench_baseline.agents SET state = 'available',"
	              " available_since = clock_timestamp() WHERE id = $1::bigint",
	              1, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die_pq(db, "prepare free");
	PQclear(r);

	if (pthread_barrier_wait(&c->line->ready) == PTHREAD_BARRIER_SERIAL_THREAD)
		atomic_store(&c->line->start_us, mono_us());
	pthread_barrier_wait(&c->line->ready);
	start = atomic_load(&c->line->start_us);
	for (size_t seq = c->from; seq < c->to; seq += c->step, k++) {
		char skills[64], id[24];
		const char *p[1];
		uint64_t t0;

		if (c->rate > 0) {
			uint64_t due = start + (uint64_t)(c->offset_us + (double)k * 1e6 / c->rate);
			uint64_t now = mono_us();

			if (due > now)
				usleep((useconds_t)(due - now));
		}
		queue_skills(rnd(&seed) % c->n_queues, skills, sizeof(skills));
		p[0] = skills;
		t0 = mono_us();
		r = PQexecPrepared(db, "take", 1, p, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			c->failed++;
			PQclear(r);
			continue;
		}
		if (PQntuples(r) == 0) {
			c->no_agent++;
			PQclear(r);
			continue;
		}
		c->lat_us[seq] = mono_us() - t0;
		if (c->lat_us[seq] == 0)
			c->lat_us[seq] = 1;
		c->dispatched++;
		snprintf(id, sizeof(id), "%s", PQgetvalue(r, 0, 0));
		PQclear(r);
		// The agent takes the call and ends it at once, as in bench/dispatch.
		p[0] = id;
		r = PQexecPrepared(db, "free", 1, p, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			c->failed++;
		PQclear(r);
	}
	PQfinish(db);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, size_t n, double q)
{
	size_t i;

	if (n == 0)
		return 0;
	i = (size_t)(q * (double)(n - 1) + 0.5);
	return (double)v[i] / 1000.0;
}

static size_t parse_list(const char *s, size_t *out)
{
	size_t n = 0;

	while (*s && n < MAX_LIST) {
		char *end;

		out[n++] = strtoull(s, &end, 10);
		s = *end == ',' ? end + 1 : end;
		if (end == s && *s)
			break;
	}
	return n;
}

static void run_case(const char *conninfo, size_t n_agents, size_t n_queues, size_t n_calls,
                     double rate, size_t n_callers, uint64_t seed, double setup_ms)
{
	caller *cs = calloc(n_callers, sizeof(*cs));
	uint64_t *lat = calloc(n_calls, sizeof(*lat));
	uint64_t *sorted = calloc(n_calls, sizeof(*sorted));
	size_t nl = 0, no_agent = 0, failed = 0;
	uint64_t t0, t1;
	start_line line = {.start_us = 0};

	if (cs == NULL || lat == NULL || sorted == NULL) {
		fprintf(stderr, "baseline: out of memory\n");
		exit(1);
	}
	pthread_barrier_init(&line.ready, NULL, (unsigned)n_callers);
	for (size_t i = 0; i < n_callers; i++) {
		cs[i] = (caller){.line = &line,
		                 .conninfo = conninfo,
		                 .from = i,
		                 .to = n_calls,
		                 .step = n_callers,
		                 .rate = rate / (double)n_callers,
		                 .offset_us = rate > 0 ? (double)i * 1e6 / rate : 0,
		                 .n_queues = n_queues,
		                 .seed = seed * 1000003u + i + 1,
		                 .lat_us = lat};
		if (pthread_create(&cs[i].th, NULL, place_calls, &cs[i]) != 0) {
			fprintf(stderr, "baseline: cannot start a caller\n");
			exit(1);
		}
	}
	for (size_t i = 0; i < n_callers; i++) {
		pthread_join(cs[i].th, NULL);
		no_agent += cs[i].no_agent;
		failed += cs[i].failed;
	}
	t1 = mono_us();
	// From the moment every caller was connected, as ringbid's run is timed from its first
	// call.
	t0 = atomic_load(&line.start_us);
	pthread_barrier_destroy(&line.ready);
	for (size_t i = 0; i < n_calls; i++)
		if (lat[i])
			sorted[nl++] = lat[i];
	qsort(sorted, nl, sizeof(*sorted), cmp_u64);
	double secs = (double)(t1 - t0) / 1e6;
	char target[32] = "null";

	if (rate > 0)
		snprintf(target, sizeof(target), "%.0f", rate);
	fprintf(stderr,
	        "baseline: %zu agents, %zu queues, %s: %zu calls in %.2f s, %.0f calls/s, "
	        "p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
	        n_agents, n_queues, rate > 0 ? "paced" : "back to back", nl, secs,
	        (double)nl / secs, pct(sorted, nl, 0.5), pct(sorted, nl, 0.99),
	        pct(sorted, nl, 0.999));
	printf("{\"system\":\"baseline\",\"agents\":%zu,\"queues\":%zu,\"load\":\"%s\","
	       "\"target_rate\":%s,\"callers\":%zu,\"calls\":%zu,\"offered\":%zu,"
	       "\"no_agent\":%zu,\"failed\":%zu,\"seconds\":%.3f,\"calls_per_s\":%.1f,"
	       "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,"
	       "\"setup_ms\":%.0f}\n",
	       n_agents, n_queues, rate > 0 ? "rate" : "max", target, n_callers, n_calls, nl,
	       no_agent, failed, secs, (double)nl / secs, pct(sorted, nl, 0.5),
	       pct(sorted, nl, 0.99), pct(sorted, nl, 0.999),
	       nl ? (double)sorted[nl - 1] / 1000.0 : 0.0, setup_ms);
	fflush(stdout);
	free(cs);
	free(lat);
	free(sorted);
}

static void usage(void)
{
	fprintf(stderr, "usage: baseline [--db CONNINFO] [--agents N,N...] [--queues Q,Q...]\n"
	                "                [--calls N] [--rate R] [--callers N] [--seed S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *conninfo = getenv("RINGBID_DATABASE_URL");
	size_t agents[MAX_LIST] = {1000, 10000, 100000}, queues[MAX_LIST] = {1, 10, 100};
	size_t na = 3, nq = 3, n_calls = 10000, n_callers = 16;
	double rate = 0;
	uint64_t seed = 42;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--db") && i + 1 < argc)
			conninfo = argv[++i];
		else if (!strcmp(argv[i], "--agents") && i + 1 < argc)
			na = parse_list(argv[++i], agents);
		else if (!strcmp(argv[i], "--queues") && i + 1 < argc)
			nq = parse_list(argv[++i], queues);
		else if (!strcmp(argv[i], "--calls") && i + 1 < argc)
			n_calls = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--rate") && i + 1 < argc)
			rate = strtod(argv[++i], NULL);
		else if (!strcmp(argv[i], "--callers") && i + 1 < argc)
			n_callers = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
			seed = strtoull(argv[++i], NULL, 10);
		else
			usage();
	}
	if (conninfo == NULL || na == 0 || nq == 0 || n_calls == 0 || n_callers == 0 ||
	    n_callers > 256 || rate < 0)
		usage();
	for (size_t a = 0; a < na; a++) {
		if (agents[a] == 0 || agents[a] > 10000000)
			usage();
		double setup_ms = setup(conninfo, agents[a], seed);

		for (size_t q = 0; q < nq; q++) {
			if (queues[q] == 0)
				usage();
			run_case(conninfo, agents[a], queues[q], n_calls, rate, n_callers, seed,
			         setup_ms);
		}
	}
	return 0;
}
