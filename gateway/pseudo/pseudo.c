/*
 * pseudo: the entry point for normalisation, and the keyed hash and its text
 * form. The construction is fixed by docs/pseudonyms.md: any change to the
 * bytes hashed here changes every pseudonym, so it needs a new version byte.
 */
#include "pseudo/internal.h"
#include "util/util.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

/* The hash input starts with this tag, then 0x00 and the version byte. */
#define PSEUDO_TAG "ISG-PSEUDONYM"
#define PSEUDO_TAG_LEN 13
#define PSEUDO_ENCODING_VERSION 0x01

const char *pseudo_type_name(enum pseudo_type t)
{
	switch (t) {
	case PSEUDO_NHS_NUMBER:
		return "nhs_number";
	case PSEUDO_PNC_ID:
		return "pnc_id";
	case PSEUDO_POSTCODE:
		return "postcode";
	case PSEUDO_DATE:
		return "date";
	case PSEUDO_NAME:
		return "name";
	case PSEUDO_EMAIL:
		return "email";
	case PSEUDO_IDENTIFIER:
		return "identifier";
	}
	return "unknown";
}

int pseudo_refuse(const char **reason, const char *why)
{
	if (reason)
		*reason = why;
	return ISG_ERR_INVALID;
}

uint32_t pseudo_utf8_next(const char *str, size_t len, size_t *i)
{
	const unsigned char *s = (const unsigned char *)str;
	unsigned char c = s[*i];
	size_t n = c < 0x80 ? 0 : c < 0xe0 ? 1 : c < 0xf0 ? 2 : 3;
	uint32_t cp = n == 0 ? c : n == 1 ? c & 0x1fu : n == 2 ? c & 0x0fu : c & 0x07u;
	for (size_t k = 1; k <= n && *i + k < len; k++)
		cp = (cp << 6) | (s[*i + k] & 0x3fu);
	*i += n + 1;
	return cp;
}

/* C0 controls, DEL, and C1 controls (U+0080..U+009F, encoded C2 80..C2 9F). */
static bool has_control(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < 0x20 || s[i] == 0x7f)
			return true;
		if (s[i] == 0xc2 && i + 1 < len && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
			return true;
	}
	return false;
}

static pseudo_normaliser normaliser_of(enum pseudo_type t)
{
	switch (t) {
	case PSEUDO_NHS_NUMBER:
		return pseudo_norm_nhs;
	case PSEUDO_PNC_ID:
		return pseudo_norm_pnc;
	case PSEUDO_POSTCODE:
		return pseudo_norm_postcode;
	case PSEUDO_DATE:
		return pseudo_norm_date;
	case PSEUDO_NAME:
		return pseudo_norm_name;
	case PSEUDO_EMAIL:
		return pseudo_norm_email;
	case PSEUDO_IDENTIFIER:
		return pseudo_norm_identifier;
	}
	return NULL;
}

int pseudo_normalise(enum pseudo_type t, const char *in, size_t len,
                     char out[static PSEUDO_VALUE_MAX + 1], const char **reason)
{
	out[0] = '\0';
	pseudo_normaliser norm = normaliser_of(t);
	if (!norm)
		return pseudo_refuse(reason, "unknown identifier type");
	if (!in && len)
		return pseudo_refuse(reason, "value is missing");
	/* Bound the raw input, before any work, so no rule can grow past it. */
	if (len > PSEUDO_VALUE_MAX)
		return pseudo_refuse(reason, "value is too long");
	if (!str_utf8_valid(in, len))
		return pseudo_refuse(reason, "value is not valid UTF-8");
	if (has_control(in, len))
		return pseudo_refuse(reason, "value contains a control character");
	while (len && in[0] == ' ') {
		in++;
		len--;
	}
	while (len && in[len - 1] == ' ')
		len--;
	if (!len)
		return pseudo_refuse(reason, "value is empty");
	int err = norm(in, len, out, reason);
	if (err)
		out[0] = '\0';
	return err;
}

/* Wipe the stack below the caller, where SHA-256's block function left
 * the key pads it hashed (registers are beyond C's reach). */
__attribute__((noinline)) static void wipe_stack_below(void)
{
	unsigned char scratch[4096];
	sodium_memzero(scratch, sizeof(scratch));
}

/* HMAC (RFC 2104) with a key shorter than SHA-256's 64-byte block: the key,
 * zero-padded, XOR ipad starts the inner hash and XOR opad the outer one. */
void pseudo_keyed_init(struct pseudo_keyed *k, const uint8_t key[static PSEUDO_KEY_LEN])
{
	_Static_assert(PSEUDO_KEY_LEN <= 64, "the key fits SHA-256's block");
	uint8_t pad[64];
	memset(pad, 0x36, sizeof(pad));
	for (size_t i = 0; i < PSEUDO_KEY_LEN; i++)
		pad[i] ^= key[i];
	sha256_init(&k->inner);
	sha256_update(&k->inner, pad, sizeof(pad));
	for (size_t i = 0; i < sizeof(pad); i++)
		pad[i] ^= 0x36 ^ 0x5c;
	sha256_init(&k->outer);
	sha256_update(&k->outer, pad, sizeof(pad));
	sodium_memzero(pad, sizeof(pad));
	wipe_stack_below();
}

void pseudo_keyed_wipe(struct pseudo_keyed *k)
{
	sodium_memzero(k, sizeof(*k));
}

void pseudo_hash_keyed(const struct pseudo_keyed *k, enum pseudo_type t, const char *norm,
                       size_t len, uint8_t out[static PSEUDO_HASH_LEN])
{
	/* Fixed-length prefix, then a length delimiter: see docs/pseudonyms.md. */
	if (len > UINT32_MAX || (unsigned)t > 0xff)
		fatal("pseudo_hash: value or type out of range");
	uint8_t head[PSEUDO_TAG_LEN + 7];
	memcpy(head, PSEUDO_TAG, PSEUDO_TAG_LEN);
	head[PSEUDO_TAG_LEN] = 0x00;
	head[PSEUDO_TAG_LEN + 1] = PSEUDO_ENCODING_VERSION;
	head[PSEUDO_TAG_LEN + 2] = (uint8_t)t;
	head[PSEUDO_TAG_LEN + 3] = (uint8_t)(len >> 24);
	head[PSEUDO_TAG_LEN + 4] = (uint8_t)(len >> 16);
	head[PSEUDO_TAG_LEN + 5] = (uint8_t)(len >> 8);
	head[PSEUDO_TAG_LEN + 6] = (uint8_t)len;

	/* The key pads are already hashed: copies carry on from there, and
	 * sha256_final wipes each copy. */
	uint8_t inner[SHA256_LEN];
	struct sha256_state st = k->inner;
	sha256_update(&st, head, sizeof(head));
	sha256_update(&st, norm, len);
	sha256_final(&st, inner);
	st = k->outer;
	sha256_update(&st, inner, sizeof(inner));
	sha256_final(&st, out);
	sodium_memzero(inner, sizeof(inner));
}

void pseudo_hash(const uint8_t key[static PSEUDO_KEY_LEN], enum pseudo_type t, const char *norm,
                 size_t len, uint8_t out[static PSEUDO_HASH_LEN])
{
	struct pseudo_keyed k;
	pseudo_keyed_init(&k, key);
	pseudo_hash_keyed(&k, t, norm, len, out);
	pseudo_keyed_wipe(&k);
}

void pseudo_format(const uint8_t hash[static PSEUDO_HASH_LEN], uint32_t key_version,
                   char out[static PSEUDO_TEXT_MAX])
{
	/* "p" + up to 10 digits + "_" + 43 characters + NUL = 56 bytes at most.
	 * The digits by hand: snprintf cost more than the hash's own text. */
	char digits[10];
	size_t nd = 0;
	do {
		digits[nd++] = (char)('0' + key_version % 10);
		key_version /= 10;
	} while (key_version);
	size_t n = 0;
	out[n++] = 'p';
	while (nd)
		out[n++] = digits[--nd];
	out[n++] = '_';
	/* Unpadded base64url (RFC 4648 section 5) by table: libsodium's encoder
	 * is constant-time, which a pseudonym, being output, does not need, and
	 * cost more than the keyed hash. */
	static const char alphabet[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	_Static_assert(PSEUDO_HASH_LEN % 3 == 2, "the hash ends in a 2-byte group");
	_Static_assert(PSEUDO_TEXT_MAX >= 1 + 10 + 1 + 43 + 1, "the longest text fits");
	size_t i = 0;
	for (; i + 3 <= PSEUDO_HASH_LEN; i += 3) {
		uint32_t v = (uint32_t)hash[i] << 16 | (uint32_t)hash[i + 1] << 8 | hash[i + 2];
		out[n++] = alphabet[v >> 18];
		out[n++] = alphabet[(v >> 12) & 63];
		out[n++] = alphabet[(v >> 6) & 63];
		out[n++] = alphabet[v & 63];
	}
	uint32_t v = (uint32_t)hash[i] << 16 | (uint32_t)hash[i + 1] << 8;
	out[n++] = alphabet[v >> 18];
	out[n++] = alphabet[(v >> 12) & 63];
	out[n++] = alphabet[(v >> 6) & 63];
	out[n] = '\0';
}
