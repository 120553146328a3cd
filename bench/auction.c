// Auction benchmark: the matching engine alone, in process, driven through a contact centre's
// day of calls in virtual time, timing every decision with the monotonic clock.
//
// Each case loads N agents (a snapshot in chunks of 1,000, as presence sends it), opens Q
// queues (distinct program and skill-set pairs) and then replays a seeded stream of events:
// calls arrive (Enqueue), the matched agent is reserved at presence (AgentUpdate, not
// available), answers (ON_CALL and the broker's Dequeue; a few decline and the call is
// enqueued again excluding them), talks, wraps up and becomes available again (AgentUpdate,
// available), which may hand it a waiting call; callers who wait too long hang up (Dequeue).
// The load alternates between a lull (85% of the agents busy) and a peak (120% offered), so
// some decisions are made when a call arrives and finds free agents and others when a freed
// agent finds calls waiting. Virtual time only orders events and fills timestamps: the engine
// runs back to back, and only the time spent inside market calls is measured. The same seed
// gives the same decisions (the printed hash); only the timings change from run to run.
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../services/auction/market.h"

#define S_US              1000000ull
#define N_LANGS           5
#define N_PRODUCTS        4
#define SETS_PER_PROGRAM  (N_LANGS + N_LANGS * N_PRODUCTS) // 25
#define MAX_PROGRAMS      10
#define MAX_QUEUES        (SETS_PER_PROGRAM * MAX_PROGRAMS) // 250, under MARKET_MAX_QUEUES
#define MAX_EXCL          8
#define SNAPSHOT_CHUNK    1000
#define OFFER_DELAY_US    5000ull    // broker -> presence -> agent reserved
#define RING_MIN_US       (2 * S_US) // the agent answers the offer after 2..6 s
#define RING_SPAN_US      (4 * S_US)
#define TALK_MIN_US       (30 * S_US) // talk 30 s + exponential, mean 240 s
#define TALK_EXP_US       (210.0 * 1e6)
#define WRAP_MIN_US       (10 * S_US) // wrap-up 10..30 s
#define WRAP_SPAN_US      (20 * S_US)
#define PATIENCE_US       (90.0 * 1e6)  // callers hang up after exponential, mean 90 s
#define HANDLE_US         (264.0 * 1e6) // mean ring + talk + wrap-up
#define DECLINE_PERMILLE  30            // offers declined: the call is enqueued again
#define PRIORITY_PERMILLE 100           // calls with priority 1
#define LULL_LOAD         0.85          // offered load, as a share of the agents
#define PEAK_LOAD         1.20
#define PHASE_US          (1.5 * HANDLE_US)   // a lull, then a peak, each this long
#define JANITOR_US        S_US                // the auction's janitor runs every second
#define WALL_BASE_US      1790000000000000ull // wall clock of virtual time 0
#define MONO_BASE_US      (1000 * S_US)       // monotonic clock of virtual time 0

static const char *const langs[N_LANGS] = {"en", "fr", "de", "es", "it"};
static const char *const products[N_PRODUCTS] = {"billing", "tech", "sales", "retention"};
static const char *const programs[MAX_PROGRAMS] = {"acme",   "globex",   "initech", "umbrella",
                                                   "hooli",  "wonka",    "stark",   "wayne",
                                                   "tyrell", "cyberdyne"};

enum ev_kind {
	EV_ARRIVAL,  // a call arrives: Enqueue
	EV_OFFERED,  // the offer reached presence: the agent is reserved there (not available)
	EV_ANSWER,   // the agent accepts (ON_CALL, then the broker's Dequeue) or declines
	EV_TALK_END, // the call ends: WRAP_UP (not available)
	EV_WRAP_END, // wrap-up over: AVAILABLE again
	EV_ABANDON,  // the caller's patience runs out: Dequeue if still waiting
	EV_JANITOR,  // the auction's periodic work
};

typedef struct event {
	uint64_t t;   // virtual µs
	uint64_t seq; // ties in time keep scheduling order: the run is deterministic
	uint32_t kind;
	uint32_t who; // call or agent index
} event;

enum call_state {
	CALL_NEW, // not yet enqueued
	CALL_WAITING,
	CALL_MATCHED,
	CALL_GONE
};

typedef struct sim_call {
	uint64_t deadline_us; // the caller hangs up then if still waiting
	uint64_t arrived_us;
	uint32_t agent; // index while matched
	uint16_t queue;
	uint8_t state;
	uint8_t nexcl;
	int32_t priority;
	uint64_t excl[MAX_EXCL];
} sim_call;

typedef struct sim_agent {
	char *skills[4];
	market_program_score ps[MAX_PROGRAMS];
	size_t nps;
	double score;
	uint64_t seq;
	uint64_t since_us;
	uint32_t call; // while reserved, ringing or talking
} sim_agent;

typedef struct pending {
	uint32_t call;
	uint32_t agent;
} pending;

typedef struct lat {
	uint64_t *v; // ns
	size_t n, cap;
} lat;

typedef struct bench {
	market *m;
	uint64_t rng;
	uint64_t now; // virtual µs
	size_t n_agents, n_queues, n_programs;
	sim_agent *agents;
	sim_call *calls;
	size_t n_calls, calls_cap;
	char *qskills[MAX_QUEUES][2];
	size_t qnskills[MAX_QUEUES];
	event *heap;
	size_t nheap, heap_cap;
	uint64_t ev_seq;
	pending *pend;
	size_t npend, pend_cap;
	// figures
	uint64_t engine_ns, ops, decisions, resends, declined, abandoned, hash, setup_matches;
	size_t waiting, max_waiting;
	lat on_arrival, on_free;
} bench;

static void die(const char *what)
{
	fprintf(stderr, "auction bench: %s\n", what);
	exit(1);
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n);
	if (!q)
		die("out of memory");
	return q;
}

// splitmix64: small, fast, and the same sequence everywhere for one seed.
static uint64_t rnd(bench *b)
{
	uint64_t z = (b->rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double rnd_unit(bench *b) // [0, 1)
{
	return (double)(rnd(b) >> 11) * 0x1.0p-53;
}

static uint64_t rnd_below(bench *b, uint64_t n)
{
	return rnd(b) % n;
}

static uint64_t rnd_exp_us(bench *b, double mean_us)
{
	return (uint64_t)(-log(1.0 - rnd_unit(b)) * mean_us);
}

static double clamp_score(double s)
{
	s = s < 0 ? 0 : s > 100 ? 100 : s;
	return round(s * 10) / 10; // one decimal, as billing computes them: ties happen
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static market_time vtime(const bench *b)
{
	return (market_time){.wall_us = WALL_BASE_US + b->now, .mono_us = MONO_BASE_US + b->now};
}

static void lat_add(lat *l, uint64_t ns)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 4096;
		l->v = xrealloc(l->v, l->cap * sizeof *l->v);
	}
	l->v[l->n++] = ns;
}

static int u64_cmp(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, c = *(const uint64_t *)y;
	return a < c ? -1 : a > c;
}

// Nearest-rank percentile in µs of a sorted sample.
static double pct_us(const lat *l, double p)
{
	if (l->n == 0)
		return 0;
	size_t rank = (size_t)ceil(p * (double)l->n);
	if (rank < 1)
		rank = 1;
	return (double)l->v[rank - 1] / 1000.0;
}

// ---------------------------------------------------------------------------------------------
// Events: a binary min-heap on (time, scheduling order).

static bool ev_less(const event *x, const event *y)
{
	return x->t != y->t ? x->t < y->t : x->seq < y->seq;
}

static void ev_push(bench *b, uint64_t t, enum ev_kind kind, uint32_t who)
{
	if (b->nheap == b->heap_cap) {
		b->heap_cap = b->heap_cap ? b->heap_cap * 2 : 1024;
		b->heap = xrealloc(b->heap, b->heap_cap * sizeof *b->heap);
	}
	event e = {.t = t, .seq = b->ev_seq++, .kind = kind, .who = who};
	size_t i = b->nheap++;
	while (i > 0 && ev_less(&e, &b->heap[(i - 1) / 2])) {
		b->heap[i] = b->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	b->heap[i] = e;
}

static event ev_pop(bench *b)
{
	event top = b->heap[0], last = b->heap[--b->nheap];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= b->nheap)
			break;
		if (c + 1 < b->nheap && ev_less(&b->heap[c + 1], &b->heap[c]))
			c++;
		if (!ev_less(&b->heap[c], &last))
			break;
		b->heap[i] = b->heap[c];
		i = c;
	}
	if (b->nheap > 0)
		b->heap[i] = last;
	return top;
}

// ---------------------------------------------------------------------------------------------
// The market, timed. The match callback only notes the match: everything that follows from
// it is scheduled after the clock has stopped.

static void on_match(const market_match *mm, void *arg)
{
	bench *b = arg;
	if (mm->resend) {
		b->resends++;
		return;
	}
	if (b->npend == b->pend_cap) {
		b->pend_cap = b->pend_cap ? b->pend_cap * 2 : 64;
		b->pend = xrealloc(b->pend, b->pend_cap * sizeof *b->pend);
	}
	b->pend[b->npend++] = (pending){.call = (uint32_t)strtoul(mm->call_id + 1, NULL, 10),
	                                .agent = (uint32_t)(mm->agent_id - 1)};
}

static void check(int rc, const char *what)
{
	if (rc != 0) {
		fprintf(stderr, "auction bench: %s: error %d\n", what, rc);
		exit(1);
	}
}

static market_agent_info agent_info(const bench *b, uint32_t i, bool available)
{
	const sim_agent *a = &b->agents[i];
	return (market_agent_info){.id = (uint64_t)i + 1,
	                           .available = available,
	                           .skills = a->skills,
	                           .nskills = 4,
	                           .score = a->score,
	                           .program_scores = a->ps,
	                           .nprogram_scores = a->nps,
	                           .available_since_us = WALL_BASE_US + a->since_us,
	                           .state_seq = a->seq};
}

static void call_id(uint32_t c, char *out, size_t n)
{
	snprintf(out, n, "c%" PRIu32, c);
}

// Presence's AgentUpdate for agent i after a state change; returns the engine time in ns.
static uint64_t timed_update(bench *b, uint32_t i, bool available)
{
	b->agents[i].seq++;
	market_agent_info in = agent_info(b, i, available);
	uint64_t t0 = now_ns();
	int rc = market_agent_update(b->m, &in, vtime(b));
	uint64_t dt = now_ns() - t0;
	check(rc, "agent update");
	b->engine_ns += dt;
	b->ops++;
	return dt;
}

static uint64_t timed_enqueue(bench *b, uint32_t c)
{
	sim_call *sc = &b->calls[c];
	char id[32];
	call_id(c, id, sizeof id);
	market_call_info in = {.id = id,
	                       .program = programs[sc->queue / SETS_PER_PROGRAM],
	                       .skills = b->qskills[sc->queue],
	                       .nskills = b->qnskills[sc->queue],
	                       .priority = sc->priority,
	                       .arrived_us = WALL_BASE_US + sc->arrived_us,
	                       .excluded = sc->excl,
	                       .nexcluded = sc->nexcl};
	uint64_t t0 = now_ns();
	int rc = market_enqueue(b->m, &in, vtime(b));
	uint64_t dt = now_ns() - t0;
	check(rc, "enqueue");
	b->engine_ns += dt;
	b->ops++;
	return dt;
}

static void timed_dequeue(bench *b, uint32_t c)
{
	char id[32];
	call_id(c, id, sizeof id);
	uint64_t t0 = now_ns();
	int rc = market_dequeue(b->m, id, 0, vtime(b));
	b->engine_ns += now_ns() - t0;
	check(rc, "dequeue");
	b->ops++;
}

// Applies the matches the last market call made: the broker offers each call to its agent.
static void take_matches(bench *b)
{
	for (size_t k = 0; k < b->npend; k++) {
		pending p = b->pend[k];
		sim_call *c = &b->calls[p.call];
		if (c->state == CALL_WAITING)
			b->waiting--;
		c->state = CALL_MATCHED;
		c->agent = p.agent;
		b->agents[p.agent].call = p.call;
		b->decisions++;
		b->hash = (b->hash ^ ((uint64_t)p.call << 32 ^ p.agent)) * 0x100000001b3ull;
		ev_push(b, b->now + OFFER_DELAY_US, EV_OFFERED, p.agent);
		ev_push(b, b->now + RING_MIN_US + rnd_below(b, RING_SPAN_US), EV_ANSWER, p.agent);
	}
	b->npend = 0;
}

// True when the last market call matched call c (it can only have matched that one).
static bool matched_call(const bench *b, uint32_t c)
{
	return b->npend == 1 && b->pend[0].call == c;
}

static void call_waits(bench *b, uint32_t c)
{
	sim_call *sc = &b->calls[c];
	sc->state = CALL_WAITING;
	if (++b->waiting > b->max_waiting)
		b->max_waiting = b->waiting;
	ev_push(b, sc->deadline_us > b->now ? sc->deadline_us : b->now, EV_ABANDON, c);
}

// Enqueues call c (new, or again after a decline), timing it as a decision when it matched.
static void enqueue_call(bench *b, uint32_t c)
{
	uint64_t dt = timed_enqueue(b, c);
	if (matched_call(b, c)) {
		lat_add(&b->on_arrival, dt);
		take_matches(b);
	} else {
		take_matches(b);
		call_waits(b, c);
	}
}

// Agent i becomes available; timed as a decision when it took a waiting call.
static void agent_available(bench *b, uint32_t i)
{
	b->agents[i].since_us = b->now;
	uint64_t dt = timed_update(b, i, true);
	if (b->npend > 0)
		lat_add(&b->on_free, dt);
	take_matches(b);
}

// ---------------------------------------------------------------------------------------------
// The case

static double load_at(uint64_t t)
{
	return fmod((double)t, 2 * PHASE_US) < PHASE_US ? LULL_LOAD : PEAK_LOAD;
}

static void new_arrival(bench *b)
{
	if (b->n_calls == b->calls_cap) {
		b->calls_cap = b->calls_cap ? b->calls_cap * 2 : 65536;
		b->calls = xrealloc(b->calls, b->calls_cap * sizeof *b->calls);
	}
	uint32_t c = (uint32_t)b->n_calls++;
	sim_call *sc = &b->calls[c];
	*sc = (sim_call){.arrived_us = b->now,
	                 .deadline_us = b->now + rnd_exp_us(b, PATIENCE_US),
	                 .queue = (uint16_t)rnd_below(b, b->n_queues),
	                 .priority = rnd_below(b, 1000) < PRIORITY_PERMILLE ? 1 : 0};
	enqueue_call(b, c);
}

static void handle(bench *b, const event *e, uint64_t end_us)
{
	sim_agent *a;
	sim_call *c;
	switch ((enum ev_kind)e->kind) {
	case EV_ARRIVAL: {
		new_arrival(b);
		double rate = load_at(b->now) * (double)b->n_agents / HANDLE_US; // calls per µs
		uint64_t next = b->now + 1 + rnd_exp_us(b, 1.0 / rate);
		if (next < end_us)
			ev_push(b, next, EV_ARRIVAL, 0);
		break;
	}
	case EV_OFFERED:
		timed_update(b, e->who, false); // RESERVED at presence ends the auction's hold
		break;
	case EV_ANSWER:
		a = &b->agents[e->who];
		c = &b->calls[a->call];
		if (rnd_below(b, 1000) < DECLINE_PERMILLE && c->nexcl < MAX_EXCL) {
			// Presence makes the agent available again (it may take another waiting
			// call); the broker puts the call back in line without that agent.
			uint32_t ci = a->call;
			b->declined++;
			c->excl[c->nexcl++] = (uint64_t)e->who + 1;
			c->state = CALL_GONE;
			agent_available(b, e->who);
			enqueue_call(b, ci);
		} else {
			timed_update(b, e->who, false); // ON_CALL
			timed_dequeue(b, a->call);      // connected: the call leaves the auction
			c->state = CALL_GONE;
			ev_push(b, b->now + TALK_MIN_US + rnd_exp_us(b, TALK_EXP_US), EV_TALK_END,
			        e->who);
		}
		break;
	case EV_TALK_END:
		timed_update(b, e->who, false); // WRAP_UP
		ev_push(b, b->now + WRAP_MIN_US + rnd_below(b, WRAP_SPAN_US), EV_WRAP_END, e->who);
		break;
	case EV_WRAP_END:
		agent_available(b, e->who);
		break;
	case EV_ABANDON:
		c = &b->calls[e->who];
		if (c->state == CALL_WAITING && c->deadline_us <= b->now) {
			timed_dequeue(b, e->who);
			c->state = CALL_GONE;
			b->waiting--;
			b->abandoned++;
		}
		break;
	case EV_JANITOR: {
		uint64_t t0 = now_ns();
		market_janitor(b->m, vtime(b), NULL);
		b->engine_ns += now_ns() - t0;
		b->ops++;
		take_matches(b); // reservations ended by the backstop may match
		if (b->now + JANITOR_US < end_us)
			ev_push(b, b->now + JANITOR_US, EV_JANITOR, 0);
		break;
	}
	}
}

static void make_agents(bench *b)
{
	for (size_t i = 0; i < b->n_agents; i++) {
		sim_agent *a = &b->agents[i];
		// Everyone speaks English and one more language, and handles two products.
		size_t l2 = 1 + rnd_below(b, N_LANGS - 1), p1 = rnd_below(b, N_PRODUCTS),
		       p2 = (p1 + 1 + rnd_below(b, N_PRODUCTS - 1)) % N_PRODUCTS;
		a->skills[0] = (char *)langs[0];
		a->skills[1] = (char *)langs[l2];
		a->skills[2] = (char *)products[p1];
		a->skills[3] = (char *)products[p2];
		// Scores near 70 with a spread, and a program score for most programs.
		a->score = clamp_score(70 + (rnd_unit(b) + rnd_unit(b) + rnd_unit(b) - 1.5) * 20);
		a->nps = 0;
		for (size_t p = 0; p < b->n_programs; p++)
			if (rnd_below(b, 10) < 6)
				a->ps[a->nps++] = (market_program_score){
				        programs[p],
				        clamp_score(a->score + (rnd_unit(b) - 0.5) * 20)};
		a->seq = 1;
	}
}

static void make_queues(bench *b)
{
	for (size_t q = 0; q < b->n_queues; q++) {
		size_t s = q % SETS_PER_PROGRAM;
		if (s < N_LANGS) {
			b->qskills[q][0] = (char *)langs[s];
			b->qnskills[q] = 1;
		} else {
			b->qskills[q][0] = (char *)langs[(s - N_LANGS) / N_PRODUCTS];
			b->qskills[q][1] = (char *)products[(s - N_LANGS) % N_PRODUCTS];
			b->qnskills[q] = 2;
		}
	}
}

typedef struct result {
	double snapshot_ms, queues_ms, run_s, engine_s;
	uint64_t calls;
} result;

// Loads the agents (most of them busy, as in a lull) and opens every queue with one call.
static void setup(bench *b, result *r)
{
	market_agent_info *chunk = xrealloc(NULL, SNAPSHOT_CHUNK * sizeof *chunk);
	uint64_t t0 = now_ns();
	for (size_t base = 0; base < b->n_agents; base += SNAPSHOT_CHUNK) {
		size_t n =
		        b->n_agents - base < SNAPSHOT_CHUNK ? b->n_agents - base : SNAPSHOT_CHUNK;
		for (size_t k = 0; k < n; k++) {
			uint32_t i = (uint32_t)(base + k);
			bool busy = rnd_unit(b) < LULL_LOAD;
			b->agents[i].since_us = 0;
			chunk[k] = agent_info(b, i, !busy);
			if (busy) // on a call or in wrap-up: free again within one handle time
				ev_push(b, rnd_below(b, (uint64_t)HANDLE_US), EV_WRAP_END, i);
		}
		check(market_snapshot(b->m, 1, base == 0, base + n == b->n_agents, chunk, n,
		                      vtime(b), NULL),
		      "snapshot");
	}
	r->snapshot_ms = (double)(now_ns() - t0) / 1e6;
	free(chunk);

	// A queue is made by its first call, which indexes every available agent it covers.
	t0 = now_ns();
	for (size_t q = 0; q < b->n_queues; q++) {
		char id[32];
		snprintf(id, sizeof id, "open%zu", q);
		market_call_info in = {.id = id,
		                       .program = programs[q / SETS_PER_PROGRAM],
		                       .skills = b->qskills[q],
		                       .nskills = b->qnskills[q]};
		check(market_enqueue(b->m, &in, vtime(b)), "open queue");
		uint64_t agent = b->npend ? (uint64_t)b->pend[0].agent + 1 : 0;
		b->setup_matches += b->npend;
		b->npend = 0;
		check(market_dequeue(b->m, id, agent, vtime(b)), "open queue");
	}
	r->queues_ms = (double)(now_ns() - t0) / 1e6;
}

static void run_case(size_t n_agents, size_t n_queues, uint64_t min_calls, uint64_t seed, result *r,
                     bench *b)
{
	memset(b, 0, sizeof *b);
	b->rng = seed ^ (n_agents * 1000003u + n_queues);
	b->n_agents = n_agents;
	b->n_queues = n_queues;
	b->n_programs = (n_queues + SETS_PER_PROGRAM - 1) / SETS_PER_PROGRAM;
	b->agents = xrealloc(NULL, n_agents * sizeof *b->agents);
	memset(b->agents, 0, n_agents * sizeof *b->agents);
	check(market_new(NULL, on_match, b, &b->m), "market_new");
	make_queues(b);
	make_agents(b);
	setup(b, r);

	// Whole lull-and-peak cycles, enough of them for min_calls calls.
	double per_cycle = (LULL_LOAD + PEAK_LOAD) * PHASE_US / HANDLE_US * (double)n_agents;
	uint64_t cycles = (uint64_t)ceil((double)min_calls / per_cycle);
	if (cycles < 1)
		cycles = 1;
	uint64_t end_us = (uint64_t)(cycles * 2 * PHASE_US);
	ev_push(b, 0, EV_ARRIVAL, 0);
	ev_push(b, JANITOR_US, EV_JANITOR, 0);
	uint64_t t0 = now_ns();
	while (b->nheap > 0) {
		event e = ev_pop(b);
		if (e.t >= end_us)
			break;
		b->now = e.t;
		handle(b, &e, end_us);
	}
	r->run_s = (double)(now_ns() - t0) / 1e9;
	// The replay and the engine must agree, or the figures describe some other workload.
	market_stats st;
	market_get_stats(b->m, &st);
	if (st.calls_waiting != b->waiting || st.decisions != b->decisions + b->setup_matches ||
	    b->resends != 0)
		die("the engine's counters disagree with the replay");
	r->engine_s = (double)b->engine_ns / 1e9;
	r->calls = b->n_calls;
	qsort(b->on_arrival.v, b->on_arrival.n, sizeof *b->on_arrival.v, u64_cmp);
	qsort(b->on_free.v, b->on_free.n, sizeof *b->on_free.v, u64_cmp);
}

static void bench_fini(bench *b)
{
	market_free(b->m);
	free(b->agents);
	free(b->calls);
	free(b->heap);
	free(b->pend);
	free(b->on_arrival.v);
	free(b->on_free.v);
}

static int parse_list(const char *s, size_t *out, size_t max, size_t lo, size_t hi)
{
	size_t n = 0;
	while (*s) {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(s, &end, 10);
		if (errno || end == s || v < lo || v > hi || n == max || (*end && *end != ','))
			return -1;
		out[n++] = (size_t)v;
		s = *end ? end + 1 : end;
	}
	return (int)n;
}

// This process's resident memory now, in KiB (VmRSS), or 0 when /proc cannot tell.
static long rss_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = 0;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof line, f) != NULL)
		if (sscanf(line, "VmRSS: %ld", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: auction [--agents N,N...] [--queues Q,Q...] [--min-calls N] [--seed S]\n"
	        "  defaults: --agents 1000,10000,100000 --queues 1,10,100 --min-calls 200000\n"
	        "  prints a table, then one JSON line per case\n");
	exit(2);
}

int main(int argc, char **argv)
{
	size_t agents_v[16] = {1000, 10000, 100000}, queues_v[16] = {1, 10, 100};
	int n_av = 3, n_qv = 3;
	uint64_t min_calls = 200000, seed = 1;
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(argv[i], "--agents") && v) {
			n_av = parse_list(v, agents_v, 16, 2, 1000000);
		} else if (!strcmp(argv[i], "--queues") && v) {
			n_qv = parse_list(v, queues_v, 16, 1, MAX_QUEUES);
		} else if (!strcmp(argv[i], "--min-calls") && v) {
			min_calls = strtoull(v, NULL, 10);
		} else if (!strcmp(argv[i], "--seed") && v) {
			seed = strtoull(v, NULL, 10);
		} else {
			usage();
		}
		i++;
		if (n_av <= 0 || n_qv <= 0)
			usage();
	}

	char(*json)[1024] = xrealloc(NULL, (size_t)(n_av * n_qv) * sizeof *json);
	int nj = 0;
	printf("auction engine in process: lull (85%% busy) and peak (120%% offered) cycles, seed "
	       "%" PRIu64 "\n",
	       seed);
	printf("%-8s %-6s %-8s %-8s %-10s | %-27s | %-27s | %-8s %-8s\n", "", "", "", "",
	       "matches/s", "   call arrives -> match", "  agent freed -> match", "setup ms", "");
	printf("%-8s %-6s %-8s %-8s %-10s | %8s %8s %9s | %8s %8s %9s | %-8s %-8s\n", "agents",
	       "queues", "calls", "matches", "(engine)", "p50 us", "p99 us", "p99.9 us", "p50 us",
	       "p99 us", "p99.9 us", "snapshot", "queues");
	fflush(stdout);
	for (int ai = 0; ai < n_av; ai++) {
		for (int qi = 0; qi < n_qv; qi++) {
			bench b;
			result r;
			run_case(agents_v[ai], queues_v[qi], min_calls, seed, &r, &b);
			double mps = r.engine_s > 0 ? (double)b.decisions / r.engine_s : 0;
			printf("%-8zu %-6zu %-8" PRIu64 " %-8" PRIu64
			       " %-10.0f | %8.2f %8.2f %9.2f | %8.2f %8.2f %9.2f | %-8.1f %-8.1f\n",
			       b.n_agents, b.n_queues, r.calls, b.decisions, mps,
			       pct_us(&b.on_arrival, 0.50), pct_us(&b.on_arrival, 0.99),
			       pct_us(&b.on_arrival, 0.999), pct_us(&b.on_free, 0.50),
			       pct_us(&b.on_free, 0.99), pct_us(&b.on_free, 0.999), r.snapshot_ms,
			       r.queues_ms);
			fflush(stdout);
			snprintf(json[nj++], sizeof json[0],
			         "{\"bench\":\"auction\",\"agents\":%zu,\"queues\":%zu,\"seed\":"
			         "%" PRIu64 ",\"calls\":%" PRIu64 ",\"matches\":%" PRIu64
			         ",\"declined\":%" PRIu64 ",\"abandoned\":%" PRIu64
			         ",\"max_waiting\":%zu,\"market_ops\":%" PRIu64
			         ",\"engine_s\":%.3f,\"wall_s\":%.3f,\"matches_per_s\":%.0f,"
			         "\"arrival_match\":{\"n\":%zu,\"p50_us\":%.2f,\"p99_us\":%.2f,"
			         "\"p999_us\":%.2f,\"max_us\":%.2f},"
			         "\"freed_match\":{\"n\":%zu,\"p50_us\":%.2f,\"p99_us\":%.2f,"
			         "\"p999_us\":%.2f,\"max_us\":%.2f},"
			         "\"snapshot_ms\":%.1f,\"open_queues_ms\":%.1f,"
			         "\"decisions_hash\":\"%016" PRIx64 "\",\"rss_kb\":%ld}",
			         b.n_agents, b.n_queues, seed, r.calls, b.decisions, b.declined,
			         b.abandoned, b.max_waiting, b.ops, r.engine_s, r.run_s, mps,
			         b.on_arrival.n, pct_us(&b.on_arrival, 0.50),
			         pct_us(&b.on_arrival, 0.99), pct_us(&b.on_arrival, 0.999),
			         pct_us(&b.on_arrival, 1.0), b.on_free.n, pct_us(&b.on_free, 0.50),
			         pct_us(&b.on_free, 0.99), pct_us(&b.on_free, 0.999),
			         pct_us(&b.on_free, 1.0), r.snapshot_ms, r.queues_ms, b.hash,
			         rss_kb());
			bench_fini(&b);
		}
	}
	for (int i = 0; i < nj; i++)
		printf("%s\n", json[i]);
	free(json);
	return 0;
}
