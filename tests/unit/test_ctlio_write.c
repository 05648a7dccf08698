/* isgctl's output (receipts, deliveries as JSON Lines and CSV) and its client config file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"
#include "ctl/ctlio.h"

/* Everything written to a memory stream. */
struct capture {
	FILE *f;
	char *text;
	size_t len;
};

static void capture_start(struct capture *c)
{
	c->text = NULL;
	c->len = 0;
	c->f = open_memstream(&c->text, &c->len);
	assert_non_null(c->f);
}

static const char *capture_end(struct capture *c)
{
	fclose(c->f);
	return c->text;
}

static char *json_of(const struct isg_value *v)
{
	struct strbuf b;
	strbuf_init(&b);
	ctl_json_value(&b, v);
	return strbuf_take(&b, NULL);
}

static void assert_json(const struct isg_value *v, const char *expected)
{
	char *s = json_of(v);
	assert_string_equal(s, expected);
	free(s);
}

static void test_json_string_escaping(void **state)
{
	struct isg_value v = {.kind = ISG_VALUE_TEXT};
	v.text = "plain";
	assert_json(&v, "\"plain\"");
	v.text = "quote\" backslash\\ slash/";
	assert_json(&v, "\"quote\\\" backslash\\\\ slash/\"");
	v.text = "nl\n cr\r tab\t bell\x07 esc\x1b del\x7f";
	assert_json(&v, "\"nl\\u000a cr\\u000d tab\\u0009 bell\\u0007 esc\\u001b del\x7f\"");
	v.text = "Jos\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"; /* kept as UTF-8 */
	assert_json(&v, "\"Jos\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
	v.text = "bad\xff byte";
	assert_json(&v, "\"bad\\ufffd byte\"");
	v.text = "";
	assert_json(&v, "\"\"");
}

static void test_json_numbers(void **state)
{
	struct isg_value v = {.kind = ISG_VALUE_INTEGER, .integer = INT64_MIN};
	assert_json(&v, "-9223372036854775808");
	v.kind = ISG_VALUE_REAL;
	v.real = 0.1;
	assert_json(&v, "0.1"); /* shortest form that reads back the same */
	v.real = 3;
	assert_json(&v, "3.0"); /* stays a real when read back */
	v.real = 1e300;
	assert_json(&v, "1e+300");
	v.real = -2.5e-10;
	assert_json(&v, "-2.5e-10");
	v.real = 1.0 / 3.0;
	char *s = json_of(&v);
	assert_true(strtod(s, NULL) == 1.0 / 3.0);
	free(s);
	v.real = NAN;
	assert_json(&v, "null");
	v.kind = ISG_VALUE_BOOLEAN;
	v.boolean = false;
	assert_json(&v, "false");
	v.kind = ISG_VALUE_NONE;
	assert_json(&v, "null");
}

static void test_receipt_line(void **state)
{
	struct isg_receipt r;
	memset(&r, 0, sizeof(r));
	str_copy(r.message_id, "m\"1", sizeof(r.message_id));
	r.gateway_id = 42;
	r.audit_index = 7;
	r.accepted_at_ms = 1795446245123; /* 2026-11-23T15:04:05.123Z */
	r.duplicate = false;
	r.record_count = 3;
	str_copy(r.policy_version, "ab12", sizeof(r.policy_version));
	struct capture c;
	capture_start(&c);
	assert_int_equal(ctl_write_receipt(c.f, &r), 0);
	assert_string_equal(capture_end(&c),
	                    "{\"message_id\":\"m\\\"1\",\"gateway_id\":42,\"audit_index\":7,"
	                    "\"accepted_at\":\"2026-11-23T15:04:05.123Z\",\"duplicate\":false,"
	                    "\"records\":3,\"policy_version\":\"ab12\"}\n");
	free(c.text);
}

/* A delivery with two records of different shapes. */
struct sample {
	struct isg_field f1[4], f2[2];
	struct isg_record records[2];
	struct isg_delivery d;
};

static void sample_init(struct sample *s)
{
	memset(s, 0, sizeof(*s));
	s->f1[0] = (struct isg_field){"pseudonym", {.kind = ISG_VALUE_TEXT, .text = "a,\"b\"\nc"}};
	s->f1[1] = (struct isg_field){"age", {.kind = ISG_VALUE_INTEGER, .integer = 42}};
	s->f1[2] = (struct isg_field){"risk", {.kind = ISG_VALUE_REAL, .real = 0.5}};
	s->f1[3] = (struct isg_field){"flag", {.kind = ISG_VALUE_BOOLEAN, .boolean = true}};
	s->f2[0] = (struct isg_field){"pseudonym", {.kind = ISG_VALUE_TEXT, .text = ""}};
	s->f2[1] = (struct isg_field){"note", {.kind = ISG_VALUE_NONE}};
	s->records[0] = (struct isg_record){4, s->f1};
	s->records[1] = (struct isg_record){2, s->f2};
	s->d.gateway_id = 9;
	s->d.message_id = "m-1";
	s->d.sender = "met-police";
	s->d.agreement_id = "isa-42";
	s->d.agreement_version = 3;
	s->d.purpose = "safeguarding";
	s->d.dataset = "referrals";
	s->d.reply_to = 0;
	s->d.accepted_at_ms = 1795446245123;
	s->d.n_records = 2;
	s->d.records = s->records;
}

static void test_delivery_jsonl(void **state)
{
	struct sample s;
	sample_init(&s);
	struct capture c;
	capture_start(&c);
	assert_int_equal(ctl_write_delivery_jsonl(c.f, &s.d), 0);
	assert_string_equal(
	    capture_end(&c),
	    "{\"gateway_id\":9,\"message_id\":\"m-1\",\"sender\":\"met-police\","
	    "\"agreement_id\":\"isa-42\",\"agreement_version\":3,\"purpose\":\"safeguarding\","
	    "\"dataset\":\"referrals\",\"accepted_at\":\"2026-11-23T15:04:05.123Z\","
	    "\"reply_to\":0,\"records\":[{\"pseudonym\":\"a,\\\"b\\\"\\u000ac\",\"age\":42,"
	    "\"risk\":0.5,\"flag\":true},{\"pseudonym\":\"\",\"note\":null}]}\n");
	free(c.text);
}

static void test_delivery_csv_headers_change(void **state)
{
	struct sample s;
	sample_init(&s);
	struct ctl_csv_writer w;
	ctl_csv_writer_init(&w);
	struct capture c;
	capture_start(&c);
	assert_int_equal(ctl_write_delivery_csv(c.f, &w, &s.d), 0);
	s.d.gateway_id = 10;
	s.d.n_records = 1;
	s.d.records = &s.records[1]; /* same columns as the last row: no new header */
	assert_int_equal(ctl_write_delivery_csv(c.f, &w, &s.d), 0);
	assert_string_equal(
	    capture_end(&c),
	    "gateway_id,message_id,sender,agreement_id,dataset,pseudonym,age:integer,"
	    "risk:real,flag:boolean\n"
	    "9,m-1,met-police,isa-42,referrals,\"a,\"\"b\"\"\nc\",42,0.5,true\n"
	    "\n"
	    "gateway_id,message_id,sender,agreement_id,dataset,pseudonym,note\n"
	    "9,m-1,met-police,isa-42,referrals,\"\",\n"
	    "10,m-1,met-police,isa-42,referrals,\"\",\n");
	free(c.text);
	ctl_csv_writer_release(&w);
}

/* What fetch writes, send reads back: names with a ':' too, since send takes a type after one. */
static void test_csv_output_reads_back(void **state)
{
	static const char *const odd[][2] = {
	    /* the text field's name, the integer field's */
	    {"odd:integer", "age"},
	    {"a:b", "x:"},
	    {"notes:", "a:b:integer"},
	    {":", "n"},
	};
	for (size_t k = 0; k < sizeof(odd) / sizeof(odd[0]); k++) {
		struct sample s;
		sample_init(&s);
		s.d.n_records = 1;
		s.f1[0].name = odd[k][0];
		s.f1[1].name = odd[k][1];
		struct ctl_csv_writer w;
		ctl_csv_writer_init(&w);
		struct capture c;
		capture_start(&c);
		assert_int_equal(ctl_write_delivery_csv(c.f, &w, &s.d), 0);
		const char *text = capture_end(&c);
		struct ctl_batch b;
		ctl_batch_init(&b);
		struct ctl_limits lim;
		ctl_limits_default(&lim);
		char err[256];
		assert_int_equal(
		    ctl_read_csv("out.csv", text, strlen(text), &lim, &b, err, sizeof(err)), 0);
		assert_int_equal(b.n, 1);
		const struct isg_record *r = &b.records[0];
		assert_int_equal(r->n_fields, 9);
		assert_string_equal(r->fields[5].name, odd[k][0]);
		assert_int_equal(r->fields[5].value.kind, ISG_VALUE_TEXT);
		assert_string_equal(r->fields[5].value.text, "a,\"b\"\nc");
		assert_string_equal(r->fields[6].name, odd[k][1]);
		assert_int_equal(r->fields[6].value.kind, ISG_VALUE_INTEGER);
		assert_int_equal(r->fields[6].value.integer, 42);
		assert_int_equal(r->fields[7].value.kind, ISG_VALUE_REAL);
		assert_true(r->fields[7].value.real == 0.5);
		assert_int_equal(r->fields[8].value.kind, ISG_VALUE_BOOLEAN);
		ctl_batch_release(&b);
		free(c.text);
		ctl_csv_writer_release(&w);
	}
}

static void test_client_config(void **state)
{
	const char *yaml = "gateway: gw.example.nhs.uk:4433\n"
	                   "certificate: certs/partner.pem\n"
	                   "key: /etc/isg/partner.key\n"
	                   "ca: ca.pem\n"
	                   "server_name: gw.example.nhs.uk\n"
	                   "timeout: 2s\n";
	struct ctl_client_config c;
	ctl_client_config_init(&c);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	assert_int_equal(
	    ctl_client_config_parse("/home/p/isg/client.yaml", yaml, strlen(yaml), &c, &d), 0);
	assert_string_equal(c.gateway, "gw.example.nhs.uk:4433");
	assert_string_equal(c.certificate, "/home/p/isg/certs/partner.pem"); /* by the file */
	assert_string_equal(c.key, "/etc/isg/partner.key");
	assert_string_equal(c.ca, "/home/p/isg/ca.pem");
	assert_string_equal(c.server_name, "gw.example.nhs.uk");
	assert_int_equal(c.timeout_ms, 2000);
	ctl_client_config_release(&c);
	ydoc_diags_release(&d);

	/* A bare file name stays relative to the working directory. */
	const char *small = "gateway: h:1\ncertificate: c.pem\ntimeout: 1500\n";
	ydoc_diags_init(&d);
	assert_int_equal(ctl_client_config_parse("client.yaml", small, strlen(small), &c, &d), 0);
	assert_string_equal(c.certificate, "c.pem");
	assert_int_equal(c.timeout_ms, 1500);
	assert_null(c.key);
	ctl_client_config_release(&c);
	ydoc_diags_release(&d);
}

static void test_client_config_errors(void **state)
{
	const char *yaml = "gateway: h:1\n"
	                   "certifcate: c.pem\n"
	                   "timeout: soon\n"
	                   "ca: [a, b]\n";
	struct ctl_client_config c;
	ctl_client_config_init(&c);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	assert_int_equal(ctl_client_config_parse("client.yaml", yaml, strlen(yaml), &c, &d),
	                 ISG_ERR_PARSE);
	assert_int_equal(d.errors, 3);
	bool unknown = false, timeout = false, ca = false;
	for (size_t i = 0; i < d.n; i++) {
		const struct ydoc_diag *g = &d.items[i];
		if (g->line == 2 && strstr(g->message, "unknown key 'certifcate'"))
			unknown = true;
		if (g->line == 3 && strstr(g->message, "'timeout'"))
			timeout = true;
		if (g->line == 4 && strstr(g->message, "'ca' must be"))
			ca = true;
	}
	assert_true(unknown && timeout && ca);
	ctl_client_config_release(&c);
	ydoc_diags_release(&d);

	ydoc_diags_init(&d);
	assert_int_equal(ctl_client_config_parse("client.yaml", "- a\n", 4, &c, &d), ISG_ERR_PARSE);
	assert_int_equal(d.errors, 1);
	ctl_client_config_release(&c);
	ydoc_diags_release(&d);
}

static void test_timeouts(void **state)
{
	int ms = 0;
	assert_int_equal(ctl_parse_timeout("2500", &ms), 0);
	assert_int_equal(ms, 2500);
	assert_int_equal(ctl_parse_timeout("30s", &ms), 0);
	assert_int_equal(ms, 30000);
	assert_int_equal(ctl_parse_timeout("1d", &ms), 0);
	assert_int_equal(ctl_parse_timeout("0", &ms), ISG_ERR_INVALID);
	assert_int_equal(ctl_parse_timeout("2d", &ms), ISG_ERR_INVALID);
	assert_int_equal(ctl_parse_timeout("-5", &ms), ISG_ERR_INVALID);
	assert_int_equal(ctl_parse_timeout("", &ms), ISG_ERR_INVALID);
	assert_int_equal(ctl_parse_timeout("99999999999999999999", &ms), ISG_ERR_INVALID);
}

/* The addresses libisgclient takes, and no others: a bad one fails where it was given. */
static void test_gateway_addresses(void **state)
{
	static const char *const good[] = {"gw.example.nhs.uk:7443", "192.0.2.7:1", "h:65535",
	                                   "[2001:db8::7]:7443", "[::1]:1"};
	static const char *const bad[] = {
	    "127.0.0.1", "",     "127.0.0.1:",       ":7443", "h:0",       "h:65536", "h:+1",
	    "h: 1",      "h:1x", "2001:db8::7:7443", "[::1]", "[::1]7443", "[]:1",    "[::1:1"};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_int_equal(ctl_check_gateway(good[i]), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(ctl_check_gateway(bad[i]), ISG_ERR_PARSE);
	char host[CTL_GATEWAY_HOST_MAX + 8];
	memset(host, 'a', CTL_GATEWAY_HOST_MAX);
	strcpy(host + CTL_GATEWAY_HOST_MAX, ":1");
	assert_int_equal(ctl_check_gateway(host), 0);
	memset(host, 'a', CTL_GATEWAY_HOST_MAX + 1);
	strcpy(host + CTL_GATEWAY_HOST_MAX + 1, ":1");
	assert_int_equal(ctl_check_gateway(host), ISG_ERR_PARSE);

	/* in the config file: file:line:column, the address quoted */
	const char *yaml = "certificate: c.pem\ngateway: 127.0.0.1\n";
	struct ctl_client_config c;
	ctl_client_config_init(&c);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	assert_int_equal(ctl_client_config_parse("client.yaml", yaml, strlen(yaml), &c, &d),
	                 ISG_ERR_PARSE);
	assert_int_equal(d.errors, 1);
	assert_int_equal(d.items[0].line, 2);
	assert_int_equal(d.items[0].col, 10);
	assert_string_equal(d.items[0].message,
	                    "'gateway' must be HOST:PORT, or [IPv6]:PORT, not '127.0.0.1'");
	ctl_client_config_release(&c);
	ydoc_diags_release(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_json_string_escaping),
	    cmocka_unit_test(test_json_numbers),
	    cmocka_unit_test(test_receipt_line),
	    cmocka_unit_test(test_delivery_jsonl),
	    cmocka_unit_test(test_delivery_csv_headers_change),
	    cmocka_unit_test(test_csv_output_reads_back),
	    cmocka_unit_test(test_client_config),
	    cmocka_unit_test(test_client_config_errors),
	    cmocka_unit_test(test_timeouts),
	    cmocka_unit_test(test_gateway_addresses),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
