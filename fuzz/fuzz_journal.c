// Fuzz target: the broker's journal replay. The input is written as a journal file and opened
// as the broker opens its journal after a crash: framing (length, CRC-32C), torn and corrupt
// tails, and every record decoded. Bytes on disk are outside input: a disk error or a bad
// copy must never crash the broker at start.
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "journal.h"
#include "rb_log.h"

static char dir[64];

static void remove_dir(void)
{
	rmdir(dir); // emptied after every input
}

static int count(const Ringbid__JournalEntry *e, void *arg)
{
	// Touch what the broker's replay reads first, so that a bad pointer shows here.
	if (e->body_case == RINGBID__JOURNAL_ENTRY__BODY_CALL && e->call != NULL &&
	    e->call->info != NULL && e->call->info->call_id != NULL)
		(void)strlen(e->call->info->call_id);
	(*(unsigned long *)arg)++;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (dir[0] == '\0') {
		rb_log_set_level(RB_LOG_ERROR);
		snprintf(dir, sizeof dir, "/tmp/rb-fuzz-journal-XXXXXX");
		if (mkdtemp(dir) == NULL)
			abort();
		atexit(remove_dir);
	}
	char path[128];
	snprintf(path, sizeof path, "%s/journal", dir);
	FILE *f = fopen(path, "wb");
	if (f == NULL)
		abort();
	if (size > 0 && fwrite(data, 1, size, f) != size)
		abort();
	fclose(f);

	unsigned long n = 0;
	broker_journal_replay st;
	broker_journal *j = NULL;
	if (broker_journal_open(path, 0, count, &n, &st, &j) == 0) {
		// What was kept is exactly what was handed over; the rest was cut.
		if (st.records != n || st.bytes + st.cut_bytes != size)
			abort();
		broker_journal_free(j);
	}
	// A corrupt tail is copied aside (path.corrupt-<time>) for inspection: clear the
	// directory so that copies do not pile up over millions of runs.
	DIR *d = opendir(dir);
	struct dirent *de;
	while (d != NULL && (de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		char victim[384];
		snprintf(victim, sizeof victim, "%s/%s", dir, de->d_name);
		unlink(victim);
	}
	if (d != NULL)
		closedir(d);
	return 0;
}
