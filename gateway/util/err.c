#include "util/util.h"

const char *isg_strerror(int err)
{
	switch (err) {
	case ISG_OK:
		return "success";
	case ISG_ERR_NOMEM:
		return "out of memory";
	case ISG_ERR_IO:
		return "input/output error";
	case ISG_ERR_PARSE:
		return "malformed input";
	case ISG_ERR_INVALID:
		return "invalid value";
	case ISG_ERR_NOT_FOUND:
		return "not found";
	case ISG_ERR_DENIED:
		return "permission denied";
	case ISG_ERR_CONFLICT:
		return "conflict";
	case ISG_ERR_LIMIT:
		return "limit exceeded";
	case ISG_ERR_CRYPTO:
		return "cryptographic failure";
	case ISG_ERR_STORE:
		return "store failure";
	case ISG_ERR_TLS:
		return "TLS failure";
	case ISG_ERR_AGAIN:
		return "try again";
	case ISG_ERR_TOO_BIG:
		return "too big";
	case ISG_ERR_FULL:
		return "disk full";
	case ISG_ERR_CORRUPT:
		return "integrity check failed";
	case ISG_ERR_CLOSED:
		return "closed";
	case ISG_ERR_UNKNOWN:
		return "outcome unknown";
	}
	return "unknown error";
}
