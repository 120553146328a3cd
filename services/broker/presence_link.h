// The broker's presence link with several presence instances: which connection speaks for
// which instance, which instance holds each agent's session, and the messages routed by it.
#ifndef BROKER_PRESENCE_LINK_H
#define BROKER_PRESENCE_LINK_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <nng/nng.h>

#include "broker.h"
#include "ringbid.pb-c.h"

// --- bookkeeping (implemented in links.c; one broker per process) ---------------------------

// Forgets every connection and agent; instances is RINGBID_PRESENCE_INSTANCES (1..64): with
// one instance, an agent whose instance is not known yet (after a broker restart) is on
// instance 0, as it can only be.
void broker_presence_reset(uint32_t instances);
// Frees what the bookkeeping holds. Safe to call twice.
void broker_presence_fini(void);
// After the journal's replay: each call at an agent places its agent at the instance
// journaled with the call (as a Match would).
void broker_presence_restored(const broker_book *book);
// A fresh CallSync id: never 0, growing, and unlike the ids of an earlier broker process.
uint64_t broker_presence_sync_id(void);
// Connection pipe sent an Envelope naming presence_id. Returns 1 when this is the first word
// of that connection (its instance is known from now on: time for its CallSync), 0 when it was
// known already, RB_EINVAL for an id outside 0..BROKER_PRESENCE_ID_MAX or a connection that
// named another instance before (nothing changed), RB_ENOMEM.
int broker_presence_heard(uint32_t pipe, uint32_t presence_id);
// Connection pipe is gone: its instance's stats no longer count.
void broker_presence_gone(uint32_t pipe);
// The connection of instance presence_id, 0 when none is up (the newest when two are).
uint32_t broker_presence_pipe_of(uint32_t presence_id);
// The instance a connection speaks for; false when it has not said yet.
bool broker_presence_instance_of(uint32_t pipe, uint32_t *presence_id);
// Records that agent_id's session is on presence_id. sure: the auction's Match says so (it
// replaces what was known); otherwise a presence instance spoke of the agent, which is taken
// only when nothing is known of it (a broker restart forgets it).
void broker_presence_agent_at(uint64_t agent_id, uint32_t presence_id, bool sure);
// The instance holding agent_id; false when unknown (with one instance: 0, true).
bool broker_presence_agent_instance(uint64_t agent_id, uint32_t *presence_id);
// Up to max connections a message about agent_id goes to: its instance's connection; when its
// instance is not known, every identified connection (only OfferCancel and CallEnded are sent
// this way: an instance that does not hold the offer or call ignores them). Returns how many.
size_t broker_presence_targets(uint64_t agent_id, uint32_t *pipes, size_t max);
// The latest PresenceStats of connection pipe (counts by AgentState, n entries).
void broker_presence_stats(uint32_t pipe, const uint32_t *counts, size_t n);
// Sums the latest stats of every connection into out (n entries). False when none reported.
bool broker_presence_stats_sum(uint32_t *out, size_t n);

// --- routing (links.c) ----------------------------------------------------------------------

// One chunk of a CallSync, valid during the call only. Returns 0, or a code to stop the sync.
typedef int (*broker_sync_emit_fn)(const Ringbid__CallSync *cs, void *arg);
// The CallSync of presence instance presence_id: every OFFERED and CONNECTED call whose newest
// offer was made at that instance, in chunks of at most chunk calls, each carrying sync_id,
// the first marked first and the last marked last (a single chunk with both marks when there
// are none). emit is called once per chunk, in order; when it returns a code, no further chunk
// is built, so the instance never sees the last mark and withdraws nothing. *count (may be
// NULL) gets the calls of the chunks emitted. Returns 0, RB_ENOMEM (nothing emitted) or emit's
// code.
int broker_presence_call_sync(broker *b, uint32_t presence_id, uint64_t sync_id, size_t chunk,
                              broker_sync_emit_fn emit, void *arg, size_t *count);

// Addresses msg, the packed env for the presence link, to the instance it concerns (the pipe
// set on msg): an OfferCancel or CallEnded to the instance where the call's newest offer went
// to that agent (broker_call_presence), any other message about an agent by where the agent
// is (broker_presence_targets), an answer back to the connection being handled. Returns 0:
// msg carries its pipe, send it as usual; 1: msg was taken here (freed because no connection
// is there for it). Copies for further instances are sent here, after the journal when gated.
int broker_presence_route(broker *b, const Ringbid__Envelope *env, nng_msg *msg, bool gated);
// What env, a message for the presence link, is about: true for a message about an agent
// (Offer, OfferCancel, CallEnded, CallConnected), with *agent_id and, where it names one,
// *call_id (else NULL; borrowed from env); false for a CallSync or an answer (*agent_id 0).
// *sync: a CallSync chunk.
bool broker_presence_about(const Ringbid__Envelope *env, uint64_t *agent_id, const char **call_id,
                           bool *sync);
// The socket for msg once broker_presence_route has set its pipe: the one socket when there is
// one presence instance, else the socket of the instance that connection speaks for (or of the
// connection whose message is being answered). NULL: that connection is gone; msg stays the
// caller's.
rb_bus *broker_presence_bus(broker *b, nng_msg *msg);
// A Match from the auction, before the broker acts on it: notes where the agent is. Returns
// false when the Match was dealt with here because its instance has no connection (the agent
// is released and the call stays in line, as if the offer had been lost).
bool broker_presence_match(broker *b, const Ringbid__Match *m);

#endif
