// Program settings the broker needs (skills, timers, priority, exploration share), loaded from
// PostgreSQL and kept fresh by LISTEN ringbid_roster.
#ifndef BROKER_PROGRAMS_H
#define BROKER_PROGRAMS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uthash.h>
#include <uv.h>
#include "call.h"
#include "rb_db.h"

#define BROKER_LOOKUPS_MAX 64 // unknown-program lookups in flight at once

typedef struct broker_program {
	char id[BROKER_ID_MAX + 1];
	char **skills; // sorted, unique; owned
	size_t nskills;
	broker_limits limits;
	int32_t priority;
	double explore_share; // 0..1: the share of calls routed for exploration (DESIGN §3)
	UT_hash_handle hh;
} broker_program;

typedef struct broker_programs broker_programs;
// Told after the table changed: a full load (id NULL) or one program (id).
typedef void (*broker_programs_fn)(broker_programs *p, const char *id, void *arg);
// The answer to broker_programs_lookup: found (0, prog valid during the call only), unknown
// (RB_ENOTFOUND), or the database could not say (RB_EDB, RB_ECLOSED).
typedef void (*broker_lookup_fn)(int err, const broker_program *prog, void *arg);

struct broker_programs {
	broker_program *by_id;
	uv_loop_t *loop;
	rb_db *db;
	uv_timer_t retry; // a failed full load is tried again
	bool timer_init;
	bool loaded;  // a full load has succeeded
	bool loading; // a full load is in flight
	bool reload;  // another full load is wanted once this one ends
	int lookups;  // single-program queries in flight
	bool closing;
	broker_programs_fn changed;
	void *changed_arg;
};

void broker_programs_init(broker_programs *p);
// Connects to conninfo on loop, loads every program and follows changes. Returns 0 or a code.
int broker_programs_start(broker_programs *p, uv_loop_t *loop, const char *conninfo);
void broker_programs_on_change(broker_programs *p, broker_programs_fn fn, void *arg);
// Closes the database connection and frees the table. Run the loop afterwards.
void broker_programs_fini(broker_programs *p);

const broker_program *broker_programs_find(const broker_programs *p, const char *id);
// The program's limits, or the schema's defaults for a program no longer known.
void broker_programs_limits(const broker_programs *p, const char *id, broker_limits *out);
bool broker_programs_ready(const broker_programs *p);

// Asks the database for one program now (one just added, whose NOTIFY has not come yet). fn is
// called exactly once on the loop, never from inside this call. Returns 0, or RB_EBUSY (too
// many lookups in flight), RB_ECLOSED, RB_ENOMEM without calling fn.
int broker_programs_lookup(broker_programs *p, const char *id, broker_lookup_fn fn, void *arg);

// One row of roster.programs as PostgreSQL prints its values (text; NULL for SQL NULL).
typedef struct broker_program_row {
	const char *id, *skills, *ring, *wrap, *max_wait, *max_talk, *priority;
	const char *explore_share; // numeric(4,3) text, "0.200"
} broker_program_row;

// Sets one program from its row. Replaces an existing one. Returns 0, RB_EINVAL (a value
// missing or out of range, a bad id or skill), RB_ENOMEM.
int broker_programs_put(broker_programs *p, const broker_program_row *row);
void broker_programs_remove(broker_programs *p, const char *id);

// Parses a PostgreSQL text[] literal ('{a,b}', '{"a b","c\"d"}', '{}'); NULL elements are
// skipped. On success *out is the caller's (broker_skills_free). Returns 0, RB_EINVAL
// (malformed, nested), RB_ETOOBIG (more than max elements or an element over 1 KiB), RB_ENOMEM.
int broker_pg_text_array(const char *text, size_t max, char ***out, size_t *n);

#endif
