// CDR ingest benchmark: batches of synthetic valid CDRs sent to billing's CDR socket, as the
// broker sends them, measuring how many CDRs per second billing commits end to end.
//
// K sender threads each own a REQ socket (one connection each), so K batches are in flight at
// once; a batch counts when its CdrAck comes back, which billing sends only after the commit.
// Every CDR of a run has a new id (the run id is in it), so each one is a real insert.
#include <inttypes.h>
#include <libpq-fe.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_config.h"
#include "rb_err.h"
#include "rb_pb.h"
#include "rb_time.h"
#include "ringbid.pb-c.h"

#define MAX_INFLIGHT 64
#define MAX_BATCH    5000 // billing refuses larger batches (services/billing/ingest.h)
#define ID_LEN       48

typedef struct sender {
	pthread_t thread;
	nng_socket sock;
	int failed;
} sender;

static const char *program = "bench";
static char url[256], token[160];
static unsigned long long run_id;
static uint64_t n_cdrs = 200000, agent_base = 1, n_agents = 100;
static size_t batch_size = 1000;
static uint64_t base_us; // arrival time of the first CDR
static atomic_uint_fast64_t next_seq, stored, refused, quarantined, batches_done;
static uint64_t *batch_ms; // per batch: round trip in microseconds
static size_t n_batches;

// Fills cdr (and its id buffer) as the broker would for a completed call number seq.
static void make_cdr(uint64_t seq, Ringbid__Cdr *cdr, char *id)
{
	uint64_t talk_s = (seq * 7919) % 601; // 0 .. 600 s, spread
	uint64_t arrived = base_us + seq * 1000;

	ringbid__cdr__init(cdr);
	snprintf(id, ID_LEN, "i%llx-%" PRIu64, run_id, seq);
	cdr->cdr_id = id;
	cdr->call_id = id;
	cdr->program = (char *)program;
	cdr->agent_id = agent_base + seq % n_agents;
	cdr->arrived_us = arrived;
	cdr->offered_us = arrived + 800000;
	cdr->answered_us = arrived + 2000000;
	cdr->ended_us = cdr->answered_us + talk_s * 1000000 + seq % 1000000;
	cdr->talk_s = talk_s;
	cdr->disposition = RINGBID__DISPOSITION__DISP_COMPLETED;
	cdr->sale = seq % 10 == 0;
	cdr->offers = 1;
}

static int send_batch(sender *s, uint64_t first, size_t n)
{
	Ringbid__CdrBatch b = RINGBID__CDR_BATCH__INIT;
	Ringbid__Cdr *cdrs = calloc(n, sizeof(*cdrs));
	Ringbid__Cdr **ptrs = calloc(n, sizeof(*ptrs));
	char *ids = calloc(n, ID_LEN);
	Ringbid__CdrAck *ack = NULL;
	nng_msg *msg = NULL;
	uint64_t t0;
	int rv = -1;

	if (!cdrs || !ptrs || !ids)
		goto out;
	for (size_t i = 0; i < n; i++) {
		make_cdr(first + i, &cdrs[i], ids + i * ID_LEN);
		ptrs[i] = &cdrs[i];
	}
	b.token = token;
	b.n_cdrs = n;
	b.cdrs = ptrs;
	if (rb_pb_pack(&b.base, RB_PB_MAX_SERVICE, &msg) != 0) {
		fprintf(stderr, "cdr_ingest: cannot pack a batch of %zu\n", n);
		goto out;
	}
	t0 = rb_mono_us();
	if ((rv = nng_sendmsg(s->sock, msg, 0)) != 0) {
		nng_msg_free(msg);
		fprintf(stderr, "cdr_ingest: send: %s\n", nng_strerror(rv));
		rv = -1;
		goto out;
	}
	if ((rv = nng_recvmsg(s->sock, &msg, 0)) != 0) {
		fprintf(stderr, "cdr_ingest: receive: %s\n", nng_strerror(rv));
		rv = -1;
		goto out;
	}
	rv = rb_pb_unpack_msg(&ringbid__cdr_ack__descriptor, msg, RB_PB_MAX_SERVICE,
	                      (ProtobufCMessage **)&ack);
	nng_msg_free(msg);
	if (rv != 0) {
		fprintf(stderr, "cdr_ingest: undecodable acknowledgement\n");
		rv = -1;
		goto out;
	}
	if (ack->error) {
		fprintf(stderr, "cdr_ingest: billing refused the batch: %d %s\n", ack->error->code,
		        ack->error->message ? ack->error->message : "");
		rv = -1;
		goto out;
	}
	atomic_fetch_add(&stored, ack->n_stored);
	atomic_fetch_add(&refused, ack->n_refused);
	atomic_fetch_add(&quarantined, ack->n_quarantined);
	{
		uint64_t k = atomic_fetch_add(&batches_done, 1);

		if (k < n_batches)
			batch_ms[k] = rb_mono_us() - t0;
	}
	rv = 0;
out:
	rb_pb_free(ack ? &ack->base : NULL);
	free(ids);
	free(ptrs);
	free(cdrs);
	return rv;
}

static void *sender_main(void *arg)
{
	sender *s = arg;

	for (;;) {
		uint64_t first = atomic_fetch_add(&next_seq, batch_size);
		size_t n;

		if (first >= n_cdrs)
			break;
		n = n_cdrs - first < batch_size ? (size_t)(n_cdrs - first) : batch_size;
		if (send_batch(s, first, n) != 0) {
			s->failed = 1;
			break;
		}
	}
	return NULL;
}

static void die_pq(PGconn *db, const char *what)
{
	fprintf(stderr, "cdr_ingest: %s: %s", what, PQerrorMessage(db));
	PQfinish(db);
	exit(1);
}

// Billing stores a CDR only for a known program and agent: create them. The agents cannot log
// in (their secret hash is of a random secret nobody keeps).
static void setup_roster(const char *conninfo)
{
	char hash[crypto_pwhash_STRBYTES], secret[33], first[32], count[32];
	unsigned char raw[16];
	const char *params[4] = {program, hash, first, count};
	PGconn *db = PQconnectdb(conninfo);
	PGresult *r;

	if (PQstatus(db) != CONNECTION_OK)
		die_pq(db, "connect");
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2hex(secret, sizeof(secret), raw, sizeof(raw));
	if (crypto_pwhash_str(hash, secret, strlen(secret), crypto_pwhash_OPSLIMIT_MIN,
	                      crypto_pwhash_MEMLIMIT_MIN) != 0) {
		fprintf(stderr, "cdr_ingest: hashing failed\n");
		exit(1);
	}
	snprintf(first, sizeof(first), "%" PRIu64, agent_base);
	snprintf(count, sizeof(count), "%" PRIu64, n_agents);
	r = PQexecParams(db,
	                 "INSERT INTO roster.programs (id, name) VALUES ($1, 'benchmark')"
	                 " ON CONFLICT (id) DO NOTHING",
	                 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die_pq(db, "program");
	PQclear(r);
	r = PQexecParams(db,
	                 "INSERT INTO roster.agents (id, name, secret_hash)"
	                 " SELECT g, 'bench agent ' || g, $1"
	                 " FROM generate_series($2::bigint, $2::bigint + $3::bigint - 1) g"
	                 " ON CONFLICT (id) DO NOTHING",
	                 3, NULL, params + 1, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die_pq(db, "agents");
	PQclear(r);
	PQfinish(db);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double pct_ms(const uint64_t *v, size_t n, double p)
{
	size_t i;

	if (n == 0)
		return 0;
	i = (size_t)(p * (double)(n - 1) + 0.5);
	return (double)v[i] / 1000.0;
}

static void usage(void)
{
	fputs("usage: cdr_ingest [--cdrs N] [--batch B] [--inflight K] [--agents A]\n"
	      "                  [--agent-base ID] [--program ID] [--skip-setup]\n"
	      "\n"
	      "Sends N synthetic completed-call CDRs (default 200000) to billing's CDR socket\n"
	      "(RINGBID_BILLING_URL, else the port from RINGBID_PORT_BASE) in batches of B "
	      "(default\n"
	      "1000, at most 5000) with K batches in flight (default 4), using agents\n"
	      "ID .. ID+A-1 (default 1 .. 100) of program ID (default bench), created first "
	      "unless\n"
	      "--skip-setup. Prints one JSON line: CDRs committed per second and batch round "
	      "trips.\n",
	      stderr);
}

static uint64_t arg_u64(const char *v, uint64_t lo, uint64_t hi, const char *name)
{
	char *end;
	unsigned long long x = v ? strtoull(v, &end, 10) : 0;

	if (!v || *end || x < lo || x > hi) {
		fprintf(stderr, "cdr_ingest: %s must be %" PRIu64 "..%" PRIu64 "\n", name, lo, hi);
		exit(2);
	}
	return x;
}

int main(int argc, char **argv)
{
	char conninfo[1024];
	sender senders[MAX_INFLIGHT];
	size_t inflight = 4;
	int skip_setup = 0, failed = 0;
	uint64_t t0, elapsed_us;
	double secs;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--cdrs") == 0) {
			n_cdrs = arg_u64(v, 1, 100000000, a), i++;
		} else if (strcmp(a, "--batch") == 0) {
			batch_size = arg_u64(v, 1, MAX_BATCH, a), i++;
		} else if (strcmp(a, "--inflight") == 0) {
			inflight = arg_u64(v, 1, MAX_INFLIGHT, a), i++;
		} else if (strcmp(a, "--agents") == 0) {
			n_agents = arg_u64(v, 1, 1000000, a), i++;
		} else if (strcmp(a, "--agent-base") == 0) {
			agent_base = arg_u64(v, 1, (uint64_t)INT64_MAX / 2, a), i++;
		} else if (strcmp(a, "--program") == 0 && v && rb_valid_id(v, 64)) {
			program = v, i++;
		} else if (strcmp(a, "--skip-setup") == 0) {
			skip_setup = 1;
		} else {
			usage();
			return strcmp(a, "--help") == 0 ? 0 : 2;
		}
	}
	if (sodium_init() < 0)
		return 1;
	rb_config_load_home();
	if (rb_config_url("RINGBID_BILLING_URL", RB_PORT_BILLING_CDRS, url, sizeof(url)) != 0 ||
	    rb_config_service_token(token, sizeof(token)) != 0 ||
	    rb_config_conninfo(conninfo, sizeof(conninfo)) != 0) {
		fprintf(stderr, "cdr_ingest: bad configuration\n");
		return 2;
	}
	randombytes_buf(&run_id, sizeof(run_id));
	run_id &= 0xffffffffffffULL;
	// One past hour, so that every CDR passes billing's time checks and lands in an open
	// pay period.
	base_us = rb_now_us() - 3600ULL * 1000000;
	if (base_us + n_cdrs * 1000 > rb_now_us() - 700ULL * 1000000)
		base_us = rb_now_us() - 700ULL * 1000000 - n_cdrs * 1000;
	if (!skip_setup)
		setup_roster(conninfo);
	n_batches = (size_t)((n_cdrs + batch_size - 1) / batch_size);
	batch_ms = calloc(n_batches, sizeof(*batch_ms));
	if (!batch_ms)
		return 1;
	for (size_t i = 0; i < inflight; i++) {
		int rv;

		senders[i].failed = 0;
		if ((rv = nng_req0_open(&senders[i].sock)) != 0 ||
		    (rv = nng_socket_set_size(senders[i].sock, NNG_OPT_RECVMAXSZ,
		                              RB_PB_MAX_SERVICE)) != 0 ||
		    // A batch that takes long to commit is not resent: the round trip is the
		    // figure.
		    (rv = nng_socket_set_ms(senders[i].sock, NNG_OPT_REQ_RESENDTIME, 600000)) !=
		            0 ||
		    (rv = nng_socket_set_ms(senders[i].sock, NNG_OPT_RECVTIMEO, 120000)) != 0 ||
		    (rv = nng_dial(senders[i].sock, url, NULL, 0)) != 0) {
			fprintf(stderr, "cdr_ingest: %s: %s\n", url, nng_strerror(rv));
			return 1;
		}
	}
	t0 = rb_mono_us();
	for (size_t i = 0; i < inflight; i++)
		pthread_create(&senders[i].thread, NULL, sender_main, &senders[i]);
	for (size_t i = 0; i < inflight; i++) {
		pthread_join(senders[i].thread, NULL);
		failed |= senders[i].failed;
		nng_close(senders[i].sock);
	}
	elapsed_us = rb_mono_us() - t0;
	secs = (double)elapsed_us / 1e6;
	{
		size_t done = atomic_load(&batches_done);

		if (done > n_batches)
			done = n_batches;
		qsort(batch_ms, done, sizeof(*batch_ms), cmp_u64);
		printf("{\"cdrs\":%" PRIu64 ",\"batch\":%zu,\"inflight\":%zu,\"stored\":%" PRIu64
		       ",\"refused\":%" PRIu64 ",\"quarantined\":%" PRIu64
		       ",\"seconds\":%.3f,\"cdrs_per_s\":%.0f,\"batch_p50_ms\":%.2f,"
		       "\"batch_p99_ms\":%.2f,\"batch_max_ms\":%.2f}\n",
		       n_cdrs, batch_size, inflight, (uint64_t)atomic_load(&stored),
		       (uint64_t)atomic_load(&refused), (uint64_t)atomic_load(&quarantined), secs,
		       secs > 0 ? (double)atomic_load(&stored) / secs : 0.0,
		       pct_ms(batch_ms, done, 0.5), pct_ms(batch_ms, done, 0.99),
		       pct_ms(batch_ms, done, 1.0));
	}
	free(batch_ms);
	if (failed || atomic_load(&stored) != n_cdrs) {
		fprintf(stderr, "cdr_ingest: %" PRIu64 " of %" PRIu64 " CDRs committed\n",
		        (uint64_t)atomic_load(&stored), n_cdrs);
		return 1;
	}
	return 0;
}
