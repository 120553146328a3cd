// Runs a fuzz target over its committed corpus and crash regressions, without libFuzzer, so
// that `make check` (and its sanitizer build) replays every input that ever found a bug.
//
//   build/fuzzrun/<target> [FILE|DIR ...]   default: fuzz/corpus/<target> fuzz/regressions/<target>
//
// Prints cmocka's summary line ("[  PASSED  ] N test(s).") so tests/run.sh counts the inputs.
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#define DRIVER_INPUT_MAX (1u << 20) // libFuzzer's default -max_len is far below this

static unsigned long runs;

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	uint8_t *buf = malloc(DRIVER_INPUT_MAX);
	size_t n = buf ? fread(buf, 1, DRIVER_INPUT_MAX, f) : 0;
	fclose(f);
	if (buf == NULL)
		return -1;
	// An exact-size copy: reading past the input then trips the address sanitizer, as it would
	// under libFuzzer.
	uint8_t *exact = malloc(n ? n : 1);
	if (exact == NULL) {
		free(buf);
		return -1;
	}
	memcpy(exact, buf, n);
	free(buf);
	LLVMFuzzerTestOneInput(exact, n);
	free(exact);
	runs++;
	return 0;
}

static int run_path(const char *path, int must_exist)
{
	struct stat st;
	if (stat(path, &st) != 0)
		return must_exist ? -1 : 0;
	if (!S_ISDIR(st.st_mode))
		return run_file(path);
	DIR *d = opendir(path);
	if (d == NULL)
		return -1;
	struct dirent *e;
	int rv = 0;
	while ((e = readdir(d)) != NULL && rv == 0) {
		char child[PATH_MAX];
		if (e->d_name[0] == '.')
			continue;
		if (snprintf(child, sizeof child, "%s/%s", path, e->d_name) >= (int)sizeof child)
			continue;
		rv = run_path(child, 1);
	}
	closedir(d);
	return rv;
}

int main(int argc, char **argv)
{
	int rv = 0;
	if (argc > 1) {
		for (int i = 1; i < argc && rv == 0; i++)
			rv = run_path(argv[i], 1);
	} else {
		char self[PATH_MAX], corpus[PATH_MAX], regress[PATH_MAX];
		snprintf(self, sizeof self, "%s", argv[0]);
		const char *name = basename(self);
		snprintf(corpus, sizeof corpus, "fuzz/corpus/%s", name);
		snprintf(regress, sizeof regress, "fuzz/regressions/%s", name);
		rv = run_path(corpus, 1);
		if (rv == 0)
			rv = run_path(regress, 0);
	}
	if (rv != 0 || runs == 0) {
		printf("[  FAILED  ] 1 test(s), listed below:\n[  FAILED  ] %s: no inputs read\n",
		       argv[0]);
		return 1;
	}
	printf("[  PASSED  ] %lu test(s).\n", runs);
	return 0;
}
