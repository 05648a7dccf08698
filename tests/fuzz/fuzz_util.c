/*
 * libFuzzer harness for util's small parsers and encoders, each checked
 * against an independent oracle: the first byte picks the function, the rest
 * is its input.
 *   0  str_utf8_valid against a decoder written from Unicode Table 3-7
 *   1  base64_decode: what decodes re-encodes (libsodium) to the same text
 *   2  str_to_i64: an accepted number prints back to the same value
 *   3  str_to_duration_ms / str_to_size / ctl_parse_timeout against 128-bit sums
 *   4  date_parse_days against gmtime_r
 *   5  utf8_encode: the bytes are valid UTF-8 and decode to the code point
 *   6  strbuf_json_string: one valid JSON string that unescapes to the input
 *   7  log_quote: NUL-terminated within size, one logfmt value, no control bytes
 *   8  (that byte only) str_host_port: the host and port put back together
 *      are the input; str_host_name: what it takes is an address or a DNS name's
 *      characters
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl/ctlio.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Length of the well-formed sequence at s (Unicode 15, Table 3-7), 0 if ill-formed. */
static size_t ref_utf8_seq(const uint8_t *s, size_t left)
{
	uint8_t b = s[0];
	uint8_t lo = 0x80, hi = 0xbf;
	size_t n;
	if (b <= 0x7f)
		return 1;
	if (b >= 0xc2 && b <= 0xdf)
		n = 2;
	else if (b >= 0xe0 && b <= 0xef)
		n = 3;
	else if (b >= 0xf0 && b <= 0xf4)
		n = 4;
	else
		return 0;
	if (b == 0xe0)
		lo = 0xa0;
	else if (b == 0xed)
		hi = 0x9f;
	else if (b == 0xf0)
		lo = 0x90;
	else if (b == 0xf4)
		hi = 0x8f;
	if (left < n || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t k = 2; k < n; k++)
		if (s[k] < 0x80 || s[k] > 0xbf)
			return 0;
	return n;
}

static bool ref_utf8_valid(const uint8_t *s, size_t len)
{
	for (size_t i = 0; i < len;) {
		size_t n = ref_utf8_seq(s + i, len - i);
		if (n == 0)
			return false;
		i += n;
	}
	return true;
}

static void fuzz_utf8(const uint8_t *in, size_t len)
{
	if (str_utf8_valid((const char *)in, len) != ref_utf8_valid(in, len))
		abort();
}

static void fuzz_base64(const uint8_t *in, size_t len)
{
	if (len < 1)
		return;
	size_t max = in[0]; /* the output bound, from the input */
	const char *s = (const char *)in + 1;
	len--;
	uint8_t out[256];
	size_t out_len = SIZE_MAX;
	if (base64_decode(s, len, out, max, &out_len) != 0)
		return;
	if (out_len > max)
		abort();
	char back[400];
	if (sodium_base64_encoded_len(out_len, sodium_base64_VARIANT_ORIGINAL) > sizeof(back))
		abort();
	sodium_bin2base64(back, sizeof(back), out, out_len, sodium_base64_VARIANT_ORIGINAL);
	if (strlen(back) != len || memcmp(back, s, len) != 0)
		abort(); /* one text per byte string: padding and spare bits are checked */
}

static void fuzz_i64(const char *s)
{
	int64_t v = 0;
	if (str_to_i64(s, INT64_MIN, INT64_MAX, &v) != 0)
		return;
	/* Leading zeros and "-0" aside, the text is the number. */
	const char *digits = s[0] == '-' ? s + 1 : s;
	while (digits[0] == '0' && digits[1])
		digits++;
	char back[32];
	snprintf(back, sizeof(back), "%" PRId64, v);
	const char *bd = back[0] == '-' ? back + 1 : back;
	if (strcmp(bd, digits) != 0 || (v < 0) != (s[0] == '-' && v != 0))
		abort();
	int64_t w;
	if (str_to_i64(s, v, v, &w) != 0 || w != v ||
	    (v < INT64_MAX && str_to_i64(s, v + 1, INT64_MAX, &w) == 0))
		abort();
}

/* value = digits * unit, in 128 bits; false when the text is not digits+suffix. */
static bool ref_units(const char *s, const char *const *suffix, const int64_t *mult, size_t n,
                      __int128 *value)
{
	size_t d = strspn(s, "0123456789");
	if (d == 0 || d > 15)
		return false;
	__int128 v = 0;
	for (size_t i = 0; i < d; i++)
		v = v * 10 + (s[i] - '0');
	for (size_t i = 0; i < n; i++)
		if (strcmp(s + d, suffix[i]) == 0) {
			*value = v * mult[i];
			return true;
		}
	return false;
}

static void fuzz_units(const char *s)
{
	static const char *const dsuf[] = {"ms", "s", "m", "h", "d"};
	static const int64_t dmul[] = {1, 1000, 60000, 3600000, 86400000};
	static const char *const ssuf[] = {"", "B", "KiB", "MiB", "GiB", "kB", "MB"};
	static const int64_t smul[] = {1, 1, 1024, 1048576, 1073741824, 1000, 1000000};
	__int128 want;
	int64_t ms = -1;
	bool ok = ref_units(s, dsuf, dmul, ARRAY_LEN(dsuf), &want) && want <= INT64_MAX;
	if ((str_to_duration_ms(s, &ms) == 0) != ok || (ok && ms != want))
		abort();
	uint64_t bytes = 0;
	ok = ref_units(s, ssuf, smul, ARRAY_LEN(ssuf), &want) && want <= INT64_MAX;
	if ((str_to_size(s, &bytes) == 0) != ok || (ok && bytes != (uint64_t)want))
		abort();
	int t = 0;
	if (ctl_parse_timeout(s, &t) == 0 && (t < 1 || t > 86400000))
		abort();
}

static void fuzz_date(const char *s)
{
	int64_t days;
	if (date_parse_days(s, &days) != 0)
		return;
	if (strlen(s) != 10)
		abort();
	time_t secs = (time_t)(days * 86400);
	struct tm tm;
	if (!gmtime_r(&secs, &tm))
		abort();
	char back[16];
	snprintf(back, sizeof(back), "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday);
	if (strcmp(back, s) != 0 || date_days_of_ms(days * 86400000 + 86399999) != days)
		abort();
}

static void fuzz_utf8_encode(const uint8_t *in, size_t len)
{
	if (len < 4)
		return;
	uint32_t cp;
	memcpy(&cp, in, 4);
	cp %= 0x110000;
	char out[4];
	size_t n = utf8_encode(cp, out);
	size_t want = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
	bool surrogate = cp >= 0xd800 && cp <= 0xdfff;
	if (n != want || str_utf8_valid(out, n) == surrogate ||
	    ref_utf8_valid((uint8_t *)out, n) == surrogate)
		abort();
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static void fuzz_json_string(const char *s, size_t len)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_json_string(&b, s);
	size_t olen;
	char *o = strbuf_take(&b, &olen);
	if (!o)
		return;
	if (olen < 2 || o[0] != '"' || o[olen - 1] != '"' || !str_utf8_valid(o, olen))
		abort();
	/* Unescape; each invalid input byte became U+FFFD, the rest is the input. */
	bool valid = str_utf8_valid(s, len);
	size_t j = 0;
	for (size_t i = 1; i + 1 < olen; i++) {
		unsigned char c = (unsigned char)o[i];
		if (c < 0x20 || c == '"')
			abort();
		if (c != '\\') {
			if (valid && (j >= len || s[j] != o[i]))
				abort();
			j++;
			continue;
		}
		if (i + 2 >= olen)
			abort(); /* a backslash never escapes the closing quote */
		char e = o[++i];
		if (e == '"' || e == '\\') {
			if (valid && (j >= len || s[j] != e))
				abort();
			j++;
		} else if (e == 'u' && i + 4 < olen - 1) {
			int v = 0;
			for (int k = 1; k <= 4; k++) {
				int h = hexval(o[i + k]);
				if (h < 0)
					abort();
				v = v * 16 + h;
			}
			i += 4;
			if (v >= 0x20 && v != 0xfffd)
				abort();
			if (valid && (v == 0xfffd || j >= len || (unsigned char)s[j] != v))
				abort();
			j++;
		} else {
			abort();
		}
	}
	if (valid && j != len)
		abort();
	free(o);
}

static void fuzz_log_quote(const uint8_t *in, size_t len)
{
	if (len < 1)
		return;
	size_t size = in[0] % 64 + 1; /* 1..64 bytes */
	char *s = malloc(len);
	char *buf = malloc(size);
	if (!s || !buf)
		abort();
	memcpy(s, in + 1, len - 1);
	s[len - 1] = '\0';
	memset(buf, 0x55, size);
	if (log_quote(buf, size, s) != buf || !memchr(buf, '\0', size))
		abort();
	size_t n = strlen(buf);
	bool quoted = n > 0 && buf[0] == '"';
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)buf[i];
		if (c < 0x20 || c == 0x7f)
			abort(); /* a value never breaks the line */
		if (!quoted && (c == ' ' || c == '"' || c == '=' || c == '\\'))
			abort();
		if (quoted && i > 0 && c == '\\') {
			if (i + 1 >= n)
				abort(); /* a cut never leaves a lone backslash */
			i++;
		} else if (quoted && i > 0 && i + 1 < n && c == '"') {
			abort(); /* an inner quote is always escaped */
		}
	}
	/* When it fits, the whole value is kept and the quotes close. */
	if (size >= 4 * strlen(s) + 3 &&
	    (n == 0 || (quoted && buf[n - 1] != '"') || (!quoted && strcmp(buf, s) != 0)))
		abort();
	free(buf);
	free(s);
}

/* A name str_host_name takes is an address or the characters of a DNS name. */
static void fuzz_host_name(const char *s)
{
	if (!str_host_name(s))
		return;
	unsigned char addr[16];
	if (inet_pton(AF_INET, s, addr) != 1 && inet_pton(AF_INET6, s, addr) != 1 &&
	    (strlen(s) > 254 || s[strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                                    "0123456789-_.")] != '\0'))
		abort();
}

static void fuzz_host_port(const char *s)
{
	fuzz_host_name(s);
	const char *host, *why;
	size_t len;
	uint16_t port;
	if (str_host_port(s, &host, &len, &port, &why) != 0) {
		if (!why)
			abort();
		return;
	}
	bool v6 = s[0] == '[';
	if (why || port == 0 || host != s + v6 || memchr(host, '\0', len) ||
	    strncmp(host + len, v6 ? "]:" : ":", 2 - !v6) != 0)
		abort();
	int64_t again;
	if (str_to_i64(host + len + 1 + v6, 1, 65535, &again) != 0 || again != port)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 4096)
		return 0;
	const uint8_t *in = data + 1;
	size_t len = size - 1;
	/* Most parsers take NUL-terminated text. */
	char *s = malloc(len + 1);
	if (!s)
		return 0;
	memcpy(s, in, len);
	s[len] = '\0';
	if (data[0] == 8) {
		fuzz_host_port(s);
		free(s);
		return 0;
	}
	switch (data[0] % 8) {
	case 0:
		fuzz_utf8(in, len);
		break;
	case 1:
		fuzz_base64(in, len);
		break;
	case 2:
		fuzz_i64(s);
		break;
	case 3:
		fuzz_units(s);
		break;
	case 4:
		fuzz_date(s);
		break;
	case 5:
		fuzz_utf8_encode(in, len);
		break;
	case 6:
		fuzz_json_string(s, strlen(s));
		break;
	default:
		fuzz_log_quote(in, len);
		break;
	}
	free(s);
	return 0;
}
