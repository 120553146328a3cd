// The broker service's shared state and the functions its files offer one another.
#ifndef BROKER_H
#define BROKER_H
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "call.h"
#include "journal.h"
#include "kpi.h"
#include "outbox.h"
#include "outcomes.h"
#include "programs.h"
#include "rb_bus.h"
#include "rb_metrics.h"
#include "rb_svc.h"
#include "ringbid.pb-c.h"

#define BROKER_ENDED_KEEP_US    (3600ull * 1000000u) // ended calls stay queryable this long
#define BROKER_ENDED_MAX        200000               // ... but never more than this many
#define BROKER_REQUEUE_AFTER_US 1000000u             // janitor re-sends Enqueue past this
#define BROKER_OFFER_ID_BLOCK   1024                 // offer ids reserved per journal record
#define BROKER_POLL_MAX_MS      30000                // longest CallQuery wait
#define BROKER_POLLS_MAX        20000                // CallQuery long polls held at once
#define BROKER_SYNC_CHUNK       10000                // AgentCalls per CallSync message
#define BROKER_DRAIN_MS         5000                 // SIGTERM: longest wait for the journal

typedef enum {
	BROKER_LINK_CALLS,
	BROKER_LINK_AUCTION,
	BROKER_LINK_PRESENCE,
	BROKER_LINK_BILLING,
	BROKER_NLINKS,
} broker_link;

typedef struct broker_metrics {
	rb_metric *arrived, *answered, *abandoned, *overflow, *completed;
	rb_metric *waiting, *offering, *connected, *outbox, *cdr_lag;
	rb_metric *answer_delay;
	rb_metric *journal_bytes, *journal_writable;
	rb_metric *refused[BROKER_NLINKS];
} broker_metrics;

typedef struct broker_poll broker_poll;

#define BROKER_PRESENCE_INSTANCES 64 // presence instances 0..BROKER_PRESENCE_ID_MAX

typedef struct broker {
	rb_svc svc;
	broker_book book;
	broker_journal *journal;
	broker_outbox outbox;
	broker_outcomes outcomes; // RecordOutcomes waiting for billing
	broker_programs programs;
	broker_kpi kpi;
	broker_metrics m;
	rb_bus *api, *auction, *billing;
	// The presence link: one plain pair socket per presence instance, presence[i] for
	// instance i (RINGBID_PRESENCE_INSTANCES of them), so that a send waits for a slow
	// instance instead of being dropped (docs/delivery.md).
	rb_bus *presence[BROKER_PRESENCE_INSTANCES];
	uint32_t npresence;
	uint64_t grace_ms;
	uint64_t next_offer_id;     // the next offer id to hand out
	uint64_t offer_id_reserved; // ids below this may have been used (journaled)
	uint64_t call_seq;          // for ids the broker assigns
	bool have_agents;           // presence has reported since its link came up
	uint32_t agents[BROKER_CALL_NSTATES];
	// Offer ids below this are covered by a reservation known to be on disk: an Offer with
	// one may leave before its own record is durable (0 after a start, until one is).
	uint64_t offer_id_durable;
	// Messages to presence waiting for the journal (broker_send's and links.c's copies): the
	// CallSync chunks, and per agent those about it. An Offer queues behind a held message
	// about its agent, or a held CallSync, rather than overtake it.
	uint32_t presence_gated_syncs;
	struct broker_held *held; // per agent (core.c)
	bool started;
	bool stopping;
	bool journal_ok;
	broker_poll *polls; // every CallQuery held
	int npolls;
	uv_timer_t stop_timer;
	bool stop_timer_init;
	// Calls to enqueue again shortly (broker_requeue_soon), by id: a call may end meanwhile.
	uv_timer_t requeue_timer;
	bool requeue_timer_init;
	char (*requeue)[BROKER_ID_MAX + 1];
	size_t nrequeue, caprequeue;
	bool drained; // stopping: the journal has everything
	bool closed;
	char journal_path[PATH_MAX];
} broker;

// core.c
// Sets up the book, KPIs, metrics and the outbox. Returns 0 or a code.
int broker_core_init(broker *b);
// Journal replay: one record (broker_journal_replay_fn).
int broker_core_replay(const Ringbid__JournalEntry *e, void *arg);
// After replay, before the loop: KPIs, metrics and the offer counter from what was read.
void broker_core_replayed(broker *b);
// Compaction (broker_journal_snapshot_fn, arg the broker): the offer counter, every call in
// the book and every CDR billing has not acknowledged.
int broker_core_snapshot(broker_journal *j, void *arg);
// Attaches the journal and the call timers to the loop.
int broker_core_start(broker *b);
// Applies one event to c, journals the result, re-arms its timer, and sends what the
// transition asks for once the journal has it on disk. Returns 0 or the transition's refusal
// (nothing changed).
int broker_change(broker *b, broker_call *c, broker_event_kind kind, uint64_t agent_id,
                  uint64_t offer_id, const broker_decision *d);
// A fresh offer id (unique across restarts). Returns 0 or a code.
int broker_offer_id(broker *b, uint64_t *out);
// Sends env (token added) on link once everything journaled so far is durable.
void broker_send(broker *b, broker_link link, Ringbid__Envelope *env);
// Sends env (token added) on link now, ahead of the journal: for answers that change nothing,
// and for what may safely outrun the disk (Enqueue, Dequeue, the Offer; docs/delivery.md).
void broker_send_now(broker *b, broker_link link, Ringbid__Envelope *env);
// Counts a message to presence held for the journal (delta +1) or released (-1): about
// agent_id (0: none), or a CallSync chunk (sync).
void broker_presence_hold(broker *b, uint64_t agent_id, bool sync, int delta);
// How many held messages an Offer to agent_id must not overtake: those about the agent and
// every CallSync chunk.
uint32_t broker_presence_held(const broker *b, uint64_t agent_id);
// Enqueues c again in BROKER_REQUEUE_SOON_MS if it is still waiting then: for a call whose
// match was released because the broker still had the agent on its last call, so that a
// disagreement that lasts (a hang-up still on its way) is paced without leaving the caller
// to the janitor's next round, a second away.
void broker_requeue_soon(broker *b, const broker_call *c);
void broker_send_enqueue(broker *b, const broker_call *c);
void broker_send_dequeue(broker *b, const char *call_id, uint64_t release_agent);
void broker_send_call_ended(broker *b, const char *call_id, const char *program, uint64_t agent_id);
// Tells c's presence instance that c (CONNECTED) is connected to its agent by its offer, once
// everything journaled so far is durable: presence shows the call connected only then. Also
// for a repeated ACCEPTED of that offer (presence takes a repeat as a no-op). c stays the
// caller's; nothing is kept.
void broker_send_call_connected(broker *b, const broker_call *c);
// A message on link was refused (bad bytes, token, field).
void broker_refused(broker *b, broker_link link);
void broker_kpi_snapshot(broker *b, broker_kpi_now *now);
void broker_update_gauges(broker *b);
void broker_refresh_ready(broker *b);
void broker_janitor(broker *b);
// SIGTERM: refuses new work, waits for the journal and for billing's answers to outcomes
// (answering those still waiting at the deadline with RB_EBUSY), then closes everything.
void broker_stop(broker *b);
// Closes every handle the broker owns (idempotent).
void broker_close(broker *b);
// After the loop has ended: frees the memory left.
void broker_fini(broker *b);

// api.c
int broker_api_start(broker *b, const char *url);
// The call's version changed: answers the long polls it satisfies.
void broker_api_changed(broker *b, broker_call *c);
// The call is about to be dropped: answers its long polls now.
void broker_api_evicted(broker *b, broker_call *c);
// Answers every held long poll (shutdown).
void broker_api_flush_polls(broker *b);
// GET /status: the KPIs as JSON.
void broker_api_status_http(rb_http_req *req, void *arg);

// links.c
int broker_links_start(broker *b, const char *auction_url, const char *presence_url,
                       const char *billing_url);

#endif
