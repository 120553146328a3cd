// Error codes: one table of names and texts, and the conversions from nng and errno.
#include "rb_err.h"

#include <errno.h>
#include <stddef.h>
#include <nng/nng.h>

static const struct {
	int code;
	const char *name;
	const char *text;
} err_table[] = {
        {RB_OK, "RB_OK", "success"},
        {RB_ENOMEM, "RB_ENOMEM", "out of memory"},
        {RB_EINVAL, "RB_EINVAL", "invalid argument or field"},
        {RB_ETOOBIG, "RB_ETOOBIG", "message or value over its limit"},
        {RB_EDECODE, "RB_EDECODE", "malformed protobuf or JSON"},
        {RB_EAUTH, "RB_EAUTH", "wrong secret or token"},
        {RB_ENOTFOUND, "RB_ENOTFOUND", "unknown call, agent, program or offer"},
        {RB_ESTATE, "RB_ESTATE", "not allowed in the current state"},
        {RB_ECLOSED, "RB_ECLOSED", "object or socket closed"},
        {RB_ETIMEDOUT, "RB_ETIMEDOUT", "timed out"},
        {RB_EIO, "RB_EIO", "I/O error"},
        {RB_EDB, "RB_EDB", "PostgreSQL error"},
        {RB_ENNG, "RB_ENNG", "messaging error"},
        {RB_EEXIST, "RB_EEXIST", "already exists"},
        {RB_EBUSY, "RB_EBUSY", "busy: try again later"},
        {RB_ECONFIG, "RB_ECONFIG", "bad configuration"},
        {RB_ECONFLICT, "RB_ECONFLICT", "same id with different content"},
        {RB_ESLOWDOWN, "RB_ESLOWDOWN", "too many failed attempts: wait"},
        {RB_EFORBIDDEN, "RB_EFORBIDDEN", "authenticated, but not allowed"},
};

#define ERR_COUNT (sizeof(err_table) / sizeof(err_table[0]))

const char *rb_err_name(int code)
{
	for (size_t i = 0; i < ERR_COUNT; i++) {
		if (err_table[i].code == code)
			return err_table[i].name;
	}
	return "RB_E?";
}

const char *rb_err_str(int code)
{
	for (size_t i = 0; i < ERR_COUNT; i++) {
		if (err_table[i].code == code)
			return err_table[i].text;
	}
	return "unknown error";
}

int rb_err_from_nng(int nng_rv)
{
	switch (nng_rv) {
	case 0:
		return RB_OK;
	case NNG_ETIMEDOUT:
		return RB_ETIMEDOUT;
	case NNG_ECLOSED:
	case NNG_ECONNREFUSED:
	case NNG_ECONNSHUT:
	case NNG_ECONNRESET:
	case NNG_ECONNABORTED:
		return RB_ECLOSED;
	case NNG_ENOMEM:
		return RB_ENOMEM;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
		return RB_EINVAL;
	case NNG_EMSGSIZE:
		return RB_ETOOBIG;
	case NNG_EADDRINUSE:
		return RB_EBUSY;
	case NNG_EAGAIN:
		return RB_EBUSY;
	case NNG_ENOENT:
		return RB_ENOTFOUND;
	case NNG_ESTATE:
		return RB_ESTATE;
	case NNG_EEXIST:
		return RB_EEXIST;
	default:
		if (nng_rv & NNG_ESYSERR)
			return rb_err_from_errno(nng_rv & ~NNG_ESYSERR);
		return RB_ENNG;
	}
}

int rb_err_from_errno(int err)
{
	switch (err) {
	case 0:
		return RB_OK;
	case ENOMEM:
		return RB_ENOMEM;
	case EINVAL:
	case EDOM:
	case ERANGE:
		return RB_EINVAL;
	case E2BIG:
	case EFBIG:
	case EMSGSIZE:
	case ENAMETOOLONG:
	case EOVERFLOW:
		return RB_ETOOBIG;
	case ENOENT:
	case ESRCH:
		return RB_ENOTFOUND;
	case EEXIST:
		return RB_EEXIST;
	case EAGAIN:
	case EBUSY:
	case EADDRINUSE:
		return RB_EBUSY;
	case ETIMEDOUT:
		return RB_ETIMEDOUT;
	case EPIPE:
	case ECONNRESET:
	case ECONNREFUSED:
	case ECONNABORTED:
	case ENOTCONN:
	case EBADF:
		return RB_ECLOSED;
	case EACCES:
	case EPERM:
		return RB_EFORBIDDEN;
	default:
		return RB_EIO;
	}
}
