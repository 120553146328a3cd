// Clocks: wall-clock UTC microseconds for records, monotonic microseconds for timers.
#include "rb_time.h"

#include <stdio.h>
#include <time.h>

static uint64_t clock_us(clockid_t id)
{
	struct timespec ts;

	// Both clocks always exist on Linux; a failure leaves ts zeroed rather than garbage.
	if (clock_gettime(id, &ts) != 0)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t rb_now_us(void)
{
	return clock_us(CLOCK_REALTIME);
}

uint64_t rb_mono_us(void)
{
	return clock_us(CLOCK_MONOTONIC);
}

char *rb_time_iso(uint64_t us, char *out, size_t n)
{
	struct tm tm;
	time_t secs = (time_t)(us / 1000000u);
	unsigned frac = (unsigned)(us % 1000000u);

	if (out == NULL || n == 0)
		return out;
	if (gmtime_r(&secs, &tm) == NULL) {
		out[0] = '\0';
		return out;
	}
	snprintf(out, n, "%04d-%02d-%02dT%02d:%02d:%02d.%06uZ", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
	return out;
}
