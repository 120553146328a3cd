// Fuzz target: the text parsers that read outside input: billing's HTTP query values and
// Authorization header, durations and booleans from the environment, and the $RINGBID_HOME/env
// file every program reads at start. The first byte picks the parser.
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "rb_secret.h"
#include "http.h"
#include "rb_config.h"
#include "rb_pb.h"

static char home[64];

static void remove_home(void)
{
	char path[128];
	snprintf(path, sizeof path, "%s/env", home);
	unlink(path);
	rmdir(home);
}

static void env_file(const char *text, size_t len)
{
	if (home[0] == '\0') {
		snprintf(home, sizeof home, "/tmp/rb-fuzz-home-XXXXXX");
		if (mkdtemp(home) == NULL)
			abort();
		setenv("RINGBID_HOME", home, 1);
		atexit(remove_home);
	}
	char path[128];
	snprintf(path, sizeof path, "%s/env", home);
	FILE *f = fopen(path, "wb");
	if (f == NULL)
		abort();
	if (len > 0 && fwrite(text, 1, len, f) != len)
		abort();
	fclose(f);
	(void)rb_config_load_home();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	if (!ready) {
		if (rb_secret_init() != 0) // libsodium: token comparison and hashes
			abort();
		ready = 1;
	}
	if (size < 1)
		return 0;
	// NUL-terminated copy: every parser here takes C strings.
	char *s = malloc(size);
	if (s == NULL)
		abort();
	memcpy(s, data + 1, size - 1);
	s[size - 1] = '\0';
	char out[256];
	long long v;
	bool b;
	switch (data[0] % 7) {
	case 0:
		if (billing_http_bearer(s, out, sizeof out) == 0 && strlen(out) >= sizeof out)
			abort();
		break;
	case 1:
		if (billing_http_period(s) == 0 && strlen(s) != 10)
			abort(); // YYYY-MM-DD only
		break;
	case 2:
		(void)billing_http_format(s);
		if (billing_http_period(s) == 0 && billing_http_format("csv") == 0)
			(void)billing_http_filename(s, "csv", data[0] & 0x80, out, sizeof out);
		break;
	case 3:
		if (rb_parse_ms(s, &v) == 0 && v < 0)
			abort();
		break;
	case 4:
		setenv("RINGBID_FUZZ_VALUE", s, 1);
		(void)rb_config_bool("RINGBID_FUZZ_VALUE", false, &b);
		(void)rb_config_int("RINGBID_FUZZ_VALUE", 0, -5, 5, &v);
		(void)rb_config_ms("RINGBID_FUZZ_VALUE", 10, 1, 60000, &v);
		(void)rb_config_url("RINGBID_FUZZ_VALUE", 5, out, sizeof out);
		break;
	case 5:
		if (rb_valid_id(s, 64) && strlen(s) > 64)
			abort();
		(void)rb_valid_text(s, 200);
		break;
	default:
		env_file((const char *)data + 1, size - 1);
		break;
	}
	free(s);
	return 0;
}
