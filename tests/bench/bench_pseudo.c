/*
 * bench_pseudo: pseudonyms per second on one core, for N valid NHS numbers
 * (normalise + keyed hash + text form) as isgd makes them, the keyed HMAC
 * state derived once (pseudo_hash_keyed, as gateway/keys/domain.c keeps
 * it), next to raw HMAC-SHA-256 over the same 10-byte inputs in the same
 * run (OpenSSL's EVP_MAC, one context re-initialised per value, so its key
 * pads are hashed once too); the ratio is of these two. Then the
 * pseudonyms again through pseudo_hash, which hashes the key pads for
 * every value (the tools' path, not isgd's; checked bit-identical to
 * pseudo_hash_keyed first): scripts/bench takes that line as its measure
 * of the machine's speed, as it always has. For reference, libsodium's
 * HMAC with its keyed state copied per value, which isgd used until
 * 2026-12-02. Each figure is the median of 5 runs.
 * Usage: isg-bench-pseudo [N]   (default 1000000)
 */
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "pseudo/pseudo.h"
#include "util/util.h"

#define RUNS 5

/* Valid NHS numbers from consecutive stems, skipping stems with no check digit. */
static char (*make_numbers(size_t n))[11]
{
	char(*v)[11] = malloc(n * sizeof(*v));
	if (!v)
		return NULL;
	unsigned long stem = 400000000;
	for (size_t i = 0; i < n; stem++) {
		char d[10];
		snprintf(d, sizeof(d), "%09lu", stem);
		unsigned sum = 0;
		for (unsigned k = 0; k < 9; k++)
			sum += (unsigned)(d[k] - '0') * (10 - k);
		unsigned check = (11 - sum % 11) % 11;
		if (check == 10)
			continue;
		snprintf(v[i++], 11, "%s%u", d, check);
	}
	return v;
}

static double run_pseudonyms(const uint8_t *key, char (*v)[11], size_t n, unsigned *sink)
{
	double t0 = bench_now_s();
	for (size_t i = 0; i < n; i++) {
		char norm[PSEUDO_VALUE_MAX + 1], text[PSEUDO_TEXT_MAX];
		const char *reason;
		uint8_t h[PSEUDO_HASH_LEN];
		if (pseudo_normalise(PSEUDO_NHS_NUMBER, v[i], 10, norm, &reason) != 0)
			fatal("bench: generated NHS number refused: %s", reason);
		pseudo_hash(key, PSEUDO_NHS_NUMBER, norm, 10, h);
		pseudo_format(h, 1, text);
		*sink += (unsigned char)text[5];
	}
	return (double)n / (bench_now_s() - t0);
}

/* The same with the keyed HMAC state derived once (as the keyring holds it). */
static double run_pseudonyms_keyed(const struct pseudo_keyed *k, char (*v)[11], size_t n,
                                   unsigned *sink)
{
	double t0 = bench_now_s();
	for (size_t i = 0; i < n; i++) {
		char norm[PSEUDO_VALUE_MAX + 1], text[PSEUDO_TEXT_MAX];
		const char *reason;
		uint8_t h[PSEUDO_HASH_LEN];
		if (pseudo_normalise(PSEUDO_NHS_NUMBER, v[i], 10, norm, &reason) != 0)
			fatal("bench: generated NHS number refused: %s", reason);
		pseudo_hash_keyed(k, PSEUDO_NHS_NUMBER, norm, 10, h);
		pseudo_format(h, 1, text);
		*sink += (unsigned char)text[5];
	}
	return (double)n / (bench_now_s() - t0);
}

/* pseudo_hash_keyed must give pseudo_hash's bytes: checked on every number. */
static void check_keyed(const uint8_t *key, const struct pseudo_keyed *k, char (*v)[11], size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t a[PSEUDO_HASH_LEN], b[PSEUDO_HASH_LEN];
		pseudo_hash(key, PSEUDO_NHS_NUMBER, v[i], 10, a);
		pseudo_hash_keyed(k, PSEUDO_NHS_NUMBER, v[i], 10, b);
		if (memcmp(a, b, sizeof(a)) != 0)
			fatal("bench: pseudo_hash_keyed differs from pseudo_hash at value %zu", i);
	}
}

static double run_raw(const uint8_t *key, char (*v)[11], size_t n, unsigned *sink)
{
	EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
	char digest[] = "SHA256";
	OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
	                       OSSL_PARAM_construct_end()};
	if (!ctx || !EVP_MAC_init(ctx, key, PSEUDO_KEY_LEN, params))
		fatal("bench: cannot set up OpenSSL's HMAC");
	double t0 = bench_now_s();
	for (size_t i = 0; i < n; i++) {
		uint8_t h[SHA256_LEN];
		size_t len;
		/* NULL key: the same key, its pads already hashed. */
		if (!EVP_MAC_init(ctx, NULL, 0, NULL) ||
		    !EVP_MAC_update(ctx, (const unsigned char *)v[i], 10) ||
		    !EVP_MAC_final(ctx, h, &len, sizeof(h)))
			fatal("bench: HMAC failed");
		*sink += h[0];
	}
	double rate = (double)n / (bench_now_s() - t0);
	EVP_MAC_CTX_free(ctx);
	EVP_MAC_free(mac);
	return rate;
}

/* For reference: libsodium's HMAC, its keyed state derived once and copied per value. */
static double run_raw_keyed(const uint8_t *key, char (*v)[11], size_t n, unsigned *sink)
{
	double t0 = bench_now_s();
	crypto_auth_hmacsha256_state keyed, st;
	crypto_auth_hmacsha256_init(&keyed, key, PSEUDO_KEY_LEN);
	for (size_t i = 0; i < n; i++) {
		uint8_t h[crypto_auth_hmacsha256_BYTES];
		st = keyed;
		crypto_auth_hmacsha256_update(&st, (const unsigned char *)v[i], 10);
		crypto_auth_hmacsha256_final(&st, h);
		*sink += h[0];
	}
	sodium_memzero(&keyed, sizeof(keyed));
	sodium_memzero(&st, sizeof(st));
	return (double)n / (bench_now_s() - t0);
}

int main(int argc, char **argv)
{
	size_t n = 1000000;
	if (argc > 1) {
		int64_t v;
		if (str_to_i64(argv[1], 1, 100000000, &v) != 0) {
			fprintf(stderr, "usage: isg-bench-pseudo [N]\n");
			return 2;
		}
		n = (size_t)v;
	}
	if (sodium_init() < 0)
		return 1;
	char(*v)[11] = make_numbers(n);
	if (!v)
		return 1;
	uint8_t key[PSEUDO_KEY_LEN];
	randombytes_buf(key, sizeof(key));

	struct pseudo_keyed k;
	pseudo_keyed_init(&k, key);
	check_keyed(key, &k, v, n < 10000 ? n : 10000);
	double ps[RUNS], psk[RUNS], raw[RUNS], keyed[RUNS];
	unsigned sink = 0;
	for (int r = 0; r < RUNS; r++) { /* interleaved, so drift hits both */
		ps[r] = run_pseudonyms(key, v, n, &sink);
		psk[r] = run_pseudonyms_keyed(&k, v, n, &sink);
		raw[r] = run_raw(key, v, n, &sink);
		keyed[r] = run_raw_keyed(key, v, n, &sink);
	}
	double p = bench_median(psk, RUNS), h = bench_median(raw, RUNS);
	printf("pseudo bench: %zu valid NHS numbers, median of %d runs, one core\n", n, RUNS);
	printf("  pseudonyms as isgd (normalise+keyed hash+format): %12.0f /s\n", p);
	printf("  raw HMAC-SHA-256 (10-byte input):                 %12.0f /s  (OpenSSL EVP_MAC)\n",
	       h);
	printf("  ratio pseudonym/raw:                              %12.2f  (target >= 0.50)\n",
	       p / h);
	printf("  pseudonyms, key pads hashed per value (pseudo_hash): %9.0f /s\n",
	       bench_median(ps, RUNS));
	printf("  for reference, libsodium's HMAC with its keyed state precomputed: %.0f /s\n",
	       bench_median(keyed, RUNS));
	printf("  (checksum %u)\n", sink);
	pseudo_keyed_wipe(&k);
	sodium_memzero(key, sizeof(key));
	free(v);
	return 0;
}
