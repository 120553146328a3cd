// Fuzz target: what arrives on a link between services, where several envelopes may come as one
// protobuf Batch (common/rb_bus.c; docs/delivery.md, "Batches"). rb_bus_unpack splits the input
// and each part is decoded as the envelope it should be. A malformed batch must yield no part
// at all, and the count rb_bus_unpack returns must not depend on whether the parts are visited.
#include <stdbool.h>
#include <stdlib.h>

#include "fuzz.h"
#include "rb_bus.h"
#include "rb_pb.h"
#include "ringbid.pb-c.h"

static bool each_part(const void *part, size_t len, void *arg)
{
	size_t *seen = arg;
	ProtobufCMessage *m = NULL;

	(*seen)++;
	if (rb_pb_unpack(&ringbid__envelope__descriptor, part, len, RB_PB_MAX_SERVICE, &m) == 0)
		rb_pb_free(m);
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t seen = 0;
	int n = rb_bus_unpack(data, size, each_part, &seen);
	int counted = rb_bus_unpack(data, size, NULL, NULL);

	if (n != counted || n == 0 || n > 256)
		abort();
	if (n < 0 ? seen != 0 : (size_t)n != seen)
		abort();
	return 0;
}
