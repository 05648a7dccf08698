/*
 * pseudo: identifiers made safe to share. Validation and normalisation of
 * identifier types, keyed-hash pseudonyms (HMAC-SHA-256 over an unambiguous,
 * versioned encoding of type and normalised value), and generalisers for
 * quasi-identifiers. Pure functions: no I/O, no global state, no logging.
 * Reasons returned on failure are static strings that never contain the value.
 * The exact construction, with test vectors, is in docs/pseudonyms.md.
 */
#ifndef ISG_PSEUDO_H
#define ISG_PSEUDO_H

#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

#define PSEUDO_KEY_LEN 32
#define PSEUDO_HASH_LEN 32
/* Longest normalised value accepted; longer input is refused. */
#define PSEUDO_VALUE_MAX 256
/* Text form of a pseudonym: see pseudo_format. */
#define PSEUDO_TEXT_MAX 64

enum pseudo_type {
	PSEUDO_NHS_NUMBER = 1, /* 10 digits, Modulus 11 check digit */
	PSEUDO_PNC_ID = 2,     /* YYYY/NNNNNNNC */
	PSEUDO_POSTCODE = 3,   /* UK postcode, canonical "SW1A 1AA" */
	PSEUDO_DATE = 4,       /* ISO 8601 YYYY-MM-DD */
	PSEUDO_NAME = 5,       /* person name, case/accents/punctuation folded */
	PSEUDO_EMAIL = 6,
	PSEUDO_IDENTIFIER = 7, /* generic: trimmed, case-folded */
};

const char *pseudo_type_name(enum pseudo_type t);

/*
 * Validate and normalise `in` (len bytes, UTF-8) into out (NUL-terminated,
 * at most PSEUDO_VALUE_MAX+1 bytes). Returns 0, or ISG_ERR_INVALID and sets
 * *reason (e.g. "NHS number check digit does not match").
 */
int pseudo_normalise(enum pseudo_type t, const char *in, size_t len,
                     char out[static PSEUDO_VALUE_MAX + 1], const char **reason)
    __attribute__((warn_unused_result));

/*
 * The keyed hash: HMAC-SHA-256(key, encoding(t, norm)) where the encoding is
 * versioned and length-delimited (docs/pseudonyms.md).
 */
void pseudo_hash(const uint8_t key[static PSEUDO_KEY_LEN], enum pseudo_type t, const char *norm,
                 size_t len, uint8_t out[static PSEUDO_HASH_LEN]);

/*
 * The HMAC state keyed with one key, derived once: pseudo_hash_keyed then
 * copies it per value instead of deriving the key pads again, which halves
 * the SHA-256 work of a short value. The output is bit-identical to
 * pseudo_hash with the same key. The state is as secret as the key: keep it
 * where the key is kept (guarded memory) and wipe it with pseudo_keyed_wipe.
 */
struct pseudo_keyed {
	struct sha256_state inner, outer; /* SHA-256 of key ^ ipad, of key ^ opad */
};
void pseudo_keyed_init(struct pseudo_keyed *k, const uint8_t key[static PSEUDO_KEY_LEN]);
void pseudo_keyed_wipe(struct pseudo_keyed *k);
/* pseudo_hash with a keyed state; k is only read, so threads may share it. */
void pseudo_hash_keyed(const struct pseudo_keyed *k, enum pseudo_type t, const char *norm,
                       size_t len, uint8_t out[static PSEUDO_HASH_LEN]);

/* The pseudonym as text, as delivered: see docs/pseudonyms.md. */
void pseudo_format(const uint8_t hash[static PSEUDO_HASH_LEN], uint32_t key_version,
                   char out[static PSEUDO_TEXT_MAX]);

/* --- generalisers: each returns 0 or ISG_ERR_INVALID with *reason ---------- */

/* Date of birth (normalised YYYY-MM-DD) to its year: "1958". */
int pseudo_gen_year(const char *date, char *out, size_t size, const char **reason);
/*
 * Date of birth to an age band of `width` years at the exchange date
 * (days since 1970-01-01, UTC): "65-69" for width 5. Ages over 120 or
 * before birth are invalid.
 */
int pseudo_gen_age_band(const char *date, int64_t today_days, unsigned width, char *out,
                        size_t size, const char **reason);
/* Date to month: "2026-11". */
int pseudo_gen_month(const char *date, char *out, size_t size, const char **reason);

enum pseudo_postcode_level { POSTCODE_AREA, POSTCODE_DISTRICT, POSTCODE_SECTOR };
/* Canonical postcode to area "NE", district "NE3" or sector "NE3 4" (parsed, never cut). */
int pseudo_gen_postcode(const char *postcode, enum pseudo_postcode_level level, char *out,
                        size_t size, const char **reason);
/* Number to a band of `width`: 37 with width 10 is "30-39"; negative numbers work too. */
int pseudo_gen_number_band(int64_t value, int64_t width, char *out, size_t size,
                           const char **reason);

/* --- the pseudonymisation service ------------------------------------------ */

/*
 * The linkage domain the audit log names subjects in (docs/audit.md). No
 * agreement may name it, so no partner receives its pseudonyms and they link
 * nothing outside the log: the policy loader refuses it, the keys module
 * holds its key. Defined here because both modules use pseudo and neither
 * uses the other.
 */
#define PSEUDO_AUDIT_DOMAIN "audit"

/*
 * How policy_apply gets pseudonyms without holding keys: it collects every
 * value of a message that must be pseudonymised and asks once, in a batch.
 * In isgd the key process answers over a socketpair (keyproc_ring_service,
 * DESIGN.md section 9); the keys module answers in-process
 * (keyring_service) inside the key process, in an isgd configured with
 * key_process: false, and in the tests.
 */
struct pseudo_request {
	const char *domain; /* linkage domain named by the agreement */
	enum pseudo_type type;
	const char *norm; /* normalised value */
	size_t len;
	/* Answer: the pseudonym under the domain's current key, and under the
	 * previous key while that key's overlap period lasts ("" otherwise). */
	char out[PSEUDO_TEXT_MAX];
	char previous[PSEUDO_TEXT_MAX];
};

/* Some of a batch's requests, in an array of their own. */
struct pseudo_batch {
	struct pseudo_request *reqs;
	size_t n;
};

struct pseudo_service {
	void *ctx;
	/* Answer every request; 0, or ISG_ERR_NOT_FOUND when a domain has no key,
	 * or another error (the key process gone, out of memory). */
	int (*pseudonymise)(void *ctx, struct pseudo_request *reqs, size_t n, int64_t today_days);
	/* The same for a batch held in several arrays, answered together (one
	 * round trip to the key process) without copying them into one. Both
	 * of isgd's services (keyring_service, keyproc_ring_service) have it,
	 * and the gateway's sends need it; a test's service may leave it NULL. */
	int (*pseudonymise_parts)(void *ctx, const struct pseudo_batch *parts, size_t n_parts,
	                          int64_t today_days);
	/* Optional: told each identifier and date policy_apply has checked, as
	 * normalised (norm, len bytes), whatever its field's action, record by
	 * record, before pseudonymise is asked. isgd's sends collect the audit
	 * entry's subjects so, without normalising them again. 0 or an ISG_ERR_
	 * code, which policy_apply returns. */
	int (*checked)(void *ctx, enum pseudo_type type, const char *norm, size_t len);
};

#endif
