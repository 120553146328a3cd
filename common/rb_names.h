// Names of the wire enums (proto/ringbid.proto) as users see them in output, logs and JSON.
#ifndef RB_NAMES_H
#define RB_NAMES_H
#include <stdbool.h>

// "ARRIVED" … "ENDED"; "NONE" for any other value. Static storage.
const char *rb_call_state_name(int state);
// "completed", "abandoned", "overflow"; "" for none or any other value. Static storage.
const char *rb_disposition_name(int disposition);
// "OFFLINE", "NOT_READY", "AVAILABLE", "RESERVED", "ON_CALL", "WRAP_UP"; NULL for any other
// value, so that a caller parsing names can tell a bad one. Static storage.
const char *rb_agent_state_name(int state);

// "survey", "resolved", "sale", "qa" (the names billing stores and the CLI shows); NULL for
// any other value. Static storage.
const char *rb_outcome_kind_name(int kind);
// The kind named name (as above); 0 (OUTCOME_NONE) for NULL or an unknown name.
int rb_outcome_kind_of(const char *name);
// The values an outcome of kind may carry, inclusive, and a sentence saying so ("a survey
// score is 1-5"). Returns false for a kind that does not exist. The broker, billing and the
// CLI check outcomes against this one table.
bool rb_outcome_range(int kind, int *lo, int *hi, const char **what);

#endif
