// Error codes shared by every ringbid module: 0 or a negative code, one table of names.
#ifndef RB_ERR_H
#define RB_ERR_H

enum {
	RB_OK = 0,
	RB_ENOMEM = -1,      // out of memory
	RB_EINVAL = -2,      // invalid argument or field
	RB_ETOOBIG = -3,     // message or value over its limit
	RB_EDECODE = -4,     // malformed protobuf or JSON
	RB_EAUTH = -5,       // wrong secret or token
	RB_ENOTFOUND = -6,   // unknown call, agent, program or offer
	RB_ESTATE = -7,      // not allowed in the current state
	RB_ECLOSED = -8,     // object or socket closed
	RB_ETIMEDOUT = -9,   // timed out
	RB_EIO = -10,        // I/O error (errno)
	RB_EDB = -11,        // PostgreSQL error
	RB_ENNG = -12,       // nng error with no closer match
	RB_EEXIST = -13,     // already exists
	RB_EBUSY = -14,      // busy: try again later
	RB_ECONFIG = -15,    // bad configuration
	RB_ECONFLICT = -16,  // same id with different content
	RB_ESLOWDOWN = -17,  // too many failed attempts: wait
	RB_EFORBIDDEN = -18, // authenticated, but not allowed
	RB_ECODE_MIN = -18,
};

// Returns the constant name ("RB_EAUTH") of code, or "RB_E?" for an unknown code. Static storage.
const char *rb_err_name(int code);
// Returns a short English description of code. Static storage.
const char *rb_err_str(int code);
// Converts an nng error number (NNG_E*) to a ringbid code.
int rb_err_from_nng(int nng_rv);
// Converts an errno value to a ringbid code.
int rb_err_from_errno(int err);

#endif
