/*
 * The frame decoder as isgd runs it on bytes from the network: read a varint
 * length (checked against the limit before anything is allocated), decode
 * the frame, check its strings are UTF-8, and for every frame that decodes,
 * check that encoding it again gives a frame that decodes to the same bytes.
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
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
		Isg__Frame *f = wire_frame_decode(data + off + hdr, body);
		if (f) {
			(void)wire_frame_check_utf8(f);
			(void)wire_body_name(f->body_case);
			check_round_trip(f);
			wire_frame_free(f);
		}
		off += hdr + body;
	}
	return 0;
}
