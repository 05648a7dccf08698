/*
 * store: the audit log as a Merkle tree. Exact leaf bytes, the writer's tree
 * against the stored leaves (also after a failed job and a failed commit),
 * signed checkpoints (every N entries, after an idle interval, at close),
 * rebuilding at open, and stores whose log was changed refused untouched.
 */
#include "store_test_util.h"

#include <fcntl.h>
#include <stdatomic.h>

#include "audit/audit.h"

#define ORIGIN "isg-test.example/audit"

static struct audit_signer *signer_new(uint8_t first_byte)
{
	uint8_t seed[AUDIT_SEED_LEN];
	for (size_t i = 0; i < sizeof(seed); i++)
		seed[i] = (uint8_t)(first_byte + i);
	struct audit_signer *s = NULL;
	assert_int_equal(audit_signer_new(ORIGIN, seed, &s), 0);
	return s;
}

static struct audit_verifier verifier_of(const struct audit_signer *signer)
{
	char text[AUDIT_VERIFIER_KEY_MAX];
	struct audit_verifier v;
	audit_signer_verifier_key(signer, text);
	assert_int_equal(audit_verifier_parse(text, strlen(text), &v, NULL), 0);
	return v;
}

static struct store *open_audit(struct fx *f, const struct audit_signer *signer, uint32_t every,
                                int64_t interval_ms)
{
	char err[512] = "";
	struct store_options opt = {
	    .path = f->path,
	    .storage_key = f->key,
	    .signer = signer,
	    .checkpoint_every = every,
	    .checkpoint_interval_ms = interval_ms,
	};
	int rc = store_open(&opt, &f->s, err, sizeof(err));
	if (rc)
		fail_msg("store_open: %d %s", rc, err);
	return f->s;
}

/* An audit entry {"event":"test.event","who":"<who>","n":<n>}; its seq. */
static uint64_t add_entry(struct store *s, const char *who, int n)
{
	char body[128];
	snprintf(body, sizeof(body), "{\"event\":\"test.event\",\"who\":\"%s\",\"n\":%d}", who, n);
	uint64_t seq = 0;
	assert_int_equal(audit_sync(s, "test.event", body, &seq), 0);
	return seq;
}

static void add_entries(struct store *s, int n)
{
	for (int i = 0; i < n; i++)
		add_entry(s, "alice", i);
}

/* The leaf hashes of every stored entry in seq order (which must run 1..n). */
static uint8_t (*stored_leaves(const struct fx *f, uint64_t *n))[AUDIT_HASH_LEN]
{
	int64_t count = db_int(f, "SELECT count(*) FROM audit", 0);
	uint8_t(*leaves)[AUDIT_HASH_LEN] = calloc((size_t)count + 1, AUDIT_HASH_LEN);
	assert_non_null(leaves);
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	assert_int_equal(
	    sqlite3_prepare_v2(db, "SELECT seq, entry FROM audit ORDER BY seq", -1, &st, NULL),
	    SQLITE_OK);
	uint64_t i = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		assert_true(i < (uint64_t)count);
		assert_int_equal(sqlite3_column_int64(st, 0), (int64_t)(i + 1));
		audit_leaf_hash(sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1),
		                leaves[i]);
		i++;
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	assert_int_equal(i, (uint64_t)count);
	*n = i;
	return leaves;
}

/* The writer's tree equals the tree of the stored leaves; returns its size. */
static uint64_t assert_tree_matches_table(struct fx *f)
{
	uint64_t size = 0, n = 0;
	uint8_t root[AUDIT_HASH_LEN], want[AUDIT_HASH_LEN];
	assert_int_equal(store_test_audit_root(f->s, &size, root), 0);
	uint8_t(*leaves)[AUDIT_HASH_LEN] = stored_leaves(f, &n);
	assert_int_equal(size, n);
	assert_int_equal(audit_root_from_leaves((const uint8_t(*)[AUDIT_HASH_LEN])leaves, n, want),
	                 0);
	assert_memory_equal(root, want, AUDIT_HASH_LEN);
	free(leaves);
	return size;
}

/* Run SQL on the file through a connection of the test's own (store closed). */
static void raw_exec(const struct fx *f, const char *sql, const char *text_param)
{
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("prepare %s: %s", sql, sqlite3_errmsg(db));
	if (text_param)
		sqlite3_bind_text(st, 1, text_param, -1, SQLITE_TRANSIENT);
	assert_int_equal(sqlite3_step(st), SQLITE_DONE);
	assert_true(sqlite3_changes(db) > 0);
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* --- leaves ------------------------------------------------------------------------ */

/* Leaf bytes rebuilt by SQLite from the row's columns and the body given. */
static void assert_leaf(const struct fx *f, int64_t seq, const char *kind, const char *body)
{
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	assert_int_equal(
	    sqlite3_prepare_v2(
	        db,
	        "SELECT entry = CAST('{\"index\":' || seq || ',\"at\":\"' ||"
	        " strftime('%Y-%m-%dT%H:%M:%S', at / 1000, 'unixepoch') ||"
	        " printf('.%03dZ', at % 1000) || '\",\"entry\":' || ?2 || '}' AS BLOB),"
	        " kind, typeof(entry) FROM audit WHERE seq = ?1",
	        -1, &st, NULL),
	    SQLITE_OK);
	sqlite3_bind_int64(st, 1, seq);
	sqlite3_bind_text(st, 2, body, -1, SQLITE_STATIC);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	if (sqlite3_column_int(st, 0) != 1)
		fail_msg("leaf %lld is not {\"index\":...,\"at\":...,\"entry\":%s}", (long long)seq,
		         body);
	assert_string_equal((const char *)sqlite3_column_text(st, 1), kind);
	assert_string_equal((const char *)sqlite3_column_text(st, 2), "blob");
	sqlite3_finalize(st);
	sqlite3_close(db);
}

static void test_leaf_bytes(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "msg-1", "nhs-b", "payload");
	m.audit_entry =
	    "{\"event\":\"message.accepted\",\"s\":\"caf\xc3\xa9 \\\"q\\\"\",\"n\":[1,2]}";
	m.audit_len = strlen(m.audit_entry);
	struct store_receipt r;
	int64_t before = time_now_ms();
	assert_int_equal(send_sync(s, &m, &r), 0);
	assert_int_equal(r.audit_index, 1);
	assert_int_equal(fetch_count(s, "nhs-b"), 1);
	uint64_t seq = 0;
	const char *refused = "{\"event\":\"message.refused\",\"rule\":\"no-agreement\"}";
	assert_int_equal(audit_sync(s, "message.refused", refused, &seq), 0);
	assert_int_equal(seq, 3);

	assert_leaf(f, 1, "message.accepted", m.audit_entry);
	assert_leaf(f, 3, "message.refused", refused);
	/* The store's own entry: same wrapping, its body starts with its event. */
	char delivered[512];
	snprintf(delivered, sizeof(delivered),
	         "{\"event\":\"message.delivered\",\"gateway_id\":%" PRIu64
	         ",\"sender\":\"police-a\",\"recipient\":\"nhs-b\","
	         "\"agreement_id\":\"police-to-nhs-safeguarding\",\"agreement_version\":3,"
	         "\"message_id\":\"msg-1\",\"accepted_index\":1}",
	         r.gateway_id);
	assert_leaf(f, 2, "message.delivered", delivered);
	/* The at column is the instant of the leaf's "at", and the receipt's time. */
	assert_int_equal(db_int(f, "SELECT at FROM audit WHERE seq = 1", 0), r.accepted_at_ms);
	assert_true(r.accepted_at_ms >= before);
	/* Exactly one '{' before "index": nothing but the documented form. */
	assert_int_equal(db_int(f,
	                        "SELECT count(*) FROM audit WHERE substr(entry, 1, 9) ="
	                        " CAST('{\"index\":' AS BLOB) AND json_valid(entry)"
	                        " AND json_extract(entry, '$.index') = seq"
	                        " AND json_extract(entry, '$.entry.event') = kind",
	                        0),
	                 3);
}

/* --- the tree ------------------------------------------------------------------------ */

static void test_tree_matches_stored_leaves(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	uint64_t size = 99;
	uint8_t root[AUDIT_HASH_LEN], empty[AUDIT_HASH_LEN];
	assert_int_equal(store_test_audit_root(s, &size, root), 0);
	assert_int_equal(size, 0);
	audit_empty_root(empty);
	assert_memory_equal(root, empty, AUDIT_HASH_LEN);

	add_entry(s, "bob", 1);
	assert_int_equal(assert_tree_matches_table(f), 1);
	/* Sends, deliveries, acknowledgements and plain entries, some in one batch. */
	uint64_t ids[10];
	for (int i = 0; i < 10; i++) {
		char mid[16];
		snprintf(mid, sizeof(mid), "m-%d", i);
		struct store_message m = fx_msg("police-a", mid, "nhs-b", "x");
		struct store_receipt r;
		assert_int_equal(send_sync(s, &m, &r), 0);
		ids[i] = r.gateway_id;
	}
	assert_int_equal(fetch_count(s, "nhs-b"), 10);
	uint32_t acked = 0;
	size_t n_unknown = 0;
	assert_int_equal(ack_sync(s, "nhs-b", ids, 5, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, 5);
	store_test_pause(s, true);
	for (int i = 0; i < 6; i++)
		assert_int_equal(
		    store_audit(s, "test.event", "{\"event\":\"test.event\"}", 22, NULL, NULL), 0);
	store_test_pause(s, false);
	assert_int_equal(add_entry(s, "carol", 2), 33);
	assert_int_equal(assert_tree_matches_table(f), 33);
}

static void test_failed_job_leaves_no_leaf(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	add_entries(s, 3);
	/* A send that fails after its audit entry was appended: the message insert aborts. */
	assert_int_equal(store_test_exec(s, "CREATE TEMP TRIGGER boom BEFORE INSERT ON messages"
	                                    " WHEN NEW.message_id = 'boom'"
	                                    " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"),
	                 0);
	struct wait w[4];
	struct store_message boom = fx_msg("police-a", "boom", "nhs-b", "fails");
	struct store_message ok = fx_msg("police-a", "fine", "nhs-b", "works");
	const char *body = "{\"event\":\"test.event\"}";
	uint64_t commits = store_test_commits(s);
	store_test_pause(s, true);
	for (int i = 0; i < 4; i++)
		wait_init(&w[i]);
	assert_int_equal(store_audit(s, "test.event", body, strlen(body), on_audit, &w[0]), 0);
	assert_int_equal(store_send(s, &boom, on_send, &w[1]), 0);
	assert_int_equal(store_audit(s, "test.event", body, strlen(body), on_audit, &w[2]), 0);
	assert_int_equal(store_send(s, &ok, on_send, &w[3]), 0);
	store_test_pause(s, false);
	assert_int_equal(wait_for(&w[0]), 0);
	assert_int_equal(wait_for(&w[1]), ISG_ERR_STORE);
	assert_int_equal(wait_for(&w[2]), 0);
	assert_int_equal(wait_for(&w[3]), 0);
	assert_int_equal(store_test_commits(s) - commits, 1);
	/* The failed job's leaf is gone from the table and the tree; no hole. */
	assert_int_equal(w[0].seq, 4);
	assert_int_equal(w[2].seq, 5);
	assert_int_equal(w[3].receipt.audit_index, 6);
	assert_int_equal(assert_tree_matches_table(f), 6);
	assert_int_equal(add_entry(s, "dave", 1), 7);
	assert_int_equal(assert_tree_matches_table(f), 7);
	/* And the file opens again with the same tree. */
	fx_close(f);
	fx_open(f);
	assert_int_equal(assert_tree_matches_table(f), 7);
}

static void test_failed_commit_restores_tree(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	add_entries(s, 5);
	uint64_t size_before = 0, size_after = 0;
	uint8_t root_before[AUDIT_HASH_LEN], root_after[AUDIT_HASH_LEN];
	assert_int_equal(store_test_audit_root(s, &size_before, root_before), 0);
	assert_int_equal(size_before, 5);

	struct wait w[3];
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "one");
	const char *body = "{\"event\":\"test.event\"}";
	store_test_pause(s, true);
	store_test_fail_next_commit(s);
	for (int i = 0; i < 3; i++)
		wait_init(&w[i]);
	assert_int_equal(store_audit(s, "test.event", body, strlen(body), on_audit, &w[0]), 0);
	assert_int_equal(store_send(s, &m, on_send, &w[1]), 0);
	assert_int_equal(store_audit(s, "test.event", body, strlen(body), on_audit, &w[2]), 0);
	store_test_pause(s, false);
	for (int i = 0; i < 3; i++)
		assert_int_equal(wait_for(&w[i]), ISG_ERR_STORE);

	assert_int_equal(store_test_audit_root(s, &size_after, root_after), 0);
	assert_int_equal(size_after, size_before);
	assert_memory_equal(root_after, root_before, AUDIT_HASH_LEN);
	assert_int_equal(assert_tree_matches_table(f), 5);
	/* The seqs of the lost batch are given out again. */
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	assert_int_equal(r.audit_index, 6);
	assert_int_equal(assert_tree_matches_table(f), 6);
	fx_close(f);
	fx_open(f);
	assert_int_equal(assert_tree_matches_table(f), 6);
}

/* --- checkpoints ------------------------------------------------------------------------ */

struct cp_row {
	uint64_t size;
	int64_t at;
	char note[1024];
};

/* Every checkpoint row, by size; returns how many (at most max). */
static size_t read_checkpoints(const struct fx *f, struct cp_row *rows, size_t max)
{
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
	                                    "SELECT size, at, note FROM checkpoints ORDER BY size",
	                                    -1, &st, NULL),
	                 SQLITE_OK);
	size_t n = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		assert_true(n < max);
		rows[n].size = (uint64_t)sqlite3_column_int64(st, 0);
		rows[n].at = sqlite3_column_int64(st, 1);
		str_copy(rows[n].note, (const char *)sqlite3_column_text(st, 2),
		         sizeof(rows[n].note));
		n++;
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

/* Each checkpoint verifies with the signer's verifier key and covers its first size leaves. */
static void assert_checkpoints(const struct fx *f, const struct audit_signer *signer,
                               const uint64_t *sizes, size_t n_sizes)
{
	struct cp_row rows[16];
	size_t n = read_checkpoints(f, rows, ARRAY_LEN(rows));
	if (n != n_sizes)
		fail_msg("%zu checkpoints, expected %zu", n, n_sizes);
	struct audit_verifier v = verifier_of(signer);
	uint64_t n_leaves = 0;
	uint8_t(*leaves)[AUDIT_HASH_LEN] = stored_leaves(f, &n_leaves);
	int64_t now = time_now_ms();
	for (size_t i = 0; i < n; i++) {
		struct audit_checkpoint c;
		const char *reason = NULL;
		assert_int_equal(rows[i].size, sizes[i]);
		if (audit_checkpoint_open(&v, rows[i].note, strlen(rows[i].note), &c, &reason) != 0)
			fail_msg("checkpoint %zu does not open: %s", i, reason);
		assert_string_equal(c.origin, ORIGIN);
		assert_int_equal(c.size, rows[i].size);
		assert_true(c.size <= n_leaves);
		uint8_t want[AUDIT_HASH_LEN];
		assert_int_equal(
		    audit_root_from_leaves((const uint8_t(*)[AUDIT_HASH_LEN])leaves, c.size, want),
		    0);
		assert_memory_equal(c.root, want, AUDIT_HASH_LEN);
		assert_true(rows[i].at > now - 60000 && rows[i].at <= now);
	}
	free(leaves);
}

static void test_checkpoint_every_n_and_at_close(void **state)
{
	struct fx *f = *state;
	struct audit_signer *signer = signer_new(1);
	struct store *s = open_audit(f, signer, 5, 3600 * 1000);
	add_entries(s, 12);
	fx_close(f); /* the final checkpoint covers all 12 */
	const uint64_t first[] = {5, 10, 12};
	assert_checkpoints(f, signer, first, ARRAY_LEN(first));

	/* One batch of 13 passes N at once: one checkpoint for all of it; close adds none. */
	s = open_audit(f, signer, 5, 3600 * 1000);
	struct wait w[13];
	const char *body = "{\"event\":\"test.event\"}";
	store_test_pause(s, true);
	for (int i = 0; i < 13; i++) {
		wait_init(&w[i]);
		assert_int_equal(store_audit(s, "test.event", body, strlen(body), on_audit, &w[i]),
		                 0);
	}
	store_test_pause(s, false);
	for (int i = 0; i < 13; i++)
		assert_int_equal(wait_for(&w[i]), 0);
	fx_close(f);
	const uint64_t second[] = {5, 10, 12, 25};
	assert_checkpoints(f, signer, second, ARRAY_LEN(second));

	/* Closing a store that wrote nothing writes no checkpoint. */
	open_audit(f, signer, 5, 3600 * 1000);
	fx_close(f);
	assert_checkpoints(f, signer, second, ARRAY_LEN(second));
	audit_signer_free(signer);
}

/* Wait until the checkpoints table has n rows; false after about 3 s. */
static bool wait_checkpoints(const struct fx *f, int64_t n)
{
	for (int i = 0; i < 300; i++) {
		if (db_int(f, "SELECT count(*) FROM checkpoints", 0) >= n)
			return true;
		sleep_ms(10);
	}
	return false;
}

static void test_checkpoint_after_interval_when_idle(void **state)
{
	struct fx *f = *state;
	struct audit_signer *signer = signer_new(2);
	int64_t opened = time_now_ms();
	struct store *s = open_audit(f, signer, 1000, 300);
	char note[1024];
	assert_int_equal(store_latest_checkpoint(s, note, sizeof(note)), ISG_ERR_NOT_FOUND);
	/* Three entries in one commit: far fewer than N, and then nothing happens. */
	struct wait w[3];
	const char *body = "{\"event\":\"test.event\"}";
	store_test_pause(s, true);
	for (int i = 0; i < 3; i++) {
		wait_init(&w[i]);
		assert_int_equal(store_audit(s, "test.event", body, strlen(body), on_audit, &w[i]),
		                 0);
	}
	store_test_pause(s, false);
	for (int i = 0; i < 3; i++)
		assert_int_equal(wait_for(&w[i]), 0);
	/* The idle writer wakes when the interval since the last checkpoint (the open) ends. */
	assert_true(wait_checkpoints(f, 1));
	struct cp_row rows[4];
	assert_int_equal(read_checkpoints(f, rows, ARRAY_LEN(rows)), 1);
	assert_int_equal(rows[0].size, 3);
	assert_true(rows[0].at >= opened + 250);
	assert_int_equal(store_latest_checkpoint(s, note, sizeof(note)), 0);
	assert_string_equal(note, rows[0].note);
	char small[16];
	assert_int_equal(store_latest_checkpoint(s, small, sizeof(small)), ISG_ERR_TOO_BIG);
	/* Idle, and the log has not grown: no more checkpoints. */
	sleep_ms(700);
	assert_int_equal(db_int(f, "SELECT count(*) FROM checkpoints", 0), 1);

	/* Longer than the interval since the last one: the next commit brings one at once. */
	add_entry(s, "erin", 1);
	assert_true(wait_checkpoints(f, 2));
	const uint64_t sizes[] = {3, 4};
	assert_checkpoints(f, signer, sizes, ARRAY_LEN(sizes));
	fx_close(f);
	assert_checkpoints(f, signer, sizes, ARRAY_LEN(sizes));
	audit_signer_free(signer);
}

/*
 * store_checkpoint_soon (isgd's answer to a step of the wall clock): the
 * entries so far are signed at once, not an hour later; asked with nothing
 * new to sign, it signs the next entry at once.
 */
static void test_checkpoint_soon(void **state)
{
	struct fx *f = *state;
	struct audit_signer *signer = signer_new(3);
	struct store *s = open_audit(f, signer, 1000, 3600 * 1000);
	add_entries(s, 3);
	sleep_ms(100);
	assert_int_equal(db_int(f, "SELECT count(*) FROM checkpoints", 0), 0);
	store_checkpoint_soon(s);
	assert_true(wait_checkpoints(f, 1));
	const uint64_t first[] = {3};
	assert_checkpoints(f, signer, first, ARRAY_LEN(first));

	store_checkpoint_soon(s); /* nothing new: nothing to sign until the next entry */
	sleep_ms(100);
	assert_int_equal(db_int(f, "SELECT count(*) FROM checkpoints", 0), 1);
	add_entry(s, "bob", 1);
	assert_true(wait_checkpoints(f, 2));
	add_entry(s, "carol", 2); /* and then by the interval again */
	sleep_ms(200);
	assert_int_equal(db_int(f, "SELECT count(*) FROM checkpoints", 0), 2);
	fx_close(f);
	const uint64_t sizes[] = {3, 4, 5};
	assert_checkpoints(f, signer, sizes, ARRAY_LEN(sizes));
	audit_signer_free(signer);
}

/*
 * A checkpoint is written with secure_delete at ON. If a payload's delete
 * left it at FAST and ON cannot be set again, the checkpoint waits as a
 * failed one does before it is tried again: tried at once, the writer
 * would go round without pause, failing and logging, while one is due.
 */
static void test_checkpoint_waits_while_secure_delete_fails(void **state)
{
	struct fx *f = *state;
	struct audit_signer *signer = signer_new(4);
	struct store *s = open_audit(f, signer, 1000, 3600 * 1000);
	enum { ARMED = 1000000 };
	fx_fail_ack_of_kept_apart(s, ARMED, false);
	store_checkpoint_soon(s); /* due now */
	sleep_ms(300);
	int tried = ARMED - store_test_fail_secure_delete_on(s, 0);
	/* The ack's own, and the checkpoint's after its batch; then a wait. */
	assert_in_range(tried, 1, 3);
	assert_int_equal(db_int(f, "SELECT count(*) FROM checkpoints", 0), 0);
	/* Once ON can be set, the checkpoint is written after the wait. */
	assert_true(wait_checkpoints(f, 1));
	const uint64_t sizes[] = {1};
	assert_checkpoints(f, signer, sizes, ARRAY_LEN(sizes));
	fx_close(f);
	audit_signer_free(signer);
}

/*
 * A checkpoint is written outside any transaction. One due after a failed
 * batch whose ROLLBACK failed too is not written inside the transaction
 * left open (and rolled back with it): that is rolled back first.
 */
static void test_checkpoint_after_failed_rollback_is_kept(void **state)
{
	struct fx *f = *state;
	struct audit_signer *signer = signer_new(5);
	struct store *s = open_audit(f, signer, 1000, 3600 * 1000);
	/* The ack's batch fails (secure_delete stays FAST), then its ROLLBACK. */
	fx_fail_ack_of_kept_apart(s, 1, true);
	store_checkpoint_soon(s);
	assert_true(wait_checkpoints(f, 1));
	char note[1024];
	assert_int_equal(store_latest_checkpoint(s, note, sizeof(note)), 0);
	add_entry(s, "bob", 1); /* the next batch commits */
	fx_close(f);
	const uint64_t sizes[] = {1, 2};
	assert_checkpoints(f, signer, sizes, ARRAY_LEN(sizes));
	struct cp_row rows[4];
	assert_int_equal(read_checkpoints(f, rows, ARRAY_LEN(rows)), 2);
	assert_string_equal(rows[0].note, note); /* the note handed out is the one kept */
	audit_signer_free(signer);
}

/* --- the witness ------------------------------------------------------------------------ */

/*
 * A witness as the key process is one: its own tree, from the start the
 * store gives it and the leaves appended since; its signer signs only a
 * checkpoint of exactly that tree. It keeps every leaf hash given it, to
 * compare with the stored leaves. Called on the writer thread; read by the
 * test once the store is closed.
 */
struct fake_witness {
	struct audit_signer *key;    /* what it signs with */
	struct audit_signer *signer; /* the store's: through fake_sign */
	int starts;
	uint8_t start[AUDIT_TREE_ENCODED_MAX];
	size_t start_len;
	struct audit_tree tree;
	uint8_t (*leaves)[AUDIT_HASH_LEN];
	size_t n_leaves;
	atomic_int refuse;   /* appends still to refuse */
	int refused_appends; /* by refuse, or for not following the tree */
	int refused_signs;
};

/* True, and one fewer to come, while refusals are armed. */
static bool take_one(atomic_int *left)
{
	int n = atomic_load(left);
	while (n > 0 && !atomic_compare_exchange_weak(left, &n, n - 1))
		;
	return n > 0;
}

static int fake_start(void *ctx, const uint8_t *tree, size_t len)
{
	struct fake_witness *w = ctx;
	if (w->starts++ > 0 || len > sizeof(w->start) || audit_tree_decode(&w->tree, tree, len))
		return ISG_ERR_DENIED;
	memcpy(w->start, tree, len);
	w->start_len = len;
	return 0;
}

static int fake_append(void *ctx, uint64_t size, const uint8_t *hashes, size_t n)
{
	struct fake_witness *w = ctx;
	if (take_one(&w->refuse) || w->starts != 1 || size != audit_tree_size(&w->tree) || n == 0 ||
	    n > STORE_WITNESS_APPEND_MAX) {
		w->refused_appends++;
		return ISG_ERR_DENIED;
	}
	w->leaves = reallocarray(w->leaves, w->n_leaves + n, AUDIT_HASH_LEN);
	assert_non_null(w->leaves);
	memcpy(w->leaves[w->n_leaves], hashes, n * AUDIT_HASH_LEN);
	w->n_leaves += n;
	for (size_t i = 0; i < n; i++)
		assert_int_equal(audit_tree_append(&w->tree, hashes + i * AUDIT_HASH_LEN), 0);
	return 0;
}

static int fake_sign(void *ctx, const uint8_t *msg, size_t len, uint8_t sig[static AUDIT_SIG_LEN])
{
	struct fake_witness *w = ctx;
	struct audit_checkpoint c;
	uint8_t root[AUDIT_HASH_LEN];
	audit_tree_root(&w->tree, root);
	if (audit_checkpoint_parse((const char *)msg, len, &c, NULL) != 0 || w->starts != 1 ||
	    c.size != audit_tree_size(&w->tree) || memcmp(c.root, root, AUDIT_HASH_LEN) != 0) {
		w->refused_signs++;
		return ISG_ERR_DENIED;
	}
	return audit_signer_sign(w->key, msg, len, sig);
}

static void fake_init(struct fake_witness *w, struct audit_signer *key)
{
	memset(w, 0, sizeof(*w));
	w->key = key;
	uint8_t pk[AUDIT_PUBKEY_LEN];
	audit_signer_public_key(key, pk);
	assert_int_equal(audit_signer_remote(ORIGIN, pk, fake_sign, w, &w->signer), 0);
}

static void fake_release(struct fake_witness *w)
{
	audit_signer_free(w->signer);
	free(w->leaves);
}

static struct store *open_witnessed(struct fx *f, struct fake_witness *w, uint32_t every)
{
	struct store_witness sw = {.ctx = w, .start = fake_start, .append = fake_append};
	struct store_options opt = {.path = f->path,
	                            .storage_key = f->key,
	                            .signer = w->signer,
	                            .witness = &sw,
	                            .checkpoint_every = every,
	                            .checkpoint_interval_ms = 3600 * 1000};
	char err[512] = "";
	int rc = store_open(&opt, &f->s, err, sizeof(err));
	if (rc)
		fail_msg("store_open: %d %s", rc, err);
	return f->s;
}

/* The witness was given exactly the stored leaves from..n (seq from + 1 on). */
static void assert_witnessed(const struct fx *f, const struct fake_witness *w, uint64_t from)
{
	uint64_t n = 0;
	uint8_t(*leaves)[AUDIT_HASH_LEN] = stored_leaves(f, &n);
	assert_int_equal(w->n_leaves, n - from);
	assert_memory_equal(w->leaves, leaves[from], (n - from) * AUDIT_HASH_LEN);
	free(leaves);
}

/* n audit entries queued while the writer is held, so they run as one batch
 * (or as few as max_batch allows); each waited for through w, when given. */
static void queue_entries(struct store *s, int n, struct wait *w)
{
	const char *body = "{\"event\":\"test.event\"}";
	store_test_pause(s, true);
	for (int i = 0; i < n; i++)
		assert_int_equal(store_audit(s, "test.event", body, strlen(body),
		                             w && i == n - 1 ? on_audit : NULL, w),
		                 0);
}

/*
 * The witness gets the tree loaded at open, then the leaf hashes of
 * committed entries, in order, and nothing of a failed job or a failed
 * batch: its signer, which signs only the tree it has seen, signs every
 * checkpoint. The failed batch grows the store's buffer of leaves for the
 * witness past its first size, and is rolled back.
 */
static void test_witness_sees_committed_leaves_only(void **state)
{
	struct fx *f = *state;
	struct audit_signer *key = signer_new(6);
	struct fake_witness w;
	fake_init(&w, key);
	struct store *s = open_witnessed(f, &w, 5000);
	assert_int_equal(w.starts, 1);
	assert_int_equal(w.start_len, 8);
	assert_int_equal(audit_tree_size(&w.tree), 0);
	add_entries(s, 3);

	/* A job that fails after its entry was appended, in a batch that commits. */
	assert_int_equal(store_test_exec(s, "CREATE TEMP TRIGGER boom BEFORE INSERT ON messages"
	                                    " WHEN NEW.message_id = 'boom'"
	                                    " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"),
	                 0);
	struct wait ws[2];
	wait_init(&ws[0]);
	wait_init(&ws[1]);
	struct store_message boom = fx_msg("police-a", "boom", "nhs-b", "fails");
	store_test_pause(s, true);
	assert_int_equal(store_send(s, &boom, on_send, &ws[0]), 0);
	queue_entries(s, 2, &ws[1]);
	store_test_pause(s, false);
	assert_int_equal(wait_for(&ws[0]), ISG_ERR_STORE);
	assert_int_equal(wait_for(&ws[1]), 0);

	/* 1,000 committed, then a batch of 100 whose commit fails. */
	queue_entries(s, 1000, NULL);
	store_test_pause(s, false);
	assert_int_equal(add_entry(s, "bob", 1), 1006);
	struct wait lost;
	wait_init(&lost);
	queue_entries(s, 100, &lost);
	store_test_fail_next_commit(s);
	store_test_pause(s, false);
	assert_int_equal(wait_for(&lost), ISG_ERR_STORE);
	assert_int_equal(add_entry(s, "carol", 2), 1007);
	fx_close(f);

	assert_int_equal(w.refused_appends, 0);
	assert_int_equal(w.refused_signs, 0);
	assert_witnessed(f, &w, 0);
	const uint64_t sizes[] = {1007};
	assert_checkpoints(f, key, sizes, ARRAY_LEN(sizes));
	fake_release(&w);

	/* Opened again: the witness starts from the tree of the stored leaves. */
	fake_init(&w, key);
	s = open_witnessed(f, &w, 5000);
	uint64_t n = 0;
	uint8_t(*leaves)[AUDIT_HASH_LEN] = stored_leaves(f, &n);
	struct audit_tree t;
	audit_tree_init(&t);
	for (uint64_t i = 0; i < n; i++)
		assert_int_equal(audit_tree_append(&t, leaves[i]), 0);
	free(leaves);
	uint8_t enc[AUDIT_TREE_ENCODED_MAX];
	size_t enc_len = audit_tree_encode(&t, enc);
	assert_int_equal(w.start_len, enc_len);
	assert_memory_equal(w.start, enc, enc_len);
	add_entries(s, 2);
	fx_close(f);
	assert_int_equal(w.refused_signs, 0);
	assert_witnessed(f, &w, 1007);
	const uint64_t more[] = {1007, 1009};
	assert_checkpoints(f, key, more, ARRAY_LEN(more));
	fake_release(&w);
	audit_signer_free(key);
}

/*
 * A witness that refuses an append: no checkpoint then, the store serves
 * on, and the leaves are given again at the next attempt, with those that
 * came since.
 */
static void test_witness_refusal_retried(void **state)
{
	struct fx *f = *state;
	struct audit_signer *key = signer_new(7);
	struct fake_witness w;
	fake_init(&w, key);
	atomic_store(&w.refuse, 1);
	struct store *s = open_witnessed(f, &w, 3);
	add_entries(s, 3);
	assert_int_equal(add_entry(s, "dave", 1), 4); /* serving */
	assert_true(wait_checkpoints(f, 1));
	fx_close(f);
	assert_int_equal(w.refused_appends, 1);
	assert_int_equal(w.refused_signs, 0);
	assert_witnessed(f, &w, 0);
	struct cp_row rows[4];
	size_t n = read_checkpoints(f, rows, ARRAY_LEN(rows));
	assert_int_equal(n, 1);
	assert_int_equal(rows[0].size, 4);
	fake_release(&w);
	audit_signer_free(key);
}

static void test_reopen_rebuilds_tree(void **state)
{
	struct fx *f = *state;
	struct audit_signer *signer = signer_new(3);
	struct store *s = open_audit(f, signer, 4, 3600 * 1000);
	add_entries(s, 10);
	uint64_t size = 0, size2 = 0;
	uint8_t root[AUDIT_HASH_LEN], root2[AUDIT_HASH_LEN];
	assert_int_equal(store_test_audit_root(s, &size, root), 0);
	assert_int_equal(size, 10);
	fx_close(f);
	const uint64_t sizes[] = {4, 8, 10};
	assert_checkpoints(f, signer, sizes, ARRAY_LEN(sizes));

	s = open_audit(f, signer, 4, 3600 * 1000);
	assert_int_equal(store_test_audit_root(s, &size2, root2), 0);
	assert_int_equal(size2, size);
	assert_memory_equal(root2, root, AUDIT_HASH_LEN);
	char note[1024];
	assert_int_equal(store_latest_checkpoint(s, note, sizeof(note)), 0);
	assert_non_null(strstr(note, ORIGIN "\n10\n"));
	assert_int_equal(add_entry(s, "frank", 1), 11);
	assert_int_equal(assert_tree_matches_table(f), 11);
	fx_close(f);

	/* Entries after the latest checkpoint (a crash before it was written) are fine. */
	raw_exec(f, "DELETE FROM checkpoints WHERE size = 11", NULL);
	s = open_audit(f, signer, 4, 3600 * 1000);
	assert_int_equal(store_latest_checkpoint(s, note, sizeof(note)), 0);
	assert_non_null(strstr(note, ORIGIN "\n10\n"));
	assert_int_equal(assert_tree_matches_table(f), 11);
	fx_close(f);
	/* Without a signer the tree is still checked against the checkpoint's root. */
	fx_open(f);
	assert_int_equal(assert_tree_matches_table(f), 11);
	audit_signer_free(signer);
}

/* --- reading the newest entry of a kind back --------------------------------------------- */

/* Entry seq's leaf bytes as text (malloc'd). */
static char *leaf_text(const struct fx *f, int64_t seq)
{
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
	                                    "SELECT CAST(entry AS TEXT) FROM audit WHERE seq = ?1",
	                                    -1, &st, NULL),
	                 SQLITE_OK);
	sqlite3_bind_int64(st, 1, seq);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	char *text = strdup((const char *)sqlite3_column_text(st, 0));
	assert_non_null(text);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return text;
}

/* store_audit_newest(kind) must give entry want_seq with body want (NULL: ISG_ERR_NOT_FOUND). */
static void assert_newest(struct store *s, const char *kind, uint64_t want_seq, const char *want)
{
	uint64_t seq = 99;
	char *body = (char *)"x";
	size_t len = 99;
	int rc = store_audit_newest(s, kind, &seq, &body, &len);
	if (!want) {
		assert_int_equal(rc, ISG_ERR_NOT_FOUND);
		assert_null(body);
		assert_int_equal(seq, 0);
		return;
	}
	assert_int_equal(rc, 0);
	assert_int_equal(seq, want_seq);
	assert_int_equal(len, strlen(want));
	assert_string_equal(body, want);
	free(body);
	seq = 0; /* the index alone */
	assert_int_equal(store_audit_newest(s, kind, &seq, NULL, NULL), 0);
	assert_int_equal(seq, want_seq);
}

static void test_newest_entry_of_a_kind(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	assert_newest(s, "test.event", 0, NULL);
	assert_newest(s, NULL, 0, NULL);
	static const char other[] = "{\"event\":\"other.event\",\"n\":[1,2]}";
	uint64_t seq = 0;
	add_entries(s, 3);
	assert_int_equal(audit_sync(s, "other.event", other, &seq), 0);
	assert_int_equal(seq, 4);
	add_entry(s, "bob", 7);
	assert_newest(s, "test.event", 5, "{\"event\":\"test.event\",\"who\":\"bob\",\"n\":7}");
	assert_newest(s, "other.event", 4, other);
	assert_newest(s, NULL, 5, "{\"event\":\"test.event\",\"who\":\"bob\",\"n\":7}");
	assert_newest(s, "no.such", 0, NULL);
	fx_close(f);

	/* The kind column is not signed: a row it mislabels is found, and refused,
	 * whichever kind is asked for; an older entry of the leaf's kind must not
	 * pass for the newest (a start would claim its changes again). */
	raw_exec(f, "UPDATE audit SET kind = 'other.event' WHERE seq = 5", NULL);
	s = fx_open(f);
	char *body = NULL;
	size_t len = 0;
	static const char *const asked[] = {"other.event", "test.event", NULL};
	for (size_t i = 0; i < ARRAY_LEN(asked); i++) {
		seq = 0;
		assert_int_equal(store_audit_newest(s, asked[i], &seq, &body, &len),
		                 ISG_ERR_CORRUPT);
		assert_int_equal(seq, 5);
		assert_null(body);
	}
	fx_close(f);

	/* Leaves edited after their checkpoint (none here: no signer) are refused, not read. */
	static const char *const edits[] = {
	    "UPDATE audit SET entry = substr(entry, 1, length(entry) - 1) WHERE seq = 4",
	    "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), '[1,2]', '[1,2') AS BLOB)"
	    " WHERE seq = 4",
	    "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), '\"entry\":', '\"entrx\":')"
	    " AS BLOB) WHERE seq = 4",
	    "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), 'other.event', "
	    "'test.event')"
	    " AS BLOB) WHERE seq = 4",
	    "UPDATE audit SET entry = x'7b22696e646578223a342c' WHERE seq = 4",
	    "UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), '[1,2]', '\"\x01\"') AS "
	    "BLOB)"
	    " WHERE seq = 4",
	};
	raw_exec(f, "UPDATE audit SET kind = 'test.event' WHERE seq = 5", NULL);
	char *leaf = leaf_text(f, 4);
	for (size_t i = 0; i < ARRAY_LEN(edits); i++) {
		raw_exec(f, "UPDATE audit SET entry = CAST(?1 AS BLOB) WHERE seq = 4", leaf);
		raw_exec(f, edits[i], NULL);
		s = fx_open(f);
		seq = 0;
		assert_int_equal(store_audit_newest(s, "other.event", &seq, &body, &len),
		                 ISG_ERR_CORRUPT);
		assert_int_equal(seq, 4);
		assert_null(body);
		assert_newest(s, "test.event", 5,
		              "{\"event\":\"test.event\",\"who\":\"bob\",\"n\":7}");
		fx_close(f);
	}
	/* The leaf put back reads again. */
	raw_exec(f, "UPDATE audit SET entry = CAST(?1 AS BLOB) WHERE seq = 4", leaf);
	assert_newest(fx_open(f), "other.event", 4, other);
	free(leaf);
}

/* --- changed logs are refused, and left as they are ----------------------------------------- */

static void expect_refused(struct fx *f, const struct audit_signer *signer, const char *why)
{
	size_t before_len = 0, after_len = 0;
	uint8_t *before = file_slurp(f->path, &before_len);
	assert_non_null(before);
	struct stat st_before, st_after;
	assert_int_equal(stat(f->path, &st_before), 0);
	char err[512] = "";
	struct store *s = NULL;
	struct store_options opt = {.path = f->path, .storage_key = f->key, .signer = signer};
	assert_int_equal(store_open(&opt, &s, err, sizeof(err)), ISG_ERR_CORRUPT);
	assert_null(s);
	assert_non_null(strstr(err, f->path));
	if (!strstr(err, why))
		fail_msg("error '%s' does not say '%s'", err, why);
	uint8_t *after = file_slurp(f->path, &after_len);
	assert_int_equal(after_len, before_len);
	assert_memory_equal(after, before, before_len);
	assert_int_equal(stat(f->path, &st_after), 0);
	assert_int_equal(st_after.st_mtim.tv_sec, st_before.st_mtim.tv_sec);
	assert_int_equal(st_after.st_mtim.tv_nsec, st_before.st_mtim.tv_nsec);
	free(before);
	free(after);
}

/* A fresh store with six entries "who":"alice" and one checkpoint of size 6. */
static void build_log(struct fx *f, const struct audit_signer *signer)
{
	const char *suffixes[] = {"", "-wal", "-shm"};
	for (size_t i = 0; i < ARRAY_LEN(suffixes); i++) {
		char p[160];
		fx_path(f, p, sizeof(p), suffixes[i]);
		unlink(p);
	}
	struct store *s = open_audit(f, signer, 1000, 3600 * 1000);
	add_entries(s, 6);
	fx_close(f);
	assert_int_equal(db_int(f, "SELECT count(*) FROM checkpoints WHERE size = 6", 0), 1);
}

/* A checkpoint note with a NUL inside is malformed: read as a C string it
 * would be shorter than its length, and its parse would read past it (the
 * ASan build catches that without the check). */
static void test_checkpoint_note_with_nul_refused(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	add_entries(s, 1);
	fx_close(f);
	raw_exec(f,
	         "INSERT INTO checkpoints(size, at, note)"
	         " VALUES (1, 0, CAST(x'4100' || zeroblob(4000) || x'0a0a' AS TEXT))",
	         NULL);
	expect_refused(f, NULL, "audit checkpoint of size 1 is malformed");
}

static void test_changed_log_refused(void **state)
{
	struct fx *f = *state;
	struct audit_signer *signer = signer_new(4);
	static const struct {
		const char *sql, *why;
	} cases[] = {
	    {"UPDATE audit SET entry = CAST(replace(CAST(entry AS TEXT), 'alice', 'alicf') AS BLOB)"
	     " WHERE seq = 2",
	     "audit log does not match its checkpoint of size 6"},
	    {"UPDATE audit SET at = at + 1, kind = 'x' WHERE seq = 2",
	     NULL}, /* columns only: opens */
	    {"DELETE FROM audit WHERE seq = 3", "audit entry 3 is missing"},
	    {"DELETE FROM audit WHERE seq = 6",
	     "audit log does not match its checkpoint of size 6"},
	    {"UPDATE audit SET entry = (SELECT entry FROM audit WHERE seq = 3) WHERE seq = 2",
	     "audit entry 2 does not hold index 2"},
	    {"UPDATE audit SET seq = 0 WHERE seq = 1", "numbered 0"},
	    {"UPDATE checkpoints SET note = replace(note, '\n6\n', '\n5\n')", "does not verify"},
	    {"UPDATE checkpoints SET size = 5", "holds a checkpoint of size 6"},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		build_log(f, signer);
		raw_exec(f, cases[i].sql, NULL);
		if (cases[i].why) {
			expect_refused(f, signer, cases[i].why);
		} else {
			open_audit(f, signer, 1000, 3600 * 1000);
			fx_close(f);
		}
	}

	/* A correctly signed checkpoint whose root is not the log's. */
	build_log(f, signer);
	struct audit_checkpoint c = {.size = 6};
	str_copy(c.origin, ORIGIN, sizeof(c.origin));
	memset(c.root, 0x42, sizeof(c.root));
	char note[1024];
	assert_int_equal(audit_checkpoint_sign(signer, &c, note, sizeof(note), NULL, NULL), 0);
	raw_exec(f, "UPDATE checkpoints SET note = ?1 WHERE size = 6", note);
	expect_refused(f, signer, "audit log does not match its checkpoint of size 6");
	/* Also when the store is opened without a signer. */
	expect_refused(f, NULL, "audit log does not match its checkpoint of size 6");

	/* A tampered entry is found without a signer too. */
	build_log(f, signer);
	raw_exec(f, cases[0].sql, NULL);
	expect_refused(f, NULL, "audit log does not match its checkpoint of size 6");

	/* A log checkpointed with another key (or origin) is not taken for ours. */
	build_log(f, signer);
	struct audit_signer *other = signer_new(5);
	expect_refused(f, other, "does not verify with the audit signing key '" ORIGIN "'");
	audit_signer_free(other);
	uint8_t seed[AUDIT_SEED_LEN] = {4};
	for (size_t i = 0; i < sizeof(seed); i++)
		seed[i] = (uint8_t)(4 + i); /* the same key under another name */
	assert_int_equal(audit_signer_new("another-origin", seed, &other), 0);
	expect_refused(f, other, "does not verify");
	audit_signer_free(other);
	audit_signer_free(signer);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	log_set_level(LOG_WARN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_leaf_bytes, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_tree_matches_stored_leaves, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_failed_job_leaves_no_leaf, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_failed_commit_restores_tree, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_checkpoint_every_n_and_at_close, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_checkpoint_after_interval_when_idle, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_checkpoint_soon, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_checkpoint_waits_while_secure_delete_fails,
	                                    fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_checkpoint_after_failed_rollback_is_kept, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_witness_sees_committed_leaves_only, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_witness_refusal_retried, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_reopen_rebuilds_tree, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_newest_entry_of_a_kind, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_changed_log_refused, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_checkpoint_note_with_nul_refused, fx_setup,
	                                    fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
