/* isgctl's JSON Lines reader: typing, escapes, refusals with line:column and key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "ctl/ctlio.h"

struct parsed {
	struct ctl_batch batch;
	char err[512];
	int rc;
};

static void parse_with(struct parsed *p, const char *text, size_t len, const struct ctl_limits *lim)
{
	ctl_batch_init(&p->batch);
	p->err[0] = '\0';
	p->rc = ctl_read_jsonl("in.jsonl", text, len, lim, &p->batch, p->err, sizeof(p->err));
}

static void parse(struct parsed *p, const char *text)
{
	struct ctl_limits lim;
	ctl_limits_default(&lim);
	parse_with(p, text, strlen(text), &lim);
}

static const struct isg_field *field(const struct parsed *p, size_t rec, size_t i)
{
	assert_true(rec < p->batch.n);
	assert_true(i < p->batch.records[rec].n_fields);
	return &p->batch.records[rec].fields[i];
}

static void assert_refused(const char *text, const char *message)
{
	struct parsed p;
	parse(&p, text);
	assert_true(p.rc < 0);
	assert_string_equal(p.err, message);
	ctl_batch_release(&p.batch);
}

static void test_types(void **state)
{
	struct parsed p;
	parse(&p, "{\"s\":\"x\",\"i\":-12,\"r\":1.5,\"e\":1e3,\"z\":0,\"t\":true,\"f\":false,"
	          "\"n\":null,\"big\":-9223372036854775808,\"neg0\":-0.0}\n");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 1);
	assert_int_equal(p.batch.records[0].n_fields, 9); /* null is absent */
	const struct isg_field *f = field(&p, 0, 0);
	assert_string_equal(f->name, "s");
	assert_int_equal(f->value.kind, ISG_VALUE_TEXT);
	assert_string_equal(f->value.text, "x");
	f = field(&p, 0, 1);
	assert_int_equal(f->value.kind, ISG_VALUE_INTEGER);
	assert_int_equal(f->value.integer, -12);
	f = field(&p, 0, 2);
	assert_int_equal(f->value.kind, ISG_VALUE_REAL);
	assert_true(f->value.real == 1.5);
	f = field(&p, 0, 3);
	assert_int_equal(f->value.kind, ISG_VALUE_REAL); /* an exponent makes it real */
	assert_true(f->value.real == 1000.0);
	f = field(&p, 0, 4);
	assert_int_equal(f->value.kind, ISG_VALUE_INTEGER);
	assert_int_equal(f->value.integer, 0);
	f = field(&p, 0, 5);
	assert_int_equal(f->value.kind, ISG_VALUE_BOOLEAN);
	assert_true(f->value.boolean);
	f = field(&p, 0, 6);
	assert_int_equal(f->value.kind, ISG_VALUE_BOOLEAN);
	assert_false(f->value.boolean);
	f = field(&p, 0, 7);
	assert_string_equal(f->name, "big");
	assert_int_equal(f->value.integer, INT64_MIN);
	assert_int_equal(field(&p, 0, 8)->value.kind, ISG_VALUE_REAL);
	ctl_batch_release(&p.batch);
}

static void test_lines_whitespace_and_order(void **state)
{
	struct parsed p;
	parse(&p, "  { \"b\" : 1 , \"a\" : 2 }  \r\n\n   \n{}\r\n{\"c\":\"3\"}");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 3);
	assert_string_equal(field(&p, 0, 0)->name, "b"); /* key order is kept */
	assert_string_equal(field(&p, 0, 1)->name, "a");
	assert_int_equal(p.batch.records[1].n_fields, 0);
	assert_int_equal(p.batch.lines[0], 1);
	assert_int_equal(p.batch.lines[1], 4);
	assert_int_equal(p.batch.lines[2], 5);
	ctl_batch_release(&p.batch);
}

static void test_string_escapes(void **state)
{
	struct parsed p;
	parse(&p, "{\"k\":\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u00e9 \\u20AC \\ud83d\\ude00 "
	          "\xc3\xa9\"}\n");
	assert_int_equal(p.rc, 0);
	assert_string_equal(
	    field(&p, 0, 0)->value.text,
	    "q\" b\\ s/ \b\f\n\r\t \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc3\xa9");
	ctl_batch_release(&p.batch);
	/* Escaped keys are unescaped too. */
	parse(&p, "{\"n\\u0061me\":1}");
	assert_int_equal(p.rc, 0);
	assert_string_equal(field(&p, 0, 0)->name, "name");
	ctl_batch_release(&p.batch);
}

static void test_nested_values_refused_naming_line_and_key(void **state)
{
	assert_refused("{\"a\":1}\n{\"id\":1,\"addr\":{\"town\":\"x\"}}\n",
	               "in.jsonl:2:16: key 'addr': nested objects and arrays are not allowed");
	assert_refused("{\"list\":[1,2]}", "in.jsonl:1:9: key 'list': nested objects and arrays "
	                                   "are not allowed");
}

static void test_bad_json_refused_with_position(void **state)
{
	assert_refused("{\"a\":1,}", "in.jsonl:1:8: expected a key in double quotes");
	assert_refused("{\"a\" 1}", "in.jsonl:1:6: key 'a': expected ':'");
	assert_refused("{\"a\":1 \"b\":2}", "in.jsonl:1:8: key 'a': expected ',' or '}'");
	assert_refused("{\"a\":1", "in.jsonl:1:7: key 'a': expected ',' or '}'");
	assert_refused("{\"a\":1}x", "in.jsonl:1:8: unexpected text after the object");
	assert_refused("[1]", "in.jsonl:1:1: expected a JSON object");
	assert_refused("\"text\"", "in.jsonl:1:1: expected a JSON object");
	assert_refused("{\"a\":tru}", "in.jsonl:1:6: key 'a': invalid value");
	assert_refused("{\"a\":}", "in.jsonl:1:6: key 'a': invalid value");
	assert_refused("{\"a\":", "in.jsonl:1:6: key 'a': missing value");
	assert_refused("{\"a\":01}", "in.jsonl:1:6: key 'a': invalid number");
	assert_refused("{\"a\":1.}", "in.jsonl:1:6: key 'a': invalid number");
	assert_refused("{\"a\":-}", "in.jsonl:1:6: key 'a': invalid number");
	assert_refused("{\"a\":1e}", "in.jsonl:1:6: key 'a': invalid number");
	assert_refused("{\"a\":+1}", "in.jsonl:1:6: key 'a': invalid value");
	assert_refused("{\"a\":NaN}", "in.jsonl:1:6: key 'a': invalid value");
	assert_refused("{\"a\":1e400}", "in.jsonl:1:6: key 'a': number out of range");
	/* underflow would silently become 0 */
	assert_refused("{\"a\":1e-400}", "in.jsonl:1:6: key 'a': number out of range");
	assert_refused("{\"a\":-2.5E-999}", "in.jsonl:1:6: key 'a': number out of range");
	/* a zero with any exponent is exact, and small numbers stay, subnormal ones too */
	struct parsed p;
	parse(&p, "{\"z\":0e-400,\"s\":1e-310}");
	assert_int_equal(p.rc, 0);
	assert_true(field(&p, 0, 0)->value.real == 0.0);
	assert_true(field(&p, 0, 1)->value.real == 1e-310);
	ctl_batch_release(&p.batch);
	assert_refused("{\"a\":9223372036854775808}",
	               "in.jsonl:1:6: key 'a': integer out of 64-bit range");
	assert_refused("{\"a\":\"x\\q\"}", "in.jsonl:1:8: key 'a': invalid escape in a string");
	assert_refused("{\"a\":\"x\\u12g4\"}", "in.jsonl:1:8: key 'a': invalid \\u escape");
	assert_refused("{\"a\":\"\\ud800x\"}",
	               "in.jsonl:1:7: key 'a': unpaired surrogate in \\u escape");
	assert_refused("{\"a\":\"\\udc00\"}",
	               "in.jsonl:1:7: key 'a': unpaired surrogate in \\u escape");
	assert_refused("{\"a\":\"x\\u0000\"}",
	               "in.jsonl:1:8: key 'a': U+0000 is not allowed in text");
	assert_refused("{\"a\":\"tab\there\"}",
	               "in.jsonl:1:10: key 'a': control character in a string (escape it)");
	assert_refused("{\"a\":\"open}", "in.jsonl:1:6: key 'a': string is not closed");
	assert_refused("{\"a\":1,\"a\":2}", "in.jsonl:1:8: key 'a': duplicate key");
	/* a null copy is a duplicate too, before or after the other */
	assert_refused("{\"a\":\"x\",\"a\":null}", "in.jsonl:1:10: key 'a': duplicate key");
	assert_refused("{\"a\":null,\"a\":\"x\"}", "in.jsonl:1:11: key 'a': duplicate key");
	assert_refused("{\"a\":null,\"a\":null}", "in.jsonl:1:11: key 'a': duplicate key");
	assert_refused("{\"\":1}", "in.jsonl:1:2: empty key");
	assert_refused("{\"a\\nb\":1}", "in.jsonl:1:2: key has a control character");
	assert_refused("{\"ok\":1}\n\n{\"b\":\xff}", "in.jsonl:3:6: invalid UTF-8");
}

static void test_messages_never_hold_values(void **state)
{
	/* The value holds what looks like personal data; the error must not repeat it. */
	struct parsed p;
	parse(&p, "{\"nhs\":\"9434765919\",\"dob\":1980-01-01}");
	assert_true(p.rc < 0);
	assert_null(strstr(p.err, "9434765919"));
	assert_null(strstr(p.err, "1980"));
	assert_string_equal(p.err, "in.jsonl:1:31: key 'dob': expected ',' or '}'");
	ctl_batch_release(&p.batch);
}

static void test_keys_that_may_be_data_are_named_by_place(void **state)
{
	/*
	 * An object keyed by identifier ({"9434765919": {...}}) makes a person's
	 * data the key: a key without a field name's shape is named by its place
	 * in the object (nulls counted), as a CSV column is.
	 */
	assert_refused("{\"9434765919\":{\"dob\":\"1980-01-01\"}}",
	               "in.jsonl:1:15: key 1: nested objects and arrays are not allowed");
	assert_refused("{\"a\":null,\"O'Brien, Se\u00e1n\":1,\"O'Brien, Se\u00e1n\":2}",
	               "in.jsonl:1:30: key 3: duplicate key");
	assert_refused("{\"a\":1,\"NE3 4RT\":tru}", "in.jsonl:1:18: key 2: invalid value");
	assert_refused("{\"NE3 4RT\":1 \"b\":2}", "in.jsonl:1:14: key 1: expected ',' or '}'");
	/* a field name's shape: named */
	assert_refused("{\"date_of-birth2\":[1]}",
	               "in.jsonl:1:19: key 'date_of-birth2': nested objects and arrays are not "
	               "allowed");
}

static void test_limits(void **state)
{
	struct ctl_limits lim = {.max_line = 20, .max_fields = 2, .max_records = 2};
	struct parsed p;
	const char *long_line = "{\"a\":\"0123456789abcd\"}\n";
	parse_with(&p, long_line, strlen(long_line), &lim);
	assert_int_equal(p.rc, ISG_ERR_LIMIT);
	assert_string_equal(p.err, "in.jsonl:1: line longer than 20 bytes");
	ctl_batch_release(&p.batch);
	const char *wide = "{\"a\":1,\"b\":2,\"c\":3}";
	parse_with(&p, wide, strlen(wide), &lim);
	assert_int_equal(p.rc, ISG_ERR_PARSE);
	assert_string_equal(p.err, "in.jsonl:1:14: key 'c': more than 2 keys in an object");
	ctl_batch_release(&p.batch);
	const char *many = "{}\n{}\n\n{}\n";
	parse_with(&p, many, strlen(many), &lim);
	assert_int_equal(p.rc, ISG_ERR_LIMIT);
	assert_string_equal(p.err, "in.jsonl:4: more than 2 records");
	ctl_batch_release(&p.batch);
	/* A very long number is refused without copying it anywhere. */
	size_t n = 1000;
	char *big = malloc(n + 16);
	memcpy(big, "{\"a\":1.", 7);
	memset(big + 7, '5', n);
	memcpy(big + 7 + n, "}", 2);
	ctl_limits_default(&lim);
	parse_with(&p, big, strlen(big), &lim);
	assert_true(p.rc < 0);
	assert_string_equal(p.err, "in.jsonl:1:6: key 'a': number longer than 400 characters");
	ctl_batch_release(&p.batch);
	free(big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_types),
	    cmocka_unit_test(test_lines_whitespace_and_order),
	    cmocka_unit_test(test_string_escapes),
	    cmocka_unit_test(test_nested_values_refused_naming_line_and_key),
	    cmocka_unit_test(test_bad_json_refused_with_position),
	    cmocka_unit_test(test_messages_never_hold_values),
	    cmocka_unit_test(test_keys_that_may_be_data_are_named_by_place),
	    cmocka_unit_test(test_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
