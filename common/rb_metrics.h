// Prometheus metrics: one registry per process, updated and rendered on the loop thread.
#ifndef RB_METRICS_H
#define RB_METRICS_H
#include <stddef.h>
#include <stdint.h>

typedef struct rb_metric rb_metric;

// Registers a counter (name should end in _total), a gauge or a histogram. labels is NULL or a
// Prometheus label set without braces ("state=\"available\""); one name may be registered with
// several label sets and shares HELP/TYPE. Names and help are copied. Returns NULL only when
// out of memory. Metrics live until rb_metrics_fini.
rb_metric *rb_metrics_counter(const char *name, const char *labels, const char *help);
rb_metric *rb_metrics_gauge(const char *name, const char *labels, const char *help);
// bounds: ascending upper bounds (base units, e.g. seconds); copied.
rb_metric *rb_metrics_histogram(const char *name, const char *labels, const char *help,
                                const double *bounds, size_t nbounds);

void rb_metric_inc(rb_metric *m);
void rb_metric_add(rb_metric *m, double v);
void rb_metric_set(rb_metric *m, double v);
void rb_metric_observe(rb_metric *m, double v);
double rb_metric_value(const rb_metric *m);

// Renders every metric in the Prometheus text format (0.0.4). *out is the caller's (free()).
int rb_metrics_render(char **out, size_t *len);
// Frees every metric.
void rb_metrics_fini(void);

#endif
