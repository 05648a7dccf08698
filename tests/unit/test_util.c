/* util: parsing of durations, sizes, dates and numbers; UTF-8; JSON strings; logfmt quoting;
 * a partner connection's TCP options. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "util/util.h"

static void test_durations(void **state)
{
	int64_t ms;
	assert_int_equal(str_to_duration_ms("250ms", &ms), 0);
	assert_int_equal(ms, 250);
	assert_int_equal(str_to_duration_ms("10s", &ms), 0);
	assert_int_equal(ms, 10000);
	assert_int_equal(str_to_duration_ms("15m", &ms), 0);
	assert_int_equal(ms, 900000);
	assert_int_equal(str_to_duration_ms("30d", &ms), 0);
	assert_int_equal(ms, 30LL * 86400000);
	assert_int_equal(str_to_duration_ms("10", &ms), ISG_ERR_PARSE);
	assert_int_equal(str_to_duration_ms("10x", &ms), ISG_ERR_PARSE);
	assert_int_equal(str_to_duration_ms("-1s", &ms), ISG_ERR_PARSE);
	assert_int_equal(str_to_duration_ms("", &ms), ISG_ERR_PARSE);
	assert_int_equal(str_to_duration_ms("9999999999999999d", &ms), ISG_ERR_PARSE);
}

static void test_sizes(void **state)
{
	uint64_t n;
	assert_int_equal(str_to_size("4MiB", &n), 0);
	assert_int_equal(n, 4u << 20);
	assert_int_equal(str_to_size("512KiB", &n), 0);
	assert_int_equal(n, 512u << 10);
	assert_int_equal(str_to_size("1000", &n), 0);
	assert_int_equal(n, 1000);
	assert_int_equal(str_to_size("4 MiB", &n), ISG_ERR_PARSE);
}

static void test_numbers(void **state)
{
	int64_t v;
	assert_int_equal(str_to_i64("42", 0, 100, &v), 0);
	assert_int_equal(v, 42);
	assert_int_equal(str_to_i64("-7", -10, 10, &v), 0);
	assert_int_equal(v, -7);
	assert_int_equal(str_to_i64("101", 0, 100, &v), ISG_ERR_INVALID);
	assert_int_equal(str_to_i64("4x", 0, 100, &v), ISG_ERR_PARSE);
	assert_int_equal(str_to_i64("99999999999999999999", 0, INT64_MAX, &v), ISG_ERR_INVALID);
	assert_int_equal(str_to_i64("", 0, 1, &v), ISG_ERR_PARSE);
}

static void test_host_port(void **state)
{
	static const struct {
		const char *in, *host;
		unsigned port;
	} good[] = {
	    {"localhost:7443", "localhost", 7443},
	    {"[::1]:443", "::1", 443},
	    {"10.0.0.1:00080", "10.0.0.1", 80},
	    {":1", "", 1},
	    {"[]:65535", "", 65535},
	};
	for (size_t i = 0; i < ARRAY_LEN(good); i++) {
		const char *host, *why = "x";
		size_t len;
		uint16_t port;
		assert_int_equal(str_host_port(good[i].in, &host, &len, &port, &why), 0);
		assert_int_equal(len, strlen(good[i].host));
		assert_memory_equal(host, good[i].host, len);
		assert_int_equal(port, good[i].port);
		assert_null(why);
	}
	static const struct {
		const char *in, *why;
	} bad[] = {
	    {"localhost", "use host:port"}, {"[::1]443", "use host:port"},
	    {"[::1", "use host:port"},      {"::1:443", "needs brackets"},
	    {"host:0", "1 to 65535"},       {"host:65536", "1 to 65535"},
	    {"host:http", "1 to 65535"},    {"host:", "1 to 65535"},
	    {"host:-443", "1 to 65535"},
	};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		const char *host, *why = NULL;
		size_t len;
		uint16_t port;
		assert_int_equal(str_host_port(bad[i].in, &host, &len, &port, &why), ISG_ERR_PARSE);
		assert_non_null(why);
		assert_non_null(strstr(why, bad[i].why));
	}
}

/* Names a certificate can be checked against; the rest refused before connecting. */
static void test_host_names(void **state)
{
	(void)state;
	const char *good[] = {"isg.example.nhs.uk",
	                      "isg.example.nhs.uk.",
	                      "localhost",
	                      "gw_1.local",
	                      "xn--bcher-kva.example",
	                      "10.0.0.1",
	                      "::1",
	                      "2001:db8::1",
	                      "a1.b2",
	                      "3com.example"};
	const char *bad[] = {"",
	                     ".",
	                     "a..b",
	                     ".a",
	                     "-gw.example",
	                     "gw-.example",
	                     "a b",
	                     "*.example",
	                     "bücher.example",
	                     "10.0.0.300",
	                     "1.2.3",
	                     "a.b..",
	                     "[::1]",
	                     "gw.example:443"};
	for (size_t i = 0; i < ARRAY_LEN(good); i++)
		assert_true(str_host_name(good[i]));
	for (size_t i = 0; i < ARRAY_LEN(bad); i++)
		assert_false(str_host_name(bad[i]));
	char name[300];
	memset(name, 'a', sizeof(name));
	name[63] = '\0';
	assert_true(str_host_name(name)); /* a label of 63 */
	name[63] = 'a';
	name[64] = '\0';
	assert_false(str_host_name(name)); /* of 64 */
	memset(name, 'a', sizeof(name));
	for (size_t i = 1; i < 254; i += 2)
		name[i] = '.';
	name[253] = '\0';
	assert_true(str_host_name(name)); /* 253 bytes */
	name[253] = 'a';
	name[254] = '\0';
	assert_false(str_host_name(name)); /* 254 */
}

static void test_dates(void **state)
{
	int64_t d;
	assert_int_equal(date_parse_days("1970-01-01", &d), 0);
	assert_int_equal(d, 0);
	assert_int_equal(date_parse_days("2000-03-01", &d), 0);
	assert_int_equal(d, 11017);
	assert_int_equal(date_parse_days("2024-02-29", &d), 0);
	assert_int_equal(date_parse_days("2023-02-29", &d), ISG_ERR_PARSE);
	assert_int_equal(date_parse_days("1900-02-29", &d), ISG_ERR_PARSE);
	assert_int_equal(date_parse_days("2026-13-01", &d), ISG_ERR_PARSE);
	assert_int_equal(date_parse_days("2026-1-01", &d), ISG_ERR_PARSE);
	assert_int_equal(date_parse_days("2026-01-011", &d), ISG_ERR_PARSE);
	assert_int_equal(date_days_of_ms(86400000LL * 3 + 5), 3);
	assert_int_equal(date_days_of_ms(-1), -1);
	/* a day is [00:00:00.000, 24:00:00.000): midnight is the first instant of the next */
	assert_int_equal(date_parse_days("2026-03-01", &d), 0);
	assert_int_equal(date_days_of_ms(d * 86400000 - 1), d - 1);
	assert_int_equal(date_days_of_ms(d * 86400000), d);
	assert_int_equal(date_days_of_ms(d * 86400000 + 86399999), d);
	assert_int_equal(date_days_of_ms(-86400000), -1);
	assert_int_equal(date_days_of_ms(-86400001), -2);
}

/* date_civil_of_days against known days, and as the inverse of date_parse_days. */
static void test_civil_dates(void **state)
{
	static const struct {
		int64_t days, y;
		unsigned m, d;
	} known[] = {
	    {0, 1970, 1, 1},      {-1, 1969, 12, 31}, {11016, 2000, 2, 29}, {11017, 2000, 3, 1},
	    {-25508, 1900, 3, 1}, {-719468, 0, 3, 1}, {-719469, 0, 2, 29},  {2932896, 9999, 12, 31},
	};
	for (size_t i = 0; i < ARRAY_LEN(known); i++) {
		int64_t y;
		unsigned m, d;
		date_civil_of_days(known[i].days, &y, &m, &d);
		assert_int_equal(y, known[i].y);
		assert_int_equal(m, known[i].m);
		assert_int_equal(d, known[i].d);
	}
	for (int64_t days = -719468; days <= 2932896; days += 97) {
		int64_t y, back;
		unsigned m, d;
		date_civil_of_days(days, &y, &m, &d);
		char text[16];
		snprintf(text, sizeof(text), "%04lld-%02u-%02u", (long long)y, m, d);
		assert_int_equal(date_parse_days(text, &back), 0);
		assert_int_equal(back, days);
	}
}

/* A clock set back gives the latest time seen until it catches up. */
static void test_time_not_back(void **state)
{
	(void)state;
	_Atomic int64_t latest = 0;
	assert_int_equal(time_not_back_ms(&latest, 1000), 1000);
	assert_int_equal(time_not_back_ms(&latest, 5000), 5000);
	assert_int_equal(time_not_back_ms(&latest, 1500), 5000);
	assert_int_equal(time_not_back_ms(&latest, 4999), 5000);
	assert_int_equal(time_not_back_ms(&latest, 5001), 5001);
	assert_int_equal(latest, 5001);
}

static void test_utf8(void **state)
{
	assert_true(str_utf8_valid("caf\xc3\xa9", 5));
	assert_true(str_utf8_valid("\xf0\x9f\x98\x80", 4));
	assert_false(str_utf8_valid("\xc3", 1));             /* truncated */
	assert_false(str_utf8_valid("\xc0\xaf", 2));         /* overlong */
	assert_false(str_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
	assert_false(str_utf8_valid("\xf4\x90\x80\x80", 4)); /* past U+10FFFF */
	assert_false(str_utf8_valid("\xff", 1));

	/* One character at a time, and which of them a terminal would obey. */
	assert_int_equal(str_utf8_char("a", 1), 1);
	assert_int_equal(str_utf8_char("\xc3\xa9x", 3), 2);
	assert_int_equal(str_utf8_char("\xe2\x98\x83", 3), 3);
	assert_int_equal(str_utf8_char("\xf0\x9f\x98\x80", 4), 4);
	assert_int_equal(str_utf8_char("\xf0\x9f\x98\x80", 3), 0); /* cut short */
	assert_int_equal(str_utf8_char("\xc0\xaf", 2), 0);         /* overlong */
	assert_int_equal(str_utf8_char("\x80", 1), 0);
	assert_true(str_utf8_control("\x1b", 1));
	assert_true(str_utf8_control("\x7f", 1));
	assert_true(str_utf8_control("\xc2\x80", 2));
	assert_true(str_utf8_control("\xc2\x9b", 2)); /* CSI */
	assert_false(str_utf8_control("\xc2\xa0", 2));
	assert_false(str_utf8_control(" ", 1));
	assert_false(str_utf8_control("\xc3\xa9", 2));
	/* Inside long ASCII runs, which are checked eight bytes at a time: a bad
	 * byte or a sequence across an eight-byte boundary, at every offset. */
	for (size_t at = 0; at < 40; at++) {
		char buf[48];
		memset(buf, 'a', sizeof(buf));
		buf[at] = (char)0xff;
		assert_false(str_utf8_valid(buf, sizeof(buf)));
		memset(buf, 'a', sizeof(buf));
		memcpy(buf + at, "\xe2\x82\xac", 3); /* the euro sign */
		assert_true(str_utf8_valid(buf, sizeof(buf)));
		buf[at + 2] = 'a'; /* cut short */
		assert_false(str_utf8_valid(buf, sizeof(buf)));
		memset(buf, 'a', sizeof(buf));
		buf[at + 1] = (char)0xc3; /* truncated at the very end */
		assert_false(str_utf8_valid(buf, at + 2));
		assert_true(str_utf8_valid(buf, at + 1));
	}
	/* Every length, a bad byte at every position: ASCII is first checked a
	 * word at a time, with the last word overlapping the one before it. */
	for (size_t len = 1; len <= 48; len++) {
		for (size_t at = 0; at < len; at++) {
			char buf[48];
			memset(buf, 'a', sizeof(buf));
			buf[at] = (char)0x80;
			assert_false(str_utf8_valid(buf, len));
		}
	}
}

static void test_time_format(void **state)
{
	(void)state;
	const struct {
		int64_t ms;
		const char *text;
	} cases[] = {
	    {0, "1970-01-01T00:00:00.000Z"},
	    {999, "1970-01-01T00:00:00.999Z"},
	    {951827696789, "2000-02-29T12:34:56.789Z"},
	    {1764000000123, "2025-11-24T16:00:00.123Z"},
	    {253402300799999, "9999-12-31T23:59:59.999Z"},
	    {253402300800000, "10000-01-01T00:00:00.000Z"}, /* past 9999: as printf writes it */
	    {-1, "1969-12-31T23:59:59.999Z"},               /* before 1970: rounded down */
	    {-1000, "1969-12-31T23:59:59.000Z"},
	    {-1001, "1969-12-31T23:59:58.999Z"},
	    {-86400000, "1969-12-31T00:00:00.000Z"},
	    {-62167219200000, "0000-01-01T00:00:00.000Z"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char buf[32];
		assert_string_equal(time_format_ms(buf, sizeof(buf), cases[i].ms), cases[i].text);
	}
	/* any int64 at all (a tampered at column): no overflow, a whole text */
	char big[64];
	const char *t = time_format_ms(big, sizeof(big), INT64_MIN);
	assert_string_equal(t + strlen(t) - 5, ".192Z");
	t = time_format_ms(big, sizeof(big), INT64_MAX);
	assert_string_equal(t + strlen(t) - 5, ".807Z");
	char small[11]; /* too small: cut short, as snprintf does */
	assert_string_equal(time_format_ms(small, sizeof(small), 0), "1970-01-01");
}

static void test_strbuf_u64(void **state)
{
	(void)state;
	const struct {
		uint64_t v;
		const char *text;
	} cases[] = {
	    {0, "n=0"},
	    {7, "n=7"},
	    {10, "n=10"},
	    {99, "n=99"},
	    {4294967296u, "n=4294967296"},
	    {UINT64_MAX, "n=18446744073709551615"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct strbuf b;
		strbuf_init(&b);
		strbuf_puts(&b, "n=");
		strbuf_u64(&b, cases[i].v);
		char *s = strbuf_take(&b, NULL);
		assert_string_equal(s, cases[i].text);
		free(s);
	}
}

static void test_json_string(void **state)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_json_string(&b, "a\"b\\c\n\x01 caf\xc3\xa9 \xff!");
	char *s = strbuf_take(&b, NULL);
	assert_string_equal(s, "\"a\\\"b\\\\c\\u000a\\u0001 caf\xc3\xa9 \\ufffd!\"");
	free(s);
	strbuf_init(&b);
	strbuf_json_string(&b, "\"plain\\");
	strbuf_json_string(&b, "");
	strbuf_json_string(&b, "\xe2\x82\xac"
	                       "10"
	                       "\xe2\x82");
	s = strbuf_take(&b, NULL);
	assert_string_equal(s, "\"\\\"plain\\\\\"\"\"\"\xe2\x82\xac"
	                       "10\\ufffd\\ufffd\"");
	free(s);
	strbuf_init(&b);
	strbuf_printf(&b, "%d-%s", 7, "x");
	s = strbuf_take(&b, NULL);
	assert_string_equal(s, "7-x");
	free(s);
	/* Text that does not fit the room left is written again after growing. */
	char big[300];
	memset(big, 'y', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	size_t len = 0;
	strbuf_init(&b);
	strbuf_puts(&b, "ab");
	strbuf_printf(&b, "<%s>", big);
	strbuf_printf(&b, "%d", 42);
	s = strbuf_take(&b, &len);
	assert_int_equal(len, 2 + 1 + 299 + 1 + 2);
	assert_memory_equal(s, "ab<yyy", 6);
	assert_string_equal(s + 2 + 1 + 299, ">42");
	free(s);
	/* After "ab" the first buffer (128 bytes) has room for 125 more and the NUL. */
	for (size_t fill = 125; fill <= 126; fill++) {
		big[fill] = '\0';
		strbuf_init(&b);
		strbuf_puts(&b, "ab");
		strbuf_printf(&b, "%s", big);
		s = strbuf_take(&b, &len);
		assert_int_equal(len, 2 + fill);
		assert_int_equal(strspn(s + 2, "y"), fill);
		free(s);
		big[fill] = 'y';
	}
	/* DEL and a whole 4-byte sequence go in as they are; a lone
	 * continuation byte and a 4-byte sequence cut short do not. */
	strbuf_init(&b);
	strbuf_json_string(&b, "\x7f\xf0\x9f\x98\x80|\x80|\xf0\x9f\x98");
	s = strbuf_take(&b, NULL);
	assert_string_equal(s, "\"\x7f\xf0\x9f\x98\x80|\\ufffd|\\ufffd\\ufffd\\ufffd\"");
	free(s);
	strbuf_init(&b);
	s = strbuf_take(&b, NULL);
	assert_string_equal(s, "");
	free(s);
}

static void test_base64(void **state)
{
	uint8_t out[8];
	size_t n = 0;
	assert_int_equal(base64_decode("aGVsbG8=", 8, out, sizeof(out), &n), 0);
	assert_int_equal(n, 5);
	assert_memory_equal(out, "hello", 5);
	/* libsodium 1.0.18 alone would take a byte >= 0x80 as a digit. */
	assert_int_equal(base64_decode("aGVs"
	                               "\xc3\xa9"
	                               "bG8=",
	                               10, out, sizeof(out), &n),
	                 ISG_ERR_PARSE);
	assert_int_equal(base64_decode("aGVsbG8", 7, out, sizeof(out), &n), ISG_ERR_PARSE);
	assert_int_equal(base64_decode("aGVsbG8=x", 9, out, sizeof(out), &n), ISG_ERR_PARSE);
	assert_int_equal(base64_decode("aGVsbG8gd29ybGQ=", 16, out, sizeof(out), &n),
	                 ISG_ERR_PARSE);
	assert_int_equal(base64_decode("", 0, out, sizeof(out), &n), ISG_ERR_PARSE);
}

static void test_log_quote(void **state)
{
	char buf[64];
	assert_string_equal(log_quote(buf, sizeof(buf), "plain"), "plain");
	assert_string_equal(log_quote(buf, sizeof(buf), "CN=a b"), "\"CN=a b\"");
	assert_string_equal(log_quote(buf, sizeof(buf), "x\"y\n"), "\"x\\\"y\\x0a\"");
	assert_string_equal(log_quote(buf, sizeof(buf), ""), "\"\"");
	char tiny[6];
	log_quote(tiny, sizeof(tiny), "a long value with spaces");
	assert_true(strlen(tiny) < sizeof(tiny));
}

/* FIPS 180-2's examples, and every way of splitting a two-block input. */
static void expect_sha256(const uint8_t got[SHA256_LEN], const char *hex)
{
	char h[2 * SHA256_LEN + 1];
	hex_encode(h, got, SHA256_LEN);
	assert_string_equal(h, hex);
}

/* The options a partner connection gets at both ends, read back from a socket. */
static void test_tcp_options(void **state)
{
	(void)state;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	sock_tcp_options(fd);
	const struct {
		int level, name, want;
	} opts[] = {
	    {IPPROTO_TCP, TCP_NODELAY, 1},   {SOL_SOCKET, SO_KEEPALIVE, 1},
	    {IPPROTO_TCP, TCP_KEEPIDLE, 60}, {IPPROTO_TCP, TCP_KEEPINTVL, 10},
	    {IPPROTO_TCP, TCP_KEEPCNT, 6},   {IPPROTO_TCP, TCP_USER_TIMEOUT, 120000},
	};
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		int v = -1;
		socklen_t len = sizeof(v);
		assert_int_equal(getsockopt(fd, opts[i].level, opts[i].name, &v, &len), 0);
		assert_int_equal(v, opts[i].want);
	}
	close(fd);
}

static void test_sha256(void **state)
{
	(void)state;
	uint8_t out[SHA256_LEN];
	sha256_digest(NULL, 0, out);
	expect_sha256(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	sha256_digest("abc", 3, out);
	expect_sha256(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	static const char two[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	static const char two_hex[] =
	    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
	for (size_t cut = 0; cut <= sizeof(two) - 1; cut++) {
		struct sha256_state h;
		sha256_init(&h);
		sha256_update(&h, two, cut);
		struct sha256_state fork = h; /* a copy carries on independently */
		sha256_update(&h, two + cut, sizeof(two) - 1 - cut);
		sha256_final(&h, out);
		expect_sha256(out, two_hex);
		sha256_update(&fork, two + cut, sizeof(two) - 1 - cut);
		sha256_final(&fork, out);
		expect_sha256(out, two_hex);
	}
	/* A million 'a's, in uneven pieces. */
	char a[997];
	memset(a, 'a', sizeof(a));
	struct sha256_state h;
	sha256_init(&h);
	size_t left = 1000000;
	for (size_t n = 1; left > 0; n = n % sizeof(a) + 1) {
		size_t take = n < left ? n : left;
		sha256_update(&h, a, take);
		left -= take;
	}
	sha256_final(&h, out);
	expect_sha256(out, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_durations),   cmocka_unit_test(test_sizes),
	    cmocka_unit_test(test_numbers),     cmocka_unit_test(test_dates),
	    cmocka_unit_test(test_civil_dates), cmocka_unit_test(test_host_port),
	    cmocka_unit_test(test_host_names),  cmocka_unit_test(test_utf8),
	    cmocka_unit_test(test_time_format), cmocka_unit_test(test_time_not_back),
	    cmocka_unit_test(test_strbuf_u64),  cmocka_unit_test(test_json_string),
	    cmocka_unit_test(test_log_quote),   cmocka_unit_test(test_base64),
	    cmocka_unit_test(test_sha256),      cmocka_unit_test(test_tcp_options),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
