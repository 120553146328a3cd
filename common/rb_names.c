// Names of the wire enums (proto/ringbid.proto) as users see them in output, logs and JSON.
#include "rb_names.h"

#include <string.h>

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

const char *rb_outcome_kind_name(int kind)
{
	switch (kind) {
	case RINGBID__OUTCOME_KIND__OUTCOME_SURVEY:
		return "survey";
	case RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED:
		return "resolved";
	case RINGBID__OUTCOME_KIND__OUTCOME_SALE:
		return "sale";
	case RINGBID__OUTCOME_KIND__OUTCOME_QA:
		return "qa";
	default:
		return NULL;
	}
}

int rb_outcome_kind_of(const char *name)
{
	for (int k = RINGBID__OUTCOME_KIND__OUTCOME_SURVEY; k <= RINGBID__OUTCOME_KIND__OUTCOME_QA;
	     k++) {
		if (name != NULL && strcmp(name, rb_outcome_kind_name(k)) == 0)
			return k;
	}
	return RINGBID__OUTCOME_KIND__OUTCOME_NONE;
}

bool rb_outcome_range(int kind, int *lo, int *hi, const char **what)
{
	switch (kind) {
	case RINGBID__OUTCOME_KIND__OUTCOME_SURVEY:
		*lo = 1, *hi = 5, *what = "a survey score is 1-5";
		return true;
	case RINGBID__OUTCOME_KIND__OUTCOME_RESOLVED:
		*lo = 0, *hi = 1, *what = "resolved is 0 (no) or 1 (yes)";
		return true;
	case RINGBID__OUTCOME_KIND__OUTCOME_SALE:
		*lo = 0, *hi = 1, *what = "sale is 0 (no) or 1 (yes)";
		return true;
	case RINGBID__OUTCOME_KIND__OUTCOME_QA:
		*lo = 0, *hi = 100, *what = "a QA review is 0-100";
		return true;
	default:
		return false;
	}
}
