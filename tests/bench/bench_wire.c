/*
 * bench_wire: decoding a Send frame of R referral-shaped records (ten text
 * fields each), then freeing it, in frames per second on one core:
 * wire_frame_decode, which decodes it by hand (unpack.c) into one arena and
 * checks each string is UTF-8 as it copies it, against two baselines in
 * the same run that do not check UTF-8 (isgd walks their strings after):
 * protobuf-c's unpack into the same arena (what wire_frame_decode did
 * before unpack.c), and protobuf-c's unpack with its default allocator (a
 * malloc and a free per message, string and array, as before the arena).
 * All decode the same bytes; the decoded frames are checked equal first.
 * Then packing the decoded Send
 * again, as isgd does for its request hash: pack.c's wire_pack_send_request
 * against protobuf-c's get_packed_size and pack, checked to give the same
 * bytes. Each figure is the median of 5 runs.
 * Usage: isg-bench-wire [R] [N]   (default 100 records, 20000 frames)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "util/util.h"
#include "wire/wire.h"

#define RUNS 5
#define FIELDS 10

/* A packed Send of r records shaped like tests/bench's referral. */
static uint8_t *make_frame(size_t r, size_t *len)
{
	static const char *const names[FIELDS] = {
	    "nhs_number",    "family_name",  "given_name",    "date_of_birth", "postcode",
	    "officer_notes", "concern_type", "referral_date", "reference",     "priority"};
	Isg__Record *recs = calloc(r, sizeof(*recs));
	Isg__Record **rp = calloc(r, sizeof(*rp));
	Isg__Field *fl = calloc(r * FIELDS, sizeof(*fl));
	Isg__Field **fp = calloc(r * FIELDS, sizeof(*fp));
	Isg__Value *vl = calloc(r * FIELDS, sizeof(*vl));
	char(*text)[32] = calloc(r * FIELDS, sizeof(*text));
	if (!recs || !rp || !fl || !fp || !vl || !text)
		fatal("bench: out of memory");
	for (size_t i = 0; i < r; i++) {
		isg__record__init(&recs[i]);
		rp[i] = &recs[i];
		recs[i].n_fields = FIELDS;
		recs[i].fields = fp + i * FIELDS;
		for (size_t f = 0; f < FIELDS; f++) {
			size_t k = i * FIELDS + f;
			isg__field__init(&fl[k]);
			isg__value__init(&vl[k]);
			snprintf(text[k], sizeof(text[k]), "%s value %zu", names[f] + 5, i);
			vl[k].kind_case = ISG__VALUE__KIND_TEXT;
			vl[k].text = text[k];
			fl[k].name = (char *)names[f];
			fl[k].value = &vl[k];
			fp[k] = &fl[k];
		}
	}
	Isg__SendRequest req = ISG__SEND_REQUEST__INIT;
	req.message_id = "bench-wire-1";
	req.recipient = "nhs-trust";
	req.agreement_id = "bench-referral";
	req.dataset = "referral";
	req.n_records = r;
	req.records = rp;
	Isg__Frame f = ISG__FRAME__INIT;
	f.request_id = 1;
	f.body_case = ISG__FRAME__BODY_SEND;
	f.send = &req;
	*len = isg__frame__get_packed_size(&f);
	uint8_t *buf = malloc(*len);
	if (!buf)
		fatal("bench: out of memory");
	isg__frame__pack(&f, buf);
	free(text);
	free(vl);
	free(fp);
	free(fl);
	free(rp);
	free(recs);
	return buf;
}

static double run_arena(const uint8_t *buf, size_t len, size_t n, enum wire_decoder by)
{
	double t0 = bench_now_s();
	for (size_t i = 0; i < n; i++) {
		Isg__Frame *f = wire_frame_decode_by(buf, len, by);
		if (!f)
			fatal("bench: frame did not decode");
		wire_frame_free(f);
	}
	return (double)n / (bench_now_s() - t0);
}

static double run_malloc(const uint8_t *buf, size_t len, size_t n)
{
	double t0 = bench_now_s();
	for (size_t i = 0; i < n; i++) {
		Isg__Frame *f = isg__frame__unpack(NULL, len, buf);
		if (!f)
			fatal("bench: frame did not decode");
		isg__frame__free_unpacked(f, NULL);
	}
	return (double)n / (bench_now_s() - t0);
}

static double run_pack_hand(const Isg__SendRequest *q, size_t n)
{
	double t0 = bench_now_s();
	for (size_t i = 0; i < n; i++) {
		size_t len;
		uint8_t *out = wire_pack_send_request(q, &len);
		if (!out)
			fatal("bench: out of memory");
		free(out);
	}
	return (double)n / (bench_now_s() - t0);
}

static double run_pack_protobuf_c(const Isg__SendRequest *q, size_t n)
{
	double t0 = bench_now_s();
	for (size_t i = 0; i < n; i++) {
		size_t len = isg__send_request__get_packed_size(q);
		uint8_t *out = malloc(len);
		if (!out)
			fatal("bench: out of memory");
		isg__send_request__pack(q, out);
		free(out);
	}
	return (double)n / (bench_now_s() - t0);
}

static void check_same_packing(const Isg__SendRequest *q)
{
	size_t len, want = isg__send_request__get_packed_size(q);
	uint8_t *a = wire_pack_send_request(q, &len), *b = malloc(want);
	if (!a || !b || len != want || isg__send_request__pack(q, b) != want || memcmp(a, b, len))
		fatal("bench: the two packings differ");
	free(a);
	free(b);
}

/* Every decoding packs back to the same bytes. */
static void check_same(const uint8_t *buf, size_t len)
{
	Isg__Frame *a = wire_frame_decode_by(buf, len, WIRE_DECODE_HAND);
	Isg__Frame *c = wire_frame_decode_by(buf, len, WIRE_DECODE_PROTOBUF_C);
	Isg__Frame *b = isg__frame__unpack(NULL, len, buf);
	uint8_t *pa = malloc(len), *pb = malloc(len), *pc = malloc(len);
	if (!a || !b || !c || !pa || !pb || !pc || isg__frame__pack(a, pa) != len ||
	    isg__frame__pack(b, pb) != len || isg__frame__pack(c, pc) != len ||
	    memcmp(pa, pb, len) != 0 || memcmp(pa, pc, len) != 0 || memcmp(pa, buf, len) != 0)
		fatal("bench: the decodings differ");
	free(pa);
	free(pb);
	free(pc);
	isg__frame__free_unpacked(b, NULL);
	wire_frame_free(c);
	wire_frame_free(a);
}

int main(int argc, char **argv)
{
	int64_t r = 100, n = 20000;
	if ((argc > 1 && str_to_i64(argv[1], 1, 100000, &r) != 0) ||
	    (argc > 2 && str_to_i64(argv[2], 1, 100000000, &n) != 0)) {
		fprintf(stderr, "usage: isg-bench-wire [RECORDS] [FRAMES]\n");
		return 2;
	}
	size_t len;
	uint8_t *buf = make_frame((size_t)r, &len);
	check_same(buf, len);
	double hand_dec[RUNS], arena[RUNS], plain[RUNS];
	for (int i = 0; i < RUNS; i++) { /* interleaved, so drift hits all three */
		plain[i] = run_malloc(buf, len, (size_t)n);
		arena[i] = run_arena(buf, len, (size_t)n, WIRE_DECODE_PROTOBUF_C);
		hand_dec[i] = run_arena(buf, len, (size_t)n, WIRE_DECODE_ANY);
	}
	double d = bench_median(hand_dec, RUNS), a = bench_median(arena, RUNS),
	       p = bench_median(plain, RUNS);
	printf("wire bench: a Send of %lld records (%zu bytes), decoded and freed %lld times, "
	       "median of %d runs, one core\n",
	       (long long)r, len, (long long)n, RUNS);
	printf("  wire_frame_decode (by hand, arena):   %10.0f frames/s  %7.1f us each\n", d,
	       1e6 / d);
	printf("  protobuf-c unpack (one arena):        %10.0f frames/s  %7.1f us each\n", a,
	       1e6 / a);
	printf("  protobuf-c unpack (malloc each part): %10.0f frames/s  %7.1f us each\n", p,
	       1e6 / p);
	printf("  ratio by hand/protobuf-c in the arena: %9.2f\n", d / a);

	Isg__Frame *f = wire_frame_decode(buf, len);
	if (!f || f->body_case != ISG__FRAME__BODY_SEND)
		fatal("bench: not a Send");
	check_same_packing(f->send);
	double hand[RUNS], pc[RUNS];
	for (int i = 0; i < RUNS; i++) {
		pc[i] = run_pack_protobuf_c(f->send, (size_t)n);
		hand[i] = run_pack_hand(f->send, (size_t)n);
	}
	double h = bench_median(hand, RUNS), c = bench_median(pc, RUNS);
	printf("packing the decoded Send again (the request hash's bytes), same runs:\n");
	printf("  wire_pack_send_request (pack.c):      %10.0f sends/s   %7.1f us each\n", h,
	       1e6 / h);
	printf("  protobuf-c get_packed_size + pack:    %10.0f sends/s   %7.1f us each\n", c,
	       1e6 / c);
	printf("  ratio pack.c/protobuf-c:              %10.2f\n", h / c);
	wire_frame_free(f);
	free(buf);
	return 0;
}
