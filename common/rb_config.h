// Configuration from the environment (12-factor): typed, range-checked, secrets from *_FILE.
#ifndef RB_CONFIG_H
#define RB_CONFIG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Default local ports: RINGBID_PORT_BASE (default 7100) plus these offsets. Every URL can also
// be set on its own through the variable named beside it.
#define RB_PORT_BROKER_CALLS     1  // RINGBID_BROKER_URL: call API (REP)
#define RB_PORT_BROKER_AUCTION   2  // RINGBID_BROKER_AUCTION_URL: broker<->auction (pair1)
#define RB_PORT_BROKER_PRESENCE  3  // RINGBID_BROKER_PRESENCE_URL: broker<->presence (pair1)
#define RB_PORT_AUCTION_PRESENCE 4  // RINGBID_AUCTION_URL: presence->auction (pair1)
#define RB_PORT_PRESENCE_AGENTS  5  // RINGBID_PRESENCE_URL: agents' clients (pair1 poly)
#define RB_PORT_BILLING_CDRS     6  // RINGBID_BILLING_URL: broker->billing CDRs (REP)
#define RB_PORT_BROKER_HTTP      81 // RINGBID_BROKER_HTTP: admin HTTP "host:port"
#define RB_PORT_AUCTION_HTTP     82 // RINGBID_AUCTION_HTTP
#define RB_PORT_PRESENCE_HTTP    83 // RINGBID_PRESENCE_HTTP
#define RB_PORT_BILLING_HTTP     84 // RINGBID_BILLING_HTTP

// Reads string variable name; if unset, reads the file named by name_FILE (trailing newline
// stripped); else def (NULL def: RB_ENOTFOUND). Writes a NUL-terminated copy into out.
// Returns 0, RB_ENOTFOUND, RB_ETOOBIG (does not fit), RB_EIO (unreadable file), RB_ECONFIG (a
// NUL byte in the file). A variable set to "" is set (to ""); an empty name_FILE is ignored.
int rb_config_str(const char *name, const char *def, char *out, size_t n);

// Integer in [min, max]; unset gives def. Returns 0, or RB_ECONFIG (bad text or out of range;
// *out untouched). Strict: decimal with an optional sign, no spaces, "" is bad text. Like every
// typed getter it also reads name_FILE. Refusals are logged, naming the variable.
int rb_config_int(const char *name, long long def, long long min, long long max, long long *out);

// Duration in milliseconds: "1500", "1500ms", "15s", "2m", "1h" (whole numbers, no sign).
// Range-checked like rb_config_int.
int rb_config_ms(const char *name, long long def_ms, long long min_ms, long long max_ms,
                 long long *out_ms);

// Boolean: 1/0, true/false, yes/no, on/off. Returns 0 or RB_ECONFIG.
int rb_config_bool(const char *name, bool def, bool *out);

// Parses a duration string as rb_config_ms does. Returns 0 or RB_ECONFIG.
int rb_parse_ms(const char *text, long long *out_ms);

// nng URL for a link: the variable env if set and not empty (env may be NULL), else
// "tcp://127.0.0.1:<base+offset>". RB_ECONFIG when RINGBID_PORT_BASE is bad (1024..65000).
int rb_config_url(const char *env, int port_offset, char *out, size_t n);
// HTTP admin address "host:port": env if set, else "127.0.0.1:<base+offset>".
int rb_config_http(const char *env, int port_offset, char *out, size_t n);

// The shared service token (RINGBID_SERVICE_TOKEN or RINGBID_SERVICE_TOKEN_FILE); the local
// default "ringbid-local-service-token" is used, with a warning, only when neither is set.
int rb_config_service_token(char *out, size_t n);

// libpq conninfo: RINGBID_DATABASE_URL if set, else "" (libpq then reads the PG* variables).
int rb_config_conninfo(char *out, size_t n);

// ringbid's home directory: RINGBID_HOME, default "./var". Writes it into out.
int rb_config_home(char *out, size_t n);

// Loads $RINGBID_HOME/env (KEY=VALUE lines written by `ringbid up`; '#' comments) into the
// environment, never overriding a variable already set. A missing file is not an error. Values
// are taken verbatim after the first '=' (no quotes, no expansion). A file with a malformed line
// changes nothing. Returns 0, or RB_EIO / RB_ECONFIG (a malformed line, named in the log).
int rb_config_load_home(void);

#endif
