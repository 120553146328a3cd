// Clocks: monotonic for timers and durations, UTC microseconds for records.
#ifndef RB_TIME_H
#define RB_TIME_H
#include <stdint.h>
#include <stddef.h>

// Wall clock, UTC microseconds since the Unix epoch.
uint64_t rb_now_us(void);
// Monotonic clock in microseconds (CLOCK_MONOTONIC); only differences mean anything.
uint64_t rb_mono_us(void);
// Formats a UTC microsecond time as ISO 8601 ("2026-11-23T10:00:00.123456Z") into out.
// Returns out. out must hold at least 32 bytes.
char *rb_time_iso(uint64_t us, char *out, size_t n);

#endif
