// The naive billing ringbid's is compared with: one INSERT per CDR, and pay computed row by row
// in C.
//
//   billing_naive ingest --cdrs N [--conns K] [--agent-base ID] [--program ID]
//     Stores N synthetic completed-call CDRs in billing.cdrs, one autocommitted INSERT each, from
//     K connections at once (default 4, as many as ringbid's batches in flight). The rate is
//     CDRs committed per second.
//   billing_naive payroll --period YYYY-MM-DD [--output FILE]
//     Closes a week (UTC) the naive way: reads every completed CDR answered in it, computes each
//     one's pay in C with the rules of docs/payroll.md (in integer ten-thousandths of a dollar,
//     never floating point), adds them up per agent, program, code and rate, stores each line
//     with its own INSERT in bench_naive.pay_lines, then exports the lines as CSV. The total is
//     checked against ringbid's closed period when there is one. It writes no per-CDR link
//     rows and pays no late CDRs, so it does less than `ringbid payroll close`.
// RINGBID_DATABASE_URL names the database. One JSON line on stdout.
#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uthash.h>

#define FETCH_SQL    "FETCH 20000 FROM cdrs"
#define MAX_PROGRAMS 256

static uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die(const char *what, const char *detail)
{
	fprintf(stderr, "billing_naive: %s: %s\n", what, detail);
	exit(1);
}

static PGconn *connect_db(void)
{
	const char *conninfo = getenv("RINGBID_DATABASE_URL");
	PGconn *db;

	if (conninfo == NULL)
		die("RINGBID_DATABASE_URL", "not set");
	db = PQconnectdb(conninfo);
	if (PQstatus(db) != CONNECTION_OK)
		die("connect", PQerrorMessage(db));
	return db;
}

static PGresult *query(PGconn *db, const char *sql, int n, const char *const *params)
{
	PGresult *r = PQexecParams(db, sql, n, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
		die(sql, PQresultErrorMessage(r));
	return r;
}

static void exec_ok(PGconn *db, const char *sql)
{
	PQclear(query(db, sql, 0, NULL));
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, size_t n, double q)
{
	if (n == 0)
		return 0;
	return (double)v[(size_t)(q * (double)(n - 1) + 0.5)] / 1000.0;
}

// ---------------------------------------------------------------------------------------------
// ingest

typedef struct inserter {
	pthread_t th;
	size_t from, to, step;
	uint64_t agent_base;
	const char *program;
	unsigned long long run;
	uint64_t *lat_us;
	size_t failed;
} inserter;

static void *insert_cdrs(void *arg)
{
	inserter *in = arg;
	PGconn *db = connect_db();
	PGresult *r = PQprepare(
	        db, "cdr",
	        "INSERT INTO billing.cdrs (cdr_id, call_id, program, agent_id, arrived_at,"
	        " offered_at, answered_at, ended_at, talk_s, disposition, sale, offers,"
	        " payload_hash)"
	        " VALUES ($1, $1, $2, $3::bigint, now() - interval '5 min',"
	        " now() - interval '299 s', now() - interval '295 s',"
	        " now() - interval '295 s' + make_interval(secs => $4::int), $4::bigint,"
	        " 'completed', $5::boolean, 1, decode(md5($1), 'hex'))",
	        5, NULL);

	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die("prepare", PQresultErrorMessage(r));
	PQclear(r);
	for (size_t i = in->from; i < in->to; i += in->step) {
		char id[64], agent[24], talk[16];
		const char *p[5] = {id, in->program, agent, talk, i % 17 == 0 ? "t" : "f"};
		uint64_t t0;

		snprintf(id, sizeof(id), "naive-%llx-%zu", in->run, i);
		snprintf(agent, sizeof(agent), "%" PRIu64, in->agent_base + i % 200);
		snprintf(talk, sizeof(talk), "%zu", (i * 7919) % 900);
		t0 = mono_us();
		r = PQexecPrepared(db, "cdr", 5, p, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			in->failed++;
			if (in->failed == 1)
				fprintf(stderr, "billing_naive: insert: %s",
				        PQresultErrorMessage(r));
		} else {
			in->lat_us[i] = mono_us() - t0 + 1;
		}
		PQclear(r);
	}
	PQfinish(db);
	return NULL;
}

static int cmd_ingest(int argc, char **argv)
{
	size_t n = 20000, conns = 4, done = 0, failed = 0;
	uint64_t agent_base = 900001;
	const char *program = "bench";

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--cdrs") && i + 1 < argc)
			n = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--conns") && i + 1 < argc)
			conns = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--agent-base") && i + 1 < argc)
			agent_base = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--program") && i + 1 < argc)
			program = argv[++i];
		else
			return 2;
	}
	if (n == 0 || conns == 0 || conns > 64)
		return 2;

	inserter *ins = calloc(conns, sizeof(*ins));
	uint64_t *lat = calloc(n, sizeof(*lat));
	uint64_t *sorted = calloc(n, sizeof(*sorted));
	unsigned long long run = (unsigned long long)time(NULL);

	if (ins == NULL || lat == NULL || sorted == NULL)
		die("ingest", "out of memory");
	uint64_t t0 = mono_us();
	for (size_t c = 0; c < conns; c++) {
		ins[c] = (inserter){.from = c,
		                    .to = n,
		                    .step = conns,
		                    .agent_base = agent_base,
		                    .program = program,
		                    .run = run,
		                    .lat_us = lat};
		if (pthread_create(&ins[c].th, NULL, insert_cdrs, &ins[c]) != 0)
			die("ingest", "cannot start a thread");
	}
	for (size_t c = 0; c < conns; c++) {
		pthread_join(ins[c].th, NULL);
		failed += ins[c].failed;
	}
	double secs = (double)(mono_us() - t0) / 1e6;

	for (size_t i = 0; i < n; i++)
		if (lat[i])
			sorted[done++] = lat[i];
	qsort(sorted, done, sizeof(*sorted), cmp_u64);
	printf("{\"cdrs\":%zu,\"conns\":%zu,\"stored\":%zu,\"failed\":%zu,\"seconds\":%.3f,"
	       "\"cdrs_per_s\":%.1f,\"insert_p50_ms\":%.3f,\"insert_p99_ms\":%.3f}\n",
	       n, conns, done, failed, secs, (double)done / secs, pct(sorted, done, 0.5),
	       pct(sorted, done, 0.99));
	free(ins);
	free(lat);
	free(sorted);
	return failed == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// payroll

// A decimal text with up to 4 decimals ("0.2125", "1.5") as ten-thousandths.
static int64_t parse_e4(const char *s)
{
	int64_t whole = 0, frac = 0;
	int digits = 0;
	bool neg = *s == '-';

	if (neg || *s == '+')
		s++;
	while (*s >= '0' && *s <= '9')
		whole = whole * 10 + (*s++ - '0');
	if (*s == '.') {
		s++;
		while (*s >= '0' && *s <= '9' && digits < 4) {
			frac = frac * 10 + (*s++ - '0');
			digits++;
		}
	}
	while (digits++ < 4)
		frac *= 10;
	return neg ? -(whole * 10000 + frac) : whole * 10000 + frac;
}

// num / den rounded to the nearest integer, halves away from zero (num >= 0, den > 0).
static int64_t div_round(__int128 num, int64_t den)
{
	return (int64_t)((num + den / 2) / den);
}

typedef struct program {
	char id[72];
	int64_t default_e4, commission_e4;
	bool per_second;
} program;

typedef struct rate {
	int64_t agent; // 0: program-wide
	int prog;
	int64_t from_us; // effective_from, microseconds since the epoch
	int64_t rate_e4;
} rate;

// A pay line being summed: quantity in seconds (per-second TALK), started minutes
// (per-started-minute TALK) or sales (SALE).
typedef struct line_key {
	int64_t agent;
	int prog;
	char code; // 'T' TALK, 'S' SALE
	int64_t rate_e4;
} line_key;

typedef struct line {
	line_key key;
	int64_t quantity;
	int64_t cdrs;
	UT_hash_handle hh;
} line;

typedef struct book {
	program progs[MAX_PROGRAMS];
	int nprogs;
	rate *rates;
	size_t nrates;
	line *lines;
} book;

static int prog_index(const book *b, const char *id)
{
	for (int i = 0; i < b->nprogs; i++)
		if (!strcmp(b->progs[i].id, id))
			return i;
	return -1;
}

// The rate of docs/payroll.md: the agent's own for the program in force at the answer, else
// the program-wide one, else the program's default. Looked up row by row, as a naive
// implementation does.
static int64_t rate_for(const book *b, int64_t agent, int prog, int64_t answered_us)
{
	const rate *own = NULL, *wide = NULL;

	for (size_t i = 0; i < b->nrates; i++) {
		const rate *r = &b->rates[i];

		if (r->prog != prog || r->from_us > answered_us)
			continue;
		if (r->agent == agent && (own == NULL || r->from_us > own->from_us))
			own = r;
		else if (r->agent == 0 && (wide == NULL || r->from_us > wide->from_us))
			wide = r;
	}
	if (own != NULL)
		return own->rate_e4;
	if (wide != NULL)
		return wide->rate_e4;
	return b->progs[prog].default_e4;
}

static void add(book *b, int64_t agent, int prog, char code, int64_t rate_e4, int64_t qty)
{
	line_key k;
	line *l;

	memset(&k, 0, sizeof(k));
	k.agent = agent;
	k.prog = prog;
	k.code = code;
	k.rate_e4 = rate_e4;
	HASH_FIND(hh, b->lines, &k, sizeof(k), l);
	if (l == NULL) {
		l = calloc(1, sizeof(*l));
		if (l == NULL)
			die("payroll", "out of memory");
		l->key = k;
		HASH_ADD(hh, b->lines, key, sizeof(k), l);
	}
	l->quantity += qty;
	l->cdrs++;
}

// The line's amount in cents and its quantity as text (minutes or sales, 4 decimals).
static int64_t line_amount(const book *b, const line *l, char *qty, size_t n)
{
	const program *p = &b->progs[l->key.prog];

	if (l->key.code == 'S') {
		snprintf(qty, n, "%" PRId64 ".0000", l->quantity);
		return div_round((__int128)l->quantity * l->key.rate_e4, 100);
	}
	if (p->per_second) {
		// seconds / 60 minutes, shown with 4 decimals (rounded), paid rounded once
		int64_t min_e4 = div_round((__int128)l->quantity * 10000, 60);

		snprintf(qty, n, "%" PRId64 ".%04" PRId64, min_e4 / 10000, min_e4 % 10000);
		return div_round((__int128)l->quantity * l->key.rate_e4, 60 * 100);
	}
	snprintf(qty, n, "%" PRId64 ".0000", l->quantity);
	return div_round((__int128)l->quantity * l->key.rate_e4, 100);
}

static void load_book(PGconn *db, book *b)
{
	PGresult *r = query(db,
	                    "SELECT id, default_rate, sale_commission, rounding = 'per_second'"
	                    " FROM roster.programs ORDER BY id",
	                    0, NULL);

	if (PQntuples(r) > MAX_PROGRAMS)
		die("payroll", "too many programs");
	for (int i = 0; i < PQntuples(r); i++) {
		program *p = &b->progs[b->nprogs++];

		snprintf(p->id, sizeof(p->id), "%s", PQgetvalue(r, i, 0));
		p->default_e4 = parse_e4(PQgetvalue(r, i, 1));
		p->commission_e4 = parse_e4(PQgetvalue(r, i, 2));
		p->per_second = PQgetvalue(r, i, 3)[0] == 't';
	}
	PQclear(r);
	r = query(db,
	          "SELECT coalesce(agent_id, 0), program, rate,"
	          " (extract(epoch FROM effective_from) * 1000000)::bigint FROM billing.rates",
	          0, NULL);
	b->rates = calloc((size_t)PQntuples(r) + 1, sizeof(*b->rates));
	if (b->rates == NULL)
		die("payroll", "out of memory");
	for (int i = 0; i < PQntuples(r); i++) {
		int prog = prog_index(b, PQgetvalue(r, i, 1));

		if (prog < 0)
			continue;
		b->rates[b->nrates++] = (rate){.agent = strtoll(PQgetvalue(r, i, 0), NULL, 10),
		                               .prog = prog,
		                               .from_us = strtoll(PQgetvalue(r, i, 3), NULL, 10),
		                               .rate_e4 = parse_e4(PQgetvalue(r, i, 2))};
	}
	PQclear(r);
}

static int cmd_payroll(int argc, char **argv)
{
	const char *period = NULL, *output = NULL;
	book b;
	size_t cdrs = 0, nlines = 0;
	int64_t total_cents = 0;
	char *ringbid_total = NULL;

	memset(&b, 0, sizeof(b));
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--period") && i + 1 < argc)
			period = argv[++i];
		else if (!strcmp(argv[i], "--output") && i + 1 < argc)
			output = argv[++i];
		else
			return 2;
	}
	if (period == NULL)
		return 2;

	PGconn *db = connect_db();
	uint64_t t0 = mono_us();
	const char *p1[1] = {period};

	exec_ok(db, "SET client_min_messages = warning");
	exec_ok(db, "CREATE SCHEMA IF NOT EXISTS bench_naive");
	exec_ok(db, "CREATE TABLE IF NOT EXISTS bench_naive.pay_lines (period date NOT NULL,"
	            " agent_id bigint NOT NULL, program text NOT NULL, code text NOT NULL,"
	            " rate numeric(12,4) NOT NULL, quantity numeric(14,4) NOT NULL,"
	            " amount numeric(12,2) NOT NULL, cdr_count integer NOT NULL)");
	exec_ok(db, "BEGIN");
	load_book(db, &b);
	// Every completed CDR answered in the week, read in chunks through a cursor.
	PQclear(query(db,
	              "DECLARE cdrs NO SCROLL CURSOR FOR"
	              " SELECT agent_id, program, talk_s, sale,"
	              "  (extract(epoch FROM answered_at) * 1000000)::bigint"
	              " FROM billing.cdrs WHERE disposition = 'completed' AND paid_period IS NULL"
	              "  AND answered_at >= $1::date::timestamp AT TIME ZONE 'UTC'"
	              "  AND answered_at < ($1::date + 7)::timestamp AT TIME ZONE 'UTC'",
	              1, p1));
	for (;;) {
		PGresult *r = query(db, FETCH_SQL, 0, NULL);
		int rows = PQntuples(r);

		for (int i = 0; i < rows; i++) {
			int64_t agent = strtoll(PQgetvalue(r, i, 0), NULL, 10);
			int prog = prog_index(&b, PQgetvalue(r, i, 1));
			int64_t talk = strtoll(PQgetvalue(r, i, 2), NULL, 10);
			int64_t answered = strtoll(PQgetvalue(r, i, 4), NULL, 10);

			if (prog < 0)
				die("payroll", "a CDR names an unknown program");
			// Per second: seconds add up and the line is rounded once; per started
			// minute: each call pays its started minutes.
			int64_t qty = b.progs[prog].per_second ? talk : (talk + 59) / 60;

			add(&b, agent, prog, 'T', rate_for(&b, agent, prog, answered), qty);
			if (PQgetvalue(r, i, 3)[0] == 't' && b.progs[prog].commission_e4 > 0)
				add(&b, agent, prog, 'S', b.progs[prog].commission_e4, 1);
			cdrs++;
		}
		PQclear(r);
		if (rows == 0)
			break;
	}
	exec_ok(db, "CLOSE cdrs");
	PQclear(query(db, "DELETE FROM bench_naive.pay_lines WHERE period = $1::date", 1, p1));
	PGresult *r = PQprepare(db, "line",
	                        "INSERT INTO bench_naive.pay_lines VALUES ($1::date, $2::bigint,"
	                        " $3, $4, $5::numeric, $6::numeric, $7::numeric, $8::int)",
	                        8, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die("prepare", PQresultErrorMessage(r));
	PQclear(r);
	for (line *l = b.lines; l != NULL; l = l->hh.next) {
		char agent[24], rate_s[32], qty[40], amount[40], count[24];
		const char *p[8] = {period,
		                    agent,
		                    b.progs[l->key.prog].id,
		                    l->key.code == 'S' ? "SALE" : "TALK",
		                    rate_s,
		                    qty,
		                    amount,
		                    count};
		int64_t cents = line_amount(&b, l, qty, sizeof(qty));

		if (l->key.code == 'T' && l->quantity == 0)
			continue; // no talk time: no line
		total_cents += cents;
		snprintf(agent, sizeof(agent), "%" PRId64, l->key.agent);
		snprintf(rate_s, sizeof(rate_s), "%" PRId64 ".%04" PRId64, l->key.rate_e4 / 10000,
		         l->key.rate_e4 % 10000);
		snprintf(amount, sizeof(amount), "%" PRId64 ".%02" PRId64, cents / 100,
		         cents % 100);
		snprintf(count, sizeof(count), "%" PRId64, l->cdrs);
		r = PQexecPrepared(db, "line", 8, p, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			die("insert line", PQresultErrorMessage(r));
		PQclear(r);
		nlines++;
	}
	exec_ok(db, "COMMIT");
	uint64_t t1 = mono_us();

	// Export: the lines as CSV, header first.
	FILE *out = fopen(output != NULL ? output : "/dev/null", "w");
	size_t exported = 0;

	if (out == NULL)
		die("export", output);
	r = query(db,
	          "SELECT agent_id, program, code, rate, quantity, amount, cdr_count"
	          " FROM bench_naive.pay_lines WHERE period = $1::date"
	          " ORDER BY agent_id, program, code, rate",
	          1, p1);
	fprintf(out, "period,agent_id,program,code,rate,quantity,amount,currency,cdr_count\n");
	for (int i = 0; i < PQntuples(r); i++, exported++)
		fprintf(out, "%s,%s,%s,%s,%s,%s,%s,USD,%s\n", period, PQgetvalue(r, i, 0),
		        PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
		        PQgetvalue(r, i, 4), PQgetvalue(r, i, 5), PQgetvalue(r, i, 6));
	PQclear(r);
	if (fclose(out) != 0)
		die("export", "cannot write the file");
	uint64_t t2 = mono_us();

	// ringbid's own figure for the same period, when it has closed it.
	r = query(db,
	          "SELECT sum(amount)::text FROM billing.pay_lines WHERE period = $1::date"
	          " AND code IN ('TALK', 'SALE') AND original_period IS NULL",
	          1, p1);
	if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
		ringbid_total = strdup(PQgetvalue(r, 0, 0));
	PQclear(r);
	PQfinish(db);

	char total[40];
	snprintf(total, sizeof(total), "%" PRId64 ".%02" PRId64, total_cents / 100,
	         total_cents % 100);
	printf("{\"cdrs\":%zu,\"period\":\"%s\",\"close_ms\":%.0f,\"export_ms\":%.0f,"
	       "\"lines\":%zu,\"export_lines\":%zu,\"total\":\"%s\",\"ringbid_total\":%s%s%s,"
	       "\"totals_match\":%s}\n",
	       cdrs, period, (double)(t1 - t0) / 1000.0, (double)(t2 - t1) / 1000.0, nlines,
	       exported + 1, total, ringbid_total ? "\"" : "",
	       ringbid_total ? ringbid_total : "null", ringbid_total ? "\"" : "",
	       ringbid_total == NULL                          ? "null"
	       : parse_e4(ringbid_total) == total_cents * 100 ? "true"
	                                                      : "false");
	line *l, *tmp;
	HASH_ITER(hh, b.lines, l, tmp)
	{
		HASH_DEL(b.lines, l);
		free(l);
	}
	free(b.rates);
	free(ringbid_total);
	return 0;
}

int main(int argc, char **argv)
{
	int rc = 2;

	if (argc >= 2 && !strcmp(argv[1], "ingest"))
		rc = cmd_ingest(argc - 2, argv + 2);
	else if (argc >= 2 && !strcmp(argv[1], "payroll"))
		rc = cmd_payroll(argc - 2, argv + 2);
	if (rc == 2)
		fprintf(stderr,
		        "usage: billing_naive ingest --cdrs N [--conns K] [--agent-base ID]"
		        " [--program ID]\n"
		        "       billing_naive payroll --period YYYY-MM-DD [--output FILE]\n");
	return rc;
}
