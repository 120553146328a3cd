// What presence writes and reads about money: agents' sessions in presence.sessions (so that
// billing recognises an agent's token) and an agent's own earnings, all through rb_db.
#ifndef PRESENCE_MONEY_H
#define PRESENCE_MONEY_H
#include <stdbool.h>
#include <stdint.h>
#include "clients.h"
#include "rb_db.h"
#include "rb_secret.h"

#define PRESENCE_TZ_MAX 64

typedef struct presence_money {
	rb_db *db; // the roster's connection; NULL while stopping
	presence_clients *clients;
	char tz[PRESENCE_TZ_MAX + 1];
	bool swept;          // sessions of an earlier presence removed (once per process)
	uint64_t started_us; // this process's start: older rows belong to an earlier presence
} presence_money;

// Prepares m (embedded). tz (RINGBID_PAY_TZ) is copied. Returns 0 or RB_EINVAL (tz empty or long).
int presence_money_init(presence_money *m, rb_db *db, presence_clients *clients, const char *tz);
// Once the database is up (called from the janitor): sessions written before this process
// started are removed, since their tokens died with the presence that made them.
void presence_money_db_up(presence_money *m);
// A presence_ops.session: queues the insert or delete; never blocks.
void presence_money_session(presence_money *m, uint64_t agent_id, const uint8_t hash[RB_TOKEN_HASH],
                            uint64_t expires_us, bool open);
// A presence_earnings_fn: computes the agent's figures in SQL and answers the client.
void presence_money_earnings(presence_money *m, uint32_t pipe, uint64_t seq, uint64_t agent_id);
// Periodic work: expired session rows go.
void presence_money_janitor(presence_money *m);

#endif
