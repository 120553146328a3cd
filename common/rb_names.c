// Names of the wire enums (proto/ringbid.proto) as users see them in output, logs and JSON.
#include "rb_names.h"

#include "ringbid.pb-c.h"

const char *rb_call_state_name(int state)
{
	switch (state) {
	case RINGBID__CALL_STATE__CALL_ARRIVED:
		return "ARRIVED";
	case RINGBID__CALL_STATE__CALL_QUEUED:
		return "QUEUED";
	case RINGBID__CALL_STATE__CALL_OFFERED:
		return "OFFERED";
	case RINGBID__CALL_STATE__CALL_CONNECTED:
		return "CONNECTED";
	case RINGBID__CALL_STATE__CALL_ENDED:
		return "ENDED";
	default:
		return "NONE";
	}
}

const char *rb_disposition_name(int disposition)
{
	switch (disposition) {
	case RINGBID__DISPOSITION__DISP_COMPLETED:
		return "completed";
	case RINGBID__DISPOSITION__DISP_ABANDONED:
		return "abandoned";
	case RINGBID__DISPOSITION__DISP_OVERFLOW:
		return "overflow";
	default:
		return "";
	}
}

const char *rb_agent_state_name(int state)
{
	switch (state) {
	case RINGBID__AGENT_STATE__AGENT_OFFLINE:
		return "OFFLINE";
	case RINGBID__AGENT_STATE__AGENT_NOT_READY:
		return "NOT_READY";
	case RINGBID__AGENT_STATE__AGENT_AVAILABLE:
		return "AVAILABLE";
	case RINGBID__AGENT_STATE__AGENT_RESERVED:
		return "RESERVED";
	case RINGBID__AGENT_STATE__AGENT_ON_CALL:
		return "ON_CALL";
	case RINGBID__AGENT_STATE__AGENT_WRAP_UP:
		return "WRAP_UP";
	default:
		return NULL;
	}
}
