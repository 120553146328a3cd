// Unit tests of the journal: framing, group commit, replay (last record wins), torn and
// corrupt tails, compaction, and a disk that refuses writes.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.h"
#include "presence_link.h"
#include "rb_err.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_time.h"

static uv_loop_t loop;
static char dir[64];
static char path[128];

static int setup(void **state)
{
	(void)state;
	uv_loop_init(&loop);
	snprintf(dir, sizeof(dir), "/tmp/broker-journal-XXXXXX");
	assert_non_null(mkdtemp(dir));
	// A directory that does not exist yet: the journal makes it.
	snprintf(path, sizeof(path), "%s/broker/journal", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
	return 0;
}

// Runs the loop until *flag is set (bounded, so a bug fails instead of hanging).
static void run_until(const bool *flag)
{
	for (int i = 0; i < 100000 && !*flag; i++)
		uv_run(&loop, UV_RUN_ONCE);
	assert_true(*flag);
}

static void set_flag(int err, void *arg)
{
	assert_int_equal(err, 0);
	*(bool *)arg = true;
}

static void sync_journal(broker_journal *j)
{
	bool done = false;
	assert_int_equal(broker_journal_after(j, set_flag, &done), 0);
	run_until(&done);
}

static void close_journal(broker_journal *j)
{
	broker_journal_free(j);
	uv_run(&loop, UV_RUN_DEFAULT);
}

static off_t file_size(const char *p)
{
	struct stat sb;
	assert_int_equal(stat(p, &sb), 0);
	return sb.st_size;
}

// --- a replay collector -------------------------------------------------------------------

typedef struct seen {
	int n;
	int kinds[64];
	char ids[64][80];
	uint64_t values[64];
} seen;

static int collect(const Ringbid__JournalEntry *e, void *arg)
{
	seen *s = arg;
	if (s->n == 64)
		return 0;
	s->kinds[s->n] = e->body_case;
	switch (e->body_case) {
	case RINGBID__JOURNAL_ENTRY__BODY_CALL:
		snprintf(s->ids[s->n], 80, "%s", e->call->info->call_id);
		s->values[s->n] = e->call->info->state;
		break;
	case RINGBID__JOURNAL_ENTRY__BODY_CDR:
		snprintf(s->ids[s->n], 80, "%s", e->cdr->cdr_id);
		s->values[s->n] = e->cdr->talk_s;
		break;
	case RINGBID__JOURNAL_ENTRY__BODY_CDR_ACKED:
		snprintf(s->ids[s->n], 80, "%s", e->cdr_acked);
		break;
	case RINGBID__JOURNAL_ENTRY__BODY_NEXT_OFFER_ID:
		s->values[s->n] = e->next_offer_id;
		break;
	default:
		break;
	}
	s->n++;
	return 0;
}

static void append_offer_id(broker_journal *j, uint64_t v)
{
	Ringbid__JournalEntry e = RINGBID__JOURNAL_ENTRY__INIT;
	e.body_case = RINGBID__JOURNAL_ENTRY__BODY_NEXT_OFFER_ID;
	e.next_offer_id = v;
	assert_int_equal(broker_journal_append(j, &e), 0);
}

static void append_cdr(broker_journal *j, const char *id, uint64_t talk_s)
{
	Ringbid__Cdr cdr = RINGBID__CDR__INIT;
	cdr.cdr_id = (char *)id;
	cdr.call_id = (char *)id;
	cdr.program = (char *)"sales";
	cdr.talk_s = talk_s;
	cdr.disposition = RINGBID__DISPOSITION__DISP_COMPLETED;
	Ringbid__JournalEntry e = RINGBID__JOURNAL_ENTRY__INIT;
	e.body_case = RINGBID__JOURNAL_ENTRY__BODY_CDR;
	e.cdr = &cdr;
	assert_int_equal(broker_journal_append(j, &e), 0);
}

static void append_ack(broker_journal *j, const char *id)
{
	Ringbid__JournalEntry e = RINGBID__JOURNAL_ENTRY__INIT;
	e.body_case = RINGBID__JOURNAL_ENTRY__BODY_CDR_ACKED;
	e.cdr_acked = (char *)id;
	assert_int_equal(broker_journal_append(j, &e), 0);
}

// --- tests --------------------------------------------------------------------------------

static void test_crc32c(void **state)
{
	(void)state;
	// The check value of CRC-32C (Castagnoli).
	assert_int_equal(broker_crc32c(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(broker_crc32c(0, "", 0), 0);
	// Incremental use gives the same result.
	uint32_t c = broker_crc32c(0, "1234", 4);
	assert_int_equal(broker_crc32c(c, "56789", 5), 0xE3069283u);
}

static int order[8];
static int norder;
static void record_order(int err, void *arg)
{
	assert_int_equal(err, 0);
	order[norder++] = (int)(intptr_t)arg;
}

static void test_round_trip_and_group_commit(void **state)
{
	(void)state;
	seen s = {0};
	broker_journal_replay st;
	broker_journal *j = NULL;
	assert_int_equal(broker_journal_open(path, 0, collect, &s, &st, &j), 0);
	assert_int_equal(st.records, 0);
	assert_int_equal(broker_journal_start(j, &loop), 0);
	append_offer_id(j, 1024);
	append_cdr(j, "c1", 61);
	norder = 0;
	assert_int_equal(broker_journal_after(j, record_order, (void *)1), 0);
	append_ack(j, "c1");
	assert_int_equal(broker_journal_after(j, record_order, (void *)2), 0);
	assert_int_equal(broker_journal_after(j, record_order, (void *)3), 0);
	// Nothing is released before the loop has written and synced the group.
	assert_int_equal(norder, 0);
	assert_false(broker_journal_idle(j));
	bool done = false;
	assert_int_equal(broker_journal_after(j, set_flag, &done), 0);
	run_until(&done);
	assert_int_equal(norder, 3);
	assert_int_equal(order[0], 1);
	assert_int_equal(order[1], 2);
	assert_int_equal(order[2], 3);
	assert_true(broker_journal_idle(j));
	assert_int_equal((off_t)broker_journal_size(j), file_size(path));
	// A second group is appended behind the first.
	append_cdr(j, "c2", 7);
	sync_journal(j);
	close_journal(j);

	memset(&s, 0, sizeof(s));
	assert_int_equal(broker_journal_open(path, 0, collect, &s, &st, &j), 0);
	assert_int_equal(st.records, 4);
	assert_false(st.torn);
	assert_false(st.corrupt);
	assert_int_equal(s.n, 4);
	assert_int_equal(s.kinds[0], RINGBID__JOURNAL_ENTRY__BODY_NEXT_OFFER_ID);
	assert_int_equal(s.values[0], 1024);
	assert_int_equal(s.kinds[1], RINGBID__JOURNAL_ENTRY__BODY_CDR);
	assert_string_equal(s.ids[1], "c1");
	assert_int_equal(s.values[1], 61);
	assert_int_equal(s.kinds[2], RINGBID__JOURNAL_ENTRY__BODY_CDR_ACKED);
	assert_string_equal(s.ids[2], "c1");
	assert_int_equal(s.kinds[3], RINGBID__JOURNAL_ENTRY__BODY_CDR);
	assert_string_equal(s.ids[3], "c2");
	close_journal(j);
}

// Drives a real broker core (no sockets) through call changes.
static broker *new_broker(void)
{
	broker *b = calloc(1, sizeof(*b));
	assert_non_null(b);
	assert_int_equal(broker_core_init(b), 0);
	return b;
}

static void free_broker(broker *b)
{
	if (b->journal)
		close_journal(b->journal);
	broker_fini(b);
	free(b);
}

static broker_call *arrive(broker *b, const char *id)
{
	const char *skills[] = {"en"};
	broker_call_new in = {
	        .id = id,
	        .program = "sales",
	        .skills = skills,
	        .nskills = 1,
	        .caller_masked = "+1*******42",
	        .now_us = rb_now_us(),
	        .now_mono_us = rb_mono_us(),
	};
	broker_call *c = NULL;
	assert_int_equal(broker_book_add(&b->book, &in, &c), 0);
	assert_int_equal(broker_change(b, c, BROKER_EV_QUEUE, 0, 0, NULL), 0);
	return c;
}

static void offer(broker *b, broker_call *c, uint64_t agent)
{
	uint64_t id = 0;
	assert_int_equal(broker_offer_id(b, &id), 0);
	broker_decision d;
	memset(&d, 0, sizeof(d));
	d.agent_id = agent;
	d.score = 70;
	strcpy(d.reason, "highest score");
	assert_int_equal(broker_change(b, c, BROKER_EV_OFFER, agent, id, &d), 0);
}

static broker *open_broker(broker_journal_replay *st)
{
	broker *b = new_broker();
	assert_int_equal(broker_journal_open(path, 0, broker_core_replay, b, st, &b->journal), 0);
	broker_journal_on_snapshot(b->journal, broker_core_snapshot, b);
	broker_core_replayed(b);
	assert_int_equal(broker_journal_start(b->journal, &loop), 0);
	return b;
}

static void test_last_record_wins(void **state)
{
	(void)state;
	broker_journal_replay st;
	broker *b = open_broker(&st);
	broker_call *c = arrive(b, "lw");
	offer(b, c, 5);
	assert_int_equal(broker_change(b, c, BROKER_EV_OFFER_LOST, 5, 0, NULL), 0);
	offer(b, c, 6);
	assert_int_equal(broker_change(b, c, BROKER_EV_CONNECT, 6, 0, NULL), 0);
	broker_call *q = arrive(b, "lw-q");
	broker_call *e = arrive(b, "lw-e");
	assert_int_equal(broker_change(b, e, BROKER_EV_HANGUP, 0, 0, NULL), 0);
	uint64_t next = b->next_offer_id;
	uint64_t arrived = c->arrived_us, version = c->version;
	(void)q;
	sync_journal(b->journal);
	free_broker(b);

	b = open_broker(&st);
	// Five call records for "lw", three for the others, one CDR, one offer-id block.
	assert_int_equal(st.records, 5 + 1 + 2 + 1 + 1);
	broker_call *r = broker_book_find(&b->book, "lw");
	assert_non_null(r);
	assert_int_equal(r->state, BROKER_CALL_CONNECTED);
	assert_int_equal(r->agent_id, 6);
	assert_int_equal(r->version, version);
	assert_int_equal(r->arrived_us, arrived);
	assert_int_equal(r->offers, 2);
	assert_true(broker_call_excluded(r, 5));
	assert_ptr_equal(broker_book_agent_call(&b->book, 6), r);
	assert_null(broker_book_agent_call(&b->book, 5));
	assert_int_equal(broker_book_find(&b->book, "lw-q")->state, BROKER_CALL_QUEUED);
	assert_int_equal(broker_book_find(&b->book, "lw-e")->state, BROKER_CALL_ENDED);
	assert_int_equal(b->book.count[BROKER_CALL_QUEUED], 1);
	assert_int_equal(b->book.count[BROKER_CALL_CONNECTED], 1);
	assert_int_equal(b->book.count[BROKER_CALL_ENDED], 1);
	// The abandoned call's CDR waits in the outbox; the KPIs count the history once.
	assert_int_equal(broker_outbox_count(&b->outbox), 1);
	assert_non_null(broker_outbox_find(&b->outbox, "lw-e"));
	assert_int_equal(b->kpi.arrived, 3);
	assert_int_equal(b->kpi.answered, 1);
	assert_int_equal(b->kpi.abandoned, 1);
	// Offer ids stay unique: nothing below what was handed out comes again.
	assert_true(b->next_offer_id >= next);
	uint64_t id = 0;
	assert_int_equal(broker_offer_id(b, &id), 0);
	assert_true(id >= next);
	free_broker(b);
}

static void write_three(void)
{
	seen s = {0};
	broker_journal *j = NULL;
	assert_int_equal(broker_journal_open(path, 0, collect, &s, NULL, &j), 0);
	assert_int_equal(broker_journal_start(j, &loop), 0);
	append_cdr(j, "t1", 1);
	append_cdr(j, "t2", 2);
	append_cdr(j, "t3", 3);
	sync_journal(j);
	close_journal(j);
}

static void test_torn_tail(void **state)
{
	(void)state;
	write_three();
	off_t full = file_size(path);
	// A crash in the middle of the last record.
	assert_int_equal(truncate(path, full - 5), 0);
	seen s = {0};
	broker_journal_replay st;
	broker_journal *j = NULL;
	assert_int_equal(broker_journal_open(path, 0, collect, &s, &st, &j), 0);
	assert_true(st.torn);
	assert_false(st.corrupt);
	assert_int_equal(st.records, 2);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.ids[1], "t2");
	assert_int_equal(st.cut_bytes, (uint64_t)(full - 5) - st.bytes);
	assert_int_equal(file_size(path), (off_t)st.bytes);
	// Appends after the cut are read back whole.
	assert_int_equal(broker_journal_start(j, &loop), 0);
	append_cdr(j, "t4", 4);
	sync_journal(j);
	close_journal(j);
	memset(&s, 0, sizeof(s));
	assert_int_equal(broker_journal_open(path, 0, collect, &s, &st, &j), 0);
	assert_false(st.torn);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.ids[2], "t4");
	close_journal(j);

	// A crash inside the 8-byte header.
	off_t size = file_size(path);
	int fd = open(path, O_WRONLY | O_APPEND);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "\x10\x00\x00", 3), 3);
	close(fd);
	memset(&s, 0, sizeof(s));
	assert_int_equal(broker_journal_open(path, 0, collect, &s, &st, &j), 0);
	assert_true(st.torn);
	assert_int_equal(s.n, 3);
	assert_int_equal(file_size(path), size);
	close_journal(j);
}

static int count_corrupt_copies(void)
{
	char sub[128];
	snprintf(sub, sizeof(sub), "%s/broker", dir);
	DIR *d = opendir(sub);
	assert_non_null(d);
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		if (strncmp(de->d_name, "journal.corrupt-", 16) == 0)
			n++;
	closedir(d);
	return n;
}

static void test_corrupt_crc_stops_replay(void **state)
{
	(void)state;
	write_three();
	off_t full = file_size(path);
	// Flip one byte inside the second record's body.
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint8_t hdr[8];
	assert_int_equal(pread(fd, hdr, 8, 0), 8);
	off_t second = 8 + (off_t)(hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (uint32_t)hdr[3] << 24);
	uint8_t byte;
	assert_int_equal(pread(fd, &byte, 1, second + 10), 1);
	byte ^= 0x40;
	assert_int_equal(pwrite(fd, &byte, 1, second + 10), 1);
	close(fd);

	seen s = {0};
	broker_journal_replay st;
	broker_journal *j = NULL;
	assert_int_equal(broker_journal_open(path, 0, collect, &s, &st, &j), 0);
	assert_true(st.corrupt);
	assert_int_equal(st.records, 1);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.ids[0], "t1");
	assert_int_equal(st.bytes, (uint64_t)second);
	assert_int_equal(st.cut_bytes, (uint64_t)(full - second));
	assert_int_equal(file_size(path), second);
	// The bad tail is kept aside for inspection, not silently lost.
	assert_int_equal(count_corrupt_copies(), 1);
	close_journal(j);
}

static void test_compaction(void **state)
{
	(void)state;
	broker_journal_replay st;
	broker *b = open_broker(&st);
	broker_call *live = arrive(b, "live");
	offer(b, live, 9);
	broker_call *acked = arrive(b, "acked");
	assert_int_equal(broker_change(b, acked, BROKER_EV_HANGUP, 0, 0, NULL), 0);
	broker_call *unacked = arrive(b, "unacked");
	assert_int_equal(broker_change(b, unacked, BROKER_EV_MAX_WAIT, 0, 0, NULL), 0);
	// Churn that compaction should fold away.
	for (int i = 0; i < 50; i++) {
		char id[16];
		snprintf(id, sizeof(id), "x%d", i);
		broker_call *x = arrive(b, id);
		assert_int_equal(broker_change(b, x, BROKER_EV_HANGUP, 0, 0, NULL), 0);
		assert_int_equal(broker_outbox_ack(&b->outbox, id), 0);
		append_ack(b->journal, id);
	}
	sync_journal(b->journal);
	// Billing acknowledged "acked".
	assert_int_equal(broker_outbox_ack(&b->outbox, "acked"), 0);
	append_ack(b->journal, "acked");
	sync_journal(b->journal);
	uint64_t before = broker_journal_size(b->journal);
	uint64_t next = b->next_offer_id;

	broker_journal_compact_soon(b->journal);
	offer(b, arrive(b, "after"), 10);
	sync_journal(b->journal);
	assert_int_equal(broker_journal_compactions(b->journal), 1);
	uint64_t after = broker_journal_size(b->journal);
	assert_true(after < before / 2);
	assert_int_equal((off_t)after, file_size(path));
	// The journal goes on after compaction.
	assert_int_equal(broker_change(b, broker_book_find(&b->book, "after"), BROKER_EV_CONNECT,
	                               10, 0, NULL),
	                 0);
	sync_journal(b->journal);
	free_broker(b);

	seen s = {0};
	broker_journal *j = NULL;
	assert_int_equal(broker_journal_open(path, 0, collect, &s, &st, &j), 0);
	int cdrs = 0, acks = 0;
	for (int i = 0; i < s.n; i++) {
		cdrs += s.kinds[i] == RINGBID__JOURNAL_ENTRY__BODY_CDR;
		acks += s.kinds[i] == RINGBID__JOURNAL_ENTRY__BODY_CDR_ACKED;
	}
	assert_int_equal(cdrs, 1); // only the unacknowledged CDR is left
	assert_int_equal(acks, 0);
	close_journal(j);

	b = open_broker(&st);
	broker_call *r = broker_book_find(&b->book, "live");
	assert_non_null(r);
	assert_int_equal(r->state, BROKER_CALL_OFFERED);
	assert_int_equal(r->agent_id, 9);
	assert_int_equal(broker_book_find(&b->book, "after")->state, BROKER_CALL_CONNECTED);
	// Recently ended calls stay answerable (explain, query) whatever billing said.
	assert_int_equal(broker_book_find(&b->book, "unacked")->disposition, BROKER_DISP_OVERFLOW);
	assert_int_equal(broker_book_find(&b->book, "acked")->state, BROKER_CALL_ENDED);
	assert_non_null(broker_book_find(&b->book, "x1"));
	assert_int_equal(broker_outbox_count(&b->outbox), 1);
	assert_non_null(broker_outbox_find(&b->outbox, "unacked"));
	assert_null(broker_outbox_find(&b->outbox, "acked"));
	assert_true(b->next_offer_id >= next);
	free_broker(b);
}

static void test_leftover_new_file_ignored(void **state)
{
	(void)state;
	write_three();
	char tmp[160];
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	FILE *f = fopen(tmp, "w");
	assert_non_null(f);
	fputs("half a compaction", f);
	fclose(f);
	seen s = {0};
	broker_journal *j = NULL;
	assert_int_equal(broker_journal_open(path, 0, collect, &s, NULL, &j), 0);
	assert_int_equal(s.n, 3);
	assert_int_not_equal(access(tmp, F_OK), 0);
	close_journal(j);
}

static bool healthy = true;
static int health_calls;
static void on_health(bool ok, void *arg)
{
	(void)arg;
	healthy = ok;
	health_calls++;
}

static int waiter_err = 1;
static void on_waiter(int err, void *arg)
{
	(void)arg;
	waiter_err = err;
}

// /dev/full refuses every write with ENOSPC: the group is held, nothing is acknowledged.
static void test_full_disk(void **state)
{
	(void)state;
	broker_journal *j = NULL;
	if (access("/dev/full", W_OK) != 0) {
		skip();
		return;
	}
	assert_int_equal(broker_journal_open("/dev/full", 0, collect, NULL, NULL, &j), 0);
	broker_journal_on_health(j, on_health, NULL);
	assert_int_equal(broker_journal_start(j, &loop), 0);
	healthy = true;
	health_calls = 0;
	waiter_err = 1;
	append_cdr(j, "f1", 1);
	assert_int_equal(broker_journal_after(j, on_waiter, NULL), 0);
	for (int i = 0; i < 100000 && healthy; i++)
		uv_run(&loop, UV_RUN_ONCE);
	assert_false(healthy);
	assert_false(broker_journal_ok(j));
	assert_int_equal(waiter_err, 1); // not released: the record is not on disk
	assert_false(broker_journal_idle(j));
	// Closing gives up on the held group: its waiter hears RB_ECLOSED.
	close_journal(j);
	assert_int_equal(waiter_err, RB_ECLOSED);
	assert_int_equal(health_calls, 1);
}

// A CDR carries the call's offer log and whether the connecting offer explored, through the
// journal, replay and compaction alike.
static void test_cdr_offer_log_replay(void **state)
{
	(void)state;
	broker_journal_replay st;
	broker *b = open_broker(&st);
	broker_call *c = arrive(b, "ol");
	offer(b, c, 5);
	assert_int_equal(broker_change(b, c, BROKER_EV_DECLINED, 5, 0, NULL), 0);
	uint64_t id = 0;
	assert_int_equal(broker_offer_id(b, &id), 0);
	broker_decision d;
	memset(&d, 0, sizeof(d));
	d.agent_id = 6;
	d.exploratory = true;
	strcpy(d.reason, "exploration: longest available");
	assert_int_equal(broker_change(b, c, BROKER_EV_OFFER, 6, id, &d), 0);
	assert_int_equal(broker_change(b, c, BROKER_EV_CONNECT, 6, 0, NULL), 0);
	assert_int_equal(broker_change(b, c, BROKER_EV_AGENT_HANGUP, 6, 0, NULL), 0);
	sync_journal(b->journal);
	const broker_cdr *cdr = broker_outbox_find(&b->outbox, "ol");
	assert_non_null(cdr);
	assert_true(cdr->exploratory);
	assert_int_equal(cdr->noffer_log, 2);
	assert_int_equal(cdr->offer_log[0].agent_id, 5);
	assert_int_equal(cdr->offer_log[0].result, RINGBID__OFFER_RESULT_CODE__OFFER_DECLINED);
	assert_int_equal(cdr->offer_log[1].agent_id, 6);
	assert_int_equal(cdr->offer_log[1].result, RINGBID__OFFER_RESULT_CODE__OFFER_ACCEPTED);
	uint64_t first_us = cdr->offer_log[0].offered_us;
	assert_true(first_us >= c->arrived_us);
	free_broker(b);

	for (int round = 0; round < 2; round++) {
		b = open_broker(&st);
		cdr = broker_outbox_find(&b->outbox, "ol");
		assert_non_null(cdr);
		assert_true(cdr->exploratory);
		assert_int_equal(cdr->noffer_log, 2);
		assert_int_equal(cdr->offer_log[0].offered_us, first_us);
		Ringbid__Cdr pb;
		broker_cdr_to_pb(cdr, &pb);
		assert_int_equal(pb.n_offer_log, 2);
		assert_int_equal(pb.offer_log[1]->agent_id, 6);
		assert_true(pb.exploratory);
		broker_call *r = broker_book_find(&b->book, "ol");
		assert_non_null(r);
		assert_int_equal(r->noffer_log, 2);
		assert_true(broker_call_exploratory(r));
		if (round == 0) {
			// The second round reads what compaction wrote.
			broker_journal_compact_soon(b->journal);
			offer(b, arrive(b, "ol-after"), 11);
			sync_journal(b->journal);
			assert_int_equal(broker_journal_compactions(b->journal), 1);
		}
		free_broker(b);
	}
}

static int count_chunk(const Ringbid__CallSync *cs, void *arg)
{
	assert_true(cs->first && cs->last);
	*(size_t *)arg += cs->n_calls;
	return 0;
}

// With several presence instances, the instance of each call's agent is journaled with the
// call: after a restart (and after a compaction) the call is in its instance's CallSync and
// its agent is placed there again.
static void test_presence_instance_replay(void **state)
{
	(void)state;
	broker_journal_replay st;
	broker_presence_reset(3);
	broker *b = open_broker(&st);
	broker_presence_agent_at(21, 2, true);
	broker_presence_agent_at(22, 1, true);
	broker_call *ring = arrive(b, "ring");
	offer(b, ring, 21);
	broker_call *talk = arrive(b, "talk");
	offer(b, talk, 22);
	assert_int_equal(broker_change(b, talk, BROKER_EV_CONNECT, 22, 0, NULL), 0);
	assert_int_equal(ring->presence_id, 2);
	assert_int_equal(talk->presence_id, 1);
	sync_journal(b->journal);
	free_broker(b);

	for (int round = 0; round < 2; round++) {
		// A new process: nothing is known of where the agents are until replay says.
		broker_presence_reset(3);
		b = open_broker(&st);
		uint32_t pid = 9;
		assert_false(broker_presence_agent_instance(21, &pid));
		broker_presence_restored(&b->book);
		assert_true(broker_presence_agent_instance(21, &pid));
		assert_int_equal(pid, 2);
		assert_true(broker_presence_agent_instance(22, &pid));
		assert_int_equal(pid, 1);
		broker_call *r = broker_book_find(&b->book, "ring");
		assert_non_null(r);
		assert_int_equal(r->state, BROKER_CALL_OFFERED);
		assert_int_equal(r->presence_id, 2);
		r = broker_book_find(&b->book, "talk");
		assert_non_null(r);
		assert_int_equal(r->state, BROKER_CALL_CONNECTED);
		assert_int_equal(r->presence_id, 1);
		// Each instance's CallSync holds its own call; instance 0 holds "after" (agent 11,
		// never placed) from the second round.
		for (uint32_t inst = 0; inst < 3; inst++) {
			size_t n = 0, count = 0;
			assert_int_equal(
			        broker_presence_call_sync(b, inst, 5, 100, count_chunk, &n, &count),
			        0);
			assert_int_equal(n, inst == 0 ? (size_t)round : 1);
			assert_int_equal(count, n);
		}
		if (round == 0) {
			// The second round reads what compaction wrote.
			broker_journal_compact_soon(b->journal);
			offer(b, arrive(b, "after"), 11);
			sync_journal(b->journal);
			assert_int_equal(broker_journal_compactions(b->journal), 1);
		}
		free_broker(b);
	}
}

// An Offer leaves before its record is durable only with an id covered by a reservation on
// disk: the next block is reserved while half of the current one is left, so that at a steady
// pace the block in use is always durable, and only a burst past one sync's worth waits.
static void test_offer_ids_reserved_ahead(void **state)
{
	(void)state;
	const uint64_t block = BROKER_OFFER_ID_BLOCK;
	broker_journal_replay st;
	broker *b = open_broker(&st);
	assert_int_equal(b->offer_id_durable, 0);
	uint64_t id = 0;
	assert_int_equal(broker_offer_id(b, &id), 0);
	assert_int_equal(id, 1);
	assert_int_equal(b->offer_id_reserved, 1 + block);
	assert_int_equal(b->offer_id_durable, 0); // its Offer waits for the journal
	sync_journal(b->journal);
	assert_int_equal(b->offer_id_durable, 1 + block);

	for (uint64_t i = 0; i < 4 * block; i++) {
		assert_int_equal(broker_offer_id(b, &id), 0);
		assert_true(id < b->offer_id_durable);
		assert_true(b->offer_id_reserved - b->next_offer_id > block / 2);
		if (i % 64 == 63)
			sync_journal(b->journal);
	}
	uint64_t mark = b->offer_id_durable;
	bool past = false;
	for (uint64_t i = 0; i < 2 * block; i++) {
		assert_int_equal(broker_offer_id(b, &id), 0);
		past = past || id >= mark;
	}
	assert_true(past);
	assert_int_equal(b->offer_id_durable, mark);
	sync_journal(b->journal);
	assert_int_equal(b->offer_id_durable, b->offer_id_reserved);
	uint64_t reserved = b->offer_id_reserved;
	free_broker(b);

	// A new process hands out nothing reserved before, and trusts no reservation it has not
	// seen reach the disk itself.
	b = open_broker(&st);
	assert_true(b->next_offer_id >= reserved);
	assert_int_equal(b->offer_id_durable, 0);
	assert_int_equal(broker_offer_id(b, &id), 0);
	assert_true(id >= reserved);
	free_broker(b);
}

// The start writes a reservation of its own, so that the first offers after it need not wait
// for the journal once that record is on disk.
static void test_start_reserves_offer_ids(void **state)
{
	(void)state;
	uint64_t before = 0;
	for (int round = 0; round < 2; round++) {
		broker_journal_replay st;
		broker *b = new_broker();
		assert_int_equal(
		        broker_journal_open(path, 0, broker_core_replay, b, &st, &b->journal), 0);
		broker_journal_on_snapshot(b->journal, broker_core_snapshot, b);
		broker_core_replayed(b);
		assert_true(b->next_offer_id >= before);
		assert_int_equal(uv_loop_init(&b->svc.loop), 0);
		assert_int_equal(broker_core_start(b), 0);
		assert_int_equal(b->offer_id_reserved, b->next_offer_id + BROKER_OFFER_ID_BLOCK);
		assert_int_equal(b->offer_id_durable, 0);
		for (int i = 0; i < 100000 && b->offer_id_durable == 0; i++)
			uv_run(&b->svc.loop, UV_RUN_ONCE);
		assert_int_equal(b->offer_id_durable, b->offer_id_reserved);
		uint64_t id = 0;
		assert_int_equal(broker_offer_id(b, &id), 0);
		assert_true(id >= before);
		assert_true(id < b->offer_id_durable);
		before = b->offer_id_reserved;
		broker_journal_free(b->journal);
		b->journal = NULL;
		uv_run(&b->svc.loop, UV_RUN_DEFAULT);
		assert_int_equal(uv_loop_close(&b->svc.loop), 0);
		broker_fini(b);
		free(b);
	}
}

// What waits for the disk on the way to presence: the Offer only while its id is not covered,
// or a message about its agent or a CallSync is held (so it overtakes neither); OfferCancel
// and CallConnected always. What is held is counted per agent, down to 0 however it ends.
static void test_presence_gate(void **state)
{
	(void)state;
	broker_journal_replay st;
	broker_presence_reset(1);
	broker *b = open_broker(&st);
	rb_bus_opts opts = {.recv_max = 65536, .send_timeout_ms = 10, .name = "test-presence"};
	assert_int_equal(rb_bus_new(&loop, RB_BUS_PAIR, &opts, &b->presence[0]), 0);
	b->npresence = 1;
	assert_int_equal(broker_presence_heard(77, 0), 1); // instance 0 is connected

	// The first offer's id is not covered by a durable reservation yet: it waits.
	broker_call *a = arrive(b, "g-a");
	offer(b, a, 31);
	assert_int_equal(broker_presence_held(b, 31), 1);
	sync_journal(b->journal);
	assert_int_equal(broker_presence_held(b, 31), 0);
	// Now an Offer leaves at once.
	broker_call *c = arrive(b, "g-b");
	offer(b, c, 32);
	assert_int_equal(broker_presence_held(b, 32), 0);
	// The caller of "g-a" hangs up: its OfferCancel to agent 31 waits. An Offer to another
	// agent leaves at once; one to agent 31 queues behind the cancel.
	assert_int_equal(broker_change(b, a, BROKER_EV_HANGUP, 0, 0, NULL), 0);
	assert_int_equal(broker_presence_held(b, 31), 1);
	offer(b, arrive(b, "g-c"), 33);
	assert_int_equal(broker_presence_held(b, 33), 0);
	offer(b, arrive(b, "g-e"), 31);
	assert_int_equal(broker_presence_held(b, 31), 2);
	sync_journal(b->journal);
	assert_int_equal(broker_presence_held(b, 31), 0);
	offer(b, arrive(b, "g-d"), 34);
	assert_int_equal(broker_presence_held(b, 34), 0);
	// A held CallSync holds every Offer.
	broker_presence_hold(b, 0, true, +1);
	assert_int_equal(broker_presence_held(b, 35), 1);
	offer(b, arrive(b, "g-f"), 35);
	assert_int_equal(broker_presence_held(b, 35), 2);
	broker_presence_hold(b, 0, true, -1);
	assert_int_equal(broker_presence_held(b, 35), 1); // the Offer itself
	sync_journal(b->journal);
	assert_int_equal(broker_presence_held(b, 35), 0);
	// The agent accepts: CallConnected waits for the CONNECTED record.
	assert_int_equal(broker_change(b, c, BROKER_EV_CONNECT, 32, 0, NULL), 0);
	assert_int_equal(broker_presence_held(b, 32), 1);
	sync_journal(b->journal);
	assert_int_equal(broker_presence_held(b, 32), 0);
	// A repeated ACCEPTED gets CallConnected again, just as held.
	broker_send_call_connected(b, c);
	assert_int_equal(broker_presence_held(b, 32), 1);
	// A journal closed first releases the held message unsent: the count still drops.
	rb_bus_free(b->presence[0]);
	b->presence[0] = NULL;
	b->npresence = 0;
	close_journal(b->journal);
	b->journal = NULL;
	assert_int_equal(broker_presence_held(b, 32), 0);
	assert_null(b->held); // nothing left counted for any agent
	free_broker(b);
}

// What the auction's side of the link heard: the call ids of the Enqueues.
typedef struct heard {
	char ids[8][BROKER_ID_MAX + 1];
	int n;
	bool got;
} heard;

static void auction_heard(rb_bus *bus, nng_msg *msg, void *arg)
{
	(void)bus;
	heard *h = arg;
	Ringbid__Envelope *env = NULL;
	assert_int_equal(rb_pb_unpack_msg(&ringbid__envelope__descriptor, msg, 65536,
	                                  (ProtobufCMessage **)&env),
	                 0);
	nng_msg_free(msg);
	if (env->body_case == RINGBID__ENVELOPE__BODY_ENQUEUE && h->n < 8) {
		snprintf(h->ids[h->n++], sizeof(h->ids[0]), "%s", env->enqueue->call_id);
		h->got = true;
	}
	rb_pb_free(&env->base);
}

static void peer_up(rb_bus *bus, nng_pipe pipe, bool added, void *arg)
{
	(void)bus;
	(void)pipe;
	if (added)
		*(bool *)arg = true;
}

// A call released by a repeated bounce is enqueued again shortly, once, if it still waits
// then; one that ended meanwhile is not.
static void test_requeue_soon(void **state)
{
	(void)state;
	broker_journal_replay st;
	broker *b = open_broker(&st);
	rb_bus_opts opts = {.recv_max = 65536, .name = "test-auction"};
	rb_bus *peer = NULL;
	heard h = {0};
	bool up = false;
	assert_int_equal(rb_bus_new(&loop, RB_BUS_PAIR, &opts, &b->auction), 0);
	rb_bus_on_pipe(b->auction, peer_up, &up);
	assert_int_equal(rb_bus_listen(b->auction, "inproc://requeue-soon"), 0);
	assert_int_equal(rb_bus_new(&loop, RB_BUS_PAIR, &opts, &peer), 0);
	rb_bus_on_recv(peer, auction_heard, &h);
	assert_int_equal(rb_bus_dial(peer, "inproc://requeue-soon"), 0);
	run_until(&up);

	// Each arrival is enqueued at once.
	broker_call *waiting = arrive(b, "rq-wait");
	run_until(&h.got);
	broker_call *gone = arrive(b, "rq-gone");
	h.got = false;
	run_until(&h.got);
	assert_int_equal(h.n, 2);
	memset(&h, 0, sizeof(h));
	// The broker's timers run on its service loop (the buses here on the test's).
	assert_int_equal(uv_loop_init(&b->svc.loop), 0);
	broker_requeue_soon(b, waiting);
	broker_requeue_soon(b, gone);
	assert_int_equal(broker_change(b, gone, BROKER_EV_HANGUP, 0, 0, NULL), 0);
	assert_int_equal(b->nrequeue, 2);
	assert_true(uv_is_active((uv_handle_t *)&b->requeue_timer));
	uint64_t t0 = rb_mono_us();
	uv_run(&b->svc.loop, UV_RUN_ONCE); // the timer, 50 ms on
	assert_true(rb_mono_us() - t0 >= 40000);
	assert_int_equal(h.n, 0); // not before the loop sends it
	run_until(&h.got);
	assert_int_equal(h.n, 1);
	assert_string_equal(h.ids[0], "rq-wait");
	assert_int_equal(b->nrequeue, 0);
	assert_false(uv_is_active((uv_handle_t *)&b->requeue_timer));

	rb_bus_free(peer);
	rb_bus_free(b->auction);
	b->auction = NULL;
	uv_close((uv_handle_t *)&b->requeue_timer, NULL);
	b->requeue_timer_init = false;
	uv_run(&b->svc.loop, UV_RUN_DEFAULT); // the timer's close, before its broker is freed
	assert_int_equal(uv_loop_close(&b->svc.loop), 0);
	free_broker(b);
}

int main(void)
{
	// The expected failures still show; the call-by-call info lines do not.
	rb_log_set_level(RB_LOG_WARN);
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_crc32c),
	        cmocka_unit_test_setup_teardown(test_round_trip_and_group_commit, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_last_record_wins, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_corrupt_crc_stops_replay, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_compaction, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_leftover_new_file_ignored, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_full_disk, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_cdr_offer_log_replay, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_presence_instance_replay, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_offer_ids_reserved_ahead, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_start_reserves_offer_ids, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_presence_gate, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_requeue_soon, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
