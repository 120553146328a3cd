// Names of the wire enums (proto/ringbid.proto) as users see them in output, logs and JSON.
#ifndef RB_NAMES_H
#define RB_NAMES_H

// "ARRIVED" … "ENDED"; "NONE" for any other value. Static storage.
const char *rb_call_state_name(int state);
// "completed", "abandoned", "overflow"; "" for none or any other value. Static storage.
const char *rb_disposition_name(int disposition);
// "OFFLINE", "NOT_READY", "AVAILABLE", "RESERVED", "ON_CALL", "WRAP_UP"; NULL for any other
// value, so that a caller parsing names can tell a bad one. Static storage.
const char *rb_agent_state_name(int state);

#endif
