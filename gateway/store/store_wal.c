/*
 * WAL checkpoints off the commit path. SQLite's default has the committing
 * connection copy the WAL into the database file (and fsync it) once the
 * WAL holds 1000 pages, so every hundred or so sends one waits for that copy.
 * Here the writer's connection never checkpoints by itself: after a commit
 * that leaves wal_pages or more pages in the WAL not yet copied, its WAL hook
 * wakes the checkpointer thread, which copies them through a connection of
 * its own (SQLITE_CHECKPOINT_PASSIVE, which never blocks the writer). Its
 * writes and fsync still slow the commits that overlap it, so wal_pages is
 * 4000 by default (16 MB), not SQLite's 1000: a quarter as many checkpoints,
 * each hardly longer, since most of what it copies is the same hot pages.
 *
 * The WAL starts again from its beginning only at a transaction that begins
 * when every page in it has been copied, and the writer begins its next
 * batch long before a checkpointer's fsyncs are done. So once the WAL holds
 * STORE_WAL_RESTART times wal_pages, the checkpointer is woken whenever
 * anything is left to copy, and once at most a quarter of wal_pages (and at
 * most STORE_WAL_LITTLE pages) is left, the writer copies that itself
 * between two transactions, with the checkpointer held off (two
 * checkpoints at once make one busy), and the next transaction starts the
 * WAL over. Should the checkpointer fall behind, the writer copies whatever
 * is left once the WAL holds STORE_WAL_RESTART^2 times wal_pages, which
 * bounds it.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "store/store_internal.h"
#include "store/store_test.h"
#include "util/util.h"

#define STORE_WAL_RESTART 2
#define STORE_WAL_LITTLE 256 /* the most the writer copies itself to start over */

static void log_failure(sqlite3 *db, int rc, const char *who)
{
	char q[256];
	log_event(LOG_WARN, "store.wal_checkpoint_failed", "by=%s code=%d error=%s", who, rc,
	          log_quote(q, sizeof(q), store_db_errmsg(db)));
}

/*
 * A passive checkpoint; true when it copied pages. SQLite's count is of
 * every frame of this WAL copied so far, by any checkpoint, so one that
 * copied nothing gives the count the last one left (or 0, the WAL new).
 */
static bool checkpoint(struct store *s, sqlite3 *db, const char *who)
{
	int log = -1, copied = -1;
	int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
	if (rc != SQLITE_OK) {
		if (rc != SQLITE_BUSY) /* a full disk: tried again after the next commit */
			log_failure(db, rc, who);
		return false;
	}
	if (log < 0) { /* the connection does not see a WAL: nothing can be copied */
		log_event(LOG_WARN, "store.wal_checkpoint_failed", "by=%s error=\"no WAL\"", who);
		return false;
	}
	uint32_t before = (uint32_t)atomic_exchange(&s->wal_copied, (uint32_t)copied);
	return copied > 0 && (uint32_t)copied != before;
}

/*
 * The writer copies what is left itself, with the checkpointer held off:
 * two checkpoints at once make one of them busy, and a busy one would not
 * let the WAL start over.
 */
static void writer_checkpoint(struct store *s, sqlite3 *db)
{
	pthread_mutex_lock(&s->wal_mu);
	while (s->wal_running)
		pthread_cond_wait(&s->wal_cv, &s->wal_mu);
	s->wal_writer = true;
	pthread_mutex_unlock(&s->wal_mu);
	checkpoint(s, db, "writer");
	pthread_mutex_lock(&s->wal_mu);
	s->wal_writer = false;
	pthread_cond_broadcast(&s->wal_cv);
	pthread_mutex_unlock(&s->wal_mu);
}

/* On the writer's thread, after every commit; pages: frames in the WAL. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
	(void)name;
	struct store *s = arg;
	uint32_t total = (uint32_t)pages;
	s->wal_commits++;              /* SQLite calls this only after a commit that wrote frames */
	if (total < s->wal_last_total) /* the WAL started over: nothing in it is copied yet */
		atomic_store(&s->wal_copied, 0);
	s->wal_last_total = total;
	uint32_t copied = atomic_load(&s->wal_copied);
	if (copied > total) /* a checkpoint of the old WAL that ended after it started over */
		copied = 0;
	uint32_t left = total - copied;
	uint64_t restart = (uint64_t)s->wal_pages * STORE_WAL_RESTART;
	uint32_t little = s->wal_pages / 4 < STORE_WAL_LITTLE ? s->wal_pages / 4 : STORE_WAL_LITTLE;
	if ((total >= restart && left <= little) || total >= restart * STORE_WAL_RESTART) {
		writer_checkpoint(s, db);
	} else if (left >= s->wal_pages || (total >= restart && left > little)) {
		/* Past the restart size, the checkpointer keeps up so the writer can start over. */
		pthread_mutex_lock(&s->wal_mu);
		if (!s->wal_wanted) {
			s->wal_wanted = true;
			pthread_cond_broadcast(&s->wal_cv);
		}
		pthread_mutex_unlock(&s->wal_mu);
	}
	return SQLITE_OK;
}

static void *wal_main(void *arg)
{
	struct store *s = arg;
	pthread_setname_np(pthread_self(), "isg-wal");
	pthread_mutex_lock(&s->wal_mu);
	for (;;) {
		while ((!s->wal_wanted || s->wal_writer) && !s->wal_closing)
			pthread_cond_wait(&s->wal_cv, &s->wal_mu);
		if (s->wal_closing)
			break;
		s->wal_wanted = false;
		s->wal_running = true;
		pthread_mutex_unlock(&s->wal_mu);
		/* After store_fail nothing more is written (store.c). */
		if (!atomic_load(&s->failed) && checkpoint(s, s->wal_db, "checkpointer"))
			atomic_fetch_add(&s->wal_checkpoints, 1);
		pthread_mutex_lock(&s->wal_mu);
		s->wal_running = false;
		pthread_cond_broadcast(&s->wal_cv);
	}
	pthread_mutex_unlock(&s->wal_mu);
	return NULL;
}

/*
 * Zeros from fd's end up to want, synced; on failure the file is cut back.
 * With less free space than twice what it would write, it writes nothing,
 * returns ENOSPC and sets *needed and *avail (else left at 0), so that the
 * log can say so: ENOSPC alone reads as "No space left on device" on a file
 * system with tens of MB free.
 */
static int zero_fill(int fd, off_t want, off_t *wrote, uint64_t *needed, uint64_t *avail)
{
	struct stat sb;
	struct statvfs fs;
	if (fstat(fd, &sb) != 0 || fstatvfs(fd, &fs) != 0)
		return errno;
	if (!S_ISREG(sb.st_mode))
		return EINVAL;
	if (sb.st_size >= want)
		return 0;
	/* Not at the cost of filling the disk, even for a moment. */
	uint64_t free_bytes = (uint64_t)fs.f_bavail * fs.f_frsize;
	if (free_bytes < 2 * (uint64_t)(want - sb.st_size)) {
		*needed = 2 * (uint64_t)(want - sb.st_size);
		*avail = free_bytes;
		return ENOSPC;
	}
	/*
	 * A page at a time. Since Linux 6.16, ext4 caches a file in folios as
	 * large as the writes that made them, and every later write into a
	 * folio walks all of its blocks: 1 MiB writes here made each of a
	 * commit's small writes into the WAL walk 256 blocks, twice.
	 */
	long page = sysconf(_SC_PAGESIZE);
	const off_t chunk = page > 0 ? page : 4096;
	char *zeros = calloc(1, (size_t)chunk);
	if (!zeros)
		return ENOMEM;
	int e = 0;
	for (off_t at = sb.st_size; at < want && e == 0;) {
		off_t n = chunk - at % chunk; /* up to the next page boundary */
		if (n > want - at)
			n = want - at;
		ssize_t w = pwrite(fd, zeros, (size_t)n, at);
		if (w > 0)
			at += w;
		else if (w == 0)
			e = EIO;
		else if (errno != EINTR)
			e = errno;
	}
	free(zeros);
	if (e == 0 && fdatasync(fd) != 0)
		e = errno;
	if (e == 0)
		*wrote = want - sb.st_size;
	else if (ftruncate(fd, sb.st_size) != 0) {
		char q[128];
		log_event(LOG_WARN, "store.wal_truncate_failed", "error=%s",
		          log_quote(q, sizeof(q), strerror(errno)));
	}
	return e;
}

/* The store's WAL file opened apart from SQLite, for writing: -1 and errno
 * when it cannot be. Without blocking, as a FIFO in its place would. */
static int wal_open(const struct store *s)
{
	const char *wal = sqlite3_filename_wal(sqlite3_db_filename(s->db, "main"));
	if (!wal) {
		errno = ENOMEM;
		return -1;
	}
	return open(wal, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
}

/*
 * Write the WAL's first STORE_WAL_RESTART * wal_pages frames as zeros when
 * the store opens. A commit that extends the file makes its fdatasync
 * write the file's size as well (on ext4 with a journal, a journal commit),
 * and isgd's WAL starts empty after every start (the last close copies and
 * removes it), so until the WAL first started over every commit paid for
 * that: the first 900 or so single-record sends, at about half again the
 * latency of the rest. Overwriting blocks already written changes nothing
 * but the data. Zeros are safe there: SQLite reads a WAL only as far as its
 * frames' salts and checksums hold (a frame of page 0 never does), and an
 * empty WAL is one whose header does not. Only what lies past the file's
 * end is written, so frames left by a crash are not touched, and under the
 * WAL's write lock, so no other connection's frames can land there
 * meanwhile. Best effort: without the room, the zeros are taken back and
 * the store runs as before.
 */
static void wal_preallocate(struct store *s)
{
	int64_t page = 0;
	bool found = false;
	off_t wrote = 0;
	uint64_t needed = 0, avail = 0;
	int e;
	if (store_db_query_int(s->db, "PRAGMA page_size", &page, &found) != SQLITE_OK ||
	    page <= 0) {
		e = EINVAL;
	} else if (store_db_step_done(s, s->stmt[ST_BEGIN], "wal.begin") != 0) {
		e = EBUSY;
	} else {
		int fd = wal_open(s);
		off_t want = 32 + (off_t)s->wal_pages * STORE_WAL_RESTART * (page + 24);
		e = fd < 0 ? errno : zero_fill(fd, want, &wrote, &needed, &avail);
		if (fd >= 0)
			close(fd);
		/* An empty transaction: it writes nothing. */
		if (store_db_step_done(s, s->stmt[ST_COMMIT], "wal.commit") != 0)
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	}
	char q[128];
	if (e == ENOSPC && needed > 0)
		log_event(
		    LOG_WARN, "store.wal_not_preallocated",
		    "error=\"too little free space: writing the WAL ahead needs twice what it "
		    "writes\" needed=%llu free=%llu",
		    (unsigned long long)needed, (unsigned long long)avail);
	else if (e != 0)
		log_event(LOG_WARN, "store.wal_not_preallocated", "error=%s",
		          log_quote(q, sizeof(q), strerror(e)));
	else if (wrote > 0)
		log_event(LOG_INFO, "store.wal_preallocated", "bytes=%lld", (long long)wrote);
}

int store_wal_start(struct store *s, uint32_t wal_pages, char *err, size_t errlen)
{
	s->wal_pages = wal_pages ? wal_pages : STORE_DEFAULT_WAL_PAGES;
	if (pthread_mutex_init(&s->wal_mu, NULL) != 0) {
		store_seterr(err, errlen, "store: out of memory");
		return ISG_ERR_NOMEM;
	}
	if (pthread_cond_init(&s->wal_cv, NULL) != 0) {
		pthread_mutex_destroy(&s->wal_mu);
		store_seterr(err, errlen, "store: out of memory");
		return ISG_ERR_NOMEM;
	}
	s->wal_sync = true;
	wal_preallocate(s);
	/* For a held batch's sync (store.c): without it, every commit syncs. */
	s->wal_fd = wal_open(s);
	if (s->wal_fd < 0 && s->hold_us > 0) {
		char q[128];
		log_event(LOG_WARN, "store.hold_off", "error=%s",
		          log_quote(q, sizeof(q), strerror(errno)));
	}
	/*
	 * A new connection learns that the file is in WAL mode when it first reads
	 * it; until then a checkpoint through it copies nothing. Hence the read.
	 * synchronous=FULL makes its checkpoints fsync the file, as the writer's do.
	 */
	int rc = sqlite3_open_v2(s->path, &s->wal_db, SQLITE_OPEN_READWRITE, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_busy_timeout(s->wal_db, STORE_BUSY_TIMEOUT_MS);
		rc = sqlite3_exec(s->wal_db,
		                  "PRAGMA synchronous = FULL; SELECT count(*) FROM sqlite_schema",
		                  NULL, NULL, NULL);
	}
	if (rc != SQLITE_OK) {
		store_seterr(err, errlen, "store '%s': cannot open for checkpoints: %s", s->path,
		             s->wal_db ? store_db_errmsg(s->wal_db) : sqlite3_errstr(rc));
		return ISG_ERR_STORE;
	}
	if (pthread_create(&s->wal_thread, NULL, wal_main, s) != 0) {
		store_seterr(err, errlen, "store: cannot start the checkpointer thread");
		return ISG_ERR_NOMEM;
	}
	s->wal_started = true;
	/* Replaces SQLite's own hook, and so its automatic checkpoints. */
	sqlite3_wal_hook(s->db, wal_hook, s);
	return 0;
}

void store_wal_stop(struct store *s)
{
	if (s->wal_started) {
		pthread_mutex_lock(&s->wal_mu);
		s->wal_closing = true;
		pthread_cond_broadcast(&s->wal_cv);
		pthread_mutex_unlock(&s->wal_mu);
		pthread_join(s->wal_thread, NULL);
		s->wal_started = false;
	}
	/* Before the writer's connection: closing the last one checkpoints the WAL. */
	if (s->wal_db) {
		int rc = sqlite3_close(s->wal_db);
		if (rc != SQLITE_OK)
			log_failure(s->wal_db, rc, "close");
		s->wal_db = NULL;
	}
	if (s->wal_fd >= 0) {
		close(s->wal_fd);
		s->wal_fd = -1;
	}
	if (s->wal_sync) {
		pthread_cond_destroy(&s->wal_cv);
		pthread_mutex_destroy(&s->wal_mu);
		s->wal_sync = false;
	}
}

uint64_t store_test_wal_checkpoints(struct store *s)
{
	return atomic_load(&s->wal_checkpoints);
}

void store_test_wal_preallocate(struct store *s, uint32_t wal_pages)
{
	s->wal_pages = wal_pages;
	wal_preallocate(s);
}
