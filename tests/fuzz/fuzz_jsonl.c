/* libFuzzer harness for isgctl's JSON Lines reader, with writer round trips as the oracle. */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_roundtrip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ctl_limits lim;
	fuzz_limits(&lim);
	struct ctl_batch batch;
	ctl_batch_init(&batch);
	char err[512];
	if (ctl_read_jsonl("fuzz.jsonl", (const char *)data, size, &lim, &batch, err,
	                   sizeof(err)) == 0)
		fuzz_writers(&batch);
	ctl_batch_release(&batch);
	return 0;
}
