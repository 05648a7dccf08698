/*
 * audit: C2SP signed notes with Ed25519 signatures, and C2SP tlog-checkpoint
 * bodies. Byte-compatible with golang.org/x/mod/sumdb/note: the key hash is
 * the first 4 bytes of SHA-256(name || "\n" || 0x01 || public key), a
 * signature line is "— <name> <base64(key hash || signature)>\n", and the
 * signature covers the note text up to and including its last newline.
 * Parsing is stricter than Go where that costs nothing (bounded sizes,
 * canonical base64), never more lenient.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "audit/audit.h"
#include "util/util.h"

#define ALG_ED25519 0x01
/* U+2014 EM DASH and a space: how every signature line begins. */
#define SIG_PREFIX "\xe2\x80\x94 "
#define SIG_PREFIX_LEN 4
#define SIG_BLOB_LEN (AUDIT_KEY_HASH_LEN + crypto_sign_BYTES)
/* base64 of (0x01 || 32-byte key): 44 characters. */
#define KEY_B64_LEN 44
#define HASH_B64_LEN 44
/* Longest verifier or signer key text looked at before parsing. */
#define KEY_TEXT_MAX 512
#define SIGNER_PREFIX "PRIVATE+KEY+"

struct audit_signer {
	uint8_t secret_key[crypto_sign_SECRETKEYBYTES];
	uint8_t public_key[AUDIT_PUBKEY_LEN];
	uint8_t key_hash[AUDIT_KEY_HASH_LEN];
	char name[AUDIT_NAME_MAX + 1];
	audit_sign_fn remote; /* set: secret_key is unused, remote signs */
	void *remote_ctx;
};

static int fail(const char **reason, const char *why, int err)
{
	if (reason)
		*reason = why;
	return err;
}

/* --- text rules ---------------------------------------------------------- */

/*
 * Decode one UTF-8 sequence from s[0..len): its length, or 0 when it is
 * invalid (truncated, overlong, a surrogate, above U+10FFFF).
 */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
	unsigned char c = s[0];
	size_t n;
	uint32_t v, min;
	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if ((c & 0xe0) == 0xc0) {
		n = 2, v = c & 0x1f, min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		n = 3, v = c & 0x0f, min = 0x800;
	} else if ((c & 0xf8) == 0xf0) {
		n = 4, v = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (s[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return n;
}

/* Go's unicode.IsSpace: the White_Space property. */
static bool is_space(uint32_t cp)
{
	switch (cp) {
	case '\t':
	case '\n':
	case '\v':
	case '\f':
	case '\r':
	case ' ':
	case 0x85:
	case 0xa0:
	case 0x1680:
	case 0x2028:
	case 0x2029:
	case 0x202f:
	case 0x205f:
	case 0x3000:
		return true;
	}
	return cp >= 0x2000 && cp <= 0x200a;
}

/* A key name or origin: 1..AUDIT_NAME_MAX bytes, UTF-8, no controls, spaces or '+'. */
static bool name_valid(const char *s, size_t len)
{
	if (len == 0 || len > AUDIT_NAME_MAX)
		return false;
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		size_t n = utf8_decode(p + i, len - i, &cp);
		if (n == 0 || cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || cp == '+' || is_space(cp))
			return false;
		i += n;
	}
	return true;
}

/*
 * The whole of a note: valid UTF-8, no control character but '\n', no line
 * longer than AUDIT_NOTE_LINE_MAX.
 */
static int check_note_text(const char *s, size_t len, const char **reason)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t line = 0;
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		size_t n = utf8_decode(p + i, len - i, &cp);
		if (n == 0)
			return fail(reason, "note is not valid UTF-8", ISG_ERR_PARSE);
		if (cp == '\n') {
			line = 0;
		} else if (cp < 0x20) {
			return fail(reason, "note contains a control character", ISG_ERR_PARSE);
		} else if ((line += n) > AUDIT_NOTE_LINE_MAX) {
			return fail(reason, "note has a line that is too long", ISG_ERR_PARSE);
		}
		i += n;
	}
	return 0;
}

/* True when the n bytes at s are exactly the NUL-terminated string t. */
static bool bytes_are(const char *s, size_t n, const char *t)
{
	return strlen(t) == n && memcmp(s, t, n) == 0;
}

static const char *find_byte(const char *s, size_t len, char c)
{
	return len ? memchr(s, c, len) : NULL;
}

/* Exactly 8 hex digits (either case, as Go's ParseUint accepts) into 4 bytes. */
static bool parse_hex8(const char *s, size_t len, uint8_t out[static AUDIT_KEY_HASH_LEN])
{
	if (len != 2 * AUDIT_KEY_HASH_LEN)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		unsigned v;
		if (c >= '0' && c <= '9')
			v = (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v = (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v = (unsigned)(c - 'A' + 10);
		else
			return false;
		if (i % 2 == 0)
			out[i / 2] = (uint8_t)(v << 4);
		else
			out[i / 2] |= (uint8_t)v;
	}
	return true;
}

static void key_hash(const char *name, size_t name_len, const uint8_t public_key[static 32],
                     uint8_t out[static AUDIT_KEY_HASH_LEN])
{
	static const uint8_t sep[2] = {'\n', ALG_ED25519};
	uint8_t h[SHA256_LEN];
	struct sha256_state st;
	sha256_init(&st);
	sha256_update(&st, name, name_len);
	sha256_update(&st, sep, sizeof(sep));
	sha256_update(&st, public_key, AUDIT_PUBKEY_LEN);
	sha256_final(&st, h);
	memcpy(out, h, AUDIT_KEY_HASH_LEN);
}

/* --- keys ---------------------------------------------------------------- */

int audit_signer_new(const char *name, const uint8_t seed[static AUDIT_SEED_LEN],
                     struct audit_signer **out)
{
	if (!out)
		return ISG_ERR_INVALID;
	*out = NULL;
	if (!name || !seed)
		return ISG_ERR_INVALID;
	size_t name_len = strnlen(name, AUDIT_NAME_MAX + 1);
	if (!name_valid(name, name_len))
		return ISG_ERR_INVALID;
	if (sodium_init() < 0)
		return ISG_ERR_CRYPTO;
	struct audit_signer *s = sodium_malloc(sizeof(*s));
	if (!s)
		return ISG_ERR_NOMEM;
	memset(s, 0, sizeof(*s));
	if (crypto_sign_seed_keypair(s->public_key, s->secret_key, seed) != 0) {
		sodium_free(s);
		return ISG_ERR_CRYPTO;
	}
	key_hash(name, name_len, s->public_key, s->key_hash);
	memcpy(s->name, name, name_len);
	s->name[name_len] = '\0';
	sodium_mprotect_readonly(s);
	*out = s;
	return 0;
}

int audit_signer_remote(const char *name, const uint8_t public_key[static AUDIT_PUBKEY_LEN],
                        audit_sign_fn sign, void *ctx, struct audit_signer **out)
{
	if (!out)
		return ISG_ERR_INVALID;
	*out = NULL;
	size_t name_len = name ? strnlen(name, AUDIT_NAME_MAX + 1) : 0;
	if (!name || !public_key || !sign || !name_valid(name, name_len))
		return ISG_ERR_INVALID;
	if (sodium_init() < 0)
		return ISG_ERR_CRYPTO;
	struct audit_signer *s = sodium_malloc(sizeof(*s));
	if (!s)
		return ISG_ERR_NOMEM;
	memset(s, 0, sizeof(*s));
	memcpy(s->public_key, public_key, AUDIT_PUBKEY_LEN);
	key_hash(name, name_len, s->public_key, s->key_hash);
	memcpy(s->name, name, name_len);
	s->name[name_len] = '\0';
	s->remote = sign;
	s->remote_ctx = ctx;
	sodium_mprotect_readonly(s);
	*out = s;
	return 0;
}

int audit_signer_sign(const struct audit_signer *s, const uint8_t *msg, size_t len,
                      uint8_t sig[static AUDIT_SIG_LEN])
{
	_Static_assert(AUDIT_SIG_LEN == crypto_sign_BYTES, "Ed25519 signatures are 64 bytes");
	if (s->remote)
		return s->remote(s->remote_ctx, msg, len, sig) == 0 ? 0 : ISG_ERR_CRYPTO;
	return crypto_sign_detached(sig, NULL, msg, len, s->secret_key) == 0 ? 0 : ISG_ERR_CRYPTO;
}

void audit_signer_free(struct audit_signer *s)
{
	if (s)
		sodium_free(s); /* wipes it */
}

const char *audit_signer_name(const struct audit_signer *s)
{
	return s->name;
}

void audit_signer_public_key(const struct audit_signer *s, uint8_t out[static AUDIT_PUBKEY_LEN])
{
	memcpy(out, s->public_key, AUDIT_PUBKEY_LEN);
}

/* "<name>+<hex8>+<base64(0x01 || key)>" */
static void format_key(const char *name, const uint8_t hash[static AUDIT_KEY_HASH_LEN],
                       const uint8_t key[static 32], char out[static AUDIT_VERIFIER_KEY_MAX])
{
	uint8_t blob[1 + 32];
	char hex[2 * AUDIT_KEY_HASH_LEN + 1], b64[KEY_B64_LEN + 1];
	blob[0] = ALG_ED25519;
	memcpy(blob + 1, key, 32);
	hex_encode(hex, hash, AUDIT_KEY_HASH_LEN);
	sodium_bin2base64(b64, sizeof(b64), blob, sizeof(blob), sodium_base64_VARIANT_ORIGINAL);
	snprintf(out, AUDIT_VERIFIER_KEY_MAX, "%s+%s+%s", name, hex, b64);
}

void audit_signer_verifier_key(const struct audit_signer *s,
                               char out[static AUDIT_VERIFIER_KEY_MAX])
{
	format_key(s->name, s->key_hash, s->public_key, out);
}

/*
 * Split "<name>+<hex8>+<base64>" (the part after PRIVATE+KEY+ for signer
 * keys). The base64 may itself contain '+', so only the first two count.
 */
struct key_parts {
	const char *name, *b64;
	size_t name_len, b64_len;
	uint8_t hash[AUDIT_KEY_HASH_LEN];
};

static int split_key(const char *text, size_t len, struct key_parts *k, const char **reason)
{
	const char *end = text + len;
	const char *p1 = find_byte(text, len, '+');
	if (!p1)
		return fail(reason, "key has no '+' after its name", ISG_ERR_PARSE);
	const char *p2 = find_byte(p1 + 1, (size_t)(end - p1 - 1), '+');
	if (!p2)
		return fail(reason, "key has no '+' after its key hash", ISG_ERR_PARSE);
	k->name = text;
	k->name_len = (size_t)(p1 - text);
	k->b64 = p2 + 1;
	k->b64_len = (size_t)(end - p2 - 1);
	if (!name_valid(k->name, k->name_len))
		return fail(reason, "key name is not valid", ISG_ERR_PARSE);
	if (!parse_hex8(p1 + 1, (size_t)(p2 - p1 - 1), k->hash))
		return fail(reason, "key hash is not 8 hex digits", ISG_ERR_PARSE);
	return 0;
}

/* Decode base64(0x01 || 32 bytes) into out, wiping what it decoded on failure. */
static int decode_key_blob(const char *b64, size_t len, uint8_t out[static 32], const char **reason)
{
	uint8_t blob[64];
	size_t n = 0;
	int rc = 0;
	if (base64_decode(b64, len, blob, sizeof(blob), &n) != 0) {
		rc = fail(reason, "key is not valid base64", ISG_ERR_PARSE);
		goto out;
	}
	if (n == 0 || blob[0] != ALG_ED25519) {
		rc = fail(reason, "key algorithm is not Ed25519", ISG_ERR_PARSE);
		goto out;
	}
	if (n != 1 + 32) {
		rc = fail(reason, "key has the wrong length for Ed25519", ISG_ERR_PARSE);
		goto out;
	}
	memcpy(out, blob + 1, 32);
out:
	sodium_memzero(blob, sizeof(blob));
	return rc;
}

int audit_verifier_parse(const char *text, size_t len, struct audit_verifier *out,
                         const char **reason)
{
	if (!text || !out)
		return fail(reason, "no key", ISG_ERR_INVALID);
	memset(out, 0, sizeof(*out));
	if (len > KEY_TEXT_MAX)
		return fail(reason, "key is too long", ISG_ERR_PARSE);
	struct key_parts k;
	int rc = split_key(text, len, &k, reason);
	if (rc)
		return rc;
	uint8_t public_key[AUDIT_PUBKEY_LEN], hash[AUDIT_KEY_HASH_LEN];
	rc = decode_key_blob(k.b64, k.b64_len, public_key, reason);
	if (rc)
		return rc;
	key_hash(k.name, k.name_len, public_key, hash);
	if (memcmp(hash, k.hash, AUDIT_KEY_HASH_LEN) != 0)
		return fail(reason, "key hash does not match the key name and key",
		            ISG_ERR_INVALID);
	memcpy(out->name, k.name, k.name_len);
	memcpy(out->key_hash, hash, AUDIT_KEY_HASH_LEN);
	memcpy(out->public_key, public_key, AUDIT_PUBKEY_LEN);
	return 0;
}

int audit_signer_from_text(const char *text, size_t len, struct audit_signer **out,
                           const char **reason)
{
	if (!out)
		return fail(reason, "no signer", ISG_ERR_INVALID);
	*out = NULL;
	if (!text)
		return fail(reason, "no key", ISG_ERR_INVALID);
	if (len > KEY_TEXT_MAX)
		return fail(reason, "key is too long", ISG_ERR_PARSE);
	size_t plen = strlen(SIGNER_PREFIX);
	if (len < plen || memcmp(text, SIGNER_PREFIX, plen) != 0)
		return fail(reason, "signer key does not start with PRIVATE+KEY+", ISG_ERR_PARSE);

	struct key_parts k;
	int rc = split_key(text + plen, len - plen, &k, reason);
	if (rc)
		return rc;
	char name[AUDIT_NAME_MAX + 1];
	memcpy(name, k.name, k.name_len);
	name[k.name_len] = '\0';

	uint8_t seed[AUDIT_SEED_LEN];
	rc = decode_key_blob(k.b64, k.b64_len, seed, reason);
	if (rc == 0)
		rc = audit_signer_new(name, seed, out);
	sodium_memzero(seed, sizeof(seed));
	if (rc)
		return rc == ISG_ERR_PARSE ? rc : fail(reason, "cannot make the signer", rc);
	if (memcmp((*out)->key_hash, k.hash, AUDIT_KEY_HASH_LEN) != 0) {
		audit_signer_free(*out);
		*out = NULL;
		return fail(reason, "key hash does not match the key name and key",
		            ISG_ERR_INVALID);
	}
	return 0;
}

/* --- notes --------------------------------------------------------------- */

/* What audit_note_sign accepts: non-empty lines, each ending in '\n'. */
static int check_body(const char *body, size_t len, const char **reason)
{
	if (!body || len == 0)
		return fail(reason, "note text is empty", ISG_ERR_INVALID);
	if (len > AUDIT_NOTE_MAX)
		return fail(reason, "note text is too long", ISG_ERR_INVALID);
	if (body[len - 1] != '\n')
		return fail(reason, "note text does not end in a newline", ISG_ERR_INVALID);
	if (body[0] == '\n' || memmem(body, len, "\n\n", 2))
		return fail(reason, "note text has an empty line", ISG_ERR_INVALID);
	int rc = check_note_text(body, len, reason);
	return rc ? ISG_ERR_INVALID : 0;
}

int audit_note_sign(const struct audit_signer *s, const char *body, size_t len, char *out,
                    size_t size, size_t *note_len, const char **reason)
{
	if (!s || !out)
		return fail(reason, "no signer or output", ISG_ERR_INVALID);
	int rc = check_body(body, len, reason);
	if (rc)
		return rc;

	uint8_t blob[SIG_BLOB_LEN];
	char b64[sodium_base64_ENCODED_LEN(SIG_BLOB_LEN, sodium_base64_VARIANT_ORIGINAL)];
	memcpy(blob, s->key_hash, AUDIT_KEY_HASH_LEN);
	if (audit_signer_sign(s, (const uint8_t *)body, len, blob + AUDIT_KEY_HASH_LEN) != 0)
		return fail(reason, "signing failed", ISG_ERR_CRYPTO);
	sodium_bin2base64(b64, sizeof(b64), blob, sizeof(blob), sodium_base64_VARIANT_ORIGINAL);

	size_t name_len = strlen(s->name), b64_len = strlen(b64);
	size_t total = len + 1 + SIG_PREFIX_LEN + name_len + 1 + b64_len + 1;
	if (total > AUDIT_NOTE_MAX)
		return fail(reason, "signed note would be too long", ISG_ERR_TOO_BIG);
	if (total >= size)
		return fail(reason, "output buffer is too small", ISG_ERR_TOO_BIG);
	char *p = out;
	memcpy(p, body, len);
	p += len;
	*p++ = '\n';
	memcpy(p, SIG_PREFIX, SIG_PREFIX_LEN);
	p += SIG_PREFIX_LEN;
	memcpy(p, s->name, name_len);
	p += name_len;
	*p++ = ' ';
	memcpy(p, b64, b64_len);
	p += b64_len;
	*p++ = '\n';
	*p = '\0';
	if (note_len)
		*note_len = total;
	return 0;
}

/* Where the text ends: the last "\n\n" (the blank line) is at body_len - 1. */
static int split_note(const char *note, size_t len, size_t *body_len, const char **reason)
{
	for (size_t i = len; i >= 2; i--) {
		if (note[i - 2] == '\n' && note[i - 1] == '\n') {
			*body_len = i - 1;
			if (*body_len == 1)
				return fail(reason, "note text is empty", ISG_ERR_PARSE);
			if (i == len)
				return fail(reason, "note has no signature lines", ISG_ERR_PARSE);
			if (note[len - 1] != '\n')
				return fail(reason, "note does not end in a newline",
				            ISG_ERR_PARSE);
			return 0;
		}
	}
	return fail(reason, "note has no blank line before its signatures", ISG_ERR_PARSE);
}

/*
 * One signature line (without its newline). *matched is set when it is a
 * signature by v, which must then verify over the text.
 */
static int check_sig_line(const struct audit_verifier *v, const char *line, size_t len,
                          const char *text, size_t text_len, bool *matched, const char **reason)
{
	*matched = false;
	if (len < SIG_PREFIX_LEN || memcmp(line, SIG_PREFIX, SIG_PREFIX_LEN) != 0)
		return fail(reason, "signature line does not start with an em dash and a space",
		            ISG_ERR_PARSE);
	line += SIG_PREFIX_LEN;
	len -= SIG_PREFIX_LEN;
	const char *sp = find_byte(line, len, ' ');
	if (!sp)
		return fail(reason, "signature line has no space after the key name",
		            ISG_ERR_PARSE);
	size_t name_len = (size_t)(sp - line);
	if (!name_valid(line, name_len))
		return fail(reason, "signature line has an invalid key name", ISG_ERR_PARSE);

	uint8_t sig[AUDIT_NOTE_LINE_MAX];
	size_t n = 0;
	if (base64_decode(sp + 1, len - name_len - 1, sig, sizeof(sig), &n) != 0)
		return fail(reason, "signature is not valid base64", ISG_ERR_PARSE);
	if (n < AUDIT_KEY_HASH_LEN + 1)
		return fail(reason, "signature is too short", ISG_ERR_PARSE);
	if (!bytes_are(line, name_len, v->name) ||
	    memcmp(sig, v->key_hash, AUDIT_KEY_HASH_LEN) != 0)
		return 0; /* another key's signature: ignored */
	if (n != SIG_BLOB_LEN)
		return fail(reason, "signature has the wrong length for Ed25519", ISG_ERR_PARSE);
	if (crypto_sign_verify_detached(sig + AUDIT_KEY_HASH_LEN, (const uint8_t *)text, text_len,
	                                v->public_key) != 0)
		return fail(reason, "signature does not verify", ISG_ERR_CRYPTO);
	*matched = true;
	return 0;
}

int audit_note_verify(const struct audit_verifier *v, const char *note, size_t len,
                      size_t *body_len, const char **reason)
{
	if (!v || !note || !body_len)
		return fail(reason, "no note or key", ISG_ERR_INVALID);
	if (len > AUDIT_NOTE_MAX)
		return fail(reason, "note is too long", ISG_ERR_TOO_BIG);
	int rc = check_note_text(note, len, reason);
	if (rc)
		return rc;
	size_t text_len;
	rc = split_note(note, len, &text_len, reason);
	if (rc)
		return rc;
	if (sodium_init() < 0)
		return fail(reason, "libsodium failed to initialise", ISG_ERR_CRYPTO);

	size_t n_sigs = 0, n_matched = 0;
	for (size_t pos = text_len + 1; pos < len;) {
		const char *nl =
		    find_byte(note + pos, len - pos, '\n'); /* found: note ends in \n */
		size_t line_len = (size_t)(nl - (note + pos));
		if (++n_sigs > AUDIT_NOTE_SIGS_MAX)
			return fail(reason, "note has too many signature lines", ISG_ERR_PARSE);
		bool matched;
		rc = check_sig_line(v, note + pos, line_len, note, text_len, &matched, reason);
		if (rc)
			return rc;
		n_matched += matched;
		pos += line_len + 1;
	}
	if (n_matched == 0)
		return fail(reason, "note has no signature by this key", ISG_ERR_NOT_FOUND);
	*body_len = text_len;
	return 0;
}

/* --- checkpoints --------------------------------------------------------- */

int audit_checkpoint_format(const struct audit_checkpoint *c, char *out, size_t size, size_t *len)
{
	if (!c || !out)
		return ISG_ERR_INVALID;
	size_t origin_len = strnlen(c->origin, sizeof(c->origin));
	if (!name_valid(c->origin, origin_len))
		return ISG_ERR_INVALID;
	char b64[HASH_B64_LEN + 1];
	sodium_bin2base64(b64, sizeof(b64), c->root, AUDIT_HASH_LEN,
	                  sodium_base64_VARIANT_ORIGINAL);
	int n = snprintf(out, size, "%s\n%" PRIu64 "\n%s\n", c->origin, c->size, b64);
	if (n < 0 || (size_t)n >= size)
		return ISG_ERR_TOO_BIG;
	if (len)
		*len = (size_t)n;
	return 0;
}

/* A tree size: decimal, no sign, no leading zero but "0" itself, <= UINT64_MAX. */
static bool parse_size(const char *s, size_t len, uint64_t *out)
{
	if (len == 0 || len > 20 || (len > 1 && s[0] == '0'))
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

int audit_checkpoint_parse(const char *body, size_t len, struct audit_checkpoint *out,
                           const char **reason)
{
	if (!body || !out)
		return fail(reason, "no checkpoint", ISG_ERR_INVALID);
	memset(out, 0, sizeof(*out));
	if (len > AUDIT_CHECKPOINT_MAX)
		return fail(reason, "checkpoint is too long", ISG_ERR_PARSE);
	if (len == 0 || body[len - 1] != '\n')
		return fail(reason, "checkpoint does not end in a newline", ISG_ERR_PARSE);

	const char *line[3];
	size_t line_len[3], pos = 0;
	for (unsigned i = 0; i < 3; i++) {
		if (pos == len)
			return fail(reason, "checkpoint has fewer than three lines", ISG_ERR_PARSE);
		const char *nl = find_byte(body + pos, len - pos, '\n');
		line[i] = body + pos;
		line_len[i] = (size_t)(nl - line[i]);
		pos += line_len[i] + 1;
	}
	if (pos != len)
		return fail(reason, "checkpoint has extension lines", ISG_ERR_PARSE);

	if (!name_valid(line[0], line_len[0]))
		return fail(reason, "checkpoint origin is not a valid name", ISG_ERR_PARSE);
	uint64_t size;
	if (!parse_size(line[1], line_len[1], &size))
		return fail(reason, "checkpoint tree size is not a decimal number", ISG_ERR_PARSE);
	uint8_t root[AUDIT_HASH_LEN];
	size_t n = 0;
	if (line_len[2] != HASH_B64_LEN ||
	    base64_decode(line[2], line_len[2], root, sizeof(root), &n) || n != AUDIT_HASH_LEN)
		return fail(reason, "checkpoint root is not base64 of 32 bytes", ISG_ERR_PARSE);

	memcpy(out->origin, line[0], line_len[0]);
	out->size = size;
	memcpy(out->root, root, AUDIT_HASH_LEN);
	return 0;
}

int audit_checkpoint_sign(const struct audit_signer *s, const struct audit_checkpoint *c, char *out,
                          size_t size, size_t *note_len, const char **reason)
{
	char body[AUDIT_CHECKPOINT_MAX + 1];
	size_t len;
	if (audit_checkpoint_format(c, body, sizeof(body), &len) != 0)
		return fail(reason, "checkpoint origin is not a valid name", ISG_ERR_INVALID);
	return audit_note_sign(s, body, len, out, size, note_len, reason);
}

int audit_checkpoint_open(const struct audit_verifier *v, const char *note, size_t len,
                          struct audit_checkpoint *out, const char **reason)
{
	if (out)
		memset(out, 0, sizeof(*out));
	size_t body_len;
	int rc = audit_note_verify(v, note, len, &body_len, reason);
	if (rc)
		return rc;
	return audit_checkpoint_parse(note, body_len, out, reason);
}
