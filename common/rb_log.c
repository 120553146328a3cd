// JSON-lines logging on stderr, one write(2) per line, and masking of caller numbers.
#include "rb_log.h"
#include "rb_time.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

// A message longer than this is cut (and marked) so a line always fits in one write.
#define LOG_MSG_MAX 2048
#define LOG_ID_MAX  128
// Worst case every byte becomes a six-byte escape; plus the fixed fields.
#define LOG_LINE_MAX ((LOG_MSG_MAX + LOG_ID_MAX + 64) * 6 + 256)

static const char *log_service = "ringbid";
static atomic_int log_level = RB_LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

static int parse_level(const char *s, rb_log_level *out)
{
	for (int i = RB_LOG_DEBUG; i <= RB_LOG_ERROR; i++) {
		if (strcasecmp(s, level_names[i]) == 0) {
			*out = (rb_log_level)i;
			return 0;
		}
	}
	// "warning" is what people type as often as "warn".
	if (strcasecmp(s, "warning") == 0) {
		*out = RB_LOG_WARN;
		return 0;
	}
	return -1;
}

void rb_log_init(const char *service)
{
	const char *env = getenv("RINGBID_LOG_LEVEL");
	rb_log_level level = RB_LOG_INFO;

	if (service != NULL && service[0] != '\0')
		log_service = service;
	if (env != NULL && env[0] != '\0' && parse_level(env, &level) != 0) {
		atomic_store(&log_level, RB_LOG_INFO);
		rb_warn("RINGBID_LOG_LEVEL: unknown level, using info (debug|info|warn|error)");
		return;
	}
	atomic_store(&log_level, (int)level);
}

void rb_log_set_level(rb_log_level level)
{
	if (level < RB_LOG_DEBUG)
		level = RB_LOG_DEBUG;
	if (level > RB_LOG_ERROR)
		level = RB_LOG_ERROR;
	atomic_store(&log_level, (int)level);
}

rb_log_level rb_log_get_level(void)
{
	return (rb_log_level)atomic_load(&log_level);
}

// Length of the valid UTF-8 sequence at s (at most len bytes), or 0 when it is not one.
static size_t utf8_seq(const unsigned char *s, size_t len)
{
	unsigned c = s[0];
	size_t need;
	unsigned min;
	unsigned cp;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 2;
		min = 0x80;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 3;
		min = 0x800;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 4;
		min = 0x10000;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (len < need)
		return 0;
	for (size_t i = 1; i < need; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return need;
}

// Appends s as a JSON string (quotes included). Invalid UTF-8 becomes U+FFFD so every line
// stays parseable whatever bytes a peer sent us. The caller sized buf for the worst case.
static size_t put_json_str(char *buf, size_t pos, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;

	buf[pos++] = '"';
	while (i < len) {
		unsigned char c = p[i];
		size_t seq;

		switch (c) {
		case '"':
		case '\\':
			buf[pos++] = '\\';
			buf[pos++] = (char)c;
			i++;
			continue;
		case '\n':
			buf[pos++] = '\\';
			buf[pos++] = 'n';
			i++;
			continue;
		case '\r':
			buf[pos++] = '\\';
			buf[pos++] = 'r';
			i++;
			continue;
		case '\t':
			buf[pos++] = '\\';
			buf[pos++] = 't';
			i++;
			continue;
		default:
			break;
		}
		if (c < 0x20 || c == 0x7f) {
			memcpy(buf + pos, "\\u00", 4);
			pos += 4;
			buf[pos++] = hex[c >> 4];
			buf[pos++] = hex[c & 0xf];
			i++;
			continue;
		}
		seq = utf8_seq(p + i, len - i);
		if (seq == 0) {
			memcpy(buf + pos, "\\ufffd", 6);
			pos += 6;
			i++;
			continue;
		}
		memcpy(buf + pos, p + i, seq);
		pos += seq;
		i += seq;
	}
	buf[pos++] = '"';
	return pos;
}

static size_t put_raw(char *buf, size_t pos, const char *s)
{
	size_t len = strlen(s);

	memcpy(buf + pos, s, len);
	return pos + len;
}

static void write_all(const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t w = write(STDERR_FILENO, buf, len);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return; // nowhere left to report a failing stderr
		}
		buf += w;
		len -= (size_t)w;
	}
}

void rb_logf(rb_log_level level, const char *call_id, uint64_t agent_id, const char *fmt, ...)
{
	char msg[LOG_MSG_MAX + 1];
	char ts[40];
	char num[48];
	char line[LOG_LINE_MAX];
	size_t pos = 0;
	size_t msg_len;
	va_list ap;
	int r;
	int saved_errno = errno;

	if (level < RB_LOG_DEBUG || level > RB_LOG_ERROR)
		level = RB_LOG_ERROR;
	if ((int)level < atomic_load(&log_level))
		return;

	va_start(ap, fmt);
	r = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (r < 0) {
		snprintf(msg, sizeof(msg), "(unformattable log message)");
		r = (int)strlen(msg);
	}
	msg_len = (size_t)r;
	if (msg_len > LOG_MSG_MAX) {
		// Cut on a byte boundary and say so; the escaper turns a split character into
		// U+FFFD.
		msg_len = LOG_MSG_MAX - 3;
		memcpy(msg + msg_len, "...", 3);
		msg_len = LOG_MSG_MAX;
	}

	rb_time_iso(rb_now_us(), ts, sizeof(ts));
	pos = put_raw(line, pos, "{\"ts\":\"");
	pos = put_raw(line, pos, ts);
	pos = put_raw(line, pos, "\",\"level\":\"");
	pos = put_raw(line, pos, level_names[level]);
	pos = put_raw(line, pos, "\",\"service\":");
	pos = put_json_str(line, pos, log_service, strnlen(log_service, LOG_ID_MAX));
	pos = put_raw(line, pos, ",\"msg\":");
	pos = put_json_str(line, pos, msg, msg_len);
	if (call_id != NULL) {
		pos = put_raw(line, pos, ",\"call_id\":");
		pos = put_json_str(line, pos, call_id, strnlen(call_id, LOG_ID_MAX));
	}
	if (agent_id != 0) {
		snprintf(num, sizeof(num), ",\"agent_id\":%llu", (unsigned long long)agent_id);
		pos = put_raw(line, pos, num);
	}
	line[pos++] = '}';
	line[pos++] = '\n';

	pthread_mutex_lock(&log_lock);
	write_all(line, pos);
	pthread_mutex_unlock(&log_lock);
	errno = saved_errno;
}

char *rb_mask_caller(const char *number, char *out, size_t n)
{
	size_t len;
	size_t digits = 0;
	size_t seen = 0;
	size_t pos = 0;

	if (out == NULL || n == 0)
		return out;
	out[0] = '\0';
	if (number == NULL)
		return out;
	len = strlen(number);
	for (size_t i = 0; i < len; i++) {
		if (number[i] >= '0' && number[i] <= '9')
			digits++;
	}
	for (size_t i = 0; i < len && pos + 1 < n; i++) {
		char c = number[i];

		if (i == 0 && c == '+') {
			out[pos++] = c;
		} else if (c >= '0' && c <= '9') {
			seen++;
			out[pos++] = seen + 2 > digits ? c : '*';
		} else if (c == ' ' || c == '-' || c == '(' || c == ')' || c == '.') {
			out[pos++] = c; // separators carry no part of the number
		} else {
			out[pos++] = '*'; // anything else might identify the caller
		}
	}
	out[pos] = '\0';
	return out;
}
