// The agent client's command line and where its secret comes from.
#ifndef AGENT_OPTIONS_H
#define AGENT_OPTIONS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "client.h"

#define AGENT_MAX_TALK_S 86400 // --auto-answer above a day is a typo

typedef struct agent_options {
	uint64_t agent_id;
	const char *secret_file; // --secret-file (points into argv), NULL when not given
	const char *url;         // --url (points into argv), NULL when not given
	bool auto_answer;        // --auto-answer given
	uint64_t talk_ms;        // its SECONDS, in milliseconds
	uint32_t sale_every;     // --sale-every N: every Nth auto-answered call is a sale (0: none)
	bool json;
	bool decline;
	bool ignore_offers;
	bool no_ready;
	bool help;
	bool version;
} agent_options;

// Parses argv (argv[0] is the program). Returns 0, or RB_EINVAL with a sentence in err (a
// --secret flag is refused this way: secrets on a command line are visible to every user).
// With --help or --version the other options are not checked.
int agent_options_parse(int argc, char **argv, agent_options *o, char *err, size_t errn);

// How offers are handled and whether the client goes ready by itself, from the options.
agent_offer_policy agent_options_policy(const agent_options *o);
bool agent_options_auto_ready(const agent_options *o);

// Parses "SECONDS" with an optional decimal fraction ("2", "0.5", "1.25") into milliseconds,
// at most AGENT_MAX_TALK_S. Returns 0 or RB_EINVAL.
int agent_parse_seconds(const char *text, uint64_t *ms);

// Finds the agent's secret: the file of --secret-file, else the file named by
// $RINGBID_AGENT_SECRET_FILE, else $RINGBID_AGENT_SECRET. A file's trailing line break is
// dropped. Writes the secret into out (n bytes, NUL-terminated) and which source it came from
// into *source (static text). Returns 0, or with a sentence in err: RB_ENOTFOUND (no source),
// RB_EIO (file unreadable), RB_EINVAL (empty or several lines), RB_ETOOBIG (longer than
// AGENT_SECRET_MAX or n).
int agent_secret_load(const agent_options *o, char *out, size_t n, const char **source, char *err,
                      size_t errn);

// The --help text.
extern const char agent_usage[];

#endif
