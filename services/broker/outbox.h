// The CDR outbox: every ended call's CDR, kept (and journaled) until billing acknowledges it,
// and the sender that delivers them in batches over req/rep.
#ifndef BROKER_OUTBOX_H
#define BROKER_OUTBOX_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <uthash.h>
#include <uv.h>
#include "call.h"
#include "journal.h"
#include "rb_bus.h"
#include "ringbid.pb-c.h"

#define BROKER_CDR_BATCH      500         // CDRs per request
// A batch smaller than BROKER_CDR_BATCH waits until its oldest CDR has been sendable this long:
// billing's cost per batch (one statement and one commit) is many times its cost per CDR, so at
// a few hundred calls a second one batch per call would cost the database more than the calls.
#define BROKER_CDR_LINGER_MS 100
#define BROKER_CDR_TIMEOUT_MS 5000        // one request's deadline
#define BROKER_CDR_RETRY_MS   1000        // after an error or a timeout
#define BROKER_CDR_WARN_MS    (60 * 1000) // billing away: one warning per minute

typedef struct broker_cdr broker_cdr;
struct broker_cdr {
	char id[BROKER_ID_MAX + 1]; // cdr_id = call_id
	char program[BROKER_ID_MAX + 1];
	uint64_t agent_id, arrived_us, offered_us, answered_us, ended_us, talk_s;
	int disposition;
	bool sale, resolved, review, exploratory;
	uint32_t offers;
	// The offer log, kept in its wire form so that a batch is built without allocating.
	Ringbid__CdrOffer *offer_log;   // owned
	Ringbid__CdrOffer **offer_ptrs; // owned, each into offer_log
	size_t noffer_log;
	uint64_t seq;      // order of arrival in the outbox
	uint64_t added_ms; // uv_now when added; 0 when added before the sender started
	UT_hash_handle hh;
	TAILQ_ENTRY(broker_cdr) link;
};

typedef struct broker_outbox broker_outbox;
typedef void (*broker_outbox_fn)(broker_outbox *o, void *arg);

struct broker_outbox {
	broker_cdr *by_id;
	TAILQ_HEAD(broker_cdr_list, broker_cdr) queue; // oldest first
	size_t count;
	uint64_t next_seq;
	uint64_t durable_seq; // CDRs up to this seq are in the journal on disk: they may be sent
	// Sender.
	uv_loop_t *loop;
	rb_bus *bus;
	broker_journal *journal;
	const char *token;
	uv_timer_t retry;
	uv_timer_t linger; // a small batch's wait (BROKER_CDR_LINGER_MS)
	bool timer_init;
	bool inflight;
	bool closing;
	bool failing;
	uint64_t last_warn_ms;
	uint64_t acked_total;
	broker_outbox_fn changed; // count changed
	void *changed_arg;
	broker_outbox_fn refused; // billing answered with garbage
	void *refused_arg;
};

void broker_outbox_init(broker_outbox *o);
void broker_outbox_on_change(broker_outbox *o, broker_outbox_fn fn, void *arg);
void broker_outbox_on_refused(broker_outbox *o, broker_outbox_fn fn, void *arg);

// Adds a copy of cdr (the offer log beyond BROKER_OFFER_LOG_MAX entries is cut to its newest).
// durable: already on disk (replay); otherwise it waits for broker_outbox_durable. Returns 0,
// RB_EEXIST (same id already waiting: kept as is), RB_EINVAL, RB_ENOMEM. *seq_out (may be
// NULL) is its sequence number.
int broker_outbox_add(broker_outbox *o, const Ringbid__Cdr *cdr, bool durable, uint64_t *seq_out);
// Every CDR added up to seq is on disk: sendable.
void broker_outbox_durable(broker_outbox *o, uint64_t seq);
// Billing has it: drops it. Returns 0 or RB_ENOTFOUND.
int broker_outbox_ack(broker_outbox *o, const char *id);
const broker_cdr *broker_outbox_find(const broker_outbox *o, const char *id);
size_t broker_outbox_count(const broker_outbox *o);
// When the oldest CDR billing has not acknowledged ended (UTC microseconds); 0 when none.
uint64_t broker_outbox_oldest_us(const broker_outbox *o);
// Writes every waiting CDR into a compaction snapshot.
int broker_outbox_snapshot(const broker_outbox *o, broker_journal *j);
// A message view of c: strings and the offer log point into c (valid while c is).
void broker_cdr_to_pb(const broker_cdr *c, Ringbid__Cdr *out);

// Starts sending to billing over bus (a REQ bus the caller dialled; stays the caller's).
// Acknowledgements are journaled in journal. token is the service token (must outlive o).
int broker_outbox_start(broker_outbox *o, uv_loop_t *loop, rb_bus *bus, broker_journal *journal,
                        const char *token);
// Sends if nothing is in flight and something is sendable: at once when a full batch is, else
// once the oldest sendable CDR has waited BROKER_CDR_LINGER_MS.
void broker_outbox_kick(broker_outbox *o);
// Stops sending (a request in flight is abandoned: the CDRs stay for the next start).
void broker_outbox_stop(broker_outbox *o);
// Frees every CDR. Call after stop, once the bus is freed.
void broker_outbox_fini(broker_outbox *o);

#endif
