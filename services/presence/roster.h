// The agent roster from PostgreSQL (roster.agents), kept current through LISTEN ringbid_roster.
#ifndef PRESENCE_ROSTER_H
#define PRESENCE_ROSTER_H
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "agent.h"
#include "rb_db.h"

typedef struct presence_roster presence_roster;

// Connects to conninfo without blocking, loads every agent into core once connected (and again
// after every reconnect, since notifications may have been missed meanwhile) and reloads an
// agent when its row changes ('agent:<id>'). After each full load, and on the notification
// 'scores', it loads billing.presence_scores (overall and program scores) into core, which
// tells the auction about every agent whose scores changed. changed(arg) runs after each
// roster load that changed something (for readiness). On success *out is the caller's
// (presence_roster_free).
int presence_roster_new(uv_loop_t *loop, presence_core *core, const char *conninfo,
                        void (*changed)(void *arg), void *arg, presence_roster **out);
// True while the database connection is up.
bool presence_roster_connected(const presence_roster *r);
// Closes the connection; the memory goes once libuv released the handles (run the loop).
// NULL is fine.
void presence_roster_free(presence_roster *r);
// The roster's connection, shared for presence's other queries (sessions, earnings); owned by r.
rb_db *presence_roster_db(presence_roster *r);

// Parses a PostgreSQL text[] in its text output form ("{a,b,\"c d\"}", with an optional
// "[1:2]=" bounds prefix). NULL elements are skipped. On success *out (n entries, each a
// NUL-terminated string) is the caller's: free with presence_strv_free. Returns 0, RB_EINVAL
// (malformed or nested) or RB_ENOMEM.
int presence_parse_text_array(const char *text, char ***out, size_t *n);
void presence_strv_free(char **v, size_t n);

// Parses a score as PostgreSQL prints a numeric ("87.50"): finite, within 0..100. Returns 0
// and *out, or RB_EINVAL.
int presence_parse_score(const char *text, double *out);

// Parses an agent id notification payload "agent:<id>". Returns 0 and *id (> 0), or
// RB_EINVAL for anything else (other payloads are not about agents).
int presence_parse_agent_payload(const char *payload, uint64_t *id);

#endif
