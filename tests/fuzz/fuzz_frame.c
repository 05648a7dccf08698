/*
 * The frame decoder as isgd runs it on bytes from the network: read a varint
 * length (checked against the limit before anything is allocated), decode
 * the frame, check its strings are UTF-8, and for every frame that decodes,
 * check that encoding it again gives a frame that decodes to the same bytes,
 * that packing it by hand (pack.c) gives protobuf-c's bytes, that decoding
 * it by hand (unpack.c) either declines or gives protobuf-c's frame, and
 * that a Send's bytes offered as they came (wire_frame_send_bytes) are the
 * ones pack.c would write.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_FRAME 65536

static void check_round_trip(const Isg__Frame *f)
{
	size_t size = wire_frame_size(f);
	uint8_t *buf = malloc(size);
	if (!buf)
		return;
	if (wire_frame_encode(f, buf) != size)
		abort();
	size_t hdr, body;
	if (wire_frame_peek(buf, size, SIZE_MAX, &hdr, &body) != 1 || hdr + body != size)
		abort();
	Isg__Frame *g = wire_frame_decode(buf + hdr, body);
	if (!g)
		abort();
	size_t again = wire_frame_size(g);
	uint8_t *buf2 = malloc(again);
	if (buf2 &&
	    (again != size || wire_frame_encode(g, buf2) != size || memcmp(buf, buf2, size)))
		abort();
	free(buf2);
	wire_frame_free(g);
	free(buf);
}

/* pack.c must write what protobuf-c writes, for whatever a client can send. */
static void check_same_bytes(uint8_t *got, size_t got_len, const ProtobufCMessage *m)
{
	size_t len = protobuf_c_message_get_packed_size(m);
	uint8_t *want = malloc(len ? len : 1);
	if (got && want &&
	    (got_len != len || protobuf_c_message_pack(m, want) != len || memcmp(got, want, len)))
		abort();
	free(want);
	free(got);
}

static void check_hand_packing(const Isg__Frame *f)
{
	size_t len = 0, want_len = wire_frame_size(f);
	uint8_t *got = wire_frame_pack(f, &len), *want = malloc(want_len);
	if (got && want &&
	    (len != want_len || wire_frame_encode(f, want) != len || memcmp(got, want, len)))
		abort();
	free(want);
	free(got);
	Isg__Record **records = NULL;
	size_t n = 0;
	if (f->body_case == ISG__FRAME__BODY_SEND) {
		got = wire_pack_send_request(f->send, &len);
		check_same_bytes(got, len, &f->send->base);
		records = f->send->records;
		n = f->send->n_records;
	} else if (f->body_case == ISG__FRAME__BODY_DELIVERY) {
		records = f->delivery->records;
		n = f->delivery->n_records;
	}
	Isg__Delivery d = ISG__DELIVERY__INIT;
	d.records = records;
	d.n_records = n;
	got = wire_pack_delivery_records(records, n, &len);
	check_same_bytes(got, len, &d.base);
}

/* Whatever the hand decoder takes, protobuf-c decodes to the same frame
 * (with no memory bound: near the arena's, the hand decoder needs less). */
static void check_hand_decoding(const uint8_t *body, size_t len)
{
	Isg__Frame *hand = wire_frame_decode_by(body, len, WIRE_DECODE_HAND);
	if (!hand)
		return;
	Isg__Frame *pc = isg__frame__unpack(NULL, len, body);
	if (!pc || hand->body_case != pc->body_case || hand->request_id != pc->request_id)
		abort();
	size_t a_len = isg__frame__get_packed_size(hand), b_len = isg__frame__get_packed_size(pc);
	uint8_t *a = malloc(a_len + 1), *b = malloc(b_len + 1);
	if (a && b &&
	    (a_len != b_len || isg__frame__pack(hand, a) != a_len ||
	     isg__frame__pack(pc, b) != b_len || memcmp(a, b, a_len)))
		abort();
	free(a);
	free(b);
	isg__frame__free_unpacked(pc, NULL);
	wire_frame_free(hand);
}

/* The bytes isgd hashes as they came must be those it would pack, and only
 * ever from a frame the hand decoder took whole. */
static void check_send_bytes(const uint8_t *body, size_t len)
{
	Isg__Frame *f = wire_frame_decode(body, len);
	const uint8_t *sent;
	size_t sent_len, packed_len;
	if (f && wire_frame_send_bytes(f, &sent, &sent_len)) {
		Isg__Frame *hand = wire_frame_decode_by(body, len, WIRE_DECODE_HAND);
		uint8_t *packed = wire_pack_send_request(f->send, &packed_len);
		if (!hand ||
		    (packed && (packed_len != sent_len || memcmp(packed, sent, sent_len) != 0 ||
		                sent < body || sent + sent_len > body + len)))
			abort();
		free(packed);
		wire_frame_free(hand);
	}
	wire_frame_free(f);
}

/*
 * The same bytes as a stored payload: when protobuf-c reads them as a
 * Delivery holding records and nothing else, and writes them back the same,
 * wire_records_well_formed must accept them; whatever it accepts, sent after
 * the metadata of a delivery, must decode.
 */
static void check_stored_records(const uint8_t *data, size_t size)
{
	bool ok = wire_records_well_formed(data, size);
	Isg__Delivery *d = isg__delivery__unpack(NULL, size, data);
	if (d) {
		Isg__Delivery only = ISG__DELIVERY__INIT;
		only.n_records = d->n_records;
		only.records = d->records;
		size_t len = isg__delivery__get_packed_size(&only);
		uint8_t *buf = malloc(len ? len : 1);
		if (buf && isg__delivery__get_packed_size(d) == len &&
		    isg__delivery__pack(&only, buf) == size && memcmp(buf, data, size) == 0 && !ok)
			abort();
		free(buf);
		isg__delivery__free_unpacked(d, NULL);
	}
	if (!ok || size > FUZZ_MAX_FRAME)
		return;
	Isg__Delivery meta = ISG__DELIVERY__INIT;
	meta.gateway_id = 7;
	meta.sender = "met-police";
	struct wire_delivery wd;
	wire_delivery_init(&wd, &meta, data, size);
	size_t len = wire_deliveries_size(3, true, &wd, 1);
	uint8_t *frame = malloc(len);
	if (!frame)
		return;
	size_t hdr, body;
	if (wire_deliveries_encode(3, true, &wd, 1, frame) != len ||
	    wire_frame_peek(frame, len, SIZE_MAX, &hdr, &body) != 1 || hdr + body != len)
		abort();
	Isg__Frame *f = wire_frame_decode(frame + hdr, body);
	/* The records inside may still be malformed; the frame around them is not. */
	if (f && (f->body_case != ISG__FRAME__BODY_DELIVERY || f->delivery->gateway_id != 7))
		abort();
	wire_frame_free(f);
	free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_stored_records(data, size);
	/* A stream of frames, as a connection would see it. */
	size_t off = 0;
	while (off < size) {
		size_t hdr, body;
		int r = wire_frame_peek(data + off, size - off, FUZZ_MAX_FRAME, &hdr, &body);
		if (r <= 0)
			break;
		if (body > FUZZ_MAX_FRAME)
			abort(); /* the limit must hold before allocation */
		if (hdr + body > size - off)
			break;
		check_hand_decoding(data + off + hdr, body);
		check_send_bytes(data + off + hdr, body);
		Isg__Frame *checked = NULL;
		int rc = wire_frame_decode_checked(data + off + hdr, body, &checked);
		Isg__Frame *f = wire_frame_decode(data + off + hdr, body);
		/* The check in one with decoding says what the check of the bytes
		 * says, and a frame it passes has UTF-8 strings once decoded. */
		bool valid = wire_frame_strings_valid(data + off + hdr, body);
		if (!f != !checked || (f && (rc == 0) != valid) ||
		    (f && valid && wire_frame_check_utf8(f) != 0) || (!f && rc != ISG_ERR_PARSE))
			abort();
		wire_frame_free(checked);
		if (f) {
			(void)wire_body_name(f->body_case);
			check_round_trip(f);
			check_hand_packing(f);
			wire_frame_free(f);
		}
		off += hdr + body;
	}
	return 0;
}
