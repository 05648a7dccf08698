/* Framing: varint lengths, limits checked before allocation, round trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "util/util.h"
#include "wire/wire.h"

static void test_varint_known_answers(void **state)
{
	uint8_t buf[WIRE_VARINT_MAX];
	assert_int_equal(wire_varint_encode(0, buf), 1);
	assert_int_equal(buf[0], 0);
	assert_int_equal(wire_varint_encode(300, buf), 2);
	assert_int_equal(buf[0], 0xac);
	assert_int_equal(buf[1], 0x02);
	assert_int_equal(wire_varint_encode(UINT64_MAX, buf), 10);
	assert_int_equal(buf[9], 0x01);
}

static void test_peek_needs_more(void **state)
{
	const uint8_t partial[] = {0xac};
	size_t h, b;
	assert_int_equal(wire_frame_peek(partial, 0, 1000, &h, &b), 0);
	assert_int_equal(wire_frame_peek(partial, 1, 1000, &h, &b), 0);
	const uint8_t whole[] = {0xac, 0x02};
	assert_int_equal(wire_frame_peek(whole, 2, 1000, &h, &b), 1);
	assert_int_equal(h, 2);
	assert_int_equal(b, 300);
}

static void test_peek_refuses_oversize_and_overflow(void **state)
{
	uint8_t buf[WIRE_VARINT_MAX];
	size_t n = wire_varint_encode(1001, buf), h, b;
	assert_int_equal(wire_frame_peek(buf, n, 1000, &h, &b), ISG_ERR_TOO_BIG);
	n = wire_varint_encode(UINT64_MAX, buf);
	assert_int_equal(wire_frame_peek(buf, n, SIZE_MAX, &h, &b), 1);
	/* Eleven continuation bytes: never a valid varint. */
	uint8_t endless[11];
	memset(endless, 0xff, sizeof(endless));
	assert_int_equal(wire_frame_peek(endless, sizeof(endless), SIZE_MAX, &h, &b),
	                 ISG_ERR_PARSE);
	/* A 10th byte above 1 overflows 64 bits. */
	uint8_t over[10];
	memset(over, 0xff, 9);
	over[9] = 0x02;
	assert_int_equal(wire_frame_peek(over, 10, SIZE_MAX, &h, &b), ISG_ERR_PARSE);
}

static void test_frame_round_trip(void **state)
{
	Isg__Frame f = ISG__FRAME__INIT;
	Isg__Ping ping = ISG__PING__INIT;
	ping.nonce = 42;
	f.request_id = 7;
	f.body_case = ISG__FRAME__BODY_PING;
	f.ping = &ping;
	size_t size = wire_frame_size(&f);
	uint8_t *buf = malloc(size);
	assert_int_equal(wire_frame_encode(&f, buf), size);
	size_t h, b;
	assert_int_equal(wire_frame_peek(buf, size, 1000, &h, &b), 1);
	assert_int_equal(h + b, size);
	Isg__Frame *g = wire_frame_decode(buf + h, b);
	assert_non_null(g);
	assert_int_equal(g->request_id, 7);
	assert_int_equal(g->body_case, ISG__FRAME__BODY_PING);
	assert_int_equal(g->ping->nonce, 42);
	wire_frame_free(g);
	/* A truncated body does not decode. */
	assert_null(wire_frame_decode(buf + h, b - 1));
	free(buf);
}

static void test_invalid_utf8_refused(void **state)
{
	Isg__Frame f = ISG__FRAME__INIT;
	Isg__Hello hello = ISG__HELLO__INIT;
	char bad[] = {'o', 'k', (char)0xc3, 0};
	hello.client_name = bad;
	f.body_case = ISG__FRAME__BODY_HELLO;
	f.hello = &hello;
	assert_int_equal(wire_frame_check_utf8(&f), ISG_ERR_PARSE);
	hello.client_name = "caf\xc3\xa9";
	assert_int_equal(wire_frame_check_utf8(&f), 0);
}

static void test_field_number_zero_refused(void **state)
{
	/* Found by fuzz_frame: request_id 4, then an unknown field numbered 0 whose tag
	 * is not minimally encoded (0x82 0x00). protobuf-c alone accepts it. */
	static const uint8_t body[] = {0x08, 0x04, 0x82, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00};
	assert_null(wire_frame_decode(body, sizeof(body)));
	/* The same frame without it decodes. */
	Isg__Frame *f = wire_frame_decode(body, 2);
	assert_non_null(f);
	assert_int_equal(f->request_id, 4);
	wire_frame_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_varint_known_answers),
	    cmocka_unit_test(test_peek_needs_more),
	    cmocka_unit_test(test_peek_refuses_oversize_and_overflow),
	    cmocka_unit_test(test_frame_round_trip),
	    cmocka_unit_test(test_invalid_utf8_refused),
	    cmocka_unit_test(test_field_number_zero_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
