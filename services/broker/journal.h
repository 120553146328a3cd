// The broker's durable journal: framed JournalEntry records, group commit on the thread pool,
// replay at start, compaction into a fresh file.
#ifndef BROKER_JOURNAL_H
#define BROKER_JOURNAL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "ringbid.pb-c.h"

#define BROKER_JOURNAL_MAX_DEFAULT (64ull * 1024 * 1024)
#define BROKER_JOURNAL_RECORD_MAX  (16u * 1024 * 1024) // larger lengths mean a corrupt frame
#define BROKER_JOURNAL_HEADER      8                   // u32 LE length, u32 LE CRC-32C

typedef struct broker_journal broker_journal;

// One record read back at open, in file order. Return 0 to go on; a negative code stops the
// open with that code (reserved for running out of memory: a record the consumer cannot use
// should be logged and skipped).
typedef int (*broker_journal_replay_fn)(const Ringbid__JournalEntry *e, void *arg);
// Compaction: called on the loop to write everything that must survive into the new file,
// through broker_journal_snapshot_add. Returns 0 or a code (the compaction is abandoned).
typedef int (*broker_journal_snapshot_fn)(broker_journal *j, void *arg);
// Everything appended before broker_journal_after was called is on disk (err 0), or the
// journal was closed first (RB_ECLOSED).
typedef void (*broker_journal_done_fn)(int err, void *arg);
// The journal stopped (ok false) or resumed (ok true) being writable.
typedef void (*broker_journal_health_fn)(bool ok, void *arg);

typedef struct broker_journal_replay {
	uint64_t records;   // records handed to the replay function
	uint64_t bytes;     // bytes of good records
	uint64_t cut_bytes; // bytes cut off the end (torn or corrupt tail)
	bool torn;          // the file ended inside a record
	bool corrupt;       // a record failed its CRC or did not decode
} broker_journal_replay;

// Opens (creating it and its directories) the journal at path and replays it through fn,
// blocking; run before the loop starts. A torn or corrupt tail is cut off (a corrupt one is
// first copied to path.corrupt-<time> for inspection). max_bytes: compaction threshold (0:
// default). On success *out is the caller's (broker_journal_free) and *st (may be NULL) says
// what was read. Returns 0, RB_EIO, RB_ENOMEM, or fn's code.
int broker_journal_open(const char *path, uint64_t max_bytes, broker_journal_replay_fn fn,
                        void *arg, broker_journal_replay *st, broker_journal **out);

void broker_journal_on_snapshot(broker_journal *j, broker_journal_snapshot_fn fn, void *arg);
void broker_journal_on_health(broker_journal *j, broker_journal_health_fn fn, void *arg);

// Attaches the journal to loop: appends of each loop turn are written and synced together on
// the thread pool after the turn. Returns 0 or a code.
int broker_journal_start(broker_journal *j, uv_loop_t *loop);

// Appends one record to the current group (copied). Returns 0, RB_ETOOBIG, RB_ENOMEM,
// RB_ECLOSED.
int broker_journal_append(broker_journal *j, const Ringbid__JournalEntry *e);
// Inside a snapshot function only: adds one record to the new file.
int broker_journal_snapshot_add(broker_journal *j, const Ringbid__JournalEntry *e);

// Calls fn once everything appended so far is durable, in the order of registration, never
// from inside this call. Returns 0, or RB_ENOMEM / RB_ECLOSED without calling fn.
int broker_journal_after(broker_journal *j, broker_journal_done_fn fn, void *arg);

// False while writes fail (full disk): new calls must be refused.
bool broker_journal_ok(const broker_journal *j);
// True when nothing is waiting to be written or synced.
bool broker_journal_idle(const broker_journal *j);
// Bytes in the file.
uint64_t broker_journal_size(const broker_journal *j);
// Compacts at the next group even below the threshold.
void broker_journal_compact_soon(broker_journal *j);
// Compactions completed.
uint64_t broker_journal_compactions(const broker_journal *j);

// Closes the journal: waiters still queued get RB_ECLOSED; a write in flight is finished
// first. Frees j once libuv has released its handles (run the loop afterwards if it was
// started). NULL is fine.
void broker_journal_free(broker_journal *j);

// CRC-32C (Castagnoli) of buf, continuing from crc (0 to start).
uint32_t broker_crc32c(uint32_t crc, const void *buf, size_t len);

#endif
