/*
 * Helpers shared by the store's unit tests: a temporary directory per test,
 * synchronous wrappers around the store's callbacks, and direct read-only
 * queries of the database file.
 */
#ifndef ISG_STORE_TEST_UTIL_H
#define ISG_STORE_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <sodium.h>
#include <sqlite3.h>

#include "store/store.h"
#include "store/store_test.h"
#include "util/util.h"

struct fx {
	char dir[64];
	char path[128];
	uint8_t key[32];
	struct store *s;
};

static inline void fx_path(const struct fx *f, char *out, size_t size, const char *suffix)
{
	snprintf(out, size, "%s%s", f->path, suffix);
}

static inline int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	str_copy(f->dir, "/tmp/isg-store-XXXXXX", sizeof(f->dir));
	if (!mkdtemp(f->dir)) {
		free(f);
		return -1;
	}
	snprintf(f->path, sizeof(f->path), "%s/store.db", f->dir);
	for (size_t i = 0; i < sizeof(f->key); i++)
		f->key[i] = (uint8_t)(0xa0 + i);
	*state = f;
	return 0;
}

static inline void fx_remove_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		char sub[512];
		snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
		unlink(sub);
	}
	if (d)
		closedir(d);
	rmdir(dir);
}

static inline int fx_teardown(void **state)
{
	struct fx *f = *state;
	store_close(f->s);
	fx_remove_dir(f->dir);
	free(f);
	return 0;
}

static inline struct store *fx_open_with(struct fx *f, int64_t sweep_ms, uint32_t max_batch)
{
	char err[512] = "";
	struct store_options opt = {
	    .path = f->path,
	    .storage_key = f->key,
	    .sweep_interval_ms = sweep_ms,
	    .max_batch = max_batch,
	};
	int rc = store_open(&opt, &f->s, err, sizeof(err));
	if (rc)
		fail_msg("store_open: %d %s", rc, err);
	return f->s;
}

static inline struct store *fx_open(struct fx *f)
{
	return fx_open_with(f, 0, 0);
}

static inline void fx_close(struct fx *f)
{
	store_close(f->s);
	f->s = NULL;
}

static inline void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

/* --- a message ------------------------------------------------------------- */

static inline struct store_message fx_msg(const char *sender, const char *message_id,
                                          const char *recipient, const char *payload)
{
	struct store_message m = {
	    .sender = sender,
	    .message_id = message_id,
	    .recipient = recipient,
	    .agreement_id = "police-to-nhs-safeguarding",
	    .agreement_version = 3,
	    .purpose = "safeguarding",
	    .dataset = "referral",
	    .record_count = 2,
	    .payload = (const uint8_t *)payload,
	    .payload_len = strlen(payload),
	    .ttl_ms = 3600 * 1000,
	    .audit_entry = "{\"event\":\"message.accepted\"}",
	    .audit_len = strlen("{\"event\":\"message.accepted\"}"),
	};
	crypto_hash_sha256(m.request_hash, m.payload, m.payload_len);
	return m;
}

/* --- waiting for callbacks --------------------------------------------------- */

struct wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;
	int err;
	struct store_receipt receipt;
	struct store_fetch_result *res;
	uint32_t acked;
	uint64_t unknown[64];
	size_t n_unknown;
	uint64_t seq;
	bool bad; /* the callback broke its contract; checked on the test's thread */
};

static inline void wait_init(struct wait *w)
{
	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
}

static inline void wait_done(struct wait *w, int err)
{
	pthread_mutex_lock(&w->mu);
	w->err = err;
	w->done++;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static inline int wait_for(struct wait *w)
{
	pthread_mutex_lock(&w->mu);
	while (!w->done)
		pthread_cond_wait(&w->cv, &w->mu);
	int err = w->err;
	pthread_mutex_unlock(&w->mu);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	return err;
}

static inline void on_send(void *ctx, int err, const struct store_receipt *r)
{
	struct wait *w = ctx;
	/* A refusal the store found comes with one when it is on record. */
	bool must = err == 0;
	bool may =
	    must || err == ISG_ERR_LIMIT || err == ISG_ERR_CONFLICT || err == ISG_ERR_NOT_FOUND;
	if (r && may)
		w->receipt = *r;
	else if (must || r)
		w->bad = true;
	wait_done(w, err);
}

/* The answer to a job submitted with rc (0: it calls back); its receipt into r (may be NULL). */
static inline int wait_receipt(struct wait *w, int rc, struct store_receipt *r)
{
	if (rc) {
		pthread_cond_destroy(&w->cv);
		pthread_mutex_destroy(&w->mu);
		return rc;
	}
	rc = wait_for(w);
	assert_false(w->bad);
	if (r)
		*r = w->receipt;
	return rc;
}

static inline int send_sync(struct store *s, const struct store_message *m, struct store_receipt *r)
{
	struct wait w;
	if (r)
		memset(r, 0, sizeof(*r));
	wait_init(&w);
	return wait_receipt(&w, store_send(s, m, on_send, &w), r);
}

static inline void on_refuse(void *ctx, int err, const struct store_receipt *r)
{
	struct wait *w = ctx;
	if (r && err == 0)
		w->receipt = *r;
	else if (r || err == 0)
		w->bad = true; /* a receipt exactly when err is 0 */
	wait_done(w, err);
}

static inline int refuse_sync(struct store *s, const struct store_refusal *f,
                              struct store_receipt *r)
{
	struct wait w;
	memset(r, 0, sizeof(*r));
	wait_init(&w);
	return wait_receipt(&w, store_refuse_send(s, f, on_refuse, &w), r);
}

static inline void on_fetch(void *ctx, int err, struct store_fetch_result *res)
{
	struct wait *w = ctx;
	w->bad = res == NULL; /* res comes also on error */
	w->res = res;
	wait_done(w, err);
}

static inline int fetch_sync(struct store *s, const char *recipient, uint64_t after, uint32_t max,
                             struct store_fetch_result **res)
{
	struct wait w;
	*res = NULL;
	wait_init(&w);
	int rc = store_fetch(s, recipient, after, max, on_fetch, &w);
	if (rc) {
		pthread_cond_destroy(&w.cv);
		pthread_mutex_destroy(&w.mu);
		return rc;
	}
	rc = wait_for(&w);
	assert_false(w.bad);
	*res = w.res;
	return rc;
}

/* Number of messages a fetch returns now (and frees them). */
static inline size_t fetch_count(struct store *s, const char *recipient)
{
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, recipient, 0, 1000, &res), 0);
	size_t n = res->n;
	store_fetch_result_free(res);
	return n;
}

static inline void on_ack(void *ctx, int err, uint32_t acked, const uint64_t *unknown,
                          size_t n_unknown)
{
	struct wait *w = ctx;
	w->acked = acked;
	w->bad = n_unknown > ARRAY_LEN(w->unknown) || (err && (acked || n_unknown));
	if (n_unknown > ARRAY_LEN(w->unknown))
		n_unknown = ARRAY_LEN(w->unknown);
	if (n_unknown)
		memcpy(w->unknown, unknown, n_unknown * sizeof(*unknown));
	w->n_unknown = n_unknown;
	wait_done(w, err);
}

static inline int ack_sync(struct store *s, const char *recipient, const uint64_t *ids, size_t n,
                           uint32_t *acked, uint64_t *unknown, size_t *n_unknown)
{
	struct wait w;
	*acked = 0;
	*n_unknown = 0;
	wait_init(&w);
	int rc = store_ack(s, recipient, ids, n, on_ack, &w);
	if (rc) {
		pthread_cond_destroy(&w.cv);
		pthread_mutex_destroy(&w.mu);
		return rc;
	}
	rc = wait_for(&w);
	assert_false(w.bad);
	*acked = w.acked;
	if (unknown)
		memcpy(unknown, w.unknown, w.n_unknown * sizeof(*unknown));
	*n_unknown = w.n_unknown;
	return rc;
}

/*
 * A message whose payload is kept apart (a page: sealed, 16 bytes more)
 * is stored, and its acknowledgement fails: setting secure_delete=ON back
 * after the payload's delete fails the next fail_on times, and with
 * fail_rollback the failed batch's ROLLBACK fails too.
 */
static inline void fx_fail_ack_of_kept_apart(struct store *s, int fail_on, bool fail_rollback)
{
	static uint8_t page[4096];
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "");
	m.payload = page;
	m.payload_len = sizeof(page);
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	store_test_fail_secure_delete_on(s, fail_on);
	if (fail_rollback)
		store_test_fail_next_rollback(s);
	uint32_t acked = 0;
	size_t n_unknown = 0;
	assert_int_equal(ack_sync(s, "nhs-b", &r.gateway_id, 1, &acked, NULL, &n_unknown),
	                 ISG_ERR_STORE);
}

static inline void on_audit(void *ctx, int err, uint64_t seq)
{
	struct wait *w = ctx;
	w->seq = seq;
	wait_done(w, err);
}

static inline int audit_sync(struct store *s, const char *kind, const char *entry, uint64_t *seq)
{
	struct wait w;
	*seq = 0;
	wait_init(&w);
	int rc = store_audit(s, kind, entry, strlen(entry), on_audit, &w);
	if (rc) {
		pthread_cond_destroy(&w.cv);
		pthread_mutex_destroy(&w.mu);
		return rc;
	}
	rc = wait_for(&w);
	*seq = w.seq;
	return rc;
}

/* --- looking at the file directly ---------------------------------------------- */

static inline sqlite3 *db_ro(const struct fx *f)
{
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	return db;
}

/* One integer from a query with an optional integer parameter ?1; -1 when no row. */
static inline int64_t db_int(const struct fx *f, const char *sql, int64_t param)
{
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("prepare %s: %s", sql, sqlite3_errmsg(db));
	if (sqlite3_bind_parameter_count(st) > 0)
		sqlite3_bind_int64(st, 1, param);
	int64_t v = -1;
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		v = sqlite3_column_type(st, 0) == SQLITE_NULL ? -2 : sqlite3_column_int64(st, 0);
	else if (rc != SQLITE_DONE)
		fail_msg("step %s: %s", sql, sqlite3_errmsg(db));
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

/* The audit kinds in seq order, comma separated; checks seq runs 1..n without gaps. */
static inline void db_audit_kinds(const struct fx *f, char *out, size_t size)
{
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	assert_int_equal(
	    sqlite3_prepare_v2(db, "SELECT seq, kind FROM audit ORDER BY seq", -1, &st, NULL),
	    SQLITE_OK);
	size_t used = 0;
	int64_t expect = 1;
	out[0] = '\0';
	while (sqlite3_step(st) == SQLITE_ROW) {
		assert_int_equal(sqlite3_column_int64(st, 0), expect);
		expect++;
		int n = snprintf(out + used, size - used, "%s%s", used ? "," : "",
		                 (const char *)sqlite3_column_text(st, 1));
		assert_true(n > 0 && (size_t)n < size - used);
		used += (size_t)n;
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
}

/* Read a whole file into a malloc'd buffer; NULL and *len 0 when absent. */
static inline uint8_t *file_slurp(const char *path, size_t *len)
{
	*len = 0;
	FILE *fp = fopen(path, "rb");
	if (!fp)
		return NULL;
	fseek(fp, 0, SEEK_END);
	long size = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	uint8_t *buf = malloc((size_t)size + 1);
	assert_non_null(buf);
	*len = fread(buf, 1, (size_t)size, fp);
	fclose(fp);
	return buf;
}

/* Copy src to dst, keeping its first `keep` bytes (all of them with -1). */
static inline void file_copy(const char *src, const char *dst, long keep)
{
	size_t len = 0;
	uint8_t *buf = file_slurp(src, &len);
	assert_non_null(buf);
	if (keep >= 0 && (size_t)keep < len)
		len = (size_t)keep;
	FILE *out = fopen(dst, "wb");
	assert_non_null(out);
	assert_int_equal(fwrite(buf, 1, len, out), len);
	assert_int_equal(fclose(out), 0);
	free(buf);
}

/* lp(s) of docs/store.md: a 4-byte big-endian length, then the bytes. */
static inline size_t store_lp(uint8_t *out, const char *s)
{
	size_t n = strlen(s);
	out[0] = (uint8_t)(n >> 24);
	out[1] = (uint8_t)(n >> 16);
	out[2] = (uint8_t)(n >> 8);
	out[3] = (uint8_t)n;
	memcpy(out + 4, s, n);
	return 4 + n;
}

static inline size_t store_put_u32(uint8_t *out, uint32_t v)
{
	out[0] = (uint8_t)(v >> 24);
	out[1] = (uint8_t)(v >> 16);
	out[2] = (uint8_t)(v >> 8);
	out[3] = (uint8_t)v;
	return 4;
}

/* The associated data of docs/store.md for a row with ad = 2 (sealed since
 * schema version 5) holding message m, built here from its description. */
static inline size_t store_doc_ad(uint8_t ad[static 512], const struct store_message *m)
{
	assert_true(strlen(m->sender) + strlen(m->message_id) + strlen(m->recipient) +
	                strlen(m->agreement_id) + strlen(m->purpose) + strlen(m->dataset) + 10 +
	                7 * 4 + 4 + 8 <=
	            512);
	size_t ad_len = store_lp(ad, "isg-msg-v2");
	ad_len += store_lp(ad + ad_len, m->sender);
	ad_len += store_lp(ad + ad_len, m->message_id);
	ad_len += store_lp(ad + ad_len, m->recipient);
	ad_len += store_lp(ad + ad_len, m->agreement_id);
	ad_len += store_put_u32(ad + ad_len, m->agreement_version);
	ad_len += store_lp(ad + ad_len, m->purpose);
	ad_len += store_lp(ad + ad_len, m->dataset);
	ad_len += store_put_u32(ad + ad_len, (uint32_t)(m->reply_to >> 32));
	ad_len += store_put_u32(ad + ad_len, (uint32_t)m->reply_to);
	return ad_len;
}

/* The associated data of docs/store.md for a row with ad = 1 (sealed before
 * schema version 5), built here from its description. */
static inline size_t store_doc_ad_v1(uint8_t ad[static 256], const char *sender,
                                     const char *message_id, const char *recipient)
{
	assert_true(strlen(sender) + strlen(message_id) + strlen(recipient) + 10 + 16 <= 256);
	size_t ad_len = store_lp(ad, "isg-msg-v1");
	ad_len += store_lp(ad + ad_len, sender);
	ad_len += store_lp(ad + ad_len, message_id);
	ad_len += store_lp(ad + ad_len, recipient);
	return ad_len;
}

/* AES-256-GCM as docs/store.md describes it, with OpenSSL: len bytes of
 * plain to len + 16 bytes of out, the text then the tag. */
static inline void store_doc_gcm_seal(const uint8_t key[static 32], const uint8_t nonce[static 12],
                                      const uint8_t *ad, size_t ad_len, const uint8_t *plain,
                                      size_t len, uint8_t *out)
{
	int n = 0, fin = 0;
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	assert_true(x && EVP_EncryptInit_ex2(x, EVP_aes_256_gcm(), key, nonce, NULL) &&
	            EVP_EncryptUpdate(x, NULL, &n, ad, (int)ad_len) &&
	            (len == 0 || EVP_EncryptUpdate(x, out, &n, plain, (int)len)) &&
	            EVP_EncryptFinal_ex(x, out + len, &fin) &&
	            EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, out + len));
	EVP_CIPHER_CTX_free(x);
}

/* Set row id's seal header, sealed payload and ad (which associated data
 * it has), through the writer. */
static inline void store_set_sealed(struct store *s, uint64_t id, const uint8_t *header,
                                    size_t header_len, const uint8_t *sealed, size_t sealed_len,
                                    int ad)
{
	char hh[2 * 128 + 1], hs[2 * 128 + 1], sql[640];
	assert_true(header_len <= 128 && sealed_len <= 128);
	hex_encode(hh, header, header_len);
	hex_encode(hs, sealed, sealed_len);
	snprintf(sql, sizeof(sql),
	         "UPDATE messages SET nonce = X'%s', payload = X'%s', ad = %d WHERE id = %" PRIu64,
	         hh, hs, ad, id);
	assert_int_equal(store_test_exec(s, sql), 0);
}

/*
 * Make row id hold plain as a store of schema version 1 sealed it
 * (docs/store.md): under the storage key itself with the associated data
 * of ad = 1, and the 24-byte nonce alone as the row's seal header.
 */
static inline void store_write_v1_row(struct store *s, const uint8_t key[32], uint64_t id,
                                      const char *sender, const char *message_id,
                                      const char *recipient, const char *plain)
{
	uint8_t ad[256], nonce[STORE_SEAL_NONCE_LEN], sealed[64 + STORE_SEAL_OVERHEAD];
	size_t len = strlen(plain);
	assert_true(len <= 64);
	size_t ad_len = store_doc_ad_v1(ad, sender, message_id, recipient);
	store_aead_seal(key, ad, ad_len, (const uint8_t *)plain, len, nonce, sealed);
	store_set_sealed(s, id, nonce, sizeof(nonce), sealed, len + STORE_SEAL_OVERHEAD, 1);
}

/*
 * Make row id hold plain as a store of schema version 2 sealed it
 * (docs/store.md): XChaCha20-Poly1305 under a data key of its own, wrapped
 * under the storage key, with the associated data of ad = 1, the 96-byte
 * seal header being the wrapped key and the 24-byte nonce.
 */
static inline void store_write_v2_row(struct store *s, const uint8_t key[32], uint64_t id,
                                      const char *sender, const char *message_id,
                                      const char *recipient, const char *plain)
{
	uint8_t ad[256], data_key[STORE_SEAL_KEY_LEN], sealed[64 + STORE_SEAL_OVERHEAD];
	uint8_t header[STORE_WRAPPED_KEY_LEN + STORE_SEAL_NONCE_LEN];
	size_t len = strlen(plain);
	assert_true(len <= 64);
	size_t ad_len = store_doc_ad_v1(ad, sender, message_id, recipient);
	randombytes_buf(data_key, sizeof(data_key));
	store_key_wrap(key, data_key, header);
	store_aead_seal(data_key, ad, ad_len, (const uint8_t *)plain, len,
	                header + STORE_WRAPPED_KEY_LEN, sealed);
	store_set_sealed(s, id, header, sizeof(header), sealed, len + STORE_SEAL_OVERHEAD, 1);
}

/*
 * Make row id of the closed store hold plain as schema versions 3 and 4
 * sealed it (docs/store.md): AES-256-GCM under a data key of its own,
 * wrapped under the storage key, with the associated data of ad = 1, the
 * 84-byte seal header being the wrapped key and the 12-byte nonce; the
 * payload in its row or in payloads, wherever the row's is.
 */
static inline void store_write_v4_row(const struct fx *f, uint64_t id, const char *sender,
                                      const char *message_id, const char *recipient,
                                      const uint8_t *plain, size_t len)
{
	uint8_t ad[256], data_key[32], header[STORE_WRAPPED_KEY_LEN + 12];
	uint8_t *sealed = malloc(len + 16);
	assert_non_null(sealed);
	size_t ad_len = store_doc_ad_v1(ad, sender, message_id, recipient);
	randombytes_buf(data_key, sizeof(data_key));
	store_key_wrap(f->key, data_key, header);
	randombytes_buf(header + STORE_WRAPPED_KEY_LEN, 12);
	store_doc_gcm_seal(data_key, header + STORE_WRAPPED_KEY_LEN, ad, ad_len, plain, len,
	                   sealed);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	static const char *const sql[] = {
	    "UPDATE messages SET nonce = ?2,"
	    " payload = CASE WHEN payload IS NULL THEN NULL ELSE ?3 END WHERE id = ?1",
	    "UPDATE payloads SET data = ?3 WHERE id = ?1",
	};
	for (size_t i = 0; i < ARRAY_LEN(sql); i++) {
		sqlite3_stmt *st = NULL;
		if (sqlite3_prepare_v2(db, sql[i], -1, &st, NULL) != SQLITE_OK)
			fail_msg("prepare %s: %s", sql[i], sqlite3_errmsg(db));
		sqlite3_bind_int64(st, 1, (int64_t)id);
		sqlite3_bind_blob(st, 2, header, sizeof(header), SQLITE_TRANSIENT);
		sqlite3_bind_blob(st, 3, sealed, (int)(len + 16), SQLITE_TRANSIENT);
		assert_int_equal(sqlite3_step(st), SQLITE_DONE);
		sqlite3_finalize(st);
	}
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
	free(sealed);
}

/* Run sql on the closed store's file. */
static inline void db_exec(const struct fx *f, const char *sql)
{
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	char *msg = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("%s: %s", sql, msg);
	sqlite3_close(db);
}

static inline bool file_contains(const char *path, const char *needle)
{
	size_t len = 0;
	uint8_t *buf = file_slurp(path, &len);
	bool found = buf && memmem(buf, len, needle, strlen(needle)) != NULL;
	free(buf);
	return found;
}

#endif
