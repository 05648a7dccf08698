/*
 * store_vfs.c: a commit's WAL frames reach the file in one write, and
 * before anything can need them there: another connection's read after a
 * commit without a sync, the same connection's read of pages it spilled to
 * the WAL in the middle of a transaction, a crash after checksums were
 * rewritten in place, a reader after a commit padded to a sector; and a
 * write that fails leaves no hole in a commit.
 */
#include "store_test_util.h"

static void test_one_write_per_commit(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "m-0", "nhs-b", "first");
	assert_int_equal(send_sync(s, &m, NULL), 0);
	uint64_t before = store_test_wal_writes();
	m = fx_msg("police-a", "m-1", "nhs-b", "a single record");
	assert_int_equal(send_sync(s, &m, NULL), 0);
	/* Its row, its indexes and its audit entry: several pages, one write. */
	assert_int_equal(store_test_wal_writes() - before, 1);

	/* 200 KiB of payload is about 55 frames, more than one write holds
	 * (SQLite's unix VFS writes under 128 KiB at a time). */
	size_t big_len = 200 * 1024;
	uint8_t *big = malloc(big_len);
	assert_non_null(big);
	randombytes_buf(big, big_len);
	m = fx_msg("police-a", "m-2", "nhs-b", "");
	m.payload = big;
	m.payload_len = big_len;
	before = store_test_wal_writes();
	assert_int_equal(send_sync(s, &m, NULL), 0);
	uint64_t writes = store_test_wal_writes() - before;
	assert_in_range(writes, 2, 3);

	/* All of it is in the file, as another connection reads it. */
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 3);
	assert_int_equal(db_int(f, "SELECT length(data) FROM payloads", 0), (int64_t)big_len + 16);
	free(big);
}

static sqlite3 *open_with(const char *path, const char *vfs)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs);
	if (rc != SQLITE_OK)
		fail_msg("open %s with %s: %s", path, vfs ? vfs : "default", sqlite3_errstr(rc));
	return db;
}

static void exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("%s: %s", sql, msg ? msg : "?");
}

static int64_t query(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("prepare %s: %s", sql, sqlite3_errmsg(db));
	int rc = sqlite3_step(st);
	if (rc != SQLITE_ROW)
		fail_msg("step %s: %s", sql, sqlite3_errmsg(db));
	int64_t v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

static void assert_intact(sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL),
	                 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
	sqlite3_finalize(st);
}

/* 400 rows, n = 1 ... 400, for an INSERT ... SELECT n FROM c. */
#define ROWS "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 400)"

/* A connection through the VFS, in WAL mode with synchronous as given, a
 * page cache of 10 pages, and an empty table t(n, x). */
static sqlite3 *open_small_cache(const struct fx *f, const char *synchronous)
{
	sqlite3 *w = open_with(f->path, store_test_vfs());
	char sql[256];
	snprintf(sql, sizeof(sql),
	         "PRAGMA journal_mode = WAL; PRAGMA synchronous = %s; PRAGMA cache_size = 10;"
	         " PRAGMA wal_autocheckpoint = 0; CREATE TABLE t(n INTEGER PRIMARY KEY, x BLOB)",
	         synchronous);
	exec(w, sql);
	return w;
}

/* The store syncs every commit, which writes the frames; without a sync,
 * the commit's last frame must write them. */
static void test_commit_reaches_the_file_without_a_sync(void **state)
{
	struct fx *f = *state;
	const char *vfs = store_test_vfs();
	assert_non_null(vfs);
	sqlite3 *w = open_with(f->path, vfs);
	uint64_t before = store_test_wal_writes();
	exec(w, "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;"
	        " CREATE TABLE t(x BLOB); INSERT INTO t VALUES (randomblob(5000)), (zeroblob(7))");
	assert_true(store_test_wal_writes() > before); /* through the VFS */
	sqlite3 *r = open_with(f->path, NULL);
	assert_int_equal(query(r, "SELECT count(*) FROM t"), 2);
	assert_int_equal(query(r, "SELECT sum(length(x)) FROM t"), 5007);
	exec(w, "INSERT INTO t VALUES (zeroblob(3))");
	assert_int_equal(query(r, "SELECT count(*) FROM t"), 3);
	assert_intact(r);
	sqlite3_close(r);
	sqlite3_close(w);
}

/* A transaction larger than the page cache spills pages to the WAL before
 * its commit and reads them back from there. */
static void test_spilled_pages_read_back(void **state)
{
	struct fx *f = *state;
	sqlite3 *w = open_small_cache(f, "FULL");
	uint64_t before = store_test_wal_writes();
	exec(w, "BEGIN;" ROWS " INSERT INTO t SELECT n, randomblob(1500) FROM c");
	assert_true(store_test_wal_writes() > before); /* spilled */
	assert_int_equal(query(w, "SELECT count(*) FROM t WHERE length(x) = 1500"), 400);
	exec(w, "UPDATE t SET x = zeroblob(1500) WHERE n % 2 = 0");
	assert_int_equal(query(w, "SELECT count(*) FROM t WHERE x = zeroblob(1500)"), 200);
	exec(w, "COMMIT");
	assert_intact(w);
	sqlite3 *r = open_with(f->path, NULL);
	assert_int_equal(query(r, "SELECT count(*) FROM t WHERE x = zeroblob(1500)"), 200);
	assert_int_equal(query(r, "SELECT count(*) FROM t"), 400);
	assert_intact(r);
	sqlite3_close(r);
	sqlite3_close(w);
}

/*
 * A transaction that changes pages it spilled rewrites their frames in
 * place, then the checksums of every frame after them, the commit's
 * header last. Without a sync nothing writes that header later, so it
 * must not be held back: the files copied as a crash would leave them
 * recover only as far as the checksums hold.
 */
static void test_rewritten_checksums_reach_the_file(void **state)
{
	struct fx *f = *state;
	sqlite3 *w = open_small_cache(f, "OFF");
	exec(w, ROWS " INSERT INTO t SELECT n, randomblob(1500) FROM c");
	exec(w, "BEGIN; UPDATE t SET x = zeroblob(1500); UPDATE t SET x = zeroblob(1499); COMMIT");
	char db[160], wal[160], copy[160], copy_wal[160];
	fx_path(f, db, sizeof(db), "");
	fx_path(f, wal, sizeof(wal), "-wal");
	fx_path(f, copy, sizeof(copy), ".copy");
	fx_path(f, copy_wal, sizeof(copy_wal), ".copy-wal");
	file_copy(db, copy, -1);
	file_copy(wal, copy_wal, -1);
	sqlite3 *r = open_with(copy, NULL);
	assert_int_equal(query(r, "SELECT count(*) FROM t WHERE x = zeroblob(1499)"), 400);
	assert_intact(r);
	sqlite3_close(r);
	sqlite3_close(w);
}

/* Without powersafe overwrite SQLite pads a commit to a sector boundary and
 * syncs in the middle of its last frame; the rest of that frame is still the
 * commit's, and another connection reads it. */
static void test_padded_commit_reaches_the_file(void **state)
{
	struct fx *f = *state;
	char uri[200];
	snprintf(uri, sizeof(uri), "file:%s?psow=0", f->path);
	sqlite3 *w = NULL;
	assert_int_equal(
	    sqlite3_open_v2(uri, &w, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
	                    store_test_vfs()),
	    SQLITE_OK);
	exec(w, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
	        " CREATE TABLE t(n INTEGER PRIMARY KEY, x BLOB)");
	sqlite3 *r = open_with(f->path, NULL);
	for (int i = 1; i <= 20; i++) {
		exec(w, "INSERT INTO t VALUES (NULL, randomblob(700))");
		assert_int_equal(query(r, "SELECT count(*) FROM t WHERE length(x) = 700"), i);
	}
	assert_intact(r);
	sqlite3_close(r);
	sqlite3_close(w);
}

/*
 * Frames a transaction spilled can still be held when a later statement's
 * read fails to write them (a full disk). Reported as a full disk, that
 * statement could be undone alone and the rest committed, frames the file
 * does not hold and all: the failure must take the whole transaction back.
 */
static void test_failed_write_leaves_no_hole(void **state)
{
	struct fx *f = *state;
	sqlite3 *w = open_small_cache(f, "FULL");
	exec(w, "BEGIN; SAVEPOINT a;" ROWS " INSERT INTO t SELECT n, randomblob(1500) FROM c;"
	        " RELEASE a; SAVEPOINT b");
	store_test_fail_wal_writes(1);
	assert_int_not_equal(
	    sqlite3_exec(w, "UPDATE t SET x = zeroblob(1500) WHERE n % 2 = 0", NULL, NULL, NULL),
	    SQLITE_OK);
	store_test_fail_wal_writes(0);
	sqlite3_exec(w, "ROLLBACK TO b", NULL, NULL, NULL);
	sqlite3_exec(w, "COMMIT", NULL, NULL, NULL);
	sqlite3 *r = open_with(f->path, NULL);
	assert_intact(r);
	int64_t n = query(r, "SELECT count(*) FROM t");
	if (n != 0) /* committed after all: then all of it */
		assert_int_equal(query(r, "SELECT count(*) FROM t WHERE length(x) = 1500"), 400);
	sqlite3_close(r);
	sqlite3_close(w);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	log_set_level(LOG_WARN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_one_write_per_commit, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_commit_reaches_the_file_without_a_sync, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_spilled_pages_read_back, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_rewritten_checksums_reach_the_file, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_padded_commit_reaches_the_file, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_failed_write_leaves_no_hole, fx_setup,
	                                    fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
