// Prometheus metrics registry: counters, gauges and histograms rendered as text format 0.0.4.
#include "rb_metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_err.h"
#include "rb_log.h"

typedef enum {
	KIND_COUNTER,
	KIND_GAUGE,
	KIND_HISTOGRAM
} metric_kind;

struct rb_metric {
	rb_metric *next; // registration order
	char *name;
	char *labels; // NULL or "a=\"b\",c=\"d\""
	char *help;
	metric_kind kind;
	bool rendered;    // false for a name registered again with another type
	double value;     // counter, gauge
	double *bounds;   // histogram upper bounds, ascending, without +Inf
	uint64_t *counts; // per bucket (not cumulative), nbounds + 1 with the +Inf bucket
	size_t nbounds;
	double sum;
	uint64_t count;
};

// One process-wide registry, touched only from the loop thread.
static rb_metric *metrics_head;
static rb_metric *metrics_tail;

static const char *kind_name(metric_kind kind)
{
	switch (kind) {
	case KIND_COUNTER:
		return "counter";
	case KIND_GAUGE:
		return "gauge";
	case KIND_HISTOGRAM:
		return "histogram";
	}
	return "untyped";
}

static bool same_labels(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static void metric_free(rb_metric *m)
{
	free(m->name);
	free(m->labels);
	free(m->help);
	free(m->bounds);
	free(m->counts);
	free(m);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a;
	double y = *(const double *)b;

	return (x > y) - (x < y);
}

static rb_metric *metric_register(const char *name, const char *labels, const char *help,
                                  metric_kind kind, const double *bounds, size_t nbounds)
{
	rb_metric *m;
	rb_metric *it;
	bool rendered = true;

	if (name == NULL)
		return NULL;
	if (labels != NULL && labels[0] == '\0')
		labels = NULL;
	// Registering the same series twice returns the first: modules may register lazily.
	for (it = metrics_head; it != NULL; it = it->next) {
		if (strcmp(it->name, name) != 0)
			continue;
		if (it->kind != kind) {
			// Rendering two types under one name would make the whole page invalid;
			// keep the caller working with a metric that is counted but never shown.
			rb_error("metric %s registered as %s and as %s", name, kind_name(it->kind),
			         kind_name(kind));
			rendered = false;
			break;
		}
		if (same_labels(it->labels, labels) && it->rendered)
			return it;
	}

	m = calloc(1, sizeof(*m));
	if (m == NULL)
		return NULL;
	m->kind = kind;
	m->rendered = rendered;
	m->name = strdup(name);
	m->labels = labels != NULL ? strdup(labels) : NULL;
	m->help = strdup(help != NULL ? help : "");
	if (m->name == NULL || (labels != NULL && m->labels == NULL) || m->help == NULL)
		goto fail;
	if (kind == KIND_HISTOGRAM) {
		size_t n = 0;

		m->bounds = calloc(nbounds > 0 ? nbounds : 1, sizeof(double));
		if (m->bounds == NULL)
			goto fail;
		// The +Inf bucket is always added by rendering, and bounds must be strictly
		// ascending: drop infinities, NaNs and duplicates, sort what is left.
		for (size_t i = 0; i < nbounds; i++) {
			if (isfinite(bounds[i]))
				m->bounds[n++] = bounds[i];
		}
		qsort(m->bounds, n, sizeof(double), cmp_double);
		m->nbounds = 0;
		for (size_t i = 0; i < n; i++) {
			if (m->nbounds == 0 || m->bounds[i] != m->bounds[m->nbounds - 1])
				m->bounds[m->nbounds++] = m->bounds[i];
		}
		m->counts = calloc(m->nbounds + 1, sizeof(uint64_t));
		if (m->counts == NULL)
			goto fail;
	}

	if (metrics_tail != NULL)
		metrics_tail->next = m;
	else
		metrics_head = m;
	metrics_tail = m;
	return m;
fail:
	metric_free(m);
	return NULL;
}

rb_metric *rb_metrics_counter(const char *name, const char *labels, const char *help)
{
	return metric_register(name, labels, help, KIND_COUNTER, NULL, 0);
}

rb_metric *rb_metrics_gauge(const char *name, const char *labels, const char *help)
{
	return metric_register(name, labels, help, KIND_GAUGE, NULL, 0);
}

rb_metric *rb_metrics_histogram(const char *name, const char *labels, const char *help,
                                const double *bounds, size_t nbounds)
{
	if (bounds == NULL)
		nbounds = 0;
	return metric_register(name, labels, help, KIND_HISTOGRAM, bounds, nbounds);
}

void rb_metric_inc(rb_metric *m)
{
	rb_metric_add(m, 1.0);
}

void rb_metric_add(rb_metric *m, double v)
{
	if (m == NULL || m->kind == KIND_HISTOGRAM || isnan(v))
		return;
	// A counter only goes up; a negative step is a caller's bug, not a reset.
	if (m->kind == KIND_COUNTER && v < 0)
		return;
	m->value += v;
}

void rb_metric_set(rb_metric *m, double v)
{
	if (m == NULL || m->kind == KIND_HISTOGRAM)
		return;
	m->value = v;
}

void rb_metric_observe(rb_metric *m, double v)
{
	size_t i;

	if (m == NULL || m->kind != KIND_HISTOGRAM || isnan(v))
		return;
	for (i = 0; i < m->nbounds; i++) {
		if (v <= m->bounds[i])
			break;
	}
	m->counts[i]++;
	m->count++;
	m->sum += v;
}

double rb_metric_value(const rb_metric *m)
{
	if (m == NULL)
		return 0;
	if (m->kind == KIND_HISTOGRAM)
		return (double)m->count;
	return m->value;
}

// A growing text buffer; the first failed allocation sticks, so callers check once at the end.
typedef struct {
	char *buf;
	size_t len;
	size_t cap;
	bool failed;
} textbuf;

static void tb_reserve(textbuf *tb, size_t more)
{
	size_t cap;
	char *nb;

	if (tb->failed || tb->len + more + 1 <= tb->cap)
		return;
	cap = tb->cap > 0 ? tb->cap : 1024;
	while (cap < tb->len + more + 1)
		cap *= 2;
	nb = realloc(tb->buf, cap);
	if (nb == NULL) {
		tb->failed = true;
		return;
	}
	tb->buf = nb;
	tb->cap = cap;
}

static void tb_put(textbuf *tb, const char *s, size_t n)
{
	tb_reserve(tb, n);
	if (tb->failed)
		return;
	memcpy(tb->buf + tb->len, s, n);
	tb->len += n;
	tb->buf[tb->len] = '\0';
}

static void tb_puts(textbuf *tb, const char *s)
{
	tb_put(tb, s, strlen(s));
}

static void tb_printf(textbuf *tb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void tb_printf(textbuf *tb, const char *fmt, ...)
{
	char small[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0) {
		tb->failed = true;
		return;
	}
	if ((size_t)n < sizeof(small)) {
		tb_put(tb, small, (size_t)n);
		return;
	}
	tb_reserve(tb, (size_t)n);
	if (tb->failed)
		return;
	va_start(ap, fmt);
	vsnprintf(tb->buf + tb->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	tb->len += (size_t)n;
}

// Formats v the way Prometheus reads it: integers without a fraction, other values in the
// shortest form that reads back as the same double, and NaN/+Inf/-Inf by name.
static void format_value(double v, char *out, size_t n)
{
	if (isnan(v)) {
		snprintf(out, n, "NaN");
		return;
	}
	if (isinf(v)) {
		snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
		return;
	}
	if (v == floor(v) && fabs(v) < 9007199254740992.0) {
		snprintf(out, n, "%.0f", v);
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(out, n, "%.*g", prec, v);
		if (strtod(out, NULL) == v)
			return;
	}
}

// HELP text escapes backslash and newline (text format 0.0.4).
static void put_help(textbuf *tb, const char *help)
{
	for (const char *p = help; *p != '\0'; p++) {
		if (*p == '\\')
			tb_puts(tb, "\\\\");
		else if (*p == '\n')
			tb_puts(tb, "\\n");
		else
			tb_put(tb, p, 1);
	}
}

static void put_sample(textbuf *tb, const char *name, const char *suffix, const char *labels,
                       const char *le, double v)
{
	char num[64];

	tb_puts(tb, name);
	tb_puts(tb, suffix);
	if (labels != NULL || le != NULL) {
		tb_puts(tb, "{");
		if (labels != NULL)
			tb_puts(tb, labels);
		if (le != NULL) {
			if (labels != NULL)
				tb_puts(tb, ",");
			tb_printf(tb, "le=\"%s\"", le);
		}
		tb_puts(tb, "}");
	}
	format_value(v, num, sizeof(num));
	tb_printf(tb, " %s\n", num);
}

static void put_series(textbuf *tb, const rb_metric *m)
{
	uint64_t cum = 0;
	char le[64];

	if (m->kind != KIND_HISTOGRAM) {
		put_sample(tb, m->name, "", m->labels, NULL, m->value);
		return;
	}
	for (size_t i = 0; i < m->nbounds; i++) {
		cum += m->counts[i];
		format_value(m->bounds[i], le, sizeof(le));
		put_sample(tb, m->name, "_bucket", m->labels, le, (double)cum);
	}
	cum += m->counts[m->nbounds];
	put_sample(tb, m->name, "_bucket", m->labels, "+Inf", (double)cum);
	put_sample(tb, m->name, "_sum", m->labels, NULL, m->sum);
	put_sample(tb, m->name, "_count", m->labels, NULL, (double)m->count);
}

int rb_metrics_render(char **out, size_t *len)
{
	textbuf tb = {0};

	if (out == NULL)
		return RB_EINVAL;
	*out = NULL;
	if (len != NULL)
		*len = 0;
	tb_reserve(&tb, 0);
	if (!tb.failed)
		tb.buf[0] = '\0';
	// Families in order of first registration; every series of a family follows its one
	// HELP/TYPE block, as the format requires (a family may not be split).
	for (rb_metric *first = metrics_head; first != NULL; first = first->next) {
		bool seen = false;

		if (!first->rendered)
			continue;
		for (rb_metric *prev = metrics_head; prev != first; prev = prev->next) {
			if (prev->rendered && strcmp(prev->name, first->name) == 0) {
				seen = true;
				break;
			}
		}
		if (seen)
			continue;
		tb_printf(&tb, "# HELP %s ", first->name);
		put_help(&tb, first->help);
		tb_printf(&tb, "\n# TYPE %s %s\n", first->name, kind_name(first->kind));
		for (rb_metric *m = first; m != NULL; m = m->next) {
			if (m->rendered && strcmp(m->name, first->name) == 0)
				put_series(&tb, m);
		}
	}
	if (tb.failed) {
		free(tb.buf);
		return RB_ENOMEM;
	}
	*out = tb.buf;
	if (len != NULL)
		*len = tb.len;
	return 0;
}

void rb_metrics_fini(void)
{
	rb_metric *m = metrics_head;

	while (m != NULL) {
		rb_metric *next = m->next;

		metric_free(m);
		m = next;
	}
	metrics_head = NULL;
	metrics_tail = NULL;
}
