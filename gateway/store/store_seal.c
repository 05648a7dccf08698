/*
 * Sealing message payloads at rest, by envelope. Each payload is sealed
 * with AES-256-GCM under a random data key of its own, with a random
 * 12-byte nonce and associated data binding it to the fields of its row
 * that a delivery hands out beside it: sender, message id, recipient,
 * agreement id and version, purpose, dataset and reply_to (STORE_AD_V2). A
 * sealed payload moved to another row, or a row with one of those changed,
 * does not open. Rows sealed before schema version 5 are bound to sender,
 * message id and recipient alone (STORE_AD_V1); messages.ad says which.
 * The data key is kept beside it, wrapped (sealed with libsodium's
 * XChaCha20-Poly1305) under the storage key. The storage key's holder makes
 * data keys STORE_KEY_POOL at a time and unwraps a fetch's keys in one
 * call; payloads never travel to it. Rows sealed before (XChaCha20-Poly1305
 * under the data key, or under the storage key itself) still open. The
 * exact construction, and why payloads use OpenSSL's AES-256-GCM, are in
 * docs/store.md.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "store/store_internal.h"
#include "util/util.h"

/* The larger associated data, STORE_AD_V2's: the context and six strings of
 * at most STORE_MAX_STRING, each after its 4-byte length, then the 4-byte
 * agreement version and the 8-byte reply_to. */
#define AD_MAX (7 * 4 + sizeof(STORE_SEAL_CONTEXT_V2) - 1 + 6 * STORE_MAX_STRING + 4 + 8)

_Static_assert(STORE_SEAL_KEY_LEN == STORE_KEY_LEN && STORE_SEAL_NONCE_LEN == STORE_NONCE_LEN &&
                   STORE_SEAL_OVERHEAD == STORE_TAG_LEN,
               "store.h's sealing sizes are libsodium's");

static size_t ad_put_u32(uint8_t *ad, size_t pos, uint32_t v)
{
	ad[pos++] = (uint8_t)(v >> 24);
	ad[pos++] = (uint8_t)(v >> 16);
	ad[pos++] = (uint8_t)(v >> 8);
	ad[pos++] = (uint8_t)v;
	return pos;
}

static size_t ad_put_u64(uint8_t *ad, size_t pos, uint64_t v)
{
	pos = ad_put_u32(ad, pos, (uint32_t)(v >> 32));
	return ad_put_u32(ad, pos, (uint32_t)v);
}

/* lp(s) = u32be(len) || bytes */
static size_t ad_put(uint8_t *ad, size_t pos, const char *s)
{
	size_t len = strlen(s);
	pos = ad_put_u32(ad, pos, (uint32_t)len);
	memcpy(ad + pos, s, len);
	return pos + len;
}

/*
 * The associated data a row's messages.ad names (docs/store.md, "Sealing"):
 *   STORE_AD_V1 = lp("isg-msg-v1") || lp(sender) || lp(message_id) || lp(recipient)
 *   STORE_AD_V2 = lp("isg-msg-v2") || lp(sender) || lp(message_id) || lp(recipient)
 *                 || lp(agreement_id) || u32be(agreement_version) || lp(purpose)
 *                 || lp(dataset) || u64be(reply_to)
 * Any other version is ISG_ERR_INVALID: a row that names one does not open.
 */
static int ad_build(uint8_t ad[static AD_MAX], size_t *ad_len, int64_t version,
                    const struct store_bound *b)
{
	const char *strings[] = {b->sender,       b->message_id, b->recipient,
	                         b->agreement_id, b->purpose,    b->dataset};
	if (version != STORE_AD_V1 && version != STORE_AD_V2)
		return ISG_ERR_INVALID;
	for (size_t i = 0; i < (version == STORE_AD_V1 ? 3 : ARRAY_LEN(strings)); i++)
		if (strlen(strings[i]) > STORE_MAX_STRING)
			return ISG_ERR_TOO_BIG;
	size_t pos = 0;
	pos = ad_put(ad, pos, version == STORE_AD_V1 ? STORE_SEAL_CONTEXT : STORE_SEAL_CONTEXT_V2);
	pos = ad_put(ad, pos, b->sender);
	pos = ad_put(ad, pos, b->message_id);
	pos = ad_put(ad, pos, b->recipient);
	if (version == STORE_AD_V2) {
		pos = ad_put(ad, pos, b->agreement_id);
		pos = ad_put_u32(ad, pos, b->agreement_version);
		pos = ad_put(ad, pos, b->purpose);
		pos = ad_put(ad, pos, b->dataset);
		pos = ad_put_u64(ad, pos, b->reply_to);
	}
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

/* --- AES-256-GCM, for payloads under data keys --------------------------------- */

_Static_assert(STORE_MAX_PAYLOAD <= INT_MAX && AD_MAX <= INT_MAX, "lengths fit OpenSSL's int");

/* A context for cipher under key and nonce, with the associated data fed; NULL on failure. */
static EVP_CIPHER_CTX *gcm_start(const EVP_CIPHER *cipher, int seal,
                                 const uint8_t key[static STORE_KEY_LEN],
                                 const uint8_t nonce[static STORE_GCM_NONCE_LEN], const uint8_t *ad,
                                 size_t ad_len)
{
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	int n = 0;
	if (x && EVP_CipherInit_ex2(x, cipher, key, nonce, seal, NULL) == 1 &&
	    (ad_len == 0 || EVP_CipherUpdate(x, NULL, &n, ad, (int)ad_len) == 1))
		return x;
	EVP_CIPHER_CTX_free(x);
	return NULL;
}

/* Seal len bytes of plain to len + STORE_TAG_LEN bytes of out (text, then tag). */
static int gcm_seal(const EVP_CIPHER *cipher, const uint8_t key[static STORE_KEY_LEN],
                    const uint8_t nonce[static STORE_GCM_NONCE_LEN], const uint8_t *ad,
                    size_t ad_len, const uint8_t *plain, size_t len, uint8_t *out)
{
	EVP_CIPHER_CTX *x = gcm_start(cipher, 1, key, nonce, ad, ad_len);
	int n = 0, fin = 0;
	bool ok = x && (len == 0 || EVP_CipherUpdate(x, out, &n, plain, (int)len) == 1) &&
	          EVP_CipherFinal_ex(x, out + len, &fin) == 1 && /* GCM writes nothing here */
	          EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, STORE_TAG_LEN, out + len) == 1;
	EVP_CIPHER_CTX_free(x);        /* wipes the key schedule */
	return ok ? 0 : ISG_ERR_NOMEM; /* OpenSSL has nothing else to fail on here */
}

/*
 * Open len + STORE_TAG_LEN bytes of sealed to len bytes of out. One that is
 * not authentic is ISG_ERR_CRYPTO, with what was written to out wiped.
 */
static int gcm_open(const EVP_CIPHER *cipher, const uint8_t key[static STORE_KEY_LEN],
                    const uint8_t nonce[static STORE_GCM_NONCE_LEN], const uint8_t *ad,
                    size_t ad_len, const uint8_t *sealed, size_t len, uint8_t *out)
{
	EVP_CIPHER_CTX *x = gcm_start(cipher, 0, key, nonce, ad, ad_len);
	if (!x)
		return ISG_ERR_NOMEM;
	uint8_t tag[STORE_TAG_LEN];
	memcpy(tag, sealed + len, sizeof(tag));
	int n = 0, fin = 0, rc = ISG_ERR_NOMEM;
	if ((len == 0 || EVP_CipherUpdate(x, out, &n, sealed, (int)len) == 1) &&
	    EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, sizeof(tag), tag) == 1)
		rc = EVP_CipherFinal_ex(x, out + len, &fin) == 1 ? 0 : ISG_ERR_CRYPTO;
	EVP_CIPHER_CTX_free(x);
	if (rc)
		sodium_memzero(out, len);
	return rc;
}

/* --- XChaCha20-Poly1305: data keys, and payloads of older rows -------------------- */

/* wrapped = nonce || XChaCha20-Poly1305(storage key, nonce, "isg-key-v1", data key) */
void store_key_wrap(const uint8_t storage_key[static STORE_SEAL_KEY_LEN],
                    const uint8_t data_key[static STORE_SEAL_KEY_LEN],
                    uint8_t wrapped[static STORE_WRAPPED_KEY_LEN])
{
	static const uint8_t ctx[] = STORE_KEY_CONTEXT;
	store_aead_seal(storage_key, ctx, sizeof(ctx) - 1, data_key, STORE_KEY_LEN, wrapped,
	                wrapped + STORE_NONCE_LEN);
}

int store_key_unwrap(const uint8_t storage_key[static STORE_SEAL_KEY_LEN],
                     const uint8_t wrapped[static STORE_WRAPPED_KEY_LEN],
                     uint8_t data_key[static STORE_SEAL_KEY_LEN])
{
	static const uint8_t ctx[] = STORE_KEY_CONTEXT;
	int rc =
	    store_aead_open(storage_key, ctx, sizeof(ctx) - 1, wrapped, wrapped + STORE_NONCE_LEN,
	                    STORE_KEY_LEN + STORE_TAG_LEN, data_key);
	if (rc)
		sodium_memzero(data_key, STORE_KEY_LEN);
	return rc;
}

/* --- the store as the storage key's holder (isgctl, tests) ---------------------- */

static int own_new_keys(void *ctx, size_t n, uint8_t *keys, uint8_t *wrapped)
{
	for (size_t i = 0; i < n; i++) {
		crypto_aead_xchacha20poly1305_ietf_keygen(keys + i * STORE_KEY_LEN);
		store_key_wrap(ctx, keys + i * STORE_KEY_LEN, wrapped + i * STORE_WRAPPED_KEY_LEN);
	}
	return 0;
}

static int own_unwrap(void *ctx, size_t n, const uint8_t *wrapped, uint8_t *keys, uint8_t *ok)
{
	for (size_t i = 0; i < n; i++)
		ok[i] = store_key_unwrap(ctx, wrapped + i * STORE_WRAPPED_KEY_LEN,
		                         keys + i * STORE_KEY_LEN) == 0;
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
	return (struct store_sealer){
	    .ctx = key, .new_keys = own_new_keys, .unwrap = own_unwrap, .open = own_open};
}

/* --- data keys ------------------------------------------------------------------ */

int store_keys_init(struct store *s)
{
	s->gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	if (!s->gcm)
		return ISG_ERR_CRYPTO;
	s->pool_keys = sodium_malloc(STORE_KEY_POOL * STORE_KEY_LEN);
	s->kept_keys = sodium_malloc(STORE_KEYS_KEPT * STORE_KEY_LEN);
	s->kept = calloc(STORE_KEYS_KEPT, sizeof(*s->kept));
	bool pool_mu = false;
	if (!s->pool_keys || !s->kept_keys || !s->kept ||
	    !(pool_mu = pthread_mutex_init(&s->pool_mu, NULL) == 0) ||
	    pthread_mutex_init(&s->kept_mu, NULL) != 0) {
		if (pool_mu)
			pthread_mutex_destroy(&s->pool_mu);
		sodium_free(s->pool_keys);
		sodium_free(s->kept_keys);
		free(s->kept);
		s->pool_keys = s->kept_keys = NULL;
		s->kept = NULL;
		EVP_CIPHER_free(s->gcm);
		s->gcm = NULL;
		return ISG_ERR_NOMEM;
	}
	s->pool_n = 0;
	return 0;
}

void store_keys_release(struct store *s)
{
	if (!s->pool_keys)
		return;
	sodium_free(s->pool_keys); /* wipes them */
	sodium_free(s->kept_keys);
	free(s->kept);
	s->pool_keys = s->kept_keys = NULL;
	s->kept = NULL;
	pthread_mutex_destroy(&s->pool_mu);
	pthread_mutex_destroy(&s->kept_mu);
	EVP_CIPHER_free(s->gcm);
	s->gcm = NULL;
}

/* The slot of a wrapped key among the kept ones: by its random nonce. */
static size_t kept_slot(const uint8_t wrapped[static STORE_WRAPPED_KEY_LEN])
{
	uint64_t h;
	memcpy(&h, wrapped, sizeof(h));
	return (size_t)(h % STORE_KEYS_KEPT);
}

/* Keep a data key for its first fetch, in place of the one in its slot. */
static void keep_key(struct store *s, const uint8_t key[static STORE_KEY_LEN],
                     const uint8_t wrapped[static STORE_WRAPPED_KEY_LEN])
{
	size_t i = kept_slot(wrapped);
	pthread_mutex_lock(&s->kept_mu);
	memcpy(s->kept_keys + i * STORE_KEY_LEN, key, STORE_KEY_LEN);
	memcpy(s->kept[i].wrapped, wrapped, STORE_WRAPPED_KEY_LEN);
	s->kept[i].set = true;
	pthread_mutex_unlock(&s->kept_mu);
}

/* The kept key of wrapped into key (NULL: nowhere), wiped from its slot;
 * false when it is not kept. kept_mu held. */
static bool take_kept(struct store *s, const uint8_t wrapped[static STORE_WRAPPED_KEY_LEN],
                      uint8_t *key)
{
	size_t i = kept_slot(wrapped);
	if (!s->kept[i].set ||
	    sodium_memcmp(s->kept[i].wrapped, wrapped, STORE_WRAPPED_KEY_LEN) != 0)
		return false;
	uint8_t *kept = s->kept_keys + i * STORE_KEY_LEN;
	if (key)
		memcpy(key, kept, STORE_KEY_LEN);
	sodium_memzero(kept, STORE_KEY_LEN);
	s->kept[i].set = false;
	return true;
}

void store_seal_forget(struct store *s, const uint8_t header[static STORE_WRAPPED_KEY_LEN])
{
	pthread_mutex_lock(&s->kept_mu);
	take_kept(s, header, NULL);
	pthread_mutex_unlock(&s->kept_mu);
}

/* One unused data key and its wrapping, asking the holder for more when none are left. */
static int take_key(struct store *s, uint8_t key[static STORE_KEY_LEN],
                    uint8_t wrapped[static STORE_WRAPPED_KEY_LEN])
{
	pthread_mutex_lock(&s->pool_mu);
	int rc = 0;
	if (s->pool_n == 0) {
		rc = s->sealer.new_keys(s->sealer.ctx, STORE_KEY_POOL, s->pool_keys,
		                        &s->pool_wrapped[0][0]);
		s->pool_n = rc ? 0 : STORE_KEY_POOL;
	}
	if (rc == 0) {
		size_t i = --s->pool_n;
		memcpy(key, s->pool_keys + i * STORE_KEY_LEN, STORE_KEY_LEN);
		memcpy(wrapped, s->pool_wrapped[i], STORE_WRAPPED_KEY_LEN);
		sodium_memzero(s->pool_keys + i * STORE_KEY_LEN, STORE_KEY_LEN); /* used once */
	}
	pthread_mutex_unlock(&s->pool_mu);
	if (rc == 0)
		keep_key(s, key, wrapped);
	return rc;
}

int store_seal(struct store *s, const struct store_bound *b, const uint8_t *plain, size_t plain_len,
               uint8_t header[STORE_HEADER_LEN], uint8_t **sealed, size_t *sealed_len)
{
	uint8_t ad[AD_MAX], key[STORE_KEY_LEN];
	size_t ad_len = 0;
	*sealed = NULL;
	*sealed_len = 0;
	if (plain_len > STORE_MAX_PAYLOAD)
		return ISG_ERR_TOO_BIG;
	int rc = ad_build(ad, &ad_len, STORE_AD_V2, b);
	if (rc)
		return rc;
	uint8_t *c = malloc(plain_len + STORE_TAG_LEN);
	if (!c)
		return ISG_ERR_NOMEM;
	rc = take_key(s, key, header);
	if (rc == 0) {
		randombytes_buf(header + STORE_WRAPPED_KEY_LEN, STORE_GCM_NONCE_LEN);
		rc = gcm_seal(s->gcm, key, header + STORE_WRAPPED_KEY_LEN, ad, ad_len, plain,
		              plain_len, c);
		if (rc) /* kept for a first fetch that will never come */
			store_seal_forget(s, header);
	}
	sodium_memzero(key, sizeof(key));
	if (rc) {
		free(c);
		return rc;
	}
	*sealed = c;
	*sealed_len = plain_len + STORE_TAG_LEN;
	return 0;
}

/* --- opening -------------------------------------------------------------------- */

/* A row sealed by envelope, under a data key of its own (schema versions 2 and 3). */
static bool has_data_key(const struct store_sealed *it)
{
	return it->header_len == STORE_HEADER_LEN || it->header_len == STORE_HEADER_V2_LEN;
}

/*
 * Open one payload with its data key (NULL for a row sealed before
 * envelopes, opened through the holder), under the associated data its row
 * names. One that does not open keeps plain NULL; an error is not the
 * payload's. STORE_AD_V2 came with AES-256-GCM's header, so a row naming it
 * with any other is not tried: the holder's OPEN would refuse it as not a
 * payload's, failing the whole fetch.
 */
static int open_one(struct store *s, struct store_sealed *it, const uint8_t *data_key)
{
	uint8_t ad[AD_MAX];
	size_t ad_len = 0;
	if (it->sealed_len < STORE_TAG_LEN || it->sealed_len - STORE_TAG_LEN > STORE_MAX_PAYLOAD ||
	    (it->ad == STORE_AD_V2 && it->header_len != STORE_HEADER_LEN) ||
	    ad_build(ad, &ad_len, it->ad, &it->bound) != 0)
		return 0;
	size_t len = it->sealed_len - STORE_TAG_LEN;
	/* One spare byte so an empty payload still has a non-NULL buffer. */
	uint8_t *m = malloc(len + 1);
	if (!m)
		return ISG_ERR_NOMEM;
	const uint8_t *nonce = it->header + STORE_WRAPPED_KEY_LEN;
	int rc;
	if (it->header_len == STORE_HEADER_LEN)
		rc = gcm_open(s->gcm, data_key, nonce, ad, ad_len, it->sealed, len, m);
	else if (it->header_len == STORE_HEADER_V2_LEN)
		rc = store_aead_open(data_key, ad, ad_len, nonce, it->sealed, it->sealed_len, m);
	else
		rc = s->sealer.open(s->sealer.ctx, ad, ad_len, it->header, it->sealed,
		                    it->sealed_len, m);
	if (rc) {
		free(m);
		return rc == ISG_ERR_CRYPTO ? 0 : rc;
	}
	it->plain = m;
	it->plain_len = len;
	return 0;
}

int store_unseal_all(struct store *s, struct store_sealed *items, size_t n)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		k += has_data_key(&items[i]);
	/* Room for k keys, then for those the holder unwraps, which come after. */
	uint8_t *wrapped = malloc(k ? k * STORE_WRAPPED_KEY_LEN : 1);
	uint8_t *ok = malloc(k ? 2 * k : 1);
	uint8_t *keys = malloc(k ? 2 * k * STORE_KEY_LEN : 1);
	int rc = wrapped && ok && keys ? 0 : ISG_ERR_NOMEM;
	/* Keys kept since sealing need no round trip; the rest go in one. */
	size_t asked = 0;
	pthread_mutex_lock(&s->kept_mu);
	for (size_t i = 0, j = 0; rc == 0 && i < n; i++) {
		if (!has_data_key(&items[i]))
			continue;
		ok[j] = take_kept(s, items[i].header, keys + j * STORE_KEY_LEN);
		if (!ok[j])
			memcpy(wrapped + asked++ * STORE_WRAPPED_KEY_LEN, items[i].header,
			       STORE_WRAPPED_KEY_LEN);
		j++;
	}
	pthread_mutex_unlock(&s->kept_mu);
	if (rc == 0 && asked > 0)
		rc = s->sealer.unwrap(s->sealer.ctx, asked, wrapped, keys + k * STORE_KEY_LEN,
		                      ok + k);
	for (size_t j = 0, a = 0; rc == 0 && j < k; j++)
		if (!ok[j]) {
			memcpy(keys + j * STORE_KEY_LEN, keys + (k + a) * STORE_KEY_LEN,
			       STORE_KEY_LEN);
			ok[j] = ok[k + a++];
		}
	for (size_t i = 0, j = 0; rc == 0 && i < n; i++) {
		struct store_sealed *it = &items[i];
		if (has_data_key(it)) {
			if (ok[j])
				rc = open_one(s, it, keys + j * STORE_KEY_LEN);
			j++;
		} else if (it->header_len == STORE_HEADER_V1_LEN) {
			rc = open_one(s, it, NULL);
		}
		/* Opened or not, the sealed copy goes now: a fetch near its byte
		 * limit holds the plaintexts, not both. */
		free(it->sealed);
		it->sealed = NULL;
	}
	if (keys)
		sodium_memzero(keys, 2 * k * STORE_KEY_LEN);
	free(wrapped);
	free(ok);
	free(keys);
	return rc;
}
