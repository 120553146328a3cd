// The auction's side of its two links: decoding, checking and answering Envelopes from presence
// and the broker, feeding the market, and sending its Matches. No sockets here: main.c moves
// the bytes, so the protocol can be driven directly by tests and benchmarks.
#ifndef AUCTION_LINK_H
#define AUCTION_LINK_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <nng/nng.h>

#include "market.h"

typedef enum {
	AUCTION_LINK_PRESENCE, // presence dials the auction: AgentUpdate, AgentSnapshot
	AUCTION_LINK_BROKER,   // the auction dials the broker: Enqueue, Dequeue; Match back
} auction_link_id;

typedef struct auction auction;

// Sends msg on link. Takes msg always (frees it on failure). Returns 0 or a code. A message for
// one presence connection carries that connection's pipe (nng_msg_get_pipe): the presence link
// is polyamorous, one connection per presence instance.
typedef int (*auction_send_fn)(void *arg, auction_link_id link, nng_msg *msg);

// The highest presence_id an Envelope may carry (RINGBID_PRESENCE_ID is 0..63).
#define AUCTION_PRESENCE_ID_MAX 63

// Creates the auction with an empty market. token is the shared service token every Envelope
// must carry (copied). send carries every outgoing Envelope. Registers the auction's metrics
// the first time. On success *out is the caller's (auction_free). Returns 0, RB_EINVAL,
// RB_ENOMEM.
int auction_new(const char *token, auction_send_fn send, void *send_arg, auction **out);
// Frees the auction and its market. NULL is fine.
void auction_free(auction *a);

// Handles one message received on link; buf is only read. Bad input (garbage, over the limit,
// a wrong token, a body that does not belong on this link, an invalid field) is answered with
// an Envelope{error} on the same link, logged and counted, and changes nothing. An ErrorReply
// from the peer is logged and never answered, so that two peers never trade errors forever.
// The message comes from connection 0 of link (see auction_receive_from).
void auction_receive(auction *a, auction_link_id link, const void *buf, size_t len);
// Likewise from connection peer (the nng pipe id) of link. On the presence link each
// connection speaks for the presence instance named by its Envelopes' presence_id; replies
// (SnapshotRequest, ErrorReply) go back to that connection only.
void auction_receive_from(auction *a, auction_link_id link, uint32_t peer, const void *buf,
                          size_t len);

// Connection 0 of link came up or went down (see auction_peer_event).
void auction_link_event(auction *a, auction_link_id link, bool up);
// Connection peer (an nng pipe id) of link came up or went down. A presence connection that
// comes up is asked for its snapshot; when one goes down, the agents held by its instance leave
// the market (unless another connection speaks for the same instance). Matches are only sent
// while the broker is connected (a matched call is kept, and the broker's Enqueue on connect
// has its Match sent again).
void auction_peer_event(auction *a, auction_link_id link, uint32_t peer, bool up);

// True when the broker and at least one presence connection are there.
bool auction_ready(const auction *a);

// The presence instance holding agent_id's session: the last instance that reported it
// available, while its connection lasts. Returns false (and leaves *presence_id alone) when
// no instance holds the agent.
bool auction_agent_instance(const auction *a, uint64_t agent_id, uint32_t *presence_id);
// Presence connections up now.
size_t auction_presence_peers(const auction *a);

// Once a second: the reservation backstop, forgotten calls, unused queues, gauges.
void auction_janitor(auction *a);

// The market, for inspection (tests, benchmarks). Owned by the auction.
market *auction_market(auction *a);

#endif
