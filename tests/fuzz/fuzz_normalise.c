/*
 * libFuzzer harness for the pseudo module's parsers: the first byte picks
 * the identifier type (including invalid ones), the rest is the value.
 * Checks, beyond "no crash": an accepted value is bounded, valid UTF-8 and
 * free of control characters, and normalising it again changes nothing.
 * The same bytes also go through the generalisers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pseudo/pseudo.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_normalised(enum pseudo_type t, const char *norm)
{
	size_t len = strlen(norm);
	if (len == 0 || len > PSEUDO_VALUE_MAX || !str_utf8_valid(norm, len))
		abort();
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)norm[i] < 0x20 || norm[i] == 0x7f)
			abort();
	char again[PSEUDO_VALUE_MAX + 1];
	const char *reason = NULL;
	if (pseudo_normalise(t, norm, len, again, &reason) != 0 || strcmp(again, norm) != 0)
		abort(); /* normalisation must be idempotent */

	static const uint8_t key[PSEUDO_KEY_LEN] = {1, 2, 3};
	uint8_t h[PSEUDO_HASH_LEN];
	char text[PSEUDO_TEXT_MAX];
	pseudo_hash(key, t, norm, len, h);
	pseudo_format(h, (uint32_t)len * 65537u, text);
	if (strlen(text) >= PSEUDO_TEXT_MAX)
		abort();
}

static void generalise(const char *s, const uint8_t *data, size_t size)
{
	char out[64];
	const char *reason;
	int64_t today = 0, value = 0, width = 1;
	if (size >= 8)
		memcpy(&value, data + size - 8, 8);
	if (size >= 12) {
		int32_t d;
		memcpy(&d, data + size - 12, 4);
		today = d;
		width = d;
	}
	(void)pseudo_gen_year(s, out, sizeof(out), &reason);
	(void)pseudo_gen_month(s, out, sizeof(out), &reason);
	(void)pseudo_gen_age_band(s, today, (unsigned)(width & 63), out, sizeof(out), &reason);
	(void)pseudo_gen_age_band(s, today, 5, out, 3, &reason);
	for (int level = 0; level < 4; level++)
		(void)pseudo_gen_postcode(s, (enum pseudo_postcode_level)level, out,
		                          (size_t)level * 3, &reason);
	(void)pseudo_gen_number_band(value, width, out, sizeof(out), &reason);
	(void)pseudo_gen_number_band(value, value, out, sizeof(out), &reason);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum pseudo_type t = (enum pseudo_type)(data[0] % 9); /* 0 and 8 are not types */
	const char *in = (const char *)data + 1;
	size_t len = size - 1;

	char out[PSEUDO_VALUE_MAX + 1];
	const char *reason = NULL;
	int err = pseudo_normalise(t, in, len, out, &reason);
	if (err == 0)
		check_normalised(t, out);
	else if (err != ISG_ERR_INVALID || !reason || out[0] != '\0')
		abort();

	/* The generalisers take NUL-terminated text. */
	char *s = malloc(len + 1);
	if (!s)
		return 0;
	memcpy(s, in, len);
	s[len] = '\0';
	generalise(s, data, size);
	free(s);
	return 0;
}
