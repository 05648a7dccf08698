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

_Static_assert(STORE_SEAL_KEY_LEN == STORE_KEY_LEN && STORE_SEAL_NONCE_LEN == STORE_NONCE_LEN &&
                   STORE_SEAL_OVERHEAD == STORE_TAG_LEN,
               "store.h's sealing sizes are libsodium's");

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

void store_aead_seal(const uint8_t key[static STORE_SEAL_KEY_LEN], const uint8_t *ad, size_t ad_len,
                     const uint8_t *plain, size_t plain_len,
                     uint8_t nonce[static STORE_SEAL_NONCE_LEN], uint8_t *out)
{
	static const uint8_t empty[1];
	randombytes_buf(nonce, STORE_NONCE_LEN);
	crypto_aead_xchacha20poly1305_ietf_encrypt(out, NULL, plain_len ? plain : empty, plain_len,
	                                           ad, ad_len, NULL, nonce, key);
}

int store_aead_open(const uint8_t key[static STORE_SEAL_KEY_LEN], const uint8_t *ad, size_t ad_len,
                    const uint8_t nonce[static STORE_SEAL_NONCE_LEN], const uint8_t *sealed,
                    size_t sealed_len, uint8_t *out)
{
	if (sealed_len < STORE_TAG_LEN ||
	    crypto_aead_xchacha20poly1305_ietf_decrypt(out, NULL, NULL, sealed, sealed_len, ad,
	                                               ad_len, nonce, key) != 0)
		return ISG_ERR_CRYPTO;
	return 0;
}

static int own_seal(void *ctx, const uint8_t *ad, size_t ad_len, const uint8_t *plain,
                    size_t plain_len, uint8_t nonce[static STORE_SEAL_NONCE_LEN], uint8_t *out)
{
	store_aead_seal(ctx, ad, ad_len, plain, plain_len, nonce, out);
	return 0;
}

static int own_open(void *ctx, const uint8_t *ad, size_t ad_len,
                    const uint8_t nonce[static STORE_SEAL_NONCE_LEN], const uint8_t *sealed,
                    size_t sealed_len, uint8_t *out)
{
	return store_aead_open(ctx, ad, ad_len, nonce, sealed, sealed_len, out);
}

struct store_sealer store_sealer_own(uint8_t *key)
{
	return (struct store_sealer){.ctx = key, .seal = own_seal, .open = own_open};
}

int store_seal(const struct store_sealer *sealer, const char *sender, const char *message_id,
               const char *recipient, const uint8_t *plain, size_t plain_len,
               uint8_t nonce[STORE_NONCE_LEN], uint8_t **sealed, size_t *sealed_len)
{
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
	rc = sealer->seal(sealer->ctx, ad, ad_len, plain, plain_len, nonce, c);
	if (rc) {
		free(c);
		return rc;
	}
	*sealed = c;
	*sealed_len = plain_len + STORE_TAG_LEN;
	return 0;
}

int store_unseal(const struct store_sealer *sealer, const char *sender, const char *message_id,
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
	rc = sealer->open(sealer->ctx, ad, ad_len, nonce, sealed, sealed_len, m);
	if (rc) {
		free(m);
		return rc;
	}
	*plain = m;
	*plain_len = sealed_len - STORE_TAG_LEN;
	return 0;
}
