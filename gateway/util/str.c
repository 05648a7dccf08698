#include "util/util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

size_t str_copy(char *dst, const char *src, size_t size)
{
	size_t len = strlen(src);
	if (size) {
		size_t n = len < size - 1 ? len : size - 1;
		memcpy(dst, src, n);
		dst[n] = '\0';
	}
	return len;
}

int str_to_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
	if (!s || !*s)
		return ISG_ERR_PARSE;
	for (const char *p = *s == '-' ? s + 1 : s; *p; p++)
		if (*p < '0' || *p > '9')
			return ISG_ERR_PARSE;
	errno = 0;
	char *end;
	long long v = strtoll(s, &end, 10);
	if (errno == ERANGE || *end)
		return ISG_ERR_INVALID;
	if (v < min || v > max)
		return ISG_ERR_INVALID;
	*out = v;
	return 0;
}

/* A number followed by one of the given suffixes, each with its multiplier. */
struct unit {
	const char *suffix;
	int64_t mult;
};

static int parse_with_units(const char *s, const struct unit *units, size_t n, int64_t *out)
{
	const char *p = s;
	while (*p >= '0' && *p <= '9')
		p++;
	if (p == s || p - s > 15)
		return ISG_ERR_PARSE;
	int64_t v = 0;
	for (const char *q = s; q < p; q++)
		v = v * 10 + (*q - '0');
	for (size_t i = 0; i < n; i++) {
		if (strcmp(p, units[i].suffix) == 0) {
			if (v > INT64_MAX / units[i].mult)
				return ISG_ERR_INVALID;
			*out = v * units[i].mult;
			return 0;
		}
	}
	return ISG_ERR_PARSE;
}

int str_host_port(const char *s, const char **host, size_t *host_len, uint16_t *port,
                  const char **why)
{
	const char *colon;
	*why = "use host:port or [v6addr]:port";
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':')
			return ISG_ERR_PARSE;
		*host = s + 1;
		colon = close + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return ISG_ERR_PARSE;
		if (memchr(s, ':', (size_t)(colon - s))) {
			*why = "an IPv6 address needs brackets: [v6addr]:port";
			return ISG_ERR_PARSE;
		}
		*host = s;
	}
	*host_len = (size_t)(colon - *host) - (s[0] == '[');
	int64_t p;
	if (str_to_i64(colon + 1, 1, 65535, &p) != 0) {
		*why = "the port must be a number from 1 to 65535";
		return ISG_ERR_PARSE;
	}
	*port = (uint16_t)p;
	*why = NULL;
	return 0;
}

int str_to_duration_ms(const char *s, int64_t *out)
{
	static const struct unit units[] = {
	    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
	};
	return parse_with_units(s, units, ARRAY_LEN(units), out);
}

int str_to_size(const char *s, uint64_t *out)
{
	static const struct unit units[] = {
	    {"", 1},
	    {"B", 1},
	    {"KiB", 1024},
	    {"MiB", 1024 * 1024},
	    {"GiB", 1024LL * 1024 * 1024},
	    {"kB", 1000},
	    {"MB", 1000000},
	};
	int64_t v;
	int err = parse_with_units(s, units, ARRAY_LEN(units), &v);
	if (err == 0)
		*out = (uint64_t)v;
	return err;
}

static bool host_label(const char *s, size_t len)
{
	if (len == 0 || len > 63 || s[0] == '-' || s[len - 1] == '-')
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
			return false;
	return true;
}

bool str_host_name(const char *s)
{
	unsigned char addr[16];
	if (inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1)
		return true;
	size_t len = strlen(s);
	if (len > 0 && s[len - 1] == '.')
		len--;
	if (len == 0 || len > 253)
		return false;
	size_t at = 0;
	for (const char *dot; (dot = memchr(s + at, '.', len - at)); at = (size_t)(dot - s) + 1)
		if (!host_label(s + at, (size_t)(dot - s) - at))
			return false;
	/* the last label is not all digits: "10.0.0.300" is a mistyped address */
	return host_label(s + at, len - at) && strspn(s + at, "0123456789") < len - at;
}

bool str_field_name(const char *s, size_t len)
{
	if (len == 0 || len > STR_FIELD_NAME_MAX || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
			return false;
	return true;
}

/* True when no byte of s[0..len) has its high bit set: a word at a time, and
 * the last (overlapping) word for the tail, so short strings take few branches. */
bool str_ascii(const void *str, size_t len)
{
	const unsigned char *s = str;
	uint64_t acc = 0, word;
	if (len < 8) {
		for (size_t i = 0; i < len; i++)
			acc |= s[i];
		return (acc & 0x80) == 0;
	}
	for (size_t i = 0; i + 8 <= len; i += 8) {
		memcpy(&word, s + i, 8);
		acc |= word;
	}
	memcpy(&word, s + len - 8, 8);
	acc |= word;
	return (acc & 0x8080808080808080u) == 0;
}

bool str_utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	/* Nearly everything checked (names, codes, pseudonyms) is ASCII. */
	if (str_ascii(s, len))
		return true;
	size_t i = 0;
	while (i < len) {
		/* Eight ASCII bytes at a time: most of what is checked is ASCII. */
		uint64_t word;
		if (len - i >= 8 && (memcpy(&word, s + i, 8), (word & 0x8080808080808080u) == 0)) {
			i += 8;
			continue;
		}
		unsigned char c = s[i];
		size_t n;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			n = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (len - i <= n)
			return false;
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		/* Overlong forms, surrogates and values past U+10FFFF are invalid. */
		static const uint32_t min_cp[] = {0, 0x80, 0x800, 0x10000};
		if (cp < min_cp[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n + 1;
	}
	return true;
}

size_t str_utf8_char(const char *s, size_t left)
{
	unsigned char c = (unsigned char)s[0];
	size_t n = c < 0x80             ? 1
	           : (c & 0xe0) == 0xc0 ? 2
	           : (c & 0xf0) == 0xe0 ? 3
	           : (c & 0xf8) == 0xf0 ? 4
	                                : 0;
	return n && n <= left && str_utf8_valid(s, n) ? n : 0;
}

bool str_utf8_control(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	return (n == 1 && (u[0] < 0x20 || u[0] == 0x7f)) || (n == 2 && u[0] == 0xc2 && u[1] < 0xa0);
}

void hex_encode(char *out, const uint8_t *in, size_t len)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}

size_t utf8_encode(uint32_t cp, char out[static 4])
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xc0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xe0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}
