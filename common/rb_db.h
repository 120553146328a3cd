// Non-blocking libpq on a libuv loop: queries are queued and run one at a time on one
// connection, its socket watched with uv_poll; the connection is remade with backoff when lost.
#ifndef RB_DB_H
#define RB_DB_H
#include <stdbool.h>
#include <libpq-fe.h>
#include <uv.h>

typedef struct rb_db rb_db;

// A query finished. err 0: res is the result (PGRES_COMMAND_OK or PGRES_TUPLES_OK); err < 0
// (RB_EDB, RB_ECLOSED): res may be NULL or the failed result. res belongs to rb_db and is valid
// only during the callback. sqlstate is "" when unknown.
typedef void (*rb_db_fn)(rb_db *db, int err, const PGresult *res, const char *sqlstate, void *arg);
// A NOTIFY arrived on a channel this connection LISTENs on.
typedef void (*rb_db_notify_fn)(rb_db *db, const char *channel, const char *payload, void *arg);
// The connection came up (again). LISTEN is reissued by rb_db itself.
typedef void (*rb_db_up_fn)(rb_db *db, void *arg);

// Starts connecting to conninfo ("" uses the PG* variables) without blocking. On success *out
// is the caller's (rb_db_free). Returns 0, RB_ECONFIG (conninfo does not parse), RB_ENOMEM.
// A single host name is looked up on libuv's thread pool; a list of hosts ("h1,h2") is left to
// libpq, whose lookups block: give a list only as IP addresses.
int rb_db_new(uv_loop_t *loop, const char *conninfo, rb_db **out);
void rb_db_on_notify(rb_db *db, rb_db_notify_fn fn, void *arg);
void rb_db_on_up(rb_db *db, rb_db_up_fn fn, void *arg);
// LISTENs on channel now and after every reconnect. channel: 1..63 of [A-Za-z0-9_]; RB_EINVAL
// otherwise.
int rb_db_listen(rb_db *db, const char *channel);

// Queues one statement with text parameters ($1..$n; NULL entries are SQL NULL); sql and the
// parameters are copied. fn is called exactly once on the loop, never inside rb_db_query. A query
// that fails because the connection was lost is not retried: the caller decides. Returns 0, or a
// code without calling fn (RB_EINVAL, RB_ECLOSED after rb_db_free, RB_ENOMEM, RB_EBUSY when
// 100000 queries already wait). COPY is not supported.
int rb_db_query(rb_db *db, const char *sql, int nparams, const char *const *params, rb_db_fn fn,
                void *arg);

// True while connected.
bool rb_db_connected(const rb_db *db);
// Queries queued or running.
int rb_db_pending(const rb_db *db);

// Closes the connection; queued queries get RB_ECLOSED. NULL is fine. Run the loop afterwards.
void rb_db_free(rb_db *db);

#endif
