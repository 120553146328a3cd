// Splits one fuzz input into a sequence of length-prefixed messages.
#include "fuzz.h"

void rb_fuzz_split(const uint8_t *data, size_t size, size_t max, rb_fuzz_msg_fn fn, void *arg)
{
	size_t off = 0;
	for (size_t n = 0; n < max && off + 2 <= size; n++) {
		size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;
		off += 2;
		if (len > size - off)
			len = size - off;
		fn(data + off, len, arg);
		off += len;
	}
}
