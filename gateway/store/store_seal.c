/*
 * Sealing message payloads at rest: XChaCha20-Poly1305 (IETF) with a random
 * 24-byte nonce and associated data binding the message to its sender,
 * message id and recipient, so a sealed payload moved to another row does
 * not open. The exact construction is in docs/store.md.
 */
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"
#include "util/util.h"

/* 4-byte length prefixes of the context and three strings of at most STORE_MAX_STRING. */
#define AD_MAX (4 * 4 + sizeof(STORE_SEAL_CONTEXT) - 1 + 3 * STORE_MAX_STRING)

static size_t ad_put(uint8_t *ad, size_t pos, const char *s)
{
	size_t len = strlen(s);
	ad[pos++] = (uint8_t)(len >> 24);
	ad[pos++] = (uint8_t)(len >> 16);
	ad[pos++] = (uint8_t)(len >> 8);
	ad[pos++] = (uint8_t)len;
	memcpy(ad + pos, s, len);
	return pos + len;
}

/* AD = for each of ("isg-msg-v1", sender, message_id, recipient): u32be(len) || bytes */
static int ad_build(uint8_t ad[static AD_MAX], size_t *ad_len, const char *sender,
                    const char *message_id, const char *recipient)
{
	if (strlen(sender) > STORE_MAX_STRING || strlen(message_id) > STORE_MAX_STRING ||
	    strlen(recipient) > STORE_MAX_STRING)
		return ISG_ERR_TOO_BIG;
	size_t pos = 0;
	pos = ad_put(ad, pos, STORE_SEAL_CONTEXT);
	pos = ad_put(ad, pos, sender);
	pos = ad_put(ad, pos, message_id);
	pos = ad_put(ad, pos, recipient);
	*ad_len = pos;
	return 0;
}

int store_seal(const uint8_t *key, const char *sender, const char *message_id,
               const char *recipient, const uint8_t *plain, size_t plain_len,
               uint8_t nonce[STORE_NONCE_LEN], uint8_t **sealed, size_t *sealed_len)
{
	static const uint8_t empty[1];
	uint8_t ad[AD_MAX];
	size_t ad_len = 0;
	*sealed = NULL;
	*sealed_len = 0;
	if (plain_len > STORE_MAX_PAYLOAD)
		return ISG_ERR_TOO_BIG;
	int rc = ad_build(ad, &ad_len, sender, message_id, recipient);
	if (rc)
		return rc;
	uint8_t *c = malloc(plain_len + STORE_TAG_LEN);
	if (!c)
		return ISG_ERR_NOMEM;
	randombytes_buf(nonce, STORE_NONCE_LEN);
	unsigned long long clen = 0;
	crypto_aead_xchacha20poly1305_ietf_encrypt(c, &clen, plain_len ? plain : empty, plain_len,
	                                           ad, ad_len, NULL, nonce, key);
	*sealed = c;
	*sealed_len = (size_t)clen;
	return 0;
}

int store_unseal(const uint8_t *key, const char *sender, const char *message_id,
                 const char *recipient, const uint8_t *nonce, size_t nonce_len,
                 const uint8_t *sealed, size_t sealed_len, uint8_t **plain, size_t *plain_len)
{
	uint8_t ad[AD_MAX];
	size_t ad_len = 0;
	*plain = NULL;
	*plain_len = 0;
	if (!nonce || nonce_len != STORE_NONCE_LEN || !sealed || sealed_len < STORE_TAG_LEN ||
	    sealed_len - STORE_TAG_LEN > STORE_MAX_PAYLOAD)
		return ISG_ERR_CRYPTO;
	int rc = ad_build(ad, &ad_len, sender, message_id, recipient);
	if (rc)
		return ISG_ERR_CRYPTO;
	/* One spare byte so an empty payload still has a non-NULL buffer. */
	uint8_t *m = malloc(sealed_len - STORE_TAG_LEN + 1);
	if (!m)
		return ISG_ERR_NOMEM;
	unsigned long long mlen = 0;
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(m, &mlen, NULL, sealed, sealed_len, ad,
	                                               ad_len, nonce, key) != 0) {
		free(m);
		return ISG_ERR_CRYPTO;
	}
	*plain = m;
	*plain_len = (size_t)mlen;
	return 0;
}
