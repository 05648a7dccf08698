/* isgctl's CSV reader: RFC 4180 quoting, line endings, absent cells, types, refusals. */
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
	p->rc = ctl_read_csv("in.csv", text, len, lim, &p->batch, p->err, sizeof(p->err));
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

static void assert_text(const struct parsed *p, size_t rec, size_t i, const char *name,
                        const char *value)
{
	const struct isg_field *f = field(p, rec, i);
	assert_string_equal(f->name, name);
	assert_int_equal(f->value.kind, ISG_VALUE_TEXT);
	assert_string_equal(f->value.text, value);
}

/* The input is refused with exactly this message. */
static void assert_refused(const char *text, const char *message)
{
	struct parsed p;
	parse(&p, text);
	assert_true(p.rc < 0);
	assert_string_equal(p.err, message);
	ctl_batch_release(&p.batch);
}

/* Refused, with an error that does not hold value. */
static void assert_no_value(const char *text, const char *value)
{
	struct parsed p;
	parse(&p, text);
	assert_true(p.rc < 0);
	assert_null(strstr(p.err, value));
	ctl_batch_release(&p.batch);
}

static void test_plain_and_quoted(void **state)
{
	struct parsed p;
	parse(&p, "name,town\n"
	          "\"Smith, John\",Leeds\n"
	          "\"say \"\"hi\"\"\",\"\"\"\"\n");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 2);
	assert_text(&p, 0, 0, "name", "Smith, John");
	assert_text(&p, 0, 1, "town", "Leeds");
	assert_text(&p, 1, 0, "name", "say \"hi\"");
	assert_text(&p, 1, 1, "town", "\"");
	assert_int_equal(p.batch.lines[0], 2);
	assert_int_equal(p.batch.lines[1], 3);
	ctl_batch_release(&p.batch);
}

static void test_crlf_and_no_final_newline(void **state)
{
	struct parsed p;
	parse(&p, "a,b\r\n1,2\r\n3,4");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 2);
	assert_text(&p, 0, 1, "b", "2");
	assert_text(&p, 1, 0, "a", "3");
	assert_text(&p, 1, 1, "b", "4");
	ctl_batch_release(&p.batch);
}

static void test_embedded_newlines_keep_line_numbers(void **state)
{
	struct parsed p;
	parse(&p, "note,n\n\"line one\nline two\r\nline three\",1\nplain,2\n");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 2);
	assert_text(&p, 0, 0, "note", "line one\nline two\r\nline three");
	assert_int_equal(p.batch.lines[0], 2);
	assert_int_equal(p.batch.lines[1], 5);
	ctl_batch_release(&p.batch);
	/* An error after a multi-line field names the right line. */
	assert_refused("note,n\n\"a\nb\",1\nx\n",
	               "in.csv:4: record has 1 fields, the header has 2");
}

static void test_empty_cells_are_absent(void **state)
{
	struct parsed p;
	parse(&p, "a,b,c\n,x,\n\"\",,\n");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 2);
	assert_int_equal(p.batch.records[0].n_fields, 1);
	assert_text(&p, 0, 0, "b", "x");
	/* A quoted empty cell is empty text, not absent. */
	assert_int_equal(p.batch.records[1].n_fields, 1);
	assert_text(&p, 1, 0, "a", "");
	ctl_batch_release(&p.batch);
}

static void test_blank_lines_and_bom_skipped(void **state)
{
	struct parsed p;
	parse(&p, "\xef\xbb\xbf"
	          "id\n\n1\r\n\r\n\n2\n\n");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 2);
	assert_text(&p, 0, 0, "id", "1");
	assert_text(&p, 1, 0, "id", "2");
	assert_int_equal(p.batch.lines[1], 6);
	ctl_batch_release(&p.batch);
}

/*
 * A line of only spaces, tabs and carriage returns is blank too, as in the
 * JSON Lines reader: no record of "   " in a one-column file, no "record has
 * 1 fields" in a wider one, and later line numbers stay right.
 */
static void test_whitespace_lines_skipped(void **state)
{
	struct parsed p;
	parse(&p, "a\n   \n");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 0);
	ctl_batch_release(&p.batch);

	parse(&p, " \t\r\na,b\n1,2\n\t \r\n  \n3,4\n \t");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 2);
	assert_text(&p, 0, 0, "a", "1");
	assert_text(&p, 1, 1, "b", "4");
	assert_int_equal(p.batch.lines[0], 3);
	assert_int_equal(p.batch.lines[1], 6);
	ctl_batch_release(&p.batch);

	/* Spaces around a value are kept: only a line with nothing else is blank. */
	parse(&p, "a\n x \n");
	assert_int_equal(p.rc, 0);
	assert_int_equal(p.batch.n, 1);
	assert_text(&p, 0, 0, "a", " x ");
	ctl_batch_release(&p.batch);

	/* Errors after blank lines name their own line. */
	assert_refused("a,b\n  \n\t\n1\n", "in.csv:4: record has 1 fields, the header has 2");
	assert_refused("a,n:integer\n \n\r\n1,x\n", "in.csv:4:3: column 'n': not an integer");
}

static void test_typed_columns(void **state)
{
	struct parsed p;
	parse(&p, "age:integer,score:real,ok:boolean,note:text,odd:integer:text\n"
	          "-42,2.5e1,TRUE,007,x\n"
	          "+9223372036854775807,-.5,false,,y\n");
	assert_int_equal(p.rc, 0);
	const struct isg_field *f = field(&p, 0, 0);
	assert_string_equal(f->name, "age");
	assert_int_equal(f->value.kind, ISG_VALUE_INTEGER);
	assert_int_equal(f->value.integer, -42);
	f = field(&p, 0, 1);
	assert_string_equal(f->name, "score");
	assert_int_equal(f->value.kind, ISG_VALUE_REAL);
	assert_true(f->value.real == 25.0);
	f = field(&p, 0, 2);
	assert_int_equal(f->value.kind, ISG_VALUE_BOOLEAN);
	assert_true(f->value.boolean);
	assert_text(&p, 0, 3, "note", "007");      /* text keeps leading zeros */
	assert_text(&p, 0, 4, "odd:integer", "x"); /* the last ':' starts the type */
	assert_int_equal(field(&p, 1, 0)->value.integer, INT64_MAX);
	assert_true(field(&p, 1, 1)->value.real == -0.5);
	assert_false(field(&p, 1, 2)->value.boolean);
	assert_int_equal(p.batch.records[1].n_fields, 4); /* note absent */
	ctl_batch_release(&p.batch);
}

static void test_bad_typed_values_name_column_not_value(void **state)
{
	assert_refused("id,age:integer\nA,4x2\n", "in.csv:2:3: column 'age': not an integer");
	assert_refused("id,age:integer\nA,9223372036854775808\n",
	               "in.csv:2:3: column 'age': integer out of 64-bit range");
	assert_refused("s:real\nnan\n", "in.csv:2:1: column 's': not a number");
	assert_refused("s:real\n1e999\n", "in.csv:2:1: column 's': number out of range");
	/* underflow would silently become 0 */
	assert_refused("s:real\n1e-400\n", "in.csv:2:1: column 's': number out of range");
	assert_refused("s:real\n-2.5E-999\n", "in.csv:2:1: column 's': number out of range");
	/* a zero with any exponent is exact, and small numbers stay, subnormal ones too */
	struct parsed p;
	parse(&p, "z:real,s:real\n0e-400,1e-310\n");
	assert_int_equal(p.rc, 0);
	assert_true(field(&p, 0, 0)->value.real == 0.0);
	assert_true(field(&p, 0, 1)->value.real == 1e-310);
	ctl_batch_release(&p.batch);
	assert_refused("b:boolean\nyes\n", "in.csv:2:1: column 'b': not true or false");
	assert_refused("age:integer\n\"\"\n", "in.csv:2:1: column 'age': not an integer");
}

/* A ':' in a header always starts a type (field names have none): a typo is not a field name. */
static void test_unknown_types_refused(void **state)
{
	assert_refused(
	    "nhs_number,age:integr\n9434765919,1\n",
	    "in.csv:1:12: column 'age': unknown type 'integr' (give text, integer, real or "
	    "boolean)");
	assert_refused(
	    "id,count:Integer\n",
	    "in.csv:1:4: column 'count': unknown type 'Integer' (give text, integer, real "
	    "or boolean)");
	assert_refused(
	    "id,\"ratio:percent\"\n",
	    "in.csv:1:4: column 'ratio': unknown type 'percent' (give text, integer, real "
	    "or boolean)");
	assert_refused(
	    "id,age:\n",
	    "in.csv:1:4: column 'age': unknown type '' (give text, integer, real or boolean)");
	assert_refused(
	    "id,a:b:integer:real:x\n",
	    "in.csv:1:4: column 2: unknown type 'x' (give text, integer, real or boolean)");
	assert_refused("id,:integer\n", "in.csv:1:4: empty column name");
}

/*
 * A CSV without its header row makes the first record's values the column
 * names: an error names such a column by its place, never by its text.
 */
static void test_header_errors_quote_no_data(void **state)
{
	assert_refused("9434765919,12:30\n",
	               "in.csv:1:12: column 2: unknown type (give text, integer, real or boolean)");
	assert_refused("9434765919,1984-03-07,10:15:00\n",
	               "in.csv:1:23: column 3: unknown type (give text, integer, real or boolean)");
	assert_refused("9434765919,SW1A 1AA,9434765919\n",
	               "in.csv:1:21: column 3 has the same name as column 1");
	assert_refused("id,1984-03-07:integer\nA1,x\n", "in.csv:2:4: column 2: not an integer");
	/* a name with a field name's shape is data too: a surname taken for a column */
	assert_refused("Smith,Jones,Smith\n",
	               "in.csv:1:13: column 3 has the same name as column 1");
	assert_refused("9876543210,Lindqvist,financial-abuse,Lindqvist\n",
	               "in.csv:1:38: column 4 has the same name as column 2");
	assert_no_value("9876543210,Lindqvist,financial-abuse,Lindqvist\n", "Lindqvist");
}

static void test_ragged_rows_refused_with_line(void **state)
{
	assert_refused("a,b\n1,2\n3\n", "in.csv:3: record has 1 fields, the header has 2");
	assert_refused("a,b\n1,2\n3,4,5\n", "in.csv:3: record has 3 fields, the header has 2");
	assert_refused("a,b\n1,2,\n", "in.csv:2: record has 3 fields, the header has 2");
}

static void test_header_problems(void **state)
{
	assert_refused("id,name,id\n1,2,3\n", "in.csv:1:9: column 3 has the same name as column 1");
	assert_refused("id,age:integer,age\n",
	               "in.csv:1:16: column 3 has the same name as column 2");
	assert_refused("id,,x\n", "in.csv:1:4: empty column name");
	assert_refused("\"a\nb\"\n", "in.csv:1:1: column name has a control character");
	assert_refused("", "in.csv:1: no header row");
	assert_refused("\n\r\n", "in.csv:1: no header row");
}

static void test_quoting_errors(void **state)
{
	assert_refused("a\n\"open\n", "in.csv:2:1: quoted field is not closed");
	assert_refused("a,b\n\"x\"y,1\n", "in.csv:2:4: unexpected character after a closing quote");
	assert_refused("a\nsay \"hi\"\n",
	               "in.csv:2:5: quote inside an unquoted field (quote the whole field and "
	               "double the quote)");
	assert_refused("a\nx\ry\n", "in.csv:2:2: carriage return inside an unquoted field");
}

static void test_utf8_validated(void **state)
{
	struct parsed p;
	parse(&p, "name\nJos\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\n");
	assert_int_equal(p.rc, 0);
	assert_text(&p, 0, 0, "name", "Jos\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
	ctl_batch_release(&p.batch);
	assert_refused("name\nab\xc3(\n", "in.csv:2:3: invalid UTF-8");
	assert_refused("name\nx\ny\xed\xa0\x80\n", "in.csv:3:2: invalid UTF-8"); /* surrogate */
	assert_refused("name\n\xc0\xaf\n", "in.csv:2:1: invalid UTF-8");         /* overlong */
	/* A NUL byte could not be passed on as text. */
	struct ctl_limits lim;
	ctl_limits_default(&lim);
	parse_with(&p, "a\nx\0y\n", 6, &lim);
	assert_true(p.rc < 0);
	assert_string_equal(p.err, "in.csv:2:2: NUL byte");
	ctl_batch_release(&p.batch);
}

static void test_limits(void **state)
{
	struct ctl_limits lim = {.max_line = 16, .max_fields = 3, .max_records = 2};
	struct parsed p;
	const char *long_line = "a\n0123456789abcdefg\n";
	parse_with(&p, long_line, strlen(long_line), &lim);
	assert_int_equal(p.rc, ISG_ERR_LIMIT);
	assert_string_equal(p.err, "in.csv:2: record longer than 16 bytes");
	ctl_batch_release(&p.batch);
	/* A quoted field spanning lines counts as one record. */
	const char *long_quoted = "a\n\"0123\n4567\n89ab\ncdef\nghi\"\n";
	parse_with(&p, long_quoted, strlen(long_quoted), &lim);
	assert_int_equal(p.rc, ISG_ERR_LIMIT);
	assert_string_equal(p.err, "in.csv:2: record longer than 16 bytes");
	ctl_batch_release(&p.batch);
	const char *wide = "a,b,c,d\n";
	parse_with(&p, wide, strlen(wide), &lim);
	assert_int_equal(p.rc, ISG_ERR_LIMIT);
	assert_string_equal(p.err, "in.csv:1:7: more than 3 fields in a record");
	ctl_batch_release(&p.batch);
	const char *many = "a\n1\n2\n3\n";
	parse_with(&p, many, strlen(many), &lim);
	assert_int_equal(p.rc, ISG_ERR_LIMIT);
	assert_string_equal(p.err, "in.csv:4: more than 2 records");
	ctl_batch_release(&p.batch);
}

static void test_large_input(void **state)
{
	/* Many records, long cells: parsed in one pass, strings in the arena. */
	size_t n = 20000, cell = 200;
	size_t size = 16 + n * (cell + 8);
	char *buf = malloc(size), *p = buf;
	p += snprintf(p, size, "id:integer,text\n");
	for (size_t i = 0; i < n; i++) {
		p += snprintf(p, size - (size_t)(p - buf), "%zu,", i);
		memset(p, 'x', cell);
		p += cell;
		*p++ = '\n';
	}
	struct parsed r;
	struct ctl_limits lim;
	ctl_limits_default(&lim);
	parse_with(&r, buf, (size_t)(p - buf), &lim);
	assert_int_equal(r.rc, 0);
	assert_int_equal(r.batch.n, n);
	assert_int_equal(field(&r, n - 1, 0)->value.integer, (int64_t)n - 1);
	assert_int_equal(strlen(field(&r, n - 1, 1)->value.text), cell);
	ctl_batch_release(&r.batch);
	free(buf);
}

static void test_format_from_name(void **state)
{
	assert_int_equal(ctl_format_from_name("a.csv"), CTL_FORMAT_CSV);
	assert_int_equal(ctl_format_from_name("dir.x/A.CSV"), CTL_FORMAT_CSV);
	assert_int_equal(ctl_format_from_name("a.jsonl"), CTL_FORMAT_JSONL);
	assert_int_equal(ctl_format_from_name("a.ndjson"), CTL_FORMAT_JSONL);
	assert_int_equal(ctl_format_from_name("a.json"), CTL_FORMAT_NONE);
	assert_int_equal(ctl_format_from_name(".csv"), CTL_FORMAT_NONE);
	assert_int_equal(ctl_format_from_name("-"), CTL_FORMAT_NONE);
	enum ctl_format f;
	assert_int_equal(ctl_format_parse("csv", &f), 0);
	assert_int_equal(f, CTL_FORMAT_CSV);
	assert_int_equal(ctl_format_parse("jsonl", &f), 0);
	assert_int_equal(f, CTL_FORMAT_JSONL);
	assert_int_equal(ctl_format_parse("json", &f), ISG_ERR_PARSE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain_and_quoted),
	    cmocka_unit_test(test_crlf_and_no_final_newline),
	    cmocka_unit_test(test_embedded_newlines_keep_line_numbers),
	    cmocka_unit_test(test_empty_cells_are_absent),
	    cmocka_unit_test(test_blank_lines_and_bom_skipped),
	    cmocka_unit_test(test_whitespace_lines_skipped),
	    cmocka_unit_test(test_typed_columns),
	    cmocka_unit_test(test_bad_typed_values_name_column_not_value),
	    cmocka_unit_test(test_unknown_types_refused),
	    cmocka_unit_test(test_header_errors_quote_no_data),
	    cmocka_unit_test(test_ragged_rows_refused_with_line),
	    cmocka_unit_test(test_header_problems),
	    cmocka_unit_test(test_quoting_errors),
	    cmocka_unit_test(test_utf8_validated),
	    cmocka_unit_test(test_limits),
	    cmocka_unit_test(test_large_input),
	    cmocka_unit_test(test_format_from_name),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
