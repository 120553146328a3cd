// The broker's journal: every call change is framed, grouped per loop turn, written and
// fdatasync'd on libuv's thread pool, and only then are the replies that depend on it released.
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rb_err.h"
#include "rb_log.h"
#include "rb_time.h"

#define RETRY_MS        1000        // a failed write is tried again this often
#define COMPACT_HOLD_MS (60 * 1000) // after a failed compaction, appends go on for this long

typedef struct waiter {
	broker_journal_done_fn fn;
	void *arg;
	struct waiter *next;
} waiter;

typedef struct batch {
	uint8_t *buf;
	size_t len, cap;
	waiter *head;
	waiter **tail;
} batch;

struct broker_journal {
	uv_loop_t *loop;
	char *path;
	int fd; // O_WRONLY | O_APPEND
	uint64_t size;
	uint64_t max_bytes;
	uint64_t compacted_size;
	uint64_t compactions;
	uint64_t compact_hold_until; // uv_now() milliseconds
	batch pending;               // this turn's records
	batch inflight;              // being written and synced
	batch snap;                  // compaction output
	uv_work_t io;                // a group's write and sync (io_work)
	int io_err;                  // io_work's result: 0 or a libuv error code
	const char *io_step;         // what io_work did last
	bool busy;                   // inflight is being written, synced or compacted
	bool io_active;              // a write, sync or truncate is on the thread pool
	bool failed;                 // the last write or sync failed: waiting to retry
	bool compacting;             // compaction work is on the thread pool
	bool compact_req;
	bool in_snapshot;
	bool started;
	bool closing;
	int handles;
	uv_fs_t fs;
	uv_work_t work;
	int work_err;
	const char *work_step;
	bool work_dir_synced;
	int work_new_fd;
	uv_check_t check;
	uv_idle_t idle;
	uv_timer_t retry;
	broker_journal_snapshot_fn snapshot_fn;
	void *snapshot_arg;
	broker_journal_health_fn health_fn;
	void *health_arg;
};

// CRC-32C, reflected polynomial 0x82F63B78. No packaged library offers CRC-32C for this (and
// zlib's crc32 uses a different polynomial), so the small table-driven version lives here.
static uint32_t crc_table[256];
static bool crc_ready;

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_table[i] = c;
	}
	crc_ready = true;
}

uint32_t broker_crc32c(uint32_t crc, const void *buf, size_t len)
{
	if (!crc_ready)
		crc_init();
	const uint8_t *p = buf;
	crc = ~crc;
	while (len--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void batch_init(batch *b)
{
	memset(b, 0, sizeof(*b));
	b->tail = &b->head;
}

static void batch_fini(batch *b)
{
	free(b->buf);
	batch_init(b);
}

static int batch_frame(batch *b, const Ringbid__JournalEntry *e)
{
	size_t n = protobuf_c_message_get_packed_size(&e->base);
	if (n == 0 || n > BROKER_JOURNAL_RECORD_MAX)
		return RB_ETOOBIG;
	size_t need = b->len + BROKER_JOURNAL_HEADER + n;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < need)
			cap *= 2;
		uint8_t *buf = realloc(b->buf, cap);
		if (buf == NULL)
			return RB_ENOMEM;
		b->buf = buf;
		b->cap = cap;
	}
	uint8_t *rec = b->buf + b->len;
	size_t packed = protobuf_c_message_pack(&e->base, rec + BROKER_JOURNAL_HEADER);
	put_le32(rec, (uint32_t)packed);
	put_le32(rec + 4, broker_crc32c(0, rec + BROKER_JOURNAL_HEADER, packed));
	b->len += BROKER_JOURNAL_HEADER + packed;
	return 0;
}

// Takes the waiters out first: they may append and wait again while they run.
static void batch_release(batch *b, int err)
{
	waiter *w = b->head;
	b->head = NULL;
	b->tail = &b->head;
	while (w != NULL) {
		waiter *next = w->next;
		w->fn(err, w->arg);
		free(w);
		w = next;
	}
}

static void set_health(broker_journal *j, bool ok)
{
	if (j->health_fn)
		j->health_fn(ok, j->health_arg);
}

static void finish_close(broker_journal *j);
static void start_write(broker_journal *j);
static void retry_cb(uv_timer_t *t);

static void idle_cb(uv_idle_t *h)
{
	// Only here so that the loop does not sleep in poll while records wait for check_cb.
	(void)h;
}

// Records wait for the end of the loop turn. Only when they can go then: while a group is being
// written and synced, what comes meanwhile goes when it completes (inflight_done wakes again),
// and an idle handle active all that time would spin the loop through every fdatasync.
static void wake(broker_journal *j)
{
	if (j->started && !j->closing && !j->busy && !uv_is_active((uv_handle_t *)&j->idle))
		uv_idle_start(&j->idle, idle_cb);
}

static void inflight_done(broker_journal *j)
{
	j->busy = false;
	j->inflight.len = 0;
	if (j->failed) {
		j->failed = false;
		rb_logf(RB_LOG_INFO, NULL, 0, "journal %s is writable again", j->path);
		set_health(j, true);
	}
	batch_release(&j->inflight, 0);
	if (j->closing)
		finish_close(j);
	else if (j->pending.len || j->pending.head)
		wake(j);
}

static void fail(broker_journal *j, const char *step, int uv_err)
{
	rb_logf(RB_LOG_ERROR, NULL, 0,
	        "journal %s: %s failed: %s; %zu bytes held, replies wait until the disk takes them",
	        j->path, step, uv_strerror(uv_err), j->inflight.len + j->pending.len);
	if (!j->failed) {
		j->failed = true;
		set_health(j, false);
	}
	if (j->closing) {
		j->busy = false;
		batch_release(&j->inflight, RB_ECLOSED);
		finish_close(j);
		return;
	}
	uv_timer_start(&j->retry, retry_cb, RETRY_MS, 0);
}

static int write_all(int fd, const uint8_t *p, size_t n);

// A group goes to the thread pool in one trip: the whole write, then the fdatasync. (As two
// uv_fs requests it cost the pool and the loop a wake-up each, and at a thousand calls a second
// the groups are small: about two per call.) Only the pool thread touches inflight meanwhile.
static void io_work(uv_work_t *w)
{
	broker_journal *j = w->data;

	j->io_step = "write";
	j->io_err = write_all(j->fd, j->inflight.buf, j->inflight.len);
	if (j->io_err != 0)
		return;
	j->io_step = "fdatasync";
	if (fdatasync(j->fd) < 0)
		j->io_err = -errno; // libuv's error codes are negated errno values
}

static void io_after(uv_work_t *w, int status)
{
	broker_journal *j = w->data;

	j->io_active = false;
	if (status < 0) {
		fail(j, "write", status);
		return;
	}
	if (j->io_err != 0) {
		fail(j, j->io_step, j->io_err);
		return;
	}
	j->size += j->inflight.len;
	inflight_done(j);
}

static void start_write(broker_journal *j)
{
	j->io.data = j;
	int rc = uv_queue_work(j->loop, &j->io, io_work, io_after);
	if (rc < 0)
		fail(j, "write", rc);
	else
		j->io_active = true;
}

// A failed write may have left part of the group in the file: cut back to the last synced
// size and write the whole group again, so no torn record sits before later ones.
static void trunc_cb(uv_fs_t *req)
{
	broker_journal *j = req->data;
	ssize_t r = req->result;
	uv_fs_req_cleanup(req);
	j->io_active = false;
	if (r < 0 || j->closing) {
		fail(j, "ftruncate", r < 0 ? (int)r : UV_ECANCELED);
		return;
	}
	start_write(j);
}

static void retry_cb(uv_timer_t *t)
{
	broker_journal *j = t->data;
	if (j->closing || !j->busy)
		return;
	j->fs.data = j;
	int rc = uv_fs_ftruncate(j->loop, &j->fs, j->fd, (int64_t)j->size, trunc_cb);
	if (rc < 0)
		fail(j, "ftruncate", rc);
	else
		j->io_active = true;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int fsync_dir_of(const char *path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		slash[1] = '\0';
	else
		*slash = '\0';
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return rc;
}

// Thread pool: writes the snapshot to path.new, syncs it, and renames it over the journal.
static void compact_work(uv_work_t *w)
{
	broker_journal *j = w->data;
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s.new", j->path);
	j->work_err = 0;
	j->work_new_fd = -1;
	j->work_dir_synced = true;
	j->work_step = "open";
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0) {
		j->work_err = -errno;
		return;
	}
	j->work_step = "write";
	int rc = write_all(fd, j->snap.buf, j->snap.len);
	if (rc == 0) {
		j->work_step = "fsync";
		rc = fsync(fd) < 0 ? -errno : 0;
	}
	// The append descriptor is opened before the rename so that, once renamed, there is
	// never a moment with a journal in place and no way to write to it.
	int nfd = -1;
	if (rc == 0) {
		j->work_step = "reopen";
		nfd = open(tmp, O_WRONLY | O_APPEND | O_CLOEXEC);
		if (nfd < 0)
			rc = -errno;
	}
	close(fd);
	if (rc == 0) {
		j->work_step = "rename";
		if (rename(tmp, j->path) < 0)
			rc = -errno;
	}
	if (rc != 0) {
		if (nfd >= 0)
			close(nfd);
		unlink(tmp);
		j->work_err = rc;
		return;
	}
	j->work_dir_synced = fsync_dir_of(j->path) == 0;
	close(j->fd);
	j->work_new_fd = nfd;
}

static void compact_after(uv_work_t *w, int status)
{
	broker_journal *j = w->data;
	j->compacting = false;
	if (status < 0 || j->work_err != 0) {
		int err = status < 0 ? status : j->work_err;
		rb_logf(RB_LOG_ERROR, NULL, 0,
		        "journal %s: compaction failed at %s: %s; appending to the old file",
		        j->path, j->work_step, uv_strerror(err));
		j->compact_hold_until = uv_now(j->loop) + COMPACT_HOLD_MS;
		j->snap.len = 0;
		if (j->closing) {
			j->busy = false;
			batch_release(&j->inflight, RB_ECLOSED);
			finish_close(j);
			return;
		}
		start_write(j);
		return;
	}
	if (!j->work_dir_synced)
		rb_logf(RB_LOG_ERROR, NULL, 0,
		        "journal %s: compacted, but its directory could not be synced", j->path);
	rb_logf(RB_LOG_INFO, NULL, 0, "journal %s compacted: %llu -> %zu bytes", j->path,
	        (unsigned long long)(j->size + j->inflight.len), j->snap.len);
	j->fd = j->work_new_fd;
	j->size = j->snap.len;
	j->compacted_size = j->snap.len;
	j->compactions++;
	j->compact_req = false;
	// The snapshot can be large; its memory is not kept between compactions.
	batch_fini(&j->snap);
	inflight_done(j);
}

static bool compaction_due(broker_journal *j)
{
	if (j->snapshot_fn == NULL)
		return false;
	if (j->compact_req)
		return true;
	if (uv_now(j->loop) < j->compact_hold_until)
		return false;
	uint64_t total = j->size + j->inflight.len;
	// Twice the last compacted size, so a large live set never compacts on every turn.
	return total > j->max_bytes && total > 2 * j->compacted_size;
}

static void start_compaction(broker_journal *j)
{
	j->snap.len = 0;
	j->in_snapshot = true;
	int rc = j->snapshot_fn(j, j->snapshot_arg);
	j->in_snapshot = false;
	if (rc != 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "journal %s: snapshot failed: %s", j->path,
		        rb_err_str(rc));
		j->compact_hold_until = uv_now(j->loop) + COMPACT_HOLD_MS;
		j->compact_req = false;
		start_write(j);
		return;
	}
	j->compacting = true;
	j->work.data = j;
	rc = uv_queue_work(j->loop, &j->work, compact_work, compact_after);
	if (rc < 0) {
		j->compacting = false;
		j->compact_hold_until = uv_now(j->loop) + COMPACT_HOLD_MS;
		start_write(j);
	}
}

// After each loop turn: the turn's records become one write and one sync.
static void flush(broker_journal *j)
{
	if (j->busy || j->closing)
		return;
	if (j->pending.len == 0) {
		uv_idle_stop(&j->idle);
		if (j->pending.head)
			batch_release(&j->pending, 0);
		return;
	}
	batch tmp = j->inflight;
	j->inflight = j->pending;
	j->pending = tmp;
	if (j->inflight.head == NULL)
		j->inflight.tail = &j->inflight.head;
	if (j->pending.head == NULL)
		j->pending.tail = &j->pending.head;
	j->pending.len = 0;
	j->busy = true;
	uv_idle_stop(&j->idle);
	if (compaction_due(j))
		start_compaction(j);
	else
		start_write(j);
}

static void check_cb(uv_check_t *h)
{
	flush(h->data);
}

static void destroy(broker_journal *j)
{
	if (j->fd >= 0)
		close(j->fd);
	batch_fini(&j->pending);
	batch_fini(&j->inflight);
	batch_fini(&j->snap);
	free(j->path);
	free(j);
}

static void handle_closed(uv_handle_t *h)
{
	broker_journal *j = h->data;
	if (--j->handles == 0)
		destroy(j);
}

static void finish_close(broker_journal *j)
{
	if (j->busy)
		return;
	batch_release(&j->pending, RB_ECLOSED);
	if (!j->started) {
		destroy(j);
		return;
	}
	j->handles = 3;
	uv_close((uv_handle_t *)&j->check, handle_closed);
	uv_close((uv_handle_t *)&j->idle, handle_closed);
	uv_close((uv_handle_t *)&j->retry, handle_closed);
}

void broker_journal_free(broker_journal *j)
{
	if (j == NULL || j->closing)
		return;
	j->closing = true;
	if (j->started) {
		uv_check_stop(&j->check);
		uv_idle_stop(&j->idle);
		if (j->failed && j->busy && !j->compacting && !j->io_active) {
			// Waiting for a retry that will not come: the held group is lost.
			uv_timer_stop(&j->retry);
			j->busy = false;
			batch_release(&j->inflight, RB_ECLOSED);
		}
	}
	finish_close(j);
}

static int mkdirs_for(const char *path)
{
	char buf[PATH_MAX];
	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return RB_EINVAL;
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0750) < 0 && errno != EEXIST)
			return rb_err_from_errno(errno);
		*p = '/';
	}
	return 0;
}

static void save_corrupt(const char *path, const uint8_t *p, size_t n)
{
	char side[PATH_MAX];
	snprintf(side, sizeof(side), "%s.corrupt-%llu", path, (unsigned long long)rb_now_us());
	int fd = open(side, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0 || write_all(fd, p, n) != 0 || fsync(fd) < 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "journal: could not keep the corrupt tail in %s: %s",
		        side, strerror(errno));
	} else {
		rb_logf(RB_LOG_ERROR, NULL, 0, "journal: corrupt tail (%zu bytes) kept in %s", n,
		        side);
	}
	if (fd >= 0)
		close(fd);
}

static int replay(const char *path, int fd, broker_journal_replay_fn fn, void *arg,
                  broker_journal_replay *st)
{
	struct stat sb;
	if (fstat(fd, &sb) < 0)
		return rb_err_from_errno(errno);
	size_t size = (size_t)sb.st_size;
	if (size == 0)
		return 0;
	uint8_t *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (map == MAP_FAILED)
		return rb_err_from_errno(errno);
	size_t off = 0;
	int rc = 0;
	while (off < size) {
		size_t left = size - off;
		if (left < BROKER_JOURNAL_HEADER) {
			st->torn = true;
			break;
		}
		uint32_t len = get_le32(map + off);
		uint32_t crc = get_le32(map + off + 4);
		if (len == 0 || len > BROKER_JOURNAL_RECORD_MAX) {
			st->corrupt = true;
			break;
		}
		if (left - BROKER_JOURNAL_HEADER < len) {
			st->torn = true;
			break;
		}
		const uint8_t *body = map + off + BROKER_JOURNAL_HEADER;
		if (broker_crc32c(0, body, len) != crc) {
			st->corrupt = true;
			break;
		}
		Ringbid__JournalEntry *e = ringbid__journal_entry__unpack(NULL, len, body);
		if (e == NULL || e->body_case == RINGBID__JOURNAL_ENTRY__BODY__NOT_SET) {
			if (e)
				ringbid__journal_entry__free_unpacked(e, NULL);
			st->corrupt = true;
			break;
		}
		rc = fn(e, arg);
		ringbid__journal_entry__free_unpacked(e, NULL);
		if (rc < 0)
			break;
		st->records++;
		off += BROKER_JOURNAL_HEADER + len;
	}
	st->bytes = off;
	if (rc == 0 && off < size) {
		st->cut_bytes = size - off;
		if (st->corrupt) {
			rb_logf(RB_LOG_ERROR, NULL, 0,
			        "journal %s: corrupt record at byte %zu; replay stops there", path,
			        off);
			save_corrupt(path, map + off, size - off);
		} else {
			rb_logf(RB_LOG_WARN, NULL, 0,
			        "journal %s: torn record at byte %zu (crash mid-write), cut off",
			        path, off);
		}
	}
	munmap(map, size);
	if (rc < 0)
		return rc;
	if (off < size && (ftruncate(fd, (off_t)off) < 0 || fsync(fd) < 0))
		return rb_err_from_errno(errno);
	return 0;
}

int broker_journal_open(const char *path, uint64_t max_bytes, broker_journal_replay_fn fn,
                        void *arg, broker_journal_replay *st, broker_journal **out)
{
	broker_journal_replay local;
	if (st == NULL)
		st = &local;
	memset(st, 0, sizeof(*st));
	*out = NULL;
	int rc = mkdirs_for(path);
	if (rc != 0)
		return rc;
	// A leftover path.new is a compaction that never reached its rename: the old file is
	// the journal.
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	unlink(tmp);

	int rfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (rfd < 0) {
		rb_logf(RB_LOG_ERROR, NULL, 0, "journal %s: %s", path, strerror(errno));
		return rb_err_from_errno(errno);
	}
	rc = replay(path, rfd, fn, arg, st);
	close(rfd);
	if (rc != 0)
		return rc;

	broker_journal *j = calloc(1, sizeof(*j));
	if (j == NULL || (j->path = strdup(path)) == NULL) {
		free(j);
		return RB_ENOMEM;
	}
	j->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (j->fd < 0) {
		rc = rb_err_from_errno(errno);
		free(j->path);
		free(j);
		return rc;
	}
	batch_init(&j->pending);
	batch_init(&j->inflight);
	batch_init(&j->snap);
	j->size = st->bytes;
	j->max_bytes = max_bytes ? max_bytes : BROKER_JOURNAL_MAX_DEFAULT;
	*out = j;
	return 0;
}

void broker_journal_on_snapshot(broker_journal *j, broker_journal_snapshot_fn fn, void *arg)
{
	j->snapshot_fn = fn;
	j->snapshot_arg = arg;
}

void broker_journal_on_health(broker_journal *j, broker_journal_health_fn fn, void *arg)
{
	j->health_fn = fn;
	j->health_arg = arg;
}

int broker_journal_start(broker_journal *j, uv_loop_t *loop)
{
	if (j->started)
		return RB_EINVAL;
	j->loop = loop;
	uv_check_init(loop, &j->check);
	uv_idle_init(loop, &j->idle);
	uv_timer_init(loop, &j->retry);
	j->check.data = j;
	j->idle.data = j;
	j->retry.data = j;
	j->started = true;
	uv_check_start(&j->check, check_cb);
	// Keeps the check handle from holding the loop open on its own.
	uv_unref((uv_handle_t *)&j->check);
	if (j->pending.len || j->pending.head)
		wake(j);
	return 0;
}

int broker_journal_append(broker_journal *j, const Ringbid__JournalEntry *e)
{
	if (j->closing)
		return RB_ECLOSED;
	int rc = batch_frame(&j->pending, e);
	if (rc == 0)
		wake(j);
	return rc;
}

int broker_journal_snapshot_add(broker_journal *j, const Ringbid__JournalEntry *e)
{
	if (!j->in_snapshot)
		return RB_ESTATE;
	return batch_frame(&j->snap, e);
}

int broker_journal_after(broker_journal *j, broker_journal_done_fn fn, void *arg)
{
	if (j->closing)
		return RB_ECLOSED;
	waiter *w = malloc(sizeof(*w));
	if (w == NULL)
		return RB_ENOMEM;
	w->fn = fn;
	w->arg = arg;
	w->next = NULL;
	*j->pending.tail = w;
	j->pending.tail = &w->next;
	wake(j);
	return 0;
}

bool broker_journal_ok(const broker_journal *j)
{
	return !j->failed;
}

bool broker_journal_idle(const broker_journal *j)
{
	return !j->busy && j->pending.len == 0 && j->pending.head == NULL;
}

uint64_t broker_journal_size(const broker_journal *j)
{
	return j->size;
}

void broker_journal_compact_soon(broker_journal *j)
{
	j->compact_req = true;
}

uint64_t broker_journal_compactions(const broker_journal *j)
{
	return j->compactions;
}
