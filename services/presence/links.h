// Presence's service links: to the broker (offers in, results out) and to the auction
// (availability out, snapshot on request). Both are pair1 streams that presence dials.
#ifndef PRESENCE_LINKS_H
#define PRESENCE_LINKS_H
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "agent.h"

typedef struct presence_links presence_links;

// The highest RINGBID_PRESENCE_ID: instances of one installation are numbered 0..63.
#define PRESENCE_INSTANCE_MAX 63

// Creates both links for core; token is the shared service token (copied); presence_id is this
// instance's number (0..PRESENCE_INSTANCE_MAX), set on every Envelope sent so that the broker and
// the auction route each agent's messages to the instance holding its session. after(arg) runs
// after every message or connection event has been handled. On success *out is the caller's
// (presence_links_free); on failure nothing is left allocated. Returns 0, RB_EINVAL,
// RB_ETOOBIG (token), RB_ENOMEM or a bus error.
int presence_links_new(uv_loop_t *loop, presence_core *core, const char *token,
                       uint32_t presence_id, void (*after)(void *arg), void *arg,
                       presence_links **out);
// Dials the broker and the auction; nng redials with backoff for as long as the links live.
int presence_links_dial(presence_links *l, const char *broker_url, const char *auction_url);
// Sends e with the service token (presence_ops.broker / presence_ops.auction). Updates for
// the auction are dropped while it is not connected: it gets a snapshot when it connects.
void presence_links_to_broker(presence_links *l, const Ringbid__Envelope *e);
void presence_links_to_auction(presence_links *l, const Ringbid__Envelope *e);
bool presence_links_broker_up(const presence_links *l);
bool presence_links_auction_up(const presence_links *l);
// Every second: PresenceStats to the broker (also sent the moment the broker link comes up,
// so that the broker learns at once which instance the connection speaks for).
void presence_links_janitor(presence_links *l);
// Closes both links. NULL is fine. Run the loop afterwards.
void presence_links_free(presence_links *l);

#endif
