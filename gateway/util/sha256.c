/*
 * SHA-256 over OpenSSL's low-level interface. OpenSSL 3.0 deprecates it in
 * favour of EVP, but EVP keeps the state in its own heap, allocates on every
 * copy and can fail; this state is a struct of ours (see util.h). Should a
 * later OpenSSL drop the interface, only this file changes. Unlike
 * libsodium's, OpenSSL's block function does not wipe the copy of the
 * input it works on in its stack frame: a caller hashing a secret wipes
 * the stack after (pseudo_keyed_init does).
 */
#define OPENSSL_API_COMPAT 10101

#include <openssl/sha.h>
#include <sodium.h>

#include "util/util.h"

_Static_assert(SHA256_DIGEST_LENGTH == SHA256_LEN, "SHA-256 is 32 bytes");

/* The low-level calls fail only on a NULL argument, which they never get here. */
void sha256_init(struct sha256_state *h)
{
	SHA256_Init(&h->ctx);
}

void sha256_update(struct sha256_state *h, const void *data, size_t len)
{
	if (len > 0)
		SHA256_Update(&h->ctx, data, len);
}

void sha256_final(struct sha256_state *h, uint8_t out[static SHA256_LEN])
{
	SHA256_Final(out, &h->ctx);
	sodium_memzero(h, sizeof(*h));
}

void sha256_digest(const void *data, size_t len, uint8_t out[static SHA256_LEN])
{
	struct sha256_state h;
	sha256_init(&h);
	sha256_update(&h, data, len);
	sha256_final(&h, out);
}
