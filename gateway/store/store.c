/*
 * The store's public functions and its writer thread. Callers queue jobs;
 * the writer takes up to max_batch of them, runs each in its own savepoint
 * of one IMMEDIATE transaction, commits once, and only then calls back.
 * The audit log's in-memory tree follows the database: it is copied before
 * each job and each batch and put back when they are rolled back, and
 * checkpoints are written between batches (store_log.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dirent.h>
#include <sys/stat.h>

#include "store/store_internal.h"
#include "store/store_test.h"
#include "util/util.h"

void store_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || errlen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* --- the queue -------------------------------------------------------------- */

static int queue_push(struct store *s, struct store_job *j)
{
	int rc = 0;
	pthread_mutex_lock(&s->mu);
	if (s->closing || atomic_load(&s->failed)) {
		rc = ISG_ERR_CLOSED;
	} else if (s->queued >= STORE_QUEUE_MAX) {
		rc = ISG_ERR_AGAIN;
	} else {
		j->next = NULL;
		if (s->tail)
			s->tail->next = j;
		else
			s->head = j;
		s->tail = j;
		s->queued++;
	}
	pthread_mutex_unlock(&s->mu);
	/* Signalled once unlocked: woken under the lock, the writer would block
	 * on it at once and need a second wake-up. */
	if (rc == 0)
		pthread_cond_signal(&s->cv);
	return rc;
}

/* Take up to max_batch jobs off the queue; mu held. */
static struct store_job *queue_take(struct store *s)
{
	struct store_job *first = s->head, *last = NULL;
	uint32_t n = 0;
	for (struct store_job *j = s->head; j && n < s->max_batch; j = j->next, n++)
		last = j;
	if (!last)
		return NULL;
	s->head = last->next;
	if (!s->head)
		s->tail = NULL;
	last->next = NULL;
	s->queued -= n;
	return first;
}

static void cond_wait_until(struct store *s, int64_t deadline_mono_us)
{
	int64_t wait = deadline_mono_us - time_mono_us();
	if (wait <= 0)
		return;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	int64_t ns = (int64_t)ts.tv_nsec + (wait % 1000000) * 1000;
	ts.tv_sec += (time_t)(wait / 1000000 + ns / 1000000000);
	ts.tv_nsec = (long)(ns % 1000000000);
	pthread_cond_timedwait(&s->cv, &s->mu, &ts);
}

/* Milliseconds to microseconds, INT64_MAX (never) kept. */
static int64_t ms_to_us(int64_t ms)
{
	return ms > INT64_MAX / 1000 ? INT64_MAX : ms * 1000;
}

/* --- one batch ---------------------------------------------------------------- */

/*
 * Run a job (or, with j NULL, the sweep) in a savepoint. Returns 0, or an error that sank the whole
 * transaction (SQLite rolled it back, or the savepoint could not be undone).
 * The job's own failure goes to *job_err and only its savepoint is undone.
 */
static int run_savepoint(struct store *s, struct store_job *j, int64_t now, bool *sweep_more,
                         int *job_err)
{
	int rc = store_db_step_done(s, s->stmt[ST_SAVEPOINT], "savepoint");
	if (rc)
		return rc;
	struct store_log before = s->log;
	int err = j ? store_job_run(s, j, now) : store_sweep(s, now, sweep_more);
	*job_err = err;
	/* Nothing more runs with secure_delete left at FAST (store_jobs.c). */
	if (s->secure_fast)
		return ISG_ERR_STORE;
	if (err == 0)
		return store_db_step_done(s, s->stmt[ST_RELEASE], "release");
	s->log = before; /* the job's entries are rolled back with its savepoint */
	/* Some errors (disk full, I/O) make SQLite roll back the whole transaction. */
	if (sqlite3_get_autocommit(s->db))
		return err == ISG_ERR_FULL ? ISG_ERR_FULL : ISG_ERR_STORE;
	rc = store_db_exec(s, "ROLLBACK TO j", "rollback_to");
	if (rc == 0)
		rc = store_db_step_done(s, s->stmt[ST_RELEASE], "release");
	return rc;
}

/*
 * Roll back the open transaction, if any: 0 once none is open. A failed
 * batch's ROLLBACK that fails leaves its transaction open, and BEGIN
 * inside it would fail, so a batch and a checkpoint call this before they
 * write; they fail (logged) while it cannot be undone.
 */
static int rollback_open(struct store *s)
{
	if (sqlite3_get_autocommit(s->db))
		return 0;
	const char *sql =
	    store_take_failure(&s->fail_rollback) ? "SELECT isg_test_failure()" : "ROLLBACK";
	store_db_exec(s, sql, "rollback"); /* logged */
	return sqlite3_get_autocommit(s->db) ? 0 : ISG_ERR_STORE;
}

/* Every job of the list fails with err, unless it failed on its own; how many. */
static size_t jobs_fail(struct store_job *batch, int err)
{
	size_t n = 0;
	for (struct store_job *j = batch; j; j = j->next, n++) {
		if (j->err == 0)
			j->err = err;
		store_job_discard(j);
	}
	return n;
}

static void batch_fail(struct store *s, struct store_job *batch, const struct store_log *start,
                       int err)
{
	rollback_open(s); /* if it fails, the next batch tries again */
	s->log = *start;  /* nothing of the batch is in the log */
	size_t n = jobs_fail(batch, err);
	char q[64];
	log_event(LOG_ERROR, "store.batch_failed", "jobs=%zu error=%s", n,
	          log_quote(q, sizeof(q), isg_strerror(err)));
}

/*
 * PRAGMA synchronous FULL, or NORMAL for a held batch; 0 or an error. Not
 * a prepared statement: SQLite sets this pragma as it prepares it.
 */
static int set_sync(struct store *s, bool normal)
{
	if (s->sync_normal == normal)
		return 0;
	int rc = store_db_exec(
	    s, normal ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL", "synchronous");
	if (rc == 0)
		s->sync_normal = normal;
	return rc;
}

/*
 * One transaction for the batch; 0, or the error that failed all of it.
 * Held (store_options' hold_us), it is committed without a sync. *synced:
 * its commit wrote frames and synced the WAL, and so all before them.
 */
static int run_batch(struct store *s, struct store_job *batch, bool sweep, bool *sweep_more,
                     bool held, bool *synced)
{
	int64_t now = time_now_ms();
	const struct store_log start = s->log;
	*synced = false;
	int rc = rollback_open(s);
	if (rc == 0)
		rc = set_sync(s, held);
	if (rc == 0)
		rc = store_secure_delete_on(s);
	if (rc == 0)
		rc = store_db_step_done(s, s->stmt[ST_BEGIN], "begin");
	if (rc) {
		batch_fail(s, batch, &start, rc);
		return rc;
	}
	for (struct store_job *j = batch; j; j = j->next) {
		rc = run_savepoint(s, j, now, NULL, &j->err);
		if (j->err)
			store_job_discard(j);
		if (rc) {
			batch_fail(s, batch, &start, rc);
			return rc;
		}
	}
	if (sweep) {
		int sweep_err = 0;
		rc = run_savepoint(s, NULL, now, sweep_more, &sweep_err);
		if (rc) {
			batch_fail(s, batch, &start, rc);
			return rc;
		}
	}
	uint64_t wal_commits = s->wal_commits;
	rc = store_db_commit(s, s->stmt[ST_COMMIT], "commit");
	if (rc && s->commit_full) /* tests only: the disk filled up as the WAL grew */
		rc = ISG_ERR_FULL;
	s->commit_full = false;
	if (rc == ISG_ERR_UNKNOWN)
		store_fail(s, store_db_errmsg(s->db));
	/* Committed, but to a file that is gone: answered as not stored. */
	if (rc == 0 && !store_watch(s))
		rc = ISG_ERR_CLOSED;
	if (rc) {
		batch_fail(s, batch, &start, rc);
		return rc;
	}
	atomic_fetch_add(&s->commits, 1);
	*synced = !held && s->wal_commits != wal_commits;
	return 0;
}

/*
 * A full disk fails a whole batch, yet some of its jobs need little or no
 * room (a resend answered from what is stored, a fetch of what was handed
 * out before): run each alone, once, so they are not refused for the
 * others' sake.
 */
static void run_alone(struct store *s, struct store_job *batch)
{
	for (struct store_job *j = batch, *next; j; j = next) {
		next = j->next;
		j->next = NULL;
		j->err = 0;
		/* Not once a lone commit failed the store: the next would write over it. */
		bool synced;
		if (atomic_load(&s->failed))
			j->err = ISG_ERR_CLOSED;
		else
			run_batch(s, j, false, NULL, false, &synced);
		j->next = next;
	}
}

/*
 * Once per distinct recipient that got a new message in this batch, after
 * its COMMIT and before the writer runs another job. The gateway's wake-up
 * skips workers with no waiting connection (net_server_wake); that is safe
 * because a connection waits before it asks for a fetch, and fetches run on
 * this thread, so a fetch asked for after the skip runs after this commit.
 */
static void batch_notify(struct store *s, struct store_job *batch)
{
	pthread_mutex_lock(&s->mu);
	store_notify_fn fn = s->notify;
	void *ctx = s->notify_ctx;
	pthread_mutex_unlock(&s->mu);
	if (!fn)
		return;
	for (struct store_job *j = batch; j; j = j->next) {
		if (j->kind != JOB_SEND || j->err || !j->u.send.added)
			continue;
		bool seen = false;
		for (struct store_job *k = batch; k != j && !seen; k = k->next)
			seen = k->kind == JOB_SEND && !k->err && k->u.send.added &&
			       strcmp(k->u.send.recipient, j->u.send.recipient) == 0;
		if (!seen)
			fn(ctx, j->u.send.recipient);
	}
}

static void batch_finish(struct store *s, struct store_job *batch)
{
	for (struct store_job *j = batch; j; j = j->next) {
		/* A send that stored nothing (refused, or a resend answered from
		 * its first copy) will never be fetched: its data key goes now. */
		if (j->kind == JOB_SEND && !j->u.send.added)
			store_seal_forget(s, j->u.send.header);
		store_job_finish(j);
	}
	batch_notify(s, batch);
	while (batch) {
		struct store_job *next = batch->next;
		store_job_free(batch);
		batch = next;
	}
}

/*
 * A commit that may or may not be on disk (store_db_commit): its jobs are
 * answered ISG_ERR_UNKNOWN, so each partner repeats its request (a send
 * with the same message_id, which is idempotent), and the writer takes no
 * more work. SQLite believes the commit rolled back, yet WAL recovery at
 * the next open may replay it, and the next commit would write over it:
 * going on would answer later requests from a state the file may not have
 * (PostgreSQL's fsync lesson: after a failed sync, do not retry, recover).
 * So nothing more is written, not even at close, and the owner of the
 * store (isgd) stops; recovery at the next open makes the file consistent.
 */
void store_fail(struct store *s, const char *why)
{
	if (atomic_exchange(&s->failed, true))
		return;
	char q[512];
	log_event(LOG_ERROR, "store.failed",
	          "reason=%s action=\"isgd stops; restart it: recovery makes the store "
	          "consistent\"",
	          log_quote(q, sizeof(q), why));
}

/* NULL while the file at s->path is the one the store has open; else how it is not. */
static const char *file_gone(const struct store *s)
{
	struct stat held, named;
	/* Not a regular file (store_db.c's lock_store), or nothing known: not judged. */
	if (s->lock_fd < 0 || fstat(s->lock_fd, &held) != 0)
		return NULL;
	if (held.st_nlink == 0)
		return "deleted";
	if (stat(s->path, &named) != 0)
		return errno == ENOENT || errno == ENOTDIR ? "deleted" : NULL;
	if (named.st_dev != held.st_dev || named.st_ino != held.st_ino)
		return "replaced";
	return NULL;
}

/* Whether this process has the file st describes open (SQLite's descriptors are its own). */
static bool held_open(const struct stat *st)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return false;
	bool found = false;
	const struct dirent *e;
	while (!found && (e = readdir(d))) {
		struct stat fs;
		char *end;
		long fd = strtol(e->d_name, &end, 10);
		found = *end == '\0' && end != e->d_name && fd != dirfd(d) &&
		        fstat((int)fd, &fs) == 0 && fs.st_dev == st->st_dev &&
		        fs.st_ino == st->st_ino;
	}
	closedir(d);
	return found;
}

/*
 * The deleted or replaced store's WAL, if still at the path's -wal and
 * ours, is renamed aside (kept for whoever investigates, never read):
 * SQLite would replay it over whatever store is put at the path next, a
 * restored backup included. Its -shm is only an index SQLite rebuilds.
 */
static void set_wal_aside(const struct store *s)
{
	char wal[PATH_MAX], aside[PATH_MAX + 48], stamp[32], q[2][PATH_MAX + 64];
	struct stat st;
	if (snprintf(wal, sizeof(wal), "%s-wal", s->path) >= (int)sizeof(wal) ||
	    lstat(wal, &st) != 0 || !S_ISREG(st.st_mode) || !held_open(&st))
		return;
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	snprintf(aside, sizeof(aside), "%s.unlinked-%s", wal, stamp);
	if (rename(wal, aside) == 0)
		log_event(LOG_WARN, "store.wal_set_aside", "path=%s to=%s",
		          log_quote(q[0], sizeof(q[0]), wal), log_quote(q[1], sizeof(q[1]), aside));
	else
		log_event(LOG_ERROR, "store.wal_set_aside_failed",
		          "path=%s error=%s action=\"remove it before a store is put back\"",
		          log_quote(q[0], sizeof(q[0]), wal),
		          log_quote(q[1], sizeof(q[1]), strerror(errno)));
}

/*
 * What is written to a deleted file, or to one another file has replaced
 * at its path, is lost when the store closes: the store fails as on a
 * commit of unknown outcome, so nothing more is stored or receipted, and
 * isgd stops, its WAL set aside (set_wal_aside).
 */
bool store_watch(struct store *s)
{
	if (!s)
		return true;
	if (atomic_load(&s->failed))
		return false;
	const char *how = file_gone(s);
	if (!how)
		return true;
	if (atomic_exchange(&s->failed, true))
		return false;
	char q[PATH_MAX + 16];
	log_event(LOG_ERROR, "store.unlinked",
	          "path=%s how=%s action=\"isgd stops; nothing more is stored. What it stored "
	          "since the last backup went with the file: restore the latest backup "
	          "(docs/operations.md, Backups and restore) and tell your IG officer\"",
	          log_quote(q, sizeof(q), s->path), how);
	set_wal_aside(s);
	return false;
}

bool store_failed(struct store *s)
{
	return s && atomic_load(&s->failed);
}

/* After store_fail: every job is refused, none is run. */
static void batch_refuse(struct store_job *batch)
{
	for (struct store_job *j = batch; j; j = j->next)
		j->err = ISG_ERR_CLOSED;
}

/* --- batches held for the next sync ------------------------------------------------ */

/*
 * A send waits for its batch's commit, and so for any commit already under
 * way: with a recipient fetching and acknowledging, each message makes
 * three (its send, its delivery, its acknowledgement), and a send often
 * waited behind one of the others' syncs as well as its own. So while
 * sends are coming, a batch with no send or refusal in it is committed
 * without a sync (PRAGMA synchronous=NORMAL: in WAL mode the commit is
 * whole, only not yet durable) and held: its callbacks wait for the next
 * commit that syncs, whose fdatasync of the WAL covers every frame before
 * its own, or for hold_us to pass, when held_sync syncs the WAL itself.
 * Nothing is answered before it is on disk. When that sync fails, or the
 * store fails before it, the held jobs' outcome is unknown.
 */
static bool has_sender(const struct store_job *batch)
{
	for (; batch; batch = batch->next)
		if (batch->kind == JOB_SEND || batch->kind == JOB_REFUSE)
			return true;
	return false;
}

/* Whether a batch with no send in it may be held: a send's commit ended
 * within hold_us (however long its sync took), and what is held is not due. */
static bool batch_may_hold(const struct store *s, bool closing)
{
	int64_t now = time_mono_us();
	return s->hold_us > 0 && s->wal_fd >= 0 && !closing && now - s->sender_us < s->hold_us &&
	       (!s->held || now < s->held_until_us);
}

static void held_add(struct store *s, struct store_job *batch)
{
	if (!s->held) {
		s->held_until_us = time_mono_us() + s->hold_us;
		s->held_end = &s->held;
	}
	*s->held_end = batch;
	while (batch->next)
		batch = batch->next;
	s->held_end = &batch->next;
}

/* Answer the held jobs: synced when err is 0, else with err. */
static void held_answer(struct store *s, int err)
{
	struct store_job *held = s->held;
	s->held = NULL;
	if (err) {
		size_t n = jobs_fail(held, err);
		char q[64];
		log_event(LOG_ERROR, "store.batch_failed", "jobs=%zu error=%s", n,
		          log_quote(q, sizeof(q), isg_strerror(err)));
	}
	batch_finish(s, held);
}

/*
 * Sync the WAL for the held jobs and answer them; 0, or the error they
 * were answered with. Synced to a file that is gone, they are answered as
 * a commit to it is (run_batch).
 */
static int held_sync(struct store *s)
{
	if (!s->held)
		return 0;
	int err = 0;
	if (atomic_load(&s->failed)) {
		err = ISG_ERR_UNKNOWN;
	} else if (store_vfs_datasync(s->wal_fd) != 0) {
		char why[128];
		snprintf(why, sizeof(why), "cannot sync the WAL: %s", strerror(errno));
		store_fail(s, why);
		err = ISG_ERR_UNKNOWN;
	} else if (!store_watch(s)) {
		err = ISG_ERR_CLOSED;
	}
	held_answer(s, err);
	return err;
}

/* --- the writer thread ------------------------------------------------------------ */

static int commit_hook(void *arg)
{
	struct store *s = arg;
	if (atomic_load(&s->full_commits) > 0) {
		atomic_fetch_sub(&s->full_commits, 1);
		s->commit_full = true;
		return 1;
	}
	return atomic_exchange(&s->fail_next_commit, false) ? 1 : 0;
}

/* Only committed entries are in s->log here: a failed batch put it back. */
static void checkpoint_if_due(struct store *s, bool final)
{
	if (!s->signer || audit_tree_size(&s->log.tree) == s->checkpoint_size ||
	    atomic_load(&s->failed))
		return;
	if (rollback_open(s) != 0 || store_secure_delete_on(s) != 0) {
		/* Logged. Not written into a transaction a failed ROLLBACK left
		 * open, nor under FAST. Waits as a failed checkpoint does: while
		 * one is due the writer would otherwise go round at once. */
		s->checkpoint_retry_mono = time_mono_ms() + STORE_CHECKPOINT_RETRY_MS;
		return;
	}
	if (!final && !store_log_checkpoint_due(s, time_mono_ms()))
		return;
	/* What it signs and the witness is given are on disk first. */
	if (held_sync(s) != 0)
		return;
	if (set_sync(s, false) != 0) {
		s->checkpoint_retry_mono = time_mono_ms() + STORE_CHECKPOINT_RETRY_MS;
		return;
	}
	store_log_checkpoint(s); /* a failure is logged and retried later */
}

static void *writer_main(void *arg)
{
	struct store *s = arg;
	pthread_setname_np(pthread_self(), "isg-writer");
	/* Sweep first: messages may have expired while isgd was down. */
	int64_t next_sweep = time_mono_ms();
	for (;;) {
		bool sweep = false, sweep_more = false, checkpoint = false;
		pthread_mutex_lock(&s->mu);
		for (;;) {
			if (s->paused && !s->closing) {
				s->parked = true;
				pthread_cond_broadcast(&s->cv); /* store_test_pause waits for it */
				pthread_cond_wait(&s->cv, &s->mu);
				continue;
			}
			s->parked = false;
			int64_t now = time_mono_ms();
			bool failed = atomic_load(&s->failed); /* no more sweeps nor checkpoints */
			sweep = !failed && now >= next_sweep;
			checkpoint = !failed && store_log_checkpoint_due(s, now);
			bool held_due = s->held && (failed || time_mono_us() >= s->held_until_us);
			if (s->head || sweep || checkpoint || s->closing || held_due)
				break;
			int64_t cp = store_log_checkpoint_deadline(s);
			int64_t until = ms_to_us(cp < next_sweep ? cp : next_sweep);
			if (s->held && s->held_until_us < until)
				until = s->held_until_us;
			if (failed)
				pthread_cond_wait(&s->cv, &s->mu);
			else
				cond_wait_until(s, until);
		}
		struct store_job *batch = queue_take(s);
		bool closing = s->closing;
		pthread_mutex_unlock(&s->mu);
		if (!batch && closing)
			break;
		int rc = 0;
		bool ran = false, hold = false, synced = false;
		if (atomic_load(&s->failed)) {
			batch_refuse(batch);
		} else if (batch || sweep) {
			bool sender = has_sender(batch);
			hold = batch && !sender && batch_may_hold(s, closing);
			rc = run_batch(s, batch, sweep, &sweep_more, hold, &synced);
			ran = true;
			if (sender)
				s->sender_us = time_mono_us();
		}
		/* Alone, unless the job was all the transaction held. */
		if (rc == ISG_ERR_FULL && batch && (batch->next || sweep))
			run_alone(s, batch);
		/* A sweep that stopped at its limit goes on at once, once it has
		 * committed: one whose batch failed (a full disk) would fail again. */
		if (sweep)
			next_sweep =
			    time_mono_ms() + (rc == 0 && sweep_more ? 0 : s->sweep_interval_ms);
		if (hold && rc == 0) {
			held_add(s, batch);
		} else if (s->held &&
		           (ran || atomic_load(&s->failed) || time_mono_us() >= s->held_until_us)) {
			/* Before this batch's answers: in the order they were asked. */
			if (synced)
				held_answer(s, 0);
			else if (held_sync(s) != 0 && rc == 0)
				/* It may have read what they wrote: as unknown as theirs. */
				jobs_fail(batch, ISG_ERR_UNKNOWN);
		}
		if (!hold || rc)
			batch_finish(s, batch);
		checkpoint_if_due(s, false);
	}
	/* Every job has run: the last checkpoint covers the whole log. */
	held_sync(s);
	checkpoint_if_due(s, true);
	return NULL;
}

void store_checkpoint_soon(struct store *s)
{
	atomic_store(&s->checkpoint_soon, true);
	pthread_mutex_lock(&s->mu);
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* --- open and close ------------------------------------------------------------------ */

static void store_release(struct store *s)
{
	store_wal_stop(s);
	store_db_close(s);
	store_keys_release(s);
	if (s->key) {
		sodium_mprotect_readwrite(s->key);
		sodium_memzero(s->key, STORE_KEY_LEN);
		sodium_free(s->key);
	}
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s->leaf);
	free(s->witness_leaves);
	free(s->checkpoint_note);
	free(s->path);
	free(s);
}

static int store_init_sync(struct store *s)
{
	pthread_condattr_t attr;
	if (pthread_mutex_init(&s->mu, NULL) != 0)
		return ISG_ERR_NOMEM;
	if (pthread_condattr_init(&attr) != 0) {
		pthread_mutex_destroy(&s->mu);
		return ISG_ERR_NOMEM;
	}
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	int rc = pthread_cond_init(&s->cv, &attr);
	pthread_condattr_destroy(&attr);
	if (rc != 0) {
		pthread_mutex_destroy(&s->mu);
		return ISG_ERR_NOMEM;
	}
	return 0;
}

int store_open(const struct store_options *opt, struct store **out, char *err, size_t errlen)
{
	struct store *s = NULL;
	int rc;
	*out = NULL;
	if (!opt || !opt->path || !opt->storage_key == !opt->sealer) {
		store_seterr(err, errlen,
		             "store needs a path and either a storage key or a sealer");
		return ISG_ERR_INVALID;
	}
	if (sodium_init() < 0) {
		store_seterr(err, errlen, "libsodium failed to initialise");
		return ISG_ERR_CRYPTO;
	}
	s = calloc(1, sizeof(*s));
	if (!s || store_init_sync(s) != 0) {
		free(s);
		store_seterr(err, errlen, "store: out of memory");
		return ISG_ERR_NOMEM;
	}
	s->lock_fd = -1;
	s->wal_fd = -1;
	s->hold_us = opt->hold_us > 0 ? opt->hold_us : 0;
	if (s->hold_us > STORE_MAX_HOLD_US) /* added to a clock: no overflow */
		s->hold_us = STORE_MAX_HOLD_US;
	s->sweep_interval_ms =
	    opt->sweep_interval_ms > 0 ? opt->sweep_interval_ms : STORE_DEFAULT_SWEEP_MS;
	if (s->sweep_interval_ms > STORE_MAX_SWEEP_MS) /* added to a clock: no overflow */
		s->sweep_interval_ms = STORE_MAX_SWEEP_MS;
	s->max_batch = opt->max_batch > 0 ? opt->max_batch : STORE_DEFAULT_MAX_BATCH;
	s->signer = opt->signer;
	s->checkpoint_every =
	    opt->checkpoint_every > 0 ? opt->checkpoint_every : STORE_DEFAULT_CHECKPOINT_EVERY;
	s->checkpoint_interval_ms = opt->checkpoint_interval_ms > 0 ? opt->checkpoint_interval_ms
	                                                            : STORE_DEFAULT_CHECKPOINT_MS;
	if (s->checkpoint_interval_ms > STORE_MAX_CHECKPOINT_MS)
		s->checkpoint_interval_ms = STORE_MAX_CHECKPOINT_MS;
	s->checkpoint_mono = time_mono_ms();
	s->path = strdup(opt->path);
	if (opt->storage_key && (s->key = sodium_malloc(STORE_KEY_LEN)) != NULL) {
		memcpy(s->key, opt->storage_key, STORE_KEY_LEN);
		sodium_mprotect_readonly(s->key);
		s->sealer = store_sealer_own(s->key);
	} else if (opt->sealer) {
		s->sealer = *opt->sealer;
	}
	if (!s->sealer.new_keys || !s->sealer.unwrap || !s->sealer.open) {
		store_seterr(err, errlen, "store: a sealer needs new_keys, unwrap and open");
		rc = ISG_ERR_INVALID;
		goto out;
	}
	if (opt->witness) {
		s->witness = *opt->witness;
		s->has_witness = true;
		if (!s->signer || !s->witness.start || !s->witness.append) {
			store_seterr(err, errlen,
			             "store: a witness needs a signer, start and append");
			rc = ISG_ERR_INVALID;
			goto out;
		}
	}
	rc = s->path ? store_keys_init(s) : ISG_ERR_NOMEM;
	if (rc) {
		store_seterr(err, errlen,
		             rc == ISG_ERR_CRYPTO
		                 ? "store: OpenSSL has no AES-256-GCM to seal payloads with"
		                 : "store: out of memory");
		goto out;
	}
	rc = store_db_open(s, s->path, opt->create, err, errlen);
	if (rc == 0)
		rc = store_log_witness_start(s, err, errlen);
	if (rc == 0)
		rc = store_wal_start(s, opt->wal_pages, err, errlen);
	if (rc)
		goto out;
	sqlite3_commit_hook(s->db, commit_hook, s);
	/* The log is the writer's from its start (its first sweep appends at once). */
	uint64_t entries = audit_tree_size(&s->log.tree), checkpoint = s->checkpoint_size;
	if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
		store_seterr(err, errlen, "store: cannot start the writer thread");
		rc = ISG_ERR_NOMEM;
		goto out;
	}
	s->writer_started = true;
	log_event(LOG_INFO, "store.opened",
	          "max_batch=%" PRIu32 " sweep_interval_ms=%" PRId64 " audit_entries=%" PRIu64
	          " checkpoint=%" PRIu64 " checkpoints=%s",
	          s->max_batch, s->sweep_interval_ms, entries, checkpoint,
	          s->signer ? "signed" : "off");
out:
	if (rc) {
		store_release(s);
		return rc;
	}
	*out = s;
	return 0;
}

bool store_close(struct store *s)
{
	if (!s)
		return false;
	pthread_mutex_lock(&s->mu);
	s->closing = true;
	s->paused = false;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	if (s->writer_started)
		pthread_join(s->writer, NULL);
	bool failed = atomic_load(&s->failed);
	store_release(s);
	return failed;
}

void store_set_notify(struct store *s, store_notify_fn fn, void *ctx)
{
	pthread_mutex_lock(&s->mu);
	s->notify = fn;
	s->notify_ctx = ctx;
	pthread_mutex_unlock(&s->mu);
}

/* --- submitting jobs --------------------------------------------------------------------- */

static bool string_ok(const char *str, bool required)
{
	if (!str)
		return !required;
	size_t len = strnlen(str, STORE_MAX_STRING + 1);
	return len <= STORE_MAX_STRING && (len > 0 || !required);
}

static struct store_job *job_new(enum store_job_kind kind)
{
	struct store_job *j = calloc(1, sizeof(*j));
	if (j)
		j->kind = kind;
	return j;
}

static int submit(struct store *s, struct store_job *j)
{
	int rc = queue_push(s, j);
	if (rc)
		store_job_free(j);
	return rc;
}

static int send_validate(const struct store_message *m)
{
	if (!string_ok(m->sender, true) || !string_ok(m->message_id, true) ||
	    !string_ok(m->recipient, true) || !string_ok(m->agreement_id, false) ||
	    !string_ok(m->purpose, false) || !string_ok(m->dataset, false))
		return ISG_ERR_INVALID;
	if (m->payload_len > STORE_MAX_PAYLOAD || m->audit_len > STORE_MAX_AUDIT_ENTRY)
		return ISG_ERR_TOO_BIG;
	if ((m->payload_len && !m->payload) || !m->audit_entry)
		return ISG_ERR_INVALID;
	if (store_log_check_body("message.accepted", m->audit_entry, m->audit_len) != 0)
		return ISG_ERR_INVALID;
	if (m->admit && !m->admit_undo)
		return ISG_ERR_INVALID;
	if (m->ttl_ms <= 0 || m->ttl_ms > STORE_MAX_TTL_MS)
		return ISG_ERR_INVALID;
	return 0;
}

/* Copy the six strings into one allocation. */
static int send_copy_strings(struct job_send *js, const struct store_message *m)
{
	const char *src[6] = {m->sender,       m->message_id, m->recipient,
	                      m->agreement_id, m->purpose,    m->dataset};
	const char **dst[6] = {&js->sender,       &js->message_id, &js->recipient,
	                       &js->agreement_id, &js->purpose,    &js->dataset};
	size_t total = 0;
	for (size_t i = 0; i < 6; i++)
		total += (src[i] ? strlen(src[i]) : 0) + 1;
	js->strings = malloc(total);
	if (!js->strings)
		return ISG_ERR_NOMEM;
	char *p = js->strings;
	for (size_t i = 0; i < 6; i++) {
		size_t len = src[i] ? strlen(src[i]) : 0;
		memcpy(p, src[i] ? src[i] : "", len);
		p[len] = '\0';
		*dst[i] = p;
		p += len + 1;
	}
	return 0;
}

int store_send(struct store *s, const struct store_message *m, store_send_cb cb, void *ctx)
{
	if (!s || !m || !cb)
		return ISG_ERR_INVALID;
	int rc = send_validate(m);
	if (rc)
		return rc;
	struct store_job *j = job_new(JOB_SEND);
	if (!j)
		return ISG_ERR_NOMEM;
	struct job_send *js = &j->u.send;
	js->cb = cb;
	js->ctx = ctx;
	js->agreement_version = m->agreement_version;
	js->reply_to = m->reply_to;
	memcpy(js->request_hash, m->request_hash, sizeof(js->request_hash));
	js->record_count = m->record_count;
	js->ttl_ms = m->ttl_ms;
	js->refusal_entry = m->refusal_entry;
	js->refusal_ctx = m->refusal_ctx;
	js->admit = m->admit;
	js->admit_undo = m->admit_undo;
	js->admit_ctx = m->admit_ctx;
	rc = send_copy_strings(js, m);
	if (rc)
		goto fail;
	js->audit_entry = malloc(m->audit_len + 1);
	if (!js->audit_entry) {
		rc = ISG_ERR_NOMEM;
		goto fail;
	}
	memcpy(js->audit_entry, m->audit_entry, m->audit_len);
	js->audit_entry[m->audit_len] = '\0';
	js->audit_len = m->audit_len;
	struct store_bound bound = {
	    .sender = js->sender,
	    .message_id = js->message_id,
	    .recipient = js->recipient,
	    .agreement_id = js->agreement_id,
	    .purpose = js->purpose,
	    .dataset = js->dataset,
	    .agreement_version = js->agreement_version,
	    .reply_to = js->reply_to,
	};
	rc = store_seal(s, &bound, m->payload, m->payload_len, js->header, &js->sealed,
	                &js->sealed_len);
	if (rc)
		goto fail;
	rc = queue_push(s, j);
	if (rc == 0)
		return 0;
	store_seal_forget(s, js->header); /* never queued, so never fetched */
fail:
	store_job_free(j);
	return rc;
}

int store_refuse_send(struct store *s, const struct store_refusal *f, store_send_cb cb, void *ctx)
{
	if (!s || !f || !cb || !string_ok(f->sender, true) || !string_ok(f->message_id, true) ||
	    !f->audit_entry)
		return ISG_ERR_INVALID;
	if (f->audit_len > STORE_MAX_AUDIT_ENTRY)
		return ISG_ERR_TOO_BIG;
	if (store_log_check_body("message.refused", f->audit_entry, f->audit_len) != 0)
		return ISG_ERR_INVALID;
	struct store_job *j = job_new(JOB_REFUSE);
	if (!j)
		return ISG_ERR_NOMEM;
	struct job_refuse *jr = &j->u.refuse;
	jr->cb = cb;
	jr->ctx = ctx;
	memcpy(jr->request_hash, f->request_hash, sizeof(jr->request_hash));
	size_t sender_len = strlen(f->sender), id_len = strlen(f->message_id);
	jr->strings = malloc(sender_len + id_len + 2);
	jr->audit_entry = malloc(f->audit_len + 1);
	if (!jr->strings || !jr->audit_entry) {
		store_job_free(j);
		return ISG_ERR_NOMEM;
	}
	memcpy(jr->strings, f->sender, sender_len + 1);
	memcpy(jr->strings + sender_len + 1, f->message_id, id_len + 1);
	jr->sender = jr->strings;
	jr->message_id = jr->strings + sender_len + 1;
	memcpy(jr->audit_entry, f->audit_entry, f->audit_len);
	jr->audit_entry[f->audit_len] = '\0';
	jr->audit_len = f->audit_len;
	return submit(s, j);
}

int store_fetch(struct store *s, const char *recipient, uint64_t after_id, uint32_t max,
                store_fetch_cb cb, void *ctx)
{
	return store_fetch_within(s, recipient, after_id, max, STORE_FETCH_BYTES, NULL, cb, ctx);
}

static size_t payload_size(const struct store_delivery *d)
{
	return d->payload_len;
}

static bool any_payload(const uint8_t *payload, size_t len)
{
	(void)payload;
	(void)len;
	return true;
}

int store_fetch_within(struct store *s, const char *recipient, uint64_t after_id, uint32_t max,
                       size_t max_bytes, const struct store_fetch_sink *sink, store_fetch_cb cb,
                       void *ctx)
{
	if (!s || !cb || !string_ok(recipient, true) || max == 0)
		return ISG_ERR_INVALID;
	if (max > STORE_MAX_FETCH)
		max = STORE_MAX_FETCH;
	struct store_job *j = job_new(JOB_FETCH);
	if (!j)
		return ISG_ERR_NOMEM;
	struct job_fetch *jf = &j->u.fetch;
	jf->cb = cb;
	jf->ctx = ctx;
	jf->after_id = after_id;
	jf->max = max;
	/* At least 1, so the first message always comes. */
	jf->max_bytes = max_bytes == 0                  ? 1
	                : max_bytes < STORE_FETCH_BYTES ? max_bytes
	                                                : STORE_FETCH_BYTES;
	jf->sink.size = sink && sink->size ? sink->size : payload_size;
	jf->sink.sendable = sink && sink->sendable ? sink->sendable : any_payload;
	jf->recipient = strdup(recipient);
	jf->res = calloc(1, sizeof(*jf->res)); /* items grow in the writer */
	if (!jf->recipient || !jf->res) {
		store_job_free(j);
		return ISG_ERR_NOMEM;
	}
	return submit(s, j);
}

int store_ack(struct store *s, const char *recipient, const uint64_t *ids, size_t n,
              store_ack_cb cb, void *ctx)
{
	if (!s || !cb || !string_ok(recipient, true) || (n && !ids))
		return ISG_ERR_INVALID;
	if (n > STORE_MAX_ACK)
		return ISG_ERR_LIMIT;
	struct store_job *j = job_new(JOB_ACK);
	if (!j)
		return ISG_ERR_NOMEM;
	struct job_ack *ja = &j->u.ack;
	ja->cb = cb;
	ja->ctx = ctx;
	ja->n = n;
	ja->recipient = strdup(recipient);
	/* +1: never a zero-sized allocation */
	ja->ids = malloc((n + 1) * sizeof(*ids));
	ja->unknown = malloc((n + 1) * sizeof(*ids));
	if (!ja->recipient || !ja->ids || !ja->unknown) {
		store_job_free(j);
		return ISG_ERR_NOMEM;
	}
	if (n)
		memcpy(ja->ids, ids, n * sizeof(*ids));
	return submit(s, j);
}

int store_audit(struct store *s, const char *kind, const char *entry, size_t len, store_audit_cb cb,
                void *ctx)
{
	if (!s || !kind || !*kind || (len && !entry))
		return ISG_ERR_INVALID;
	if (strnlen(kind, STORE_MAX_KIND + 1) > STORE_MAX_KIND || len > STORE_MAX_AUDIT_ENTRY)
		return ISG_ERR_TOO_BIG;
	if (store_log_check_body(kind, entry, len) != 0)
		return ISG_ERR_INVALID;
	struct store_job *j = job_new(JOB_AUDIT);
	if (!j)
		return ISG_ERR_NOMEM;
	struct job_audit *ja = &j->u.audit;
	ja->cb = cb;
	ja->ctx = ctx;
	ja->len = len;
	ja->kind = strdup(kind);
	ja->entry = malloc(len + 1);
	if (!ja->kind || !ja->entry) {
		store_job_free(j);
		return ISG_ERR_NOMEM;
	}
	if (len)
		memcpy(ja->entry, entry, len);
	ja->entry[len] = '\0';
	return submit(s, j);
}

/* --- test hooks (store_test.h) --------------------------------------------------------------- */

size_t store_test_keys_kept(struct store *s)
{
	size_t n = 0;
	pthread_mutex_lock(&s->kept_mu);
	for (size_t i = 0; i < STORE_KEYS_KEPT; i++)
		n += s->kept[i].set;
	pthread_mutex_unlock(&s->kept_mu);
	return n;
}

uint64_t store_test_commits(struct store *s)
{
	return atomic_load(&s->commits);
}

void store_test_pause(struct store *s, bool paused)
{
	pthread_mutex_lock(&s->mu);
	s->paused = paused;
	pthread_cond_broadcast(&s->cv);
	/* Until the writer is held: not in a batch, nor in its start-up sweep. */
	while (paused && !s->parked && !s->closing)
		pthread_cond_wait(&s->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
}

void store_test_fail_next_commit(struct store *s)
{
	atomic_store(&s->fail_next_commit, true);
}

void store_test_full_commits(struct store *s, int n)
{
	atomic_store(&s->full_commits, n);
}

int store_test_fail_secure_delete_on(struct store *s, int n)
{
	return atomic_exchange(&s->fail_secure_on, n);
}

void store_test_fail_next_rollback(struct store *s)
{
	atomic_store(&s->fail_rollback, 1);
}

struct exec_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	int err;
};

static void exec_done(void *ctx, int err)
{
	struct exec_wait *w = ctx;
	pthread_mutex_lock(&w->mu);
	w->err = err;
	w->done = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* Wait for exec_done, and release w: the job's error. */
static int exec_wait_end(struct exec_wait *w)
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

static void audit_waited(void *ctx, int err, uint64_t audit_index)
{
	(void)audit_index;
	exec_done(ctx, err);
}

int store_audit_wait(struct store *s, const char *kind, const char *entry, size_t len,
                     int *committed)
{
	struct exec_wait w = {.done = false};
	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cv, NULL);
	int rc = store_audit(s, kind, entry, len, audit_waited, &w);
	if (rc != 0)
		exec_done(&w, rc);
	*committed = exec_wait_end(&w);
	return rc;
}

/* Run an exec job (sql, or a copy of the tree when sql is NULL) and wait for it. */
static int exec_job(struct store *s, const char *sql, int64_t *int_out, struct audit_tree *tree_out)
{
	struct exec_wait w = {.done = false};
	struct store_job *j = job_new(JOB_EXEC);
	if (!j)
		return ISG_ERR_NOMEM;
	j->u.exec.sql = sql ? strdup(sql) : NULL;
	j->u.exec.int_out = int_out;
	j->u.exec.tree_out = tree_out;
	j->u.exec.cb = exec_done;
	j->u.exec.ctx = &w;
	if (sql && !j->u.exec.sql) {
		store_job_free(j);
		return ISG_ERR_NOMEM;
	}
	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cv, NULL);
	int rc = submit(s, j);
	if (rc != 0)
		exec_done(&w, rc);
	return exec_wait_end(&w);
}

int store_test_exec(struct store *s, const char *sql)
{
	return exec_job(s, sql, NULL, NULL);
}

int store_test_query_int(struct store *s, const char *sql, int64_t *v)
{
	return exec_job(s, sql, v, NULL);
}

int store_test_audit_root(struct store *s, uint64_t *size, uint8_t root[32])
{
	struct audit_tree *t = malloc(sizeof(*t));
	if (!t)
		return ISG_ERR_NOMEM;
	int rc = exec_job(s, NULL, NULL, t);
	if (rc == 0) {
		*size = audit_tree_size(t);
		audit_tree_root(t, root);
	}
	free(t);
	return rc;
}
