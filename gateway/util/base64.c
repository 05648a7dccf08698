#include "util/util.h"

#include <sodium.h>

int base64_decode(const char *s, size_t len, uint8_t *out, size_t max, size_t *out_len)
{
	if (len == 0)
		return ISG_ERR_PARSE;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '+' || c == '/' || c == '='))
			return ISG_ERR_PARSE;
	}
	if (sodium_base642bin(out, max, s, len, NULL, out_len, NULL,
	                      sodium_base64_VARIANT_ORIGINAL) != 0)
		return ISG_ERR_PARSE;
	return 0;
}
