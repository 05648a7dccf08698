/*
 * keyproc: the key process answers exactly what the keys would answer in
 * process (pseudonyms, seals, checkpoint signatures), refuses what a
 * compromised gateway might ask (checkpoints of any tree but the one it
 * has seen grow, foreign checkpoints, malformed requests), reports bad key files and threads that
 * cannot start at start, ends with its gateway, and is sandboxed; the gateway's side gets by a
 * broken channel.
 */
#include <fcntl.h>
#include <pthread.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "audit/audit.h"
#include "keyproc/internal.h"
#include "store_test_util.h"
#include "util/util.h"

/* One part of a request at a time, as a hand-made (or malformed) client writes. */
static int write_part(int fd, const void *buf, size_t len)
{
	struct iovec iov = {(void *)buf, len};
	return keyproc_writev_full(fd, &iov, 1);
}

struct fixture {
	char root[64];
	char dir[128];
	struct keyproc *kp;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[512];
	str_copy(f->root, "/tmp/isg-keyproc-XXXXXX", sizeof(f->root));
	if (!mkdtemp(f->root))
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/keys", f->root);
	if (keys_init(f->dir, err, sizeof(err)) != 0 ||
	    keys_new_domain(f->dir, "health", err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	assert_true(keyproc_stop(f->kp, NULL));
	char cmd[200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->root);
	if (system(cmd) != 0)
		return -1;
	free(f);
	return 0;
}

static struct keyproc *start(struct fixture *f)
{
	struct keyproc_options o = {.keys_dir = f->dir, .audit_origin = "test-log", .channels = 2};
	char err[512] = "";
	int rc = keyproc_start(&o, &f->kp, err, sizeof(err));
	if (rc)
		fprintf(stderr, "keyproc_start: %s\n", err);
	assert_int_equal(rc, 0);
	return f->kp;
}

static void test_pseudonyms_match_the_keys(void **state)
{
	struct fixture *f = *state;
	struct keyproc *kp = start(f);
	char err[512];
	struct keyproc_ring *ring;
	assert_int_equal(keyproc_ring_load(kp, &ring, err, sizeof(err)), 0);
	struct keyring *local;
	assert_int_equal(keys_load_domains(f->dir, &local, err, sizeof(err)), 0);

	/* The description names what the keys directory has, and holds no key. */
	const struct keyring *desc = keyproc_ring_keys(ring);
	assert_int_equal(keyring_domain_count(desc), 2);
	assert_true(keyring_has(desc, "health"));
	assert_true(keyring_has(desc, "audit"));
	char out[2][PSEUDO_TEXT_MAX];
	assert_int_equal(
	    keyring_pseudonymise_all(desc, "health", PSEUDO_NHS_NUMBER, "x", 1, out, 2), 0);

	struct pseudo_request remote[3] = {
	    {.domain = "health", .type = PSEUDO_NHS_NUMBER, .norm = "9434765919", .len = 10},
	    {.domain = "audit", .type = PSEUDO_POSTCODE, .norm = "SW1A 1AA", .len = 8},
	    {.domain = "health", .type = PSEUDO_EMAIL, .norm = "", .len = 0},
	};
	struct pseudo_request here[3];
	memcpy(here, remote, sizeof(here));
	struct pseudo_service rs = keyproc_ring_service(ring), ls = keyring_service(local);
	assert_int_equal(rs.pseudonymise(rs.ctx, remote, 3, 20000), 0);
	assert_int_equal(ls.pseudonymise(ls.ctx, here, 3, 20000), 0);
	for (int i = 0; i < 3; i++) {
		assert_true(remote[i].out[0] != '\0');
		assert_string_equal(remote[i].out, here[i].out);
		assert_string_equal(remote[i].previous, here[i].previous);
	}
	/* A batch in two arrays, remote and in process: the same answers, each
	 * in its own place. */
	for (int via = 0; via < 2; via++) {
		struct pseudo_request first[1], second[2];
		memcpy(first, remote + 2, sizeof(first));
		memcpy(second, remote, sizeof(second));
		for (int i = 0; i < 3; i++) {
			struct pseudo_request *r = i < 1 ? &first[i] : &second[i - 1];
			memset(r->out, 'x', sizeof(r->out));
			memset(r->previous, 'x', sizeof(r->previous));
		}
		const struct pseudo_batch parts[] = {{first, 1}, {NULL, 0}, {second, 2}};
		const struct pseudo_service *svc = via ? &ls : &rs;
		assert_int_equal(svc->pseudonymise_parts(svc->ctx, parts, 3, 20000), 0);
		const struct pseudo_request *got[] = {&second[0], &second[1], &first[0]};
		for (int i = 0; i < 3; i++) {
			assert_string_equal(got[i]->out, here[i].out);
			assert_string_equal(got[i]->previous, here[i].previous);
		}
	}
	/* A domain without a key is refused as in process. */
	struct pseudo_request unknown = {
	    .domain = "nope", .type = PSEUDO_EMAIL, .norm = "a", .len = 1};
	assert_int_equal(rs.pseudonymise(rs.ctx, &unknown, 1, 20000), ISG_ERR_NOT_FOUND);

	/* A second generation works on after the first is dropped. */
	struct keyproc_ring *ring2;
	assert_int_equal(keyproc_ring_load(kp, &ring2, err, sizeof(err)), 0);
	keyproc_ring_free(ring);
	struct pseudo_service rs2 = keyproc_ring_service(ring2);
	struct pseudo_request again = remote[0];
	assert_int_equal(rs2.pseudonymise(rs2.ctx, &again, 1, 20000), 0);
	assert_string_equal(again.out, here[0].out);
	keyproc_ring_free(ring2);
	keyring_free(local);
}

/*
 * A compromised gateway cannot bring a retired version back by sending a
 * past day: the key process decides by its own clock.
 */
static void test_pseudo_uses_its_own_clock(void **state)
{
	struct fixture *f = *state;
	char err[512];
	int64_t today = date_days_of_ms(time_now_ms());
	uint32_t version;
	/* health v1 retires today, overlap 0; audit v1 answers as previous for 2 more days
	 * (not 1: the test may cross midnight UTC between the rotation and the key process). */
	assert_int_equal(keys_rotate(f->dir, "health", today, 0, &version, err, sizeof(err)), 0);
	assert_int_equal(keys_rotate(f->dir, "audit", today, 2, &version, err, sizeof(err)), 0);
	struct keyproc *kp = start(f);
	struct keyproc_ring *ring;
	assert_int_equal(keyproc_ring_load(kp, &ring, err, sizeof(err)), 0);
	struct pseudo_service rs = keyproc_ring_service(ring);
	const int64_t days[] = {today, today - 1, today - 1000, 0, today + 5};
	for (size_t i = 0; i < sizeof(days) / sizeof(days[0]); i++) {
		struct pseudo_request r[2] = {
		    {.domain = "health",
		     .type = PSEUDO_NHS_NUMBER,
		     .norm = "9434765919",
		     .len = 10},
		    {.domain = "audit", .type = PSEUDO_NHS_NUMBER, .norm = "9434765919", .len = 10},
		};
		assert_int_equal(rs.pseudonymise(rs.ctx, r, 2, days[i]), 0);
		assert_int_equal(strncmp(r[0].out, "p2_", 3), 0);
		assert_string_equal(r[0].previous, "");
		assert_int_equal(strncmp(r[1].out, "p2_", 3), 0);
		assert_int_equal(strncmp(r[1].previous, "p1_", 3), 0);
	}
	keyproc_ring_free(ring);
}

static void test_seals_open_with_the_storage_key(void **state)
{
	struct fixture *f = *state;
	struct keyproc *kp = start(f);
	char err[512];
	uint8_t *key;
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), 0);
	struct store_sealer s = keyproc_sealer(kp);

	/* New data keys: each different, each wrapped under the storage key. */
	enum { N = 3 };
	uint8_t keys[N][STORE_SEAL_KEY_LEN], wrapped[N][STORE_WRAPPED_KEY_LEN];
	assert_int_equal(s.new_keys(s.ctx, N, &keys[0][0], &wrapped[0][0]), 0);
	assert_memory_not_equal(keys[0], keys[1], STORE_SEAL_KEY_LEN);
	for (int i = 0; i < N; i++) {
		uint8_t k[STORE_SEAL_KEY_LEN];
		assert_int_equal(store_key_unwrap(key, wrapped[i], k), 0);
		assert_memory_equal(k, keys[i], sizeof(k));
	}
	/* Unwrapped there, in one call; a changed byte does not unwrap. */
	wrapped[1][40] ^= 1;
	uint8_t back[N][STORE_SEAL_KEY_LEN], ok[N];
	assert_int_equal(s.unwrap(s.ctx, N, &wrapped[0][0], &back[0][0], ok), 0);
	assert_true(ok[0] && !ok[1] && ok[2]);
	assert_memory_equal(back[0], keys[0], STORE_SEAL_KEY_LEN);
	assert_memory_equal(back[2], keys[2], STORE_SEAL_KEY_LEN);
	static const uint8_t zeros[STORE_SEAL_KEY_LEN];
	assert_memory_equal(back[1], zeros, sizeof(zeros));
	/* Wrapped here, unwrapped there. */
	store_key_wrap(key, keys[1], wrapped[1]);
	assert_int_equal(s.unwrap(s.ctx, 1, wrapped[1], back[1], ok), 0);
	assert_true(ok[0]);
	assert_memory_equal(back[1], keys[1], STORE_SEAL_KEY_LEN);
	/* More than one request's worth unwraps in several. */
	size_t many = KEYPROC_KEYS_MAX + 5;
	uint8_t *mw = malloc(many * STORE_WRAPPED_KEY_LEN), *mk = malloc(many * STORE_SEAL_KEY_LEN),
	        *mok = malloc(many);
	assert_non_null(mw);
	assert_non_null(mk);
	assert_non_null(mok);
	for (size_t i = 0; i < many; i++)
		memcpy(mw + i * STORE_WRAPPED_KEY_LEN, wrapped[i % 2 ? 2 : 0],
		       STORE_WRAPPED_KEY_LEN);
	assert_int_equal(s.unwrap(s.ctx, many, mw, mk, mok), 0);
	for (size_t i = 0; i < many; i++) {
		assert_true(mok[i]);
		assert_memory_equal(mk + i * STORE_SEAL_KEY_LEN, keys[i % 2 ? 2 : 0],
		                    STORE_SEAL_KEY_LEN);
	}
	free(mw);
	free(mk);
	free(mok);

	/* Payloads sealed under the storage key itself (stores from before
	 * envelopes) still open there; other ad or a changed byte do not. */
	const uint8_t ad[] = "\0\0\0\x0aisg-msg-v1\0\0\0\x01x", plain[] = "a referral";
	uint8_t nonce[STORE_SEAL_NONCE_LEN], sealed[sizeof(plain) + STORE_SEAL_OVERHEAD];
	uint8_t opened[sizeof(plain)];
	store_aead_seal(key, ad, sizeof(ad), plain, sizeof(plain), nonce, sealed);
	assert_int_equal(s.open(s.ctx, ad, sizeof(ad), nonce, sealed, sizeof(sealed), opened), 0);
	assert_memory_equal(opened, plain, sizeof(plain));
	assert_int_equal(s.open(s.ctx, ad, sizeof(ad) - 1, nonce, sealed, sizeof(sealed), opened),
	                 ISG_ERR_CRYPTO);
	sealed[3] ^= 1;
	assert_int_equal(s.open(s.ctx, ad, sizeof(ad), nonce, sealed, sizeof(sealed), opened),
	                 ISG_ERR_CRYPTO);
	/* OPEN is for payloads only: a wrapped data key, presented as a payload
	 * under the wrapping's associated data, is refused unopened. */
	static const uint8_t key_ad[] = "isg-key-v1";
	uint8_t dk[STORE_SEAL_KEY_LEN];
	assert_int_equal(s.open(s.ctx, key_ad, sizeof(key_ad) - 1, wrapped[0],
	                        wrapped[0] + STORE_SEAL_NONCE_LEN,
	                        STORE_SEAL_KEY_LEN + STORE_SEAL_OVERHEAD, dk),
	                 ISG_ERR_DENIED);
	keys_free(key);
}

/* A store whose sealer is the key process, as in isgd: payloads sealed
 * under data keys from it open, and so does a row sealed the old way under
 * the storage key itself, through OPEN with the store's own associated data. */
static void test_store_through_the_key_process(void **state)
{
	struct fixture *f = *state;
	struct keyproc *kp = start(f);
	struct store_sealer sealer = keyproc_sealer(kp);
	char path[160], err[512] = "";
	snprintf(path, sizeof(path), "%s/isg.db", f->root);
	struct store_options opt = {.path = path, .sealer = &sealer};
	struct store *s = NULL;
	assert_int_equal(store_open(&opt, &s, err, sizeof(err)), 0);
	struct store_message m1 = fx_msg("police-a", "m-1", "nhs-b", "one");
	struct store_message m2 = fx_msg("police-a", "m-2", "nhs-b", "two");
	struct store_receipt r1;
	assert_int_equal(send_sync(s, &m1, &r1), 0);
	assert_int_equal(send_sync(s, &m2, NULL), 0);

	uint8_t *key;
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), 0);
	store_write_v1_row(s, key, r1.gateway_id, "police-a", "m-1", "nhs-b", "old style");
	keys_free(key);

	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 2);
	assert_int_equal(res->items[0].payload_len, 9);
	assert_memory_equal(res->items[0].payload, "old style", 9);
	assert_int_equal(res->items[1].payload_len, 3);
	assert_memory_equal(res->items[1].payload, "two", 3);
	store_fetch_result_free(res);

	/* The old row marked as sealed with the associated data of version 5
	 * does not open, and is not sent to OPEN, which would refuse that
	 * associated data and fail the whole fetch. */
	char sql[128];
	snprintf(sql, sizeof(sql), "UPDATE messages SET ad = 2 WHERE id = %" PRIu64, r1.gateway_id);
	assert_int_equal(store_test_exec(s, sql), 0);
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_memory_equal(res->items[0].payload, "two", 3);
	store_fetch_result_free(res);
	store_close(s);
}

/* Sign the checkpoint (origin, size, root) through s; the note in note. */
static int sign_cp(const struct audit_signer *s, const char *origin, uint64_t size,
                   const uint8_t root[static AUDIT_HASH_LEN], char *note, size_t *len)
{
	struct audit_checkpoint c = {.size = size};
	str_copy(c.origin, origin, sizeof(c.origin));
	memcpy(c.root, root, AUDIT_HASH_LEN);
	const char *reason;
	return audit_checkpoint_sign(s, &c, note, AUDIT_NOTE_MAX, len, &reason);
}

/* Leaf hashes of the entries "<tag> 0", "<tag> 1", ... */
static void leaves_of(const char *tag, uint8_t (*leaves)[AUDIT_HASH_LEN], size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char entry[32];
		int len = snprintf(entry, sizeof(entry), "%s %zu", tag, i);
		audit_leaf_hash((const uint8_t *)entry, (size_t)len, leaves[i]);
	}
}

static void root_of(const uint8_t (*leaves)[AUDIT_HASH_LEN], uint64_t n,
                    uint8_t root[static AUDIT_HASH_LEN])
{
	assert_int_equal(audit_root_from_leaves(leaves, n, root), 0);
}

/*
 * The key process signs only the tree it has seen: the one the store
 * started it with (once), and the leaves appended since, in order. Not
 * before the start, not a larger, smaller or other tree; the same one
 * again (an idle gateway) it does.
 */
static void test_signs_only_the_log_it_has_seen(void **state)
{
	struct fixture *f = *state;
	struct keyproc *kp = start(f);
	const struct audit_signer *s = keyproc_signer(kp);
	struct store_witness w = keyproc_witness(kp);
	assert_string_equal(audit_signer_name(s), "test-log");
	char vkey[AUDIT_VERIFIER_KEY_MAX], note[AUDIT_NOTE_MAX];
	audit_signer_verifier_key(s, vkey);
	struct audit_verifier v;
	const char *reason;
	assert_int_equal(audit_verifier_parse(vkey, strlen(vkey), &v, &reason), 0);
	uint8_t ours[6][AUDIT_HASH_LEN], theirs[6][AUDIT_HASH_LEN], root[AUDIT_HASH_LEN];
	leaves_of("ours", ours, 6);
	leaves_of("theirs", theirs, 6);
	const uint8_t(*o)[AUDIT_HASH_LEN] = (const uint8_t(*)[AUDIT_HASH_LEN])ours;
	const uint8_t(*t)[AUDIT_HASH_LEN] = (const uint8_t(*)[AUDIT_HASH_LEN])theirs;

	/* Before the log is started: nothing signed, nothing appended. */
	size_t len;
	root_of(o, 0, root);
	assert_int_equal(sign_cp(s, "test-log", 0, root, note, &len), ISG_ERR_CRYPTO);
	assert_int_equal(w.append(w.ctx, 0, ours[0], 1), ISG_ERR_DENIED);

	/* Started from a store holding two entries; a second start is refused. */
	struct audit_tree tree;
	audit_tree_init(&tree);
	assert_int_equal(audit_tree_append(&tree, ours[0]), 0);
	assert_int_equal(audit_tree_append(&tree, ours[1]), 0);
	uint8_t enc[AUDIT_TREE_ENCODED_MAX];
	size_t enc_len = audit_tree_encode(&tree, enc);
	assert_int_equal(w.start(w.ctx, enc, enc_len), 0);
	audit_tree_init(&tree);
	enc_len = audit_tree_encode(&tree, enc);
	assert_int_equal(w.start(w.ctx, enc, enc_len), ISG_ERR_DENIED);

	root_of(o, 2, root);
	assert_int_equal(sign_cp(s, "test-log", 2, root, note, &len), 0);
	struct audit_checkpoint c;
	assert_int_equal(audit_checkpoint_open(&v, note, len, &c, &reason), 0);
	assert_int_equal(c.size, 2);
	assert_memory_equal(c.root, root, AUDIT_HASH_LEN);

	/* Three more appended: that tree is signed, and again when idle. */
	assert_int_equal(w.append(w.ctx, 2, ours[2], 3), 0);
	root_of(o, 5, root);
	assert_int_equal(sign_cp(s, "test-log", 5, root, note, &len), 0);
	assert_int_equal(audit_checkpoint_open(&v, note, len, &c, &reason), 0);
	assert_int_equal(c.size, 5);
	assert_int_equal(sign_cp(s, "test-log", 5, root, note, &len), 0);

	/* The right size from other leaves, or sharing only the first two. */
	root_of(t, 5, root);
	assert_int_equal(sign_cp(s, "test-log", 5, root, note, &len), ISG_ERR_CRYPTO);
	memcpy(theirs[0], ours[0], AUDIT_HASH_LEN);
	memcpy(theirs[1], ours[1], AUDIT_HASH_LEN);
	root_of(t, 5, root);
	assert_int_equal(sign_cp(s, "test-log", 5, root, note, &len), ISG_ERR_CRYPTO);
	/* Larger than what was appended; smaller (a rolled-back log), even if true once. */
	root_of(o, 6, root);
	assert_int_equal(sign_cp(s, "test-log", 6, root, note, &len), ISG_ERR_CRYPTO);
	root_of(o, 4, root);
	assert_int_equal(sign_cp(s, "test-log", 4, root, note, &len), ISG_ERR_CRYPTO);
	root_of(o, 2, root);
	assert_int_equal(sign_cp(s, "test-log", 2, root, note, &len), ISG_ERR_CRYPTO);

	/* Appends that do not follow the tree (a repeat, a gap) are refused and
	 * change nothing. */
	assert_int_equal(w.append(w.ctx, 4, ours[4], 2), ISG_ERR_DENIED);
	assert_int_equal(w.append(w.ctx, 6, ours[5], 1), ISG_ERR_DENIED);
	root_of(o, 5, root);
	assert_int_equal(sign_cp(s, "test-log", 5, root, note, &len), 0);
	assert_int_equal(w.append(w.ctx, 5, ours[5], 1), 0);
	root_of(o, 6, root);
	assert_int_equal(sign_cp(s, "test-log", 6, root, note, &len), 0);

	/* Another log, or a note that is no checkpoint: refused. */
	assert_int_equal(sign_cp(s, "other-log", 6, root, note, &len), ISG_ERR_CRYPTO);
	assert_int_equal(audit_note_sign(s, "hello\n", 6, note, sizeof(note), &len, &reason),
	                 ISG_ERR_CRYPTO);
}

/*
 * A store with the key process as signer and witness, as in isgd: its
 * checkpoints are signed; a second store opened on the same key process
 * cannot start the log again, and is refused.
 */
static void test_store_witnessed_by_the_key_process(void **state)
{
	struct fixture *f = *state;
	struct keyproc *kp = start(f);
	struct store_sealer sealer = keyproc_sealer(kp);
	struct store_witness witness = keyproc_witness(kp);
	char path[160], err[512] = "";
	snprintf(path, sizeof(path), "%s/isg.db", f->root);
	struct store_options opt = {.path = path,
	                            .sealer = &sealer,
	                            .signer = keyproc_signer(kp),
	                            .witness = &witness,
	                            .checkpoint_every = 2};
	struct store *s = NULL;
	assert_int_equal(store_open(&opt, &s, err, sizeof(err)), 0);
	for (int i = 0; i < 5; i++) {
		uint64_t seq = 0;
		assert_int_equal(audit_sync(s, "test.event", "{\"event\":\"test.event\"}", &seq),
		                 0);
		assert_int_equal(seq, (uint64_t)i + 1);
	}
	store_close(s);
	s = NULL;
	char note[AUDIT_NOTE_MAX];
	opt.witness = NULL; /* the signature is checked at open */
	assert_int_equal(store_open(&opt, &s, err, sizeof(err)), 0);
	assert_int_equal(store_latest_checkpoint(s, note, sizeof(note)), 0);
	store_close(s);
	s = NULL;
	char vkey[AUDIT_VERIFIER_KEY_MAX];
	audit_signer_verifier_key(keyproc_signer(kp), vkey);
	struct audit_verifier v;
	struct audit_checkpoint c;
	const char *reason;
	assert_int_equal(audit_verifier_parse(vkey, strlen(vkey), &v, &reason), 0);
	assert_int_equal(audit_checkpoint_open(&v, note, strlen(note), &c, &reason), 0);
	assert_int_equal(c.size, 5);

	opt.witness = &witness;
	assert_int_equal(store_open(&opt, &s, err, sizeof(err)), ISG_ERR_DENIED);
	assert_null(s);
	assert_non_null(strstr(err, "witness refused its start at 5 entries"));
}

static void test_bad_key_file_refused_at_start(void **state)
{
	struct fixture *f = *state;
	char path[256], err[512] = "";
	snprintf(path, sizeof(path), "%s/%s", f->dir, KEYS_AUDIT_SIGNING_FILE);
	assert_int_equal(chmod(path, 0644), 0);
	struct keyproc_options o = {.keys_dir = f->dir, .audit_origin = "test-log"};
	assert_int_not_equal(keyproc_start(&o, &f->kp, err, sizeof(err)), 0);
	assert_null(f->kp);
	assert_non_null(strstr(err, "audit-signing.key' has mode 0644"));
}

/* keyproc_stop says how the key process ended: isgd logs it (keyproc.exited). */
static void test_stop_gives_the_wait_status(void **state)
{
	struct fixture *f = *state;
	int st = 0;
	assert_true(keyproc_stop(start(f), &st));
	f->kp = NULL;
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	struct keyproc *kp = start(f);
	assert_int_equal(kill(keyproc_pid(kp), SIGKILL), 0);
	assert_false(keyproc_stop(kp, &st));
	f->kp = NULL;
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGKILL);
	st = 0;
	assert_true(keyproc_stop(NULL, &st));
	assert_int_equal(st, -1);
}

/* The descriptors open in this process, as a bitmap of the first 1024. */
static void open_fds(bool open[static 1024])
{
	for (int fd = 0; fd < 1024; fd++)
		open[fd] = fcntl(fd, F_GETFD) >= 0;
}

/* New data keys through the key process: 0 or the error. */
static int new_key(struct keyproc *kp)
{
	struct store_sealer s = keyproc_sealer(kp);
	uint8_t k[STORE_SEAL_KEY_LEN], w[STORE_WRAPPED_KEY_LEN];
	int rc = s.new_keys(s.ctx, 1, k, w);
	sodium_memzero(k, sizeof(k));
	return rc;
}

/*
 * A channel that breaks (here shut down under the gateway's feet, as a
 * failed read or write leaves it) is not handed out again: the call that
 * met it fails, the calls after it go to the channels that still work,
 * whichever channel broke. When none is left, a call fails at once.
 */
static void test_broken_channel_is_not_reused(void **state)
{
	struct fixture *f = *state;
	for (int which = 0; which < 2; which++) {
		bool before[1024], after[1024];
		open_fds(before);
		struct keyproc *kp = start(f); /* two channels */
		open_fds(after);
		int chans[2], n = 0;
		for (int fd = 0; fd < 1024 && n < 2; fd++)
			if (after[fd] && !before[fd])
				chans[n++] = fd;
		assert_int_equal(n, 2);
		assert_int_equal(shutdown(chans[which], SHUT_RDWR), 0);
		int failed = 0;
		for (int i = 0; i < 4; i++)
			failed += new_key(kp) != 0;
		assert_in_range(failed, 0, 1);
		assert_int_equal(new_key(kp), 0);
		assert_true(keyproc_stop(kp, NULL));
		f->kp = NULL;
	}
	/* The only channel broken: every call fails, none waits. */
	struct keyproc_options o = {.keys_dir = f->dir, .audit_origin = "test-log", .channels = 1};
	char err[512] = "";
	bool before[1024], after[1024];
	open_fds(before);
	assert_int_equal(keyproc_start(&o, &f->kp, err, sizeof(err)), 0);
	open_fds(after);
	for (int fd = 0; fd < 1024; fd++)
		if (after[fd] && !before[fd])
			assert_int_equal(shutdown(fd, SHUT_RDWR), 0);
	assert_int_equal(new_key(f->kp), ISG_ERR_IO);
	assert_int_equal(new_key(f->kp), ISG_ERR_IO);
}

/*
 * A key process that cannot start a thread for each channel says so at
 * start, and keyproc_start fails with the reason: started, it would have
 * left the gateway calls on channels nobody serves, waiting for ever.
 * Threads are made to fail by a default stack larger than any address
 * space, which the forked key process inherits.
 */
static void test_threads_that_cannot_start_fail_the_start(void **state)
{
	struct fixture *f = *state;
	pthread_attr_t old, huge;
	assert_int_equal(pthread_getattr_default_np(&old), 0);
	assert_int_equal(pthread_attr_init(&huge), 0);
	assert_int_equal(pthread_attr_setstacksize(&huge, (size_t)1 << 48), 0);
	assert_int_equal(pthread_setattr_default_np(&huge), 0);
	struct keyproc_options o = {.keys_dir = f->dir, .audit_origin = "test-log", .channels = 2};
	char err[512] = "";
	int rc = keyproc_start(&o, &f->kp, err, sizeof(err));
	assert_int_equal(pthread_setattr_default_np(&old), 0);
	pthread_attr_destroy(&huge);
	pthread_attr_destroy(&old);
	assert_int_not_equal(rc, 0);
	assert_null(f->kp);
	assert_string_equal(err, "key process: cannot start its threads");
}

/* Wait up to about 5 s for pid (a child) to end; its wait status, or -1 (it is then killed). */
static int wait_briefly(pid_t pid)
{
	int st;
	for (int i = 0; i < 500; i++) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid)
			return st;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

/*
 * A gateway (a child, prepared by prepare) starts a key process and dies
 * without stopping it: the key process must see its channels close and
 * exit 0. Asserts that it does, within about 5 s.
 */
static void assert_key_process_ends_with_its_gateway(struct fixture *f, void (*prepare)(void))
{
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
	int pipefd[2];
	assert_int_equal(pipe(pipefd), 0);
	pid_t gw = fork();
	assert_true(gw >= 0);
	if (gw == 0) {
		close(pipefd[0]);
		prepare();
		struct keyproc_options o = {
		    .keys_dir = f->dir, .audit_origin = "test-log", .channels = 1};
		char err[512];
		struct keyproc *kp = NULL;
		pid_t kpid = keyproc_start(&o, &kp, err, sizeof(err)) == 0 ? keyproc_pid(kp) : -1;
		if (write(pipefd[1], &kpid, sizeof(kpid)) != sizeof(kpid))
			_exit(2);
		_exit(0); /* without keyproc_stop */
	}
	close(pipefd[1]);
	pid_t kpid = -1;
	assert_int_equal(read(pipefd[0], &kpid, sizeof(kpid)), sizeof(kpid));
	close(pipefd[0]);
	assert_int_equal(wait_briefly(gw), 0);
	assert_true(kpid > 0);
	int st = wait_briefly(kpid); /* reparented to this process, the subreaper */
	prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
	assert_int_not_equal(st, -1);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

static void close_stdin(void)
{
	close(0);
}

/*
 * isgd started with standard input (or output, or error) closed: its
 * channels' descriptors could be 0 to 2, which the key process keeps as
 * its own standard ones. Holding the gateway's end of a channel, it would
 * never see that channel close, and outlive a gateway that died.
 */
static void test_key_process_ends_with_a_gateway_started_without_stdin(void **state)
{
	assert_key_process_ends_with_its_gateway(*state, close_stdin);
}

/* close_range(2) fails with ENOSYS, as on kernels before 5.9. */
static void deny_close_range(void)
{
	struct sock_filter filter[] = {
	    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
	    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_close_range, 0, 1),
	    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
	    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = ARRAY_LEN(filter), .filter = filter};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
		_exit(3);
}

/*
 * Where close_range(2) is missing (before Linux 5.9) or refused (an older
 * container runtime's seccomp profile), the key process still closes the
 * descriptors it must not keep, the gateway's ends of its channels among
 * them: else it would outlive a gateway that died.
 */
static void test_key_process_ends_with_its_gateway_without_close_range(void **state)
{
	assert_key_process_ends_with_its_gateway(*state, deny_close_range);
}

/* In a child: 0 when call failed with EPERM, else bit. */
static int denied(long rc, int bit)
{
	return rc == -1 && errno == EPERM ? 0 : bit;
}

/*
 * The sandbox denies the network and other processes, also by the ways
 * around the calls it names: io_uring, whose operations (IORING_OP_SOCKET,
 * CONNECT) seccomp does not see, and pidfd_getfd, which takes a descriptor
 * from another process (here its own, which is always allowed without the
 * filter). Run in a child, as the filter cannot be taken off.
 */
static void test_sandbox_denies_the_network(void **state)
{
	(void)state;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		const char *what = NULL;
		if (keyproc_sandbox(&what) != 0)
			_exit(100);
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		int pidfd = (int)syscall(__NR_pidfd_open, getpid(), 0);
		int bits = denied(socket(AF_INET, SOCK_STREAM, 0), 1) |
		           denied(syscall(__NR_io_uring_setup, 4, &p), 2) |
		           (pidfd < 0 ? 4 : denied(syscall(__NR_pidfd_getfd, pidfd, 0, 0), 8)) |
		           denied(execl("/bin/true", "true", (char *)NULL), 16);
		_exit(bits);
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* --- the protocol, spoken badly: the key process is on the other side of a trust boundary */

struct raw {
	pid_t pid;
	int fd;
};

static void raw_start(struct fixture *f, struct raw *r)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	r->pid = fork();
	assert_true(r->pid >= 0);
	if (r->pid == 0) {
		close(sv[0]);
		struct keyproc_options o = {.keys_dir = f->dir, .audit_origin = "test-log"};
		keyproc_serve(&o, &sv[1], 1);
	}
	close(sv[1]);
	r->fd = sv[0];
	uint32_t len;
	int32_t status;
	uint8_t pk[AUDIT_PUBKEY_LEN];
	assert_int_equal(keyproc_read_full(r->fd, &len, 4), 0);
	assert_int_equal(keyproc_read_full(r->fd, &status, 4), 0);
	assert_int_equal(status, 0);
	assert_int_equal(len, 4 + AUDIT_PUBKEY_LEN);
	assert_int_equal(keyproc_read_full(r->fd, pk, sizeof(pk)), 0);
}

/* Send op + body; the answer's status (its body is skipped), or 1 when the channel closed. */
static int raw_call(struct raw *r, uint8_t op, const void *body, uint32_t len)
{
	uint32_t total = len + 1;
	if (write_part(r->fd, &total, 4) != 0 || write_part(r->fd, &op, 1) != 0 ||
	    (len && write_part(r->fd, body, len) != 0))
		return 1;
	uint32_t rlen;
	int32_t status;
	if (keyproc_read_full(r->fd, &rlen, 4) != 0 || keyproc_read_full(r->fd, &status, 4) != 0)
		return 1;
	uint8_t skip[256];
	for (uint32_t left = rlen - 4; left > 0;) {
		uint32_t n = left < sizeof(skip) ? left : sizeof(skip);
		if (keyproc_read_full(r->fd, skip, n) != 0)
			return 1;
		left -= n;
	}
	return status;
}

static void test_malformed_requests_are_refused(void **state)
{
	struct fixture *f = *state;
	struct raw r;
	raw_start(f, &r);
	assert_int_equal(raw_call(&r, 99, NULL, 0), ISG_ERR_PARSE);
	assert_int_equal(raw_call(&r, KEYPROC_LOAD, "x", 1), ISG_ERR_PARSE);
	assert_int_equal(raw_call(&r, KEYPROC_DROP, "\0\0", 2), ISG_ERR_PARSE);
	assert_int_equal(raw_call(&r, KEYPROC_DROP, "\x07\0\0\0", 4), ISG_ERR_NOT_FOUND);
	/* PSEUDO: a count larger than the body could hold, a domain running past the end. */
	uint8_t p[40] = {0};
	uint32_t gen = 1, n = 1000000;
	memcpy(p, &gen, 4);
	memcpy(p + 12, &n, 4);
	assert_int_equal(raw_call(&r, KEYPROC_PSEUDO, p, 20), ISG_ERR_PARSE);
	n = 1;
	memcpy(p + 12, &n, 4);
	p[16] = 200; /* domain length past the body */
	assert_int_equal(raw_call(&r, KEYPROC_PSEUDO, p, sizeof(p)), ISG_ERR_PARSE);
	/* NEW_KEYS: none, too many, trailing bytes. UNWRAP: a count the body does
	 * not hold. OPEN: a sealed payload shorter than a tag. */
	uint32_t k[2] = {0, 0};
	assert_int_equal(raw_call(&r, KEYPROC_NEW_KEYS, k, 4), ISG_ERR_PARSE);
	k[0] = KEYPROC_KEYS_MAX + 1;
	assert_int_equal(raw_call(&r, KEYPROC_NEW_KEYS, k, 4), ISG_ERR_PARSE);
	k[0] = 1;
	assert_int_equal(raw_call(&r, KEYPROC_NEW_KEYS, k, 8), ISG_ERR_PARSE);
	assert_int_equal(raw_call(&r, KEYPROC_NEW_KEYS, k, 4), 0);
	k[0] = 2;
	assert_int_equal(raw_call(&r, KEYPROC_UNWRAP, k, 8), ISG_ERR_PARSE);
	uint8_t u[4 + 2 * STORE_WRAPPED_KEY_LEN + 1] = {0};
	assert_int_equal(raw_call(&r, KEYPROC_UNWRAP, u, 4), ISG_ERR_PARSE); /* none */
	uint32_t un = KEYPROC_KEYS_MAX + 1;
	memcpy(u, &un, 4);
	assert_int_equal(raw_call(&r, KEYPROC_UNWRAP, u, 4 + STORE_WRAPPED_KEY_LEN), ISG_ERR_PARSE);
	un = 1;
	memcpy(u, &un, 4);
	assert_int_equal(raw_call(&r, KEYPROC_UNWRAP, u, 4 + STORE_WRAPPED_KEY_LEN + 1),
	                 ISG_ERR_PARSE); /* a trailing byte */
	assert_int_equal(raw_call(&r, KEYPROC_UNWRAP, u, 4 + STORE_WRAPPED_KEY_LEN), 0);
	uint8_t o[4 + STORE_SEAL_NONCE_LEN + 3] = {0};
	assert_int_equal(raw_call(&r, KEYPROC_OPEN, o, sizeof(o)), ISG_ERR_PARSE);
	assert_int_equal(raw_call(&r, KEYPROC_SIGN, "not\na checkpoint\n", 17), ISG_ERR_INVALID);
	/* The log: a checkpoint (of the empty tree) and an append before the
	 * start; a start that is no tree; appends that are not whole hashes, or
	 * more than one request may carry. */
	static const char cp[] = "test-log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n";
	assert_int_equal(raw_call(&r, KEYPROC_SIGN, cp, sizeof(cp) - 1), ISG_ERR_DENIED);
	uint8_t ap[8 + AUDIT_HASH_LEN + 1] = {0};
	assert_int_equal(raw_call(&r, KEYPROC_LOG_APPEND, ap, 8 + AUDIT_HASH_LEN), ISG_ERR_DENIED);
	assert_int_equal(raw_call(&r, KEYPROC_LOG_START, ap, 7), ISG_ERR_PARSE);
	ap[7] = 1; /* a tree of one leaf whose hash is missing */
	assert_int_equal(raw_call(&r, KEYPROC_LOG_START, ap, 8), ISG_ERR_PARSE);
	ap[7] = 0;
	assert_int_equal(raw_call(&r, KEYPROC_LOG_START, ap, 8), 0);
	assert_int_equal(raw_call(&r, KEYPROC_LOG_START, ap, 8), ISG_ERR_DENIED);
	assert_int_equal(raw_call(&r, KEYPROC_SIGN, cp, sizeof(cp) - 1), 0);
	assert_int_equal(raw_call(&r, KEYPROC_LOG_APPEND, ap, 8), ISG_ERR_PARSE);
	assert_int_equal(raw_call(&r, KEYPROC_LOG_APPEND, ap, 8 + AUDIT_HASH_LEN + 1),
	                 ISG_ERR_PARSE);
	size_t big = 8 + (KEYPROC_LOG_APPEND_MAX + 1) * (size_t)AUDIT_HASH_LEN;
	uint8_t *many = calloc(1, big);
	assert_non_null(many);
	assert_int_equal(raw_call(&r, KEYPROC_LOG_APPEND, many, (uint32_t)big), ISG_ERR_TOO_BIG);
	free(many);
	assert_int_equal(raw_call(&r, KEYPROC_LOG_APPEND, ap, 8 + AUDIT_HASH_LEN), 0);
	/* Still serving; then a frame over the limit closes the channel, and the process exits. */
	assert_int_equal(raw_call(&r, KEYPROC_LOAD, NULL, 0), 0);
	uint32_t huge = KEYPROC_FRAME_MAX + 1;
	assert_int_equal(write_part(r.fd, &huge, 4), 0);
	uint8_t byte;
	assert_int_not_equal(keyproc_read_full(r.fd, &byte, 1), 0);
	int st;
	assert_int_equal(waitpid(r.pid, &st, 0), r.pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	close(r.fd);
}

/*
 * A PSEUDO request whose answer could not fit a frame is refused with an
 * error before anything is computed, and the channel serves on.
 */
static void test_pseudo_too_many_refused(void **state)
{
	struct fixture *f = *state;
	struct raw r;
	raw_start(f, &r);
	assert_int_equal(raw_call(&r, KEYPROC_LOAD, NULL, 0), 0); /* generation 1 */
	uint32_t gen = 1, n = KEYPROC_PSEUDO_MAX + 1;
	const size_t item = 1 + 5 + 1 + 4; /* "audit", a type, an empty value */
	size_t size = 16 + (size_t)n * item;
	uint8_t *body = calloc(1, size);
	assert_non_null(body);
	memcpy(body, &gen, 4);
	memcpy(body + 12, &n, 4);
	for (uint32_t i = 0; i < n; i++) {
		uint8_t *p = body + 16 + (size_t)i * item;
		p[0] = 5;
		memcpy(p + 1, "audit", 5);
		p[6] = PSEUDO_NHS_NUMBER;
	}
	assert_int_equal(raw_call(&r, KEYPROC_PSEUDO, body, (uint32_t)size), ISG_ERR_TOO_BIG);
	n = 1;
	memcpy(body + 12, &n, 4);
	assert_int_equal(raw_call(&r, KEYPROC_PSEUDO, body, 16 + item), 0);
	free(body);
	close(r.fd);
	int st;
	assert_int_equal(waitpid(r.pid, &st, 0), r.pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/*
 * A batch whose answer (about 48 bytes a pseudonym) would be larger than a
 * frame goes to the key process in parts, each answer back in its place,
 * and the only channel still answers pseudonyms and data keys after.
 */
static void test_pseudo_batch_over_a_frame_split(void **state)
{
	struct fixture *f = *state;
	struct keyproc_options o = {.keys_dir = f->dir, .audit_origin = "test-log", .channels = 1};
	char err[512] = "";
	assert_int_equal(keyproc_start(&o, &f->kp, err, sizeof(err)), 0);
	struct keyproc_ring *ring;
	assert_int_equal(keyproc_ring_load(f->kp, &ring, err, sizeof(err)), 0);
	struct pseudo_service svc = keyproc_ring_service(ring);
	static const char *const nhs[2] = {"9434765919", "4010232137"};
	char want[2][PSEUDO_TEXT_MAX];
	for (int v = 0; v < 2; v++) {
		struct pseudo_request one = {
		    .domain = "audit", .type = PSEUDO_NHS_NUMBER, .norm = nhs[v], .len = 10};
		assert_int_equal(svc.pseudonymise(svc.ctx, &one, 1, 20000), 0);
		memcpy(want[v], one.out, sizeof(one.out));
	}
	assert_string_not_equal(want[0], want[1]);
	/* 999 a part, odd, so the parts' boundaries and the requests' fall apart. */
	enum { EACH = 999 };
	struct pseudo_request *reqs = calloc(EACH, sizeof(*reqs));
	assert_non_null(reqs);
	for (size_t i = 0; i < EACH; i++)
		reqs[i] = (struct pseudo_request){
		    .domain = "audit", .type = PSEUDO_NHS_NUMBER, .norm = nhs[i % 2], .len = 10};
	size_t n_parts = KEYPROC_PSEUDO_MAX * 2 / EACH + 1;
	struct pseudo_batch *parts = calloc(n_parts, sizeof(*parts));
	assert_non_null(parts);
	for (size_t k = 0; k < n_parts; k++)
		parts[k] = (struct pseudo_batch){reqs, EACH};
	assert_int_equal(svc.pseudonymise_parts(svc.ctx, parts, n_parts, 20000), 0);
	for (size_t i = 0; i < EACH; i++)
		assert_string_equal(reqs[i].out, want[i % 2]);
	struct store_sealer s = keyproc_sealer(f->kp);
	uint8_t k[32], w[STORE_WRAPPED_KEY_LEN];
	assert_int_equal(s.new_keys(s.ctx, 1, k, w), 0);
	sodium_memzero(k, sizeof(k));
	int st;
	assert_false(keyproc_exited(f->kp, &st));
	free(parts);
	free(reqs);
	keyproc_ring_free(ring);
}

struct blast {
	pthread_t target;
	atomic_bool done;
	atomic_uint sent;
};

static void on_usr1(int sig)
{
	(void)sig;
}

/* Signals without SA_RESTART end a blocking sendmsg early, after part of it. */
static void *blast_main(void *arg)
{
	struct blast *b = arg;
	while (!atomic_load(&b->done)) {
		pthread_kill(b->target, SIGUSR1);
		atomic_fetch_add(&b->sent, 1);
		usleep(20);
	}
	return NULL;
}

struct parts {
	int fd;
	struct iovec *iov;
	int n, rc;
};

static void *write_main(void *arg)
{
	struct parts *p = arg;
	p->rc = keyproc_writev_full(p->fd, p->iov, p->n);
	return NULL;
}

/*
 * A message far larger than the socket's buffer, written while signals keep
 * interrupting sendmsg so that it returns after part of a part: every byte
 * arrives once, in order, with the empty part skipped.
 */
static void test_writev_resumes_partial_writes(void **state)
{
	(void)state;
	struct sigaction sa = {.sa_handler = on_usr1}, old;
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	int small = 4096;
	assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
	struct timeval limit = {.tv_sec = 5}; /* a writer that gave up must not hang the test */
	assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit)), 0);
	static uint8_t a[3], b[200001], c[77777], got[sizeof(a) + sizeof(b) + sizeof(c)];
	randombytes_buf(a, sizeof(a));
	randombytes_buf(b, sizeof(b));
	randombytes_buf(c, sizeof(c));
	struct iovec iov[4] = {{a, sizeof(a)}, {b, sizeof(b)}, {NULL, 0}, {c, sizeof(c)}};
	struct parts p = {.fd = sv[0], .iov = iov, .n = 4, .rc = -1};
	pthread_t writer, blaster;
	assert_int_equal(pthread_create(&writer, NULL, write_main, &p), 0);
	struct blast bl = {.target = writer};
	atomic_init(&bl.done, false);
	atomic_init(&bl.sent, 0);
	assert_int_equal(pthread_create(&blaster, NULL, blast_main, &bl), 0);
	size_t at = 0;
	while (at < sizeof(got)) { /* slowly, so the writer blocks */
		size_t want = sizeof(got) - at < 997 ? sizeof(got) - at : 997;
		ssize_t n = read(sv[1], got + at, want);
		if (n <= 0)
			break;
		at += (size_t)n;
		usleep(5);
	}
	/* Every byte is read: no more signals, so none can reach a writer that has ended. */
	atomic_store(&bl.done, true);
	pthread_join(blaster, NULL);
	/* A writer still sending is sending too much: end it instead of hanging. */
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	bool ended = pthread_timedjoin_np(writer, NULL, &until) == 0;
	if (!ended) {
		shutdown(sv[1], SHUT_RDWR);
		pthread_join(writer, NULL);
	}
	sigaction(SIGUSR1, &old, NULL);
	assert_true(ended);
	assert_int_equal(p.rc, 0);
	assert_int_equal(at, sizeof(got));
	assert_true(atomic_load(&bl.sent) > 0);
	assert_memory_equal(got, a, sizeof(a));
	assert_memory_equal(got + sizeof(a), b, sizeof(b));
	assert_memory_equal(got + sizeof(a) + sizeof(b), c, sizeof(c));
	close(sv[0]); /* and nothing more was sent */
	uint8_t extra;
	assert_int_equal(read(sv[1], &extra, 1), 0);
	close(sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_pseudonyms_match_the_keys, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pseudo_uses_its_own_clock, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_seals_open_with_the_storage_key, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_store_through_the_key_process, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_signs_only_the_log_it_has_seen, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_store_witnessed_by_the_key_process, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_bad_key_file_refused_at_start, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stop_gives_the_wait_status, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_broken_channel_is_not_reused, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        test_key_process_ends_with_a_gateway_started_without_stdin, setup, teardown),
	    cmocka_unit_test_setup_teardown(
	        test_key_process_ends_with_its_gateway_without_close_range, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_threads_that_cannot_start_fail_the_start, setup,
	                                    teardown),
	    cmocka_unit_test(test_sandbox_denies_the_network),
	    cmocka_unit_test_setup_teardown(test_malformed_requests_are_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pseudo_too_many_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pseudo_batch_over_a_frame_split, setup, teardown),
	    cmocka_unit_test(test_writev_resumes_partial_writes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
