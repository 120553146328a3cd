// Call outcomes (surveys, resolution, sales, QA reviews) taken on the call API, checked field by
// field and forwarded to billing, each API request answered only when billing has answered.
#ifndef BROKER_OUTCOMES_H
#define BROKER_OUTCOMES_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_bus.h"
#include "ringbid.pb-c.h"

#define BROKER_OUTCOMES_MAX        16   // outcomes in one RecordOutcomes
#define BROKER_OUTCOMES_INFLIGHT   64   // requests waiting for billing at once
#define BROKER_OUTCOMES_TIMEOUT_MS 5000 // billing's deadline for one request
#define BROKER_REVIEWER_MAX        64   // QA reviewer ids (rb_valid_id)
#define BROKER_OUTCOME_WHY_MAX     192  // refusal text, naming the field

// recorded_us is at most 400 days old and at most 5 minutes ahead of the broker's clock.
#define BROKER_OUTCOME_PAST_US   (400ull * 86400u * 1000000u)
#define BROKER_OUTCOME_FUTURE_US (5ull * 60u * 1000000u)

typedef struct broker_outcome_req broker_outcome_req;
typedef struct broker_outcomes broker_outcomes;
// Every request has been answered (see broker_outcomes_on_idle).
typedef void (*broker_outcomes_fn)(broker_outcomes *o, void *arg);

struct broker_outcomes {
	rb_bus *bus; // REQ to billing, owned
	const char *token;
	broker_outcome_req *reqs; // on the bus, answered to the API or not
	int inflight;             // requests on the bus
	int unanswered;           // API requests still waiting for their answer
	bool closing;
	broker_outcomes_fn idle;
	void *idle_arg;
};

// Checks a RecordOutcomes from outside: 1..16 outcomes of one valid call id; a survey 1..5,
// resolved and sale 0..1, a QA review 0..100 with a valid reviewer id and every other kind
// with none; recorded_us 0 or within [now - 400 days, now + 5 min]; no (kind, reviewer) twice.
// On success fills the broker's fields: recorded_us 0 becomes now_us, call_known is set to
// call_known (whatever the sender put there). Returns 0, or RB_EINVAL with why (a text naming
// the field) and ro unchanged.
int broker_outcomes_check(Ringbid__RecordOutcomes *ro, uint64_t now_us, bool call_known, char *why,
                          size_t n);

void broker_outcomes_init(broker_outcomes *o);
// Dials billing at url on its own REQ socket (CDR batches have theirs: a slow batch never
// holds an outcome back). token must outlive o. Returns 0 or a code.
int broker_outcomes_start(broker_outcomes *o, uv_loop_t *loop, const char *url, const char *token);
// Sends ro (checked by broker_outcomes_check) to billing as one CdrBatch and answers req with
// a CallReply when billing answers: its error, or its OutcomeAcks; RB_EBUSY when billing is
// silent for 5 s or its answer is unusable (recording twice is harmless). On success req is
// taken; ro stays the caller's. Returns 0, or RB_EBUSY (64 requests already wait), RB_ECLOSED,
// RB_ENOMEM, a packing code, and then req stays the caller's to answer.
int broker_outcomes_forward(broker_outcomes *o, rb_bus_req *req, const Ringbid__RecordOutcomes *ro);
// API requests still waiting for billing.
int broker_outcomes_unanswered(const broker_outcomes *o);
// fn is called each time the last waiting API request has been answered (shutdown drains).
void broker_outcomes_on_idle(broker_outcomes *o, broker_outcomes_fn fn, void *arg);
// Answers every waiting API request now with code and why (shutdown past its deadline); their
// billing requests finish unseen.
void broker_outcomes_abort(broker_outcomes *o, int code, const char *why);
// Closes the billing socket; requests still waiting are answered RB_EBUSY. Run the loop
// afterwards. Safe to call twice and before start.
void broker_outcomes_fini(broker_outcomes *o);

#endif
