// JSON-lines logging on stderr: one object per line with ts, level, service, msg, call_id,
// agent_id.
#ifndef RB_LOG_H
#define RB_LOG_H
#include <stdint.h>
#include <stddef.h>

typedef enum {
	RB_LOG_DEBUG = 0,
	RB_LOG_INFO,
	RB_LOG_WARN,
	RB_LOG_ERROR
} rb_log_level;

// Sets the service name and reads RINGBID_LOG_LEVEL (debug|info|warn|error, default info).
// service must outlive all logging (a string literal).
void rb_log_init(const char *service);
void rb_log_set_level(rb_log_level level);
rb_log_level rb_log_get_level(void);

// Logs one line. call_id may be NULL, agent_id 0 means none. Thread-safe: lines never interleave.
void rb_logf(rb_log_level level, const char *call_id, uint64_t agent_id, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

#define rb_debug(...) rb_logf(RB_LOG_DEBUG, NULL, 0, __VA_ARGS__)
#define rb_info(...)  rb_logf(RB_LOG_INFO, NULL, 0, __VA_ARGS__)
#define rb_warn(...)  rb_logf(RB_LOG_WARN, NULL, 0, __VA_ARGS__)
#define rb_error(...) rb_logf(RB_LOG_ERROR, NULL, 0, __VA_ARGS__)

// Masks a caller number for logs and agents' screens: keeps a leading '+', the last two digits
// and the separators " -()." ("+1 (555) 123-4542" -> "+* (***) ***-**42"); every other
// character becomes '*'. NULL gives "". Writes at most n bytes including the NUL. Returns out.
char *rb_mask_caller(const char *number, char *out, size_t n);

#endif
