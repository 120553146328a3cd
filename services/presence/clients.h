// The agent link: agents' clients connect here (pair1 polyamorous); requests are validated,
// logins checked off the loop with a slowdown after repeated failures, and every message to a
// client goes to that client's connection only.
#ifndef PRESENCE_CLIENTS_H
#define PRESENCE_CLIENTS_H
#include <stdint.h>
#include <uv.h>

#include "agent.h"

#define PRESENCE_SECRET_MAX         256
#define PRESENCE_LOGINS_PENDING_MAX 256 // secret checks queued at once, over all clients

typedef struct presence_clients presence_clients;

// Creates the agent link on loop for core. max_fails: failed logins in a row before slowing
// down (per agent id and per connection). after(arg) runs after every message or connection
// event has been handled. On success *out is the caller's (presence_clients_free).
int presence_clients_new(uv_loop_t *loop, presence_core *core, uint32_t max_fails,
                         void (*after)(void *arg), void *arg, presence_clients **out);
// True when url is a loopback or local address, the only place the agent link may run without
// TLS (unless RINGBID_PRESENCE_ALLOW_PLAINTEXT says a proxy terminates TLS in front).
bool presence_clients_loopback(const char *url);
// Listens on url. A tls+tcp:// url needs cert_file and key_file (PEM files: the certificate
// chain and its unencrypted private key, ECDSA for mbedTLS 2.28); they are ignored otherwise.
// Returns 0 or a code (RB_EBUSY: address in use, RB_ECONFIG: TLS files missing or unusable).
int presence_clients_listen(presence_clients *cl, const char *url, const char *cert_file,
                            const char *key_file);
// Sends m to the client on pipe only (a presence_ops.client).
void presence_clients_send(presence_clients *cl, uint32_t pipe, const Ringbid__AgentMsg *m);
// An agent's EarningsQuery (session checked): fn answers later with presence_clients_send to
// pipe with seq. Without fn the query is refused.
typedef void (*presence_earnings_fn)(void *arg, uint32_t pipe, uint64_t seq, uint64_t agent_id);
void presence_clients_on_earnings(presence_clients *cl, presence_earnings_fn fn, void *arg);
// Answers an earnings query that could not be computed.
void presence_clients_earnings_failed(presence_clients *cl, uint32_t pipe, uint64_t seq,
                                      uint64_t agent_id, int code, const char *text);
// Periodic work: forgets stale login failures.
void presence_clients_janitor(presence_clients *cl);
// Connected clients.
int presence_clients_peers(const presence_clients *cl);
// Closes the link. Secret checks still running finish and are dropped. NULL is fine. Run the
// loop afterwards.
void presence_clients_free(presence_clients *cl);

#endif
