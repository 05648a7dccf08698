/*
 * The store's SQLite file: recognising an existing store without touching it,
 * creating a new one atomically, pragmas, and the cached statements.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store_internal.h"
#include "util/util.h"

/*
 * A sealed payload of STORE_PAYLOAD_APART bytes or more, under its
 * message's id, apart from the message's row: it is deleted under
 * secure_delete=FAST (store_jobs.c), while messages is only ever changed
 * under ON. A smaller one stays in messages.payload.
 */
#define PAYLOADS_SQL "CREATE TABLE payloads(id INTEGER PRIMARY KEY, data BLOB NOT NULL);"

static const char *const schema_sql =
    "CREATE TABLE meta("
    " key TEXT PRIMARY KEY NOT NULL,"
    " value NOT NULL);"
    "CREATE TABLE audit("
    " seq INTEGER PRIMARY KEY,"
    " at INTEGER NOT NULL,"
    " kind TEXT NOT NULL,"
    " entry BLOB NOT NULL);"
    "CREATE TABLE checkpoints("
    " size INTEGER PRIMARY KEY,"
    " at INTEGER NOT NULL,"
    " note TEXT NOT NULL);"
    "CREATE TABLE messages("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " sender TEXT NOT NULL,"
    " message_id TEXT NOT NULL,"
    " recipient TEXT NOT NULL,"
    " agreement_id TEXT NOT NULL,"
    " agreement_version INTEGER NOT NULL,"
    " purpose TEXT NOT NULL,"
    " dataset TEXT NOT NULL,"
    " reply_to INTEGER NOT NULL DEFAULT 0,"
    " request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),"
    " record_count INTEGER NOT NULL,"
    " accepted_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL,"
    " audit_index INTEGER NOT NULL,"
    " state INTEGER NOT NULL CHECK (state BETWEEN 0 AND 3),"
    " nonce BLOB,"
    " payload BLOB,"
    " ad INTEGER NOT NULL DEFAULT 1,"
    " UNIQUE (sender, message_id));"
    "CREATE INDEX messages_pending ON messages(recipient, id) WHERE state IN (0, 1);"
    "CREATE INDEX messages_expiry ON messages(expires_at) WHERE state IN (0, 1);"
    "CREATE INDEX messages_accepted ON messages(accepted_at);" PAYLOADS_SQL;

static const char *const stmt_sql[ST_COUNT] = {
    [ST_MSG_BY_SENDER_ID] = "SELECT id, request_hash, audit_index, accepted_at, record_count"
                            " FROM messages WHERE sender = ?1 AND message_id = ?2",
    [ST_REPLY_CHECK] = "SELECT 1 FROM messages WHERE id = ?1 AND sender = ?2 AND recipient = ?3",
    [ST_AUDIT_INSERT] = "INSERT INTO audit(seq, at, kind, entry) VALUES (?1, ?2, ?3, ?4)",
    [ST_MSG_INSERT] = "INSERT INTO messages(sender, message_id, recipient, agreement_id,"
                      " agreement_version, purpose, dataset, reply_to, request_hash,"
                      " record_count, accepted_at, expires_at, audit_index, state, nonce,"
                      " payload, ad) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,"
                      " ?12, ?13, 0, ?14, ?15, ?16)",
    [ST_FETCH] = "SELECT id, sender, message_id, agreement_id, agreement_version, purpose,"
                 " dataset, reply_to, accepted_at, audit_index, state, nonce,"
                 " coalesce(payload, (SELECT data FROM payloads WHERE payloads.id = messages.id)),"
                 " expires_at, ad"
                 " FROM messages WHERE recipient = ?1 AND id > ?2 AND state IN (0, 1)"
                 " AND expires_at > ?3 ORDER BY id LIMIT ?4",
    [ST_MARK_DELIVERED] = "UPDATE messages SET state = 1 WHERE id = ?1 AND state = 0",
    [ST_ACK_SELECT] = "SELECT " STORE_MSG_REF_COLUMNS " FROM messages WHERE id = ?1"
                      " AND recipient = ?2 AND state IN (0, 1) AND expires_at > ?3",
    [ST_SET_FINAL_STATE] = "UPDATE messages SET state = ?2, nonce = NULL, payload = NULL"
                           " WHERE id = ?1",
    [ST_EXPIRED_SELECT] = "SELECT " STORE_MSG_REF_COLUMNS " FROM messages"
                          " WHERE state IN (0, 1) AND expires_at <= ?1"
                          " ORDER BY expires_at LIMIT ?2",
    [ST_CHECKPOINT_INSERT] = "INSERT INTO checkpoints(size, at, note) VALUES (?1, ?2, ?3)",
    [ST_PAYLOAD_INSERT] = "INSERT INTO payloads(id, data) VALUES (?1, ?2)",
    [ST_PAYLOAD_DELETE] = "DELETE FROM payloads WHERE id = ?1",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_SAVEPOINT] = "SAVEPOINT j",
    [ST_RELEASE] = "RELEASE j",
};

static int map_rc(int rc)
{
	return (rc & 0xff) == SQLITE_FULL ? ISG_ERR_FULL : ISG_ERR_STORE;
}

const char *store_db_errmsg(sqlite3 *db)
{
	/* SQLite's unix VFS reports a write cut short by a full disk as
	 * SQLITE_FULL with no errno, so SQLITE_FULL alone says it. */
	int rc = sqlite3_extended_errcode(db) & 0xff;
	if (rc == SQLITE_FULL ||
	    ((rc == SQLITE_IOERR || rc == SQLITE_CANTOPEN) && sqlite3_system_errno(db) == ENOSPC))
		return "disk full (no space left on the store's file system)";
	return sqlite3_errmsg(db);
}

static void log_sqlite(sqlite3 *db, int rc, const char *op)
{
	char q[512];
	log_event(LOG_ERROR, "store.sqlite_error", "op=%s code=%d error=%s", op, rc,
	          log_quote(q, sizeof(q), db ? store_db_errmsg(db) : sqlite3_errstr(rc)));
}

/*
 * A full disk, as store_db_errmsg tells it: SQLITE_FULL, or an I/O error
 * whose cause was ENOSPC (mapping the WAL index, say), which SQLite meets
 * before it has written a commit's last frame, so the transaction is rolled
 * back whole and nothing of it is stored. A COMMIT's failure is judged
 * apart (store_db_commit): ENOSPC from a sync is not this.
 */
static int map_err(sqlite3 *db, int rc)
{
	int code = rc & 0xff;
	if (code == SQLITE_IOERR && db && sqlite3_system_errno(db) == ENOSPC)
		return ISG_ERR_FULL;
	return map_rc(rc);
}

int store_db_fail(struct store *s, int rc, const char *op)
{
	log_sqlite(s->db, rc, op);
	return map_err(s->db, rc);
}

/*
 * SQLite writes a commit's frames, the last one marking the commit, then
 * syncs the WAL, and only then publishes the commit in the WAL index. A
 * write that finds the disk full (SQLITE_FULL) leaves the last frame
 * incomplete, so recovery never replays it: nothing is stored. The commit
 * hook's refusal (tests) writes nothing. Any other failure may come after
 * the last frame reached the file: a failed fsync (whatever its errno,
 * ENOSPC too), or mapping the WAL index after the sync. SQLite then rolls
 * back in memory, and the next commit would write over those frames, but
 * until then WAL recovery at the next open replays them: the outcome is
 * unknown (ISG_ERR_UNKNOWN), and this process's view of the file cannot be
 * trusted any more.
 */
int store_db_commit(struct store *s, sqlite3_stmt *st, const char *op)
{
	int rc = sqlite3_step(st);
	int ret = 0;
	if (rc != SQLITE_DONE) {
		log_sqlite(s->db, rc, op);
		if ((rc & 0xff) == SQLITE_FULL)
			ret = ISG_ERR_FULL;
		else if (rc == SQLITE_CONSTRAINT_COMMITHOOK)
			ret = ISG_ERR_STORE;
		else
			ret = ISG_ERR_UNKNOWN;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return ret;
}

int store_db_exec(struct store *s, const char *sql, const char *op)
{
	int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : store_db_fail(s, rc, op);
}

int store_db_step_done(struct store *s, sqlite3_stmt *st, const char *op)
{
	int rc = sqlite3_step(st);
	int ret = rc == SQLITE_DONE ? 0 : store_db_fail(s, rc, op);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return ret;
}

/* --- recognising an existing file ------------------------------------------ */

/*
 * Read the first 16 bytes ourselves: SQLite is never given a file that is
 * not one of its own. Opened without blocking, so a FIFO is refused below
 * instead of waited on for a writer.
 */
static int check_header(const char *path, char *err, size_t errlen)
{
	static const char magic[16] = "SQLite format 3";
	char hdr[16];
	struct stat st;
	int rc = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		int e = errno;
		store_seterr(err, errlen, "store '%s': cannot open: %s", path, strerror(e));
		return e == EACCES ? ISG_ERR_DENIED : ISG_ERR_IO;
	}
	if (fstat(fd, &st) != 0) {
		store_seterr(err, errlen, "store '%s': cannot stat: %s", path, strerror(errno));
		rc = ISG_ERR_IO;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		store_seterr(err, errlen, "store '%s' is not a regular file", path);
		rc = ISG_ERR_CORRUPT;
		goto out;
	}
	ssize_t n;
	do
		n = pread(fd, hdr, sizeof(hdr), 0);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		store_seterr(err, errlen, "store '%s': cannot read: %s", path, strerror(errno));
		rc = ISG_ERR_IO;
		goto out;
	}
	if (n == 0) {
		/* Not a store isgd made: it makes one whole under another name
		 * and links it into place. */
		store_seterr(
		    err, errlen,
		    "store '%s' is an empty file, not a store; refusing to use it: restore "
		    "the latest backup there, or, for a new gateway, remove the file and "
		    "start isgd once with --new-store",
		    path);
		rc = ISG_ERR_CORRUPT;
		goto out;
	}
	if ((size_t)n < sizeof(hdr) || memcmp(hdr, magic, sizeof(magic)) != 0) {
		store_seterr(err, errlen,
		             "store '%s' is not an SQLite database; refusing to use it", path);
		rc = ISG_ERR_CORRUPT;
		goto out;
	}
out:
	close(fd);
	return rc;
}

int store_db_reader(const struct store *s, sqlite3 **db)
{
	int rc = sqlite3_open_v2(s->path, db, SQLITE_OPEN_READONLY, NULL);
	if (rc == SQLITE_OK)
		sqlite3_busy_timeout(*db, STORE_BUSY_TIMEOUT_MS);
	return rc;
}

int store_db_query_int(sqlite3 *db, const char *sql, int64_t *v, bool *found)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return rc;
	rc = sqlite3_step(st);
	*found = rc == SQLITE_ROW;
	if (rc == SQLITE_ROW) {
		*v = sqlite3_column_int64(st, 0);
		rc = SQLITE_OK;
	} else if (rc == SQLITE_DONE) {
		rc = SQLITE_OK;
	}
	sqlite3_finalize(st);
	return rc;
}

static int check_meta(sqlite3 *db, const char *path, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc =
	    sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'format'", -1, &st, NULL);
	if (rc != SQLITE_OK) {
		store_seterr(err, errlen, "store '%s' is an SQLite database but not an ISG store",
		             path);
		return ISG_ERR_CORRUPT;
	}
	rc = sqlite3_step(st);
	const unsigned char *format = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
	bool ours = format && strcmp((const char *)format, STORE_FORMAT) == 0;
	sqlite3_finalize(st);
	if (!ours) {
		store_seterr(err, errlen, "store '%s' is an SQLite database but not an ISG store",
		             path);
		return ISG_ERR_CORRUPT;
	}
	int64_t version = 0;
	bool found = false;
	rc = store_db_query_int(db, "SELECT value FROM meta WHERE key = 'schema_version'", &version,
	                        &found);
	if (rc != SQLITE_OK || !found || version < 1) {
		store_seterr(err, errlen, "store '%s' has no valid schema version", path);
		return ISG_ERR_CORRUPT;
	}
	if (version > STORE_SCHEMA_VERSION) {
		store_seterr(err, errlen,
		             "store '%s' has schema version %lld; this isgd understands up to %d",
		             path, (long long)version, STORE_SCHEMA_VERSION);
		return ISG_ERR_CORRUPT;
	}
	return 0;
}

static int check_integrity(sqlite3 *db, const char *path, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	const unsigned char *res = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
	bool ok = res && strcmp((const char *)res, "ok") == 0;
	sqlite3_finalize(st);
	if (!ok) {
		store_seterr(err, errlen, "store '%s' fails SQLite's integrity check", path);
		return ISG_ERR_CORRUPT;
	}
	return 0;
}

/*
 * The URI for looking at path read-only. A store closed cleanly has no WAL
 * file: it is then opened immutable, so SQLite reads the file alone and
 * creates no -wal or -shm file beside it, and a store that is refused is
 * left exactly as it was found. With a WAL file (isgd was killed, or the
 * store is open elsewhere) committed transactions may be in it, and a plain
 * read-only connection reads them.
 */
static char *check_uri(const char *path)
{
	struct strbuf b;
	struct stat st;
	strbuf_init(&b);
	strbuf_printf(&b, "%s-wal", path);
	char *wal = strbuf_take(&b, NULL);
	if (!wal)
		return NULL;
	bool immutable = lstat(wal, &st) != 0 && errno == ENOENT;
	free(wal);
	return store_read_uri(path, immutable);
}

char *store_read_uri(const char *path, bool immutable)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, path[0] == '/' ? "file://" : "file:");
	for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
		if (*p == '?' || *p == '#' || *p == '%' || *p < 0x20 || *p == 0x7f)
			strbuf_printf(&b, "%%%02X", *p);
		else
			strbuf_append(&b, (const char *)p, 1);
	}
	strbuf_puts(&b, immutable ? "?mode=ro&immutable=1" : "?mode=ro");
	return strbuf_take(&b, NULL);
}

/*
 * Look at an existing file read-only; nothing is written to it. Then load
 * the audit log's tree from it and check it against its latest checkpoint.
 */
static int check_existing(struct store *s, const char *path, char *err, size_t errlen)
{
	sqlite3 *db = NULL;
	int64_t app_id = 0;
	bool found = false;
	int rc = check_header(path, err, errlen);
	if (rc)
		return rc;
	char *uri = check_uri(path);
	if (!uri) {
		store_seterr(err, errlen, "store: out of memory");
		return ISG_ERR_NOMEM;
	}
	int src = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
	free(uri);
	if (src != SQLITE_OK) {
		store_seterr(err, errlen, "store '%s': cannot open read-only: %s", path,
		             db ? store_db_errmsg(db) : sqlite3_errstr(src));
		rc = ISG_ERR_STORE;
		goto out;
	}
	sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);
	src = store_db_query_int(db, "PRAGMA application_id", &app_id, &found);
	if (src != SQLITE_OK) {
		int code = src & 0xff;
		store_seterr(err, errlen, "store '%s': cannot read: %s", path, store_db_errmsg(db));
		rc = code == SQLITE_NOTADB || code == SQLITE_CORRUPT ? ISG_ERR_CORRUPT
		                                                     : ISG_ERR_STORE;
		goto out;
	}
	if (!found || app_id != STORE_APPLICATION_ID) {
		store_seterr(err, errlen, "store '%s' is an SQLite database but not an ISG store",
		             path);
		rc = ISG_ERR_CORRUPT;
		goto out;
	}
	rc = check_meta(db, path, err, errlen);
	if (rc)
		goto out;
	rc = check_integrity(db, path, err, errlen);
	if (rc)
		goto out;
	rc = store_log_load(s, db, path, err, errlen);
out:
	sqlite3_close(db);
	return rc;
}

/* --- creating a new file --------------------------------------------------- */

static int already_exists(const char *path, char *err, size_t errlen)
{
	store_seterr(err, errlen,
	             "store '%s' already exists; --new-store creates a store only where there "
	             "is none: start isgd without it",
	             path);
	return ISG_ERR_CONFLICT;
}

int store_check_file(const char *path, enum store_create create, char *err, size_t errlen)
{
	struct stat st;
	if (stat(path, &st) == 0)
		return create == STORE_CREATE_ONLY ? already_exists(path, err, errlen) : 0;
	int e = errno;
	if (e != ENOENT) {
		store_seterr(err, errlen, "store '%s': cannot stat: %s", path, strerror(e));
		return e == EACCES ? ISG_ERR_DENIED : ISG_ERR_IO;
	}
	if (create == STORE_CREATE_NEVER) {
		store_seterr(err, errlen,
		             "store '%s' does not exist; if its disk was lost or its volume is not "
		             "mounted, mount it or restore the latest backup there first "
		             "(docs/operations.md, Backups and restore); for a new gateway only, "
		             "start isgd once with --new-store",
		             path);
		return ISG_ERR_NOT_FOUND;
	}
	/* A WAL file left by a lost store: SQLite would read its pages into the new one. */
	struct strbuf b;
	strbuf_init(&b);
	strbuf_printf(&b, "%s-wal", path);
	char *wal = strbuf_take(&b, NULL);
	if (!wal) {
		store_seterr(err, errlen, "store: out of memory");
		return ISG_ERR_NOMEM;
	}
	int rc = 0;
	if (lstat(wal, &st) == 0 || errno != ENOENT) {
		store_seterr(err, errlen,
		             "store '%s' does not exist, but its WAL file '%s' does: the store "
		             "file was lost or moved; put it back, or restore the latest backup "
		             "there and remove the '-wal' and '-shm' files (docs/operations.md, "
		             "Backups and restore); no store is made beside a WAL file",
		             path, wal);
		rc = ISG_ERR_CONFLICT;
	}
	free(wal);
	return rc;
}

static int fsync_parent(const char *path)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	if (!slash)
		str_copy(dir, ".", sizeof(dir));
	else if (slash == path)
		str_copy(dir, "/", sizeof(dir));
	else if ((size_t)(slash - path) < sizeof(dir))
		str_copy(dir, path, (size_t)(slash - path) + 1);
	else
		return -1;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = fsync(fd);
	close(fd);
	return rc;
}

static int init_schema(sqlite3 *db)
{
	char sql[512];
	int rc = sqlite3_exec(db, "PRAGMA application_id = 1230194481", NULL, NULL, NULL);
	_Static_assert(STORE_APPLICATION_ID == 1230194481, "application_id literal");
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, schema_sql, NULL, NULL, NULL);
	if (rc == SQLITE_OK) {
		snprintf(sql, sizeof(sql),
		         "INSERT INTO meta(key, value) VALUES ('format', '%s'),"
		         " ('schema_version', %d), ('created_at', %lld)",
		         STORE_FORMAT, STORE_SCHEMA_VERSION, (long long)time_now_ms());
		rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	}
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	/* Persistent: every later open of the file is in WAL mode. */
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL);
	return rc;
}

/*
 * Build the new store under a temporary name and link it into place, so a
 * crash never leaves a half-made file at path that the next start refuses.
 */
static int create_new(const char *path, bool exclusive, char *err, size_t errlen)
{
	char tmp[4096];
	sqlite3 *db = NULL;
	int rc = 0;
	int n = snprintf(tmp, sizeof(tmp), "%s.new-XXXXXX", path);
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		store_seterr(err, errlen, "store path '%s' is too long", path);
		return ISG_ERR_TOO_BIG;
	}
	int fd = mkstemp(tmp); /* mode 0600 */
	if (fd < 0) {
		store_seterr(err, errlen, "store '%s': cannot create: %s", path, strerror(errno));
		return ISG_ERR_IO;
	}
	int src = sqlite3_open_v2(tmp, &db, SQLITE_OPEN_READWRITE, NULL);
	if (src == SQLITE_OK)
		src = init_schema(db);
	if (src != SQLITE_OK) {
		store_seterr(err, errlen, "store '%s': cannot create: %s", path,
		             db ? store_db_errmsg(db) : sqlite3_errstr(src));
		rc = map_rc(src);
		goto out;
	}
	/* Closing the only connection checkpoints the WAL into the file. */
	src = sqlite3_close(db);
	db = NULL;
	if (src != SQLITE_OK || fsync(fd) != 0) {
		store_seterr(err, errlen, "store '%s': cannot write: %s", path,
		             src != SQLITE_OK ? sqlite3_errstr(src) : strerror(errno));
		rc = ISG_ERR_IO;
		goto out;
	}
	/* link() never replaces: if another process made the store meanwhile,
	 * use theirs, or, for a new store only, refuse it. */
	if (link(tmp, path) != 0) {
		if (errno == EEXIST) {
			rc = exclusive ? already_exists(path, err, errlen) : 0;
			goto out;
		}
		store_seterr(err, errlen, "store '%s': cannot create: %s", path, strerror(errno));
		rc = ISG_ERR_IO;
		goto out;
	}
	if (fsync_parent(path) != 0) {
		store_seterr(err, errlen, "store '%s': cannot sync its directory: %s", path,
		             strerror(errno));
		rc = ISG_ERR_IO;
		goto out;
	}
	char q[4200];
	log_event(LOG_INFO, "store.created", "path=%s", log_quote(q, sizeof(q), path));
out:
	sqlite3_close(db);
	close(fd);
	unlink(tmp);
	return rc;
}

/* --- opening for the writer ------------------------------------------------- */

static int configure(struct store *s, char *err, size_t errlen)
{
	static const char *const pragmas[] = {
	    "PRAGMA journal_mode = WAL",
	    "PRAGMA synchronous = FULL",
	    /* Freed pages are zeroed, not left behind; FAST only for a payload's
	     * delete (store_jobs.c's set_final_state). */
	    "PRAGMA secure_delete = ON",
	    "PRAGMA journal_size_limit = 67108864",
	    "PRAGMA trusted_schema = OFF",
	};
	sqlite3_extended_result_codes(s->db, 1);
	sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
	sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
	for (size_t i = 0; i < ARRAY_LEN(pragmas); i++) {
		int rc = sqlite3_exec(s->db, pragmas[i], NULL, NULL, NULL);
		if (rc != SQLITE_OK) {
			store_seterr(err, errlen, "store '%s': '%s' failed: %s", s->path,
			             pragmas[i], store_db_errmsg(s->db));
			return store_db_fail(s, rc, "configure");
		}
	}
	/* journal_mode answers with the mode in force; anything but wal is refused. */
	sqlite3_stmt *st = NULL;
	bool wal = false;
	if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		const unsigned char *mode = sqlite3_column_text(st, 0);
		wal = mode && strcmp((const char *)mode, "wal") == 0;
	}
	sqlite3_finalize(st);
	if (!wal) {
		store_seterr(err, errlen, "store '%s': cannot switch to WAL mode", s->path);
		return ISG_ERR_STORE;
	}
	return 0;
}

/*
 * A store of an older schema version is brought to this one before anything
 * else is written, in one transaction, and marked with it: an older isgd
 * then refuses it ("understands up to 4") instead of missing the payloads
 * kept apart or opening rows under the wrong associated data. Versions 2
 * and 3 changed no table, only how new payloads are sealed. Version 4 adds
 * the table payloads; the payloads already stored stay in their rows.
 * Version 5 adds messages.ad with a constant default, which SQLite records
 * in the schema without rewriting the table: every row already stored has
 * STORE_AD_V1, as it was sealed.
 */
#define ADD_AD_SQL "ALTER TABLE messages ADD COLUMN ad INTEGER NOT NULL DEFAULT 1;"

static int upgrade(struct store *s, char *err, size_t errlen)
{
	char sql[512];
	int64_t version = 0;
	bool found = false;
	int rc = store_db_query_int(s->db, "SELECT value FROM meta WHERE key = 'schema_version'",
	                            &version, &found);
	if (rc == SQLITE_OK && found && version >= STORE_SCHEMA_VERSION)
		return 0;
	if (rc == SQLITE_OK) {
		_Static_assert(STORE_AD_V1 == 1, "ADD_AD_SQL's default is STORE_AD_V1");
		snprintf(sql, sizeof(sql),
		         "BEGIN IMMEDIATE;%s%s"
		         "UPDATE meta SET value = %d WHERE key = 'schema_version';"
		         "COMMIT;",
		         version < 4 ? PAYLOADS_SQL : "", version < 5 ? ADD_AD_SQL : "",
		         STORE_SCHEMA_VERSION);
		rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
	}
	if (rc != SQLITE_OK) {
		store_seterr(err, errlen, "store '%s': cannot upgrade to schema version %d: %s",
		             s->path, STORE_SCHEMA_VERSION, store_db_errmsg(s->db));
		int ret = store_db_fail(s, rc, "upgrade");
		if (!sqlite3_get_autocommit(s->db))
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		return ret;
	}
	log_event(LOG_INFO, "store.upgraded", "from=%lld schema_version=%d", (long long)version,
	          STORE_SCHEMA_VERSION);
	return 0;
}

/*
 * Gateway ids are never handed out twice, even after the store is put back
 * from a copy (operations.md, "Restoring"): the ids given out after the
 * copy was taken are not in it. Each was given out with an audit entry in
 * the same transaction, at most STORE_IDS_PER_MS a millisecond, and each
 * open skips that many ids for every millisecond since the later of the
 * newest entry and the last skip (meta 'ids_skipped_at'), so the ids a
 * store moves on by after a moment never outrun 1,000 for each millisecond
 * since, and the one skip of a restored copy puts its next id past all of
 * them. A store that only stopped skips ids for its time down, which costs
 * nothing: ids are opaque and never promised to be consecutive. Kept below
 * 2^53, where JSON readers still count exactly (some 285 years of skips).
 */
#define STORE_IDS_PER_MS 1000
#define STORE_ID_MAX ((INT64_C(1) << 53) - 1)

static int skip_ids_since_last_entry(struct store *s, char *err, size_t errlen)
{
	int64_t last = 0;
	bool found = false;
	int rc = store_db_query_int(
	    s->db,
	    "SELECT max(coalesce((SELECT at FROM audit ORDER BY seq DESC LIMIT 1), -1),"
	    " coalesce((SELECT value FROM meta WHERE key = 'ids_skipped_at'), -1))",
	    &last, &found);
	int64_t now = time_now_ms();
	if (rc == SQLITE_OK && (last < 0 || now <= last))
		return 0; /* a new store, or a clock behind the log: nothing to skip */
	if (rc == SQLITE_OK) {
		int64_t span = now - last;
		int64_t skip =
		    span > STORE_ID_MAX / STORE_IDS_PER_MS ? STORE_ID_MAX : span * STORE_IDS_PER_MS;
		char sql[600];
		snprintf(
		    sql, sizeof(sql),
		    "BEGIN IMMEDIATE;"
		    "INSERT INTO sqlite_sequence(name, seq) SELECT 'messages', 0"
		    " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messages');"
		    "UPDATE sqlite_sequence SET seq = max(seq, min(seq + %lld, %lld))"
		    " WHERE name = 'messages';"
		    "INSERT OR REPLACE INTO meta(key, value) VALUES ('ids_skipped_at', %lld);"
		    "COMMIT;",
		    (long long)skip, (long long)STORE_ID_MAX, (long long)now);
		rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
	}
	if (rc == SQLITE_OK)
		return 0;
	store_seterr(err, errlen, "store '%s': cannot move its gateway ids on: %s", s->path,
	             store_db_errmsg(s->db));
	int ret = store_db_fail(s, rc, "skip_ids");
	if (!sqlite3_get_autocommit(s->db))
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	return ret;
}

static int prepare_all(struct store *s, char *err, size_t errlen)
{
	for (size_t i = 0; i < ST_COUNT; i++) {
		int rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
		                            &s->stmt[i], NULL);
		if (rc != SQLITE_OK) {
			store_seterr(err, errlen, "store '%s': cannot prepare statement %zu: %s",
			             s->path, i, store_db_errmsg(s->db));
			return store_db_fail(s, rc, "prepare");
		}
	}
	return 0;
}

/*
 * One isgd per store: two would each keep their own copy of the audit log's
 * tree and fork it. An flock on the database file, on a descriptor of its
 * own held until the store closes, taken before anything is read from the
 * file, so a second isgd is refused before it reads a tree the first may
 * still add to. flock's locks are apart from SQLite's POSIX locks on local
 * filesystems. But closing any descriptor of a file drops the process's
 * POSIX locks on it: the descriptor is closed after SQLite's connections,
 * and a second open in the same process (tests only) costs the first its
 * SQLite locks. Anything but a regular file is left to check_existing to
 * refuse.
 */
static int lock_store(struct store *s, const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		int e = errno;
		close(fd);
		if (e == EWOULDBLOCK) {
			store_seterr(err, errlen,
			             "store '%s' is in use by another process (is isgd already "
			             "running on it?)",
			             path);
			return ISG_ERR_CONFLICT;
		}
		store_seterr(err, errlen, "store '%s': cannot lock: %s", path, strerror(e));
		return ISG_ERR_IO;
	}
	s->lock_fd = fd;
	return 0;
}

int store_db_open(struct store *s, const char *path, enum store_create create, char *err,
                  size_t errlen)
{
	struct stat st;
	int rc = store_check_file(path, create, err, errlen);
	if (rc)
		return rc;
	/* Never made for STORE_CREATE_NEVER, even if it went since the check. */
	if (create != STORE_CREATE_NEVER && stat(path, &st) != 0 && errno == ENOENT) {
		rc = create_new(path, create == STORE_CREATE_ONLY, err, errlen);
		if (rc)
			return rc;
	}
	rc = lock_store(s, path, err, errlen);
	if (rc == 0)
		rc = check_existing(s, path, err, errlen);
	if (rc)
		return rc;
	int src = store_vfs_register();
	if (src != SQLITE_OK) {
		store_seterr(err, errlen, "store '%s': cannot register its SQLite VFS: %s", path,
		             sqlite3_errstr(src));
		return ISG_ERR_STORE;
	}
	src = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE, STORE_VFS);
	if (src != SQLITE_OK) {
		store_seterr(err, errlen, "store '%s': cannot open: %s", path,
		             s->db ? store_db_errmsg(s->db) : sqlite3_errstr(src));
		return map_rc(src);
	}
	rc = configure(s, err, errlen);
	if (rc == 0)
		rc = upgrade(s, err, errlen);
	if (rc == 0)
		rc = skip_ids_since_last_entry(s, err, errlen);
	if (rc)
		return rc;
	return prepare_all(s, err, errlen);
}

void store_db_close(struct store *s)
{
	for (size_t i = 0; i < ST_COUNT; i++) {
		sqlite3_finalize(s->stmt[i]);
		s->stmt[i] = NULL;
	}
	if (s->db) {
		/* After a commit of unknown outcome nothing more is written: the
		 * WAL is left for the next open's recovery, not copied and removed. */
		if (atomic_load(&s->failed))
			sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
		int rc = sqlite3_close(s->db);
		if (rc != SQLITE_OK)
			log_sqlite(s->db, rc, "close");
		s->db = NULL;
	}
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	s->lock_fd = -1;
}
