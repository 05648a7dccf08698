/* Errors: the gateway's, passed through exactly, and the library's own. */
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "client_impl.h"
#include "util/util.h"

static const char *local_name(int code)
{
	switch (code) {
	case ISG_CLIENT_E_USAGE:
		return "USAGE";
	case ISG_CLIENT_E_NOMEM:
		return "NOMEM";
	case ISG_CLIENT_E_CONFIG:
		return "CONFIG";
	case ISG_CLIENT_E_CONNECT:
		return "CONNECT";
	case ISG_CLIENT_E_TLS:
		return "TLS";
	case ISG_CLIENT_E_IO:
		return "IO";
	case ISG_CLIENT_E_PROTOCOL:
		return "PROTOCOL";
	case ISG_CLIENT_E_TIMEOUT:
		return "TIMEOUT";
	case ISG_CLIENT_E_CLOSED:
		return "CLOSED";
	case ISG_CLIENT_E_TOO_BIG:
		return "TOO_BIG";
	case ISG_CLIENT_E_INTERRUPTED:
		return "INTERRUPTED";
	}
	return NULL;
}

ISG_CLIENT_API const char *isg_client_code_name(int code)
{
	if (ISG_CLIENT_IS_LOCAL(code)) {
		const char *name = local_name(code);
		return name ? name : "UNKNOWN";
	}
	const ProtobufCEnumValue *v =
	    protobuf_c_enum_descriptor_get_value(&isg__error_code__descriptor, code);
	return v ? v->name : "UNKNOWN";
}

/* Drop a character that a cut at the end of s (len bytes) left incomplete. */
static void utf8_trim_cut(char *s, size_t len)
{
	size_t i = len, cont = 0;
	while (i > 0 && cont < 3 && ((unsigned char)s[i - 1] & 0xc0) == 0x80) {
		i--;
		cont++;
	}
	if (i == 0)
		return;
	unsigned char lead = (unsigned char)s[i - 1];
	size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
	if (lead >= 0xc0 && need > cont + 1)
		s[i - 1] = '\0';
}

/*
 * The texts of struct isg_error are valid UTF-8 (a partner's log may be
 * JSON): cut at a character's boundary, and a byte of a caller's string
 * that is not UTF-8 (quoted back, as a bad address is) shown as '?'.
 */
static void utf8_mend(char *s)
{
	size_t len = strlen(s);
	utf8_trim_cut(s, len);
	len = strlen(s);
	for (size_t i = 0; i < len;) {
		size_t n = str_utf8_char(s + i, len - i);
		if (n == 0) {
			s[i] = '?';
			n = 1;
		}
		i += n;
	}
}

/* A string from the gateway (valid UTF-8, the frame was checked) into a field of err. */
static void copy_text(char *dst, const char *src, size_t size)
{
	str_copy(dst, src ? src : "", size);
	utf8_mend(dst);
}

void client_error_clear(struct isg_error *err)
{
	if (!err)
		return;
	memset(err, 0, sizeof(*err));
	err->record_index = -1;
}

/*
 * Every failure is reported here, after its message was made from what
 * OpenSSL said: what OpenSSL queued is then dropped, so that the calling
 * thread's error queue, which the partner's program may read for its own
 * OpenSSL calls, holds nothing of ours.
 */
void client_error(struct isg_error *err, int code, const char *fmt, ...)
{
	ERR_clear_error();
	if (!err)
		return;
	client_error_clear(err);
	err->code = code;
	str_copy(err->code_name, isg_client_code_name(code), sizeof(err->code_name));
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	utf8_mend(err->message);
}

void client_error_from_wire(struct isg_error *err, const Isg__Error *e)
{
	if (!err)
		return;
	client_error_clear(err);
	err->from_gateway = true;
	err->code = (int)e->code;
	if (protobuf_c_enum_descriptor_get_value(&isg__error_code__descriptor, err->code))
		str_copy(err->code_name, isg_client_code_name(err->code), sizeof(err->code_name));
	else /* a code newer than this library */
		snprintf(err->code_name, sizeof(err->code_name), "CODE_%d", err->code);
	copy_text(err->message, e->message, sizeof(err->message));
	err->record_index = e->record_index;
	copy_text(err->field, e->field, sizeof(err->field));
	copy_text(err->rule, e->rule, sizeof(err->rule));
	err->audit_index = e->audit_index;
}

int client_fail(struct isg_client *c, struct isg_error *err, int code, const char *fmt, ...)
{
	char msg[sizeof(err->message)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	client_error(err, code, "%s", msg);
	if (!c->broken) {
		c->broken = true;
		str_copy(c->broken_why, msg, sizeof(c->broken_why));
	}
	return -1;
}
