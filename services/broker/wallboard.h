// The live wallboard: a self-contained page and its JSON on the broker's HTTP port, overall and
// per program (agents by state, calls waiting, longest wait, service level, ASA, abandon rate,
// top agents by score).
#ifndef BROKER_WALLBOARD_H
#define BROKER_WALLBOARD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uthash.h>
#include "call.h"
#include "kpi.h"
#include "programs.h"

#define BROKER_WB_TOP_MAX         10   // agents in the overall top list
#define BROKER_WB_TOP_PROGRAM_MAX 5    // agents in a program's top list
#define BROKER_WB_NAME_MAX        1024 // bytes of a program's or agent's name (200 characters)
#define BROKER_WB_TICK_MS         500  // folds ended calls and notices shutdown
#define BROKER_WB_TOP_EVERY_MS    5000 // asks PostgreSQL for names and top agents
#define BROKER_WB_SL_GOAL_PCT     80   // the service level target: 80 % within 20 s

typedef struct broker_wb_agent {
	uint64_t id;
	char *name; // owned
	double score;
} broker_wb_agent;

// One program on the board: its window of outcomes and what the database says about it. The
// live fields are scratch space of broker_wallboard_json.
typedef struct broker_wb_program {
	char id[BROKER_ID_MAX + 1];
	char *name;  // owned; NULL until the database has named it
	bool in_db;  // listed by the latest load
	bool listed; // scratch: shown in the current document
	broker_kpi_window window;
	broker_wb_agent top[BROKER_WB_TOP_PROGRAM_MAX];
	size_t ntop;
	uint32_t waiting, ringing, connected;
	uint64_t oldest_arrived_us;
	broker_kpi_tally live; // answers of calls still connected
	UT_hash_handle hh;
} broker_wb_program;

// What the board knows besides the book: windows per program, the latest names and top lists.
typedef struct broker_wallboard {
	broker_wb_program *programs; // by id
	uint64_t folded_end_us;      // ended calls up to this end time are in the windows
	broker_wb_agent top[BROKER_WB_TOP_MAX];
	size_t ntop;
	uint64_t loaded_us; // when names and top agents were last loaded (0: never)
} broker_wallboard;

void broker_wallboard_init(broker_wallboard *w);
// Frees every program and name. w may be reused after broker_wallboard_init.
void broker_wallboard_fini(broker_wallboard *w);

// Counts the calls that ended since the last fold into their programs' windows; the first fold
// takes every ended call the book holds (replayed history). Returns 0 or RB_ENOMEM (the calls
// not counted are tried again at the next fold).
int broker_wallboard_fold(broker_wallboard *w, broker_book *book, uint64_t now_us);

// Replaces the program names and top lists with nrows rows of 5 text cells each, as the query
// of the board returns them: kind ("p" program, "a" agent), program id ("" for the overall
// list), agent id, name, score (NULL cells where a kind has none). Agents come best first;
// rows past a list's size are ignored. Cells are the caller's. Returns 0; RB_EINVAL (a row is
// malformed: nothing changed); RB_ENOMEM (some of the load applied).
int broker_wallboard_load(broker_wallboard *w, const char *const *cells, size_t nrows,
                          uint64_t now_us);

// The board as a JSON document (docs/wallboard.md): the book's live calls, the windows, the
// known programs and now (time, presence's agents by state). Folds first. On success *out is
// the caller's (free()). Returns 0 or RB_ENOMEM.
int broker_wallboard_json(broker_wallboard *w, broker_book *book, const broker_programs *programs,
                          const broker_kpi_now *now, char **out);

// The page (static storage, NUL-terminated).
const char *broker_wallboard_page(void);

struct broker;
// Adds GET /wallboard and GET /wallboard.json to the broker's HTTP port, connects to
// PostgreSQL for names and top agents, and starts the board's timer. Call after the journal
// is replayed and before rb_svc_run. Everything it opens closes by itself once the broker
// stops. With no HTTP port it does nothing. Returns 0 or a code (nothing left open).
int broker_wallboard_start(struct broker *b);

#endif
