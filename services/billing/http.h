// Billing's HTTP routes for money: the payroll download (finance only) and an agent's own
// earnings, behind bearer tokens checked in PostgreSQL.
#ifndef BILLING_HTTP_H
#define BILLING_HTTP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_db.h"
#include "rb_http.h"
#include "rb_metrics.h"

#define BILLING_TOKEN_MAX  128 // longest bearer token accepted (ours are 64 hex digits)
#define BILLING_PERIOD_LEN 10  // "2026-11-16"
#define BILLING_TZ_MAX     64

typedef struct billing_http {
	rb_db *const *db; // the service's connection; NULL while stopping
	char tz[BILLING_TZ_MAX + 1];
	rb_metric *m_downloads, *m_denied;
} billing_http;

// Registers GET /payroll/export and GET /me/earnings on http (before rb_http_start). h must
// outlive http; *db is read at each request, so the service may clear it when it stops. tz is
// the pay time zone (RINGBID_PAY_TZ), copied. Returns 0 or a code from rb_http_route, RB_EINVAL
// (tz empty or too long).
int billing_http_init(billing_http *h, rb_http *http, rb_db *const *db, const char *tz);

// ---- pure parsing (exported for the unit tests)

// Takes the token out of an Authorization header "Bearer <token>" (scheme case-insensitive,
// blanks around the token ignored). The token is 1..n-1 characters of [A-Za-z0-9._~+/=-].
// Returns 0 or RB_EAUTH (absent, another scheme, empty, too long, bad characters).
int billing_http_bearer(const char *header, char *token, size_t n);
// A pay period's first day: exactly YYYY-MM-DD and a real date. Returns 0 or RB_EINVAL.
int billing_http_period(const char *text);
// A payroll file format: csv, adp, paychex or gusto. Returns 0 or RB_EINVAL.
int billing_http_format(const char *text);
// "ringbid-payroll-<period>-<format>[.provisional].csv" into out. Returns 0 or RB_ETOOBIG.
int billing_http_filename(const char *period, const char *format, bool provisional, char *out,
                          size_t n);

// conninfo (a postgresql:// URI or key=value words, possibly empty) with every transaction
// made READ ONLY (default_transaction_read_only) into out. Returns 0 or RB_ETOOBIG.
int billing_readonly_conninfo(const char *conninfo, char *out, size_t n);

#endif
