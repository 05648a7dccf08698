/* util: parsing of durations, sizes, dates and numbers; UTF-8; JSON strings; logfmt quoting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
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
	strbuf_printf(&b, "%d-%s", 7, "x");
	s = strbuf_take(&b, NULL);
	assert_string_equal(s, "7-x");
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

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_durations), cmocka_unit_test(test_sizes),
	    cmocka_unit_test(test_numbers),   cmocka_unit_test(test_dates),
	    cmocka_unit_test(test_utf8),      cmocka_unit_test(test_json_string),
	    cmocka_unit_test(test_log_quote), cmocka_unit_test(test_base64),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
